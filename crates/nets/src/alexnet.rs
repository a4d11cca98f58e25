//! AlexNet (Krizhevsky et al., 2012) in torchvision's single-tower form.
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::SMALL_INPUT_LIMIT;
use crate::blocks::{conv2d, out_len};

/// Configuration of [`AlexNet`].
#[derive(Config, Debug)]
pub struct AlexNetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Input height and width (28 to 224).
    #[config(default = 224)]
    pub input_size: usize,
    /// Dropout probability in the classifier.
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// Five convolutions (64-192-384-256-256) with three max-pools, then `4096 → 4096 → classes`.
///
/// At 224×224 with 3 channels and 1000 classes it has torchvision's 61,100,840 parameters. Below 64 pixels the
/// first convolution is 3×3 stride 1 and the pools are 2×2.
#[derive(Module, Debug)]
pub struct AlexNet<B: Backend> {
    convs: Vec<Conv2d<B>>,
    pool: MaxPool2d,
    avgpool: AdaptiveAvgPool2d,
    dropout: Dropout,
    fc1: Linear<B>,
    fc2: Linear<B>,
    fc3: Linear<B>,
}

impl AlexNetConfig {
    fn small(&self) -> bool {
        self.input_size < SMALL_INPUT_LIMIT
    }

    /// Side of the pooled feature map fed to the classifier (6 at 224×224).
    pub fn pooled_size(&self) -> usize {
        let (k, s) = if self.small() { (2, 2) } else { (3, 2) };
        let mut x = if self.small() { self.input_size } else { out_len(self.input_size, 11, 4, 2) };
        for _ in 0..3 {
            x = out_len(x, k, s, 0);
        }
        x.clamp(1, 6)
    }

    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AlexNet<B> {
        let first = if self.small() {
            conv2d(self.in_channels, 64, 3, 1, 1, true, device)
        } else {
            conv2d(self.in_channels, 64, 11, 4, 2, true, device)
        };
        let pool = if self.small() { MaxPool2dConfig::new([2, 2]) } else { MaxPool2dConfig::new([3, 3]).with_strides([2, 2]) };
        let p = self.pooled_size();
        AlexNet {
            convs: vec![
                first,
                conv2d(64, 192, 5, 1, 2, true, device),
                conv2d(192, 384, 3, 1, 1, true, device),
                conv2d(384, 256, 3, 1, 1, true, device),
                conv2d(256, 256, 3, 1, 1, true, device),
            ],
            pool: pool.init(),
            avgpool: AdaptiveAvgPool2dConfig::new([p, p]).init(),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc1: LinearConfig::new(256 * p * p, 4096).init(device),
            fc2: LinearConfig::new(4096, 4096).init(device),
            fc3: LinearConfig::new(4096, self.classes).init(device),
        }
    }
}

impl<B: Backend> AlexNet<B> {
    /// Whether the network has dropout (active on autodiff backends: training, Monte-Carlo dropout).
    pub fn has_dropout(&self) -> bool {
        self.dropout.prob > 0.0
    }

    /// The structure that parameter names depend on ([`crate::transfer`]).
    pub fn layout(&self) -> crate::transfer::Layout {
        crate::transfer::Layout::AlexNet
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

    /// The activation maps after convolution `layer` (with its ReLU, before pooling).
    pub fn forward_to(&self, x: Tensor<B, 4>, layer: usize) -> Tensor<B, 4> {
        let mut x = x;
        for (i, conv) in self.convs.iter().enumerate().take(layer + 1) {
            if i > 0 && (i - 1 == 0 || i - 1 == 1 || i - 1 == 4) {
                x = self.pool.forward(x);
            }
            x = relu(conv.forward(x));
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
                x = relu(self.convs[i].forward(x));
            }
            if i == 0 || i == 1 || i == 4 {
                x = self.pool.forward(x);
            }
        }
        let x: Tensor<B, 2> = self.avgpool.forward(x).flatten(1, 3);
        let x = relu(self.fc1.forward(self.dropout.forward(x)));
        relu(self.fc2.forward(self.dropout.forward(x)))
    }
}
