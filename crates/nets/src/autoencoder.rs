//! Auto-encoders: a fully connected one (plain, or denoising and sparse through how it is trained; stacked when it
//! has several hidden layers, trained greedily layer by layer through [`AutoencoderLayer`]s), a classifier on a
//! stacked auto-encoder's encoder ([`SaeClassifier`]) and a convolutional auto-encoder. The convolutional
//! configuration [`ConvAutoencoderConfig::reference`] is the denoising auto-encoder of the reference workload
//! (e): 257,121 parameters.
//!
//! ```
//! use burn::tensor::{Distribution, Tensor};
//! use vesalius_nets::{AutoencoderConfig, AutoencoderLayer};
//! type B = burn::backend::Flex;
//! let device = Default::default();
//! // A stack 784 → 256 → 64 assembled from two separately built layers gives the same reconstruction.
//! let layers = vec![AutoencoderLayer::new(784, 256, false, true, &device), AutoencoderLayer::new(256, 64, true, false, &device)];
//! let x = Tensor::<B, 2>::random([3, 784], Distribution::Uniform(0.0, 1.0), &device);
//! let code = layers[1].encode(layers[0].encode(x.clone()));
//! let ae = vesalius_nets::Autoencoder::from_layers(layers, true);
//! assert_eq!(ae.encode(x.clone()).dims(), [3, 64]);
//! assert_eq!(ae.encode(x).into_data(), code.into_data());
//! # let _ = AutoencoderConfig::new(784, vec![256, 64]);
//! ```
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;

use crate::blocks::conv2d;

/// Fully connected auto-encoder: `input → hidden[0] → … → hidden[last]` (the code) and back, ReLU between
/// layers, sigmoid output (inputs scaled to [0, 1]).
#[derive(Config, Debug)]
pub struct AutoencoderConfig {
    /// Input features (flattened image).
    pub input: usize,
    /// Encoder widths, the last being the code size.
    pub hidden: Vec<usize>,
    /// Sigmoid on the reconstruction (inputs in [0, 1]); linear otherwise.
    #[config(default = true)]
    pub sigmoid_output: bool,
}

/// A fully connected auto-encoder.
#[derive(Module, Debug)]
pub struct Autoencoder<B: Backend> {
    encoder: Vec<Linear<B>>,
    decoder: Vec<Linear<B>>,
    sigmoid_output: bool,
}

impl AutoencoderConfig {
    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Autoencoder<B> {
        let mut sizes = vec![self.input];
        sizes.extend(&self.hidden);
        let encoder = sizes.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        let decoder = sizes.windows(2).rev().map(|w| LinearConfig::new(w[1], w[0]).init(device)).collect();
        Autoencoder { encoder, decoder, sigmoid_output: self.sigmoid_output }
    }
}

impl<B: Backend> Autoencoder<B> {
    /// The code of `[n, input]` inputs: `[n, code]`, after a ReLU (non-negative, as sparse auto-encoders expect).
    pub fn encode(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.encoder.iter().fold(x, |h, layer| relu(layer.forward(h)))
    }

    /// The reconstruction of a code.
    pub fn decode(&self, code: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.decoder.len() - 1;
        self.decoder.iter().enumerate().fold(code, |h, (i, layer)| {
            let y = layer.forward(h);
            match (i == last, self.sigmoid_output) {
                (false, _) => relu(y),
                (true, true) => sigmoid(y),
                (true, false) => y,
            }
        })
    }

    /// Reconstruction of `[n, input]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.decode(self.encode(x))
    }

    /// The stack of greedily trained layers (input side first): layer `i`'s encoder is the stack's `i`-th
    /// encoder layer and its decoder the stack's `i`-th decoder layer counted from the output.
    pub fn from_layers(layers: Vec<AutoencoderLayer<B>>, sigmoid_output: bool) -> Self {
        let mut encoder = Vec::with_capacity(layers.len());
        let mut decoder = Vec::with_capacity(layers.len());
        for layer in layers {
            encoder.push(layer.encoder);
            decoder.push(layer.decoder);
        }
        decoder.reverse();
        Autoencoder { encoder, decoder, sigmoid_output }
    }

    /// The encoder layers (input side first).
    pub fn encoder(&self) -> &[Linear<B>] {
        &self.encoder
    }

    /// Number of hidden layers.
    pub fn depth(&self) -> usize {
        self.encoder.len()
    }
}

/// One layer of a stacked auto-encoder trained as an auto-encoder of its own (greedy layer-wise training): the code
/// `relu(W x + b)` and its reconstruction, through ReLU (inner layers, whose inputs are codes), sigmoid (the input
/// layer of [0, 1] data) or nothing.
#[derive(Module, Debug)]
pub struct AutoencoderLayer<B: Backend> {
    encoder: Linear<B>,
    decoder: Linear<B>,
    relu_output: bool,
    sigmoid_output: bool,
}

impl<B: Backend> AutoencoderLayer<B> {
    /// A layer `input → code → input`.
    pub fn new(input: usize, code: usize, relu_output: bool, sigmoid_output: bool, device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(input, code).init(device),
            decoder: LinearConfig::new(code, input).init(device),
            relu_output,
            sigmoid_output,
        }
    }

    /// The code of `[n, input]`.
    pub fn encode(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        relu(self.encoder.forward(x))
    }

    /// The reconstruction of a code.
    pub fn decode(&self, code: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = self.decoder.forward(code);
        if self.relu_output {
            relu(y)
        } else if self.sigmoid_output {
            sigmoid(y)
        } else {
            y
        }
    }
}

/// A classifier on the encoder of a stacked auto-encoder: flattened image → encoder layers (ReLU) → linear logits.
#[derive(Module, Debug)]
pub struct SaeClassifier<B: Backend> {
    encoder: Vec<Linear<B>>,
    head: Linear<B>,
}

impl<B: Backend> SaeClassifier<B> {
    /// A randomly initialised classifier `inputs → hidden… → classes`.
    pub fn new(inputs: usize, hidden: &[usize], classes: usize, device: &B::Device) -> Self {
        let mut sizes = vec![inputs];
        sizes.extend(hidden);
        let encoder = sizes.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        Self { encoder, head: LinearConfig::new(*sizes.last().unwrap_or(&inputs), classes).init(device) }
    }

    /// Replaces the encoder by a (pre-trained) auto-encoder's; the shapes must agree.
    pub fn with_encoder(mut self, ae: &Autoencoder<B>) -> Result<Self, String> {
        if ae.encoder.len() != self.encoder.len() {
            return Err(format!("the auto-encoder has {} layers, the classifier {}", ae.encoder.len(), self.encoder.len()));
        }
        for (i, (a, b)) in ae.encoder.iter().zip(&self.encoder).enumerate() {
            if a.weight.shape() != b.weight.shape() {
                return Err(format!("layer {i}: auto-encoder weight {:?}, classifier {:?}", a.weight.dims(), b.weight.dims()));
            }
        }
        self.encoder = ae.encoder.clone();
        Ok(self)
    }

    /// Logits `[n, classes]` of images `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(self.code(x))
    }

    /// The encoder's code `[n, last hidden]` of images `[n, c, h, w]` (the auto-encoder's bottleneck).
    pub fn code(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.encoder.iter().fold(x.flatten(1, 3), |h, layer| relu(layer.forward(h)))
    }
}

/// The sparsity penalty of sparse auto-encoders: `Σ_j KL(ρ ‖ ρ̂_j)` where `ρ̂_j` is the mean activation of code
/// unit `j` over the batch (activations in [0, 1]; clamped away from 0 and 1).
pub fn kl_sparsity<B: Backend>(code: Tensor<B, 2>, rho: f64) -> Tensor<B, 1> {
    let mean = code.mean_dim(0).clamp(1e-6, 1.0 - 1e-6);
    let a = (mean.clone().recip() * rho).log() * rho;
    let b = ((mean.neg() + 1.0).recip() * (1.0 - rho)).log() * (1.0 - rho);
    (a + b).sum()
}

/// Convolutional auto-encoder: stride-2 3×3 convolutions down, stride-2 4×4 transposed convolutions up, ReLU
/// between, sigmoid output.
#[derive(Config, Debug)]
pub struct ConvAutoencoderConfig {
    /// Image channels.
    pub in_channels: usize,
    /// Encoder channels per level; each level halves the spatial size.
    pub channels: Vec<usize>,
}

impl ConvAutoencoderConfig {
    /// The reference denoising auto-encoder (workload e): 1 → 32 → 64 → 128 and back.
    pub fn reference() -> Self {
        Self::new(1, vec![32, 64, 128])
    }

    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvAutoencoder<B> {
        let mut sizes = vec![self.in_channels];
        sizes.extend(&self.channels);
        let encoder = sizes.windows(2).map(|w| conv2d(w[0], w[1], 3, 2, 1, true, device)).collect();
        let decoder = sizes
            .windows(2)
            .rev()
            .map(|w| ConvTranspose2dConfig::new([w[1], w[0]], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(device))
            .collect();
        ConvAutoencoder { encoder, decoder }
    }
}

/// A convolutional auto-encoder.
#[derive(Module, Debug)]
pub struct ConvAutoencoder<B: Backend> {
    encoder: Vec<Conv2d<B>>,
    decoder: Vec<ConvTranspose2d<B>>,
}

impl<B: Backend> ConvAutoencoder<B> {
    /// The code of `[n, c, h, w]` (h and w divisible by 2^levels).
    pub fn encode(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.encoder.iter().fold(x, |h, conv| relu(conv.forward(h)))
    }

    /// The reconstruction of a code.
    pub fn decode(&self, code: Tensor<B, 4>) -> Tensor<B, 4> {
        let last = self.decoder.len() - 1;
        self.decoder.iter().enumerate().fold(code, |h, (i, conv)| {
            let y = conv.forward(h);
            if i == last { sigmoid(y) } else { relu(y) }
        })
    }

    /// Reconstruction of `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode(self.encode(x))
    }
}
