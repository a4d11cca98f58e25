//! Separable Gaussian filtering of 1D to 3D arrays (first axis fastest), as `scipy.ndimage.gaussian_filter`
//! computes it: a kernel of radius `⌊truncate·σ + 0.5⌋`, normalised to sum 1, with `reflect` borders
//! (`d c b a | a b c d | d c b a`).
//!
//! ```
//! use vesalius_enhancement::filters::gaussian_filter;
//! let mut x = vec![0.0f32; 9];
//! x[4] = 1.0;
//! let y = gaussian_filter(&x, &[9], &[1.0], 4.0);
//! assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-6);  // mass is kept
//! assert!(y[4] > y[3] && (y[3] - y[5]).abs() < 1e-7);   // peaked and symmetric
//! ```

/// The normalised 1D Gaussian kernel of `sigma` with radius `⌊truncate·σ + 0.5⌋` (at least 0).
pub fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f32> {
    if !(sigma > 0.0) {
        return vec![1.0];
    }
    let radius = (truncate * sigma + 0.5).floor() as i64;
    let w: Vec<f64> = (-radius..=radius).map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

/// Index of `i` (possibly outside `0..n`) under `reflect` borders.
pub(crate) fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// Filters `data` of `shape` along `axis` with `kernel` (odd length, centred).
pub fn convolve_axis(data: &[f32], shape: &[usize], axis: usize, kernel: &[f32]) -> Vec<f32> {
    if kernel.len() == 1 && kernel[0] == 1.0 {
        return data.to_vec();
    }
    let n = shape[axis];
    let stride: usize = shape[..axis].iter().product();
    let outer: usize = shape[axis + 1..].iter().product();
    let r = (kernel.len() / 2) as i64;
    let mut out = vec![0.0f32; data.len()];
    let mut line = vec![0.0f32; n];
    for o in 0..outer {
        for s in 0..stride {
            let base = s + o * stride * n;
            for i in 0..n {
                line[i] = data[base + i * stride];
            }
            for i in 0..n {
                let mut acc = 0.0f32;
                for (k, &wk) in kernel.iter().enumerate() {
                    acc += wk * line[reflect(i as i64 + k as i64 - r, n)];
                }
                out[base + i * stride] = acc;
            }
        }
    }
    out
}

/// Gaussian filter of `data` (of `shape`, first axis fastest) with one σ per axis (in voxels; 0 leaves an axis
/// alone).
pub fn gaussian_filter(data: &[f32], shape: &[usize], sigma: &[f64], truncate: f64) -> Vec<f32> {
    let mut out = data.to_vec();
    for (axis, &s) in sigma.iter().enumerate().take(shape.len()) {
        if s > 0.0 {
            out = convolve_axis(&out, shape, axis, &gaussian_kernel(s, truncate));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_borders_repeat_the_edge_sample() {
        let idx: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }

    #[test]
    fn kernel_radius_and_constant_images() {
        assert_eq!(gaussian_kernel(1.5, 3.5).len(), 11); // radius int(3.5 * 1.5 + 0.5) = 5, as scikit-image's SSIM
        let x = vec![3.0f32; 5 * 4 * 3];
        let y = gaussian_filter(&x, &[5, 4, 3], &[1.0, 2.0, 0.7], 4.0);
        assert!(y.iter().all(|v| (v - 3.0).abs() < 1e-5));
    }
}
