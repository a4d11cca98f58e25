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

/// The cubic B-spline through `coefficients` at position `x` (in samples), mirror borders.
pub fn bspline_at(coefficients: &[f64], x: f64) -> f64 {
    let n = coefficients.len();
    let j0 = x.floor() as i64;
    (j0 - 1..=j0 + 2).map(|j| coefficients[mirror(j, n)] * vesalius_io::geometry::cubic_bspline(x - j as f64)).sum()
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

/// Immerkær's (1996) estimate of the standard deviation of additive noise in a `w × h` plane (the data
/// pipeline's [`vesalius_data::harmonise::estimate_noise`]).
pub fn noise_sigma(x: &[f32], w: usize, h: usize) -> f64 {
    match vesalius_io::Image::new(x.to_vec(), vec![w, h], 1, vesalius_io::IDENTITY, "float32") {
        Ok(plane) => vesalius_data::harmonise::estimate_noise(&plane),
        Err(_) => 0.0,
    }
}

/// Non-local means (Buades et al. 2005) of a `w × h` image: each pixel the weighted mean of the pixels in a
/// `(2·search + 1)²` window, weighted by `exp(−d² / h²)` where `d²` is the mean squared difference of the
/// `(2·patch + 1)²` patches around them (reflected borders). Computed offset by offset with box sums, so the cost is
/// `O(pixels × search window)` whatever the patch size.
pub fn non_local_means(x: &[f32], w: usize, h: usize, patch: usize, search: usize, filtering: f64) -> Vec<f32> {
    use crate::filters::reflect;
    if !(filtering > 0.0) {
        return x.to_vec();
    }
    let (pw, ph) = (w + 2 * patch, h + 2 * patch);
    // The image padded by `patch` on every side, so every patch of an in-image pixel is inside it.
    let pad: Vec<f64> = (0..pw * ph)
        .map(|k| {
            let (i, j) = ((k % pw) as i64 - patch as i64, (k / pw) as i64 - patch as i64);
            x[reflect(i, w) + w * reflect(j, h)] as f64
        })
        .collect();
    let at = |i: i64, j: i64| {
        pad[(i + patch as i64).clamp(0, pw as i64 - 1) as usize + pw * (j + patch as i64).clamp(0, ph as i64 - 1) as usize]
    };
    let area = ((2 * patch + 1) * (2 * patch + 1)) as f64;
    let inv_h2 = 1.0 / (filtering * filtering);
    let mut acc = vec![0.0f64; w * h];
    let mut wsum = vec![0.0f64; w * h];
    let mut integral = vec![0.0f64; (pw + 1) * (ph + 1)];
    let s = search as i64;
    for dy in -s..=s {
        for dx in -s..=s {
            // Integral image of the squared differences between the padded image and its shift.
            for j in 0..ph {
                let mut row = 0.0;
                for i in 0..pw {
                    let (ii, jj) = (i as i64 - patch as i64, j as i64 - patch as i64);
                    let d = at(ii, jj) - at(ii + dx, jj + dy);
                    row += d * d;
                    integral[(i + 1) + (pw + 1) * (j + 1)] = integral[(i + 1) + (pw + 1) * j] + row;
                }
            }
            let box_sum = |i0: usize, j0: usize, i1: usize, j1: usize| {
                integral[i1 + (pw + 1) * j1] - integral[i0 + (pw + 1) * j1] - integral[i1 + (pw + 1) * j0] + integral[i0 + (pw + 1) * j0]
            };
            for j in 0..h {
                for i in 0..w {
                    // The patch around (i, j) in padded coordinates spans [i, i + 2·patch].
                    let d2 = box_sum(i, j, i + 2 * patch + 1, j + 2 * patch + 1) / area;
                    let weight = (-d2 * inv_h2).exp();
                    acc[i + w * j] += weight * at(i as i64 + dx, j as i64 + dy);
                    wsum[i + w * j] += weight;
                }
            }
        }
    }
    acc.iter().zip(&wsum).map(|(a, s)| (a / s) as f32).collect()
}

/// Filtering strengths of the non-local-means baseline, as multiples of the estimated noise σ.
pub const NLM_GRID: [f64; 6] = [0.4, 0.6, 0.8, 1.0, 1.3, 1.6];

#[cfg(test)]
mod nlm_tests {
    use super::*;

    #[test]
    fn non_local_means_removes_noise_from_a_piecewise_constant_image() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let (w, h) = (48, 40);
        let clean: Vec<f32> = (0..w * h).map(|k| if (k % w) < 20 || (k / w) > 25 { 1.0 } else { 0.0 }).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let normal = Normal::new(0.0, 0.1).unwrap();
        let noisy: Vec<f32> = clean.iter().map(|v| v + normal.sample(&mut rng) as f32).collect();
        let sigma = noise_sigma(&noisy, w, h);
        assert!((sigma - 0.1).abs() < 0.02, "estimated σ {sigma}");
        let out = non_local_means(&noisy, w, h, 2, 5, sigma);
        let err = |x: &[f32]| crate::metrics::rmse(x, &clean);
        assert!(err(&out) < 0.4 * err(&noisy), "RMSE {} → {}", err(&noisy), err(&out));
        // A constant image stays constant.
        let flat = vec![0.3f32; 100];
        assert!(non_local_means(&flat, 10, 10, 1, 3, 0.1).iter().all(|v| (v - 0.3).abs() < 1e-6));
    }
}
