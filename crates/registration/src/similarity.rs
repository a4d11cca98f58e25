//! Similarity losses between a warped moving image and the fixed image (lower is better), each weighted by a mask
//! of the voxels whose sample fell inside the moving image.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

/// A similarity measure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Similarity {
    /// Mean squared difference (same modality, same intensity scale).
    Mse,
    /// Local normalised cross-correlation in cubic windows (`window` voxels a side; 9 as VoxelMorph); loss is
    /// `−mean(cc)`.
    Ncc {
        /// Window side.
        window: usize,
    },
    /// Mutual information from a Parzen-window joint histogram (`bins` bins on intensities scaled to [0, 1]);
    /// loss is `−MI`. For different modalities.
    Mi {
        /// Histogram bins.
        bins: usize,
    },
}

impl Similarity {
    /// By name: `mse`, `ncc` (window 9), `mi` (32 bins).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "mse" => Some(Self::Mse),
            "ncc" => Some(Self::Ncc { window: 9 }),
            "mi" => Some(Self::Mi { bins: 32 }),
            _ => None,
        }
    }

    /// The deformable stage's regulariser weight that suits this similarity when the user gives none: 1 for the mean
    /// squared difference and mutual information, 50 for local correlation, whose loss (a correlation in [0, 1] per
    /// voxel) pulls harder than a squared difference of normalised intensities. Measured between two real subjects
    /// (docs/REGISTRATION.md): local correlation at 50 raised grey- and white-matter Dice over the affine stage in
    /// both directions without folding; at 1 it folded 0.3–4.6 % of the voxels.
    pub fn default_smoothness(&self) -> f64 {
        match self {
            Self::Ncc { .. } => 50.0,
            Self::Mse | Self::Mi { .. } => 1.0,
        }
    }

    /// The loss of `warped` against `fixed` (`[1, 1, d, h, w]` each), over the voxels where `mask` is 1.
    pub fn loss<B: Backend>(&self, warped: Tensor<B, 5>, fixed: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 1> {
        match *self {
            Self::Mse => mse(warped, fixed, mask),
            Self::Ncc { window } => local_ncc(warped, fixed, mask, window).neg(),
            Self::Mi { bins } => mutual_information(warped, fixed, mask, bins).neg(),
        }
    }
}

fn masked_mean<B: Backend>(v: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 1> {
    (v * mask.clone()).sum() / (mask.sum() + 1e-6)
}

/// Masked mean squared difference.
pub fn mse<B: Backend>(a: Tensor<B, 5>, b: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 1> {
    masked_mean((a - b).powi_scalar(2), mask)
}

/// Sum over a centred cubic window (zero padded); a depth-1 image uses a square window. The box is separable: one
/// pass of `window` taps along each axis instead of `window³` taps per voxel.
fn window_sum<B: Backend>(x: Tensor<B, 5>, window: usize) -> Tensor<B, 5> {
    let [_, _, d, _, _] = x.dims();
    let device = x.device();
    let pass = |x: Tensor<B, 5>, axis: usize| {
        let mut size = [1usize; 3];
        size[axis] = window;
        let mut pad = [0usize; 3];
        pad[axis] = window / 2;
        let kernel = Tensor::<B, 5>::ones([1, 1, size[0], size[1], size[2]], &device);
        conv3d(x, kernel, None, ConvOptions::new([1, 1, 1], pad, [1, 1, 1], 1))
    };
    let x = pass(pass(x, 2), 1);
    if d == 1 { x } else { pass(x, 0) }
}

/// Mean local normalised cross-correlation (squared, as VoxelMorph's NCC): in each window
/// `cc = cov(a, b)² / (var(a) var(b) + 1e-5)`, averaged over the masked voxels.
pub fn local_ncc<B: Backend>(a: Tensor<B, 5>, b: Tensor<B, 5>, mask: Tensor<B, 5>, window: usize) -> Tensor<B, 1> {
    let [_, _, d, _, _] = a.dims();
    let n = (window * window * if d == 1 { 1 } else { window }) as f64;
    let sa = window_sum(a.clone(), window);
    let sb = window_sum(b.clone(), window);
    let saa = window_sum(a.clone() * a.clone(), window);
    let sbb = window_sum(b.clone() * b.clone(), window);
    let sab = window_sum(a * b, window);
    let cross = sab - sa.clone() * sb.clone() / n;
    let va = saa - sa.clone() * sa / n;
    let vb = sbb - sb.clone() * sb / n;
    let cc = cross.clone() * cross / (va * vb + 1e-5);
    masked_mean(cc, mask)
}

/// Intensities scaled to [0, 1] by the image's own range (no gradient through the range).
fn unit_range<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let lo = x.clone().detach().min().into_scalar();
    let hi = x.clone().detach().max().into_scalar();
    let lo: f64 = num(lo);
    let hi: f64 = num(hi);
    (x - lo) / (hi - lo).max(1e-6)
}

fn num<E: burn::tensor::ElementConversion>(e: E) -> f64 {
    e.elem::<f64>()
}

/// Mutual information of two images from a joint histogram with Gaussian Parzen windows (σ = one bin width),
/// each voxel weighted by the mask: `Σ p(a, b) log(p(a, b) / (p(a) p(b)))`.
pub fn mutual_information<B: Backend>(a: Tensor<B, 5>, b: Tensor<B, 5>, mask: Tensor<B, 5>, bins: usize) -> Tensor<B, 1> {
    let device = a.device();
    let m = a.dims().iter().product::<usize>();
    let centres: Vec<f32> = (0..bins).map(|i| (i as f32 + 0.5) / bins as f32).collect();
    let centres = Tensor::<B, 1>::from_data(centres.as_slice(), &device).reshape([1, bins]);
    let sigma = 1.0 / bins as f64;
    let parzen = |x: Tensor<B, 5>| {
        let x = unit_range(x).reshape([m, 1]);
        let z = (x - centres.clone()) / sigma;
        let w = (z.powi_scalar(2) * -0.5).exp();
        // Each voxel's weights sum to one over the bins.
        w.clone() / (w.sum_dim(1) + 1e-10)
    };
    let weight = mask.reshape([m, 1]);
    let wa = parzen(a) * weight.clone();
    let wb = parzen(b);
    let joint = wa.transpose().matmul(wb);
    let joint = joint.clone() / (joint.sum().reshape([1, 1]) + 1e-10);
    let pa = joint.clone().sum_dim(1);
    let pb = joint.clone().sum_dim(0);
    let outer = pa.matmul(pb) + 1e-10;
    (joint.clone() * ((joint + 1e-10) / outer).log()).sum()
}
