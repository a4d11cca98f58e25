//! The convolutional recurrent reconstruction network of Qin et al. (2019, "Convolutional recurrent neural
//! networks for dynamic MR image reconstruction") for Cartesian under-sampled frames: `iterations` unrolled steps
//! that share their weights; in each, `layers` CRNN-i units — `H_l⁽ⁱ⁾ = ReLU(W_l ∗ H_{l−1}⁽ⁱ⁾ + U_l ∗ H_l⁽ⁱ⁻¹⁾)`,
//! recurrent over iterations — a convolution back to the complex image added to the current estimate, then a
//! **data-consistency** step in k-space that puts the measured lines back: `x ← F⁻¹(m ⊙ k₀ + (1 − m) ⊙ F x)`.
//!
//! For a dynamic series (`temporal`), the first unit is the paper's BCRNN-t-i: recurrent over frames in both
//! directions as well as over iterations, `H_{1,t}⁽ⁱ⁾ = H→ + H←` with
//! `H→_t = ReLU(W_1 ∗ x_t + U_1 ∗ H_{1,t}⁽ⁱ⁻¹⁾ + T→ ∗ H→_{t−1})` (and `H←` from frame `t + 1` with `T←`), so every
//! frame's reconstruction draws on the lines measured in the others; each frame keeps its own measured lines.
//!
//! Images are complex, as two channels (real, imaginary). The Fourier transform is [`dft2`]: the DFT as products
//! with cosine and sine matrices — one real block matrix per axis acting on rows `[re | im]`, built once per size —,
//! which every backend's autodiff differentiates (tested against `rustfft` in the enhancement crate).
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use std::sync::{Arc, Mutex};

use crate::blocks::conv2d;

/// Largest number of DFT matrices [`dft_block`] keeps (one per axis length and direction).
const DFT_CACHE: usize = 16;

/// The real `2n × 2n` matrix that applies the DFT along an axis of length `n` to complex rows laid out as
/// `[re | im]` (row vector times matrix): `[[C, −S], [S, C]]` forward (`e^{−2πijk/n}`), `[[C, S], [−S, C]]` inverse
/// (unscaled), with `C = cos(2πjk/n)` and `S = sin(2πjk/n)`. Built once per length and direction and kept (at
/// most [`DFT_CACHE`] of them).
fn dft_block(n: usize, inverse: bool) -> Arc<Vec<f32>> {
    static CACHE: Mutex<Vec<((usize, bool), Arc<Vec<f32>>)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, m)) = cache.iter().find(|(key, _)| *key == (n, inverse)) {
        return Arc::clone(m);
    }
    let sign = if inverse { -1.0 } else { 1.0 };
    let mut m = vec![0.0f32; 4 * n * n];
    for j in 0..n {
        for k in 0..n {
            // (j·k) mod n keeps the angle small, so f64 → f32 loses nothing for large n.
            let t = 2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
            let (c, s) = (t.cos() as f32, (sign * t.sin()) as f32);
            // Rows j (real part in) and n + j (imaginary part in); columns k (real out) and n + k (imaginary out).
            m[j * 2 * n + k] = c;
            m[j * 2 * n + n + k] = -s;
            m[(n + j) * 2 * n + k] = s;
            m[(n + j) * 2 * n + n + k] = c;
        }
    }
    let m = Arc::new(m);
    if cache.len() == DFT_CACHE {
        cache.remove(0);
    }
    cache.push(((n, inverse), Arc::clone(&m)));
    m
}

/// The DFT along the last axis of complex rows `[rows, 2, n]` (each row its real part, then its imaginary part):
/// one product with [`dft_block`]; the inverse divided by `n`.
fn dft_rows<B: Backend>(x: Tensor<B, 3>, inverse: bool) -> Tensor<B, 3> {
    let [rows, _, n] = x.dims();
    let m = dft_block(n, inverse);
    let m = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(m.to_vec(), [2 * n, 2 * n]), &x.device());
    let y = x.reshape([rows, 2 * n]).matmul(m);
    let y = if inverse { y * (1.0 / n as f64) } else { y };
    y.reshape([rows, 2, n])
}

/// The 2D DFT of complex images `[b, 2, h, w]` (real, imaginary channels), over the last two axes: along the
/// width on rows `[b·h, 2, w]`, then along the height on rows `[b·w, 2, h]`.
fn dft2_packed<B: Backend>(x: Tensor<B, 4>, inverse: bool) -> Tensor<B, 4> {
    let [b, _, h, w] = x.dims();
    let y = dft_rows(x.permute([0, 2, 1, 3]).reshape([b * h, 2, w]), inverse).reshape([b, h, 2, w]);
    let z = dft_rows(y.permute([0, 3, 2, 1]).reshape([b * w, 2, h]), inverse).reshape([b, w, 2, h]);
    z.permute([0, 2, 3, 1])
}

/// The 2D DFT of complex `[b, c, h, w]` images (real and imaginary parts), over the last two axes: unnormalised
/// forward, inverse divided by `h·w` (NumPy's convention). Differentiable on every backend.
pub fn dft2<B: Backend>(re: Tensor<B, 4>, im: Tensor<B, 4>, inverse: bool) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, c, h, w] = re.dims();
    // Channels as images: [b·c, 2, h, w].
    let x = Tensor::stack::<5>(vec![re, im], 2).reshape([b * c, 2, h, w]);
    let y = dft2_packed(x, inverse).reshape([b, c, 2, h, w]);
    let re = y.clone().slice([0..b, 0..c, 0..1, 0..h, 0..w]).reshape([b, c, h, w]);
    let im = y.slice([0..b, 0..c, 1..2, 0..h, 0..w]).reshape([b, c, h, w]);
    (re, im)
}

/// Replaces the measured k-space lines of a complex image `[b, 2, h, w]`: `F⁻¹(m ⊙ k₀ + (1 − m) ⊙ F x)`, with `k0`
/// `[b, 2, h, w]` (real, imaginary) and the mask `[b, 1, h, w]` (1 where measured).
pub fn data_consistency<B: Backend>(x: Tensor<B, 4>, k0: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 4> {
    let keep = mask.clone().neg() + 1.0;
    dft2_packed(dft2_packed(x, false) * keep + k0 * mask, true)
}

/// Configuration of [`Crnn`].
#[derive(Config, Debug, PartialEq)]
pub struct CrnnConfig {
    /// Unrolled iterations (5 in the paper's ablations for single frames).
    #[config(default = 5)]
    pub iterations: usize,
    /// Feature maps of the recurrent units (64 in the paper).
    #[config(default = 32)]
    pub features: usize,
    /// CRNN-i units per iteration.
    #[config(default = 3)]
    pub layers: usize,
    /// Whether the first unit is also recurrent over the frames of a dynamic series, in both directions
    /// (BCRNN-t-i).
    #[config(default = false)]
    pub temporal: bool,
}

/// The convolutional recurrent reconstruction network.
#[derive(Module, Debug)]
pub struct Crnn<B: Backend> {
    input: Vec<Conv2d<B>>,
    hidden: Vec<Conv2d<B>>,
    out: Conv2d<B>,
    /// BCRNN-t-i: the first unit's convolutions of the previous frame's state (forward) and the next frame's
    /// (backward); empty for single frames.
    time: Vec<Conv2d<B>>,
    iterations: usize,
}

impl CrnnConfig {
    /// Builds the network (3×3 convolutions).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Crnn<B> {
        let f = self.features;
        let input = (0..self.layers).map(|l| conv2d(if l == 0 { 2 } else { f }, f, 3, 1, 1, true, device)).collect();
        let hidden = (0..self.layers).map(|_| conv2d(f, f, 3, 1, 1, true, device)).collect();
        let time = if self.temporal { (0..2).map(|_| conv2d(f, f, 3, 1, 1, false, device)).collect() } else { Vec::new() };
        Crnn { input, hidden, out: conv2d(f, 2, 3, 1, 1, true, device), time, iterations: self.iterations }
    }
}

impl<B: Backend> Crnn<B> {
    /// Reconstructs complex images `[b, 2, h, w]` from their zero-filled estimate `x0`, the measured k-space `k0`
    /// (`[b, 2, h, w]`) and the sampling mask (`[b, 1, h, w]`): single frames.
    pub fn forward(&self, x0: Tensor<B, 4>, k0: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x0.dims();
        let five = |x: Tensor<B, 4>, c: usize| x.reshape([b, 1, c, h, w]);
        self.forward_frames(five(x0, c), five(k0, 2), five(mask, 1)).reshape([b, 2, h, w])
    }

    /// Whether the first unit is recurrent over frames (BCRNN-t-i).
    pub fn is_temporal(&self) -> bool {
        !self.time.is_empty()
    }

    /// Reconstructs dynamic series `[b, t, 2, h, w]` (frames along the second axis) from their zero-filled
    /// estimates, measured k-space (`[b, t, 2, h, w]`) and masks (`[b, t, 1, h, w]`, one per frame). Without
    /// temporal recurrence every frame is reconstructed on its own.
    pub fn forward_frames(&self, x0: Tensor<B, 5>, k0: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, t, _, h, w] = x0.dims();
        let mut x = x0.reshape([b * t, 2, h, w]);
        let k0 = k0.reshape([b * t, 2, h, w]);
        let mask = mask.reshape([b * t, 1, h, w]);
        let mut states: Vec<Option<Tensor<B, 4>>> = vec![None; self.input.len()];
        for _ in 0..self.iterations {
            let mut hid = x.clone();
            for (l, (wi, wh)) in self.input.iter().zip(&self.hidden).enumerate() {
                let mut pre = wi.forward(hid);
                if let Some(prev) = states[l].take() {
                    pre = pre + wh.forward(prev);
                }
                hid = if l == 0 && self.is_temporal() && t > 1 { self.over_frames(pre, b, t) } else { relu(pre) };
                states[l] = Some(hid.clone());
            }
            x = data_consistency(x + self.out.forward(hid), k0.clone(), mask.clone());
        }
        x.reshape([b, t, 2, h, w])
    }

    /// The bidirectional recurrence over frames of the first unit: `pre` (`[b·t, f, h, w]`, frames of a series
    /// consecutive) holds each frame's input and iteration terms.
    fn over_frames(&self, pre: Tensor<B, 4>, b: usize, t: usize) -> Tensor<B, 4> {
        let [_, f, h, w] = pre.dims();
        let pre = pre.reshape([b, t, f, h, w]);
        let frame = |s: usize| pre.clone().slice([0..b, s..s + 1, 0..f, 0..h, 0..w]).reshape([b, f, h, w]);
        let run = |conv: &Conv2d<B>, order: Vec<usize>| {
            let mut out: Vec<Option<Tensor<B, 4>>> = vec![None; t];
            let mut prev: Option<Tensor<B, 4>> = None;
            for s in order {
                let p = match prev.take() {
                    Some(state) => frame(s) + conv.forward(state),
                    None => frame(s),
                };
                let state = relu(p);
                out[s] = Some(state.clone());
                prev = Some(state);
            }
            out
        };
        let forward = run(&self.time[0], (0..t).collect());
        let backward = run(&self.time[1], (0..t).rev().collect());
        let frames: Vec<Tensor<B, 5>> =
            forward.into_iter().zip(backward).filter_map(|(a, b2)| Some((a? + b2?).reshape([b, 1, f, h, w]))).collect();
        Tensor::cat(frames, 1).reshape([b * t, f, h, w])
    }

    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};
    type B = burn::backend::Flex;

    #[test]
    fn dft_round_trip_and_dc_of_a_constant() {
        let device = Default::default();
        let re = Tensor::<B, 4>::random([1, 1, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        let im = Tensor::<B, 4>::random([1, 1, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        let (kr, ki) = dft2(re.clone(), im.clone(), false);
        let (r, i) = dft2(kr, ki, true);
        let err: f32 = ((r - re).abs().max() + (i - im).abs().max()).into_scalar();
        assert!(err < 1e-5, "{err}");
        let ones = Tensor::<B, 4>::ones([1, 1, 4, 4], &device);
        let (kr, ki) = dft2(ones.clone(), ones.zeros_like(), false);
        let k: Vec<f32> = kr.into_data().to_vec().unwrap();
        assert_eq!(k[0], 16.0);
        assert!(k[1..].iter().all(|v| v.abs() < 1e-5) && ki.abs().max().into_scalar() < 1e-5);
    }

    #[test]
    fn dft_of_a_batch_transforms_each_image_on_its_own() {
        // Two samples of three channels, non-square: each [h, w] image's transform is the one it has alone.
        let device = Default::default();
        let (b, c, h, w) = (2, 3, 5, 7);
        let re = Tensor::<B, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let im = Tensor::<B, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        for inverse in [false, true] {
            let (kr, ki) = dft2(re.clone(), im.clone(), inverse);
            for (i, j) in [(0, 0), (0, 2), (1, 1)] {
                let one = |t: &Tensor<B, 4>| t.clone().slice([i..i + 1, j..j + 1, 0..h, 0..w]);
                let (ar, ai) = dft2(one(&re), one(&im), inverse);
                let err: f32 = ((one(&kr) - ar).abs().max() + (one(&ki) - ai).abs().max()).into_scalar();
                assert!(err < 1e-5, "inverse {inverse}, image ({i}, {j}): {err}");
            }
        }
    }

    #[test]
    fn data_consistency_with_every_line_measured_returns_the_measurement() {
        let device = Default::default();
        let truth = Tensor::<B, 4>::random([2, 2, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let [b, _, h, w] = truth.dims();
        let (kr, ki) = dft2(truth.clone().slice([0..b, 0..1, 0..h, 0..w]), truth.clone().slice([0..b, 1..2, 0..h, 0..w]), false);
        let k0 = Tensor::cat(vec![kr, ki], 1);
        let wrong = Tensor::<B, 4>::zeros([2, 2, 8, 8], &device);
        let all = Tensor::<B, 4>::ones([2, 1, 8, 8], &device);
        let err: f32 = (data_consistency(wrong.clone(), k0.clone(), all) - truth.clone()).abs().max().into_scalar();
        assert!(err < 1e-4, "{err}");
        // With no line measured the estimate is kept.
        let none = Tensor::<B, 4>::zeros([2, 1, 8, 8], &device);
        let kept: f32 = data_consistency(truth.clone(), k0, none).sub(truth).abs().max().into_scalar();
        assert!(kept < 1e-4, "{kept}");
    }

    #[test]
    fn crnn_keeps_shapes_and_measured_lines() {
        let device = Default::default();
        let net = CrnnConfig::new().with_features(4).with_iterations(2).init::<B>(&device);
        let x0 = Tensor::<B, 4>::random([1, 2, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let k0 = Tensor::<B, 4>::random([1, 2, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let mut m = vec![0.0f32; 64];
        m[..16].iter_mut().for_each(|v| *v = 1.0); // the first two k-space rows
        let mask = Tensor::<B, 4>::from_data(TensorData::new(m.clone(), [1, 1, 8, 8]), &device);
        let y = net.forward(x0, k0.clone(), mask.clone());
        assert_eq!(y.dims(), [1, 2, 8, 8]);
        let (kr, ki) = dft2(y.clone().slice([0..1, 0..1, 0..8, 0..8]), y.slice([0..1, 1..2, 0..8, 0..8]), false);
        let measured = (Tensor::cat(vec![kr, ki], 1) - k0) * mask;
        assert!(measured.abs().max().into_scalar() < 1e-3, "measured lines are kept exactly");
    }

    /// A frame's reconstruction depends on the other frames' measurements only through the temporal unit, in
    /// both directions; measured lines stay exact in every frame.
    #[test]
    fn the_temporal_unit_links_frames_both_ways() {
        let device = Default::default();
        let (t, h, w) = (3, 8, 8);
        let rand5 = |c: usize| Tensor::<B, 5>::random([1, t, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let (x0, k0) = (rand5(2), rand5(2));
        let mut m = vec![0.0f32; t * h * w];
        for f in 0..t {
            m[f * h * w + f * w..f * h * w + (f + 2) * w].iter_mut().for_each(|v| *v = 1.0); // rows f, f + 1
        }
        let mask = Tensor::<B, 5>::from_data(TensorData::new(m, [1, t, 1, h, w]), &device);
        // Change only the last frame's input: frame 0 moves through the backward recurrence (temporal) or not at all.
        let x1 = x0.clone().slice_assign([0..1, t - 1..t, 0..2, 0..h, 0..w], Tensor::ones([1, 1, 2, h, w], &device) * 3.0);
        let first = |net: &Crnn<B>, x: Tensor<B, 5>| net.forward_frames(x, k0.clone(), mask.clone()).slice([0..1, 0..1, 0..2, 0..h, 0..w]);
        for temporal in [false, true] {
            let net = CrnnConfig::new().with_features(4).with_iterations(2).with_temporal(temporal).init::<B>(&device);
            assert_eq!(net.is_temporal(), temporal);
            let moved: f32 = (first(&net, x0.clone()) - first(&net, x1.clone())).abs().max().into_scalar();
            if temporal {
                assert!(moved > 1e-4, "frame 0 must see frame {}: {moved}", t - 1);
            } else {
                assert!(moved < 1e-6, "single-frame units keep frames apart: {moved}");
            }
            let y = net.forward_frames(x1.clone(), k0.clone(), mask.clone()).reshape([t, 2, h, w]);
            let (kr, ki) = dft2(y.clone().slice([0..t, 0..1, 0..h, 0..w]), y.slice([0..t, 1..2, 0..h, 0..w]), false);
            let measured = (Tensor::cat(vec![kr, ki], 1) - k0.clone().reshape([t, 2, h, w])) * mask.clone().reshape([t, 1, h, w]);
            assert!(measured.abs().max().into_scalar() < 1e-3, "measured lines are kept exactly");
        }
        // A temporal network on a single frame equals its own single-frame path.
        let net = CrnnConfig::new().with_features(4).with_iterations(2).with_temporal(true).init::<B>(&device);
        let one = |x: Tensor<B, 5>| x.slice([0..1, 0..1, 0..2, 0..h, 0..w]);
        let a = net.forward_frames(one(x0.clone()), one(k0.clone()), mask.clone().slice([0..1, 0..1, 0..1, 0..h, 0..w]));
        let b = net.forward(
            one(x0.clone()).reshape([1, 2, h, w]),
            one(k0.clone()).reshape([1, 2, h, w]),
            mask.clone().slice([0..1, 0..1, 0..1, 0..h, 0..w]).reshape([1, 1, h, w]),
        );
        let diff: f32 = (a.reshape([1, 2, h, w]) - b).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }
}
