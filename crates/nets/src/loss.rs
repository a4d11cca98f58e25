//! Training objectives of the dense-prediction networks: soft Dice (as `monai.losses.DiceLoss(to_onehot_y=True,
//! softmax=True)`), voxel-wise cross-entropy, mean squared error, and the diffusion regulariser of displacement
//! fields (VoxelMorph's `Grad('l2')`).
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// One-hot `[n, classes, d, h, w]` of integer labels `[n, d, h, w]`.
pub fn one_hot<B: Backend>(labels: Tensor<B, 4, Int>, classes: usize) -> Tensor<B, 5> {
    let [n, d, h, w] = labels.dims();
    let device = labels.device();
    let ids = Tensor::<B, 1, Int>::arange(0..classes as i64, &device).reshape([1, classes, 1, 1, 1]);
    labels.reshape([n, 1, d, h, w]).equal(ids.expand([n, classes, d, h, w])).float()
}

/// Soft Dice loss of logits `[n, classes, d, h, w]` against labels: `p = softmax(logits)`, for every sample and
/// class `1 − (2 Σ p·g + ε) / (Σ p + Σ g + ε)` with ε = 1e-5, averaged over samples and classes (background
/// included).
pub fn soft_dice<B: Backend>(logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>) -> Tensor<B, 1> {
    let [n, c, d, h, w] = logits.dims();
    let p = softmax(logits, 1).reshape([n, c, d * h * w]);
    let g = one_hot(labels, c).reshape([n, c, d * h * w]);
    let inter = (p.clone() * g.clone()).sum_dim(2);
    let denom = p.sum_dim(2) + g.sum_dim(2);
    let dice = (inter * 2.0 + 1e-5) / (denom + 1e-5);
    (dice.neg() + 1.0).mean()
}

/// Cross-entropy of logits `[n, classes, d, h, w]` against labels, averaged over every voxel.
pub fn voxel_cross_entropy<B: Backend>(logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>) -> Tensor<B, 1> {
    let [_, c, _, _, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    (logp * one_hot(labels, c)).sum_dim(1).mean().neg()
}

/// Mean squared error.
pub fn mse<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, 1> {
    (a - b).powi_scalar(2).mean()
}

/// Diffusion regulariser of a field `[n, k, d, h, w]`: the mean of squared forward differences along each spatial
/// axis, averaged over the axes (`(mean Δ_d² + mean Δ_h² + mean Δ_w²) / 3`). Axes of length 1 are skipped.
pub fn grad_l2<B: Backend>(field: Tensor<B, 5>) -> Tensor<B, 1> {
    let dims = field.dims();
    let mut terms = Vec::new();
    for axis in 2..5 {
        let len = dims[axis];
        if len < 2 {
            continue;
        }
        let diff = field.clone().narrow(axis, 1, len - 1) - field.clone().narrow(axis, 0, len - 1);
        terms.push(diff.powi_scalar(2).mean());
    }
    let count = terms.len().max(1) as f64;
    terms.into_iter().reduce(|a, b| a + b).map_or_else(|| Tensor::zeros([1], &field.device()), |s| s / count)
}

/// Bending energy of a field `[n, k, d, h, w]` by finite differences: the mean over voxels and components of
/// `Σ_a (∂²u/∂a²)² + 2 Σ_{a<b} (∂²u/∂a∂b)²`, with central second differences `u[i+1] − 2u[i] + u[i−1]` and mixed
/// differences of forward differences, each averaged over the voxels where it is defined. Zero for any affine
/// field. Axes of length below 3 (second differences) or 2 (mixed) contribute nothing.
pub fn bending_energy<B: Backend>(field: Tensor<B, 5>) -> Tensor<B, 1> {
    let dims = field.dims();
    let mut total: Option<Tensor<B, 1>> = None;
    let mut add = |t: Tensor<B, 1>| {
        total = Some(match total.take() {
            None => t,
            Some(s) => s + t,
        })
    };
    for a in 2..5 {
        let len = dims[a];
        if len >= 3 {
            let second =
                field.clone().narrow(a, 2, len - 2) - field.clone().narrow(a, 1, len - 2) * 2.0 + field.clone().narrow(a, 0, len - 2);
            add(second.powi_scalar(2).mean());
        }
        for b in a + 1..5 {
            if len >= 2 && dims[b] >= 2 {
                let fa = field.clone().narrow(a, 1, len - 1) - field.clone().narrow(a, 0, len - 1);
                let lb = dims[b];
                let mixed = fa.clone().narrow(b, 1, lb - 1) - fa.narrow(b, 0, lb - 1);
                add(mixed.powi_scalar(2).mean() * 2.0);
            }
        }
    }
    total.unwrap_or_else(|| Tensor::zeros([1], &field.device()))
}

/// Soft Dice plus cross-entropy, each with weight 1 (nnU-Net's default objective).
pub fn dice_ce<B: Backend>(logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>) -> Tensor<B, 1> {
    soft_dice(logits.clone(), labels.clone()) + voxel_cross_entropy(logits, labels)
}

/// Generalised Dice loss (Sudre et al. 2017, as `monai.losses.GeneralizedDiceLoss(to_onehot_y=True,
/// softmax=True)`): per sample, class weights `w = 1/(Σ g)²` (a class absent from the sample takes the largest
/// weight of the present ones), `1 − (2 Σ_c w Σ p·g + ε)/(Σ_c w Σ (p + g) + ε)` with ε = 1e-5, averaged over samples.
pub fn generalised_dice<B: Backend>(logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>) -> Tensor<B, 1> {
    let [n, c, d, h, w] = logits.dims();
    let p = softmax(logits, 1).reshape([n, c, d * h * w]);
    let g = one_hot(labels, c).reshape([n, c, d * h * w]);
    let inter = (p.clone() * g.clone()).sum_dim(2).reshape([n, c]);
    let denom = (p + g.clone()).sum_dim(2).reshape([n, c]);
    let volume = g.sum_dim(2).reshape([n, c]);
    let absent = volume.clone().equal_elem(0.0);
    let weights = volume.powi_scalar(2).clamp_min(1.0).recip();
    let finite = weights.clone().mask_fill(absent.clone(), 0.0);
    let largest = finite.max_dim(1).expand([n, c]);
    let weights = weights.mask_where(absent, largest);
    let numer = (weights.clone() * inter).sum_dim(1) * 2.0 + 1e-5;
    let denom = (weights * denom).sum_dim(1) + 1e-5;
    (numer / denom).neg().add_scalar(1.0).mean()
}

/// Focal loss (Lin et al. 2017) with focusing parameter `gamma`: `−(1 − p_t)^γ log p_t`, averaged over voxels
/// (`gamma = 0` is cross-entropy).
pub fn focal<B: Backend>(logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>, gamma: f64) -> Tensor<B, 1> {
    let [_, c, _, _, _] = logits.dims();
    let logp = (log_softmax(logits, 1) * one_hot(labels, c)).sum_dim(1);
    let pt = logp.clone().exp();
    (pt.neg().add_scalar(1.0).powf_scalar(gamma) * logp).mean().neg()
}

/// Tversky loss (Salehi et al. 2017, as `monai.losses.TverskyLoss(to_onehot_y=True, softmax=True)`): per sample
/// and class `1 − (TP + ε)/(TP + α·FP + β·FN + ε)` with soft counts and ε = 1e-5, averaged (background included).
/// `α = β = 0.5` is the soft Dice loss.
pub fn tversky<B: Backend>(logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>, alpha: f64, beta: f64) -> Tensor<B, 1> {
    let [n, c, d, h, w] = logits.dims();
    let p = softmax(logits, 1).reshape([n, c, d * h * w]);
    let g = one_hot(labels, c).reshape([n, c, d * h * w]);
    let tp = (p.clone() * g.clone()).sum_dim(2);
    let fp = (p.clone() * g.clone().neg().add_scalar(1.0)).sum_dim(2);
    let fneg = (p.neg().add_scalar(1.0) * g).sum_dim(2);
    let ti = (tp.clone() + 1e-5) / (tp + fp * alpha + fneg * beta + 1e-5);
    (ti.neg() + 1.0).mean()
}
