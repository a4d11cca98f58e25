//! Batch and instance normalisation of `[n, c, …]` tensors as single passes, with their backward pass.
//!
//! Burn composes batch normalisation from separate operations (a mean, a subtraction, a square, a second
//! mean, a subtraction, a division, a product and a sum, with `swap_dims` copies for the statistics), and
//! autodiff keeps three full-size intermediates of them for the backward pass. Here the statistics are two
//! reads of the input, the output one read and one write, and the backward pass needs only the input and the
//! per-group mean and inverse standard deviation: two reads for its sums and one fused pass for the input
//! gradient. Statistics are the same as burn's (biased variance, `1 / sqrt(var + ε)`), accumulated in f64.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::{DType, TensorData};

#[cfg(feature = "rayon")]
use rayon::prelude::*;

use crate::FlexTensor;
use crate::ops::vectorised::vectorised;

/// Below this many elements the passes run on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// Which elements share one mean and variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormGroups {
    /// One group per channel over the batch and all positions (batch normalisation).
    Channel,
    /// One group per sample and channel over its positions (instance normalisation).
    SampleChannel,
}

/// One normalisation of an f32 `[n, c, …]` tensor: its shape and grouping.
#[derive(Clone, Debug)]
pub struct ChannelNorm {
    n: usize,
    c: usize,
    s: usize,
    groups: NormGroups,
    epsilon: f64,
    relu: bool,
}

/// Runs `f(row, chunk)` over the `len`-element rows of `data`, in parallel when the data is large; each row's
/// loop compiled for the widest vector instructions the CPU has (see `ops::vectorised`).
fn rows_mut<T: Send>(data: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    #[cfg(feature = "rayon")]
    if data.len() >= PARALLEL_MIN {
        data.par_chunks_mut(len).enumerate().for_each(|(r, row)| vectorised(#[inline(always)] || f(r, row)));
        return;
    }
    data.chunks_mut(len).enumerate().for_each(|(r, row)| vectorised(#[inline(always)] || f(r, row)));
}

/// `f(row)` for every row index below `rows`, collected in order, in parallel when `work` is large; vectorised
/// as [`rows_mut`] is.
fn map_rows<T: Send>(rows: usize, work: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    #[cfg(feature = "rayon")]
    if work >= PARALLEL_MIN {
        return (0..rows).into_par_iter().map(|r| vectorised(#[inline(always)] || f(r))).collect();
    }
    let _ = work;
    (0..rows).map(|r| vectorised(#[inline(always)] || f(r))).collect()
}


/// Σ `f(a[i], b[i])` in f64, with f32 partial sums over short blocks (vectorised, and each partial sum
/// over at most 64 values per lane).
#[inline]
fn block_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    const BLOCK: usize = 1024;
    let mut total = 0.0f64;
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut acc = [0.0f32; LANES];
        let (ae, be) = (ab.chunks_exact(LANES), bb.chunks_exact(LANES));
        let (ar, br) = (ae.remainder(), be.remainder());
        for (x, y) in ae.zip(be) {
            for l in 0..LANES {
                acc[l] += f(x[l], y[l]);
            }
        }
        let mut part = 0.0f64;
        for v in acc {
            part += v as f64;
        }
        for (x, y) in ar.iter().zip(br) {
            part += f(*x, *y) as f64;
        }
        total += part;
    }
    total
}

impl ChannelNorm {
    /// The normalisation of `x` (`[n, c, …]`, rank ≥ 2, f32), or `None` for other types, ranks or empty tensors.
    pub fn new(x: &FlexTensor, groups: NormGroups, epsilon: f64) -> Option<Self> {
        let dims = x.layout().shape();
        if x.dtype() != DType::F32 || dims.num_dims() < 2 {
            return None;
        }
        let s: usize = (2..dims.num_dims()).map(|k| dims[k]).product();
        let (n, c) = (dims[0], dims[1]);
        if n * c * s == 0 {
            return None;
        }
        Some(Self { n, c, s, groups, epsilon, relu: false })
    }

    /// The same normalisation followed by a ReLU (`max(y, 0)`), fused into its passes: the backward pass
    /// recomputes the ReLU's mask from the input, so nothing more is kept.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    /// Number of statistics groups: `c`, or `n · c`.
    pub fn num_groups(&self) -> usize {
        match self.groups {
            NormGroups::Channel => self.c,
            NormGroups::SampleChannel => self.n * self.c,
        }
    }

    /// Elements in one group.
    fn group_len(&self) -> usize {
        match self.groups {
            NormGroups::Channel => self.n * self.s,
            NormGroups::SampleChannel => self.s,
        }
    }

    /// Group of row `r` (`r = sample · c + channel`).
    fn group(&self, r: usize) -> usize {
        match self.groups {
            NormGroups::Channel => r % self.c,
            NormGroups::SampleChannel => r,
        }
    }

    /// Per-row sums folded into per-group sums.
    fn fold(&self, rows: Vec<f64>) -> Vec<f64> {
        let mut out = vec![0.0f64; self.num_groups()];
        for (r, v) in rows.into_iter().enumerate() {
            out[self.group(r)] += v;
        }
        out
    }

    /// Per-group mean and (biased) variance of `x`.
    pub fn statistics(&self, x: &FlexTensor) -> (Vec<f32>, Vec<f32>) {
        let x = x.to_contiguous();
        let data: &[f32] = x.storage();
        let (rows, s, work) = (self.n * self.c, self.s, self.n * self.c * self.s);
        let m = self.group_len() as f64;
        let sums = self.fold(map_rows(rows, work, #[inline(always)] |r| {
            let row = &data[r * s..(r + 1) * s];
            block_sum(row, row, |a, _| a)
        }));
        let mean: Vec<f64> = sums.iter().map(|v| v / m).collect();
        let squares = self.fold(map_rows(rows, work, #[inline(always)] |r| {
            let row = &data[r * s..(r + 1) * s];
            let mu = mean[self.group(r)] as f32;
            block_sum(row, row, |a, _| (a - mu) * (a - mu))
        }));
        (mean.iter().map(|v| *v as f32).collect(), squares.iter().map(|v| (v / m) as f32).collect())
    }

    /// `1 / sqrt(var + ε)` per group.
    pub fn inv_std(&self, var: &[f32]) -> Vec<f32> {
        var.iter().map(|v| (1.0 / (*v as f64 + self.epsilon).sqrt()) as f32).collect()
    }

    /// `(x − mean) · inv_std · γ + β` per group, with `γ`, `β` per channel (`[c]`; absent: 1 and 0), then
    /// the ReLU when the normalisation has one.
    pub fn forward(
        &self,
        x: &FlexTensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: Option<&FlexTensor>,
        beta: Option<&FlexTensor>,
    ) -> FlexTensor {
        let (scale, shift) = self.scale_shift(mean, inv_std, gamma, beta);
        scale_shift_rows(x, self.c, &scale, &shift, self.relu)
    }

    /// Per row: `y = x · scale + shift`.
    fn scale_shift(
        &self,
        mean: &[f32],
        inv_std: &[f32],
        gamma: Option<&FlexTensor>,
        beta: Option<&FlexTensor>,
    ) -> (Vec<f32>, Vec<f32>) {
        let gamma = gamma.map(|g| g.to_contiguous());
        let beta = beta.map(|b| b.to_contiguous());
        let g: Option<&[f32]> = gamma.as_ref().map(|t| t.storage());
        let b: Option<&[f32]> = beta.as_ref().map(|t| t.storage());
        let rows = self.n * self.c;
        let mut scale = Vec::with_capacity(rows);
        let mut shift = Vec::with_capacity(rows);
        for r in 0..rows {
            let (k, ch) = (self.group(r), r % self.c);
            let a = inv_std[k] * g.map_or(1.0, |g| g[ch]);
            scale.push(a);
            shift.push(b.map_or(0.0, |b| b[ch]) - mean[k] * a);
        }
        (scale, shift)
    }

    /// Gradients with respect to the input and (when `affine`) to `γ` and `β`, given the gradient `dy` of the
    /// output, the forward pass's input, mean and inverse standard deviation, and its `γ` and `β` (absent: 1
    /// and 0; `β` is read only to recompute the ReLU's mask).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &FlexTensor,
        dy: &FlexTensor,
        mean: &[f32],
        inv_std: &[f32],
        gamma: Option<&FlexTensor>,
        beta: Option<&FlexTensor>,
        affine: bool,
    ) -> (FlexTensor, Option<(FlexTensor, FlexTensor)>) {
        let x = x.to_contiguous();
        let dy = dy.to_contiguous();
        let (xd, gd): (&[f32], &[f32]) = (x.storage(), dy.storage());
        let (rows, s, work) = (self.n * self.c, self.s, self.n * self.c * self.s);
        let m = self.group_len() as f64;
        // With the ReLU, the gradient reaching the normalisation's output is dy where the output
        // `x · scale + shift` is positive (recomputed per element) and zero elsewhere.
        let (scale, shift) =
            if self.relu { self.scale_shift(mean, inv_std, gamma, beta) } else { (vec![0.0; rows], vec![0.0; rows]) };
        let relu = self.relu;
        let gamma = gamma.map(|g| g.to_contiguous());
        let gv: Option<&[f32]> = gamma.as_ref().map(|t| t.storage());
        // Per row: Σ dy and Σ dy · (x − mean), dy masked by the ReLU.
        let row_sums: Vec<(f64, f64)> = map_rows(rows, 2 * work, #[inline(always)] |r| {
            let (xr, gr) = (&xd[r * s..(r + 1) * s], &gd[r * s..(r + 1) * s]);
            let mu = mean[self.group(r)];
            if relu {
                let (a, b) = (scale[r], shift[r]);
                let masked = |d: f32, v: f32| if v * a + b > 0.0 { d } else { 0.0 };
                (block_sum(gr, xr, masked), block_sum(gr, xr, |d, v| masked(d, v) * (v - mu)))
            } else {
                (block_sum(gr, gr, |a, _| a), block_sum(gr, xr, |d, v| d * (v - mu)))
            }
        });
        let sum_dy = self.fold(row_sums.iter().map(|p| p.0).collect());
        let sum_dyx = self.fold(row_sums.iter().map(|p| p.1).collect());
        // dx = γσ⁻¹ (dy − Σdy/M − (x − μ) σ⁻² Σdy(x − μ)/M) = a·dy + b·x + c per row.
        let mut coef = Vec::with_capacity(rows);
        for r in 0..rows {
            let (k, ch) = (self.group(r), r % self.c);
            let (is, mu) = (inv_std[k] as f64, mean[k] as f64);
            let g = gv.map_or(1.0, |g| g[ch] as f64);
            let a = g * is;
            let b = -g * is * is * is * sum_dyx[k] / m;
            let c = -a * sum_dy[k] / m - b * mu;
            coef.push((a as f32, b as f32, c as f32));
        }
        // Written once, element by element, without zeroing the buffer first (as the forward pass's output).
        let mut dx: Vec<f32> = Vec::with_capacity(rows * s);
        if s > 0 {
            rows_mut(&mut dx.spare_capacity_mut()[..rows * s], s, #[inline(always)] |r, out| {
                let (a, b, c) = coef[r];
                let (xr, gr) = (&xd[r * s..(r + 1) * s], &gd[r * s..(r + 1) * s]);
                if relu {
                    let (sa, sb) = (scale[r], shift[r]);
                    for ((o, d), v) in out.iter_mut().zip(gr).zip(xr) {
                        let d = if *v * sa + sb > 0.0 { *d } else { 0.0 };
                        o.write(a * d + b * *v + c);
                    }
                } else {
                    for ((o, d), v) in out.iter_mut().zip(gr).zip(xr) {
                        o.write(a * *d + b * *v + c);
                    }
                }
            });
        }
        // SAFETY: the rows above cover `rows · s` elements, each written once (`x` and `dy` hold `rows · s`
        // elements: `rows` groups of `s` for this normalisation's shape); with `s == 0` the length is zero.
        unsafe { dx.set_len(rows * s) };
        let dx = FlexTensor::from_data(TensorData::new(dx, x.layout().shape().clone()));
        let params = affine.then(|| {
            // dγ[ch] = Σ over the channel's groups of σ⁻¹ Σdy(x − μ); dβ[ch] = Σ dy.
            let mut dgamma = vec![0.0f64; self.c];
            let mut dbeta = vec![0.0f64; self.c];
            for k in 0..self.num_groups() {
                let ch = k % self.c;
                dgamma[ch] += sum_dyx[k] * inv_std[k] as f64;
                dbeta[ch] += sum_dy[k];
            }
            let to = |v: Vec<f64>| {
                FlexTensor::from_data(TensorData::new(v.into_iter().map(|x| x as f32).collect::<Vec<f32>>(), [self.c]))
            };
            (to(dgamma), to(dbeta))
        });
        (dx, params)
    }
}

/// `y = x · scale[ch] + shift[ch]` (then `max(y, 0)` when `relu`) for an f32 `[n, c, …]` tensor with
/// per-channel `scale` and `shift` (`c` values each): eval-mode batch normalisation folded into one pass. `None`
/// unless `x` is f32 of rank ≥ 2 with `c` channels.
pub fn scale_shift_channels(x: &FlexTensor, scale: &[f32], shift: &[f32], relu: bool) -> Option<FlexTensor> {
    let dims = x.layout().shape();
    if x.dtype() != DType::F32 || dims.num_dims() < 2 || dims[1] != scale.len() || dims[1] != shift.len() {
        return None;
    }
    let c = dims[1];
    let rows = dims[0] * c;
    let scale: Vec<f32> = (0..rows).map(|r| scale[r % c]).collect();
    let shift: Vec<f32> = (0..rows).map(|r| shift[r % c]).collect();
    Some(scale_shift_rows(x, c, &scale, &shift, relu))
}

/// `y = x · scale[row] + shift[row]` over the rows (`sample · c + channel`) of an `[n, c, …]` tensor, then
/// `max(y, 0)` when `relu`.
fn scale_shift_rows(x: &FlexTensor, c: usize, scale: &[f32], shift: &[f32], relu: bool) -> FlexTensor {
    let x = x.to_contiguous();
    let data: &[f32] = x.storage();
    let shape = x.layout().shape().clone();
    let rows = shape[0] * c;
    let s = if rows == 0 { 0 } else { data.len() / rows };
    // Written once, element by element, without zeroing the buffer first (a memset was 4 % of the 2D U-Net's
    // inference).
    let mut out: Vec<f32> = Vec::with_capacity(data.len());
    if s > 0 {
        rows_mut(&mut out.spare_capacity_mut()[..rows * s], s, #[inline(always)] |r, dst| {
            let (a, b) = (scale[r], shift[r]);
            let src = &data[r * s..(r + 1) * s];
            if relu {
                for (o, v) in dst.iter_mut().zip(src) {
                    let y = *v * a + b;
                    o.write(if y > 0.0 { y } else { 0.0 });
                }
            } else {
                for (o, v) in dst.iter_mut().zip(src) {
                    o.write(*v * a + b);
                }
            }
        });
    }
    // SAFETY: `rows · s` elements were written above (`s` is `data.len() / rows`, and `data.len()` is a multiple
    // of `rows` for an `[n, c, …]` tensor: every element belongs to one row); with no rows the length is zero.
    unsafe { out.set_len(rows * s) };
    FlexTensor::from_data(TensorData::new(out, shape))
}
