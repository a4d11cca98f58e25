//! Building blocks shared by several networks.
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Convolution (no bias) → batch normalisation → ReLU, the unit of ResNet stems and GoogLeNet.
#[derive(Module, Debug)]
pub struct ConvBnRelu<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
}

impl<B: Backend> ConvBnRelu<B> {
    /// A square `kernel`×`kernel` convolution with the given stride and symmetric padding, then BN (`eps`) and ReLU.
    pub fn new(cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            conv: conv2d(cin, cout, kernel, stride, padding, false, device),
            bn: BatchNormConfig::new(cout).with_epsilon(eps).init(device),
        }
    }

    /// Applies the block to `[batch, cin, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::ops::batch_norm_relu(&self.bn, self.conv.forward(x))
    }
}

/// A square 2D convolution with PyTorch's default initialisation.
pub(crate) fn conv2d<B: Backend>(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .with_bias(bias)
        .init(device)
}

/// Output length of a convolution or pooling window along one axis (floor mode).
pub(crate) fn out_len(len: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (len + 2 * padding).saturating_sub(kernel) / stride + 1
}
