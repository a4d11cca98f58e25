//! ResNet (He et al., 2016): 18 and 34 layers with basic blocks, 50 with bottlenecks (torchvision's v1.5).
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::SMALL_INPUT_LIMIT;
use crate::blocks::{ConvBnRelu, conv2d};

/// Depth of a [`ResNet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResNetDepth {
    /// Basic blocks `[2, 2, 2, 2]`.
    ResNet18,
    /// Basic blocks `[3, 4, 6, 3]`.
    ResNet34,
    /// Bottleneck blocks `[3, 4, 6, 3]`.
    ResNet50,
}

impl ResNetDepth {
    fn layers(self) -> [usize; 4] {
        match self {
            ResNetDepth::ResNet18 => [2, 2, 2, 2],
            ResNetDepth::ResNet34 | ResNetDepth::ResNet50 => [3, 4, 6, 3],
        }
    }
}

/// Configuration of [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// 18, 34 or 50 layers.
    pub depth: ResNetDepth,
    /// Input channels.
    pub in_channels: usize,
    /// Output classes.
    pub classes: usize,
    /// Input height and width (28 to 224); below 64 the stem is 3×3 stride 1 without max-pool.
    #[config(default = 224)]
    pub input_size: usize,
    /// Width of the first stage (the stages are `width`, 2×, 4× and 8× as wide); 64 is torchvision's.
    #[config(default = 64)]
    pub width: usize,
}

/// Convolution without bias followed by batch normalisation (no activation).
#[derive(Module, Debug)]
struct ConvBn<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    fn new(cin: usize, cout: usize, k: usize, s: usize, device: &B::Device) -> Self {
        Self { conv: conv2d(cin, cout, k, s, k / 2, false, device), bn: BatchNormConfig::new(cout).init(device) }
    }
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::ops::batch_norm(&self.bn, self.conv.forward(x))
    }

    /// `relu(forward(x))`, the ReLU fused into the normalisation where the backend allows.
    fn forward_relu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::ops::batch_norm_relu(&self.bn, self.conv.forward(x))
    }
}

/// Two 3×3 convolutions with a residual connection (projected by a 1×1 convolution when the shape changes).
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    c1: ConvBn<B>,
    c2: ConvBn<B>,
    down: Option<ConvBn<B>>,
}

/// 1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, with a residual connection.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    c1: ConvBn<B>,
    c2: ConvBn<B>,
    c3: ConvBn<B>,
    down: Option<ConvBn<B>>,
}

/// Either residual block.
#[derive(Module, Debug)]
pub enum ResBlock<B: Backend> {
    /// ResNet-18/34 block.
    Basic(BasicBlock<B>),
    /// ResNet-50 block.
    Bottleneck(Bottleneck<B>),
}

impl<B: Backend> ResBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            ResBlock::Basic(b) => {
                let y = b.c2.forward(b.c1.forward_relu(x.clone()));
                let s = match &b.down {
                    Some(d) => d.forward(x),
                    None => x,
                };
                relu(y + s)
            }
            ResBlock::Bottleneck(b) => {
                let y = b.c3.forward(b.c2.forward_relu(b.c1.forward_relu(x.clone())));
                let s = match &b.down {
                    Some(d) => d.forward(x),
                    None => x,
                };
                relu(y + s)
            }
        }
    }
}

/// ResNet: stem, four stages of residual blocks (64-128-256-512 wide), global average pooling, linear classifier.
///
/// Parameter counts at 224×224 with 3 channels and 1000 classes are torchvision's: 11,689,512 (18), 21,797,672 (34)
/// and 25,557,032 (50). With the small-input stem, 3 channels and 9 classes ResNet-18 has 11,173,449.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    stem: ConvBnRelu<B>,
    maxpool: Option<MaxPool2d>,
    blocks: Vec<ResBlock<B>>,
    avgpool: AdaptiveAvgPool2d,
    fc: Linear<B>,
}

impl ResNetConfig {
    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let small = self.input_size < SMALL_INPUT_LIMIT;
        let stem = if small {
            ConvBnRelu::new(self.in_channels, self.width, 3, 1, 1, 1e-5, device)
        } else {
            ConvBnRelu::new(self.in_channels, self.width, 7, 2, 3, 1e-5, device)
        };
        let maxpool =
            (!small).then(|| MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init());
        let bottleneck = self.depth == ResNetDepth::ResNet50;
        let expansion = if bottleneck { 4 } else { 1 };
        let mut blocks = Vec::new();
        let mut cin = self.width;
        for (stage, &n) in self.depth.layers().iter().enumerate() {
            let width = self.width << stage;
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let cout = width * expansion;
                let down = (stride != 1 || cin != cout).then(|| ConvBn::new(cin, cout, 1, stride, device));
                blocks.push(if bottleneck {
                    ResBlock::Bottleneck(Bottleneck {
                        c1: ConvBn::new(cin, width, 1, 1, device),
                        c2: ConvBn::new(width, width, 3, stride, device),
                        c3: ConvBn::new(width, cout, 1, 1, device),
                        down,
                    })
                } else {
                    ResBlock::Basic(BasicBlock {
                        c1: ConvBn::new(cin, width, 3, stride, device),
                        c2: ConvBn::new(width, width, 3, 1, device),
                        down,
                    })
                });
                cin = cout;
            }
        }
        ResNet {
            stem,
            maxpool,
            blocks,
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(cin, self.classes).init(device),
        }
    }
}

impl<B: Backend> ResNet<B> {
    /// The structure that parameter names depend on ([`crate::transfer`]).
    pub fn layout(&self) -> crate::transfer::Layout {
        // 8 blocks: ResNet-18; 16: ResNet-34 or 50 (the block type tells them apart, not the stage sizes).
        let layers = if self.blocks.len() == 8 { ResNetDepth::ResNet18.layers() } else { ResNetDepth::ResNet34.layers() };
        crate::transfer::Layout::ResNet { layers }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.features(x))
    }

    /// Globally pooled features `[batch, 8·width]` (`[batch, 32·width]` for ResNet-50; 512 and 2048 at torchvision's width), the input of the classifier.
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.stem.forward(x);
        if let Some(p) = &self.maxpool {
            x = p.forward(x);
        }
        for b in &self.blocks {
            x = b.forward(x);
        }
        self.avgpool.forward(x).flatten(1, 3)
    }

    /// Layers a class-activation map can be taken at: the stem, then each residual block.
    pub fn cam_layers(&self) -> usize {
        1 + self.blocks.len()
    }

    /// The activation maps after layer `layer` (0: the stem with its max-pool; k: residual block k).
    pub fn forward_to(&self, x: Tensor<B, 4>, layer: usize) -> Tensor<B, 4> {
        let mut x = self.stem.forward(x);
        if let Some(p) = &self.maxpool {
            x = p.forward(x);
        }
        for b in self.blocks.iter().take(layer) {
            x = b.forward(x);
        }
        x
    }

    /// Logits from the activation maps of layer `layer`.
    pub fn forward_from(&self, a: Tensor<B, 4>, layer: usize) -> Tensor<B, 2> {
        let mut x = a;
        for b in self.blocks.iter().skip(layer) {
            x = b.forward(x);
        }
        self.fc.forward(self.avgpool.forward(x).flatten(1, 3))
    }
}
