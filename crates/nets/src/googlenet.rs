//! GoogLeNet / Inception v1 (Szegedy et al., 2015) in torchvision's form, without auxiliary classifiers.
use burn::config::Config;
use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::SMALL_INPUT_LIMIT;
use crate::blocks::ConvBnRelu;

/// Batch-norm epsilon of torchvision's GoogLeNet.
const EPS: f64 = 1e-3;

/// Configuration of [`GoogLeNet`].
#[derive(Config, Debug)]
pub struct GoogLeNetConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Input height and width (28 to 224).
    #[config(default = 224)]
    pub input_size: usize,
    /// Dropout probability before the classifier.
    #[config(default = 0.2)]
    pub dropout: f64,
}

/// An Inception module: 1×1, 1×1→3×3, 1×1→3×3 and 3×3-max-pool→1×1 branches concatenated along channels.
///
/// The "5×5" branch uses a 3×3 convolution, as torchvision's reference implementation does.
#[derive(Module, Debug)]
pub struct Inception<B: Backend> {
    b1: ConvBnRelu<B>,
    b2a: ConvBnRelu<B>,
    b2b: ConvBnRelu<B>,
    b3a: ConvBnRelu<B>,
    b3b: ConvBnRelu<B>,
    pool: MaxPool2d,
    b4: ConvBnRelu<B>,
}

impl<B: Backend> Inception<B> {
    /// Widths: `cin`, 1×1, 3×3-reduce, 3×3, 5×5-reduce, 5×5, pool projection.
    pub fn new(c: [usize; 7], device: &B::Device) -> Self {
        let [cin, c1, c3r, c3, c5r, c5, cp] = c;
        Self {
            b1: ConvBnRelu::new(cin, c1, 1, 1, 0, EPS, device),
            b2a: ConvBnRelu::new(cin, c3r, 1, 1, 0, EPS, device),
            b2b: ConvBnRelu::new(c3r, c3, 3, 1, 1, EPS, device),
            b3a: ConvBnRelu::new(cin, c5r, 1, 1, 0, EPS, device),
            b3b: ConvBnRelu::new(c5r, c5, 3, 1, 1, EPS, device),
            pool: MaxPool2dConfig::new([3, 3]).with_strides([1, 1]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
            b4: ConvBnRelu::new(cin, cp, 1, 1, 0, EPS, device),
        }
    }

    /// Applies the module.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y1 = self.b1.forward(x.clone());
        let y2 = self.b2b.forward(self.b2a.forward(x.clone()));
        let y3 = self.b3b.forward(self.b3a.forward(x.clone()));
        let y4 = self.b4.forward(self.pool.forward(x));
        Tensor::cat(vec![y1, y2, y3, y4], 1)
    }
}

/// GoogLeNet: stem, nine Inception modules in three stages, global average pooling, dropout, linear classifier.
///
/// At 224×224 with 3 channels and 1000 classes it has torchvision's 6,624,904 parameters. Below 64 pixels the
/// stem is a 3×3 stride-1 convolution without the first max-pool.
#[derive(Module, Debug)]
pub struct GoogLeNet<B: Backend> {
    conv1: ConvBnRelu<B>,
    conv2: ConvBnRelu<B>,
    conv3: ConvBnRelu<B>,
    small: bool,
    pool3: MaxPool2d,
    pool2: MaxPool2d,
    stage3: Vec<Inception<B>>,
    stage4: Vec<Inception<B>>,
    stage5: Vec<Inception<B>>,
    avgpool: AdaptiveAvgPool2d,
    dropout: Dropout,
    fc: Linear<B>,
}

impl GoogLeNetConfig {
    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> GoogLeNet<B> {
        let small = self.input_size < SMALL_INPUT_LIMIT;
        let conv1 = if small {
            ConvBnRelu::new(self.in_channels, 64, 3, 1, 1, EPS, device)
        } else {
            ConvBnRelu::new(self.in_channels, 64, 7, 2, 3, EPS, device)
        };
        let inc = |c: [usize; 7]| Inception::new(c, device);
        GoogLeNet {
            conv1,
            conv2: ConvBnRelu::new(64, 64, 1, 1, 0, EPS, device),
            conv3: ConvBnRelu::new(64, 192, 3, 1, 1, EPS, device),
            small,
            pool3: MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_ceil_mode(true).init(),
            pool2: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).with_ceil_mode(true).init(),
            stage3: vec![inc([192, 64, 96, 128, 16, 32, 32]), inc([256, 128, 128, 192, 32, 96, 64])],
            stage4: vec![
                inc([480, 192, 96, 208, 16, 48, 64]),
                inc([512, 160, 112, 224, 24, 64, 64]),
                inc([512, 128, 128, 256, 24, 64, 64]),
                inc([512, 112, 144, 288, 32, 64, 64]),
                inc([528, 256, 160, 320, 32, 128, 128]),
            ],
            stage5: vec![inc([832, 256, 160, 320, 32, 128, 128]), inc([832, 384, 192, 384, 48, 128, 128])],
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc: LinearConfig::new(1024, self.classes).init(device),
        }
    }
}

impl<B: Backend> GoogLeNet<B> {
    /// Whether the network has dropout (active on autodiff backends: training, Monte-Carlo dropout).
    pub fn has_dropout(&self) -> bool {
        self.dropout.prob > 0.0
    }

    /// The structure that parameter names depend on ([`crate::transfer`]).
    pub fn layout(&self) -> crate::transfer::Layout {
        crate::transfer::Layout::GoogLeNet
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let last = self.cam_layers() - 1;
        self.forward_from(self.forward_to(x, last), last)
    }

    /// Layers a class-activation map can be taken at: the stem, then each Inception module.
    pub fn cam_layers(&self) -> usize {
        1 + self.stage3.len() + self.stage4.len() + self.stage5.len()
    }

    fn modules(&self) -> Vec<&Inception<B>> {
        self.stage3.iter().chain(&self.stage4).chain(&self.stage5).collect()
    }

    /// The max-pool that follows module `i` (between stages), if any.
    fn pool_after(&self, i: usize) -> Option<&MaxPool2d> {
        if i + 1 == self.stage3.len() {
            Some(&self.pool3)
        } else if i + 1 == self.stage3.len() + self.stage4.len() {
            Some(&self.pool2)
        } else {
            None
        }
    }

    /// The activation maps after layer `layer` (0: the stem before its last max-pool; k: Inception module k).
    pub fn forward_to(&self, x: Tensor<B, 4>, layer: usize) -> Tensor<B, 4> {
        let mut x = self.conv1.forward(x);
        if !self.small {
            x = self.pool3.forward(x);
        }
        x = self.conv3.forward(self.conv2.forward(x));
        if layer == 0 {
            return x;
        }
        x = self.pool3.forward(x);
        for (i, m) in self.modules().into_iter().enumerate().take(layer) {
            x = m.forward(x);
            if i + 1 < layer
                && let Some(p) = self.pool_after(i)
            {
                x = p.forward(x);
            }
        }
        x
    }

    /// Logits from the activation maps of layer `layer`.
    pub fn forward_from(&self, a: Tensor<B, 4>, layer: usize) -> Tensor<B, 2> {
        let mut x = a;
        if layer == 0 {
            x = self.pool3.forward(x);
        } else if let Some(p) = self.pool_after(layer - 1) {
            x = p.forward(x);
        }
        for (i, m) in self.modules().into_iter().enumerate().skip(layer) {
            x = m.forward(x);
            if let Some(p) = self.pool_after(i) {
                x = p.forward(x);
            }
        }
        let x: Tensor<B, 2> = self.avgpool.forward(x).flatten(1, 3);
        self.fc.forward(self.dropout.forward(x))
    }
}
