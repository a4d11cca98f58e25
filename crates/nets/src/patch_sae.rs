//! A stacked auto-encoder's encoder as a dense segmentation network: the encoder of flattened `c × k_d × k × k`
//! patches applied at every voxel (its first layer a convolution with that kernel, the others 1 × 1 × 1
//! convolutions), then a 1 × 1 × 1 linear head: voxel-wise tissue classification from the patch around each voxel,
//! as the stacked auto-encoder segmentations surveyed by Litjens et al. (2017) do, computed for a whole volume in one
//! pass.
//!
//! ```
//! use burn::tensor::{Distribution, Tensor};
//! use vesalius_nets::{AutoencoderConfig, PatchSaeConfig};
//! type B = burn::backend::Flex;
//! let device = Default::default();
//! let config = PatchSaeConfig::new(1, 3, [1, 5, 5], vec![16, 8]);
//! let ae = AutoencoderConfig::new(config.patch_inputs(), vec![16, 8]).init::<B>(&device);
//! let net = config.init::<B>(&device).with_encoder(&ae).unwrap();
//! let x = Tensor::<B, 5>::random([2, 1, 1, 12, 12], Distribution::Uniform(0.0, 1.0), &device);
//! assert_eq!(net.forward(x).dims(), [2, 3, 1, 12, 12]);
//! ```
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig3d;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::Autoencoder;

/// The shape of a [`PatchSae`].
#[derive(Config, Debug)]
pub struct PatchSaeConfig {
    /// Input channels.
    pub channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Patch (kernel) size `[d, h, w]`, each odd (`d = 1` for 2D images).
    pub patch: [usize; 3],
    /// Encoder widths, input side first.
    pub hidden: Vec<usize>,
}

/// Encoder layers over patches at every voxel, then a linear head (module docs).
#[derive(Module, Debug)]
pub struct PatchSae<B: Backend> {
    encoder: Vec<Conv3d<B>>,
    head: Conv3d<B>,
}

impl PatchSaeConfig {
    /// Values in one patch: the auto-encoder's input size.
    pub fn patch_inputs(&self) -> usize {
        self.channels * self.patch.iter().product::<usize>()
    }

    /// Checks the shape.
    pub fn check(&self) -> Result<(), String> {
        if self.patch.iter().any(|k| k.is_multiple_of(2)) {
            return Err(format!("patch sizes must be odd, got {:?}", self.patch));
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) || self.channels == 0 || self.classes < 2 {
            return Err(format!("a patch SAE needs hidden widths, channels and two classes or more, got {self:?}"));
        }
        Ok(())
    }

    /// Builds the network (randomly initialised).
    pub fn init<B: Backend>(&self, device: &B::Device) -> PatchSae<B> {
        let [kd, kh, kw] = self.patch;
        let mut encoder = vec![
            Conv3dConfig::new([self.channels, self.hidden[0]], [kd, kh, kw])
                .with_padding(PaddingConfig3d::Explicit(kd / 2, kh / 2, kw / 2))
                .init(device),
        ];
        for w in self.hidden.windows(2) {
            encoder.push(Conv3dConfig::new([w[0], w[1]], [1, 1, 1]).init(device));
        }
        let last = *self.hidden.last().unwrap_or(&1);
        PatchSae { encoder, head: Conv3dConfig::new([last, self.classes], [1, 1, 1]).init(device) }
    }
}

impl<B: Backend> PatchSae<B> {
    /// Logits `[n, classes, d, h, w]` of images `[n, c, d, h, w]` (zero padding at the borders).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.head_logits(self.features(x))
    }

    /// The code at every voxel `[n, last hidden, d, h, w]` (the layer Grad-CAM explains).
    pub fn features(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.encoder.iter().fold(x, |h, conv| relu(conv.forward(h)))
    }

    /// Logits of codes from [`PatchSae::features`].
    pub fn head_logits(&self, features: Tensor<B, 5>) -> Tensor<B, 5> {
        self.head.forward(features)
    }

    /// Takes a (pre-trained) auto-encoder's encoder: its layer `i` (`inputs × outputs`, inputs ordered channel, then
    /// depth, row, column, as a patch flattened in that order) becomes convolution `i`.
    pub fn with_encoder(mut self, ae: &Autoencoder<B>) -> Result<Self, String> {
        let layers = ae.encoder();
        if layers.len() != self.encoder.len() {
            return Err(format!("the auto-encoder has {} layers, the network {}", layers.len(), self.encoder.len()));
        }
        for (i, (linear, conv)) in layers.iter().zip(self.encoder.iter_mut()).enumerate() {
            let shape = conv.weight.dims();
            let [inputs, outputs] = linear.weight.dims();
            if outputs != shape[0] || inputs != shape[1..].iter().product::<usize>() {
                return Err(format!("layer {i}: auto-encoder weight {:?}, convolution {shape:?}", [inputs, outputs]));
            }
            // Through the data, so that the result is a fresh leaf on every backend.
            let weight = linear.weight.val().transpose().reshape(shape);
            conv.weight = Param::from_tensor(Tensor::from_data(weight.to_data(), &weight.device()));
            let (Some(from), Some(_)) = (&linear.bias, &conv.bias) else {
                return Err(format!("layer {i}: a bias is missing"));
            };
            let bias = from.val();
            conv.bias = Some(Param::from_tensor(Tensor::from_data(bias.to_data(), &bias.device())));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AutoencoderConfig;
    use burn::tensor::{Distribution, TensorData};
    type B = burn::backend::Flex;

    /// The network's code at a voxel is the auto-encoder's code of the patch around it, zero-padded at the border.
    #[test]
    fn the_code_at_each_voxel_is_the_encoders_code_of_its_patch() {
        let device = Default::default();
        let config = PatchSaeConfig::new(2, 3, [3, 3, 5], vec![6, 4]);
        config.check().unwrap();
        let ae = AutoencoderConfig::new(config.patch_inputs(), vec![6, 4]).init::<B>(&device);
        let net = config.init::<B>(&device).with_encoder(&ae).unwrap();
        let (d, h, w) = (4, 5, 6);
        let x = Tensor::<B, 5>::random([1, 2, d, h, w], Distribution::Uniform(-1.0, 1.0), &device);
        let values = x.to_data().to_vec::<f32>().unwrap();
        let codes = net.features(x).into_data().to_vec::<f32>().unwrap();
        for (z, y, xx) in [(0, 0, 0), (2, 3, 4), (3, 4, 5), (1, 2, 0)] {
            let mut patch = Vec::new();
            for c in 0..2 {
                for dz in -1i64..=1 {
                    for dy in -1i64..=1 {
                        for dx in -2i64..=2 {
                            let (pz, py, px) = (z as i64 + dz, y as i64 + dy, xx as i64 + dx);
                            let inside = (0..d as i64).contains(&pz) && (0..h as i64).contains(&py) && (0..w as i64).contains(&px);
                            patch.push(if inside { values[((c * d + pz as usize) * h + py as usize) * w + px as usize] } else { 0.0 });
                        }
                    }
                }
            }
            let code = ae.encode(Tensor::from_data(TensorData::new(patch, [1, config.patch_inputs()]), &device));
            let code = code.into_data().to_vec::<f32>().unwrap();
            for (k, want) in code.iter().enumerate() {
                let got = codes[((k * d + z) * h + y) * w + xx];
                assert!((got - want).abs() < 1e-5, "voxel ({z}, {y}, {xx}) unit {k}: {got} vs {want}");
            }
        }
    }

    /// On an autodiff backend the taken weights are trainable leaves.
    #[test]
    fn taken_weights_train() {
        type AD = burn::backend::Autodiff<B>;
        let device = Default::default();
        let config = PatchSaeConfig::new(1, 2, [1, 3, 3], vec![4]);
        let ae = AutoencoderConfig::new(9, vec![4]).init::<AD>(&device);
        let net = config.init::<AD>(&device).with_encoder(&ae).unwrap();
        let x = Tensor::<AD, 5>::random([1, 1, 1, 6, 6], Distribution::Uniform(0.0, 1.0), &device);
        let grads = net.forward(x).powi_scalar(2).mean().backward();
        let g = net.encoder[0].weight.grad(&grads).expect("the first layer's weight has a gradient");
        assert!(g.abs().sum().into_scalar() > 0.0);
    }

    #[test]
    fn shapes_are_checked() {
        assert!(PatchSaeConfig::new(1, 3, [1, 4, 5], vec![4]).check().is_err());
        assert!(PatchSaeConfig::new(1, 1, [1, 5, 5], vec![4]).check().is_err());
        assert!(PatchSaeConfig::new(1, 3, [1, 5, 5], vec![]).check().is_err());
        let device = Default::default();
        let net = PatchSaeConfig::new(1, 3, [1, 5, 5], vec![8, 4]).init::<B>(&device);
        let wrong = AutoencoderConfig::new(24, vec![8, 4]).init::<B>(&device);
        assert!(net.with_encoder(&wrong).unwrap_err().contains("layer 0"));
    }
}
