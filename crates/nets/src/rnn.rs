//! Recurrent networks: LSTM and GRU laid out as PyTorch's (fused gate weights `weight_ih [in, 4H]`,
//! `weight_hh [H, 4H]`, two bias vectors; gate order i, f, g, o for the LSTM and r, z, n for the GRU), and the
//! CNN + LSTM classifier of sequences of slices or frames. The input projection of every time step is one matrix
//! product; only the recurrent product runs step by step.
//!
//! [`CnnLstmConfig::reference`] is the sequence classifier of the reference workload (f): 546,569 parameters.
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, sigmoid, tanh};
use burn::tensor::backend::Backend;

use crate::blocks::conv2d;

/// Fused gate weights shared by the LSTM and GRU.
#[derive(Module, Debug)]
pub struct GateWeights<B: Backend> {
    /// Input weights `[input, gates·hidden]`.
    pub weight_ih: Param<Tensor<B, 2>>,
    /// Recurrent weights `[hidden, gates·hidden]`.
    pub weight_hh: Param<Tensor<B, 2>>,
    /// Input bias `[gates·hidden]`.
    pub bias_ih: Param<Tensor<B, 1>>,
    /// Recurrent bias `[gates·hidden]`.
    pub bias_hh: Param<Tensor<B, 1>>,
}

impl<B: Backend> GateWeights<B> {
    /// PyTorch's initialisation: every weight and bias uniform in ±1/√hidden.
    fn new(input: usize, hidden: usize, gates: usize, device: &B::Device) -> Self {
        let k = 1.0 / (hidden as f64).sqrt();
        let init = Initializer::Uniform { min: -k, max: k };
        Self {
            weight_ih: init.init([input, gates * hidden], device),
            weight_hh: init.init([hidden, gates * hidden], device),
            bias_ih: init.init([gates * hidden], device),
            bias_hh: init.init([gates * hidden], device),
        }
    }

    /// Input projections of all steps at once: `[batch, time, gates·hidden]` (input bias included).
    fn project(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, t, d] = x.dims();
        let g = self.weight_ih.dims()[1];
        (x.reshape([n * t, d]).matmul(self.weight_ih.val()) + self.bias_ih.val().unsqueeze()).reshape([n, t, g])
    }

    /// Recurrent projection `h · W_hh + b_hh`.
    fn recur(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        h.matmul(self.weight_hh.val()) + self.bias_hh.val().unsqueeze()
    }
}

/// LSTM configuration (one layer, unidirectional, zero initial state).
#[derive(Config, Debug)]
pub struct LstmConfig {
    /// Input features per step.
    pub input: usize,
    /// Hidden size.
    pub hidden: usize,
}

/// A one-layer LSTM.
#[derive(Module, Debug)]
pub struct Lstm<B: Backend> {
    /// Gate weights, order i, f, g, o.
    pub gates: GateWeights<B>,
    hidden: usize,
}

impl LstmConfig {
    /// Builds the layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Lstm<B> {
        Lstm { gates: GateWeights::new(self.input, self.hidden, 4, device), hidden: self.hidden }
    }
}

impl<B: Backend> Lstm<B> {
    /// Runs `[batch, time, input]`; returns every hidden state `[batch, time, hidden]` and the last one.
    pub fn forward(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [n, t, _] = x.dims();
        let hs = self.hidden;
        let xw = self.gates.project(x);
        let device = xw.device();
        let mut h = Tensor::<B, 2>::zeros([n, hs], &device);
        let mut c = Tensor::<B, 2>::zeros([n, hs], &device);
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let z = xw.clone().narrow(1, step, 1).reshape([n, 4 * hs]) + self.gates.recur(h);
            let gate = |k: usize| z.clone().narrow(1, k * hs, hs);
            let (i, f, g, o) = (sigmoid(gate(0)), sigmoid(gate(1)), tanh(gate(2)), sigmoid(gate(3)));
            c = f * c + i * g;
            h = o * tanh(c.clone());
            outputs.push(h.clone().unsqueeze_dim(1));
        }
        (Tensor::cat(outputs, 1), h)
    }
}

/// GRU configuration (one layer, unidirectional, zero initial state).
#[derive(Config, Debug)]
pub struct GruConfig {
    /// Input features per step.
    pub input: usize,
    /// Hidden size.
    pub hidden: usize,
}

/// A one-layer GRU (PyTorch's formulation: `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`).
#[derive(Module, Debug)]
pub struct Gru<B: Backend> {
    /// Gate weights, order r, z, n.
    pub gates: GateWeights<B>,
    hidden: usize,
}

impl GruConfig {
    /// Builds the layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gru<B> {
        Gru { gates: GateWeights::new(self.input, self.hidden, 3, device), hidden: self.hidden }
    }
}

impl<B: Backend> Gru<B> {
    /// Runs `[batch, time, input]`; returns every hidden state `[batch, time, hidden]` and the last one.
    pub fn forward(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [n, t, _] = x.dims();
        let hs = self.hidden;
        let xw = self.gates.project(x);
        let mut h = Tensor::<B, 2>::zeros([n, hs], &xw.device());
        let mut outputs = Vec::with_capacity(t);
        for step in 0..t {
            let xs = xw.clone().narrow(1, step, 1).reshape([n, 3 * hs]);
            let hw = self.gates.recur(h.clone());
            let r = sigmoid(xs.clone().narrow(1, 0, hs) + hw.clone().narrow(1, 0, hs));
            let z = sigmoid(xs.clone().narrow(1, hs, hs) + hw.clone().narrow(1, hs, hs));
            let cand = tanh(xs.narrow(1, 2 * hs, hs) + r * hw.narrow(1, 2 * hs, hs));
            h = (z.clone().neg() + 1.0) * cand + z * h;
            outputs.push(h.clone().unsqueeze_dim(1));
        }
        (Tensor::cat(outputs, 1), h)
    }
}

/// CNN + LSTM over sequences of images (slices or frames): each frame goes through
/// `[conv 3×3 → ReLU → max-pool 2]` blocks, the flattened features of the frames feed an LSTM, and a linear
/// layer classifies the last hidden state — with `bidirectional`, the last states of an LSTM over the frames and of
/// one over them in reverse order, side by side.
#[derive(Config, Debug)]
pub struct CnnLstmConfig {
    /// Channels per frame.
    pub in_channels: usize,
    /// Frame size (square).
    pub frame_size: usize,
    /// Convolution channels per block.
    pub channels: Vec<usize>,
    /// LSTM hidden size.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
    /// Also read the frames in reverse order (for slices of a volume, where no order is causal).
    #[config(default = false)]
    pub bidirectional: bool,
    /// Reduce each frame's feature maps to their per-channel maximum (translation invariant, `channels` features per
    /// frame) instead of flattening them.
    #[config(default = false)]
    pub global_pool: bool,
}

impl CnnLstmConfig {
    /// The reference sequence classifier (workload f): 32×32 frames, blocks of 16 and 32 channels, LSTM(2048 → 64),
    /// 9 classes.
    pub fn reference() -> Self {
        Self::new(1, 32, vec![16, 32], 64, 9)
    }

    /// Builds the network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> CnnLstm<B> {
        let mut cin = self.in_channels;
        let mut convs = Vec::new();
        for &c in &self.channels {
            convs.push(conv2d(cin, c, 3, 1, 1, true, device));
            cin = c;
        }
        let side = self.frame_size >> self.channels.len();
        let features = if self.global_pool { cin } else { cin * side * side };
        let directions = if self.bidirectional { 2 } else { 1 };
        CnnLstm {
            convs,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            lstm: LstmConfig::new(features, self.hidden).init(device),
            backward: self.bidirectional.then(|| LstmConfig::new(features, self.hidden).init(device)),
            fc: LinearConfig::new(directions * self.hidden, self.classes).init(device),
            global_pool: self.global_pool,
        }
    }
}

/// A CNN + LSTM sequence classifier.
#[derive(Module, Debug)]
pub struct CnnLstm<B: Backend> {
    convs: Vec<Conv2d<B>>,
    pool: MaxPool2d,
    lstm: Lstm<B>,
    backward: Option<Lstm<B>>,
    fc: Linear<B>,
    global_pool: bool,
}

impl<B: Backend> CnnLstm<B> {
    /// Logits `[batch, classes]` of `[batch, time, channels, size, size]` sequences.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 2> {
        let [n, t, c, h, w] = x.dims();
        let mut f = x.reshape([n * t, c, h, w]);
        for conv in &self.convs {
            f = self.pool.forward(relu(conv.forward(f)));
        }
        let [_, k, hh, ww] = f.dims();
        let seq =
            if self.global_pool { f.reshape([n * t, k, hh * ww]).max_dim(2).reshape([n, t, k]) } else { f.reshape([n, t, k * hh * ww]) };
        let (_, last) = self.lstm.forward(seq.clone());
        let state = match &self.backward {
            Some(b) => Tensor::cat(vec![last, b.forward(seq.flip([1])).1], 1),
            None => last,
        };
        self.fc.forward(state)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use burn::tensor::Distribution;
    type B = burn::backend::Flex;

    #[test]
    fn a_bidirectional_cnn_lstm_adds_the_reversed_frames_state() {
        let device = Default::default();
        let net = CnnLstmConfig::new(1, 8, vec![4], 6, 2).with_bidirectional(true).with_global_pool(true).init::<B>(&device);
        let x = Tensor::<B, 5>::random([2, 5, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        // by hand: per-frame features (channel maxima), the forward LSTM's last state, and the backward LSTM's last
        // state over the frames in reverse order, built frame by frame
        let f = net.pool.forward(relu(net.convs[0].forward(x.clone().reshape([10, 1, 8, 8]))));
        let seq = f.reshape([10, 4, 16]).max_dim(2).reshape([2, 5, 4]);
        let reversed = Tensor::cat((0..5).rev().map(|t| seq.clone().narrow(1, t, 1)).collect(), 1);
        let state = Tensor::cat(vec![net.lstm.forward(seq).1, net.backward.as_ref().unwrap().forward(reversed).1], 1);
        let expected: Vec<f32> = net.fc.forward(state).into_data().to_vec().unwrap();
        let got: Vec<f32> = net.forward(x).into_data().to_vec().unwrap();
        assert!(expected.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-5), "{expected:?} {got:?}");
        assert_eq!(CnnLstmConfig::reference().init::<B>(&device).fc.weight.dims(), [64, 9], "the reference network is unchanged");
    }
}
