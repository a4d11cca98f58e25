//! Treatment-response pairs with a known change: a tumour in a real image, shrunk or grown by a smooth radial warp.
//!
//! [`tumour_slices`] cuts square in-plane crops (a fixed pixel size, centred on the tumour) out of every axial slice
//! where a tumour mask covers enough area, intensities standardised by the crop's mean and standard deviation.
//! [`response_pair`] makes a "before" and "after" crop from one slice: the after image is the before image warped by
//! a radial map about the tumour's centre that scales distances by `s` inside the tumour's equivalent radius `R` and
//! blends smoothly back to the identity by `4R` (monotone for area ratios from 0.1 to 3), then shifted by up to a few
//! pixels (misregistration), given fresh noise and standardised on its own, as a new scan's crop would be. The target
//! is the natural log of the warped mask's area over the original mask's area — measured on the warped mask, not the
//! nominal `s²`.
//!
//! ```
//! use vesalius_data::response::{response_pair, Jitter, TumourSlice};
//! // a bright disc of radius 6 px in a 32 × 32 crop
//! let side = 32;
//! let mask: Vec<bool> = (0..side * side).map(|i| {
//!     let (x, y) = ((i % side) as f64 - 15.5, (i / side) as f64 - 15.5);
//!     x * x + y * y <= 36.0
//! }).collect();
//! let pixels = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
//! let slice = TumourSlice { pixels, mask, side, source: "disc".into(), centre: [15.5, 15.5, 0.0], step: [1.0, 1.0] };
//! let pair = response_pair(&slice, 0.5f64.ln(), &Jitter::none(), 7);
//! assert!((pair.log_ratio - 0.5f64.ln()).abs() < 0.1); // half the area
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{DataError, Image, Result};

/// One tumour slice: a square crop and its tumour mask, row-major (`y * side + x`).
#[derive(Clone, Debug, PartialEq)]
pub struct TumourSlice {
    /// Standardised intensities.
    pub pixels: Vec<f32>,
    /// Tumour pixels.
    pub mask: Vec<bool>,
    /// Side of the crop.
    pub side: usize,
    /// Where it came from (`file:slice`).
    pub source: String,
    /// The crop's centre in the volume, voxel index `[x, y, slice]` (fractional in-plane).
    pub centre: [f64; 3],
    /// Voxels per crop pixel along x and y (`pixel_mm / spacing`).
    pub step: [f64; 2],
}

impl TumourSlice {
    /// Puts a map over the crop (`side × side`, row-major) back on its slice of the volume's grid (`nx × ny`, first
    /// axis fastest), bilinearly; voxels outside the crop keep their value in `plane`.
    pub fn paste(&self, map: &[f32], plane: &mut [f32], nx: usize, ny: usize) {
        let half = (self.side as f64 - 1.0) / 2.0;
        for y in 0..ny {
            for x in 0..nx {
                let u = (x as f64 - self.centre[0]) / self.step[0] + half;
                let v = (y as f64 - self.centre[1]) / self.step[1] + half;
                if u >= 0.0 && v >= 0.0 && u <= (self.side - 1) as f64 && v <= (self.side - 1) as f64 {
                    plane[y * nx + x] = bilinear(map, self.side, u, v);
                }
            }
        }
    }
}

/// A before/after pair with its known change.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponsePair {
    /// Before, row-major.
    pub pre: Vec<f32>,
    /// After.
    pub post: Vec<f32>,
    /// `ln(area after / area before)`.
    pub log_ratio: f64,
}

/// Nuisance changes between the two scans.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// Largest shift of the after image, pixels (uniform in each direction).
    pub shift_px: f64,
    /// Standard deviation of the added Gaussian noise (standardised units), on both images.
    pub noise: f64,
}

impl Jitter {
    /// No nuisance change.
    pub fn none() -> Self {
        Self { shift_px: 0.0, noise: 0.0 }
    }
}

fn bilinear(img: &[f32], side: usize, x: f64, y: f64) -> f32 {
    let (x, y) = (x.clamp(0.0, (side - 1) as f64), y.clamp(0.0, (side - 1) as f64));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
    let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let at = |xx: usize, yy: usize| img[yy * side + xx];
    (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy) + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy
}

/// Crops of every axial slice of `image` where `mask` (> 0.5) covers at least `min_area_mm2`: `side` pixels of
/// `pixel_mm` centred on the slice's tumour centroid, resampled bilinearly (the mask too, kept where ≥ 0.5). The two
/// images must share their grid; errors name the file.
pub fn tumour_slices(image: &Image, mask: &Image, side: usize, pixel_mm: f64, min_area_mm2: f64, name: &str) -> Result<Vec<TumourSlice>> {
    if image.shape() != mask.shape() || image.ndim() != 3 {
        return Err(DataError::Invalid(format!(
            "{name}: image {:?} and mask {:?} must be 3D volumes on one grid",
            image.shape(),
            mask.shape()
        )));
    }
    if !((4..=512).contains(&side) && pixel_mm > 0.0 && pixel_mm.is_finite()) {
        return Err(DataError::Invalid(format!("{name}: crop side must lie in 4..=512 and the pixel size be positive")));
    }
    let sh = image.shape();
    let (nx, ny, nz) = (sh[0], sh[1], sh[2]);
    let sp = image.spacing();
    let (img, msk) = (image.channel(0), mask.channel(0));
    let mut out = Vec::new();
    for z in 0..nz {
        let plane = |v: &[f32]| -> Vec<f32> { v[z * nx * ny..(z + 1) * nx * ny].to_vec() };
        let (pi, pm) = (plane(img), plane(msk));
        let inside: Vec<(usize, usize)> = (0..nx * ny).filter(|&i| pm[i] > 0.5).map(|i| (i % nx, i / nx)).collect();
        if (inside.len() as f64) * sp[0] * sp[1] < min_area_mm2 {
            continue;
        }
        let cx = inside.iter().map(|p| p.0 as f64).sum::<f64>() / inside.len() as f64;
        let cy = inside.iter().map(|p| p.1 as f64).sum::<f64>() / inside.len() as f64;
        let half = (side as f64 - 1.0) / 2.0;
        let sample = |v: &[f32], u: usize, w: usize| -> f32 {
            let x = cx + (u as f64 - half) * pixel_mm / sp[0];
            let y = cy + (w as f64 - half) * pixel_mm / sp[1];
            if x < 0.0 || y < 0.0 || x > (nx - 1) as f64 || y > (ny - 1) as f64 {
                return f32::NAN;
            }
            let (x0, y0) = (x.floor() as usize, y.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(nx - 1), (y0 + 1).min(ny - 1));
            let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
            let at = |a: usize, b: usize| v[b * nx + a];
            (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy) + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy
        };
        let mut pixels: Vec<f32> = (0..side * side).map(|i| sample(&pi, i % side, i / side)).collect();
        let mask: Vec<bool> = (0..side * side).map(|i| sample(&pm, i % side, i / side) >= 0.5).collect();
        // outside the image: the crop's mean; then standardise
        let known: Vec<f32> = pixels.iter().copied().filter(|v| v.is_finite()).collect();
        let mean = (known.iter().map(|&v| v as f64).sum::<f64>() / known.len().max(1) as f64) as f32;
        pixels.iter_mut().filter(|v| !v.is_finite()).for_each(|v| *v = mean);
        standardise(&mut pixels);
        if mask.iter().filter(|&&m| m).count() >= 4 {
            out.push(TumourSlice {
                pixels,
                mask,
                side,
                source: format!("{name}:{z}"),
                centre: [cx, cy, z as f64],
                step: [pixel_mm / sp[0], pixel_mm / sp[1]],
            });
        }
    }
    Ok(out)
}

/// `(v − mean) / sd` in place (sd floored at 1e-6).
fn standardise(v: &mut [f32]) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x = ((*x as f64 - mean) / sd) as f32);
}

/// The blend weight of the warp: 1 inside `r0`, 0 beyond `r1`, a smooth (cubic) step between.
fn blend(rho: f64, r0: f64, r1: f64) -> f64 {
    if rho <= r0 {
        1.0
    } else if rho >= r1 {
        0.0
    } else {
        let t = (rho - r0) / (r1 - r0);
        1.0 - t * t * (3.0 - 2.0 * t)
    }
}

/// A pair from `slice` whose tumour area changes by about `target_log_ratio` (natural log), with `jitter`, seeded.
pub fn response_pair(slice: &TumourSlice, target_log_ratio: f64, jitter: &Jitter, seed: u64) -> ResponsePair {
    let side = slice.side;
    let c = (side as f64 - 1.0) / 2.0;
    let area = slice.mask.iter().filter(|&&m| m).count() as f64;
    let r = (area / std::f64::consts::PI).sqrt().max(1.0);
    let s = (target_log_ratio / 2.0).exp();
    // forward radial map ρ ↦ ρ·g(ρ), g = 1 + (s − 1)·blend; inverted by bisection for each output radius
    let forward = |rho: f64| rho * (1.0 + (s - 1.0) * blend(rho, r, 4.0 * r));
    let inverse = |out: f64| -> f64 {
        let (mut lo, mut hi) = (0.0, out.max(1.0) * 16.0);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if forward(mid) < out {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (dx, dy) = (rng.random_range(-1.0..=1.0) * jitter.shift_px, rng.random_range(-1.0..=1.0) * jitter.shift_px);
    let mask_f: Vec<f32> = slice.mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let mut post = vec![0f32; side * side];
    let mut post_area = 0.0f64;
    for i in 0..side * side {
        let (x, y) = ((i % side) as f64, (i / side) as f64);
        // the after image's pixel looks up the warped before image at (x − dx, y − dy)
        let (u, v) = (x - dx - c, y - dy - c);
        let rho_out = (u * u + v * v).sqrt();
        let k = if rho_out > 1e-9 { inverse(rho_out) / rho_out } else { 1.0 / s };
        let (sx, sy) = (c + u * k, c + v * k);
        post[i] = bilinear(&slice.pixels, side, sx, sy);
        // the change is measured without the shift
        let rho_m = ((x - c).powi(2) + (y - c).powi(2)).sqrt();
        let km = if rho_m > 1e-9 { inverse(rho_m) / rho_m } else { 1.0 / s };
        if bilinear(&mask_f, side, c + (x - c) * km, c + (y - c) * km) >= 0.5 {
            post_area += 1.0;
        }
    }
    let mut pre = slice.pixels.clone();
    if jitter.noise > 0.0 {
        for v in pre.iter_mut().chain(post.iter_mut()) {
            let n: f64 = StandardNormal.sample(&mut rng);
            *v += (n * jitter.noise) as f32;
        }
    }
    standardise(&mut post);
    ResponsePair { pre, post, log_ratio: (post_area.max(1.0) / area.max(1.0)).ln() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn disc(side: usize, radius: f64) -> TumourSlice {
        let c = (side as f64 - 1.0) / 2.0;
        let mask: Vec<bool> =
            (0..side * side).map(|i| ((i % side) as f64 - c).powi(2) + ((i / side) as f64 - c).powi(2) <= radius * radius).collect();
        let pixels = mask.iter().map(|&m| if m { 2.0 } else { -0.5 }).collect();
        TumourSlice { pixels, mask, side, source: "disc".into(), centre: [c, c, 0.0], step: [1.0, 1.0] }
    }

    #[test]
    fn the_warp_changes_the_area_as_asked_and_keeps_the_far_field() {
        let s = disc(64, 8.0);
        for target in [0.25f64, 0.5, 1.0, 1.5, 2.0] {
            let p = response_pair(&s, target.ln(), &Jitter::none(), 1);
            assert!((p.log_ratio - target.ln()).abs() < 0.08, "{target}: {}", p.log_ratio.exp());
            // the bright area of the after image follows the mask (both scans standardised: bright is above the mean)
            let above = |v: &[f32]| {
                let m = v.iter().sum::<f32>() / v.len() as f32;
                v.iter().filter(|&&x| x > m + 0.5 * (v.iter().cloned().fold(f32::MIN, f32::max) - m)).count() as f64
            };
            let (bright, before) = (above(&p.post), above(&p.pre));
            assert!(((bright / before).ln() - p.log_ratio).abs() < 0.1, "{target}");
            // beyond 4R nothing moves: the corner keeps its rank (the background value)
            assert!(p.post[0] < 0.0 && p.pre[0] < 0.0);
        }
        let same = response_pair(&s, 0.0, &Jitter::none(), 1);
        assert_eq!(same.log_ratio, 0.0);
        let mut pre = same.pre.clone();
        standardise(&mut pre);
        assert!(pre.iter().zip(&same.post).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn jitter_shifts_scales_and_adds_noise_reproducibly() {
        let s = disc(48, 6.0);
        let j = Jitter { shift_px: 2.0, noise: 0.05 };
        let a = response_pair(&s, 0.3, &j, 9);
        assert_eq!(a, response_pair(&s, 0.3, &j, 9));
        assert_ne!(a.post, response_pair(&s, 0.3, &j, 10).post);
        assert_eq!(a.log_ratio, response_pair(&s, 0.3, &Jitter::none(), 9).log_ratio, "the change does not depend on the jitter");
    }

    #[test]
    fn slices_are_cut_around_real_tumours() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/nifti/pyradiomics");
        let img = vesalius_io::load(format!("{dir}/breast1_image.nii.gz")).unwrap();
        let mask = vesalius_io::load(format!("{dir}/breast1_label.nii.gz")).unwrap();
        let slices = tumour_slices(&img, &mask, 32, 0.5, 5.0, "breast1").unwrap();
        assert!(!slices.is_empty());
        for s in &slices {
            let m = s.mask.iter().filter(|&&v| v).count();
            assert!(m >= 4);
            // centred: the mask's centroid lies within two pixels of the crop's centre
            let cx = s.mask.iter().enumerate().filter(|(_, v)| **v).map(|(i, _)| (i % 32) as f64).sum::<f64>() / m as f64;
            assert!((cx - 15.5).abs() < 2.0, "{cx}");
            let mean = s.pixels.iter().map(|&v| v as f64).sum::<f64>() / s.pixels.len() as f64;
            assert!(mean.abs() < 1e-3);
            // pasting the crop's mask back lands on the volume's mask
            let (nx, ny) = (img.shape()[0], img.shape()[1]);
            let m: Vec<f32> = s.mask.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
            let mut plane = vec![0f32; nx * ny];
            s.paste(&m, &mut plane, nx, ny);
            let z = s.centre[2] as usize;
            let truth = &mask.channel(0)[z * nx * ny..(z + 1) * nx * ny];
            let hit = (0..nx * ny).filter(|&i| plane[i] >= 0.5 && truth[i] > 0.5).count() as f64;
            let both = (0..nx * ny).filter(|&i| plane[i] >= 0.5).count() as f64 + truth.iter().filter(|&&t| t > 0.5).count() as f64;
            assert!(2.0 * hit / both > 0.8, "Dice {}", 2.0 * hit / both);
        }
        let e = tumour_slices(&img, &vesalius_io::load(format!("{dir}/brain2_label.nii.gz")).unwrap(), 32, 1.0, 5.0, "x").unwrap_err();
        assert!(e.to_string().contains("x:"), "{e}");
    }
}
