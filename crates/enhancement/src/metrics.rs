//! Image-quality metrics of an estimate against its reference, on arrays of 1 to 3 axes (first axis fastest).
//!
//! * [`psnr`]: `10·log10(R² / MSE)` for a stated data range `R` (for CT, the width of the HU window the values
//!   were clipped to; see [`clip`]).
//! * [`ssim`]: the structural similarity of Wang et al. (2004) with a Gaussian window of σ = 1.5 (radius 5),
//!   `K1 = 0.01`, `K2 = 0.03`, population (not sample) covariances, averaged over the voxels at least 5 from every
//!   border — scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
//!   use_sample_covariance=False, data_range=R)`, in 2D and 3D.
//! * [`rmse`], [`mae`] (in the image's units: HU for CT), [`nmse`] (`‖x − y‖² / ‖y‖²`).
//!
//! ```
//! use vesalius_enhancement::metrics::{psnr, ssim, rmse};
//! let reference: Vec<f32> = (0..32 * 32).map(|i| ((i % 32) as f32 * 0.3).sin()).collect();
//! let noisy: Vec<f32> = reference.iter().enumerate().map(|(i, v)| v + if i % 2 == 0 { 0.3 } else { -0.3 }).collect();
//! assert!((rmse(&noisy, &reference) - 0.3).abs() < 1e-6);
//! assert!((psnr(&noisy, &reference, 2.0) - 20.0 * (2.0f64 / 0.3).log10()).abs() < 1e-4);
//! assert!((ssim(&reference, &reference, &[32, 32], 2.0) - 1.0).abs() < 1e-9);
//! assert!(ssim(&noisy, &reference, &[32, 32], 2.0) < 0.9);
//! ```
use crate::filters::{convolve_axis, gaussian_kernel};

/// Mean squared error.
pub fn mse(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len(), "metrics compare arrays of one size");
    if x.is_empty() {
        return f64::NAN;
    }
    x.iter().zip(reference).map(|(a, b)| ((*a as f64) - (*b as f64)).powi(2)).sum::<f64>() / x.len() as f64
}

/// Root mean squared error.
pub fn rmse(x: &[f32], reference: &[f32]) -> f64 {
    mse(x, reference).sqrt()
}

/// Mean absolute error.
pub fn mae(x: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(x.len(), reference.len(), "metrics compare arrays of one size");
    x.iter().zip(reference).map(|(a, b)| ((*a as f64) - (*b as f64)).abs()).sum::<f64>() / x.len() as f64
}

/// Normalised mean squared error `‖x − y‖² / ‖y‖²`.
pub fn nmse(x: &[f32], reference: &[f32]) -> f64 {
    let e: f64 = x.iter().zip(reference).map(|(a, b)| ((*a as f64) - (*b as f64)).powi(2)).sum();
    let r: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    e / r
}

/// Peak signal-to-noise ratio in dB for data range `range` (infinite for identical arrays).
pub fn psnr(x: &[f32], reference: &[f32], range: f64) -> f64 {
    10.0 * (range * range / mse(x, reference)).log10()
}

/// The values clipped to `[low, high]` (a display window).
pub fn clip(x: &[f32], low: f32, high: f32) -> Vec<f32> {
    x.iter().map(|v| v.clamp(low, high)).collect()
}

/// Radius of the SSIM window (σ 1.5, truncated at 3.5 σ as scikit-image does).
pub const SSIM_RADIUS: usize = 5;

fn smooth(x: &[f32], shape: &[usize], kernel: &[f32]) -> Vec<f32> {
    (0..shape.len()).fold(x.to_vec(), |acc, axis| convolve_axis(&acc, shape, axis, kernel))
}

/// Structural similarity (mean SSIM) of `x` against `reference`, both of `shape`, for data range `range`.
///
/// Every axis must be longer than 2·[`SSIM_RADIUS`] (11 voxels), as scikit-image requires of its window;
/// otherwise the result is `NaN`.
pub fn ssim(x: &[f32], reference: &[f32], shape: &[usize], range: f64) -> f64 {
    assert_eq!(x.len(), reference.len(), "metrics compare arrays of one size");
    assert_eq!(shape.iter().product::<usize>(), x.len(), "shape does not match the data");
    if shape.iter().any(|&n| n <= 2 * SSIM_RADIUS) {
        return f64::NAN;
    }
    let kernel = gaussian_kernel(1.5, 3.5);
    // SSIM is unchanged when the data and its range are scaled together; scaling to range 1 keeps the f32
    // moments (E[x²] − E[x]²) accurate for data such as HU.
    let scale = (1.0 / range) as f32;
    let xs: Vec<f32> = x.iter().map(|v| v * scale).collect();
    let ys: Vec<f32> = reference.iter().map(|v| v * scale).collect();
    let range = 1.0f64;
    let xx: Vec<f32> = xs.iter().map(|v| v * v).collect();
    let yy: Vec<f32> = ys.iter().map(|v| v * v).collect();
    let xy: Vec<f32> = xs.iter().zip(&ys).map(|(a, b)| a * b).collect();
    let (ux, uy) = (smooth(&xs, shape, &kernel), smooth(&ys, shape, &kernel));
    let (uxx, uyy, uxy) = (smooth(&xx, shape, &kernel), smooth(&yy, shape, &kernel), smooth(&xy, shape, &kernel));
    let c1 = (0.01 * range).powi(2);
    let c2 = (0.03 * range).powi(2);
    let r = SSIM_RADIUS;
    let mut total = 0.0f64;
    let mut count = 0usize;
    vesalius_io::geometry::for_each_index(shape, |i, idx| {
        if idx.iter().zip(shape).all(|(&p, &n)| p >= r && p < n - r) {
            let (mx, my) = (ux[i] as f64, uy[i] as f64);
            let vx = uxx[i] as f64 - mx * mx;
            let vy = uyy[i] as f64 - my * my;
            let cxy = uxy[i] as f64 - mx * my;
            total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
            count += 1;
        }
    });
    total / count as f64
}

/// Every metric of one case, as reports carry them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quality {
    /// PSNR, dB, for the stated data range.
    pub psnr: f64,
    /// SSIM (NaN where an axis is 11 voxels or shorter).
    pub ssim: f64,
    /// RMSE in image units.
    pub rmse: f64,
    /// MAE in image units.
    pub mae: f64,
    /// NMSE.
    pub nmse: f64,
}

/// All metrics of `x` against `reference` after clipping both to `window` (data range: its width).
pub fn quality(x: &[f32], reference: &[f32], shape: &[usize], window: [f32; 2]) -> Quality {
    let (a, b) = (clip(x, window[0], window[1]), clip(reference, window[0], window[1]));
    let range = (window[1] - window[0]) as f64;
    Quality { psnr: psnr(&a, &b, range), ssim: ssim(&a, &b, shape, range), rmse: rmse(&a, &b), mae: mae(&a, &b), nmse: nmse(&a, &b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_of_a_constant_offset_depends_only_on_the_means() {
        // For y = x + c: variances and covariance agree, so SSIM reduces to the luminance term averaged over voxels.
        let shape = [16usize, 16];
        let x: Vec<f32> = (0..256).map(|i| ((i * 7) % 13) as f32 / 13.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v + 0.2).collect();
        let s = ssim(&y, &x, &shape, 1.0);
        assert!(s < 1.0 && s > 0.5, "{s}");
        assert!(ssim(&x[..160], &x[..160], &[10, 16], 1.0).is_nan()); // an axis too short for the window
    }
}
