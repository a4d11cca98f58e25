//! The convolutional recurrent reconstruction network of Qin et al. (2019, "Convolutional recurrent neural
//! networks for dynamic MR image reconstruction") for single Cartesian under-sampled frames: `iterations`
//! unrolled steps that share their weights; in each, `layers` CRNN-i units — `H_l⁽ⁱ⁾ = ReLU(W_l ∗ H_{l−1}⁽ⁱ⁾ +
//! U_l ∗ H_l⁽ⁱ⁻¹⁾)`, recurrent over iterations — a convolution back to the complex image added to the current
//! estimate, then a **data-consistency** step in k-space that puts the measured lines back:
//! `x ← F⁻¹(m ⊙ k₀ + (1 − m) ⊙ F x)`.
//!
//! Images are complex, as two channels (real, imaginary). The Fourier transform is [`dft2`]: the DFT as products
//! with cosine and sine matrices, which every backend's autodiff differentiates (tested against `rustfft` in the
//! enhancement crate).
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::blocks::conv2d;

/// The `n × n` DFT matrices `cos(2πjk/n)` and `sin(2πjk/n)`.
fn dft_matrices<B: Backend>(n: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let mut c = Vec::with_capacity(n * n);
    let mut s = Vec::with_capacity(n * n);
    for j in 0..n {
        for k in 0..n {
            // (j·k) mod n keeps the angle small, so f64 → f32 loses nothing for large n.
            let t = 2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
            c.push(t.cos() as f32);
            s.push(t.sin() as f32);
        }
    }
    let make = |v: Vec<f32>| Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(v, [n, n]), device);
    (make(c), make(s))
}

/// Transforms the last axis of `[.., n]` complex data by `(C ∓ iS)`.
fn dft_last<B: Backend>(re: Tensor<B, 4>, im: Tensor<B, 4>, inverse: bool) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, c, h, w] = re.dims();
    let (cos, sin) = dft_matrices::<B>(w, &re.device());
    let r = re.reshape([b * c * h, w]);
    let i = im.reshape([b * c * h, w]);
    // forward: (r + i·j)(C − jS) = (rC + iS) + j(iC − rS); inverse: (C + jS).
    let sign = if inverse { -1.0 } else { 1.0 };
    let out_re = r.clone().matmul(cos.clone()) + i.clone().matmul(sin.clone()) * sign;
    let out_im = i.matmul(cos) - r.matmul(sin) * sign;
    let scale = if inverse { 1.0 / w as f64 } else { 1.0 };
    (out_re.reshape([b, c, h, w]) * scale, out_im.reshape([b, c, h, w]) * scale)
}

/// The 2D DFT of complex `[b, c, h, w]` images (real and imaginary parts), over the last two axes: unnormalised
/// forward, inverse divided by `h·w` (NumPy's convention). Differentiable on every backend.
pub fn dft2<B: Backend>(re: Tensor<B, 4>, im: Tensor<B, 4>, inverse: bool) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (re, im) = dft_last(re, im, inverse);
    let (re, im) = dft_last(re.swap_dims(2, 3), im.swap_dims(2, 3), inverse);
    (re.swap_dims(2, 3), im.swap_dims(2, 3))
}

/// Replaces the measured k-space lines of a complex image `[b, 2, h, w]`: `F⁻¹(m ⊙ k₀ + (1 − m) ⊙ F x)`, with `k0`
/// `[b, 2, h, w]` (real, imaginary) and the mask `[b, 1, h, w]` (1 where measured).
pub fn data_consistency<B: Backend>(x: Tensor<B, 4>, k0: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, _, h, w] = x.dims();
    let re = x.clone().slice([0..b, 0..1, 0..h, 0..w]);
    let im = x.slice([0..b, 1..2, 0..h, 0..w]);
    let (kr, ki) = dft2(re, im, false);
    let keep = mask.clone().neg() + 1.0;
    let k0r = k0.clone().slice([0..b, 0..1, 0..h, 0..w]);
    let k0i = k0.slice([0..b, 1..2, 0..h, 0..w]);
    let (r, i) = dft2(kr * keep.clone() + k0r * mask.clone(), ki * keep + k0i * mask, true);
    Tensor::cat(vec![r, i], 1)
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
}

/// The convolutional recurrent reconstruction network.
#[derive(Module, Debug)]
pub struct Crnn<B: Backend> {
    input: Vec<Conv2d<B>>,
    hidden: Vec<Conv2d<B>>,
    out: Conv2d<B>,
    iterations: usize,
}

impl CrnnConfig {
    /// Builds the network (3×3 convolutions).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Crnn<B> {
        let f = self.features;
        let input = (0..self.layers).map(|l| conv2d(if l == 0 { 2 } else { f }, f, 3, 1, 1, true, device)).collect();
        let hidden = (0..self.layers).map(|_| conv2d(f, f, 3, 1, 1, true, device)).collect();
        Crnn { input, hidden, out: conv2d(f, 2, 3, 1, 1, true, device), iterations: self.iterations }
    }
}

impl<B: Backend> Crnn<B> {
    /// Reconstructs complex images `[b, 2, h, w]` from their zero-filled estimate `x0`, the measured k-space `k0`
    /// (`[b, 2, h, w]`) and the sampling mask (`[b, 1, h, w]`).
    pub fn forward(&self, x0: Tensor<B, 4>, k0: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = x0;
        let mut states: Vec<Option<Tensor<B, 4>>> = vec![None; self.input.len()];
        for _ in 0..self.iterations {
            let mut h = x.clone();
            for (l, (wi, wh)) in self.input.iter().zip(&self.hidden).enumerate() {
                let mut pre = wi.forward(h);
                if let Some(prev) = states[l].take() {
                    pre = pre + wh.forward(prev);
                }
                h = relu(pre);
                states[l] = Some(h.clone());
            }
            x = data_consistency(x + self.out.forward(h), k0.clone(), mask.clone());
        }
        x
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
}
