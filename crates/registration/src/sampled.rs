//! Affine registration as elastix and ANTs run it: the similarity and its gradient evaluated on a few thousand
//! points re-drawn at random every iteration (seeded), gradients by the chain rule through the moving image's
//! gradient at those points (no automatic differentiation), the points' sampling split across the CPU's cores,
//! stopping per pyramid level when the similarity stops improving, and a guard that never returns a transform
//! worse than the start.
//!
//! The transform is [`AffineParams`] about the fixed image's centre. Each point `x` (fixed world) maps to
//! `y = T·x`; the loss `L` depends on the moving value `m(y)`, so `∂L/∂T[r][c] = Σ ∂L/∂m · ∂m/∂y_r · x̃_c` with
//! `x̃ = (x, 1)`, and the twelve parameters follow through the derivative of [`AffineParams::matrix`] (central
//! differences of a closed form, exact to about 1e-9).
//!
//! Similarities ([`Similarity`]): mean squared difference (on intensities normalised per image), the correlation
//! coefficient (`Ncc`: global on the sample, invariant to linear intensity changes), and Mattes mutual information
//! (`Mi`: a joint histogram with a zero-order fixed kernel and a cubic B-spline moving kernel, Mattes et al. 2003,
//! the default of elastix).
//!
//! ```
//! use vesalius_registration::sampled::{Points, affine_loss};
//! use vesalius_registration::{AffineParams, Grid, Similarity};
//! use vesalius_data::Image;
//! // A smooth blob and the same blob shifted by 2 mm along x: the loss is lower at the true shift.
//! let blob = |cx: f64| {
//!     let data: Vec<f32> = (0..32 * 32 * 8)
//!         .map(|i| {
//!             let (x, y, z) = ((i % 32) as f64, ((i / 32) % 32) as f64, (i / 1024) as f64);
//!             (-((x - cx).powi(2) + (y - 16.0).powi(2) + (z - 4.0).powi(2)) / 40.0).exp() as f32
//!         })
//!         .collect();
//!     Image::new(data, vec![32, 32, 8], 1, vesalius_io::IDENTITY, "float32").unwrap()
//! };
//! let (fixed, moving) = (blob(15.0), blob(17.0));
//! let points = Points::draw(&fixed, 4000, 7);
//! let centre = Grid::of(&fixed).centre();
//! let at = |tx: f64| {
//!     let p = AffineParams { translation: [tx, 0.0, 0.0], ..AffineParams::IDENTITY };
//!     affine_loss(&moving, &points, &p.matrix(centre), Similarity::Ncc { window: 9 }).0
//! };
//! assert!(at(2.0) < at(0.0) && at(2.0) < at(4.0));
//! ```
use std::borrow::Cow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vesalius_data::Image;

use crate::affine::{AffineOptions, AffineParams, AffineResult, Grid};
use crate::similarity::Similarity;
use crate::{Mat4, mat_inv, mat_mul};

/// A single-channel volume with its grid, for sampling: values in tensor order `(d, h, w)`.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Values, `d·h·w`, `w` fastest.
    pub data: Vec<f32>,
    /// The grid: size and voxel → world.
    pub grid: Grid,
    /// World → voxel.
    pub from_world: Mat4,
}

impl Volume {
    /// The first channel of `image`.
    pub fn of(image: &Image) -> Self {
        let grid = Grid::of(image);
        Self { data: image.data()[..image.voxels()].to_vec(), from_world: mat_inv(&grid.to_world), grid }
    }

    /// Values on a grid of `size` voxels (`d·h·w`, `w` fastest) whose voxels are its world coordinates.
    pub fn from_voxels(data: Vec<f32>, size: [usize; 3]) -> Self {
        let to_world = crate::affine::identity();
        Self { data, grid: Grid { size, to_world }, from_world: to_world }
    }

    /// Block means of `factor` voxels per axis (the grid of [`Grid::coarsened`]).
    pub fn coarsened(&self, factor: [usize; 3]) -> Self {
        if factor == [1, 1, 1] {
            return self.clone();
        }
        let grid = self.grid.coarsened(factor);
        let [d, h, w] = grid.size;
        let [_, sh, sw] = self.grid.size;
        let mut data = vec![0f32; d * h * w];
        let n = (factor[0] * factor[1] * factor[2]) as f32;
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let mut s = 0f32;
                    for dz in 0..factor[0] {
                        for dy in 0..factor[1] {
                            let row = ((z * factor[0] + dz) * sh + y * factor[1] + dy) * sw + x * factor[2];
                            s += self.data[row..row + factor[2]].iter().sum::<f32>();
                        }
                    }
                    data[(z * h + y) * w + x] = s / n;
                }
            }
        }
        Self { data, from_world: mat_inv(&grid.to_world), grid }
    }

    /// The trilinear value at voxel coordinates `v` (d, h, w) and its gradient in voxel units, or `None` outside
    /// the grid (an axis one voxel long is constant along itself).
    pub fn sample(&self, v: [f64; 3]) -> Option<(f64, [f64; 3])> {
        let size = self.grid.size;
        let mut base = [0usize; 3];
        let mut frac = [0f64; 3];
        for a in 0..3 {
            let len = size[a];
            if len == 1 {
                if v[a].abs() > 0.5 {
                    return None;
                }
                continue;
            }
            if !(v[a] >= 0.0 && v[a] <= (len - 1) as f64) {
                return None;
            }
            let b = (v[a].floor() as usize).min(len - 2);
            base[a] = b;
            frac[a] = v[a] - b as f64;
        }
        let [_, h, w] = size;
        let step = [if size[0] > 1 { h * w } else { 0 }, if size[1] > 1 { w } else { 0 }, if size[2] > 1 { 1 } else { 0 }];
        let origin = (base[0] * h + base[1]) * w + base[2];
        let at = |dz: usize, dy: usize, dx: usize| self.data[origin + dz * step[0] + dy * step[1] + dx * step[2]] as f64;
        let (c000, c001, c010, c011) = (at(0, 0, 0), at(0, 0, 1), at(0, 1, 0), at(0, 1, 1));
        let (c100, c101, c110, c111) = (at(1, 0, 0), at(1, 0, 1), at(1, 1, 0), at(1, 1, 1));
        let [fz, fy, fx] = frac;
        let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
        let c00 = lerp(c000, c001, fx);
        let c01 = lerp(c010, c011, fx);
        let c10 = lerp(c100, c101, fx);
        let c11 = lerp(c110, c111, fx);
        let c0 = lerp(c00, c01, fy);
        let c1 = lerp(c10, c11, fy);
        let value = lerp(c0, c1, fz);
        let gz = if size[0] > 1 { c1 - c0 } else { 0.0 };
        let gy = if size[1] > 1 { lerp(c01 - c00, c11 - c10, fz) } else { 0.0 };
        let gx = if size[2] > 1 { lerp(lerp(c001 - c000, c011 - c010, fy), lerp(c101 - c100, c111 - c110, fy), fz) } else { 0.0 };
        Some((value, [gz, gy, gx]))
    }
}

/// Points of the fixed image: world positions and fixed values.
#[derive(Clone, Debug, Default)]
pub struct Points {
    /// World positions (mm).
    pub world: Vec<[f64; 3]>,
    /// The fixed image's values there.
    pub values: Vec<f64>,
}

impl Points {
    /// `n` points drawn uniformly over the fixed image's voxels at continuous positions (seeded), with their
    /// trilinear values; every voxel when the image has no more than `n`.
    pub fn draw(fixed: &Image, n: usize, seed: u64) -> Self {
        Self::draw_in(&Volume::of(fixed), n, seed, None)
    }

    /// As [`Points::draw`] on a volume, keeping only points whose fixed value exceeds `floor` when it is given (the
    /// foreground: air carries no alignment and lets a whole head's affine drift to fit the neck and the field of
    /// view); draws continue until `n` are kept or `20·n` were tried.
    pub fn draw_in(fixed: &Volume, n: usize, seed: u64, floor: Option<f64>) -> Self {
        let size = fixed.grid.size;
        let total: usize = size.iter().product();
        let m = &fixed.grid.to_world;
        let keep = |v: [f64; 3]| {
            let value = fixed.sample(v).map(|(x, _)| x).filter(|x| floor.is_none_or(|f| *x > f))?;
            Some(([0, 1, 2].map(|r| m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]), value))
        };
        let kept: Vec<([f64; 3], f64)> = if total <= n {
            let voxel = |i: usize| [(i / (size[1] * size[2])) as f64, ((i / size[2]) % size[1]) as f64, (i % size[2]) as f64];
            in_parts(total, |range| range.filter_map(|i| keep(voxel(i))).collect())
        } else {
            // The candidates of one seeded stream, in order; each batch's are sampled across the cores and the
            // first `n` kept, so the points are those of drawing one at a time.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut kept = Vec::with_capacity(n);
            let mut tried = 0;
            while kept.len() < n && tried < 20 * n {
                let wanted = n - kept.len();
                // Enough candidates for the share kept so far, and a margin.
                let share = if tried == 0 { 1.0 } else { (kept.len() as f64 / tried as f64).max(0.05) };
                let batch = ((wanted as f64 / share * 1.1) as usize + 64).min(20 * n - tried);
                let candidates: Vec<[f64; 3]> = (0..batch)
                    .map(|_| [0, 1, 2].map(|a| if size[a] == 1 { 0.0 } else { rng.random::<f64>() * (size[a] - 1) as f64 }))
                    .collect();
                tried += batch;
                let found = in_parts(batch, |range| range.filter_map(|i| keep(candidates[i])).collect());
                kept.extend(found.into_iter().take(wanted));
            }
            kept
        };
        Points { world: kept.iter().map(|(w, _)| *w).collect(), values: kept.into_iter().map(|(_, v)| v).collect() }
    }

    /// How many points.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// One point's moving sample: the value and its gradient (world space for the affine stage, level voxels for the
/// B-spline stage), with the point's index.
pub(crate) struct Sampled {
    pub(crate) index: usize,
    pub(crate) value: f64,
    pub(crate) gradient: [f64; 3],
}

/// The moving image at every point mapped by `world` (fixed world → moving world), split across the cores.
fn sample_moving(moving: &Volume, points: &Points, world: &Mat4) -> Vec<Sampled> {
    let to_voxel = mat_mul(&moving.from_world, world);
    // World gradient = (∂v/∂y)ᵀ · voxel gradient, with ∂v/∂y the linear part of the moving world → voxel map.
    let jac = moving.from_world;
    let chunk = |range: std::ops::Range<usize>| -> Vec<Sampled> {
        let mut out = Vec::with_capacity(range.len());
        for i in range {
            let x = points.world[i];
            let v = [0, 1, 2].map(|r| to_voxel[r][0] * x[0] + to_voxel[r][1] * x[1] + to_voxel[r][2] * x[2] + to_voxel[r][3]);
            if let Some((value, g)) = moving.sample(v) {
                let gradient = [0, 1, 2].map(|c| (0..3).map(|r| jac[r][c] * g[r]).sum::<f64>());
                out.push(Sampled { index: i, value, gradient });
            }
        }
        out
    };
    in_parts(points.len(), chunk)
}

/// `f` over `0..n` in consecutive ranges, one per core (a single range below 2,048 items a core), with the results
/// concatenated in order: the same output on any number of cores.
pub(crate) fn in_parts<T: Send>(n: usize, f: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(n / 2048).max(1);
    let per = n.div_ceil(threads);
    each_share(threads, |t| f(t * per..((t + 1) * per).min(n))).into_iter().flatten().collect()
}

/// `f` of each share `0..count`, the shares spread over the cores, the results in the shares' order.
pub(crate) fn each_share<T: Send>(count: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(count).max(1);
    if threads == 1 {
        return (0..count).map(f).collect();
    }
    let per = count.div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..threads).map(|t| s.spawn(move || (t * per..((t + 1) * per).min(count)).map(f).collect::<Vec<T>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// The cubic B-spline and its derivative.
pub(crate) fn bspline3(t: f64) -> (f64, f64) {
    let a = t.abs();
    let s = t.signum();
    if a < 1.0 {
        (2.0 / 3.0 - a * a + 0.5 * a * a * a, s * (-2.0 * a + 1.5 * a * a))
    } else if a < 2.0 {
        let b = 2.0 - a;
        (b * b * b / 6.0, -s * 0.5 * b * b)
    } else {
        (0.0, 0.0)
    }
}

/// The loss over the sampled points and `∂L/∂m` for each (in the order of `samples`); `None` when too few
/// points fall inside the moving image.
pub(crate) fn loss_and_dm(samples: &[Sampled], fixed: &[f64], similarity: Similarity) -> Option<(f64, Vec<f64>)> {
    let n = samples.len();
    if n < 16 {
        return None;
    }
    let nf = n as f64;
    let f = |s: &Sampled| fixed[s.index];
    match similarity {
        Similarity::Mse => {
            let loss = samples.iter().map(|s| (s.value - f(s)).powi(2)).sum::<f64>() / nf;
            Some((loss, samples.iter().map(|s| 2.0 * (s.value - f(s)) / nf).collect()))
        }
        Similarity::Ncc { .. } => {
            let mf = samples.iter().map(f).sum::<f64>() / nf;
            let mm = samples.iter().map(|s| s.value).sum::<f64>() / nf;
            let (mut sff, mut smm, mut sfm) = (0.0, 0.0, 0.0);
            for s in samples {
                let (a, b) = (f(s) - mf, s.value - mm);
                sff += a * a;
                smm += b * b;
                sfm += a * b;
            }
            if sff <= 1e-12 || smm <= 1e-12 {
                return Some((0.0, vec![0.0; n]));
            }
            let root = (sff * smm).sqrt();
            let cc = sfm / root;
            // ∂cc/∂m_i = (f_i − f̄)/√(Sff·Smm) − cc·(m_i − m̄)/Smm; the loss is −cc.
            Some((-cc, samples.iter().map(|s| -((f(s) - mf) / root - cc * (s.value - mm) / smm)).collect()))
        }
        Similarity::Mi { bins } => {
            let bins = bins.max(8);
            let scale = (bins - 5) as f64;
            let fixed_bin = |v: f64| ((v.clamp(0.0, 1.0) * (bins - 1) as f64).round() as usize).min(bins - 1);
            let moving_pos = |v: f64| 2.0 + v.clamp(0.0, 1.0) * scale;
            let mut joint = vec![0f64; bins * bins];
            for s in samples {
                let (i, k) = (fixed_bin(f(s)), moving_pos(s.value));
                let first = (k.floor() as usize).saturating_sub(1);
                for b in first..(first + 4).min(bins) {
                    joint[i * bins + b] += bspline3(b as f64 - k).0;
                }
            }
            let total: f64 = joint.iter().sum();
            if total <= 0.0 {
                return None;
            }
            joint.iter_mut().for_each(|p| *p /= total);
            let pf: Vec<f64> = (0..bins).map(|i| joint[i * bins..(i + 1) * bins].iter().sum()).collect();
            let pm: Vec<f64> = (0..bins).map(|k| (0..bins).map(|i| joint[i * bins + k]).sum()).collect();
            let mut mi = 0.0;
            for i in 0..bins {
                for k in 0..bins {
                    let p = joint[i * bins + k];
                    if p > 1e-12 {
                        mi += p * (p / (pf[i] * pm[k])).ln();
                    }
                }
            }
            // ∂MI/∂m_i = Σ_k ∂p(ι_i, k)/∂m_i · ln(p(ι_i, k) / p_m(k)) (the fixed marginal does not move).
            let dm = samples
                .iter()
                .map(|s| {
                    let (i, k) = (fixed_bin(f(s)), moving_pos(s.value));
                    if !(0.0..=1.0).contains(&s.value) {
                        return 0.0;
                    }
                    let first = (k.floor() as usize).saturating_sub(1);
                    let mut g = 0.0;
                    for b in first..(first + 4).min(bins) {
                        let p = joint[i * bins + b];
                        if p > 1e-12 && pm[b] > 1e-12 {
                            // d/dm of β(b − k(m)) = −β'(b − k)·scale.
                            g += -bspline3(b as f64 - k).1 * scale / total * (p / pm[b]).ln();
                        }
                    }
                    -g
                })
                .collect();
            Some((-mi, dm))
        }
    }
}

/// The loss of `moving` against the points under the world transform `world` (fixed world → moving world) and its
/// gradient with respect to the top three rows of `world`; `(NaN, 0)` when too few points land in the moving image.
pub fn affine_loss(moving: &Image, points: &Points, world: &Mat4, similarity: Similarity) -> (f64, [[f64; 4]; 3]) {
    matrix_loss(&Volume::of(moving), points, world, similarity)
}

fn matrix_loss(moving: &Volume, points: &Points, world: &Mat4, similarity: Similarity) -> (f64, [[f64; 4]; 3]) {
    let samples = sample_moving(moving, points, world);
    let Some((loss, dm)) = loss_and_dm(&samples, &points.values, similarity) else {
        return (f64::NAN, [[0.0; 4]; 3]);
    };
    let mut g = [[0.0; 4]; 3];
    for (s, d) in samples.iter().zip(dm) {
        let x = points.world[s.index];
        for (r, row) in g.iter_mut().enumerate() {
            let k = d * s.gradient[r];
            row[0] += k * x[0];
            row[1] += k * x[1];
            row[2] += k * x[2];
            row[3] += k;
        }
    }
    (loss, g)
}

/// `∂T/∂μ_k` for the twelve parameters, by central differences of the closed form.
fn matrix_jacobian(p: &AffineParams, centre: [f64; 3]) -> [[[f64; 4]; 3]; 12] {
    let mut out = [[[0.0; 4]; 3]; 12];
    let h = 1e-4;
    for (k, slot) in out.iter_mut().enumerate() {
        let shifted = |d: f64| {
            let mut v = params_vec(p);
            v[k] += d;
            params_from(&v).matrix(centre)
        };
        let (a, b) = (shifted(h), shifted(-h));
        for r in 0..3 {
            for c in 0..4 {
                slot[r][c] = (a[r][c] - b[r][c]) / (2.0 * h);
            }
        }
    }
    out
}

fn params_vec(p: &AffineParams) -> [f64; 12] {
    let mut v = [0.0; 12];
    v[..3].copy_from_slice(&p.angles);
    v[3..6].copy_from_slice(&p.translation);
    v[6..9].copy_from_slice(&p.log_scale);
    v[9..].copy_from_slice(&p.shear);
    v
}

fn params_from(v: &[f64; 12]) -> AffineParams {
    let t = |k: usize| [v[k], v[k + 1], v[k + 2]];
    AffineParams { angles: t(0), translation: t(3), log_scale: t(6), shear: t(9) }
}

/// The loss and its gradient with respect to the twelve parameters.
pub fn params_loss(moving: &Image, points: &Points, p: &AffineParams, centre: [f64; 3], similarity: Similarity) -> (f64, [f64; 12]) {
    param_gradient(&Volume::of(moving), points, p, centre, similarity)
}

fn param_gradient(moving: &Volume, points: &Points, p: &AffineParams, centre: [f64; 3], similarity: Similarity) -> (f64, [f64; 12]) {
    let (loss, g) = matrix_loss(moving, points, &p.matrix(centre), similarity);
    let jac = matrix_jacobian(p, centre);
    let mut out = [0.0; 12];
    for (k, o) in out.iter_mut().enumerate() {
        *o = (0..3).flat_map(|r| (0..4).map(move |c| (r, c))).map(|(r, c)| g[r][c] * jac[k][r][c]).sum();
    }
    (loss, out)
}

/// A pyramid level of `v`: `v` itself at full resolution, its block means otherwise.
pub(crate) fn level_volume(v: &Volume, factor: [usize; 3]) -> Cow<'_, Volume> {
    if factor == [1, 1, 1] { Cow::Borrowed(v) } else { Cow::Owned(v.coarsened(factor)) }
}

/// The intensity centre of mass in world coordinates (the grid centre for an image without positive values).
fn centre_of_mass(v: &Volume) -> [f64; 3] {
    let [d, h, w] = v.grid.size;
    let (mut total, mut acc) = (0.0, [0.0; 3]);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let val = v.data[(z * h + y) * w + x].max(0.0) as f64;
                if val > 0.0 {
                    total += val;
                    for (r, a) in acc.iter_mut().enumerate() {
                        let m = &v.grid.to_world;
                        *a += val * (m[r][0] * z as f64 + m[r][1] * y as f64 + m[r][2] * x as f64 + m[r][3]);
                    }
                }
            }
        }
    }
    if total <= 0.0 { v.grid.centre() } else { acc.map(|a| a / total) }
}

/// The largest distance (mm) that the fixed grid's corners move between the transforms `a` and `b`.
fn corner_change(grid: &Grid, a: &Mat4, b: &Mat4) -> f64 {
    let [d, h, w] = grid.size.map(|s| (s.max(1) - 1) as f64);
    let mut worst: f64 = 0.0;
    for corner in 0..8 {
        let v = [if corner & 1 == 1 { d } else { 0.0 }, if corner & 2 == 2 { h } else { 0.0 }, if corner & 4 == 4 { w } else { 0.0 }];
        let m = &grid.to_world;
        let x = [0, 1, 2].map(|r| m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + m[r][3]);
        let map = |t: &Mat4| [0, 1, 2].map(|r| t[r][0] * x[0] + t[r][1] * x[1] + t[r][2] * x[2] + t[r][3]);
        let (p, q) = (map(a), map(b));
        worst = worst.max(((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt());
    }
    worst
}

/// What the sampled registration did, beside its result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AffineReport {
    /// `world` (the images' own alignment) or `centre-of-mass`: the start that scored better.
    pub start: &'static str,
    /// Iterations run per stage and level, in order (`rigid@4`, …).
    pub iterations: Vec<(String, usize)>,
    /// The loss of the start and of the result on the evaluation points (the finest level).
    pub loss_start: f64,
    /// See `loss_start`.
    pub loss_end: f64,
    /// Whether the result scored worse than the start, so the start was returned.
    pub kept_start: bool,
}

/// Registers `moving` to `fixed` by a world-space affine transform (rigid first, then, with `affine_steps > 0`,
/// scaling and shear too) on `opts.samples` points per iteration; see the module's description.
pub fn register_affine_sampled(fixed: &Image, moving: &Image, opts: &AffineOptions) -> (AffineResult, AffineReport) {
    let fixed_v = Volume::of(fixed);
    let moving_v = Volume::of(moving);
    let centre = fixed_v.grid.centre();
    let flat = fixed_v.grid.size[0] == 1;
    // The optimiser's points lie in the fixed foreground; the points that choose the start and judge the end cover
    // the whole image, so that a transform which only fits the foreground (a shrunken copy inside a uniform region)
    // cannot pass the guard.
    let floor = (opts.foreground > 0.0).then_some(opts.foreground);
    let evaluation = Points::draw_in(&fixed_v, opts.samples.max(1).saturating_mul(4), opts.seed ^ 0x5eed, None);
    let score = |p: &AffineParams| {
        let l = matrix_loss(&moving_v, &evaluation, &p.matrix(centre), opts.similarity).0;
        if l.is_finite() { l } else { f64::INFINITY }
    };
    // The start: the images' own world alignment, or the translation that aligns the intensity centres of mass.
    let world_start = AffineParams::IDENTITY;
    let mut params = world_start;
    let mut start = "world";
    if opts.init_centre_of_mass {
        let (cf, cm) = (centre_of_mass(&fixed_v), centre_of_mass(&moving_v));
        let mut t = [0, 1, 2].map(|a| cm[a] - cf[a]);
        if flat {
            t[2] = 0.0;
        }
        let com = AffineParams { translation: t, ..AffineParams::IDENTITY };
        if score(&com) < score(&world_start) {
            params = com;
            start = "centre-of-mass";
        }
    }
    let initial = params;
    let loss_start = score(&initial);
    let mut iterations = Vec::new();
    let finest_voxel =
        (0..3).map(|c| (0..3).map(|r| fixed_v.grid.to_world[r][c].powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
    let mut draw = 0u64;
    // The pyramid, built once for both stages (the finest level is the images themselves); `None` for a level too
    // small to use.
    let factor_of = |level: usize| if flat { [1, level, level] } else { [level; 3] };
    let pyramid: Vec<Option<(Cow<Volume>, Cow<Volume>)>> = opts
        .levels
        .iter()
        .map(|&level| {
            let factor = factor_of(level);
            let too_small = |g: &Grid| g.coarsened(factor).size.iter().zip(factor).any(|(&s, f)| f > 1 && s < 4);
            if too_small(&fixed_v.grid) || too_small(&moving_v.grid) {
                return None;
            }
            Some((level_volume(&fixed_v, factor), level_volume(&moving_v, factor)))
        })
        .collect();
    for (stage, steps) in [(0, opts.rigid_steps), (1, opts.affine_steps)] {
        if steps == 0 {
            continue;
        }
        let free: [bool; 12] = std::array::from_fn(|k| (!flat || matches!(k, 2 | 3 | 4 | 6 | 7 | 9)) && (stage == 1 || k < 6));
        let mut previous_level_change = f64::INFINITY;
        for (li, &level) in opts.levels.iter().enumerate() {
            // A coarser level that moved the grid by less than half a finest voxel leaves nothing for finer ones.
            if li > 0 && level == 1 && previous_level_change < 0.5 * finest_voxel {
                iterations.push((format!("{}@{level}", ["rigid", "affine"][stage]), 0));
                continue;
            }
            let Some((f, m)) = &pyramid[li] else { continue };
            let before = params.matrix(centre);
            let mut v = params_vec(&params);
            let (mut m1, mut m2) = ([0.0; 12], [0.0; 12]);
            let mut history: Vec<f64> = Vec::with_capacity(steps);
            let window = 15;
            let mut ran = 0;
            for step in 0..steps {
                draw += 1;
                let points = Points::draw_in(f, opts.samples, opts.seed.wrapping_mul(0x9e37_79b9).wrapping_add(draw), floor);
                let (loss, g) = param_gradient(m, &points, &params_from(&v), centre, opts.similarity);
                ran = step + 1;
                if !loss.is_finite() {
                    break;
                }
                history.push(loss);
                let lr = opts.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos()));
                let t = (step + 1) as i32;
                for k in 0..12 {
                    if !free[k] {
                        continue;
                    }
                    m1[k] = 0.9 * m1[k] + 0.1 * g[k];
                    m2[k] = 0.999 * m2[k] + 0.001 * g[k] * g[k];
                    let mh = m1[k] / (1.0 - 0.9f64.powi(t));
                    let vh = m2[k] / (1.0 - 0.999f64.powi(t));
                    v[k] -= lr * mh / (vh.sqrt() + 1e-8);
                }
                // Converged: the mean loss of the last window no better than the window before by a relative 1e-3.
                let n = history.len();
                if n >= 2 * window && step + 1 >= 3 * window {
                    let last = history[n - window..].iter().sum::<f64>() / window as f64;
                    let prev = history[n - 2 * window..n - window].iter().sum::<f64>() / window as f64;
                    if prev - last < opts.tolerance * prev.abs().max(1e-12) {
                        break;
                    }
                }
            }
            params = params_from(&v);
            previous_level_change = corner_change(&fixed_v.grid, &before, &params.matrix(centre));
            iterations.push((format!("{}@{level}", ["rigid", "affine"][stage]), ran));
        }
    }
    let loss_end = score(&params);
    // Ties keep the start.
    let kept_start = !(loss_end < loss_start);
    if kept_start {
        params = initial;
    }
    let report = AffineReport { start, iterations, loss_start, loss_end, kept_start };
    (AffineResult { params, world: params.matrix(centre), loss: loss_end.min(loss_start) }, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(size: [usize; 3], centre: [f64; 3], spacing: f64) -> Image {
        let [x, y, z] = size;
        let data: Vec<f32> = (0..x * y * z)
            .map(|i| {
                let p = [(i % x) as f64 * spacing, ((i / x) % y) as f64 * spacing, (i / (x * y)) as f64 * spacing];
                let r2 = (0..3).map(|a| ((p[a] - centre[a]) / [6.0, 9.0, 5.0][a]).powi(2)).sum::<f64>();
                (((-r2).exp() + 0.3 * (-(r2 - 1.5).powi(2) * 4.0).exp()) / 1.3) as f32
            })
            .collect();
        let mut affine = vesalius_io::IDENTITY;
        for a in 0..3 {
            affine[a][a] = spacing;
        }
        Image::new(data, vec![x, y, z], 1, affine, "float32").unwrap()
    }

    #[test]
    fn gradients_equal_finite_differences_for_every_similarity() {
        let fixed = blob([24, 28, 20], [11.0, 13.0, 9.0], 1.0);
        let moving = blob([24, 28, 20], [12.5, 12.0, 10.0], 1.0);
        let points = Points::draw(&fixed, 3000, 3);
        let centre = Grid::of(&fixed).centre();
        let p =
            AffineParams { angles: [2.0, -1.0, 3.0], translation: [0.7, -0.4, 0.3], log_scale: [1.0, -2.0, 0.5], shear: [0.5, 0.2, -0.3] };
        for similarity in [Similarity::Mse, Similarity::Ncc { window: 9 }, Similarity::Mi { bins: 24 }] {
            let (_, g) = params_loss(&moving, &points, &p, centre, similarity);
            for k in 0..12 {
                let h = 1e-3;
                let at = |d: f64| {
                    let mut v = params_vec(&p);
                    v[k] += d;
                    params_loss(&moving, &points, &params_from(&v), centre, similarity).0
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                let tol = 0.02 * fd.abs().max(g[k].abs()) + 1e-6;
                assert!((fd - g[k]).abs() <= tol, "{similarity:?} parameter {k}: analytic {} finite differences {fd}", g[k]);
            }
        }
    }

    #[test]
    fn trilinear_samples_and_gradients_are_exact_on_a_linear_image() {
        let image = Image::new(
            (0..5 * 6 * 7).map(|i| (2 * (i % 5) + 3 * ((i / 5) % 6) - (i / 30)) as f32).collect(),
            vec![5, 6, 7],
            1,
            vesalius_io::IDENTITY,
            "float32",
        )
        .unwrap();
        let v = Volume::of(&image);
        let (value, g) = v.sample([2.25, 3.5, 1.75]).unwrap();
        assert!((value - (2.0 * 1.75 + 3.0 * 3.5 - 2.25)).abs() < 1e-9, "{value}");
        assert_eq!(g, [-1.0, 3.0, 2.0]);
        assert!(v.sample([6.5, 0.0, 0.0]).is_none() && v.sample([-0.1, 0.0, 0.0]).is_none());
        let coarse = v.coarsened([2, 2, 2]);
        assert_eq!(coarse.grid.size, [3, 3, 2]);
        // The mean of the block (z 0–1, y 0–1, x 0–1) is the value at its centre.
        assert!((coarse.data[0] as f64 - (2.0 * 0.5 + 3.0 * 0.5 - 0.5)).abs() < 1e-6);
    }

    #[test]
    fn a_known_shift_is_recovered_and_a_hopeless_start_is_kept() {
        let fixed = blob([40, 44, 36], [19.0, 21.0, 17.0], 1.0);
        let moving = blob([40, 44, 36], [22.0, 19.0, 18.5], 1.0);
        for similarity in [Similarity::Ncc { window: 9 }, Similarity::Mi { bins: 32 }, Similarity::Mse] {
            let opts = AffineOptions { similarity, levels: vec![2, 1], init_centre_of_mass: false, ..AffineOptions::default() };
            let (r, report) = register_affine_sampled(&fixed, &moving, &opts);
            let t = r.params.translation;
            assert!(
                (t[0] - 3.0).abs() < 0.15 && (t[1] + 2.0).abs() < 0.15 && (t[2] - 1.5).abs() < 0.15,
                "{similarity:?}: {t:?} {report:?}"
            );
            assert!(!report.kept_start && report.loss_end < report.loss_start);
            assert!(report.iterations.iter().all(|(_, n)| *n < 150), "converged before the step budget: {report:?}");
        }
        // Images that share nothing: whatever the optimiser finds, the result is never worse than the start.
        let empty = Image::new(vec![0.0; 40 * 44 * 36], vec![40, 44, 36], 1, vesalius_io::IDENTITY, "float32").unwrap();
        let (r, report) = register_affine_sampled(
            &fixed,
            &empty,
            &AffineOptions { similarity: Similarity::Ncc { window: 9 }, ..AffineOptions::default() },
        );
        assert!(report.loss_end >= report.loss_start || report.kept_start);
        assert!(r.params == AffineParams::IDENTITY || !report.kept_start);
    }
}
