//! The backend's kernels that the networks lean on, checked against direct evaluations of their
//! definitions on random inputs: convolutions and transposed convolutions in 2D and 3D (forward,
//! input gradient, weight gradient, bias gradient; strides, padding, dilation, output padding,
//! groups, tiles that span several samples and samples cut into several tiles), max pooling, and element-wise
//! operations between a tensor and a broadcast or strided one (per-channel scale and shift as in
//! batch normalisation, either operand first, transposed operands).
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::tensor::module::{conv_transpose2d, conv_transpose3d, conv2d, conv3d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Tensor, TensorData};
use burn_flex::ops::{VectorIsa, set_vector_isa_limit, vector_isa};

use crate::{B, P};

/// Deterministic pseudo-random values in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// One convolution problem in 3D form (2D problems have unit depth).
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    groups: usize,
}

impl Case {
    fn output(&self) -> [usize; 3] {
        std::array::from_fn(|i| (self.input[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1) / self.stride[i] + 1)
    }
}

/// Visits every multiply-add of the convolution: `f(x_index, w_index, y_index)` over flat NC(D)HW indices.
fn for_each_mac(c: &Case, mut f: impl FnMut(usize, usize, usize)) {
    let out = c.output();
    let (cig, cog) = (c.c_in / c.groups, c.c_out / c.groups);
    let k_len: usize = c.kernel.iter().product();
    for b in 0..c.batch {
        for co in 0..c.c_out {
            let g = co / cog;
            for od in 0..out[0] {
                for oh in 0..out[1] {
                    for ow in 0..out[2] {
                        let y = (((b * c.c_out + co) * out[0] + od) * out[1] + oh) * out[2] + ow;
                        for cl in 0..cig {
                            let ci = g * cig + cl;
                            for kz in 0..c.kernel[0] {
                                for ky in 0..c.kernel[1] {
                                    for kx in 0..c.kernel[2] {
                                        let iz = (od * c.stride[0] + kz * c.dilation[0]) as isize - c.padding[0] as isize;
                                        let iy = (oh * c.stride[1] + ky * c.dilation[1]) as isize - c.padding[1] as isize;
                                        let ix = (ow * c.stride[2] + kx * c.dilation[2]) as isize - c.padding[2] as isize;
                                        if iz < 0 || iy < 0 || ix < 0 {
                                            continue;
                                        }
                                        let (iz, iy, ix) = (iz as usize, iy as usize, ix as usize);
                                        if iz >= c.input[0] || iy >= c.input[1] || ix >= c.input[2] {
                                            continue;
                                        }
                                        let x = (((b * c.c_in + ci) * c.input[0] + iz) * c.input[1] + iy) * c.input[2] + ix;
                                        let w = (co * cig + cl) * k_len + (kz * c.kernel[1] + ky) * c.kernel[2] + kx;
                                        f(x, w, y);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The bound on a kernel's error, relative to the largest value of the definition's result: f32 rounding. On
/// burn-cuda, autotune may pick the tensor-core convolutions, which round f32 operands to TF32 (a 10-bit
/// mantissa, 2⁻¹¹ relative, as cuDNN does under PyTorch's default): 4·10⁻³ there, still far below the error of a
/// missing term or a wrong index.
#[cfg(not(feature = "test-cuda"))]
const RELATIVE: f64 = 2e-5;
#[cfg(feature = "test-cuda")]
const RELATIVE: f64 = 4e-3;

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(((*g as f64) - w).abs() <= RELATIVE * scale + 1e-5, "{what}[{i}]: {g} vs {w} (scale {scale})");
    }
}

/// `v` (`[batch, ch, s]`, flat) plus `bias[channel]` at every element.
fn plus_bias(v: &[f64], bias: &[f64], batch: usize) -> Vec<f64> {
    let s = v.len() / (batch * bias.len());
    v.iter().enumerate().map(|(i, x)| x + bias[(i / s) % bias.len()]).collect()
}

/// Per-channel sums over batch and space of `v` (`[batch, ch, s]`, flat).
fn channel_sums(v: &[f64], batch: usize, ch: usize) -> Vec<f64> {
    let s = v.len() / (batch * ch);
    (0..ch).map(|c| (0..batch).map(|b| v[(b * ch + c) * s..(b * ch + c + 1) * s].iter().sum::<f64>()).sum()).collect()
}

fn tensor<const D: usize>(v: &[f64], shape: [usize; D]) -> Tensor<B, D> {
    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default()).require_grad()
}

fn values<const D: usize>(t: Tensor<P, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 data")
}

/// Checks a convolution (`transposed == false`) or the transposed convolution with the same
/// geometry read backwards (its input is the convolution's output) in 2D (`dims == 2`) or 3D.
fn check(c: Case, dims: usize, transposed: bool, padding_out: [usize; 3]) {
    let cig = c.c_in / c.groups;
    let k_len: usize = c.kernel.iter().product();
    let mut input = c.input;
    if transposed {
        // The transposed convolution's output size, output padding included.
        let o = c.output();
        input =
            std::array::from_fn(|i| (o[i] - 1) * c.stride[i] + c.dilation[i] * (c.kernel[i] - 1) + 1 + padding_out[i] - 2 * c.padding[i]);
    }
    let c = Case { input, ..c };
    let out = c.output();
    let n_x = c.batch * c.c_in * input.iter().product::<usize>();
    let n_y = c.batch * c.c_out * out.iter().product::<usize>();
    let n_w = c.c_out * cig * k_len;
    let x = random(n_x, 1);
    let y = random(n_y, 2);
    let w = random(n_w, 3);
    let r_x = random(n_x, 4);
    let r_y = random(n_y, 5);
    let bias_len = if transposed { c.c_in } else { c.c_out };
    let bias = random(bias_len, 6);

    // Reference: the convolution maps X (c_in) → Y (c_out); its transpose maps Y → X.
    let (mut fwd, mut dx, mut dw) = (vec![0.0; n_y], vec![0.0; n_x], vec![0.0; n_w]);
    let (mut tfwd, mut tdy, mut tdw) = (vec![0.0; n_x], vec![0.0; n_y], vec![0.0; n_w]);
    for_each_mac(&c, |xi, wi, yi| {
        fwd[yi] += x[xi] * w[wi];
        dx[xi] += r_y[yi] * w[wi];
        dw[wi] += r_y[yi] * x[xi];
        tfwd[xi] += y[yi] * w[wi];
        tdy[yi] += r_x[xi] * w[wi];
        tdw[wi] += y[yi] * r_x[xi];
    });

    let sp = |s: [usize; 3]| -> Vec<usize> { s[3 - dims..].to_vec() };
    let shape = |n: usize, ch: usize, s: [usize; 3]| -> Vec<usize> { [vec![n, ch], sp(s)].concat() };
    // Transposed weights are stored [c_in_t, c_out_t / groups, k…] = [c_out, c_in / groups, k…].
    let w_shape = shape(c.c_out, cig, c.kernel);
    let label = format!("{c:?} dims {dims} transposed {transposed} padding_out {padding_out:?}");

    macro_rules! run {
        ($D:literal, $S:literal, $conv:ident, $convt:ident) => {{
            let to = |v: Vec<usize>| -> [usize; $D] { v.try_into().expect("rank") };
            let ts = |v: Vec<usize>| -> [usize; $S] { v.try_into().expect("rank") };
            let wt = tensor::<$D>(&w, to(w_shape.clone()));
            let bt = tensor::<1>(&bias, [bias_len]);
            if !transposed {
                let xt = tensor::<$D>(&x, to(shape(c.batch, c.c_in, input)));
                let opts = ConvOptions::new(ts(sp(c.stride)), ts(sp(c.padding)), ts(sp(c.dilation)), c.groups);
                let yt = $conv(xt.clone(), wt.clone(), Some(bt.clone()), opts);
                let r = tensor::<$D>(&r_y, to(shape(c.batch, c.c_out, out))).detach();
                let with_bias = plus_bias(&fwd, &bias, c.batch);
                assert_close(&format!("forward {label}"), &values(yt.clone().inner()), &with_bias);
                let grads = (yt * r).sum().backward();
                assert_close(&format!("dx {label}"), &values(xt.grad(&grads).expect("dx")), &dx);
                assert_close(&format!("dw {label}"), &values(wt.grad(&grads).expect("dw")), &dw);
                let db = channel_sums(&r_y, c.batch, c.c_out);
                assert_close(&format!("db {label}"), &values(bt.grad(&grads).expect("db")), &db);
            } else {
                let yt = tensor::<$D>(&y, to(shape(c.batch, c.c_out, out)));
                let opts =
                    ConvTransposeOptions::new(ts(sp(c.stride)), ts(sp(c.padding)), ts(sp(padding_out)), ts(sp(c.dilation)), c.groups);
                let xt = $convt(yt.clone(), wt.clone(), Some(bt.clone()), opts);
                let with_bias = plus_bias(&tfwd, &bias, c.batch);
                assert_close(&format!("forward {label}"), &values(xt.clone().inner()), &with_bias);
                let r = tensor::<$D>(&r_x, to(shape(c.batch, c.c_in, input))).detach();
                let grads = (xt * r).sum().backward();
                assert_close(&format!("dy {label}"), &values(yt.grad(&grads).expect("dy")), &tdy);
                assert_close(&format!("dw {label}"), &values(wt.grad(&grads).expect("dw")), &tdw);
                let db = channel_sums(&r_x, c.batch, c.c_in);
                assert_close(&format!("db {label}"), &values(bt.grad(&grads).expect("db")), &db);
            }
        }};
    }
    if dims == 2 { run!(4, 2, conv2d, conv_transpose2d) } else { run!(5, 3, conv3d, conv_transpose3d) }
}

fn case2(batch: usize, c_in: usize, c_out: usize, hw: [usize; 2], k: usize, s: usize, p: usize, d: usize, groups: usize) -> Case {
    Case {
        batch,
        c_in,
        c_out,
        input: [1, hw[0], hw[1]],
        kernel: [1, k, k],
        stride: [1, s, s],
        padding: [0, p, p],
        dilation: [1, d, d],
        groups,
    }
}

fn case3(batch: usize, c_in: usize, c_out: usize, dhw: [usize; 3], k: usize, s: usize, p: usize) -> Case {
    Case { batch, c_in, c_out, input: dhw, kernel: [k; 3], stride: [s; 3], padding: [p; 3], dilation: [1; 3], groups: 1 }
}

#[test]
fn conv2d_matches_the_definition() {
    // ResNet-like 3×3 same convolution, a strided one, a 1×1 projection, dilation, asymmetric sizes.
    check(case2(3, 4, 5, [9, 7], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 6, [10, 9], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    check(case2(4, 6, 8, [7, 7], 1, 2, 0, 1, 1), 2, false, [0; 3]);
    check(case2(2, 2, 3, [11, 12], 3, 1, 2, 2, 1), 2, false, [0; 3]);
    check(case2(2, 4, 6, [8, 8], 5, 1, 0, 1, 1), 2, false, [0; 3]);
    // A 5×5 same convolution (two padding columns on each side of every row run).
    check(case2(2, 3, 4, [9, 10], 5, 1, 2, 1, 1), 2, false, [0; 3]);
    // More output channels than im2col rows (27): the weight gradient accumulated untransposed.
    check(case2(2, 3, 40, [6, 7], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // Stride 3, forward and transposed (im2col's and col2im's strided rows other than stride 2).
    check(case2(2, 3, 4, [11, 13], 3, 3, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 4, [5, 6], 3, 3, 1, 1, 1), 2, true, [0, 2, 1]);
    // Eight samples of small maps: tiles of two whole samples each, written one GEMM per sample where
    // a map (36 positions) is at least as long as the reduction (18), through a two-sample buffer where
    // it is not (25 positions, reduction 54).
    check(case2(8, 2, 5, [6, 6], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(8, 6, 5, [5, 5], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // Valid and partly padded convolutions whose im2col rows are 3 and 8–11 elements long (copied inline).
    check(case2(2, 3, 4, [6, 5], 3, 1, 0, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 4, [6, 13], 5, 1, 1, 1, 1), 2, false, [0; 3]);
}

/// Serialises the tests that cap the backend's instruction set with those that must run uncapped (the
/// cap is process-wide).
static ISA: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`ISA`] and restores the instruction-set cap when dropped (also when a check fails).
struct IsaCap {
    before: Option<VectorIsa>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl IsaCap {
    /// Caps the backend at `isa` (`None`: only takes the lock).
    fn new(isa: Option<VectorIsa>) -> Self {
        let lock = ISA.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self { before: isa.map(set_vector_isa_limit), _lock: lock }
    }
}

impl Drop for IsaCap {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            set_vector_isa_limit(before);
        }
    }
}

/// 8–32 channels in and out and at least 4,096 output positions per sample: the convolutions that run
/// by tap over the zero-padded input (register-blocked kernels where the CPU has AVX2 or AVX-512, one
/// GEMM per tap otherwise); deeper ones that do with AVX-512; and those of few input or few output channels
/// that do with the register-blocked kernels.
fn by_tap_cases() {
    // Same 3×3 (two samples, several tiles each), valid 5×5 (RED-CNN's shape),
    // dilated, more padding than the kernel reaches (input gradient through im2col), 32 channels.
    check(case2(2, 9, 12, [64, 66], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(1, 8, 10, [68, 68], 5, 1, 0, 1, 1), 2, false, [0; 3]);
    check(case2(1, 10, 8, [64, 66], 3, 1, 2, 2, 1), 2, false, [0; 3]);
    check(case2(1, 8, 9, [62, 64], 3, 1, 3, 1, 1), 2, false, [0; 3]);
    check(case2(1, 32, 8, [64, 64], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // More input channels (up to 64 with the register-blocked kernels, a skip connection's concatenation).
    check(case2(1, 40, 12, [64, 64], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // Transposed (its forward pass is the input gradient by tap), and 3D.
    check(case2(1, 9, 8, [68, 68], 5, 1, 0, 1, 1), 2, true, [0; 3]);
    check(case3(1, 8, 10, [16, 16, 17], 3, 1, 1), 3, false, [0; 3]);
    check(case3(1, 12, 8, [18, 18, 18], 3, 1, 0), 3, true, [0; 3]);
    // Deeper convolutions (over 32 channels out or 64 in) from 1,024 output positions, their forward
    // pass and input gradient by tap with AVX-512: rows whose width the 16 lanes do not divide (vectors
    // that run into the next row; a sample's last vector partly used), whole blocks of 8 channels
    // stored straight into the output (40) or not (36), an input gradient by tap whose forward pass
    // is not (36 → 12), a transposed convolution, and 3D (vectors that run into the next plane).
    check(case2(2, 8, 40, [35, 35], 3, 1, 0, 1, 1), 2, false, [0; 3]);
    check(case2(1, 66, 36, [34, 36], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(1, 36, 12, [35, 37], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(1, 36, 8, [37, 37], 5, 1, 0, 1, 1), 2, true, [0; 3]);
    check(case3(1, 8, 36, [10, 10, 20], 3, 1, 1), 3, false, [0; 3]);
    // Few input channels (1–7) and 4–32 out from 64 output positions, f32 with the register-blocked kernels:
    // the forward pass, and from 16 (channel, tap) pairs and 256 positions the weight gradient (blocks of
    // pairs that run across taps and channels). LeNet-5's first layer (6 channels out: a partial block of
    // 8) and second (10 × 10 outputs: the weight gradient by im2col), two channels (18 pairs) on rows the
    // lanes do not divide, one channel 3 × 3 (9 pairs: the weight gradient by im2col), and 3D (27 pairs).
    check(case2(3, 1, 6, [16, 16], 5, 1, 2, 1, 1), 2, false, [0; 3]);
    check(case2(4, 6, 16, [14, 14], 5, 1, 0, 1, 1), 2, false, [0; 3]);
    check(case2(1, 2, 5, [20, 33], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 1, 16, [16, 20], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case3(2, 1, 4, [7, 8, 9], 3, 1, 1), 3, false, [0; 3]);
    // Few output channels (1–3) from 8–64 in and 4,096 output positions, f32 with the register-blocked
    // kernels: the forward pass and weight gradient (blocks of output channels mostly zero), the input
    // gradient as the forward pass of few inputs; the CRNN's last layer (32 → 2, rows the lanes do not
    // divide), one channel out, VoxelMorph's flow layer in 3D (16 → 3), and transposed (its forward pass
    // an input gradient of few inputs).
    check(case2(2, 32, 2, [64, 66], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(1, 8, 1, [64, 64], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case3(1, 16, 3, [16, 16, 17], 3, 1, 1), 3, false, [0; 3]);
    check(case2(1, 24, 3, [64, 64], 3, 1, 1, 1, 1), 2, true, [0; 3]);
}

/// Deep convolutions of small maps in batches of 12 or more: GEMMs over the output positions with the
/// samples as columns, over the taps that read inside the input only (128 channels or more summed per
/// tap; with AVX-512 the forward pass and weight gradient from 128 output channels, the input gradient
/// from 128 input channels, and the forward pass and input gradient from 64 in panels of two vectors;
/// from 32 with AVX2; 64 channels summed per tap onto maps of at most 64 positions).
fn panel_cases() {
    // Same 3 × 3 on 4 × 4 maps (the border positions' taps partly in the padding); 136 channels: two
    // whole row panels and a partial one; 13 samples: panels of 6, 6 and 1; weight gradient column
    // panels of 6 channels, the last of 2.
    check(case2(13, 128, 136, [4, 4], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // Stride 2 (the input gradient's taps by parity, the weight gradient's runs one position long).
    check(case2(12, 130, 128, [7, 7], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    // Dilation; padding past the kernel's reach (positions that read padding only are zero).
    check(case2(12, 128, 128, [5, 5], 3, 1, 2, 2, 1), 2, false, [0; 3]);
    check(case2(12, 128, 130, [3, 3], 3, 1, 3, 1, 1), 2, false, [0; 3]);
    // Transposed (its forward pass is an input gradient), and 3D.
    check(case2(12, 130, 128, [4, 4], 3, 1, 1, 1, 1), 2, true, [0; 3]);
    check(case3(12, 128, 128, [2, 3, 3], 3, 1, 1), 3, false, [0; 3]);
    // Fewer rows than two panels of the widest kernels: the auto-encoders' transposed 4 × 4 stride-2
    // 128 → 64 onto 16 × 16 (its forward pass: 64 rows in two panels of two vectors with AVX-512; its input
    // gradient: 64 channels summed per tap onto 8 × 8), and the input gradient of a stride-2 convolution of 80
    // input channels (two panels of 32 rows and a partial one).
    check(case2(12, 64, 128, [16, 16], 4, 2, 1, 1, 1), 2, true, [0; 3]);
    check(case2(12, 80, 128, [8, 8], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    // 64 channels summed per tap onto maps of 64 positions: a stride-2 64 → 128 forward pass onto 8 × 8.
    check(case2(12, 64, 128, [16, 16], 3, 2, 1, 1, 1), 2, false, [0; 3]);
}

/// Unit-stride 2D 5 × 5 convolutions of 32 channels or more in and out, by Winograd's F(2 × 2, 5 × 5) where
/// the CPU has the register-blocked kernels: their forward passes, as the forward convolution of the
/// output gradient padded by `4 − p` their input gradients, and their weight gradients as sums of
/// F(5 × 5, 2 × 2) over the tiles (RED-CNN's layers); and 3 × 3 ones by F(4 × 4, 3 × 3) (ResNet-18's
/// first two stages).
fn winograd_cases() {
    // Valid (odd output rows: a last tile row half outside the map); 9 tile rows of 8 tiles per sample, so
    // that a block (12 segments of 8 tiles and 2 overlap columns) spans both samples; 34 output channels (a
    // partial block of 8).
    check(case2(2, 33, 34, [21, 20], 5, 1, 0, 1, 1), 2, false, [0; 3]);
    // Tile rows longer than a block (128 tiles of a 256-wide output): cut into two segments of 64.
    check(case2(1, 32, 32, [12, 260], 5, 1, 0, 1, 1), 2, false, [0; 3]);
    // Same and partly padded (tiles that read the padding on every side; odd output columns).
    check(case2(1, 32, 40, [19, 23], 5, 1, 2, 1, 1), 2, false, [0; 3]);
    check(case2(1, 36, 32, [16, 17], 5, 1, 1, 1, 1), 2, false, [0; 3]);
    // Transposed (its forward pass is an input gradient), several blocks per sample.
    check(case2(2, 34, 32, [30, 29], 5, 1, 0, 1, 1), 2, true, [0; 3]);
    // 3 × 3 by F(4 × 4, 3 × 3) from 64 channels and 256 tiles: same (the input gradient too), 9 × 10 outputs
    // (partial tiles on both edges), 29 samples of 9 tiles.
    check(case2(29, 64, 66, [9, 10], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // With AVX2 from 32 channels and 256 tiles (by tap with AVX-512): 2 samples of 9 rows of 17 tiles, the last
    // row and column partly outside the map; and, with AVX-512 too, from 16 channels and 2,048 tiles: 45 rows of
    // 46.
    check(case2(2, 32, 33, [35, 67], 3, 1, 0, 1, 1), 2, false, [0; 3]);
    check(case2(1, 16, 17, [180, 182], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    // With AVX-512 too from 32 channels and 2,048 tiles (the CRNN's layers, the 2D U-Net's first level): 4
    // samples of 8 rows of 64 tiles, one output row and column fewer than the tiles cover.
    check(case2(4, 32, 32, [31, 255], 3, 1, 1, 1, 1), 2, false, [0; 3]);
}

/// Stride-2 convolutions whose im2col rows (forward pass, weight gradient) and col2im rows (input gradient,
/// transposed forward pass) are 7–8, 15–17 and 33–35 elements long: the AVX-512 row kernels' masked last
/// step alone, one full step of sixteen and a last one of a single element, two full steps; with AVX2 a last
/// step of eight whose second load is masked, one or more full steps of eight and an element-by-element end
/// (rows of 8, 9, 12 and 17 elements too); 3 × 3 and the auto-encoders' transposed 4 × 4.
fn strided_row_cases() {
    check(case2(2, 3, 4, [5, 18], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 4, [5, 24], 3, 2, 1, 1, 1), 2, true, [0, 1, 1]);
    check(case2(2, 3, 4, [5, 16], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 4, [4, 34], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 4, [5, 70], 3, 2, 1, 1, 1), 2, false, [0; 3]);
    check(case2(2, 3, 2, [3, 16], 4, 2, 1, 1, 1), 2, true, [0; 3]);
    check(case2(2, 3, 2, [3, 34], 4, 2, 1, 1, 1), 2, true, [0; 3]);
    check(case2(1, 2, 3, [2, 70], 4, 2, 1, 1, 1), 2, true, [0; 3]);
}

#[test]
fn strided_rows_match_the_definition() {
    let _cap = IsaCap::new(None);
    strided_row_cases();
}

#[test]
fn deep_convolutions_by_winograd_match_the_definition() {
    let _cap = IsaCap::new(None);
    winograd_cases();
}

#[test]
fn deep_convolutions_of_small_maps_match_the_definition() {
    let _cap = IsaCap::new(None);
    panel_cases();
}

#[test]
fn unit_stride_convolutions_by_tap_match_the_definition() {
    let _cap = IsaCap::new(None);
    by_tap_cases();
}

#[test]
fn narrower_instruction_sets_match_the_definition() {
    // The widest instruction set of the CPU runs in every other test; here the kernels compiled for
    // AVX2 and for the baseline run on the same convolutions (on a CPU without AVX-512 the first pass
    // repeats the default path).
    for isa in [VectorIsa::Avx2, VectorIsa::Baseline] {
        let _cap = IsaCap::new(Some(isa));
        assert!(vector_isa() <= isa, "capped at {isa:?}, running {:?}", vector_isa());
        by_tap_cases();
        panel_cases();
        winograd_cases();
        pooling_cases();
        strided_row_cases();
        check(case2(2, 3, 4, [9, 8], 3, 2, 1, 1, 1), 2, true, [0, 1, 1]);
    }
}

#[test]
fn conv2d_tiles_spanning_samples_and_cut_samples() {
    // Many small samples (tiles hold whole samples) and one large image (several tiles per sample).
    check(case2(33, 8, 16, [4, 4], 3, 1, 1, 1, 1), 2, false, [0; 3]);
    check(case2(1, 2, 3, [90, 75], 3, 1, 1, 1, 1), 2, false, [0; 3]);
}

#[test]
fn grouped_convolutions_match_the_definition() {
    check(case2(2, 4, 6, [6, 5], 3, 1, 1, 1, 2), 2, false, [0; 3]);
    check(case2(2, 4, 6, [6, 5], 2, 2, 0, 1, 2), 2, true, [0; 3]);
}

#[test]
fn conv3d_matches_the_definition() {
    check(case3(2, 3, 4, [6, 5, 7], 3, 1, 1), 3, false, [0; 3]);
    check(case3(1, 2, 3, [7, 6, 6], 3, 2, 1), 3, false, [0; 3]);
    check(case3(1, 4, 2, [24, 20, 18], 3, 1, 1), 3, false, [0; 3]);
    check(case3(2, 1, 36, [5, 4, 6], 3, 1, 1), 3, false, [0; 3]);
    // A stride-2 1×1×1 projection (kernel smaller than its stride: the input gradient skips odd positions).
    check(case3(2, 3, 4, [5, 6, 7], 1, 2, 0), 3, false, [0; 3]);
}

#[test]
fn transposed_convolutions_match_the_definition() {
    // U-Net up-sampling (k2 s2), a k3 s2 p1 one with output padding, in 2D and 3D.
    check(case2(3, 5, 4, [12, 10], 2, 2, 0, 1, 1), 2, true, [0; 3]);
    check(case2(2, 3, 4, [9, 8], 3, 2, 1, 1, 1), 2, true, [0, 1, 1]);
    check(case3(2, 3, 4, [8, 6, 10], 2, 2, 0), 3, true, [0; 3]);
    check(case3(1, 2, 3, [7, 7, 5], 3, 2, 1), 3, true, [1, 1, 1]);
    // Kernels smaller than their stride (outputs no kernel tap reaches stay at the bias), in 2D and 3D.
    check(case2(2, 3, 4, [5, 6], 1, 2, 0, 1, 1), 2, true, [0, 1, 1]);
    check(case2(2, 3, 4, [4, 5], 2, 3, 0, 1, 1), 2, true, [0, 2, 1]);
    check(case3(1, 3, 2, [3, 4, 5], 1, 2, 0), 3, true, [1, 1, 1]);
}

#[test]
fn broadcast_and_strided_elementwise_ops_match_the_definition() {
    let (n, c, h, w) = (3, 5, 4, 6);
    let xv = random(n * c * h * w, 7);
    let gv = random(c, 8);
    let x: Tensor<P, 4> = tensor::<4>(&xv, [n, c, h, w]).inner();
    let g: Tensor<P, 4> = tensor::<1>(&gv, [c]).inner().reshape([1, c, 1, 1]);
    let at = |i: usize| -> (usize, usize) { (i, (i / (h * w)) % c) };
    let cases: Vec<(&str, Tensor<P, 4>, Box<dyn Fn(f64, f64) -> f64>)> = vec![
        ("x * g", x.clone() * g.clone(), Box::new(|a, b| a * b)),
        ("g * x", g.clone() * x.clone(), Box::new(|a, b| b * a)),
        ("x - g", x.clone() - g.clone(), Box::new(|a, b| a - b)),
        ("g - x", g.clone() - x.clone(), Box::new(|a, b| b - a)),
        ("x / g", x.clone() / g.clone(), Box::new(|a, b| a / b)),
        ("g + x", g.clone() + x.clone(), Box::new(|a, b| a + b)),
    ];
    for (name, got, f) in cases {
        let want: Vec<f64> = (0..xv.len())
            .map(|i| {
                let (xi, ci) = at(i);
                f(xv[xi], gv[ci])
            })
            .collect();
        let got = values(got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(((*a as f64) - b).abs() <= 1e-5 * b.abs().max(1.0), "{name}[{i}]: {a} vs {b}");
        }
    }
    // A transposed (non-contiguous) operand against a contiguous one, and against a row broadcast.
    let a: Tensor<P, 4> = tensor::<4>(&xv, [n, c, h, w]).inner();
    let t = a.clone().swap_dims(2, 3); // [n, c, w, h], strided
    let u: Tensor<P, 4> = tensor::<4>(&random(n * c * w * h, 9), [n, c, w, h]).inner();
    let uv = values(u.clone());
    let row: Tensor<P, 4> = tensor::<1>(&random(h, 10), [h]).inner().reshape([1, 1, 1, h]);
    let rv = values(row.clone());
    let sum = values(t.clone() + u);
    let prod = values(t * row);
    for b in 0..n * c {
        for j in 0..w {
            for i in 0..h {
                let o = (b * w + j) * h + i;
                let xt = xv[(b * h + i) * w + j];
                assert!(((sum[o] as f64) - (xt + uv[o] as f64)).abs() < 1e-5, "transposed + contiguous at {o}");
                assert!(((prod[o] as f64) - xt * rv[i] as f64).abs() < 1e-5, "transposed * row at {o}");
            }
        }
    }
}

#[test]
fn strided_tensors_are_made_contiguous_in_order() {
    // `swap_dims(0, 1)` of an activation then a reshape (batch normalisation's statistics), and a
    // 5D permutation that leaves no dim in place.
    let (n, c, h, w) = (3, 4, 5, 6);
    let xv = random(n * c * h * w, 11);
    let x: Tensor<P, 4> = tensor::<4>(&xv, [n, c, h, w]).inner();
    let got = values(x.swap_dims(0, 1).reshape([c, n * h * w]));
    for ci in 0..c {
        for b in 0..n {
            for s in 0..h * w {
                let want = xv[(b * c + ci) * h * w + s] as f32;
                assert_eq!(got[(ci * n + b) * h * w + s], want, "swap_dims(0, 1) at c {ci} b {b} s {s}");
            }
        }
    }
    let dims = [2, 3, 4, 5, 3];
    let yv = random(dims.iter().product(), 12);
    let y: Tensor<P, 5> = tensor::<5>(&yv, dims).inner();
    let perm = [3, 0, 4, 2, 1];
    let got = values(y.permute(perm));
    let pd: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut i = 0;
    for a in 0..pd[0] {
        for b in 0..pd[1] {
            for cc in 0..pd[2] {
                for d in 0..pd[3] {
                    for e in 0..pd[4] {
                        // Output index (a, b, cc, d, e) reads input dims (b, e, d, a, cc).
                        let src = [b, e, d, a, cc];
                        let flat = (((src[0] * dims[1] + src[1]) * dims[2] + src[2]) * dims[3] + src[3]) * dims[4] + src[4];
                        assert_eq!(got[i], yv[flat] as f32, "permute at {i}");
                        i += 1;
                    }
                }
            }
        }
    }
}

/// A max pooling's geometry: kernel, stride, padding, dilation, ceil mode.
struct Pool {
    k: [usize; 2],
    s: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    ceil: bool,
}

/// Max pooling of `[2, 3, h, w]` checked against the per-window scan (the first tap of a window inside the
/// input, then a later one where strictly greater), forward values, indices and the input gradient. With
/// `ties` the values are rounded to a few levels, so that equal maxima within a window are common.
fn pooling_case(g: Pool, hw: [usize; 2], ties: bool) {
    use burn::tensor::module::{max_pool2d, max_pool2d_with_indices};
    let Pool { k, s, pad, dil, ceil } = g;
    let (n, c) = (2, 3);
    let mut xv = random(n * c * hw[0] * hw[1], 13);
    if ties {
        xv.iter_mut().for_each(|v| *v = (*v * 2.0).round());
    }
    let x = tensor::<4>(&xv, [n, c, hw[0], hw[1]]);
    let y = max_pool2d(x.clone(), k, s, pad, dil, ceil);
    let indices = max_pool2d_with_indices(x.clone().inner(), k, s, pad, dil, ceil).1;
    let indices = indices.into_data().convert::<i64>().to_vec::<i64>().expect("i64 indices");
    // PyTorch's output size: windows start inside the input or its left padding.
    let size = |a: usize| {
        let span = hw[a] + 2 * pad[a] - dil[a] * (k[a] - 1) - 1;
        let o = if ceil { span.div_ceil(s[a]) + 1 } else { span / s[a] + 1 };
        if ceil && (o - 1) * s[a] >= hw[a] + pad[a] { o - 1 } else { o }
    };
    let (oh, ow) = (size(0), size(1));
    assert_eq!(y.dims(), [n, c, oh, ow], "output size");
    let rv = random(n * c * oh * ow, 14);
    let got = values(y.clone().inner());
    let mut dx = vec![0.0f64; xv.len()];
    let case = format!("max_pool2d k{k:?} s{s:?} p{pad:?} d{dil:?} ceil {ceil} {hw:?} ties {ties}");
    for p in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let mut best = (f64::NEG_INFINITY, usize::MAX);
                for a in 0..k[0] {
                    for b in 0..k[1] {
                        let r = (i * s[0] + a * dil[0]).checked_sub(pad[0]).filter(|&r| r < hw[0]);
                        let q = (j * s[1] + b * dil[1]).checked_sub(pad[1]).filter(|&q| q < hw[1]);
                        let (Some(r), Some(q)) = (r, q) else { continue };
                        let at = r * hw[1] + q;
                        if best.1 == usize::MAX || xv[p * hw[0] * hw[1] + at] > best.0 {
                            best = (xv[p * hw[0] * hw[1] + at], at);
                        }
                    }
                }
                let o = (p * oh + i) * ow + j;
                assert_eq!(got[o], best.0 as f32, "{case} at {o}");
                assert_eq!(indices[o], best.1 as i64, "{case}: index at {o}");
                dx[p * hw[0] * hw[1] + best.1] += rv[o];
            }
        }
    }
    let r = tensor::<4>(&rv, [n, c, oh, ow]).detach();
    let grads = (y * r).sum().backward();
    assert_close(&format!("{case} dx"), &values(x.grad(&grads).expect("dx")), &dx);
}

/// Windows inside the input (2 × 2 stride 2, 3 × 3 stride 2 on odd sizes, overlapping stride 1, non-square
/// (2 × 4: eight taps),
/// rows longer than one block of 64 outputs, ties) and windows reaching into the padding at both ends of rows
/// and columns (GoogLeNet's 3 × 3 stride 1, ResNet's 3 × 3 stride 2), dilated, and past the end in ceil mode.
fn pooling_cases() {
    let pool = |k: usize, s: usize, p: usize| Pool { k: [k, k], s: [s, s], pad: [p, p], dil: [1, 1], ceil: false };
    pooling_case(pool(2, 2, 0), [8, 10], false);
    pooling_case(pool(3, 2, 0), [9, 7], false);
    pooling_case(pool(2, 1, 0), [5, 70], true);
    pooling_case(pool(2, 2, 0), [4, 262], true);
    pooling_case(Pool { k: [1, 3], s: [1, 2], ..pool(1, 1, 0) }, [3, 140], true);
    pooling_case(Pool { k: [2, 4], s: [2, 2], ..pool(1, 1, 0) }, [6, 75], true);
    pooling_case(pool(3, 2, 1), [7, 9], true);
    pooling_case(pool(3, 1, 1), [6, 150], true);
    pooling_case(pool(3, 2, 1), [9, 141], false);
    pooling_case(Pool { dil: [2, 2], ..pool(3, 1, 1) }, [8, 75], true);
    pooling_case(Pool { ceil: true, ..pool(3, 2, 0) }, [8, 10], true);
    pooling_case(Pool { ceil: true, ..pool(2, 2, 0) }, [7, 133], false);
}

#[test]
fn max_pooling_matches_the_definition() {
    let _cap = IsaCap::new(None);
    pooling_cases();
}
