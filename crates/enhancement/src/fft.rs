//! Two-dimensional discrete Fourier transforms of images (through `rustfft`), in the layout of
//! [`vesalius_io::Image`]: `w × h` values, the first axis fastest.
//!
//! The forward transform is unnormalised and the inverse divides by `w·h` (NumPy's `norm="backward"`), so
//! `ifft2(fft2(x)) == x`. [`fftshift`] / [`ifftshift`] move the zero frequency to the centre and back, as NumPy's
//! functions of the same names do.
//!
//! ```
//! use rustfft::num_complex::Complex32;
//! use vesalius_enhancement::fft::{fft2, ifft2};
//! let x: Vec<Complex32> = (0..12).map(|v| Complex32::new(v as f32, 0.0)).collect();
//! let mut k = x.clone();
//! fft2(&mut k, 4, 3);
//! assert!((k[0].re - 66.0).abs() < 1e-4); // the DC term is the sum
//! ifft2(&mut k, 4, 3);
//! assert!(k.iter().zip(&x).all(|(a, b)| (a - b).norm() < 1e-4));
//! ```
use rustfft::FftPlanner;
use rustfft::num_complex::Complex32;

fn transform(data: &mut [Complex32], w: usize, h: usize, inverse: bool) {
    assert_eq!(data.len(), w * h, "fft2: {} values for a {w}×{h} image", data.len());
    if data.is_empty() {
        return;
    }
    let mut planner = FftPlanner::<f32>::new();
    let (row, col) = if inverse {
        (planner.plan_fft_inverse(w), planner.plan_fft_inverse(h))
    } else {
        (planner.plan_fft_forward(w), planner.plan_fft_forward(h))
    };
    for r in data.chunks_exact_mut(w) {
        row.process(r);
    }
    let mut column = vec![Complex32::new(0.0, 0.0); h];
    for x in 0..w {
        for y in 0..h {
            column[y] = data[x + w * y];
        }
        col.process(&mut column);
        for y in 0..h {
            data[x + w * y] = column[y];
        }
    }
    if inverse {
        let s = 1.0 / (w * h) as f32;
        data.iter_mut().for_each(|v| *v *= s);
    }
}

/// In-place forward 2D DFT of a `w × h` image (first axis fastest), unnormalised.
pub fn fft2(data: &mut [Complex32], w: usize, h: usize) {
    transform(data, w, h, false);
}

/// In-place inverse 2D DFT, divided by `w·h`.
pub fn ifft2(data: &mut [Complex32], w: usize, h: usize) {
    transform(data, w, h, true);
}

fn roll(data: &[Complex32], w: usize, h: usize, sx: usize, sy: usize) -> Vec<Complex32> {
    let mut out = vec![Complex32::new(0.0, 0.0); data.len()];
    for y in 0..h {
        for x in 0..w {
            out[(x + sx) % w + w * ((y + sy) % h)] = data[x + w * y];
        }
    }
    out
}

/// Moves the zero frequency to the centre (index `w/2`, `h/2`).
pub fn fftshift(data: &[Complex32], w: usize, h: usize) -> Vec<Complex32> {
    roll(data, w, h, w / 2, h / 2)
}

/// Undoes [`fftshift`].
pub fn ifftshift(data: &[Complex32], w: usize, h: usize) -> Vec<Complex32> {
    roll(data, w, h, w - w / 2, h - h / 2)
}

/// The real 1D DFT-based circular convolution of `signal` with `kernel` (same length), via `rustfft`.
pub(crate) fn circular_convolve(signal: &[f32], kernel_spectrum: &[Complex32]) -> Vec<f32> {
    let n = signal.len();
    let mut planner = FftPlanner::<f32>::new();
    let mut buf: Vec<Complex32> = signal.iter().map(|&v| Complex32::new(v, 0.0)).collect();
    planner.plan_fft_forward(n).process(&mut buf);
    for (b, k) in buf.iter_mut().zip(kernel_spectrum) {
        *b *= k;
    }
    planner.plan_fft_inverse(n).process(&mut buf);
    buf.iter().map(|v| v.re / n as f32).collect()
}

/// The DFT of a real sequence.
pub(crate) fn spectrum(x: &[f32]) -> Vec<Complex32> {
    let mut buf: Vec<Complex32> = x.iter().map(|&v| Complex32::new(v, 0.0)).collect();
    FftPlanner::<f32>::new().plan_fft_forward(x.len()).process(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct O(n²) definition.
    fn dft2(x: &[Complex32], w: usize, h: usize) -> Vec<Complex32> {
        let mut out = vec![Complex32::new(0.0, 0.0); w * h];
        for v in 0..h {
            for u in 0..w {
                let mut acc = rustfft::num_complex::Complex64::new(0.0, 0.0);
                for y in 0..h {
                    for xx in 0..w {
                        let phase = -2.0 * std::f64::consts::PI * ((u * xx) as f64 / w as f64 + (v * y) as f64 / h as f64);
                        let val = x[xx + w * y];
                        acc += rustfft::num_complex::Complex64::new(val.re as f64, val.im as f64)
                            * rustfft::num_complex::Complex64::from_polar(1.0, phase);
                    }
                }
                out[u + w * v] = Complex32::new(acc.re as f32, acc.im as f32);
            }
        }
        out
    }

    #[test]
    fn fft2_matches_the_definition_on_odd_and_even_sizes() {
        for (w, h) in [(5, 3), (8, 6), (7, 7)] {
            let x: Vec<Complex32> = (0..w * h).map(|i| Complex32::new(((i * 37) % 11) as f32 - 5.0, ((i * 13) % 7) as f32)).collect();
            let mut k = x.clone();
            fft2(&mut k, w, h);
            let d = dft2(&x, w, h);
            for (a, b) in k.iter().zip(&d) {
                assert!((a - b).norm() < 1e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn shifts_put_dc_in_the_centre_and_undo_each_other() {
        for (w, h) in [(4, 4), (5, 3)] {
            let mut x = vec![Complex32::new(0.0, 0.0); w * h];
            x[0] = Complex32::new(1.0, 0.0);
            let s = fftshift(&x, w, h);
            assert_eq!(s[w / 2 + w * (h / 2)].re, 1.0);
            assert_eq!(ifftshift(&s, w, h), x);
        }
    }
}
