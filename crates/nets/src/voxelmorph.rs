//! VoxelMorph-style registration network (Balakrishnan et al. 2019): a U-Net-like encoder/decoder on the
//! concatenated moving and fixed images predicts a dense displacement field (voxels, channels depth, height,
//! width), and the spatial transformer ([`crate::ops::warp`]) warps the moving image with it. With
//! `integration_steps > 0` the output is a stationary velocity field integrated by scaling and squaring
//! (diffeomorphic variant).
//!
//! [`VoxelMorphConfig::reference`] is the network of the reference workload (g): 272,867 parameters.
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Initializer, PaddingConfig3d};
use burn::tensor::Tensor;
use burn::tensor::activation::leaky_relu;
use burn::tensor::backend::Backend;

use crate::ops::{Padding, integrate_velocity, upsample_nearest, warp};

/// Network configuration.
#[derive(Config, Debug)]
pub struct VoxelMorphConfig {
    /// Encoder channels, one stride-2 convolution each.
    pub encoder: Vec<usize>,
    /// Decoder channels: the first `encoder.len()` convolutions are each followed by ×2 up-sampling and a skip
    /// concatenation; the rest run at full resolution.
    pub decoder: Vec<usize>,
    /// Scaling-and-squaring steps (0: the output is the displacement itself).
    #[config(default = 0)]
    pub integration_steps: usize,
}

impl VoxelMorphConfig {
    /// The reference network (workload g, VoxelMorph-1 sizes): encoder 16-32-32-32, decoder 32-32-32-32-16-16.
    pub fn reference() -> Self {
        Self::new(vec![16, 32, 32, 32], vec![32, 32, 32, 32, 16, 16])
    }

    /// Builds the network for single-channel moving and fixed images.
    ///
    /// # Panics
    /// If the decoder has fewer convolutions than the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VoxelMorph<B> {
        assert!(self.decoder.len() >= self.encoder.len(), "the decoder needs one convolution per encoder level");
        let conv = |cin: usize, cout: usize, stride: usize| {
            Conv3dConfig::new([cin, cout], [3, 3, 3]).with_stride([stride; 3]).with_padding(PaddingConfig3d::Explicit(1, 1, 1)).init(device)
        };
        let mut enc = Vec::new();
        let mut cin = 2;
        let mut skip_channels = vec![2];
        for &c in &self.encoder {
            enc.push(conv(cin, c, 2));
            skip_channels.push(c);
            cin = c;
        }
        skip_channels.pop();
        let mut dec = Vec::new();
        for (i, &c) in self.decoder.iter().enumerate() {
            dec.push(conv(cin, c, 1));
            cin = c;
            if i < self.encoder.len() {
                cin += skip_channels[skip_channels.len() - 1 - i];
            }
        }
        let mut flow = conv(cin, 3, 1);
        flow.weight = Initializer::Normal { mean: 0.0, std: 1e-5 }.init(flow.weight.dims(), device);
        flow.bias = Some(Param::from_tensor(Tensor::zeros([3], device)));
        VoxelMorph { enc, dec, flow, levels: self.encoder.len(), integration_steps: self.integration_steps }
    }
}

/// A VoxelMorph-style network.
#[derive(Module, Debug)]
pub struct VoxelMorph<B: Backend> {
    enc: Vec<Conv3d<B>>,
    dec: Vec<Conv3d<B>>,
    flow: Conv3d<B>,
    levels: usize,
    integration_steps: usize,
}

impl<B: Backend> VoxelMorph<B> {
    /// The displacement field `[n, 3, d, h, w]` (voxels) that registers `moving` to `fixed` (each `[n, 1, d, h, w]`,
    /// sides divisible by 2^levels).
    pub fn field(&self, moving: Tensor<B, 5>, fixed: Tensor<B, 5>) -> Tensor<B, 5> {
        let input = Tensor::cat(vec![moving, fixed], 1);
        let mut skips = vec![input.clone()];
        let mut h = input;
        for conv in &self.enc {
            h = leaky_relu(conv.forward(h), 0.2);
            skips.push(h.clone());
        }
        skips.pop();
        for (i, conv) in self.dec.iter().enumerate() {
            h = leaky_relu(conv.forward(h), 0.2);
            if i < self.levels {
                let skip = skips.pop().expect("one skip per level");
                h = Tensor::cat(vec![upsample_nearest(h, [2, 2, 2]), skip], 1);
            }
        }
        let out = self.flow.forward(h);
        if self.integration_steps > 0 { integrate_velocity(out, self.integration_steps) } else { out }
    }

    /// The moving image warped onto the fixed one, and the field used.
    pub fn forward(&self, moving: Tensor<B, 5>, fixed: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let flow = self.field(moving.clone(), fixed);
        (warp(moving, flow.clone(), Padding::Zeros), flow)
    }
}
