//! Cartesian k-space sampling of planes, as the reconstruction network sees it: the measured lines `k₀ = m ⊙ F x`
//! and the zero-filled complex image `F⁻¹ k₀`, packed as two channels (real, imaginary), first axis fastest.
//!
//! ```
//! use vesalius_enhancement::kspace::measure;
//! let plane: Vec<f32> = (0..16).map(|v| v as f32).collect();
//! let (k0, x0) = measure(&plane, 4, 4, &[true; 4]);
//! assert_eq!(k0.len(), 32);
//! assert!(x0[..16].iter().zip(&plane).all(|(a, b)| (a - b).abs() < 1e-4)); // fully sampled: the image itself
//! assert!(x0[16..].iter().all(|v| v.abs() < 1e-4));                       // with no imaginary part
//! ```
use rustfft::num_complex::Complex32;

use crate::fft::{fft2, ifft2};

/// Complex values packed as `[re…, im…]`.
pub(crate) fn pack(v: &[Complex32]) -> Vec<f32> {
    v.iter().map(|c| c.re).chain(v.iter().map(|c| c.im)).collect()
}

/// The measured k-space (lines `y` of a `w × h` plane where `lines[y]`) and the zero-filled complex image, each
/// `[re…, im…]` of `2·w·h` values.
pub fn measure(plane: &[f32], w: usize, h: usize, lines: &[bool]) -> (Vec<f32>, Vec<f32>) {
    let mut k: Vec<Complex32> = plane.iter().map(|&v| Complex32::new(v, 0.0)).collect();
    fft2(&mut k, w, h);
    for y in 0..h {
        if !lines[y] {
            k[w * y..w * (y + 1)].iter_mut().for_each(|v| *v = Complex32::new(0.0, 0.0));
        }
    }
    let mut x = k.clone();
    ifft2(&mut x, w, h);
    (pack(&k), pack(&x))
}

/// Which of `h` phase-encoding lines are the `round(centre·h)` lowest frequencies (at least one), the fully sampled
/// centre of every mask [`crate::degrade::line_mask`] draws.
pub fn centre_lines(h: usize, centre: f64) -> Vec<bool> {
    let freq = |y: usize| if y < h.div_ceil(2) { y as i64 } else { y as i64 - h as i64 };
    let mut order: Vec<usize> = (0..h).collect();
    order.sort_by_key(|&y| (freq(y).abs(), freq(y)));
    let n_centre = ((centre * h as f64).round() as usize).clamp(1, h.max(1));
    let mut keep = vec![false; h];
    for &y in order.iter().take(n_centre) {
        keep[y] = true;
    }
    keep
}

/// The intensity scale a reconstruction network works in, taken from what every measurement holds: the 99.5th
/// percentile of the magnitudes of `planes` (complex, `w × h` each) reconstructed from their fully sampled centre
/// lines alone ([`centre_lines`]). It does not depend on the random lines of a mask, so training (which knows
/// the reference) and prediction (which has only the measured k-space) scale their inputs alike. 1 when the
/// planes hold no signal.
pub fn calibration_scale(planes: impl Iterator<Item = Vec<Complex32>>, w: usize, h: usize, centre: f64) -> f32 {
    let keep = centre_lines(h, centre);
    let mut magnitudes = Vec::new();
    for mut k in planes {
        if k.len() != w * h {
            continue;
        }
        fft2(&mut k, w, h);
        for (y, kept) in keep.iter().enumerate() {
            if !kept {
                k[w * y..w * (y + 1)].iter_mut().for_each(|v| *v = Complex32::new(0.0, 0.0));
            }
        }
        ifft2(&mut k, w, h);
        magnitudes.extend(k.iter().map(|v| v.norm()));
    }
    crate::data::Intensity::of(&crate::recipe::IntensitySpec::Scheme(crate::recipe::IntensityScheme::Percentile), &magnitudes).high
}

/// The mask plane (1 on measured lines) of a `w × h` plane.
pub fn mask_plane(w: usize, lines: &[bool]) -> Vec<f32> {
    lines.iter().flat_map(|&l| std::iter::repeat_n(if l { 1.0 } else { 0.0 }, w)).collect()
}

/// Magnitudes of a packed complex plane.
pub fn magnitude(packed: &[f32]) -> Vec<f32> {
    let n = packed.len() / 2;
    (0..n).map(|i| packed[i].hypot(packed[n + i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};
    use vesalius_nets::dft2;
    type B = burn::backend::Flex;
    type AB = burn::backend::Autodiff<B>;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn the_matrix_dft_of_the_networks_equals_rustfft() {
        for (w, h) in [(8, 8), (7, 5), (33, 20)] {
            let (re, im) = (values(w * h, 1), values(w * h, 2));
            let mut reference: Vec<Complex32> = re.iter().zip(&im).map(|(a, b)| Complex32::new(*a, *b)).collect();
            fft2(&mut reference, w, h);
            let t = |v: &[f32]| Tensor::<B, 4>::from_data(TensorData::new(v.to_vec(), [1, 1, h, w]), &Default::default());
            let (kr, ki) = dft2(t(&re), t(&im), false);
            let (kr, ki): (Vec<f32>, Vec<f32>) = (kr.into_data().to_vec().unwrap(), ki.into_data().to_vec().unwrap());
            for (i, c) in reference.iter().enumerate() {
                assert!((kr[i] - c.re).abs() < 1e-3 && (ki[i] - c.im).abs() < 1e-3, "{w}×{h} bin {i}: ({}, {}) vs {c}", kr[i], ki[i]);
            }
            let mut back = reference.clone();
            ifft2(&mut back, w, h);
            let (r, _) = dft2(
                Tensor::<B, 4>::from_data(
                    TensorData::new(reference.iter().map(|c| c.re).collect::<Vec<_>>(), [1, 1, h, w]),
                    &Default::default(),
                ),
                Tensor::<B, 4>::from_data(
                    TensorData::new(reference.iter().map(|c| c.im).collect::<Vec<_>>(), [1, 1, h, w]),
                    &Default::default(),
                ),
                true,
            );
            let r: Vec<f32> = r.into_data().to_vec().unwrap();
            assert!(r.iter().zip(&back).all(|(a, b)| (a - b.re).abs() < 1e-4));
        }
    }

    #[test]
    fn the_matrix_dft_is_differentiable_parseval_gradient() {
        // Σ|F x|² = N Σ|x|², so its gradient with respect to the real part is 2·N·x.
        let (w, h) = (6, 5);
        let re = values(w * h, 3);
        let x = Tensor::<AB, 4>::from_data(TensorData::new(re.clone(), [1, 1, h, w]), &Default::default()).require_grad();
        let zero = Tensor::<AB, 4>::zeros([1, 1, h, w], &Default::default());
        let (kr, ki) = dft2(x.clone(), zero, false);
        let energy = (kr.powi_scalar(2) + ki.powi_scalar(2)).sum();
        let grads = energy.backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        for (gi, xi) in g.iter().zip(&re) {
            assert!((gi - 2.0 * (w * h) as f32 * xi).abs() < 1e-2, "{gi} vs {}", 2.0 * (w * h) as f32 * xi);
        }
    }
}
