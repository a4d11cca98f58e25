//! RED-CNN (Chen et al. 2017, "Low-dose CT with a residual encoder-decoder convolutional neural network"): five
//! unpadded convolutions and five transposed convolutions of the same kernel, with three residual shortcuts (input
//! to output, after the second convolution to before the fourth transposed one, after the fourth convolution to
//! after the first transposed one) and ReLU activations. The paper's network has 96 features and 5×5 kernels
//! (1,848,865 parameters); the output has the input's size. The last layer starts at zero, so an untrained
//! network returns its (non-negative) input unchanged.
use burn::config::Config;
use burn::module::Module;
use burn::nn::Initializer;
use burn::nn::conv::{Conv2d, ConvTranspose2d, ConvTranspose2dConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::blocks::conv2d;

/// Configuration of [`RedCnn`].
#[derive(Config, Debug, PartialEq)]
pub struct RedCnnConfig {
    /// Image channels (in and out).
    #[config(default = 1)]
    pub channels: usize,
    /// Feature maps of every hidden layer (96 in the paper).
    #[config(default = 96)]
    pub features: usize,
    /// Kernel size (5 in the paper).
    #[config(default = 5)]
    pub kernel: usize,
}

/// The residual encoder-decoder CNN.
#[derive(Module, Debug)]
pub struct RedCnn<B: Backend> {
    convs: Vec<Conv2d<B>>,
    deconvs: Vec<ConvTranspose2d<B>>,
}

impl RedCnnConfig {
    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RedCnn<B> {
        let (c, f, k) = (self.channels, self.features, self.kernel);
        let convs = (0..5).map(|i| conv2d(if i == 0 { c } else { f }, f, k, 1, 0, true, device)).collect();
        // The last transposed convolution starts at zero, so that the untrained network is the identity (its
        // input passes through the outer shortcut) and training learns the correction from there.
        let deconvs = (0..5)
            .map(|i| {
                let config = ConvTranspose2dConfig::new([f, if i == 4 { c } else { f }], [k, k]);
                if i == 4 { config.with_initializer(Initializer::Zeros) } else { config }.init(device)
            })
            .collect();
        RedCnn { convs, deconvs }
    }
}

impl<B: Backend> RedCnn<B> {
    /// The enhanced `[n, c, h, w]` image (any `h, w` larger than 5·(kernel − 1)).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let r1 = x.clone();
        let out = relu(self.convs[0].forward(x));
        let out = relu(self.convs[1].forward(out));
        let r2 = out.clone();
        let out = relu(self.convs[2].forward(out));
        let out = relu(self.convs[3].forward(out));
        let r3 = out.clone();
        let out = relu(self.convs[4].forward(out));
        let out = self.deconvs[0].forward(out) + r3;
        let out = self.deconvs[1].forward(relu(out));
        let out = self.deconvs[2].forward(relu(out)) + r2;
        let out = self.deconvs[3].forward(relu(out));
        let out = self.deconvs[4].forward(relu(out)) + r1;
        relu(out)
    }

    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    type B = burn::backend::Flex;

    #[test]
    fn paper_size_and_shapes() {
        let device = Default::default();
        let net = RedCnnConfig::new().init::<B>(&device);
        // 5 convolutions and 5 transposed convolutions of 5×5, 96 features, with biases.
        let expected = 2 * (25 * 96 + 96) + 8 * (25 * 96 * 96 + 96) - 96 + 1;
        assert_eq!(net.param_count(), expected);
        assert_eq!(expected, 1_848_865);
        let x = Tensor::<B, 4>::random([2, 1, 33, 41], Distribution::Uniform(0.0, 1.0), &device);
        let y = RedCnnConfig::new().with_features(8).init::<B>(&device).forward(x.clone());
        assert_eq!(y.dims(), [2, 1, 33, 41]);
        let change: f32 = (y - x).abs().max().into_scalar();
        assert_eq!(change, 0.0, "an untrained RED-CNN is the identity on non-negative images");
    }
}
