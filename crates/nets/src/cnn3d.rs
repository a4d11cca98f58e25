//! A small 3D convolutional classifier for volumes: `[conv 3×3×3 → ReLU]` blocks, each after the first halving the
//! grid with stride 2, a global maximum over the volume (a small finding anywhere counts) and a linear layer.
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig3d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

/// Configuration of [`Cnn3d`].
#[derive(Config, Debug)]
pub struct Cnn3dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Channels per block.
    pub channels: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

impl Cnn3dConfig {
    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Cnn3d<B> {
        let mut cin = self.in_channels;
        let mut convs = Vec::new();
        for (i, &c) in self.channels.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            convs.push(
                Conv3dConfig::new([cin, c], [3, 3, 3])
                    .with_stride([stride; 3])
                    .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
                    .init(device),
            );
            cin = c;
        }
        Cnn3d { convs, fc: LinearConfig::new(cin, self.classes).init(device) }
    }
}

/// A 3D CNN classifier.
#[derive(Module, Debug)]
pub struct Cnn3d<B: Backend> {
    convs: Vec<Conv3d<B>>,
    fc: Linear<B>,
}

impl<B: Backend> Cnn3d<B> {
    /// Logits `[batch, classes]` of volumes `[batch, channels, depth, height, width]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let mut f = x;
        for conv in &self.convs {
            f = relu(conv.forward(f));
        }
        let [n, c, d, h, w] = f.dims();
        let pooled = f.reshape([n, c, d * h * w]).max_dim(2).reshape([n, c]);
        self.fc.forward(pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::Flex;

    #[test]
    fn volumes_become_logits_and_strides_halve_the_grid() {
        let device = Default::default();
        let net = Cnn3dConfig::new(1, vec![4, 8, 8], 3).init::<B>(&device);
        let x = Tensor::<B, 5>::ones([2, 1, 16, 16, 16], &device);
        assert_eq!(net.forward(x.clone()).dims(), [2, 3]);
        let mut f = x;
        for conv in &net.convs {
            f = conv.forward(f);
        }
        assert_eq!(f.dims(), [2, 8, 4, 4, 4]);
    }
}
