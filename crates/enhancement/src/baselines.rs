//! The classic methods reported beside every network: the degraded input itself, and a Gaussian filter whose σ
//! is chosen on validation cases (never on the cases it is scored on).
//!
//! ```
//! use vesalius_enhancement::baselines::{choose_gaussian_sigma, SIGMA_GRID};
//! // A smooth ramp with alternating ±1 noise: some smoothing helps, so σ > 0 wins.
//! let clean: Vec<f32> = (0..40 * 40).map(|i| (i % 40) as f32).collect();
//! let noisy: Vec<f32> = clean.iter().enumerate().map(|(i, v)| v + if (i + i / 40) % 2 == 0 { 1.0 } else { -1.0 }).collect();
//! let sigma = choose_gaussian_sigma(&[(&noisy[..], &clean[..], &[40usize, 40][..])], &SIGMA_GRID, [0.0, 40.0]);
//! assert!(sigma > 0.0);
//! ```
use crate::filters::gaussian_filter;
use crate::metrics::{clip, psnr};

/// The σ values (pixels) tried for the Gaussian-filter baseline; 0 is the unfiltered input.
pub const SIGMA_GRID: [f64; 13] = [0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0];

/// In-plane Gaussian filter (the first two axes) of σ pixels, scipy's truncation at 4 σ.
pub fn gaussian_in_plane(x: &[f32], shape: &[usize], sigma: f64) -> Vec<f32> {
    let sigmas: Vec<f64> = (0..shape.len()).map(|a| if a < 2 { sigma } else { 0.0 }).collect();
    gaussian_filter(x, shape, &sigmas, 4.0)
}

/// The value of `grid` with the highest `score` (the first of equals; `NaN` scores never win).
pub fn choose_sigma(grid: &[f64], mut score: impl FnMut(f64) -> f64) -> f64 {
    let mut best = (f64::NEG_INFINITY, grid.first().copied().unwrap_or(0.0));
    for &sigma in grid {
        let s = score(sigma);
        if s > best.0 {
            best = (s, sigma);
        }
    }
    best.1
}

/// The σ of `grid` whose in-plane Gaussian filter gives the highest mean PSNR (in `window`) over `cases`
/// (degraded, clean, shape).
pub fn choose_gaussian_sigma(cases: &[(&[f32], &[f32], &[usize])], grid: &[f64], window: [f32; 2]) -> f64 {
    let range = (window[1] - window[0]) as f64;
    choose_sigma(grid, |sigma| {
        cases
            .iter()
            .map(|(x, y, shape)| {
                let f = gaussian_in_plane(x, shape, sigma);
                psnr(&clip(&f, window[0], window[1]), &clip(y, window[0], window[1]), range)
            })
            .sum::<f64>()
            / cases.len().max(1) as f64
    })
}
