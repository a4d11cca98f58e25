//! One serialisable name for every classification network, and a module holding whichever was built.
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::{
    AlexNet, AlexNetConfig, GoogLeNet, GoogLeNetConfig, LeNet5, LeNet5Config, Mlp, MlpConfig, ResNet, ResNetConfig, ResNetDepth,
    SaeClassifier, Vgg, VggConfig, VggDepth,
};

/// The classification architectures, by the names recipes use (`"resnet18"`, `"lenet5"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// [`Mlp`] with hidden layers 256 and 128.
    Mlp,
    /// [`LeNet5`].
    LeNet5,
    /// [`AlexNet`].
    AlexNet,
    /// [`Vgg`] configuration A.
    Vgg11,
    /// [`Vgg`] configuration D.
    Vgg16,
    /// [`GoogLeNet`] (Inception v1).
    GoogLeNet,
    /// [`ResNet`] with 18 layers.
    ResNet18,
    /// [`ResNet`] with 34 layers.
    ResNet34,
    /// [`ResNet`] with 50 layers.
    ResNet50,
    /// [`SaeClassifier`]: the encoder of a stacked auto-encoder (hidden layers [`SAE_HIDDEN`]) and a linear head;
    /// classification recipes pre-train the encoder greedily, layer by layer, before training end to end.
    Sae,
}

/// Hidden widths of [`Arch::Sae`]'s encoder.
pub const SAE_HIDDEN: [usize; 2] = [256, 64];

impl Arch {
    /// Every architecture, in order of size.
    pub const ALL: [Arch; 10] = [
        Arch::Mlp,
        Arch::Sae,
        Arch::LeNet5,
        Arch::AlexNet,
        Arch::Vgg11,
        Arch::Vgg16,
        Arch::GoogLeNet,
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
    ];
}

/// A configuration that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The input size is outside the supported range.
    #[error("input size {0} is outside the supported range {min}..={max}", min = MIN_INPUT, max = MAX_INPUT)]
    InputSize(usize),
    /// Zero channels or classes.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// Smallest supported input side.
pub const MIN_INPUT: usize = 28;
/// Largest supported input side.
pub const MAX_INPUT: usize = 512;

/// Architecture plus the three numbers that shape it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Which network.
    pub arch: Arch,
    /// Image channels (1 for grey, 3 for RGB).
    pub in_channels: usize,
    /// Number of outputs: classes, or labels for multi-label tasks.
    pub classes: usize,
    /// Side of the square input images.
    pub input_size: usize,
}

impl ClassifierConfig {
    /// A configuration for `arch` with `in_channels` channels, `classes` outputs and `input_size`² inputs.
    pub fn new(arch: Arch, in_channels: usize, classes: usize, input_size: usize) -> Self {
        Self { arch, in_channels, classes, input_size }
    }

    /// Checks the numbers, then builds the network with PyTorch-style random initialisation on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Classifier<B>, ConfigError> {
        if !(MIN_INPUT..=MAX_INPUT).contains(&self.input_size) {
            return Err(ConfigError::InputSize(self.input_size));
        }
        if self.in_channels == 0 {
            return Err(ConfigError::Zero("in_channels"));
        }
        if self.classes == 0 {
            return Err(ConfigError::Zero("classes"));
        }
        let (c, k, s) = (self.in_channels, self.classes, self.input_size);
        Ok(match self.arch {
            Arch::Mlp => Classifier::Mlp(MlpConfig::new(c * s * s, k).init(device)),
            Arch::Sae => Classifier::Sae(SaeClassifier::new(c * s * s, &SAE_HIDDEN, k, device)),
            Arch::LeNet5 => Classifier::LeNet5(LeNet5Config::new(c, k).with_input_size(s).init(device)),
            Arch::AlexNet => Classifier::AlexNet(AlexNetConfig::new(c, k).with_input_size(s).init(device)),
            Arch::Vgg11 => Classifier::Vgg(VggConfig::new(VggDepth::Vgg11, c, k).with_input_size(s).init(device)),
            Arch::Vgg16 => Classifier::Vgg(VggConfig::new(VggDepth::Vgg16, c, k).with_input_size(s).init(device)),
            Arch::GoogLeNet => Classifier::GoogLeNet(GoogLeNetConfig::new(c, k).with_input_size(s).init(device)),
            Arch::ResNet18 => Classifier::ResNet(ResNetConfig::new(ResNetDepth::ResNet18, c, k).with_input_size(s).init(device)),
            Arch::ResNet34 => Classifier::ResNet(ResNetConfig::new(ResNetDepth::ResNet34, c, k).with_input_size(s).init(device)),
            Arch::ResNet50 => Classifier::ResNet(ResNetConfig::new(ResNetDepth::ResNet50, c, k).with_input_size(s).init(device)),
        })
    }
}

/// Any of the classification networks, as one burn [`Module`].
#[derive(Module, Debug)]
pub enum Classifier<B: Backend> {
    /// A multi-layer perceptron.
    Mlp(Mlp<B>),
    /// LeNet-5.
    LeNet5(LeNet5<B>),
    /// AlexNet.
    AlexNet(AlexNet<B>),
    /// VGG-11 or VGG-16.
    Vgg(Vgg<B>),
    /// GoogLeNet.
    GoogLeNet(GoogLeNet<B>),
    /// ResNet-18, 34 or 50.
    ResNet(ResNet<B>),
    /// A stacked auto-encoder's encoder with a linear head.
    Sae(SaeClassifier<B>),
}

impl<B: Backend> Classifier<B> {
    /// The network with a stacked auto-encoder's pre-trained encoder in place of its own, for [`Arch::Sae`]; any other
    /// network, or no auto-encoder, is returned unchanged. Errors when the layers do not match.
    pub fn with_pretrained(self, ae: Option<&crate::Autoencoder<B>>) -> Result<Self, String> {
        match (self, ae) {
            (Classifier::Sae(m), Some(ae)) => Ok(Classifier::Sae(m.with_encoder(ae)?)),
            (net, _) => Ok(net),
        }
    }

    /// The structure that parameter names depend on, for importing and exporting weights ([`crate::transfer`]).
    pub fn layout(&self) -> crate::transfer::Layout {
        match self {
            Classifier::Mlp(_) => crate::transfer::Layout::Own("mlp"),
            Classifier::LeNet5(_) => crate::transfer::Layout::Own("lenet5"),
            Classifier::Sae(_) => crate::transfer::Layout::Own("sae"),
            Classifier::AlexNet(m) => m.layout(),
            Classifier::Vgg(m) => m.layout(),
            Classifier::GoogLeNet(m) => m.layout(),
            Classifier::ResNet(m) => m.layout(),
        }
    }

    /// The name of the classification head (the last linear layer), which transfer learning replaces when the classes
    /// differ.
    pub fn head(&self) -> &'static str {
        match self {
            Classifier::AlexNet(_) | Classifier::Vgg(_) | Classifier::LeNet5(_) => "fc3",
            Classifier::GoogLeNet(_) | Classifier::ResNet(_) => "fc",
            Classifier::Mlp(_) => "out",
            Classifier::Sae(_) => "head",
        }
    }

    /// Whether the network has dropout: AlexNet, VGG, GoogLeNet and the multi-layer perceptron as configured. burn's
    /// dropout is active on autodiff backends only, so Monte-Carlo dropout samples by running the network there.
    pub fn has_dropout(&self) -> bool {
        match self {
            Classifier::Mlp(m) => m.has_dropout(),
            Classifier::AlexNet(m) => m.has_dropout(),
            Classifier::Vgg(m) => m.has_dropout(),
            Classifier::GoogLeNet(m) => m.has_dropout(),
            Classifier::LeNet5(_) | Classifier::ResNet(_) | Classifier::Sae(_) => false,
        }
    }

    /// Logits `[batch, classes]` for images `[batch, channels, size, size]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Classifier::Mlp(m) => m.forward(x),
            Classifier::LeNet5(m) => m.forward(x),
            Classifier::AlexNet(m) => m.forward(x),
            Classifier::Vgg(m) => m.forward(x),
            Classifier::GoogLeNet(m) => m.forward(x),
            Classifier::ResNet(m) => m.forward(x),
            Classifier::Sae(m) => m.forward(x),
        }
    }

    /// Layers a class-activation map (Grad-CAM) can be taken at; 0 for the fully connected networks.
    pub fn cam_layers(&self) -> usize {
        match self {
            Classifier::Mlp(_) | Classifier::Sae(_) => 0,
            Classifier::LeNet5(m) => m.cam_layers(),
            Classifier::AlexNet(m) => m.cam_layers(),
            Classifier::Vgg(m) => m.cam_layers(),
            Classifier::GoogLeNet(m) => m.cam_layers(),
            Classifier::ResNet(m) => m.cam_layers(),
        }
    }

    /// The activation maps `[batch, k, h, w]` of layer `layer` (< [`Classifier::cam_layers`]), and the logits
    /// computed from them: `forward_from(forward_to(x, l), l) == forward(x)`. `None` for the fully connected
    /// networks.
    pub fn forward_to(&self, x: Tensor<B, 4>, layer: usize) -> Option<Tensor<B, 4>> {
        Some(match self {
            Classifier::Mlp(_) | Classifier::Sae(_) => return None,
            Classifier::LeNet5(m) => m.forward_to(x, layer),
            Classifier::AlexNet(m) => m.forward_to(x, layer),
            Classifier::Vgg(m) => m.forward_to(x, layer),
            Classifier::GoogLeNet(m) => m.forward_to(x, layer),
            Classifier::ResNet(m) => m.forward_to(x, layer),
        })
    }

    /// The penultimate layer's output `[n, features]`, the input of the last linear layer: the fully connected
    /// features of LeNet-5, AlexNet and VGG, the globally averaged last maps of ResNet and GoogLeNet, the code of a
    /// stacked auto-encoder. `None` for the multi-layer perceptron.
    pub fn penultimate(&self, x: Tensor<B, 4>) -> Option<Tensor<B, 2>> {
        let last = self.cam_layers().checked_sub(1);
        Some(match self {
            Classifier::Mlp(_) => return None,
            Classifier::Sae(m) => m.code(x),
            Classifier::LeNet5(m) => m.features_from(m.forward_to(x, 1), 1),
            Classifier::AlexNet(m) => {
                let l = last?;
                m.features_from(m.forward_to(x, l), l)
            }
            Classifier::Vgg(m) => {
                let l = last?;
                m.features_from(m.forward_to(x, l), l)
            }
            Classifier::GoogLeNet(_) | Classifier::ResNet(_) => {
                let a = self.forward_to(x, last?)?;
                a.mean_dim(3).mean_dim(2).flatten(1, 3)
            }
        })
    }

    /// Logits from the activation maps of layer `layer` (see [`Classifier::forward_to`]).
    pub fn forward_from(&self, a: Tensor<B, 4>, layer: usize) -> Option<Tensor<B, 2>> {
        Some(match self {
            Classifier::Mlp(_) | Classifier::Sae(_) => return None,
            Classifier::LeNet5(m) => m.forward_from(a, layer),
            Classifier::AlexNet(m) => m.forward_from(a, layer),
            Classifier::Vgg(m) => m.forward_from(a, layer),
            Classifier::GoogLeNet(m) => m.forward_from(a, layer),
            Classifier::ResNet(m) => m.forward_from(a, layer),
        })
    }

    /// Number of trainable scalars (batch-norm running statistics are not parameters).
    pub fn param_count(&self) -> usize {
        trainable_params(self)
    }
}

/// Number of trainable scalars of any module, as PyTorch counts `parameters()`: batch-norm running statistics
/// (burn's `RunningState`, visited like parameters) are left out.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Counter {
        path: Vec<String>,
        count: usize,
    }
    impl<B: Backend> ModuleVisitor<B> for Counter {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !self.path.last().is_some_and(|n| n.starts_with("running_")) {
                self.count += param.shape().num_elements();
            }
        }
    }
    let mut counter = Counter { path: Vec::new(), count: 0 };
    module.visit(&mut counter);
    counter.count
}
