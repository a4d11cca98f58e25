//! B-spline registration as elastix runs it: a cubic B-spline displacement field whose control points are
//! optimised on a few thousand to tens of thousands of points re-drawn at random every iteration (seeded), with
//! gradients by the chain rule (no automatic differentiation), the points split across the CPU's cores, stopping
//! per pyramid level when the similarity stops improving, and a guard that never returns a field worse than the
//! start (no displacement) by the similarity.
//!
//! Both images lie on the same grid (the moving image resampled there by the affine stage). Control point `k` of
//! an axis sits at voxel `(k − 1)·spacing` of that grid, as in [`crate::deformable::bspline_matrix`], and holds a
//! displacement in its voxels. A point `x` moves to `x + u(x)` with `u(x) = Σ_k β(x/s + 1 − k)·c_k`, so the loss
//! `L` over the points has `∂L/∂c_k = Σ_x ∂L/∂m · ∇m(x + u(x)) · β(x/s + 1 − k)`: 64 control points a point.
//! A pyramid level averages `f` voxels per axis (block means) and samples there, its voxel `q` at `x = f·q +
//! (f − 1)/2`.
//!
//! The regulariser is evaluated on the control lattice, where it is a quadratic form with a closed-form gradient:
//! diffusion is the mean over axes of the mean squared first differences of the control displacements divided by
//! the spacing (the field's first derivatives at the control points), bending energy the sum of the mean squared
//! second and twice the mixed differences divided by the squared spacing (second derivatives), as
//! [`vesalius_nets::loss::grad_l2`] and [`vesalius_nets::loss::bending_energy`] define them on a dense field.
//!
//! Similarities are those of the sampled affine stage ([`crate::sampled`]): mean squared difference, the global
//! correlation coefficient (`Ncc`: a window has no meaning on scattered points) and Mattes mutual information.
//!
//! ```
//! use vesalius_registration::sampled::Volume;
//! use vesalius_registration::sampled_bspline::{Lattice, register_bspline_sampled};
//! use vesalius_registration::{DeformableOptions, Deformation, Similarity};
//! use vesalius_data::Image;
//! // A blob and the same blob 1.5 voxels further along x: the field found moves the centre by about that much.
//! let blob = |cx: f64| {
//!     let data: Vec<f32> = (0..32 * 32 * 16)
//!         .map(|i| {
//!             let (x, y, z) = ((i % 32) as f64, ((i / 32) % 32) as f64, (i / 1024) as f64);
//!             (-((x - cx).powi(2) + (y - 16.0).powi(2) + (z - 8.0).powi(2)) / 30.0).exp() as f32
//!         })
//!         .collect();
//!     Volume::of(&Image::new(data, vec![32, 32, 16], 1, vesalius_io::IDENTITY, "float32").unwrap())
//! };
//! let opts = DeformableOptions {
//!     similarity: Similarity::Mse,
//!     deformation: Deformation::BSpline { spacing: 8 },
//!     levels: vec![2, 1],
//!     samples: 4000,
//!     learning_rate: 0.5,
//!     smoothness: 0.0,
//!     ..DeformableOptions::default()
//! };
//! let (lattice, report) = register_bspline_sampled(&blob(16.0), &blob(17.5), 8, &opts);
//! // Tensor order (d, h, w): the width (x) component at the blob's centre.
//! let u = lattice.displacement([8.0, 16.0, 16.0]);
//! assert!((u[2] - 1.5).abs() < 0.3, "{u:?}");
//! assert!(report.loss_end < report.loss_start && !report.kept_start);
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::deformable::{DeformableOptions, Regulariser, control_points};
use crate::sampled::{Sampled, Volume, bspline3, each_share, in_parts, level_volume, loss_and_dm};

/// Cubic B-spline control points on a grid: displacements in voxels of the grid, components (d, h, w).
#[derive(Clone, Debug, PartialEq)]
pub struct Lattice {
    /// Control points per axis ([`control_points`]).
    pub points: [usize; 3],
    /// Control-point spacing, voxels.
    pub spacing: usize,
    /// Displacements `[3][p0][p1][p2]`, the last axis fastest.
    pub values: Vec<f64>,
}

/// The (at most) four control points of one axis that carry weight at a position, and their weights.
#[derive(Clone, Copy, Debug)]
struct AxisWeights {
    first: usize,
    count: usize,
    w: [f64; 4],
}

impl Lattice {
    /// A zero field for a grid of `size` voxels.
    pub fn zeros(size: [usize; 3], spacing: usize) -> Self {
        let points = size.map(|n| control_points(n, spacing));
        Self { points, spacing, values: vec![0.0; 3 * points.iter().product::<usize>()] }
    }

    fn axis(&self, a: usize, x: f64) -> AxisWeights {
        let p = self.points[a];
        if p == 1 {
            return AxisWeights { first: 0, count: 1, w: [1.0, 0.0, 0.0, 0.0] };
        }
        let t = x / self.spacing as f64 + 1.0;
        let k0 = t.floor() as i64 - 1;
        let first = k0.max(0) as usize;
        let last = (k0 + 3).min(p as i64 - 1);
        let mut w = [0.0; 4];
        let mut count = 0;
        for k in first as i64..=last {
            w[count] = bspline3(t - k as f64).0;
            count += 1;
        }
        AxisWeights { first, count, w }
    }

    fn weights(&self, x: [f64; 3]) -> [AxisWeights; 3] {
        [0, 1, 2].map(|a| self.axis(a, x[a]))
    }

    /// Calls `f(index, weight)` for each of the (at most 64) control points that carry weight at a position, the
    /// index into one component's block of `values`.
    fn each_tap(&self, w: &[AxisWeights; 3], mut f: impl FnMut(usize, f64)) {
        let [_, p1, p2] = self.points;
        for i in 0..w[0].count {
            for j in 0..w[1].count {
                let wij = w[0].w[i] * w[1].w[j];
                let row = ((w[0].first + i) * p1 + w[1].first + j) * p2 + w[2].first;
                for k in 0..w[2].count {
                    f(row + k, wij * w[2].w[k]);
                }
            }
        }
    }

    fn at(&self, w: &[AxisWeights; 3]) -> [f64; 3] {
        let per = self.values.len() / 3;
        let mut u = [0.0; 3];
        self.each_tap(w, |index, weight| {
            for (c, uc) in u.iter_mut().enumerate() {
                *uc += weight * self.values[c * per + index];
            }
        });
        u
    }

    /// The displacement at voxel position `x` (d, h, w), voxels.
    pub fn displacement(&self, x: [f64; 3]) -> [f64; 3] {
        self.at(&self.weights(x))
    }

    /// The dense field on a grid of `size` voxels, `[3][d·h·w]`, by three separable passes.
    pub fn field(&self, size: [usize; 3]) -> [Vec<f32>; 3] {
        let [p0, p1, p2] = self.points;
        let [d, h, w] = size;
        let per = p0 * p1 * p2;
        let rows = |a: usize, n: usize| -> Vec<AxisWeights> { (0..n).map(|i| self.axis(a, i as f64)).collect() };
        let (wd, wh, ww) = (rows(0, d), rows(1, h), rows(2, w));
        let mut out: [Vec<f32>; 3] = [vec![0.0; d * h * w], vec![0.0; d * h * w], vec![0.0; d * h * w]];
        for (c, o) in out.iter_mut().enumerate() {
            let src = &self.values[c * per..(c + 1) * per];
            // Along width: [p0][p1][w].
            let mut a = vec![0f64; p0 * p1 * w];
            for r in 0..p0 * p1 {
                for (x, aw) in ww.iter().enumerate() {
                    a[r * w + x] = (0..aw.count).map(|k| aw.w[k] * src[r * p2 + aw.first + k]).sum();
                }
            }
            // Along height: [p0][h][w].
            let mut b = vec![0f64; p0 * h * w];
            for i in 0..p0 {
                for (y, ah) in wh.iter().enumerate() {
                    let dst = &mut b[(i * h + y) * w..(i * h + y + 1) * w];
                    for k in 0..ah.count {
                        let s = &a[(i * p1 + ah.first + k) * w..(i * p1 + ah.first + k + 1) * w];
                        dst.iter_mut().zip(s).for_each(|(t, v)| *t += ah.w[k] * v);
                    }
                }
            }
            // Along depth: [d][h][w].
            for (z, ad) in wd.iter().enumerate() {
                let dst = &mut o[z * h * w..(z + 1) * h * w];
                for k in 0..ad.count {
                    let s = &b[(ad.first + k) * h * w..(ad.first + k + 1) * h * w];
                    dst.iter_mut().zip(s).for_each(|(t, v)| *t += (ad.w[k] * v) as f32);
                }
            }
        }
        out
    }

    /// The regulariser on the lattice (see the module's description) plus `weight ×` its gradient added to `grad`.
    pub fn regulariser(&self, regulariser: Regulariser, weight: f64, grad: &mut [f64]) -> f64 {
        let s = self.spacing as f64;
        let long = |a: usize, n: usize| self.points[a] > n;
        // Each term: a difference stencil (offsets per axis and coefficients) and its scale.
        let mut terms: Vec<(Vec<([usize; 3], f64)>, f64)> = Vec::new();
        let unit = |a: usize, n: usize| -> [usize; 3] { std::array::from_fn(|k| if k == a { n } else { 0 }) };
        match regulariser {
            Regulariser::Diffusion => {
                let axes: Vec<usize> = (0..3).filter(|&a| long(a, 1)).collect();
                let count = axes.len().max(1) as f64;
                terms.extend(axes.into_iter().map(|a| (vec![([0; 3], -1.0), (unit(a, 1), 1.0)], 1.0 / (count * s * s))));
            }
            Regulariser::Bending => {
                for a in 0..3 {
                    if long(a, 2) {
                        terms.push((vec![([0; 3], 1.0), (unit(a, 1), -2.0), (unit(a, 2), 1.0)], 1.0 / s.powi(4)));
                    }
                    for b in a + 1..3 {
                        if long(a, 1) && long(b, 1) {
                            let ab: [usize; 3] = std::array::from_fn(|k| unit(a, 1)[k] + unit(b, 1)[k]);
                            let stencil = vec![([0; 3], 1.0), (unit(a, 1), -1.0), (unit(b, 1), -1.0), (ab, 1.0)];
                            terms.push((stencil, 2.0 / s.powi(4)));
                        }
                    }
                }
            }
        }
        let [p0, p1, p2] = self.points;
        let per = p0 * p1 * p2;
        // Per term: the flat offsets and coefficients of its taps, the extent of the positions where every tap lies
        // inside the lattice, and the term's scale and mean's count.
        let terms: Vec<(Vec<(usize, f64)>, [usize; 3], f64, f64)> = terms
            .into_iter()
            .map(|(stencil, scale)| {
                let reach: [usize; 3] = std::array::from_fn(|k| stencil.iter().map(|(o, _)| o[k]).max().unwrap_or(0));
                let extent = [0, 1, 2].map(|k| self.points[k] - reach[k]);
                let taps = stencil.iter().map(|(o, c)| ((o[0] * p1 + o[1]) * p2 + o[2], *c)).collect();
                (taps, extent, scale, (3 * extent[0] * extent[1] * extent[2]) as f64)
            })
            .collect();
        // The three displacement components are independent: one thread each, their sums added in a fixed order.
        let sums: Vec<Vec<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = grad
                .chunks_mut(per)
                .zip(self.values.chunks(per))
                .map(|(g, v)| {
                    let terms = &terms;
                    s.spawn(move || {
                        terms
                            .iter()
                            .map(|(taps, extent, scale, n)| stencil_term(v, g, taps, *extent, [p1, p2], 2.0 * scale * weight / n))
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        terms.iter().enumerate().map(|(t, (_, _, scale, n))| scale * sums.iter().map(|c| c[t]).sum::<f64>() / n).sum()
    }
}

/// One component's `Σ r²` of one difference stencil, `r` its response at every position of `extent` (`taps`: flat
/// offsets and coefficients on a lattice of rows `[p1, p2]`), with `k · r · coefficient` added to `grad` at each
/// tap; row by row, so that the loops vectorise.
fn stencil_term(values: &[f64], grad: &mut [f64], taps: &[(usize, f64)], extent: [usize; 3], [p1, p2]: [usize; 2], k: f64) -> f64 {
    let [n0, n1, n2] = extent;
    let mut r = vec![0.0; n2];
    let mut sum = 0.0;
    for i in 0..n0 {
        for j in 0..n1 {
            let row = (i * p1 + j) * p2;
            r.iter_mut().for_each(|x| *x = 0.0);
            for &(o, coef) in taps {
                r.iter_mut().zip(&values[row + o..row + o + n2]).for_each(|(x, v)| *x += coef * v);
            }
            sum += r.iter().map(|x| x * x).sum::<f64>();
            for &(o, coef) in taps {
                let kc = k * coef;
                grad[row + o..row + o + n2].iter_mut().zip(&r).for_each(|(g, x)| *g += kc * x);
            }
        }
    }
    sum
}

/// Points a share of the gradient's scatter takes at least (see `similarity_loss`).
const SCATTER_POINTS: usize = 4096;
/// The most shares of the gradient's scatter.
const SCATTER_SHARES: usize = 8;

/// Points of a pyramid level: positions in full-grid voxels and the fixed level's values there.
struct LevelPoints {
    full: Vec<[f64; 3]>,
    level: Vec<[f64; 3]>,
    values: Vec<f64>,
}

/// `n` points uniform over the level's grid (every voxel when it has no more), seeded, keeping those whose fixed
/// value exceeds `floor` when it is given (so fewer than `n` may be kept).
fn draw(fixed: &Volume, factor: [usize; 3], n: usize, seed: u64, floor: Option<f64>) -> LevelPoints {
    let size = fixed.grid.size;
    let total: usize = size.iter().product();
    let keep = |q: [f64; 3]| fixed.sample(q).map(|(v, _)| (q, v)).filter(|(_, v)| floor.is_none_or(|f| *v > f));
    let kept: Vec<([f64; 3], f64)> = if total <= n {
        let voxel = |i: usize| [(i / (size[1] * size[2])) as f64, ((i / size[2]) % size[1]) as f64, (i % size[2]) as f64];
        in_parts(total, |range| range.filter_map(|i| keep(voxel(i))).collect())
    } else {
        // One seeded stream of candidates, sampled across the cores in order.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let candidates: Vec<[f64; 3]> =
            (0..n).map(|_| [0, 1, 2].map(|a| if size[a] == 1 { 0.0 } else { rng.random::<f64>() * (size[a] - 1) as f64 })).collect();
        in_parts(n, |range| range.filter_map(|i| keep(candidates[i])).collect())
    };
    LevelPoints {
        full: kept.iter().map(|(q, _)| [0, 1, 2].map(|a| factor[a] as f64 * q[a] + (factor[a] as f64 - 1.0) / 2.0)).collect(),
        level: kept.iter().map(|(q, _)| *q).collect(),
        values: kept.into_iter().map(|(_, v)| v).collect(),
    }
}

/// Per point: the B-spline weights and the moving sample at the displaced position (gradient in level voxels).
struct Warped {
    weights: Vec<[AxisWeights; 3]>,
    samples: Vec<Sampled>,
}

fn warp(lattice: &Lattice, moving: &Volume, points: &LevelPoints, factor: [usize; 3]) -> Warped {
    let chunk = |range: std::ops::Range<usize>| -> (Vec<[AxisWeights; 3]>, Vec<Sampled>) {
        let mut weights = Vec::with_capacity(range.len());
        let mut samples = Vec::with_capacity(range.len());
        for i in range {
            let w = lattice.weights(points.full[i]);
            let u = lattice.at(&w);
            let q = [0, 1, 2].map(|a| points.level[i][a] + u[a] / factor[a] as f64);
            weights.push(w);
            if let Some((value, gradient)) = moving.sample(q) {
                samples.push(Sampled { index: i, value, gradient });
            }
        }
        (weights, samples)
    };
    let parts = in_parts(points.values.len(), |range| vec![chunk(range)]);
    let mut out = Warped { weights: Vec::with_capacity(points.values.len()), samples: Vec::with_capacity(points.values.len()) };
    for (w, s) in parts {
        out.weights.extend(w);
        out.samples.extend(s);
    }
    out
}

/// The similarity over the points and, with `grad`, its gradient with respect to the control points added there;
/// `None` when too few points land in the moving image.
fn similarity_loss(
    lattice: &Lattice,
    moving: &Volume,
    points: &LevelPoints,
    factor: [usize; 3],
    opts: &DeformableOptions,
    grad: Option<&mut [f64]>,
) -> Option<f64> {
    let warped = warp(lattice, moving, points, factor);
    if warped.weights.len() != points.values.len() {
        return None;
    }
    let (loss, dm) = loss_and_dm(&warped.samples, &points.values, opts.similarity)?;
    if let Some(grad) = grad {
        let (per, len) = (lattice.values.len() / 3, grad.len());
        // Each share of the points scatters into a gradient of its own, and the shares are added in order: their
        // number depends on the points alone, so the sum is the same on any number of cores.
        let shares = (warped.samples.len() / SCATTER_POINTS).clamp(1, SCATTER_SHARES);
        let size = warped.samples.len().div_ceil(shares);
        let partials = each_share(shares, |share| {
            let mut partial = vec![0.0; len];
            let range = (share * size).min(warped.samples.len())..((share + 1) * size).min(warped.samples.len());
            for (s, d) in warped.samples[range.clone()].iter().zip(&dm[range]) {
                // ∂m/∂c (full voxels) = ∇m (level voxels) / factor · β.
                let g = [0, 1, 2].map(|a| d * s.gradient[a] / factor[a] as f64);
                lattice.each_tap(&warped.weights[s.index], |index, weight| {
                    for (c, gc) in g.iter().enumerate() {
                        partial[c * per + index] += weight * gc;
                    }
                });
            }
            partial
        });
        for partial in partials {
            grad.iter_mut().zip(partial).for_each(|(g, p)| *g += p);
        }
    }
    Some(loss)
}

/// What a deformable registration did (the sampled B-spline, or an every-voxel optimiser).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeformableReport {
    /// Iterations run per pyramid level (`bspline@4`, …).
    pub iterations: Vec<(String, usize)>,
    /// The similarity of the start (no displacement) and of the result: on the sampled optimiser's evaluation points
    /// (drawn over the whole grid), or on the finest pyramid level the every-voxel optimisers ran.
    pub loss_start: f64,
    /// See `loss_start`.
    pub loss_end: f64,
    /// Whether the result scored no better than the start, so the start was returned.
    pub kept_start: bool,
}

/// Registers `moving` to `fixed` (the same grid) by a B-spline field with control points every `spacing` voxels,
/// on `opts.samples` points per iteration; `opts.levels`, `steps`, `learning_rate` (voxels of the level, Adam per
/// the gradient's RMS, cosine decay), `tolerance`, `regulariser`, `smoothness` and `seed` mean what they mean for the
/// dense optimiser ([`crate::deformable`]). Every listed level runs: the cost is the points', not the grid's. The
/// second moments of depth-1 images' depth components stay zero.
pub fn register_bspline_sampled(fixed: &Volume, moving: &Volume, spacing: usize, opts: &DeformableOptions) -> (Lattice, DeformableReport) {
    let size = fixed.grid.size;
    let flat = size[0] == 1;
    let spacing = spacing.max(2);
    let mut lattice = Lattice::zeros(size, spacing);
    let samples = opts.samples.max(16);
    // The optimiser's points lie in the fixed foreground; those of the guard cover the whole grid.
    let floor = (opts.foreground > 0.0).then_some(opts.foreground);
    let evaluation = draw(fixed, [1, 1, 1], samples.saturating_mul(4), opts.seed ^ 0x5eed, None);
    let score =
        |l: &Lattice| similarity_loss(l, moving, &evaluation, [1, 1, 1], opts, None).filter(|v| v.is_finite()).unwrap_or(f64::INFINITY);
    let loss_start = score(&lattice);
    let per = lattice.values.len() / 3;
    let mut iterations = Vec::new();
    let mut draw_count = 0u64;
    for &level in &opts.levels {
        let factor = if flat { [1, level, level] } else { [level; 3] };
        if size.iter().zip(factor).any(|(&s, f)| f > 1 && s / f < 4) {
            continue;
        }
        // The finest level is the volumes themselves, borrowed.
        let (f, m) = (level_volume(fixed, factor), level_volume(moving, factor));
        let (mut m1, mut m2) = (vec![0.0; lattice.values.len()], 0.0);
        let mut history = Vec::with_capacity(opts.steps);
        let mut ran = 0;
        for step in 0..opts.steps {
            draw_count += 1;
            let points = draw(&f, factor, samples, opts.seed.wrapping_mul(0x9e37_79b9).wrapping_add(draw_count), floor);
            let mut grad = vec![0.0; lattice.values.len()];
            let Some(loss) = similarity_loss(&lattice, &m, &points, factor, opts, Some(&mut grad)) else { break };
            let penalty = if opts.smoothness > 0.0 { lattice.regulariser(opts.regulariser, opts.smoothness, &mut grad) } else { 0.0 };
            ran = step + 1;
            history.push(loss + opts.smoothness * penalty);
            if flat {
                grad[..per].iter_mut().for_each(|g| *g = 0.0);
            }
            // Steps in voxels of the level are `level` voxels of the grid.
            let lr = opts.learning_rate
                * level as f64
                * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / opts.steps as f64).cos()));
            // Adam with one second moment for the whole gradient, as the dense optimiser's: a control point steps in
            // proportion to its own averaged gradient (one at three times the RMS moves by the step size). A second
            // moment per control point would move those that few points reach, whose gradients are mostly sampling
            // noise, as fast as those on edges.
            let t = (step + 1) as i32;
            let (b1, b2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
            let mean_square = grad.iter().map(|g| g * g).sum::<f64>() / grad.len() as f64;
            m2 = 0.999 * m2 + 0.001 * mean_square;
            let scale = lr / (3.0 * (m2 / b2).sqrt() + 1e-12);
            for k in 0..grad.len() {
                m1[k] = 0.9 * m1[k] + 0.1 * grad[k];
                lattice.values[k] -= scale * m1[k] / b1;
            }
            let (n, window) = (history.len(), 15);
            if opts.tolerance > 0.0 && n >= 3 * window {
                let last = history[n - window..].iter().sum::<f64>() / window as f64;
                let prev = history[n - 2 * window..n - window].iter().sum::<f64>() / window as f64;
                if prev - last < opts.tolerance * prev.abs().max(1e-12) {
                    break;
                }
            }
        }
        iterations.push((format!("bspline@{level}"), ran));
    }
    let loss_end = score(&lattice);
    let kept_start = !(loss_end < loss_start);
    if kept_start {
        lattice = Lattice::zeros(size, spacing);
    }
    (lattice, DeformableReport { iterations, loss_start, loss_end, kept_start })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Similarity;
    use crate::deformable::{bspline_field, bspline_matrix};
    use burn::tensor::{Tensor, TensorData};
    use vesalius_data::Image;

    type B = burn::backend::Flex;

    fn volume(size: [usize; 3], f: impl Fn(f64, f64, f64) -> f64) -> Volume {
        let [d, h, w] = size;
        let data = (0..d * h * w).map(|i| f((i / (h * w)) as f64, ((i / w) % h) as f64, (i % w) as f64) as f32).collect();
        // NIfTI order (x, y, z) = tensor order reversed.
        Volume::of(&Image::new(data, vec![w, h, d], 1, vesalius_io::IDENTITY, "float32").unwrap())
    }

    fn lattice(size: [usize; 3], spacing: usize, seed: u64) -> Lattice {
        let mut l = Lattice::zeros(size, spacing);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        l.values.iter_mut().for_each(|v| *v = rng.random::<f64>() - 0.5);
        l
    }

    #[test]
    fn the_field_equals_the_matrix_form_and_pointwise_evaluation() {
        let size = [7, 9, 11];
        let l = lattice(size, 3, 1);
        let dense = l.field(size);
        let device = Default::default();
        let [p0, p1, p2] = l.points;
        let control =
            Tensor::<B, 5>::from_data(TensorData::new(l.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), [1, 3, p0, p1, p2]), &device);
        let mats = [0, 1, 2].map(|a| {
            Tensor::<B, 2>::from_data(TensorData::new(bspline_matrix(size[a], l.points[a], 3, 1), [size[a], l.points[a]]), &device)
        });
        let reference: Vec<f32> = bspline_field(control, mats).into_data().to_vec().unwrap();
        let n = size.iter().product::<usize>();
        for c in 0..3 {
            for i in 0..n {
                assert!((dense[c][i] - reference[c * n + i]).abs() < 1e-5, "component {c} voxel {i}");
            }
        }
        let u = l.displacement([4.0, 2.0, 9.0]);
        let i = (4 * 9 + 2) * 11 + 9;
        assert!((0..3).all(|c| (u[c] as f32 - dense[c][i]).abs() < 1e-5));
    }

    #[test]
    fn gradients_equal_finite_differences() {
        let size = [12, 14, 16];
        let fixed = volume(size, |z, y, x| (-((x - 8.0).powi(2) / 20.0 + (y - 7.0).powi(2) / 12.0 + (z - 6.0).powi(2) / 9.0)).exp());
        let moving = volume(size, |z, y, x| (-((x - 8.7).powi(2) / 18.0 + (y - 6.6).powi(2) / 13.0 + (z - 6.4).powi(2) / 10.0)).exp());
        let points = draw(&fixed, [1, 1, 1], 2000, 5, None);
        let base = lattice(size, 4, 2);
        let base = Lattice { values: base.values.iter().map(|v| v * 0.6).collect(), ..base };
        for similarity in [Similarity::Mse, Similarity::Ncc { window: 9 }, Similarity::Mi { bins: 24 }] {
            let opts = DeformableOptions { similarity, ..DeformableOptions::default() };
            let mut grad = vec![0.0; base.values.len()];
            similarity_loss(&base, &moving, &points, [1, 1, 1], &opts, Some(&mut grad)).unwrap();
            // The control points with the largest gradients, each component.
            let mut order: Vec<usize> = (0..grad.len()).collect();
            order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
            for &k in order.iter().take(12) {
                let h = 1e-4;
                let at = |d: f64| {
                    let mut l = base.clone();
                    l.values[k] += d;
                    similarity_loss(&l, &moving, &points, [1, 1, 1], &opts, None).unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!((fd - grad[k]).abs() <= 0.03 * fd.abs().max(grad[k].abs()) + 1e-7, "{similarity:?} {k}: {} vs {fd}", grad[k]);
            }
        }
        for regulariser in [Regulariser::Diffusion, Regulariser::Bending] {
            let mut grad = vec![0.0; base.values.len()];
            base.regulariser(regulariser, 1.0, &mut grad);
            for k in [0, 17, 200, base.values.len() - 1] {
                let at = |d: f64| {
                    let mut l = base.clone();
                    l.values[k] += d;
                    l.regulariser(regulariser, 1.0, &mut vec![0.0; base.values.len()])
                };
                let fd = (at(1e-4) - at(-1e-4)) / 2e-4;
                assert!((fd - grad[k]).abs() < 1e-7 + 1e-4 * fd.abs(), "{regulariser:?} {k}: {} vs {fd}", grad[k]);
            }
        }
    }

    #[test]
    fn the_scatter_in_shares_covers_every_point_once() {
        // With mean squared difference, the gradient over all points is the count-weighted mean of the gradients over
        // two halves: 30,000 points scatter in 7 shares, each half in 3, so a share that skipped or repeated points
        // would break the identity.
        let size = [40, 44, 48];
        let fixed = volume(size, |z, y, x| (-((x - 24.0).powi(2) / 80.0 + (y - 22.0).powi(2) / 60.0 + (z - 20.0).powi(2) / 50.0)).exp());
        let moving = volume(size, |z, y, x| (-((x - 25.0).powi(2) / 75.0 + (y - 21.4).powi(2) / 64.0 + (z - 20.6).powi(2) / 52.0)).exp());
        let drawn = draw(&fixed, [1, 1, 1], 60_000, 9, None);
        // Points a voxel inside the border, so that every displaced one stays in the moving image.
        let inside: Vec<usize> = (0..drawn.values.len())
            .filter(|&i| (0..3).all(|a| (1.0..=(size[a] - 2) as f64).contains(&drawn.level[i][a])))
            .take(30_000)
            .collect();
        assert_eq!(inside.len(), 30_000);
        let half = |r: std::ops::Range<usize>| LevelPoints {
            full: inside[r.clone()].iter().map(|&i| drawn.full[i]).collect(),
            level: inside[r.clone()].iter().map(|&i| drawn.level[i]).collect(),
            values: inside[r].iter().map(|&i| drawn.values[i]).collect(),
        };
        let points = half(0..30_000);
        let l = lattice(size, 4, 2);
        let opts = DeformableOptions { similarity: Similarity::Mse, ..DeformableOptions::default() };
        let gradient = |p: &LevelPoints| {
            let mut g = vec![0.0; l.values.len()];
            similarity_loss(&l, &moving, p, [1, 1, 1], &opts, Some(&mut g)).unwrap();
            g
        };
        let all = gradient(&points);
        let (a, b) = (gradient(&half(0..13_000)), gradient(&half(13_000..30_000)));
        let largest = all.iter().fold(0f64, |m, g| m.max(g.abs()));
        assert!(largest > 1e-6, "largest gradient {largest}");
        for k in 0..all.len() {
            let combined = (13_000.0 * a[k] + 17_000.0 * b[k]) / 30_000.0;
            assert!((all[k] - combined).abs() <= 1e-9 * largest, "{k}: {} vs {combined}", all[k]);
        }
    }

    #[test]
    fn affine_lattices_have_no_bending_energy_and_constant_ones_no_diffusion() {
        let size = [10, 10, 10];
        let mut l = Lattice::zeros(size, 3);
        let [p0, p1, p2] = l.points;
        let per = p0 * p1 * p2;
        for c in 0..3 {
            for i in 0..per {
                let (a, b, k) = (i / (p1 * p2), (i / p2) % p1, i % p2);
                l.values[c * per + i] = 0.3 * a as f64 - 0.2 * b as f64 + 0.1 * k as f64 + c as f64;
            }
        }
        assert!(l.regulariser(Regulariser::Bending, 1.0, &mut vec![0.0; 3 * per]).abs() < 1e-20);
        l.values = (0..3 * per).map(|i| (i / per) as f64).collect();
        assert!(l.regulariser(Regulariser::Diffusion, 1.0, &mut vec![0.0; 3 * per]).abs() < 1e-20);
    }

    #[test]
    fn a_smooth_known_field_is_recovered() {
        // The moving image is the fixed one warped by a smooth field that a spacing-6 lattice can represent.
        let size = [24, 28, 32];
        let truth = {
            let mut l = Lattice::zeros(size, 6);
            let [p0, p1, p2] = l.points;
            let per = p0 * p1 * p2;
            for i in 0..per {
                let (a, b, k) = ((i / (p1 * p2)) as f64, ((i / p2) % p1) as f64, (i % p2) as f64);
                l.values[2 * per + i] = 1.5 * (0.6 * a).sin() * (0.5 * b).cos();
                l.values[per + i] = 1.2 * (0.4 * k).cos() * (0.5 * a).sin();
                l.values[i] = 0.8 * (0.5 * b).sin();
            }
            l
        };
        let texture = |z: f64, y: f64, x: f64| {
            0.5 + 0.25 * (0.45 * x).sin() * (0.35 * y).cos() + 0.2 * (0.3 * z + 0.2 * x).sin() + 0.05 * (0.6 * y).sin()
        };
        let fixed = volume(size, texture);
        // moving(p + u(p)) = fixed(p): moving is fixed pushed forward; approximate by fixed(p − u(p)).
        let moving = volume(size, |z, y, x| {
            let u = truth.displacement([z, y, x]);
            texture(z - u[0], y - u[1], x - u[2])
        });
        let opts = DeformableOptions {
            similarity: Similarity::Mse,
            levels: vec![2, 1],
            steps: 300,
            learning_rate: 0.3,
            samples: 8000,
            smoothness: 0.01,
            regulariser: Regulariser::Bending,
            ..DeformableOptions::default()
        };
        let (found, report) = register_bspline_sampled(&fixed, &moving, 6, &opts);
        let (dense_found, dense_truth) = (found.field(size), truth.field(size));
        let n = size.iter().product::<usize>();
        let err = |f: &[Vec<f32>; 3], g: Option<&[Vec<f32>; 3]>| {
            (0..n).map(|i| (0..3).map(|c| (f[c][i] - g.map_or(0.0, |g| g[c][i])).powi(2)).sum::<f32>().sqrt() as f64).sum::<f64>()
                / n as f64
        };
        let (before, after) = (err(&dense_truth, None), err(&dense_truth, Some(&dense_found)));
        // Measured: 1.014 → 0.059 voxels, the loss 3.0e-3 → 1.9e-5.
        assert!(after < 0.1 * before, "mean error {before:.3} → {after:.3} voxels; {report:?}");
        assert!(!report.kept_start && report.loss_end < 0.02 * report.loss_start, "{report:?}");
    }

    #[test]
    fn a_hopeless_pair_keeps_the_start() {
        let size = [16, 16, 16];
        let fixed = volume(size, |z, y, x| (0.3 * x + 0.2 * y + 0.1 * z).sin() * 0.5 + 0.5);
        let empty = volume(size, |_, _, _| 0.0);
        let opts =
            DeformableOptions { similarity: Similarity::Ncc { window: 9 }, samples: 2000, steps: 20, ..DeformableOptions::default() };
        let (l, report) = register_bspline_sampled(&fixed, &empty, 4, &opts);
        assert!(report.kept_start && l.values.iter().all(|&v| v == 0.0), "{report:?}");
    }
}
