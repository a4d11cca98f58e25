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

fn pack(v: &[Complex32]) -> Vec<f32> {
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

/// The mask plane (1 on measured lines) of a `w × h` plane.
pub fn mask_plane(w: usize, lines: &[bool]) -> Vec<f32> {
    lines.iter().flat_map(|&l| std::iter::repeat_n(if l { 1.0 } else { 0.0 }, w)).collect()
}

/// Magnitudes of a packed complex plane.
pub fn magnitude(packed: &[f32]) -> Vec<f32> {
    let n = packed.len() / 2;
    (0..n).map(|i| packed[i].hypot(packed[n + i])).collect()
}
