//! Learning-based registration: training a [`VoxelMorph`] network on pairs of volumes, unsupervised
//! (`similarity(warped, fixed) + λ·diffusion(field)`) or with label supervision (plus `w·(1 − soft Dice)` of the
//! warped one-hot moving labels against the fixed labels), as in Balakrishnan et al. 2019.
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor};
use vesalius_nets::loss::{grad_l2, one_hot};
use vesalius_nets::ops::{Padding, warp};
use vesalius_nets::{VoxelMorph, VoxelMorphConfig};

use crate::similarity::Similarity;

/// One training pair, `[1, 1, d, h, w]` intensities in [0, 1] with optional integer label maps `[1, d, h, w]`
/// (sides divisible by 2^encoder levels).
#[derive(Clone, Debug)]
pub struct Pair<B: AutodiffBackend> {
    /// Moving image.
    pub moving: Tensor<B, 5>,
    /// Fixed image.
    pub fixed: Tensor<B, 5>,
    /// Labels of the moving image, for label-supervised training.
    pub moving_labels: Option<Tensor<B, 4, Int>>,
    /// Labels of the fixed image.
    pub fixed_labels: Option<Tensor<B, 4, Int>>,
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct LearnOptions {
    /// Image similarity.
    pub similarity: Similarity,
    /// Weight λ of the diffusion regulariser (VoxelMorph: 0.01 with MSE, 1 with NCC).
    pub smoothness: f64,
    /// Weight of the label Dice term (0: unsupervised).
    pub label_weight: f64,
    /// Number of label classes (background included) for the Dice term.
    pub classes: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
}

impl Default for LearnOptions {
    fn default() -> Self {
        Self { similarity: Similarity::Mse, smoothness: 0.01, label_weight: 0.0, classes: 2, learning_rate: 1e-4 }
    }
}

/// The training loss of one pair: similarity + λ·diffusion (+ label Dice term); returns the total.
pub fn pair_loss<B: AutodiffBackend>(net: &VoxelMorph<B>, pair: &Pair<B>, opts: &LearnOptions) -> Tensor<B, 1> {
    let (warped, flow) = net.forward(pair.moving.clone(), pair.fixed.clone());
    let mask = pair.fixed.ones_like();
    let mut loss = opts.similarity.loss(warped, pair.fixed.clone(), mask) + grad_l2(flow.clone()) * opts.smoothness;
    if let (true, Some(ml), Some(fl)) = (opts.label_weight > 0.0, &pair.moving_labels, &pair.fixed_labels) {
        let moved = warp(one_hot(ml.clone(), opts.classes), flow, Padding::Border);
        let target = one_hot(fl.clone(), opts.classes);
        let [n, c, d, h, w] = target.dims();
        let (p, g) = (moved.reshape([n, c, d * h * w]), target.reshape([n, c, d * h * w]));
        let dice = ((p.clone() * g.clone()).sum_dim(2) * 2.0 + 1e-5) / (p.sum_dim(2) + g.sum_dim(2) + 1e-5);
        loss = loss + (dice.neg() + 1.0).mean() * opts.label_weight;
    }
    loss
}

/// Trains a network built from `config` for `steps` Adam steps, taking pairs from `next_pair(step)` (a fixed list
/// cycled, or pairs drawn anew each step); `on_step(step, loss)` sees every loss. Returns the trained network.
pub fn train<B: AutodiffBackend>(
    config: &VoxelMorphConfig,
    steps: usize,
    opts: &LearnOptions,
    device: &B::Device,
    mut next_pair: impl FnMut(usize) -> Pair<B>,
    mut on_step: impl FnMut(usize, f64),
) -> VoxelMorph<B> {
    let mut net = config.init::<B>(device);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<B, VoxelMorph<B>>();
    for step in 0..steps {
        let pair = next_pair(step);
        let loss = pair_loss(&net, &pair, opts);
        on_step(step, loss.clone().into_scalar().elem::<f64>());
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(opts.learning_rate, net, grads);
    }
    net
}

/// The displacement field the trained network predicts for a pair (no gradient).
pub fn predict<B: AutodiffBackend>(
    net: &VoxelMorph<B>,
    moving: Tensor<B::InnerBackend, 5>,
    fixed: Tensor<B::InnerBackend, 5>,
) -> Tensor<B::InnerBackend, 5> {
    net.valid().field(moving, fixed)
}
