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

/// Index `j` under whole-sample mirror borders (`c b | a b c d | c b`), as scipy's `mode="mirror"`.
fn mirror(j: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let m = j.rem_euclid(period);
    (if m >= n as i64 { period - m } else { m }) as usize
}

/// Cubic B-spline coefficients of one line of samples (Unser's recursive prefilter, pole `√3 − 2`, mirror
/// borders), so that the spline through them interpolates the samples.
pub fn bspline_coefficients(samples: &[f64]) -> Vec<f64> {
    let n = samples.len();
    if n < 2 {
        return samples.to_vec();
    }
    let z = 3f64.sqrt() - 2.0;
    let mut c = vec![0.0; n];
    // Causal initialisation for mirror borders (Thévenaz et al. 2000): truncated where z^k is negligible,
    // exact for shorter lines.
    let horizon = ((f64::EPSILON.ln() / z.abs().ln()).ceil() as usize).max(1);
    c[0] = if horizon < n {
        let mut zk = 1.0;
        let mut sum = 0.0;
        for k in 0..horizon {
            sum += zk * samples[k];
            zk *= z;
        }
        sum
    } else {
        let iz = 1.0 / z;
        let mut zn = z;
        let mut z2n = z.powi(n as i32 - 1);
        let mut sum = samples[0] + z2n * samples[n - 1];
        z2n = z2n * z2n * iz;
        for k in 1..n - 1 {
            sum += (zn + z2n) * samples[k];
            zn *= z;
            z2n *= iz;
        }
        sum / (1.0 - zn * zn)
    };
    for k in 1..n {
        c[k] = samples[k] + z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
    c.iter().map(|v| v * 6.0).collect()
}

fn beta3(t: f64) -> f64 {
    let a = t.abs();
    if a < 1.0 {
        2.0 / 3.0 - a * a + a * a * a / 2.0
    } else if a < 2.0 {
        (2.0 - a).powi(3) / 6.0
    } else {
        0.0
    }
}

/// The cubic B-spline through `coefficients` at position `x` (in samples), mirror borders.
pub fn bspline_at(coefficients: &[f64], x: f64) -> f64 {
    let n = coefficients.len();
    let j0 = x.floor() as i64;
    (j0 - 1..=j0 + 2).map(|j| coefficients[mirror(j, n)] * beta3(x - j as f64)).sum()
}

/// Cubic B-spline interpolation of `data` (of `shape`) onto the grid whose `factor`-blocks along `axis` are its
/// voxels: fine index `f` lies at coarse position `(f − (factor − 1)/2) / factor`. Returns the data and its shape.
pub fn bspline_upsample(data: &[f32], shape: &[usize], axis: usize, factor: usize) -> (Vec<f32>, Vec<usize>) {
    let n = shape[axis];
    let stride: usize = shape[..axis].iter().product();
    let outer: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape[axis] = n * factor;
    let m = n * factor;
    let mut out = vec![0.0f32; stride * m * outer];
    let mut line = vec![0.0f64; n];
    let shift = (factor as f64 - 1.0) / 2.0;
    for o in 0..outer {
        for s in 0..stride {
            for i in 0..n {
                line[i] = data[s + stride * (i + n * o)] as f64;
            }
            let c = bspline_coefficients(&line);
            for f in 0..m {
                out[s + stride * (f + m * o)] = bspline_at(&c, (f as f64 - shift) / factor as f64) as f32;
            }
        }
    }
    (out, out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_bsplines_interpolate_their_samples_and_reproduce_cubics() {
        let samples: Vec<f64> = (0..12).map(|i| ((i * 7) % 5) as f64 - 1.5).collect();
        let c = bspline_coefficients(&samples);
        for (i, s) in samples.iter().enumerate() {
            assert!((bspline_at(&c, i as f64) - s).abs() < 1e-9, "sample {i}");
        }
        // A cubic polynomial is reproduced exactly away from the borders.
        let p = |x: f64| 0.1 * x * x * x - x * x + 2.0 * x - 3.0;
        let c = bspline_coefficients(&(0..40).map(|i| p(i as f64)).collect::<Vec<_>>());
        for x in [10.25, 17.5, 23.75] {
            assert!((bspline_at(&c, x) - p(x)).abs() < 1e-6 * p(x).abs().max(1.0), "x = {x}");
        }
    }

    #[test]
    fn upsampling_keeps_a_linear_ramp_on_the_fine_grid() {
        // Coarse voxels of 4 fine slices each: the coarse value k is the mean of fine positions 4k..4k+3 of the
        // ramp f ↦ f, i.e. 4k + 1.5; the spline gives the ramp back in the interior.
        // (Mirror borders bend the ramp within a few coarse voxels of either end.)
        let coarse: Vec<f32> = (0..40).map(|k| 4.0 * k as f32 + 1.5).collect();
        let (fine, shape) = bspline_upsample(&coarse, &[1, 40], 1, 4);
        assert_eq!(shape, vec![1, 160]);
        for f in 40..120 {
            assert!((fine[f] - f as f32).abs() < 1e-3, "fine index {f}: {}", fine[f]);
        }
    }
}
