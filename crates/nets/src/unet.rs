//! U-Net in 2D and 3D (Ronneberger et al. 2015; Çiçek et al. 2016), as MONAI and nnU-Net build it: a contracting
//! path of double convolutions and 2× down-sampling, an expanding path that up-samples, concatenates the skip
//! connection and convolves, and a 1×1 head. Depth, channels, normalisation (batch or instance), up-sampling
//! (transposed convolution or interpolation), residual encoder blocks and deep supervision are configurable.
//!
//! Both dimensionalities share one implementation on `[batch, channels, depth, height, width]` tensors; a 2D
//! network runs true 2D convolutions on depth-1 volumes ([`UNet::forward_2d`] takes `[batch, channels, h, w]`).
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{
    Conv2d, Conv2dConfig, Conv3d, Conv3dConfig, ConvTranspose2d, ConvTranspose2dConfig, ConvTranspose3d, ConvTranspose3dConfig,
};
use burn::nn::{BatchNorm, BatchNormConfig, InstanceNorm, InstanceNormConfig, PaddingConfig2d, PaddingConfig3d};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops::{pool3d, resize_linear};

/// Normalisation after each convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Batch normalisation (eps 1e-5, momentum 0.1, running statistics for inference).
    Batch,
    /// Instance normalisation with learnable scale and shift (eps 1e-5), as nnU-Net uses.
    Instance,
}

/// How the expanding path up-samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpKind {
    /// Transposed convolution, kernel 2, stride 2 (halving the channels).
    Transposed,
    /// Trilinear (bilinear in 2D) interpolation ×2 followed by a 1×1 convolution halving the channels.
    Interpolate,
}

/// A convolution in 2D or 3D.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ConvNd<B: Backend> {
    /// 2D, applied to depth-1 volumes.
    Two(Conv2d<B>),
    /// 3D.
    Three(Conv3d<B>),
}

impl<B: Backend> ConvNd<B> {
    /// A `kernel`-sized convolution with stride 1 and "same" padding (kernel 3 → padding 1).
    pub fn new(dims: usize, cin: usize, cout: usize, kernel: usize, bias: bool, device: &B::Device) -> Self {
        let p = kernel / 2;
        if dims == 2 {
            Self::Two(
                Conv2dConfig::new([cin, cout], [kernel, kernel])
                    .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                    .with_bias(bias)
                    .init(device),
            )
        } else {
            Self::Three(
                Conv3dConfig::new([cin, cout], [kernel, kernel, kernel])
                    .with_padding(PaddingConfig3d::Explicit(p, p, p))
                    .with_bias(bias)
                    .init(device),
            )
        }
    }

    /// Applies the convolution to `[n, c, d, h, w]` (d = 1 in 2D).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::Two(conv) => on_planes(x, |x| conv.forward(x)),
            Self::Three(conv) => conv.forward(x),
        }
    }
}

/// Runs a 2D operation on a depth-1 volume.
pub(crate) fn on_planes<B: Backend>(x: Tensor<B, 5>, f: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>) -> Tensor<B, 5> {
    let [n, c, _, h, w] = x.dims();
    let y = f(x.reshape([n, c, h, w]));
    let [n, c, h, w] = y.dims();
    y.reshape([n, c, 1, h, w])
}

/// A transposed convolution, kernel 2, stride 2, with bias, in 2D or 3D.
#[derive(Module, Debug)]
pub enum UpConv<B: Backend> {
    /// 2D.
    Two(ConvTranspose2d<B>),
    /// 3D.
    Three(ConvTranspose3d<B>),
}

impl<B: Backend> UpConv<B> {
    fn new(dims: usize, cin: usize, cout: usize, device: &B::Device) -> Self {
        if dims == 2 {
            Self::Two(ConvTranspose2dConfig::new([cin, cout], [2, 2]).with_stride([2, 2]).init(device))
        } else {
            Self::Three(ConvTranspose3dConfig::new([cin, cout], [2, 2, 2]).with_stride([2, 2, 2]).init(device))
        }
    }

    fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::Two(conv) => on_planes(x, |x| conv.forward(x)),
            Self::Three(conv) => conv.forward(x),
        }
    }
}

/// Batch or instance normalisation.
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    /// Batch normalisation.
    Batch(BatchNorm<B>),
    /// Instance normalisation.
    Instance(InstanceNorm<B>),
}

impl<B: Backend> Norm<B> {
    /// A normalisation of `channels` channels.
    pub fn new(kind: NormKind, channels: usize, device: &B::Device) -> Self {
        match kind {
            NormKind::Batch => Self::Batch(BatchNormConfig::new(channels).init(device)),
            NormKind::Instance => Self::Instance(InstanceNormConfig::new(channels).with_affine(true).init(device)),
        }
    }

    /// Normalises `[n, c, d, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::Batch(bn) => crate::ops::batch_norm(bn, x),
            Self::Instance(inorm) => crate::ops::instance_norm(inorm, x),
        }
    }

    /// `relu(forward(x))`, the ReLU fused into the normalisation where the backend allows.
    pub fn forward_relu(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::Batch(bn) => crate::ops::batch_norm_relu(bn, x),
            Self::Instance(inorm) => crate::ops::instance_norm_relu(inorm, x),
        }
    }
}

/// `[conv 3 → norm → ReLU] × 2`, bias-free convolutions; with `residual`, the input (projected by a 1×1
/// convolution when the channels change) is added before the last ReLU, as residual-encoder U-Nets do.
#[derive(Module, Debug)]
pub struct DoubleConv<B: Backend> {
    conv1: ConvNd<B>,
    norm1: Norm<B>,
    conv2: ConvNd<B>,
    norm2: Norm<B>,
    skip: Option<ConvNd<B>>,
    residual: bool,
    slope: f64,
}

impl<B: Backend> DoubleConv<B> {
    /// A block from `cin` to `cout` channels.
    pub fn new(dims: usize, cin: usize, cout: usize, norm: NormKind, residual: bool, device: &B::Device) -> Self {
        Self::with_options(dims, cin, cout, norm, residual, false, 0.0, device)
    }

    /// A block whose convolutions have biases when `bias`, with leaky ReLUs of negative slope `slope` (0: ReLU).
    pub fn with_options(
        dims: usize,
        cin: usize,
        cout: usize,
        norm: NormKind,
        residual: bool,
        bias: bool,
        slope: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            conv1: ConvNd::new(dims, cin, cout, 3, bias, device),
            norm1: Norm::new(norm, cout, device),
            conv2: ConvNd::new(dims, cout, cout, 3, bias, device),
            norm2: Norm::new(norm, cout, device),
            skip: (residual && cin != cout).then(|| ConvNd::new(dims, cin, cout, 1, false, device)),
            residual,
            slope,
        }
    }

    fn act(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        if self.slope == 0.0 { relu(x) } else { leaky_relu(x, self.slope) }
    }

    /// `act(norm(x))`, with the normalisation and a plain ReLU fused where the backend allows.
    fn norm_act(&self, norm: &Norm<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
        if self.slope == 0.0 { norm.forward_relu(x) } else { leaky_relu(norm.forward(x), self.slope) }
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let y = self.norm_act(&self.norm1, self.conv1.forward(x.clone()));
        if !self.residual {
            return self.norm_act(&self.norm2, self.conv2.forward(y));
        }
        let y = self.norm2.forward(self.conv2.forward(y));
        let shortcut = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        self.act(y + shortcut)
    }
}

/// Up-sampling of the expanding path.
#[derive(Module, Debug)]
pub enum Up<B: Backend> {
    /// Transposed convolution.
    Transposed(UpConv<B>),
    /// Interpolation ×2 then a 1×1 convolution (with bias).
    Interpolate(ConvNd<B>),
}

impl<B: Backend> Up<B> {
    fn forward(&self, x: Tensor<B, 5>, dims: usize) -> Tensor<B, 5> {
        match self {
            Self::Transposed(up) => up.forward(x),
            Self::Interpolate(conv) => {
                let [_, _, d, h, w] = x.dims();
                let depth = if dims == 2 { d } else { 2 * d };
                conv.forward(resize_linear(x, [depth, 2 * h, 2 * w]))
            }
        }
    }
}

/// U-Net configuration.
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// 2 or 3.
    pub spatial_dims: usize,
    /// Input channels (modalities).
    pub in_channels: usize,
    /// Output classes (background included).
    pub classes: usize,
    /// Channels per level, the last being the bottleneck; its length is the depth (levels).
    pub channels: Vec<usize>,
    /// Normalisation.
    #[config(default = "NormKind::Batch")]
    pub norm: NormKind,
    /// Up-sampling.
    #[config(default = "UpKind::Transposed")]
    pub up: UpKind,
    /// Residual encoder and decoder blocks.
    #[config(default = false)]
    pub residual: bool,
    /// Extra 1×1 heads on every decoder level but the last, for deep supervision.
    #[config(default = false)]
    pub deep_supervision: bool,
    /// Biases in the 3×3 convolutions (MONAI's `BasicUNet` has them; nnU-Net's and the default U-Net do not).
    #[config(default = false)]
    pub conv_bias: bool,
    /// Negative slope of the leaky ReLUs (0: ReLU; MONAI's `BasicUNet` uses 0.1).
    #[config(default = 0.0)]
    pub negative_slope: f64,
    /// Dropout probability after every decoder block, active in training and in [`UNet::forward_mc`] (Monte-Carlo
    /// dropout); 0: none.
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// A U-Net.
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    enc: Vec<DoubleConv<B>>,
    up: Vec<Up<B>>,
    dec: Vec<DoubleConv<B>>,
    head: ConvNd<B>,
    aux_heads: Vec<ConvNd<B>>,
    spatial_dims: usize,
    dropout: f64,
}

impl UNetConfig {
    /// The exact 2D U-Net of the reference workload (c): 4 levels, 16-32-64-128, batch norm, transposed
    /// convolutions; 482,466 parameters for one input channel and two classes.
    pub fn reference_2d(in_channels: usize, classes: usize) -> Self {
        Self::new(2, in_channels, classes, vec![16, 32, 64, 128])
    }

    /// The exact 3D U-Net of the reference workload (d): 3 levels, 8-16-32, instance norm, transposed
    /// convolutions; 85,186 parameters for one input channel and two classes.
    pub fn reference_3d(in_channels: usize, classes: usize) -> Self {
        Self::new(3, in_channels, classes, vec![8, 16, 32]).with_norm(NormKind::Instance)
    }

    /// Builds the network.
    ///
    /// # Panics
    /// If `spatial_dims` is not 2 or 3, or `channels` has fewer than two levels.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet<B> {
        assert!(self.spatial_dims == 2 || self.spatial_dims == 3, "spatial_dims must be 2 or 3");
        assert!(self.channels.len() >= 2, "a U-Net needs at least two levels");
        let dims = self.spatial_dims;
        let ch = &self.channels;
        let mut enc = Vec::new();
        let mut cin = self.in_channels;
        for &c in ch {
            enc.push(DoubleConv::with_options(dims, cin, c, self.norm, self.residual, self.conv_bias, self.negative_slope, device));
            cin = c;
        }
        let mut up = Vec::new();
        let mut dec = Vec::new();
        let mut aux_heads = Vec::new();
        for level in (0..ch.len() - 1).rev() {
            let (from, to) = (ch[level + 1], ch[level]);
            up.push(match self.up {
                UpKind::Transposed => Up::Transposed(UpConv::new(dims, from, to, device)),
                UpKind::Interpolate => Up::Interpolate(ConvNd::new(dims, from, to, 1, true, device)),
            });
            dec.push(DoubleConv::with_options(dims, 2 * to, to, self.norm, self.residual, self.conv_bias, self.negative_slope, device));
            if self.deep_supervision && level > 0 {
                aux_heads.push(ConvNd::new(dims, to, self.classes, 1, true, device));
            }
        }
        UNet {
            enc,
            up,
            dec,
            head: ConvNd::new(dims, ch[0], self.classes, 1, true, device),
            aux_heads,
            spatial_dims: dims,
            dropout: self.dropout,
        }
    }
}

impl<B: Backend> UNet<B> {
    /// The structure that parameter names depend on ([`crate::transfer`]); MONAI's `BasicUNet` corresponds to
    /// channels `[f, f, 2f, 4f, 8f]` with instance norm, transposed convolutions, `conv_bias` and a negative slope
    /// of 0.1.
    pub fn layout(&self) -> crate::transfer::Layout {
        crate::transfer::Layout::UNet {
            levels: self.enc.len(),
            residual: self.enc.iter().any(|b| b.residual),
            deep_supervision: !self.aux_heads.is_empty(),
        }
    }

    /// Logits `[n, classes, d, h, w]` for `[n, in_channels, d, h, w]` (d = 1 for a 2D network). Spatial sizes must
    /// be divisible by 2^(levels − 1) (in 2D, height and width only).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_all(x).0
    }

    /// Logits of `[n, in_channels, h, w]` images, for 2D networks.
    pub fn forward_2d(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let y = self.forward(x.reshape([n, c, 1, h, w]));
        let [n, k, _, h, w] = y.dims();
        y.reshape([n, k, h, w])
    }

    /// The final logits and, with deep supervision, the lower-resolution logits of the other decoder levels
    /// (coarsest first).
    pub fn forward_all(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, Vec<Tensor<B, 5>>) {
        let (h, aux) = self.decode(x, true, false);
        (self.head.forward(h), aux)
    }

    /// Logits with the decoder's dropout active whatever the backend (one Monte-Carlo dropout sample; the masks come
    /// from the backend's seeded generator). Equal to [`UNet::forward`] when the network has no dropout.
    pub fn forward_mc(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.head.forward(self.decode(x, false, true).0)
    }

    /// Whether the network has dropout (so that [`UNet::forward_mc`] samples).
    pub fn has_dropout(&self) -> bool {
        self.dropout > 0.0
    }

    /// The encoder and decoder: the last decoder level's maps, and the auxiliary heads' logits when asked for.
    fn decode(&self, x: Tensor<B, 5>, with_aux: bool, mc: bool) -> (Tensor<B, 5>, Vec<Tensor<B, 5>>) {
        let drop = self.dropout > 0.0 && (mc || B::ad_enabled(&x.device()));
        let window = if self.spatial_dims == 2 { [1, 2, 2] } else { [2, 2, 2] };
        let mut skips = Vec::with_capacity(self.enc.len());
        let mut h = x;
        for (i, block) in self.enc.iter().enumerate() {
            if i > 0 {
                h = pool3d(h, window, true);
            }
            h = block.forward(h);
            skips.push(h.clone());
        }
        skips.pop();
        let mut aux = Vec::new();
        for (i, (up, block)) in self.up.iter().zip(&self.dec).enumerate() {
            let skip = skips.pop().expect("one skip per decoder level");
            h = block.forward(Tensor::cat(vec![skip, up.forward(h, self.spatial_dims)], 1));
            if drop {
                let keep = 1.0 - self.dropout;
                let mask = Tensor::<B, 5>::random(h.shape(), Distribution::Bernoulli(keep), &h.device());
                h = h * mask / keep;
            }
            if with_aux && let Some(head) = self.aux_heads.get(i) {
                aux.push(head.forward(h.clone()));
            }
        }
        (h, aux)
    }

    /// The last decoder level's feature maps, the input of the final 1 × 1 convolution (the layer Grad-CAM looks
    /// at for segmentation): `head_logits(decoder_features(x)) == forward(x)`.
    pub fn decoder_features(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.decode(x, false, false).0
    }

    /// Logits from [`UNet::decoder_features`].
    pub fn head_logits(&self, h: Tensor<B, 5>) -> Tensor<B, 5> {
        self.head.forward(h)
    }

    /// Number of decoder levels.
    pub fn levels(&self) -> usize {
        self.enc.len()
    }
}
