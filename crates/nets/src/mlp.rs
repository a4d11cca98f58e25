//! Multi-layer perceptron on flattened images.
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

/// Configuration of [`Mlp`].
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Number of input values per sample (channels × height × width).
    pub inputs: usize,
    /// Number of output classes.
    pub classes: usize,
    /// Widths of the hidden layers.
    #[config(default = "vec![256, 128]")]
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden layer.
    #[config(default = 0.2)]
    pub dropout: f64,
}

/// A fully connected network: `Linear → ReLU → Dropout` per hidden layer, then a linear classifier.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    dropout: Dropout,
    out: Linear<B>,
}

impl MlpConfig {
    /// Builds the network on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        let mut width = self.inputs;
        let mut hidden = Vec::with_capacity(self.hidden.len());
        for &h in &self.hidden {
            hidden.push(LinearConfig::new(width, h).init(device));
            width = h;
        }
        Mlp { hidden, dropout: DropoutConfig::new(self.dropout).init(), out: LinearConfig::new(width, self.classes).init(device) }
    }
}

impl<B: Backend> Mlp<B> {
    /// Whether the network has dropout (active on autodiff backends: training, Monte-Carlo dropout).
    pub fn has_dropout(&self) -> bool {
        self.dropout.prob > 0.0
    }

    /// Logits `[batch, classes]` for images `[batch, c, h, w]` (flattened row-major).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x: Tensor<B, 2> = x.flatten(1, 3);
        for layer in &self.hidden {
            x = self.dropout.forward(relu(layer.forward(x)));
        }
        self.out.forward(x)
    }
}
