//! Deformable registration: a dense displacement field on the fixed grid, optimised by Adam over a pyramid to
//! minimise `similarity + λ · diffusion(field)`.
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use vesalius_nets::loss::grad_l2;
use vesalius_nets::ops::{identity_grid, pool3d, resize_linear, sample_linear, Padding};

use crate::affine::inside;
use crate::similarity::Similarity;
use crate::Adam;

/// Options of deformable registration.
#[derive(Clone, Debug)]
pub struct DeformableOptions {
    /// Similarity measure.
    pub similarity: Similarity,
    /// Weight of the diffusion regulariser (mean squared forward differences of the field, in voxels).
    pub smoothness: f64,
    /// Down-sampling factors, coarsest first.
    pub levels: Vec<usize>,
    /// Adam steps per level.
    pub steps: usize,
    /// Adam step size (voxels of the level), decayed by a cosine within each level.
    pub learning_rate: f64,
}

impl Default for DeformableOptions {
    fn default() -> Self {
        Self { similarity: Similarity::Mse, smoothness: 1.0, levels: vec![4, 2, 1], steps: 100, learning_rate: 0.2 }
    }
}

/// Registers `moving` to `fixed`, both `[1, 1, d, h, w]` on the same grid (resample the moving image first, e.g.
/// with the affine result). Returns the displacement field `[1, 3, d, h, w]` in voxels of that grid (channels
/// depth, height, width): `warped(p) = moving(p + u(p))`. Depth-1 images get a field with zero depth component.
pub fn register_deformable<B: AutodiffBackend>(
    fixed: Tensor<B::InnerBackend, 5>,
    moving: Tensor<B::InnerBackend, 5>,
    opts: &DeformableOptions,
) -> Tensor<B::InnerBackend, 5> {
    let device = fixed.device();
    let [_, _, d, h, w] = fixed.dims();
    let flat = d == 1;
    let plane_only = Tensor::<B::InnerBackend, 1>::from_data([if flat { 0.0f32 } else { 1.0 }, 1.0, 1.0], &device).reshape([1, 3, 1, 1, 1]);
    let mut field: Option<Tensor<B::InnerBackend, 5>> = None;
    for &level in &opts.levels {
        let factor = if flat { [1, level, level] } else { [level; 3] };
        let size = [d / factor[0], h / factor[1], w / factor[2]];
        if size.iter().zip(factor).any(|(&s, f)| f > 1 && s < 4) {
            continue;
        }
        let f = Tensor::<B, 5>::from_inner(pool3d(fixed.clone(), factor, false));
        let m = Tensor::<B, 5>::from_inner(pool3d(moving.clone(), factor, false));
        let [_, _, ld, lh, lw] = f.dims();
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
        let grid = identity_grid::<B::InnerBackend>([ld, lh, lw], &device);
        let mut adam = Adam::new(u.clone());
        for step in 0..opts.steps {
            let lr = opts.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / opts.steps as f64).cos()));
            let ud = Tensor::<B, 5>::from_inner(u.clone()).require_grad();
            let coords = Tensor::<B, 5>::from_inner(grid.clone()) + ud.clone();
            let mask = inside(coords.clone().detach(), [ld, lh, lw]);
            let warped = sample_linear(m.clone(), coords, Padding::Border);
            let loss = opts.similarity.loss(warped, f.clone(), mask) + grad_l2(ud.clone()) * opts.smoothness;
            let grads = loss.backward();
            let g = ud.grad(&grads).expect("the field takes part in the loss") * plane_only.clone();
            u = adam.step(u, g, lr);
        }
        field = Some(u);
    }
    let u = field.unwrap_or_else(|| Tensor::zeros([1, 3, d, h, w], &device));
    let [_, _, fd, fh, fw] = u.dims();
    if [fd, fh, fw] == [d, h, w] {
        return u;
    }
    let ratio = Tensor::<B::InnerBackend, 1>::from_data([(d as f32 / fd as f32), (h as f32 / fh as f32), (w as f32 / fw as f32)], &device).reshape([1, 3, 1, 1, 1]);
    resize_linear(u, [d, h, w]) * ratio
}
