//! LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, as in the reference workload (a).
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::blocks::{conv2d, out_len};

/// Configuration of [`LeNet5`].
#[derive(Config, Debug)]
pub struct LeNet5Config {
    /// Input channels.
    pub in_channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Input height and width (at least 12).
    #[config(default = 28)]
    pub input_size: usize,
}

/// `conv(5×5, 6, pad 2) → ReLU → pool → conv(5×5, 16) → ReLU → pool → 120 → 84 → classes`.
#[derive(Module, Debug)]
pub struct LeNet5<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    fc1: Linear<B>,
    fc2: Linear<B>,
    fc3: Linear<B>,
}

impl LeNet5Config {
    /// Spatial side of the last feature map.
    pub fn feature_size(&self) -> usize {
        let s = out_len(self.input_size, 5, 1, 2) / 2;
        out_len(s, 5, 1, 0) / 2
    }

    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LeNet5<B> {
        let f = self.feature_size();
        LeNet5 {
            conv1: conv2d(self.in_channels, 6, 5, 1, 2, true, device),
            conv2: conv2d(6, 16, 5, 1, 0, true, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(16 * f * f, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, self.classes).init(device),
        }
    }
}

impl<B: Backend> LeNet5<B> {
    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_from(self.forward_to(x, 1), 1)
    }

    /// Convolutional layers a class-activation map can be taken at.
    pub fn cam_layers(&self) -> usize {
        2
    }

    /// The activation maps after convolution `layer` (with its ReLU, before pooling).
    pub fn forward_to(&self, x: Tensor<B, 4>, layer: usize) -> Tensor<B, 4> {
        let x = relu(self.conv1.forward(x));
        if layer == 0 { x } else { relu(self.conv2.forward(self.pool.forward(x))) }
    }

    /// Logits from the activation maps of convolution `layer`.
    pub fn forward_from(&self, a: Tensor<B, 4>, layer: usize) -> Tensor<B, 2> {
        self.fc3.forward(self.features_from(a, layer))
    }

    /// The penultimate layer's output `[n, 84]` (the input of the last linear layer) from the maps of `layer`.
    pub fn features_from(&self, a: Tensor<B, 4>, layer: usize) -> Tensor<B, 2> {
        let x = if layer == 0 { relu(self.conv2.forward(self.pool.forward(a))) } else { a };
        let x: Tensor<B, 2> = self.pool.forward(x).flatten(1, 3);
        let x = relu(self.fc1.forward(x));
        relu(self.fc2.forward(x))
    }
}
