//! VGG (Simonyan & Zisserman, 2015), configurations A (11 layers) and D (16 layers).
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::blocks::conv2d;

/// Depth of a [`Vgg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VggDepth {
    /// Configuration A: 8 convolutions + 3 fully connected layers.
    Vgg11,
    /// Configuration D: 13 convolutions + 3 fully connected layers.
    Vgg16,
}

impl VggDepth {
    /// Convolution widths per block; each block ends with a 2×2 max-pool.
    fn blocks(self) -> &'static [&'static [usize]] {
        match self {
            VggDepth::Vgg11 => &[&[64], &[128], &[256, 256], &[512, 512], &[512, 512]],
            VggDepth::Vgg16 => &[&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]],
        }
    }
}

/// Configuration of [`Vgg`].
#[derive(Config, Debug)]
pub struct VggConfig {
    /// 11 or 16 layers.
    pub depth: VggDepth,
    /// Input channels.
    pub in_channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Input height and width (28 to 224).
    #[config(default = 224)]
    pub input_size: usize,
    /// Batch normalisation after each convolution (torchvision's `vgg*_bn`).
    #[config(default = false)]
    pub batch_norm: bool,
    /// Dropout probability in the classifier.
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// VGG: 3×3 convolutions in five blocks separated by max-pools, adaptive average pooling, `4096 → 4096 → classes`.
///
/// At 224×224 the pooled map is 7×7 (torchvision: 132,863,336 parameters for VGG-11 and 138,357,544 for VGG-16
/// with 1000 classes). A pool is skipped once the map is down to one pixel, and the pooled side is
/// `clamp(input/32, 1, 7)`, so small inputs get a proportionate classifier.
#[derive(Module, Debug)]
pub struct Vgg<B: Backend> {
    convs: Vec<Conv2d<B>>,
    norms: Vec<BatchNorm<B>>,
    /// Whether a max-pool follows convolution `i`.
    pool_after: Vec<bool>,
    pool: MaxPool2d,
    avgpool: AdaptiveAvgPool2d,
    dropout: Dropout,
    fc1: Linear<B>,
    fc2: Linear<B>,
    fc3: Linear<B>,
}

impl VggConfig {
    /// Side of the pooled feature map fed to the classifier.
    pub fn pooled_size(&self) -> usize {
        (self.input_size / 32).clamp(1, 7)
    }

    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vgg<B> {
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        let mut pool_after = Vec::new();
        let mut cin = self.in_channels;
        let mut side = self.input_size;
        for block in self.depth.blocks() {
            for (j, &w) in block.iter().enumerate() {
                convs.push(conv2d(cin, w, 3, 1, 1, true, device));
                if self.batch_norm {
                    norms.push(BatchNormConfig::new(w).init(device));
                }
                let last = j + 1 == block.len();
                let pool = last && side >= 2;
                if pool {
                    side /= 2;
                }
                pool_after.push(pool);
                cin = w;
            }
        }
        let p = self.pooled_size();
        Vgg {
            convs,
            norms,
            pool_after,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            avgpool: AdaptiveAvgPool2dConfig::new([p, p]).init(),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc1: LinearConfig::new(512 * p * p, 4096).init(device),
            fc2: LinearConfig::new(4096, 4096).init(device),
            fc3: LinearConfig::new(4096, self.classes).init(device),
        }
    }
}

impl<B: Backend> Vgg<B> {
    /// Whether the network has dropout (active on autodiff backends: training, Monte-Carlo dropout).
    pub fn has_dropout(&self) -> bool {
        self.dropout.prob > 0.0
    }

    /// The structure that parameter names depend on ([`crate::transfer`]).
    pub fn layout(&self) -> crate::transfer::Layout {
        let depth = if self.convs.len() == 8 { VggDepth::Vgg11 } else { VggDepth::Vgg16 };
        crate::transfer::Layout::Vgg { blocks: depth.blocks().iter().map(|b| b.len()).collect(), batch_norm: !self.norms.is_empty() }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let last = self.convs.len() - 1;
        self.forward_from(self.forward_to(x, last), last)
    }

    /// Convolutional layers a class-activation map can be taken at.
    pub fn cam_layers(&self) -> usize {
        self.convs.len()
    }

    fn conv_layer(&self, i: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.convs[i].forward(x);
        match self.norms.get(i) {
            Some(norm) => crate::ops::batch_norm_relu(norm, x),
            None => relu(x),
        }
    }

    /// The activation maps after convolution `layer` (with its normalisation and ReLU, before pooling).
    pub fn forward_to(&self, x: Tensor<B, 4>, layer: usize) -> Tensor<B, 4> {
        let mut x = x;
        for i in 0..=layer.min(self.convs.len() - 1) {
            if i > 0 && self.pool_after[i - 1] {
                x = self.pool.forward(x);
            }
            x = self.conv_layer(i, x);
        }
        x
    }

    /// Logits from the activation maps of convolution `layer`.
    pub fn forward_from(&self, a: Tensor<B, 4>, layer: usize) -> Tensor<B, 2> {
        self.fc3.forward(self.features_from(a, layer))
    }

    /// The penultimate layer's output (the input of the last linear layer) from the maps of `layer`.
    pub fn features_from(&self, a: Tensor<B, 4>, layer: usize) -> Tensor<B, 2> {
        let mut x = a;
        for i in layer..self.convs.len() {
            if i > layer {
                x = self.conv_layer(i, x);
            }
            if self.pool_after[i] {
                x = self.pool.forward(x);
            }
        }
        let x: Tensor<B, 2> = self.avgpool.forward(x).flatten(1, 3);
        let x = self.dropout.forward(relu(self.fc1.forward(x)));
        self.dropout.forward(relu(self.fc2.forward(x)))
    }
}
