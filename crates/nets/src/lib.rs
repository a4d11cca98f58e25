//! Network architectures for medical imaging, generic over any burn [`Backend`](burn::tensor::backend::Backend).
//!
//! The CNN family of the field: [`Mlp`], [`LeNet5`], [`AlexNet`], [`Vgg`] (11 and 16), [`GoogLeNet`]
//! (Inception v1) and [`ResNet`] (18, 34, 50). Each takes `[batch, channels, height, width]` images and returns
//! `[batch, classes]` logits; the number of input channels, classes and the input size (28 to 224) are set in
//! its configuration. [`ClassifierConfig`] names any of them in a serialisable form (as recipes do) and
//! [`Classifier`] holds whichever was built.
//!
//! Dense prediction and the other families: [`UNet`] (2D and 3D, batch or instance norm, transposed-convolution
//! or interpolation up-sampling, residual blocks, deep supervision), auto-encoders ([`Autoencoder`],
//! [`ConvAutoencoder`], the low-dose CT network [`RedCnn`], the MR reconstruction network [`Crnn`] with its differentiable
//! [`dft2`]), the segmentation refinement [`CrfRnn`] (mean-field CRF iterations unrolled as a recurrent network), recurrent networks ([`Lstm`], [`Gru`], [`CnnLstm`]) and the registration network
//! [`VoxelMorph`] with its spatial transformer. [`ops`] holds the volumetric operations burn lacks (3D pooling,
//! nearest and trilinear up-sampling, warping), written so that burn's autodiff differentiates them on any
//! backend; [`loss`] the dense objectives (soft Dice, voxel cross-entropy, MSE, field smoothness).
//!
//! Small inputs (below 64 pixels, such as MedMNIST's 28×28) use the stem that the MedMNIST benchmarks use: a 3×3
//! stride-1 first convolution and no stem max-pool, so that the feature maps are not reduced to nothing.
//!
//! ```
//! use burn::tensor::{Distribution, Tensor};
//! use vesalius_nets::{Arch, ClassifierConfig};
//! type B = burn::backend::Flex;
//!
//! let device = Default::default();
//! let config = ClassifierConfig::new(Arch::ResNet18, 3, 9, 28);
//! let net = config.init::<B>(&device).expect("valid configuration");
//! assert_eq!(net.param_count(), 11_173_449);
//! let x = Tensor::<B, 4>::random([2, 3, 28, 28], Distribution::Normal(0.0, 1.0), &device);
//! assert_eq!(net.forward(x).dims(), [2, 9]);
//! ```

mod affine_net;
mod alexnet;
mod autoencoder;
mod blocks;
mod classifier;
mod cnn3d;
mod crf;
mod crnn;
#[cfg(feature = "flex")]
mod fused;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod fused_cube;
mod googlenet;
mod lenet;
mod mlp;
mod patch_sae;
mod redcnn;
mod resnet;
mod rnn;
#[cfg(any(feature = "flex", feature = "cuda", feature = "wgpu"))]
mod typed;
mod unet;
mod vgg;
mod voxelmorph;

pub mod explain;
pub mod loss;
pub mod ops;
pub mod record;
pub mod transfer;

pub use affine_net::{AffineNet, AffineNetConfig, warp_by_affine};
pub use alexnet::{AlexNet, AlexNetConfig};
pub use autoencoder::{
    Autoencoder, AutoencoderConfig, AutoencoderLayer, ConvAutoencoder, ConvAutoencoderConfig, SaeClassifier, kl_sparsity,
};
pub use blocks::ConvBnRelu;
pub use classifier::{Arch, Classifier, ClassifierConfig, ConfigError, MAX_INPUT, MIN_INPUT, SAE_HIDDEN, trainable_params};
pub use cnn3d::{Cnn3d, Cnn3dConfig};
pub use crf::{CrfRnn, CrfRnnConfig, spatial_kernel, window_offsets};
pub use crnn::{Crnn, CrnnConfig, data_consistency, dft2};
pub use googlenet::{GoogLeNet, GoogLeNetConfig, Inception};
pub use lenet::{LeNet5, LeNet5Config};
pub use mlp::{Mlp, MlpConfig};
pub use patch_sae::{PatchSae, PatchSaeConfig};
pub use redcnn::{RedCnn, RedCnnConfig};
pub use resnet::{BasicBlock, Bottleneck, ResBlock, ResNet, ResNetConfig, ResNetDepth};
pub use rnn::{CnnLstm, CnnLstmConfig, GateWeights, Gru, GruConfig, Lstm, LstmConfig};
pub use unet::{ConvNd, DoubleConv, Norm, NormKind, UNet, UNetConfig, Up, UpConv, UpKind};
pub use vgg::{Vgg, VggConfig, VggDepth};
pub use voxelmorph::{VoxelMorph, VoxelMorphConfig};

/// Input sizes below this use the small-input stem (3×3 stride-1 first convolution, no stem max-pool).
pub const SMALL_INPUT_LIMIT: usize = 64;
