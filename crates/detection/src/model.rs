//! The centre-point detector: a U-Net whose two output channels are a heatmap of object centres (logits) and the
//! log-diameter in millimetres, trained with CenterNet's penalty-reduced focal loss and an L1 size loss at centres.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Tensor, TensorData};
//! use vesalius_detection::model::centre_loss;
//! // A confident, correct prediction costs less than an unsure one.
//! let heat = Tensor::<Flex, 5>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0], [1, 1, 1, 2, 2]), &Default::default());
//! let size = heat.clone() * 2.0;
//! let out = |a: f32, b: f32| Tensor::<Flex, 5>::from_data(TensorData::new(vec![a, b, b, b, 2.0, 0.0, 0.0, 0.0], [1, 2, 1, 2, 2]), &Default::default());
//! let good: f32 = centre_loss(out(11.0, -2.0), heat.clone(), size.clone(), heat.clone()).into_scalar();
//! let unsure: f32 = centre_loss(out(4.6, 4.6), heat.clone(), size, heat).into_scalar();
//! assert!(good < 0.01 && unsure > 0.3);
//! ```
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use vesalius_nets::{Gru, GruConfig, NormKind, SaeClassifier, UNet, UNetConfig};

use crate::recipe::{Arch, DetRecipe};

/// A detector network.
#[derive(Module, Debug)]
pub enum Detector<B: Backend> {
    /// The centre-point heatmap U-Net: `[n, 1, d, h, w]` → `[n, 2, d, h, w]` (heatmap logit, log-diameter).
    Centre(UNet<B>),
    /// The auto-encoder patch classifier: `[n, 1, k, k]` patches → `[n, 2]` logits (background, object centre).
    Sae(SaeClassifier<B>),
    /// CNN + GRU over frames: `[n, frames, 1, h, w]` → `[n, 2, 1, h, w]`.
    Crnn(FrameGru<B>),
    /// Retina U-Net: a U-Net with a head of [`crate::retina::head_channels`] on every decoder level.
    Retina(UNet<B>),
}

/// The strides of a Retina U-Net's heads, coarsest first, for `levels` U-Net levels: 2^(levels−2), …, 2, 1.
pub fn retina_strides(levels: usize) -> Vec<usize> {
    (0..levels - 1).rev().map(|l| 1usize << l).collect()
}

/// CNN + RNN over the frames of a 2D dynamic series: a 2D U-Net (shared by every frame) turns each frame into
/// `features` channels, a GRU runs over the frames of every pixel, and a linear layer maps its last state to the
/// heatmap logit and the log-diameter.
#[derive(Module, Debug)]
pub struct FrameGru<B: Backend> {
    encoder: UNet<B>,
    gru: Gru<B>,
    head: Linear<B>,
}

impl<B: Backend> FrameGru<B> {
    /// A network with a U-Net of `channels` producing `features` per frame and a GRU of `hidden` units.
    pub fn new(channels: Vec<usize>, features: usize, hidden: usize, device: &B::Device) -> Self {
        Self {
            encoder: UNetConfig::new(2, 1, features, channels).with_norm(NormKind::Instance).init(device),
            gru: GruConfig::new(features, hidden).init(device),
            head: LinearConfig::new(hidden, 2).init(device),
        }
    }

    /// `[n, frames, 1, h, w]` series (frames as channels, depth 1) → `[n, 2, 1, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let [n, t, _, h, w] = x.dims();
        let feats = self.encoder.forward(x.reshape([n * t, 1, 1, h, w]));
        let f = feats.dims()[1];
        // [n, t, f, h, w] → [n, h, w, t, f] → sequences of pixels.
        let seq = relu(feats).reshape([n, t, f, h, w]).permute([0, 3, 4, 1, 2]).reshape([n * h * w, t, f]);
        let (_, last) = self.gru.forward(seq);
        let hidden = last.dims()[1];
        let out = self.head.forward(last.reshape([n * h * w, hidden]));
        out.reshape([n, h, w, 2]).permute([0, 3, 1, 2]).reshape([n, 2, 1, h, w])
    }
}

/// The U-Net of a centre-point recipe: a `dims`-D U-Net with one input channel and two outputs.
pub fn config(recipe: &DetRecipe) -> UNetConfig {
    UNetConfig::new(recipe.dims(), 1, 2, recipe.model.channels.clone()).with_norm(NormKind::Instance)
}

/// Builds the recipe's network (randomly initialised).
pub fn build<B: Backend>(recipe: &DetRecipe, device: &B::Device) -> Detector<B> {
    match recipe.model.arch {
        Arch::Centre => Detector::Centre(config(recipe).init(device)),
        Arch::Sae => {
            let k = recipe.model.sae.patch;
            Detector::Sae(SaeClassifier::new(k * k, &recipe.model.sae.hidden, 2, device))
        }
        Arch::Crnn => Detector::Crnn(FrameGru::new(recipe.model.channels.clone(), 16, 16, device)),
        Arch::Retina => Detector::Retina(
            UNetConfig::new(recipe.dims(), 1, crate::retina::head_channels(recipe.dims()), recipe.model.channels.clone())
                .with_norm(NormKind::Instance)
                .with_deep_supervision(true)
                .init(device),
        ),
    }
}

/// A fixed offset added to the heatmap logit, equivalent to CenterNet's bias initialisation at a prior
/// probability of 0.01 (`−ln 99`): an untrained network marks almost nothing instead of half of every image.
pub const PRIOR_LOGIT: f64 = -4.59511985013459;

/// Weight of the size loss (CenterNet's 0.1).
pub const SIZE_WEIGHT: f64 = 0.1;

/// CenterNet's loss on `[n, 2, d, h, w]` outputs: the penalty-reduced focal loss (α = 2, β = 4) of channel 0
/// (plus [`PRIOR_LOGIT`])
/// against the Gaussian `heat` targets (1 at centres), normalised by the number of centres, plus
/// [`SIZE_WEIGHT`] × the L1 error of channel 1 against `size` where `size_mask` is 1.
pub fn centre_loss<B: Backend>(out: Tensor<B, 5>, heat: Tensor<B, 5>, size: Tensor<B, 5>, size_mask: Tensor<B, 5>) -> Tensor<B, 1> {
    let [n, _, d, h, w] = out.dims();
    let logit = out.clone().slice([0..n, 0..1, 0..d, 0..h, 0..w]) + PRIOR_LOGIT;
    let pred_size = out.slice([0..n, 1..2, 0..d, 0..h, 0..w]);
    let log_p = log_sigmoid(logit.clone());
    let log_q = log_sigmoid(logit.neg());
    let p = log_p.clone().exp();
    let pos = heat.clone().greater_equal_elem(0.9999).float();
    let neg = pos.clone().neg() + 1.0;
    let one_minus_p = p.clone().neg() + 1.0;
    let pos_loss = (log_p * one_minus_p.powi_scalar(2) * pos.clone()).sum();
    let neg_weight = (heat.neg() + 1.0).powi_scalar(4);
    let neg_loss = (log_q * p.powi_scalar(2) * neg_weight * neg).sum();
    let npos = pos.sum().clamp_min(1.0);
    let focal = (pos_loss + neg_loss).neg() / npos;
    let l1 = ((pred_size - size).abs() * size_mask.clone()).sum() / size_mask.sum().clamp_min(1.0);
    focal + l1 * SIZE_WEIGHT
}
