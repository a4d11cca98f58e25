//! Deformable registration: a displacement field on the fixed grid — dense (one vector a voxel) or a cubic
//! B-spline on a lattice of control points — optimised by Adam over a pyramid to minimise
//! `similarity + λ · regulariser(field)`, the regulariser being diffusion or bending energy.
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use vesalius_nets::loss::{bending_energy, grad_l2};
use vesalius_nets::ops::{Padding, identity_grid, pool3d, resize_linear, sample_linear};

use crate::Adam;
use crate::affine::inside;
use crate::sampled::Volume;
use crate::sampled_bspline::{DeformableReport, register_bspline_sampled};
use crate::similarity::Similarity;

/// How the field is parameterised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deformation {
    /// One displacement vector per voxel of each pyramid level (the coarse result up-sampled to start the next).
    Dense,
    /// Cubic B-spline control points every `spacing` voxels of the fixed grid, shared by all pyramid levels.
    BSpline {
        /// Control-point spacing, voxels of the fixed grid (at least 2).
        spacing: usize,
    },
}

/// The penalty on the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regulariser {
    /// Mean squared first differences ([`grad_l2`]).
    Diffusion,
    /// Mean squared second differences ([`bending_energy`]); affine fields cost nothing.
    Bending,
}

impl Regulariser {
    /// By name: `diffusion` or `bending`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "diffusion" => Some(Self::Diffusion),
            "bending" => Some(Self::Bending),
            _ => None,
        }
    }

    fn apply<B: Backend>(self, field: Tensor<B, 5>) -> Tensor<B, 1> {
        match self {
            Self::Diffusion => grad_l2(field),
            Self::Bending => bending_energy(field),
        }
    }
}

/// Options of deformable registration.
#[derive(Clone, Debug)]
pub struct DeformableOptions {
    /// Similarity measure.
    pub similarity: Similarity,
    /// Weight of the regulariser (on the field in voxels of each level).
    pub smoothness: f64,
    /// The regulariser.
    pub regulariser: Regulariser,
    /// Dense field or B-spline.
    pub deformation: Deformation,
    /// Down-sampling factors, coarsest first. With local correlation, a level whose smallest side holds fewer than
    /// two windows is skipped (the last level always runs).
    pub levels: Vec<usize>,
    /// Adam steps per level.
    pub steps: usize,
    /// Adam step size (voxels of the level), decayed by a cosine within each level.
    pub learning_rate: f64,
    /// Levels whose grid holds more voxels than this are not optimised (the coarsest level always is); the field of
    /// the last level optimised is interpolated to the full grid. A 1 mm brain (8.7 million voxels) stops at 2 mm.
    pub max_voxels: usize,
    /// A level ends when the mean loss of its last 10 steps improves on the 10 before by less than this fraction
    /// (after at least 30 steps); 0 runs every step.
    pub tolerance: f64,
    /// With a B-spline, the points drawn per iteration: above 0, the control points are optimised on that many
    /// random points with analytic gradients ([`crate::sampled_bspline`]); 0 uses every voxel of each level through
    /// automatic differentiation. Dense fields always use every voxel.
    pub samples: usize,
    /// Seed of the sampled points.
    pub seed: u64,
    /// With sampled points, the optimiser draws them where the (normalised) fixed image exceeds this value, 0 drawing
    /// them everywhere. Air and the field of view's edges carry no anatomy: between two real heads, points drawn
    /// everywhere let mutual information rise by matching the head's outline and background while grey- and
    /// white-matter overlap fell (Dice 0.62 → 0.30).
    pub foreground: f64,
}

impl Default for DeformableOptions {
    fn default() -> Self {
        Self {
            similarity: Similarity::Mse,
            smoothness: 1.0,
            regulariser: Regulariser::Diffusion,
            deformation: Deformation::Dense,
            levels: vec![4, 2, 1],
            steps: 100,
            learning_rate: 0.2,
            max_voxels: 2_000_000,
            tolerance: 1e-3,
            samples: 0,
            seed: 0,
            foreground: 0.05,
        }
    }
}

impl DeformableOptions {
    /// The command line's default deformable stage, as elastix registers subjects: a cubic B-spline with control
    /// points every 5 voxels and bending energy (weight 100), optimised on 20,000 foreground points an iteration
    /// (200 steps at most per level of 4, 2 and 1 voxels). With Mattes mutual information it raised grey- and
    /// white-matter Dice over the affine stage in both directions between the MNI152 template and ITK's T1 head, by
    /// more than the dense field with local correlation and ten times faster (docs/REGISTRATION.md).
    pub fn sampled_bspline() -> Self {
        Self {
            similarity: Similarity::Mi { bins: 32 },
            smoothness: 100.0,
            regulariser: Regulariser::Bending,
            deformation: Deformation::BSpline { spacing: 5 },
            steps: 200,
            samples: 20_000,
            ..Self::default()
        }
    }
}

/// Number of control points along an axis of `len` voxels with `spacing`: one before the first voxel and enough
/// after the last for the cubic support (a single point for an axis of length 1).
pub fn control_points(len: usize, spacing: usize) -> usize {
    if len <= 1 { 1 } else { (len - 1).div_ceil(spacing) + 3 }
}

/// The `[out, points]` matrix that evaluates a cubic B-spline with control points every `spacing` full-resolution
/// voxels (control `k` at voxel `(k − 1)·spacing`) at the centres of the `out` voxels of a level averaging
/// `factor` voxels each.
pub fn bspline_matrix(out: usize, points: usize, spacing: usize, factor: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * points];
    if points == 1 {
        m.iter_mut().for_each(|v| *v = 1.0);
        return m;
    }
    for q in 0..out {
        let x = (factor * q) as f64 + (factor as f64 - 1.0) / 2.0;
        let t = x / spacing as f64 + 1.0;
        for k in 0..points {
            m[q * points + k] = vesalius_io::geometry::cubic_bspline(t - k as f64) as f32;
        }
    }
    m
}

/// The dense field `[1, 3, d, h, w]` of control points `[1, 3, md, mh, mw]`, axis by axis with the matrices of
/// [`bspline_matrix`] (`[d, md]`, `[h, mh]`, `[w, mw]`).
pub fn bspline_field<B: Backend>(control: Tensor<B, 5>, matrices: [Tensor<B, 2>; 3]) -> Tensor<B, 5> {
    let [d, h, w] = [0, 1, 2].map(|a| matrices[a].dims()[0]);
    let [ma, mb, mc] = [0, 1, 2].map(|a| matrices[a].dims()[1]);
    let [mw_t, mh_t, md_t] = [matrices[2].clone().transpose(), matrices[1].clone().transpose(), matrices[0].clone().transpose()];
    // Along width, then height, then depth (each moved last, multiplied, moved back).
    let x = control.reshape([3 * ma * mb, mc]).matmul(mw_t).reshape([1, 3, ma, mb, w]);
    let x = x.swap_dims(3, 4).reshape([3 * ma * w, mb]).matmul(mh_t).reshape([1, 3, ma, w, h]).swap_dims(3, 4);
    x.swap_dims(2, 4).reshape([3 * w * h, ma]).matmul(md_t).reshape([1, 3, w, h, d]).swap_dims(2, 4)
}

/// The images of one pyramid level, or `None` when the level would be smaller than 4 voxels along a pooled axis.
fn level_of<B: AutodiffBackend>(
    fixed: &Tensor<B::InnerBackend, 5>,
    moving: &Tensor<B::InnerBackend, 5>,
    level: usize,
) -> Option<(Tensor<B, 5>, Tensor<B, 5>, [usize; 3])> {
    let [_, _, d, h, w] = fixed.dims();
    let factor = if d == 1 { [1, level, level] } else { [level; 3] };
    let size = [d / factor[0], h / factor[1], w / factor[2]];
    if size.iter().zip(factor).any(|(&s, f)| f > 1 && s < 4) {
        return None;
    }
    Some((Tensor::from_inner(pool3d(fixed.clone(), factor, false)), Tensor::from_inner(pool3d(moving.clone(), factor, false)), factor))
}

/// `similarity(moving ∘ (id + u), fixed) + λ · regulariser(u)` for a field `u` in voxels of the level.
fn objective<B: AutodiffBackend>(
    opts: &DeformableOptions,
    f: &Tensor<B, 5>,
    m: &Tensor<B, 5>,
    grid: &Tensor<B, 5>,
    u: Tensor<B, 5>,
) -> Tensor<B, 1> {
    let [_, _, ld, lh, lw] = f.dims();
    let coords = grid.clone() + u.clone();
    let mask = inside(coords.clone().detach(), [ld, lh, lw]);
    let warped = sample_linear(m.clone(), coords, Padding::Border);
    opts.similarity.loss(warped, f.clone(), mask) + opts.regulariser.apply(u) * opts.smoothness
}

/// Whether a level of grid `size` is too coarse for the similarity's windows: local correlation needs the smallest side
/// (of the axes longer than one voxel) to hold two windows, or its windows cover the whole head and the field follows
/// them (with the MNI152 template at 3 mm, a 12 mm level lost grey- and white-matter Dice that the 6 and 3 mm levels
/// alone gained). Other similarities have no window.
fn too_coarse(opts: &DeformableOptions, size: [usize; 3]) -> bool {
    match opts.similarity {
        Similarity::Ncc { window } => size.iter().filter(|&&n| n > 1).any(|&n| n < 2 * window),
        Similarity::Mse | Similarity::Mi { .. } => false,
    }
}

/// Whether a level of `voxels` is skipped: larger than `opts.max_voxels` once a coarser level has run.
fn too_fine(opts: &DeformableOptions, voxels: usize, ran_before: bool) -> bool {
    ran_before && voxels > opts.max_voxels
}

/// Whether a level's loss has stopped improving (see [`DeformableOptions::tolerance`]).
fn converged(opts: &DeformableOptions, history: &[f64]) -> bool {
    let (n, window) = (history.len(), 10);
    if opts.tolerance <= 0.0 || n < 30 {
        return false;
    }
    let last = history[n - window..].iter().sum::<f64>() / window as f64;
    let prev = history[n - 2 * window..n - window].iter().sum::<f64>() / window as f64;
    prev - last < opts.tolerance * prev.abs().max(1e-12)
}

/// Adam whose second moment is the mean square of the whole gradient (one number), not one per element.
struct FieldAdam<B: Backend> {
    m: Tensor<B, 5>,
    v: f64,
    t: i32,
}

impl<B: Backend> FieldAdam<B> {
    fn new(like: Tensor<B, 5>) -> Self {
        Self { m: like.zeros_like(), v: 0.0, t: 0 }
    }

    fn step(&mut self, param: Tensor<B, 5>, grad: Tensor<B, 5>, lr: f64) -> Tensor<B, 5> {
        self.t += 1;
        let mean_square: f64 = grad.clone().powi_scalar(2).mean().into_scalar().elem::<f64>();
        self.m = self.m.clone() * 0.9 + grad * 0.1;
        self.v = 0.999 * self.v + 0.001 * mean_square;
        let mh = self.m.clone() / (1.0 - 0.9f64.powi(self.t));
        let vh = self.v / (1.0 - 0.999f64.powi(self.t));
        param - mh * (lr / (3.0 * vh.sqrt() + 1e-12))
    }
}

fn step_size(opts: &DeformableOptions, step: usize) -> f64 {
    opts.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / opts.steps as f64).cos()))
}

/// Registers `moving` to `fixed`, both `[1, 1, d, h, w]` on the same grid (resample the moving image first, e.g.
/// with the affine result). Returns the displacement field `[1, 3, d, h, w]` in voxels of that grid (channels
/// depth, height, width): `warped(p) = moving(p + u(p))`. Depth-1 images get a field with zero depth component.
/// Guarded as [`register_deformable_reported`] says: never worse than no displacement by the similarity.
pub fn register_deformable<B: AutodiffBackend>(
    fixed: Tensor<B::InnerBackend, 5>,
    moving: Tensor<B::InnerBackend, 5>,
    opts: &DeformableOptions,
) -> Tensor<B::InnerBackend, 5> {
    register_deformable_reported::<B>(fixed, moving, opts).0
}

/// [`register_deformable`] with what it did. Every optimiser is guarded: the similarity (without the regulariser)
/// of the start — no displacement — and of the result are taken, and when the result is no better the start (a
/// zero field) is returned; the every-voxel optimisers' result must also keep at least half of the voxels that
/// the start kept inside the moving image. The sampled B-spline scores them on its evaluation points; the every-voxel optimisers
/// on the finest pyramid level they ran ([`DeformableOptions::max_voxels`] bounds it, as it bounds them).
pub fn register_deformable_reported<B: AutodiffBackend>(
    fixed: Tensor<B::InnerBackend, 5>,
    moving: Tensor<B::InnerBackend, 5>,
    opts: &DeformableOptions,
) -> (Tensor<B::InnerBackend, 5>, DeformableReport) {
    let (field, iterations, finest) = match opts.deformation {
        Deformation::BSpline { spacing } if opts.samples > 0 => {
            let device = fixed.device();
            let [_, _, d, h, w] = fixed.dims();
            let volume = |t: Tensor<B::InnerBackend, 5>| Volume::from_voxels(crate::to_vec(t), [d, h, w]);
            let (lattice, report) = register_bspline_sampled(&volume(fixed), &volume(moving), spacing, opts);
            return (crate::tensor_of::<B::InnerBackend>(lattice.field([d, h, w]).concat(), [1, 3, d, h, w], &device), report);
        }
        Deformation::Dense => register_dense::<B>(fixed.clone(), moving.clone(), opts),
        Deformation::BSpline { spacing } => register_bspline::<B>(fixed.clone(), moving.clone(), spacing.max(2), opts),
    };
    let Some(level) = finest else {
        return (field, DeformableReport { iterations, loss_start: f64::NAN, loss_end: f64::NAN, kept_start: true });
    };
    let (loss_start, inside_start) = similarity_at_level(opts, &fixed, &moving, field.zeros_like(), level);
    let (loss_end, inside_end) = similarity_at_level(opts, &fixed, &moving, field.clone(), level);
    // A field that maps the image out of the moving one scores over the few voxels left: it must keep half of them.
    let kept_start = !(loss_end < loss_start) || inside_end < 0.5 * inside_start;
    let field = if kept_start { field.zeros_like() } else { field };
    (field, DeformableReport { iterations, loss_start, loss_end, kept_start })
}

/// The similarity loss of `moving ∘ (id + u)` against `fixed` on pyramid level `level` (`u` in voxels of the full
/// grid; `∞` when it is not finite), and the number of voxels that land inside the moving image.
fn similarity_at_level<B: Backend>(
    opts: &DeformableOptions,
    fixed: &Tensor<B, 5>,
    moving: &Tensor<B, 5>,
    u: Tensor<B, 5>,
    level: usize,
) -> (f64, f64) {
    let [_, _, d, h, w] = fixed.dims();
    let factor = if d == 1 { [1, level, level] } else { [level; 3] };
    let size = [d / factor[0], h / factor[1], w / factor[2]];
    let device = fixed.device();
    let (f, m, u) = if level == 1 {
        (fixed.clone(), moving.clone(), u)
    } else {
        let ratio = Tensor::<B, 1>::from_data([1.0 / factor[0] as f32, 1.0 / factor[1] as f32, 1.0 / factor[2] as f32], &device)
            .reshape([1, 3, 1, 1, 1]);
        (pool3d(fixed.clone(), factor, false), pool3d(moving.clone(), factor, false), resize_linear(u, size) * ratio)
    };
    let coords = identity_grid::<B>(size, &device) + u;
    let mask = inside(coords.clone(), size);
    let warped = sample_linear(m, coords, Padding::Border);
    let inside_count = mask.clone().sum().into_scalar().elem::<f64>();
    let v = opts.similarity.loss(warped, f, mask).into_scalar().elem::<f64>();
    (if v.is_finite() { v } else { f64::INFINITY }, inside_count)
}

fn in_plane<B: Backend>(flat: bool, device: &B::Device) -> Tensor<B, 5> {
    Tensor::<B, 1>::from_data([if flat { 0.0f32 } else { 1.0 }, 1.0, 1.0], device).reshape([1, 3, 1, 1, 1])
}

/// Iterations run per level (`dense@2`, …), and the finest level that ran.
type Ran = (Vec<(String, usize)>, Option<usize>);

fn register_dense<B: AutodiffBackend>(
    fixed: Tensor<B::InnerBackend, 5>,
    moving: Tensor<B::InnerBackend, 5>,
    opts: &DeformableOptions,
) -> (Tensor<B::InnerBackend, 5>, Vec<(String, usize)>, Option<usize>) {
    let device = fixed.device();
    let [_, _, d, h, w] = fixed.dims();
    let plane_only = in_plane::<B::InnerBackend>(d == 1, &device);
    let mut field: Option<Tensor<B::InnerBackend, 5>> = None;
    let mut ran: Ran = (Vec::new(), None);
    for (i, &level) in opts.levels.iter().enumerate() {
        let Some((f, m, _)) = level_of::<B>(&fixed, &moving, level) else { continue };
        let [_, _, ld, lh, lw] = f.dims();
        if too_fine(opts, ld * lh * lw, field.is_some()) || (too_coarse(opts, [ld, lh, lw]) && i + 1 < opts.levels.len()) {
            continue;
        }
        let mut u = match field.take() {
            None => Tensor::<B::InnerBackend, 5>::zeros([1, 3, ld, lh, lw], &device),
            Some(prev) => {
                let [_, _, pd, ph, pw] = prev.dims();
                let ratio = Tensor::<B::InnerBackend, 1>::from_data(
                    [(ld as f32 / pd as f32), (lh as f32 / ph as f32), (lw as f32 / pw as f32)],
                    &device,
                )
                .reshape([1, 3, 1, 1, 1]);
                resize_linear(prev, [ld, lh, lw]) * ratio
            }
        };
        let grid = Tensor::<B, 5>::from_inner(identity_grid::<B::InnerBackend>([ld, lh, lw], &device));
        // Adam with one second moment for the whole field: each voxel steps in proportion to its own averaged
        // gradient (a voxel whose gradient is three times the field's RMS moves by the step size), so that voxels the
        // images say little about move little; per-voxel normalisation moved them as fast as edges.
        let mut adam = FieldAdam::new(u.clone());
        let mut history = Vec::with_capacity(opts.steps);
        for step in 0..opts.steps {
            let ud = Tensor::<B, 5>::from_inner(u.clone()).require_grad();
            let loss = objective(opts, &f, &m, &grid, ud.clone());
            history.push(loss.clone().into_scalar().elem::<f64>());
            let grads = loss.backward();
            let g = ud.grad(&grads).expect("the field takes part in the loss") * plane_only.clone();
            u = adam.step(u, g, step_size(opts, step));
            if converged(opts, &history) {
                break;
            }
        }
        ran.0.push((format!("dense@{level}"), history.len()));
        ran.1 = Some(level);
        field = Some(u);
    }
    let u = field.unwrap_or_else(|| Tensor::zeros([1, 3, d, h, w], &device));
    let [_, _, fd, fh, fw] = u.dims();
    if [fd, fh, fw] == [d, h, w] {
        return (u, ran.0, ran.1);
    }
    let ratio = Tensor::<B::InnerBackend, 1>::from_data([(d as f32 / fd as f32), (h as f32 / fh as f32), (w as f32 / fw as f32)], &device)
        .reshape([1, 3, 1, 1, 1]);
    (resize_linear(u, [d, h, w]) * ratio, ran.0, ran.1)
}

fn register_bspline<B: AutodiffBackend>(
    fixed: Tensor<B::InnerBackend, 5>,
    moving: Tensor<B::InnerBackend, 5>,
    spacing: usize,
    opts: &DeformableOptions,
) -> (Tensor<B::InnerBackend, 5>, Vec<(String, usize)>, Option<usize>) {
    let device = fixed.device();
    let [_, _, d, h, w] = fixed.dims();
    let points = [d, h, w].map(|n| control_points(n, spacing));
    let matrices = |size: [usize; 3], factor: [usize; 3]| -> [Tensor<B::InnerBackend, 2>; 3] {
        [0, 1, 2].map(|a| {
            Tensor::from_data(TensorData::new(bspline_matrix(size[a], points[a], spacing, factor[a]), [size[a], points[a]]), &device)
        })
    };
    // Control-point displacements in voxels of the fixed grid; a level sees them divided by its factor.
    let mut control = Tensor::<B::InnerBackend, 5>::zeros([1, 3, points[0], points[1], points[2]], &device);
    let plane_only = in_plane::<B::InnerBackend>(d == 1, &device);
    let mut ran: Ran = (Vec::new(), None);
    for (i, &level) in opts.levels.iter().enumerate() {
        let Some((f, m, factor)) = level_of::<B>(&fixed, &moving, level) else { continue };
        let [_, _, ld, lh, lw] = f.dims();
        if too_fine(opts, ld * lh * lw, ran.1.is_some()) || (too_coarse(opts, [ld, lh, lw]) && i + 1 < opts.levels.len()) {
            continue;
        }
        let mats = matrices([ld, lh, lw], factor).map(Tensor::<B, 2>::from_inner);
        let scale = Tensor::<B, 1>::from_data([1.0 / factor[0] as f32, 1.0 / factor[1] as f32, 1.0 / factor[2] as f32], &device)
            .reshape([1, 3, 1, 1, 1]);
        let grid = Tensor::<B, 5>::from_inner(identity_grid::<B::InnerBackend>([ld, lh, lw], &device));
        let mut adam = Adam::new(control.clone());
        let mut history = Vec::with_capacity(opts.steps);
        for step in 0..opts.steps {
            let c = Tensor::<B, 5>::from_inner(control.clone()).require_grad();
            let u = bspline_field(c.clone(), mats.clone()) * scale.clone();
            let loss = objective(opts, &f, &m, &grid, u);
            history.push(loss.clone().into_scalar().elem::<f64>());
            let grads = loss.backward();
            let g = c.grad(&grads).expect("the control points take part in the loss") * plane_only.clone();
            // Steps in voxels of the level are `factor` voxels of the fixed grid.
            control = adam.step(control, g, step_size(opts, step) * level as f64);
            if converged(opts, &history) {
                break;
            }
        }
        ran.0.push((format!("bspline@{level}"), history.len()));
        ran.1 = Some(level);
    }
    (bspline_field(control, matrices([d, h, w], [1, 1, 1])), ran.0, ran.1)
}
