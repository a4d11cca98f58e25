//! Images as tensors with their voxel-to-world matrices, the world-space affine transform and its parameters,
//! and affine registration by gradient descent over a multi-resolution pyramid.
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use vesalius_data::Image;
use vesalius_nets::ops::{Padding, pool3d, sample_linear};

use crate::sampled::AffineReport;
use crate::similarity::Similarity;
use crate::{Adam, Mat4, mat_inv, mat_mul};

/// The identity matrix.
pub fn identity() -> Mat4 {
    let mut m = [[0.0; 4]; 4];
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    m
}

/// One image as a `[1, 1, d, h, w]` tensor (its first channel) and the matrix from tensor-order voxel indices
/// `(d, h, w, 1)` to world millimetres (RAS+).
#[derive(Clone, Debug)]
pub struct Grid {
    /// Spatial size (depth, height, width); 2D images have depth 1.
    pub size: [usize; 3],
    /// Voxel `(d, h, w)` → world.
    pub to_world: Mat4,
}

impl Grid {
    /// The grid of an image (2D images are one slice deep).
    pub fn of(image: &Image) -> Self {
        Self::from_affine(image.shape(), image.affine())
    }

    /// The grid of an image of `shape` (x, y[, z]) with voxel-to-world matrix `a` (indices i, j, k).
    pub fn from_affine(shape: &[usize], a: &Mat4) -> Self {
        let s = shape;
        let (x, y, z) = (s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1));
        // The image's affine takes (i, j, k) = (w, h, d).
        let mut m = [[0.0; 4]; 4];
        for r in 0..4 {
            m[r][0] = a[r][2];
            m[r][1] = a[r][1];
            m[r][2] = a[r][0];
            m[r][3] = a[r][3];
        }
        Self { size: [z, y, x], to_world: m }
    }

    /// World coordinates of the grid's centre.
    pub fn centre(&self) -> [f64; 3] {
        let c = [0, 1, 2].map(|a| (self.size[a] as f64 - 1.0) / 2.0);
        [0, 1, 2].map(|r| self.to_world[r][0] * c[0] + self.to_world[r][1] * c[1] + self.to_world[r][2] * c[2] + self.to_world[r][3])
    }

    /// The grid after averaging `factor` voxels per axis (voxel `q` covers `factor·q … factor·q + factor − 1`).
    pub fn coarsened(&self, factor: [usize; 3]) -> Self {
        let mut scale = [[0.0; 4]; 4];
        for a in 0..3 {
            scale[a][a] = factor[a] as f64;
            scale[a][3] = (factor[a] as f64 - 1.0) / 2.0;
        }
        scale[3][3] = 1.0;
        Self { size: [0, 1, 2].map(|a| self.size[a] / factor[a]), to_world: mat_mul(&self.to_world, &scale) }
    }
}

/// The first channel of `image` as a `[1, 1, d, h, w]` tensor.
pub fn to_tensor<B: Backend>(image: &Image, device: &B::Device) -> Tensor<B, 5> {
    let g = Grid::of(image);
    let n = image.voxels();
    Tensor::from_data(TensorData::new(image.data()[..n].to_vec(), [1, 1, g.size[0], g.size[1], g.size[2]]), device)
}

/// An image on `grid` from a `[1, 1, d, h, w]` tensor, with the grid's affine.
pub fn from_tensor<B: Backend>(t: Tensor<B, 5>, like: &Image) -> Image {
    let data = t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    Image::new(data, like.shape().to_vec(), 1, *like.affine(), "float32").expect("same number of voxels as the grid")
}

/// Parameters of a world-space affine transform about a centre `c`: `T(x) = R·S·H·(x − c) + c + t`, with `R` from
/// three angles (about x, then y, then z), `S` a diagonal scaling and `H` an upper-triangular shear. Stored in
/// units that make one optimiser step of similar effect for each: degrees, millimetres, percent of scale (log),
/// percent of shear.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineParams {
    /// Rotation angles about x, y, z (degrees).
    pub angles: [f64; 3],
    /// Translation (mm).
    pub translation: [f64; 3],
    /// Log-scales (hundredths).
    pub log_scale: [f64; 3],
    /// Shears xy, xz, yz (hundredths).
    pub shear: [f64; 3],
}

impl AffineParams {
    /// The identity.
    pub const IDENTITY: Self = Self { angles: [0.0; 3], translation: [0.0; 3], log_scale: [0.0; 3], shear: [0.0; 3] };

    fn to_vec(self) -> Vec<f32> {
        [self.angles, self.translation, self.log_scale, self.shear].concat().into_iter().map(|v| v as f32).collect()
    }

    fn from_slice(v: &[f32]) -> Self {
        let t = |k: usize| [v[k] as f64, v[k + 1] as f64, v[k + 2] as f64];
        Self { angles: t(0), translation: t(3), log_scale: t(6), shear: t(9) }
    }

    /// The 4×4 world matrix about `centre` (the same arithmetic as [`world_matrix`], in f64).
    pub fn matrix(&self, centre: [f64; 3]) -> Mat4 {
        let rad = std::f64::consts::PI / 180.0;
        let [ax, ay, az] = self.angles.map(|a| a * rad);
        let rx = [[1.0, 0.0, 0.0], [0.0, ax.cos(), -ax.sin()], [0.0, ax.sin(), ax.cos()]];
        let ry = [[ay.cos(), 0.0, ay.sin()], [0.0, 1.0, 0.0], [-ay.sin(), 0.0, ay.cos()]];
        let rz = [[az.cos(), -az.sin(), 0.0], [az.sin(), az.cos(), 0.0], [0.0, 0.0, 1.0]];
        let s = self.log_scale.map(|v| (v * 0.01).exp());
        let scale = [[s[0], 0.0, 0.0], [0.0, s[1], 0.0], [0.0, 0.0, s[2]]];
        let h = self.shear.map(|v| v * 0.01);
        let shear = [[1.0, h[0], h[1]], [0.0, 1.0, h[2]], [0.0, 0.0, 1.0]];
        let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut o = [[0.0; 3]; 3];
            for r in 0..3 {
                for c in 0..3 {
                    o[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
                }
            }
            o
        };
        let a = mul(mul(mul(mul(rz, ry), rx), scale), shear);
        let mut m = [[0.0; 4]; 4];
        for r in 0..3 {
            m[r][..3].copy_from_slice(&a[r]);
            m[r][3] = centre[r] - (0..3).map(|k| a[r][k] * centre[k]).sum::<f64>() + self.translation[r];
        }
        m[3][3] = 1.0;
        m
    }
}

/// `T` as a `[4, 4]` tensor from a `[12]` parameter tensor (see [`AffineParams`]); differentiable.
pub fn world_matrix<B: Backend>(p: Tensor<B, 1>, centre: [f64; 3]) -> Tensor<B, 2> {
    let device = p.device();
    let at = |k: usize| p.clone().narrow(0, k, 1);
    let rad = std::f64::consts::PI / 180.0;
    let one = || Tensor::<B, 1>::ones([1], &device);
    let zero = || Tensor::<B, 1>::zeros([1], &device);
    let mat3 = |e: [Tensor<B, 1>; 9]| Tensor::cat(e.to_vec(), 0).reshape([3, 3]);
    let (cx, sx) = ((at(0) * rad).cos(), (at(0) * rad).sin());
    let (cy, sy) = ((at(1) * rad).cos(), (at(1) * rad).sin());
    let (cz, sz) = ((at(2) * rad).cos(), (at(2) * rad).sin());
    let rx = mat3([one(), zero(), zero(), zero(), cx.clone(), sx.clone().neg(), zero(), sx, cx]);
    let ry = mat3([cy.clone(), zero(), sy.clone(), zero(), one(), zero(), sy.neg(), zero(), cy]);
    let rz = mat3([cz.clone(), sz.clone().neg(), zero(), sz, cz, zero(), zero(), zero(), one()]);
    let s = |k: usize| (at(k) * 0.01).exp();
    let scale = mat3([s(6), zero(), zero(), zero(), s(7), zero(), zero(), zero(), s(8)]);
    let h = |k: usize| at(k) * 0.01;
    let shear = mat3([one(), h(9), h(10), zero(), one(), h(11), zero(), zero(), one()]);
    let a = rz.matmul(ry).matmul(rx).matmul(scale).matmul(shear);
    let c = Tensor::<B, 1>::from_data([centre[0] as f32, centre[1] as f32, centre[2] as f32], &device).reshape([3, 1]);
    let t = p.narrow(0, 3, 3).reshape([3, 1]);
    let offset = c.clone() - a.clone().matmul(c) + t;
    let top = Tensor::cat(vec![a, offset], 1);
    let bottom = Tensor::<B, 2>::from_data([[0.0f32, 0.0, 0.0, 1.0]], &device);
    Tensor::cat(vec![top, bottom], 0)
}

fn mat_tensor<B: Backend>(m: &Mat4, device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f32> = m.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, [4, 4]), device)
}

/// Homogeneous voxel coordinates of a grid: `[4, d·h·w]`.
fn grid_points<B: Backend>(size: [usize; 3], device: &B::Device) -> Tensor<B, 2> {
    let [d, h, w] = size;
    let mut v = Vec::with_capacity(4 * d * h * w);
    for axis in 0..3 {
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    v.push([z, y, x][axis] as f32);
                }
            }
        }
    }
    v.extend(std::iter::repeat_n(1.0, d * h * w));
    Tensor::from_data(TensorData::new(v, [4, d * h * w]), device)
}

/// Samples `moving` (on `moving_grid`) at the fixed grid's voxels mapped by the world transform `world`
/// (fixed world → moving world, `[4, 4]`); returns the samples and the mask of those inside the moving image.
pub fn resample_world<B: Backend>(
    moving: Tensor<B, 5>,
    moving_grid: &Grid,
    fixed_grid: &Grid,
    world: Tensor<B, 2>,
) -> (Tensor<B, 5>, Tensor<B, 5>) {
    let device = moving.device();
    let vox =
        mat_tensor::<B>(&mat_inv(&moving_grid.to_world), &device).matmul(world).matmul(mat_tensor::<B>(&fixed_grid.to_world, &device));
    let [d, h, w] = fixed_grid.size;
    let coords = vox.narrow(0, 0, 3).matmul(grid_points::<B>(fixed_grid.size, &device)).reshape([1, 3, d, h, w]);
    let mask = inside(coords.clone().detach(), moving_grid.size);
    (sample_linear(moving, coords, Padding::Zeros), mask)
}

/// 1 where voxel coordinates `[1, 3, …]` fall inside a grid of `size`, else 0.
pub fn inside<B: Backend>(coords: Tensor<B, 5>, size: [usize; 3]) -> Tensor<B, 5> {
    let mut mask: Option<Tensor<B, 5, burn::tensor::Bool>> = None;
    for (a, &len) in size.iter().enumerate() {
        let c = coords.clone().narrow(1, a, 1);
        let ok = c.clone().greater_equal_elem(-0.5).bool_and(c.lower_equal_elem(len as f64 - 0.5));
        mask = Some(match mask {
            Some(m) => m.bool_and(ok),
            None => ok,
        });
    }
    mask.expect("three axes").float()
}

/// Options of affine registration.
#[derive(Clone, Debug)]
pub struct AffineOptions {
    /// Similarity measure.
    pub similarity: Similarity,
    /// Down-sampling factors of the pyramid, coarsest first (in-plane only for 2D images).
    pub levels: Vec<usize>,
    /// Optimiser steps per level for the rigid stage and for the affine stage (0 skips it).
    pub rigid_steps: usize,
    /// Steps of the full affine stage per level.
    pub affine_steps: usize,
    /// Adam step size in parameter units (degrees, mm, hundredths), decayed by a cosine within each level.
    pub learning_rate: f64,
    /// Start from the translation that aligns the intensity centres of mass (the sampled path starts from it only
    /// when it scores better than the images' own world alignment).
    pub init_centre_of_mass: bool,
    /// Points per iteration of the sampled path ([`crate::sampled`]: the similarity and its analytic gradient on
    /// points re-drawn every iteration, convergence-based stopping, a guard against ending worse than the start);
    /// 0 evaluates every voxel of each pyramid level through automatic differentiation ([`register_affine`]).
    pub samples: usize,
    /// Seed of the sampled points.
    pub seed: u64,
    /// The sampled path draws its points where the fixed image (intensities normalised to [0, 1] between their
    /// 0.5th and 99.5th percentiles) exceeds this value, so that air does not take part; 0 draws everywhere.
    pub foreground: f64,
    /// The sampled path leaves a level when the mean loss of its last 15 iterations improves on the 15 before by
    /// less than this fraction.
    pub tolerance: f64,
}

impl Default for AffineOptions {
    fn default() -> Self {
        Self {
            similarity: Similarity::Mse,
            levels: vec![4, 2, 1],
            rigid_steps: 150,
            affine_steps: 0,
            learning_rate: 1.0,
            init_centre_of_mass: true,
            samples: 20_000,
            seed: 0,
            foreground: 0.05,
            tolerance: 1e-3,
        }
    }
}

/// The outcome of affine registration.
#[derive(Clone, Debug)]
pub struct AffineResult {
    /// The parameters found.
    pub params: AffineParams,
    /// The world transform (fixed world → moving world).
    pub world: Mat4,
    /// Final similarity loss at the finest level.
    pub loss: f64,
}

fn centre_of_mass(image: &Image, grid: &Grid) -> [f64; 3] {
    let [d, h, w] = grid.size;
    let data = image.data();
    let (mut total, mut acc) = (0.0, [0.0; 3]);
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let v = data[(z * h + y) * w + x].max(0.0) as f64;
                total += v;
                for r in 0..3 {
                    acc[r] += v
                        * (grid.to_world[r][0] * z as f64
                            + grid.to_world[r][1] * y as f64
                            + grid.to_world[r][2] * x as f64
                            + grid.to_world[r][3]);
                }
            }
        }
    }
    if total <= 0.0 { grid.centre() } else { acc.map(|a| a / total) }
}

/// Registers `moving` to `fixed` by a world-space affine transform (rigid first, then, with `affine_steps > 0`,
/// scaling and shear too), minimising the similarity loss by Adam over the pyramid, every voxel of every level
/// through automatic differentiation (`opts.samples` is not used: [`crate::sampled::register_affine_sampled`] is the
/// sampled path, which [`crate::register`] takes when it is positive).
pub fn register_affine<B: AutodiffBackend>(fixed: &Image, moving: &Image, opts: &AffineOptions, device: &B::Device) -> AffineResult {
    register_affine_reported::<B>(fixed, moving, opts, device).0
}

/// [`register_affine`] with what it did. It is guarded as the sampled path is: the similarity of the start and of
/// the result are taken on the finest pyramid level that ran, and when the result is no better — or keeps fewer
/// than half of the voxels the start kept inside the moving image — the start is returned.
pub fn register_affine_reported<B: AutodiffBackend>(
    fixed: &Image,
    moving: &Image,
    opts: &AffineOptions,
    device: &B::Device,
) -> (AffineResult, AffineReport) {
    let fixed_grid = Grid::of(fixed);
    let moving_grid = Grid::of(moving);
    let centre = fixed_grid.centre();
    let mut params = AffineParams::IDENTITY;
    if opts.init_centre_of_mass {
        let (cf, cm) = (centre_of_mass(fixed, &fixed_grid), centre_of_mass(moving, &moving_grid));
        params.translation = [0, 1, 2].map(|a| cm[a] - cf[a]);
    }
    let start = params;
    let flat = fixed_grid.size[0] == 1;
    let fixed_t = to_tensor::<B::InnerBackend>(fixed, device);
    let moving_t = to_tensor::<B::InnerBackend>(moving, device);
    let mut iterations = Vec::new();
    let mut finest = None;
    for (stage, steps) in [(0, opts.rigid_steps), (1, opts.affine_steps)] {
        if steps == 0 {
            continue;
        }
        // Which parameters move: rigid → angles and translation; affine → all. In 2D, only those of the plane.
        let mut free = [0.0f32; 12];
        for k in 0..12 {
            // A 2D image lies in the world x–y plane: rotation about z, translation x, y, scales x, y, shear xy.
            let in_plane = !flat || matches!(k, 2 | 3 | 4 | 6 | 7 | 9);
            let stage_ok = stage == 1 || k < 6;
            free[k] = if in_plane && stage_ok { 1.0 } else { 0.0 };
        }
        let free = Tensor::<B, 1>::from_data(free.as_slice(), device);
        for &level in &opts.levels {
            let factor = if flat { [1, level, level] } else { [level; 3] };
            let fg = fixed_grid.coarsened(factor);
            let mg = moving_grid.coarsened(factor);
            let too_small = |g: &Grid| g.size.iter().zip(factor).any(|(&s, f)| f > 1 && s < 4);
            if too_small(&fg) || too_small(&mg) {
                continue;
            }
            let f = Tensor::<B, 5>::from_inner(pool3d(fixed_t.clone(), factor, false));
            let m = Tensor::<B, 5>::from_inner(pool3d(moving_t.clone(), factor, false));
            let mut p = Tensor::<B::InnerBackend, 1>::from_data(params.to_vec().as_slice(), device);
            let mut adam = Adam::new(p.clone());
            for step in 0..steps {
                let lr = opts.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos()));
                let pd = Tensor::<B, 1>::from_inner(p.clone()).require_grad();
                let world =
                    world_matrix(pd.clone() * free.clone() + Tensor::from_inner(p.clone()).detach() * (free.clone().neg() + 1.0), centre);
                let (warped, mask) = resample_world(m.clone(), &mg, &fg, world);
                let l = opts.similarity.loss(warped, f.clone(), mask);
                let grads = l.backward();
                let g = pd.grad(&grads).expect("parameters take part in the loss");
                p = adam.step(p, g, lr);
            }
            params = AffineParams::from_slice(&p.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
            iterations.push((format!("{}@{level}", if stage == 0 { "rigid" } else { "affine" }), steps));
            finest = Some(factor);
        }
    }
    // The guard, on the finest level that ran (the images themselves when level 1 did).
    let score = |p: &AffineParams| -> (f64, f64) {
        let Some(factor) = finest else {
            return (f64::NAN, 0.0);
        };
        let (fg, mg) = (fixed_grid.coarsened(factor), moving_grid.coarsened(factor));
        let f = pool3d(fixed_t.clone(), factor, false);
        let m = pool3d(moving_t.clone(), factor, false);
        let pt = Tensor::<B::InnerBackend, 1>::from_data(p.to_vec().as_slice(), device);
        let (warped, mask) = resample_world(m, &mg, &fg, world_matrix(pt, centre));
        let inside_count = mask.clone().sum().into_scalar().elem::<f64>();
        let v = opts.similarity.loss(warped, f, mask).into_scalar().elem::<f64>();
        (if v.is_finite() { v } else { f64::INFINITY }, inside_count)
    };
    let ((loss_start, inside_start), (loss_end, inside_end)) = (score(&start), score(&params));
    let kept_start = finest.is_some() && (!(loss_end < loss_start) || inside_end < 0.5 * inside_start);
    let (params, loss) = if kept_start { (start, loss_start) } else { (params, loss_end) };
    let report = AffineReport {
        start: if opts.init_centre_of_mass { "centre-of-mass" } else { "world" },
        iterations,
        loss_start,
        loss_end,
        kept_start,
    };
    (AffineResult { params, world: params.matrix(centre), loss }, report)
}

use burn::tensor::ElementConversion;
