//! An affine-regression network for registration: an encoder of stride-2 3D convolutions over the concatenated
//! moving and fixed volumes, global average pooling and a linear head predicting twelve numbers, read as a
//! voxel-space affine about the volume's centre that starts at the identity (the head is zero-initialised).
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::leaky_relu;

use crate::ops::{Padding, identity_grid, sample_linear};

/// Configuration of [`AffineNet`].
#[derive(Config, Debug, PartialEq)]
pub struct AffineNetConfig {
    /// Encoder channels, one stride-2 convolution each.
    pub encoder: Vec<usize>,
}

/// The network: `(moving, fixed) → [n, 3, 4]` voxel-space affine matrices.
#[derive(Module, Debug)]
pub struct AffineNet<B: Backend> {
    convs: Vec<Conv3d<B>>,
    head: Linear<B>,
}

impl AffineNetConfig {
    /// Encoder 16-32-32-32.
    pub fn reference() -> Self {
        Self::new(vec![16, 32, 32, 32])
    }

    /// Builds the network; the head starts at zero, so the first prediction is the identity.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AffineNet<B> {
        let mut convs = Vec::new();
        let mut cin = 2;
        for &c in &self.encoder {
            convs.push(
                Conv3dConfig::new([cin, c], [3, 3, 3]).with_stride([2, 2, 2]).with_padding(PaddingConfig3d::Explicit(1, 1, 1)).init(device),
            );
            cin = c;
        }
        let head = LinearConfig::new(cin, 12).with_initializer(Initializer::Zeros).init(device);
        AffineNet { convs, head }
    }
}

impl<B: Backend> AffineNet<B> {
    /// The predicted affines `[n, 3, 4]`, acting on voxel coordinates (depth, height, width) of the fixed grid
    /// about its centre: `p ↦ (I + M)(p − c) + c + t`, returned as `[A | b]` with `A = I + M`,
    /// `b = c − A·c + t`.
    pub fn forward(&self, moving: Tensor<B, 5>, fixed: Tensor<B, 5>) -> Tensor<B, 3> {
        let [n, _, d, h, w] = fixed.dims();
        let mut x = Tensor::cat(vec![moving, fixed], 1);
        for conv in &self.convs {
            x = leaky_relu(conv.forward(x), 0.2);
        }
        let [_, c, dd, hh, ww] = x.dims();
        let pooled = x.reshape([n, c, dd * hh * ww]).mean_dim(2).reshape([n, c]);
        let theta = self.head.forward(pooled);
        let device = theta.device();
        let m = theta.clone().narrow(1, 0, 9).reshape([n, 3, 3]);
        let t = theta.narrow(1, 9, 3).reshape([n, 3, 1]);
        let a = m + Tensor::<B, 2>::eye(3, &device).unsqueeze::<3>().expand([n, 3, 3]);
        let centre = Tensor::<B, 1>::from_floats([(d as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0], &device)
            .reshape([1, 3, 1]);
        let b = centre.clone().expand([n, 3, 1]) - a.clone().matmul(centre.expand([n, 3, 1])) + t;
        Tensor::cat(vec![a, b], 2)
    }

    /// Warps `moving` onto the fixed grid by the predicted affine; returns the warped volume and the affines.
    pub fn register(&self, moving: Tensor<B, 5>, fixed: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 3>) {
        let affine = self.forward(moving.clone(), fixed.clone());
        let [_, _, d, h, w] = fixed.dims();
        (warp_by_affine(moving, affine.clone(), [d, h, w]), affine)
    }
}

/// Warps `moving` by per-sample voxel-space affines `[n, 3, 4]` (differentiable in both): the output voxel `p` of a
/// grid of `size` reads `moving(A·p + b)`, linearly, zero outside.
pub fn warp_by_affine<B: Backend>(moving: Tensor<B, 5>, affine: Tensor<B, 3>, size: [usize; 3]) -> Tensor<B, 5> {
    let n = moving.dims()[0];
    let device = moving.device();
    let v = size[0] * size[1] * size[2];
    let grid = identity_grid::<B>(size, &device).reshape([1, 3, v]).expand([n, 3, v]);
    let a = affine.clone().narrow(2, 0, 3);
    let b = affine.narrow(2, 3, 1);
    let coords = (a.matmul(grid) + b).reshape([n, 3, size[0], size[1], size[2]]);
    sample_linear(moving, coords, Padding::Zeros)
}
