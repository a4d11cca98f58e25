//! Image registration by optimisation on burn's autodiff, and its evaluation.
//!
//! [`register`] aligns a moving image to a fixed one, in the fixed image's grid: an affine transform in world
//! coordinates (rigid, then optionally scaling and shear), found by Adam over a multi-resolution pyramid
//! ([`affine::register_affine`]), then optionally a dense displacement field regularised by diffusion
//! ([`deformable::register_deformable`]). Similarities: mean squared error, local normalised cross-correlation,
//! and Parzen-window mutual information for different modalities ([`Similarity`]). The result gives the warped
//! image, the displacement field in millimetres (world RAS+ vectors on the fixed grid) and can warp label maps
//! by nearest neighbour. [`metrics`] computes Jacobian statistics with folding, Dice, landmark and field errors.
//!
//! Learned registration has the files every task crate has: [`recipe`] (`task = "registration"`), [`train`]
//! (pairs and the two training stages on the engine), [`infer`] (a run's networks registering new images) and
//! [`evaluate`] (a run scored on its test or validation pairs); [`learn`] holds the VoxelMorph loss.
//!
//! ```
//! use vesalius_data::Image;
//! use vesalius_registration::{register, Method, RegisterOptions, Similarity};
//! type B = burn::backend::Autodiff<burn::backend::Flex>;
//!
//! // A bright square moved by 3 pixels along x is found again.
//! let square = |dx: usize| {
//!     let mut v = vec![0.0f32; 32 * 32];
//!     for y in 10..20 { for x in 10 + dx..20 + dx { v[y * 32 + x] = 1.0; } }
//!     Image::new(v, vec![32, 32], 1, vesalius_data::IDENTITY, "float32").unwrap()
//! };
//! let options = RegisterOptions { method: Method::Affine, similarity: Similarity::Mse, ..Default::default() };
//! let result = register::<B>(&square(0), &square(3), &options, &Default::default());
//! assert!((result.world[0][3] - 3.0).abs() < 0.5);
//! ```
pub mod affine;
pub mod deformable;
pub mod evaluate;
pub mod infer;
pub mod learn;
pub mod metrics;
pub mod recipe;
pub mod resample;
pub mod sampled;
pub mod sampled_bspline;
pub mod similarity;
pub mod train;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use vesalius_data::Image;
use vesalius_nets::ops::{Padding, sample_linear, sample_nearest};

pub use affine::{AffineOptions, AffineParams, AffineResult, Grid, register_affine};
pub use deformable::{DeformableOptions, Deformation, Regulariser, register_deformable, register_deformable_reported};
pub use similarity::Similarity;

/// Errors of registration runs.
#[derive(Debug, thiserror::Error)]
pub enum RegError {
    /// Bad input: a file, a recipe, a run folder.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself.
    #[error("{0}")]
    Internal(String),
}

impl From<vesalius_train::TrainError> for RegError {
    fn from(e: vesalius_train::TrainError) -> Self {
        match e {
            vesalius_train::TrainError::Input(m) => RegError::Input(m),
            other => RegError::Internal(other.to_string()),
        }
    }
}

impl From<vesalius_data::DataError> for RegError {
    fn from(e: vesalius_data::DataError) -> Self {
        match e {
            vesalius_data::DataError::Write { .. } => RegError::Internal(e.to_string()),
            other => RegError::Input(other.to_string()),
        }
    }
}

/// A 4×4 matrix, row-major.
pub type Mat4 = [[f64; 4]; 4];

/// Matrix product.
pub fn mat_mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut o = [[0.0; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            o[r][c] = (0..4).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    o
}

/// Inverse by Gauss–Jordan elimination with partial pivoting (the identity for a singular matrix's missing rank).
pub fn mat_inv(m: &Mat4) -> Mat4 {
    let mut a = *m;
    let mut inv = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for col in 0..4 {
        let pivot = (col..4).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-12 {
            continue;
        }
        for c in 0..4 {
            a[col][c] /= p;
            inv[col][c] /= p;
        }
        for r in 0..4 {
            if r != col {
                let f = a[r][col];
                for c in 0..4 {
                    a[r][c] -= f * a[col][c];
                    inv[r][c] -= f * inv[col][c];
                }
            }
        }
    }
    inv
}

/// Adam (β = 0.9, 0.999, ε = 1e-8) on one tensor, outside burn's module optimisers (registration optimises bare
/// parameter tensors).
pub struct Adam<B: Backend, const D: usize> {
    m: Tensor<B, D>,
    v: Tensor<B, D>,
    t: i32,
}

impl<B: Backend, const D: usize> Adam<B, D> {
    /// State for a parameter shaped like `like`.
    pub fn new(like: Tensor<B, D>) -> Self {
        Self { m: like.zeros_like(), v: like.zeros_like(), t: 0 }
    }

    /// One step: the updated parameter.
    pub fn step(&mut self, param: Tensor<B, D>, grad: Tensor<B, D>, lr: f64) -> Tensor<B, D> {
        self.t += 1;
        self.m = self.m.clone() * 0.9 + grad.clone() * 0.1;
        self.v = self.v.clone() * 0.999 + grad.powi_scalar(2) * 0.001;
        let mh = self.m.clone() / (1.0 - 0.9f64.powi(self.t));
        let vh = self.v.clone() / (1.0 - 0.999f64.powi(self.t));
        param - mh / (vh.sqrt() + 1e-8) * lr
    }
}

/// What to optimise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Rigid then affine.
    Affine,
    /// A dense field only (images already roughly aligned).
    Deformable,
    /// Affine, then a dense field.
    AffineDeformable,
}

impl Method {
    /// By name: `affine`, `deformable`, `affine+deformable`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "affine" => Some(Self::Affine),
            "deformable" => Some(Self::Deformable),
            "affine+deformable" => Some(Self::AffineDeformable),
            _ => None,
        }
    }
}

/// Options of [`register`].
#[derive(Clone, Debug)]
pub struct RegisterOptions {
    /// Method.
    pub method: Method,
    /// Similarity (for both stages, unless `affine_similarity` names the affine stage's).
    pub similarity: Similarity,
    /// The affine stage's similarity when it differs from the deformable stage's (the command line's `auto`: Mattes
    /// mutual information for the affine stage, which tolerates contrast differences between scanners and subjects).
    pub affine_similarity: Option<Similarity>,
    /// Affine stage settings (its similarity is replaced by `affine_similarity` or `similarity`).
    pub affine: AffineOptions,
    /// Deformable stage settings (its similarity is replaced by `similarity`).
    pub deformable: DeformableOptions,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        Self {
            method: Method::AffineDeformable,
            similarity: Similarity::Mse,
            affine_similarity: None,
            affine: AffineOptions { affine_steps: 100, ..AffineOptions::default() },
            deformable: DeformableOptions::default(),
        }
    }
}

/// The outcome of [`register`].
pub struct Registration {
    /// The world transform found by the affine stage (fixed world → moving world; identity without it).
    pub world: Mat4,
    /// For each fixed voxel (tensor order d, h, w), its position in the moving image's voxels: `[3][d·h·w]`.
    pub moving_voxel: [Vec<f32>; 3],
    /// Displacement field of the deformable stage in fixed voxels (zeros without it), components (d, h, w).
    pub field_voxels: [Vec<f32>; 3],
    /// The moving image resampled on the fixed grid (trilinear, zero outside).
    pub warped: Image,
    /// The world displacement at each fixed voxel, mm (RAS+): an image on the fixed grid with 3 channels (x, y, z).
    pub displacement_mm: Image,
    /// What the affine stage did (its start, iterations per level, the similarity at the start and at the end,
    /// whether it kept the start).
    pub affine_report: Option<sampled::AffineReport>,
    /// What the deformable stage did (iterations per level, the similarity at the start and at the end, whether it
    /// kept the start).
    pub deformable_report: Option<sampled_bspline::DeformableReport>,
}

/// Intensities scaled to [0, 1] between their 0.5th and 99.5th percentiles (clipped), so that step sizes and
/// regularisation weights mean the same for every image and a few extreme voxels do not flatten the rest;
/// NaN becomes 0.
pub(crate) fn normalised(image: &Image) -> Image {
    let values = &image.data()[..image.voxels()];
    let mut finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    // The two order statistics by selection (linear time), as a full sort would give them.
    let mut pick = |q: f64| {
        if finite.is_empty() {
            return 0.0;
        }
        let k = ((finite.len() - 1) as f64 * q).round() as usize;
        *finite.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let (lo, hi) = (pick(0.005), pick(0.995));
    let span = (hi - lo).max(1e-6);
    let data: Vec<f32> = values.iter().map(|&v| if v.is_finite() { ((v - lo) / span).clamp(0.0, 1.0) } else { 0.0 }).collect();
    Image::new(data, image.shape().to_vec(), 1, *image.affine(), image.dtype()).expect("same grid")
}

pub(crate) fn tensor_of<B: Backend>(v: Vec<f32>, shape: [usize; 5], device: &B::Device) -> Tensor<B, 5> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()
}

/// Registers `moving` to `fixed` (first channels) and resamples it on the fixed grid.
pub fn register<B: AutodiffBackend>(fixed: &Image, moving: &Image, opts: &RegisterOptions, device: &B::Device) -> Registration {
    let (fixed_n, moving_n) = (normalised(fixed), normalised(moving));
    let fg = Grid::of(fixed);
    let mg = Grid::of(moving);
    let [d, h, w] = fg.size;
    let affine_opts = AffineOptions { similarity: opts.affine_similarity.unwrap_or(opts.similarity), ..opts.affine.clone() };
    let mut affine_report = None;
    let world = if opts.method == Method::Deformable {
        affine::identity()
    } else if affine_opts.samples > 0 {
        let (result, report) = sampled::register_affine_sampled(&fixed_n, &moving_n, &affine_opts);
        affine_report = Some(report);
        result.world
    } else {
        let (result, report) = affine::register_affine_reported::<B>(&fixed_n, &moving_n, &affine_opts, device);
        affine_report = Some(report);
        result.world
    };
    // Fixed voxel → moving voxel by the affine.
    let vox = mat_mul(&mat_mul(&mat_inv(&mg.to_world), &world), &fg.to_world);
    let coords = voxel_map(fixed, moving, &world);
    let n = d * h * w;
    let mut field: [Vec<f32>; 3] = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
    let mut mapped = coords.clone();
    let mut deformable_report = None;
    if opts.method != Method::Affine {
        let deformable = DeformableOptions { similarity: opts.similarity, ..opts.deformable.clone() };
        match deformable.deformation {
            Deformation::BSpline { spacing } if deformable.samples > 0 => {
                let resampled = resample::trilinear(&moving_n.data()[..moving_n.voxels()], mg.size, &coords, Padding::Zeros);
                let fixed_v = sampled::Volume::from_voxels(fixed_n.data()[..n].to_vec(), [d, h, w]);
                let (lattice, report) = sampled_bspline::register_bspline_sampled(
                    &fixed_v,
                    &sampled::Volume::from_voxels(resampled, [d, h, w]),
                    spacing,
                    &deformable,
                );
                deformable_report = Some(report);
                field = lattice.field([d, h, w]);
            }
            _ => {
                let moving_t = affine::to_tensor::<B::InnerBackend>(&moving_n, device);
                let resampled =
                    sample_linear(moving_t, tensor_of::<B::InnerBackend>(coords.concat(), [1, 3, d, h, w], device), Padding::Zeros);
                let fixed_t = affine::to_tensor::<B::InnerBackend>(&fixed_n, device);
                let (u, report) = register_deformable_reported::<B>(fixed_t, resampled, &deformable);
                deformable_report = Some(report);
                let u = to_vec(u);
                for c in 0..3 {
                    field[c] = u[c * n..(c + 1) * n].to_vec();
                }
            }
        }
        // p + u(p) on the fixed grid, then through the affine.
        for i in 0..n {
            let (z, y, x) = ((i / (h * w)) as f64, ((i / w) % h) as f64, (i % w) as f64);
            let q = [z + field[0][i] as f64, y + field[1][i] as f64, x + field[2][i] as f64];
            for r in 0..3 {
                mapped[r][i] = (vox[r][0] * q[0] + vox[r][1] * q[1] + vox[r][2] * q[2] + vox[r][3]) as f32;
            }
        }
    }
    Registration { affine_report, deformable_report, ..finish(fixed, moving, world, mapped, field) }
}

/// The registration result from the map of every fixed voxel to moving voxels (`mapped`, `[3][d·h·w]`): the
/// moving image resampled there and the world displacement in millimetres.
pub(crate) fn finish(fixed: &Image, moving: &Image, world: Mat4, mapped: [Vec<f32>; 3], field: [Vec<f32>; 3]) -> Registration {
    let (fg, mg) = (Grid::of(fixed), Grid::of(moving));
    let [d, h, w] = fg.size;
    let n = d * h * w;
    let values = resample::trilinear(&moving.data()[..moving.voxels()], mg.size, &mapped, Padding::Zeros);
    let warped = Image::new(values, fixed.shape().to_vec(), 1, *fixed.affine(), "float32").expect("the fixed grid");
    // World displacement: moving-world position of each fixed voxel minus its own world position.
    let mut disp = vec![0f32; 3 * n];
    for i in 0..n {
        let (z, y, x) = ((i / (h * w)) as f64, ((i / w) % h) as f64, (i % w) as f64);
        let q = [mapped[0][i] as f64, mapped[1][i] as f64, mapped[2][i] as f64];
        for r in 0..3 {
            let to = mg.to_world[r][0] * q[0] + mg.to_world[r][1] * q[1] + mg.to_world[r][2] * q[2] + mg.to_world[r][3];
            let from = fg.to_world[r][0] * z + fg.to_world[r][1] * y + fg.to_world[r][2] * x + fg.to_world[r][3];
            disp[r * n + i] = (to - from) as f32;
        }
    }
    let displacement_mm = Image::new(disp, fixed.shape().to_vec(), 3, *fixed.affine(), "float32").expect("fixed grid");
    Registration { world, moving_voxel: mapped, field_voxels: field, warped, displacement_mm, affine_report: None, deformable_report: None }
}

impl Registration {
    /// A label map on the moving image's grid carried to the fixed grid by nearest neighbour (values kept; 0
    /// outside).
    pub fn warp_labels<B: Backend>(&self, labels: &Image, fixed: &Image, device: &B::Device) -> Image {
        labels_at::<B>(labels, fixed, &self.moving_voxel, device)
    }
}

/// For each voxel of `fixed`'s grid, its position in `moving`'s voxels under the world transform `world`
/// (fixed world → moving world): `[3][d·h·w]`, components (d, h, w).
pub fn voxel_map(fixed: &Image, moving: &Image, world: &Mat4) -> [Vec<f32>; 3] {
    let (fg, mg) = (Grid::of(fixed), Grid::of(moving));
    let vox = mat_mul(&mat_mul(&mat_inv(&mg.to_world), world), &fg.to_world);
    let [d, h, w] = fg.size;
    let mut out: [Vec<f32>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                for (r, o) in out.iter_mut().enumerate() {
                    o.push((vox[r][0] * z as f64 + vox[r][1] * y as f64 + vox[r][2] * x as f64 + vox[r][3]) as f32);
                }
            }
        }
    }
    out
}

/// Label values of `labels` looked up (nearest neighbour) at the moving-voxel positions `at` of `fixed`'s voxels;
/// 0 outside.
pub fn labels_at<B: Backend>(labels: &Image, fixed: &Image, at: &[Vec<f32>; 3], device: &B::Device) -> Image {
    let [d, h, w] = Grid::of(fixed).size;
    let coords = tensor_of::<B>(at.concat(), [1, 3, d, h, w], device);
    let values = sample_nearest(affine::to_tensor::<B>(labels, device), coords);
    affine::from_tensor(values, fixed).with_dtype(labels.dtype())
}
