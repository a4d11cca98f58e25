//! Auto-encoders: a fully connected one (plain, or denoising and sparse through how it is trained) and a
//! convolutional one. The convolutional configuration [`ConvAutoencoderConfig::reference`] is the denoising
//! auto-encoder of the reference workload (e): 257,121 parameters.
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
}

/// A fully connected auto-encoder.
#[derive(Module, Debug)]
pub struct Autoencoder<B: Backend> {
    encoder: Vec<Linear<B>>,
    decoder: Vec<Linear<B>>,
}

impl AutoencoderConfig {
    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Autoencoder<B> {
        let mut sizes = vec![self.input];
        sizes.extend(&self.hidden);
        let encoder = sizes.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        let decoder = sizes.windows(2).rev().map(|w| LinearConfig::new(w[1], w[0]).init(device)).collect();
        Autoencoder { encoder, decoder }
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
            if i == last { sigmoid(y) } else { relu(y) }
        })
    }

    /// Reconstruction of `[n, input]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.decode(self.encode(x))
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
