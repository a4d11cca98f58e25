//! Registration with a trained run's networks ([`LearnedRegistrar`]): one forward pass, outputs in the fixed
//! image's own grid, like [`crate::register`].
use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use vesalius_data::Image;
use vesalius_nets::VoxelMorph;
use vesalius_nets::ops::{Padding, identity_grid};
use vesalius_nets::{AffineNet, AffineNetConfig, warp_by_affine};
use vesalius_train::RunDir;
use vesalius_train::engine::{self};

use crate::affine::{Grid, identity};
use crate::recipe::RegRecipe;
use crate::{Mat4, RegError, Registration, finish, mat_inv, mat_mul, to_vec};

use crate::train::*;
/// A trained run's networks, ready to register images.
pub struct LearnedRegistrar<B: Backend> {
    recipe: RegRecipe,
    info: RunInfo,
    affine: Option<AffineNet<B>>,
    net: VoxelMorph<B>,
}

/// The fields a run's networks predict for one pair on the common grid.
pub struct Prediction<B: Backend> {
    /// The affine network's voxel-space affine `[1, 3, 4]`, if the run has one.
    pub affine: Option<Tensor<B, 3>>,
    /// The deformable field `[1, 3, d, h, w]` (voxels of the common grid) applied after the affine.
    pub field: Tensor<B, 5>,
    /// Where each voxel reads the moving image: `A·(p + u(p))`, `[1, 3, d, h, w]`.
    pub coords: Tensor<B, 5>,
}

impl<B: Backend> LearnedRegistrar<B> {
    /// Loads the best networks of a run.
    pub fn load(run: &RunDir, device: &B::Device) -> Result<Self, RegError> {
        let recipe = RegRecipe::from_file(&run.file("recipe.toml"))?;
        let info: RunInfo = run.read_info()?;
        let affine = if recipe.model.affine {
            let net: AffineNet<B> = AffineNetConfig::new(recipe.model.affine_encoder.clone()).init(device);
            Some(engine::load_module(net, &run.stage("affine").best_model(), device)?)
        } else {
            None
        };
        let net: VoxelMorph<B> = voxelmorph_config(&recipe).init(device);
        let net = engine::load_module(net, &run.best_model(), device)?;
        Ok(Self { recipe, info, affine, net })
    }

    /// The run's recipe.
    pub fn recipe(&self) -> &RegRecipe {
        &self.recipe
    }

    /// Label values of the run's label maps (index order).
    pub fn label_values(&self) -> &[i64] {
        &self.info.label_values
    }

    /// Tensor size of the common grid (depth, height, width).
    pub fn size(&self) -> [usize; 3] {
        let s = self.recipe.data.shape;
        [s[2], s[1], s[0]]
    }

    /// The fields for a pair on the common grid (`[1, 1, d, h, w]` intensities in [0, 1]).
    pub fn predict(&self, moving: Tensor<B, 5>, fixed: Tensor<B, 5>) -> Prediction<B> {
        let size = self.size();
        let device = moving.device();
        match &self.affine {
            None => {
                let field = self.net.field(moving, fixed);
                Prediction { affine: None, coords: identity_grid::<B>(size, &device) + field.clone(), field }
            }
            Some(net) => {
                let a = net.forward(moving.clone(), fixed.clone());
                let field = self.net.field(warp_by_affine(moving, a.clone(), size), fixed);
                let v = size[0] * size[1] * size[2];
                let p = (identity_grid::<B>(size, &device) + field.clone()).reshape([1, 3, v]);
                let coords = (a.clone().narrow(2, 0, 3).matmul(p) + a.clone().narrow(2, 3, 1)).reshape([1, 3, size[0], size[1], size[2]]);
                Prediction { affine: Some(a), field, coords }
            }
        }
    }

    /// Registers `moving` to `fixed` (3D images, any grids): both are resampled onto the run's grid about the fixed
    /// image, the networks predict there, and the result maps every voxel of the fixed image's own grid, like
    /// [`crate::register`]; `field_voxels` holds the deformable stage's displacement in fixed voxels.
    pub fn register(&self, fixed: &Image, moving: &Image, device: &B::Device) -> Result<Registration, RegError> {
        check_volume(fixed, Path::new("fixed image"))?;
        check_volume(moving, Path::new("moving image"))?;
        let shape = self.recipe.data.shape;
        let size = self.size();
        let common = common_grid(&self.recipe, fixed);
        let f = tensor5::<B>(intensities_on(fixed, &shape, &common)?, 1, size, device);
        let m = tensor5::<B>(intensities_on(moving, &shape, &common)?, 1, size, device);
        let prediction = self.predict(m, f);
        let (g, fg, mg) = (Grid::from_affine(&shape, &common), Grid::of(fixed), Grid::of(moving));
        let [d, h, w] = fg.size;
        let n = d * h * w;
        // Fixed voxel → common-grid voxel q.
        let to_common = mat_mul(&mat_inv(&g.to_world), &fg.to_world);
        let mut q: [Vec<f32>; 3] = [Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n)];
        for i in 0..n {
            let p = [(i / (h * w)) as f64, ((i / w) % h) as f64, (i % w) as f64];
            for (r, out) in q.iter_mut().enumerate() {
                out.push((to_common[r][0] * p[0] + to_common[r][1] * p[1] + to_common[r][2] * p[2] + to_common[r][3]) as f32);
            }
        }
        // The predicted field (three channels on the common grid) at every fixed voxel.
        let field_common = to_vec(prediction.field);
        let common_size = size;
        let per = common_size.iter().product::<usize>();
        let u: Vec<f32> = (0..3)
            .flat_map(|c| crate::resample::trilinear(&field_common[c * per..(c + 1) * per], common_size, &q, Padding::Border))
            .collect();
        let a: Mat4 = match &prediction.affine {
            None => identity(),
            Some(t) => {
                let v = to_vec(t.clone());
                let mut m = identity();
                for r in 0..3 {
                    for c in 0..4 {
                        m[r][c] = v[r * 4 + c] as f64;
                    }
                }
                m
            }
        };
        // Common voxel q → A·(q + u) → world → moving voxel; the deformable part alone in fixed voxels.
        let to_moving = mat_mul(&mat_mul(&mat_inv(&mg.to_world), &g.to_world), &a);
        let lin = mat_mul(&mat_inv(&fg.to_world), &g.to_world);
        let mut mapped: [Vec<f32>; 3] = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        let mut field: [Vec<f32>; 3] = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        for i in 0..n {
            let du = [u[i] as f64, u[n + i] as f64, u[2 * n + i] as f64];
            let p = [q[0][i] as f64 + du[0], q[1][i] as f64 + du[1], q[2][i] as f64 + du[2]];
            for r in 0..3 {
                mapped[r][i] = (to_moving[r][0] * p[0] + to_moving[r][1] * p[1] + to_moving[r][2] * p[2] + to_moving[r][3]) as f32;
                field[r][i] = (lin[r][0] * du[0] + lin[r][1] * du[1] + lin[r][2] * du[2]) as f32;
            }
        }
        let world = mat_mul(&mat_mul(&g.to_world, &a), &mat_inv(&g.to_world));
        Ok(finish(fixed, moving, world, mapped, field))
    }
}
