//! Harmonisation of multi-site data by degradation: an image of higher quality is brought down to a target
//! quality (coarser voxels, thicker slices, more blur, more noise) so that sources mixed in one training set look
//! alike. Quality only ever goes down: a target finer or cleaner than the image leaves that aspect as it is.
//!
//! The output stays on the input's grid (same shape and affine): a coarser spacing is simulated by blurring to
//! the target resolution, sampling at the target spacing and interpolating back.
//!
//! ```
//! use vesalius_data::harmonise::{degrade, estimate_noise, Quality};
//! use vesalius_data::{Image, IDENTITY};
//! let flat = Image::new(vec![100.0; 64 * 64], vec![64, 64], 1, IDENTITY, "float32").unwrap();
//! let target = Quality { noise_std: 5.0, ..Quality::default() };
//! let noisy = degrade(&flat, &target, &mut vesalius_data::transforms::rng(1)).unwrap();
//! assert!((estimate_noise(&noisy) - 5.0).abs() < 0.5);
//! // Already noisier than a target: nothing is added (and nothing removed).
//! let cleaner = Quality { noise_std: 2.0, ..Quality::default() };
//! let again = degrade(&noisy, &cleaner, &mut vesalius_data::transforms::rng(2)).unwrap();
//! assert_eq!(again, noisy);
//! ```
use crate::transforms::{convolve_axis, gaussian_kernel, normal, resample_to_grid};
use crate::{DataError, Image, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use vesalius_io::geometry::{self, Interp};

/// FWHM of a Gaussian over its standard deviation.
const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949;

/// A slice profile: voxels along `axis` averaged over `mm` millimetres.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceThickness {
    /// The slice axis (voxel axis).
    pub axis: usize,
    /// Slice thickness in millimetres.
    pub mm: f64,
}

/// Image quality: resolution, slice profile, blur and noise. Zero or empty fields mean "as good as it gets".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quality {
    /// Voxel size per axis in millimetres (empty: not constrained).
    pub spacing: Vec<f64>,
    /// Slice thickness across one axis.
    pub slice_thickness: Option<SliceThickness>,
    /// Isotropic Gaussian blur, as full width at half maximum in millimetres.
    pub blur_fwhm_mm: f64,
    /// Standard deviation of the noise, in the image's intensity units.
    pub noise_std: f64,
}

impl Quality {
    /// The measurable part of an image's quality: its spacing and its noise ([`estimate_noise`]).
    pub fn measure(img: &Image) -> Self {
        Self { spacing: img.spacing(), slice_thickness: None, blur_fwhm_mm: 0.0, noise_std: estimate_noise(img) }
    }

    /// The lowest quality of several, aspect by aspect: the common target that every source can reach by
    /// degradation alone.
    pub fn lowest(qualities: &[Quality]) -> Self {
        let mut out = Quality::default();
        for q in qualities {
            if out.spacing.len() < q.spacing.len() {
                out.spacing.resize(q.spacing.len(), 0.0);
            }
            for (o, &s) in out.spacing.iter_mut().zip(&q.spacing) {
                *o = o.max(s);
            }
            out.blur_fwhm_mm = out.blur_fwhm_mm.max(q.blur_fwhm_mm);
            out.noise_std = out.noise_std.max(q.noise_std);
            out.slice_thickness = match (out.slice_thickness, q.slice_thickness) {
                (Some(a), Some(b)) => Some(if b.mm > a.mm { b } else { a }),
                (a, b) => a.or(b),
            };
        }
        out
    }
}

/// Robust noise standard deviation (Immerkær 1996): the Laplacian-difference mask over every axial slice of
/// channel 0, `σ = √(π/2) · Σ|I ∗ N| / (6 (W−2)(H−2))`, averaged over slices.
pub fn estimate_noise(img: &Image) -> f64 {
    let shape = img.shape();
    let (w, h) = (shape[0], shape.get(1).copied().unwrap_or(1));
    if w < 3 || h < 3 {
        return 0.0;
    }
    let depth = shape.get(2).copied().unwrap_or(1);
    let data = img.channel(0);
    const N: [[f64; 3]; 3] = [[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]];
    let mut total = 0.0;
    for z in 0..depth {
        let plane = &data[z * w * h..(z + 1) * w * h];
        let mut s = 0.0;
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let mut v = 0.0;
                for (dy, row) in N.iter().enumerate() {
                    for (dx, k) in row.iter().enumerate() {
                        v += k * plane[(y + dy - 1) * w + x + dx - 1] as f64;
                    }
                }
                s += v.abs();
            }
        }
        total += (std::f64::consts::PI / 2.0).sqrt() * s / (6.0 * (w - 2) as f64 * (h - 2) as f64);
    }
    total / depth as f64
}

/// Degrades `img` to `target`, never improving any aspect. The result has the input's grid.
pub fn degrade(img: &Image, target: &Quality, rng: &mut impl Rng) -> Result<Image> {
    let nd = img.ndim();
    let spacing = img.spacing();
    if !target.spacing.is_empty() && target.spacing.len() != nd {
        return Err(DataError::Invalid(format!("target spacing {:?} needs {nd} values", target.spacing)));
    }
    let mut out = img.clone();
    // Resolution: blur to the target's FWHM, sample at the target spacing, interpolate back.
    let coarser: Vec<bool> = (0..nd).map(|a| target.spacing.get(a).is_some_and(|&t| t > spacing[a] * (1.0 + 1e-6))).collect();
    if coarser.iter().any(|&c| c) {
        let sigma: Vec<f64> = (0..nd)
            .map(|a| if coarser[a] { (target.spacing[a].powi(2) - spacing[a].powi(2)).sqrt() / FWHM_PER_SIGMA / spacing[a] } else { 0.0 })
            .collect();
        out = blur_voxels(&out, &sigma);
        let coarse_spacing: Vec<f64> = (0..nd).map(|a| if coarser[a] { target.spacing[a] } else { spacing[a] }).collect();
        let coarse = geometry::resample(&out, &coarse_spacing, Interp::Linear)?;
        let mut m = geometry::identity();
        for a in 0..nd {
            m[a][a] = spacing[a] / coarse_spacing[a];
        }
        out = resample_to_grid(&coarse, img.shape(), &m, false, *img.affine())?;
    }
    if let Some(t) = target.slice_thickness {
        if t.axis >= nd {
            return Err(DataError::Invalid(format!("slice axis {} out of range for {nd} axes", t.axis)));
        }
        let width = t.mm / spacing[t.axis];
        if width > 1.0 + 1e-6 {
            let shape = out.shape().to_vec();
            let kernel = box_kernel(width);
            let mut data = out.data().to_vec();
            let n = out.voxels();
            for chunk in data.chunks_exact_mut(n) {
                convolve_axis(chunk, &shape, t.axis, &kernel);
            }
            out = Image::new(data, shape, img.channels(), *img.affine(), img.dtype())?;
        }
    }
    if target.blur_fwhm_mm > 0.0 {
        let sigma: Vec<f64> = spacing.iter().map(|s| target.blur_fwhm_mm / FWHM_PER_SIGMA / s).collect();
        out = blur_voxels(&out, &sigma);
    }
    if target.noise_std > 0.0 {
        let own = estimate_noise(&out);
        let add = (target.noise_std.powi(2) - own.powi(2)).max(0.0).sqrt();
        if add > 0.0 {
            let data: Vec<f32> = out.data().iter().map(|&v| (v as f64 + add * normal(rng)) as f32).collect();
            out = Image::new(data, out.shape().to_vec(), img.channels(), *img.affine(), img.dtype())?;
        }
    }
    Ok(out)
}

fn blur_voxels(img: &Image, sigma: &[f64]) -> Image {
    let shape = img.shape().to_vec();
    let n = img.voxels();
    let mut data = img.data().to_vec();
    for chunk in data.chunks_exact_mut(n) {
        for (a, &s) in sigma.iter().enumerate() {
            if s > 0.0 {
                convolve_axis(chunk, &shape, a, &gaussian_kernel(s));
            }
        }
    }
    Image::new(data, shape, img.channels(), *img.affine(), img.dtype()).expect("same size")
}

/// A centred box of `width` voxels (fractional ends weighted), normalised.
fn box_kernel(width: f64) -> Vec<f64> {
    let half = width / 2.0;
    let r = (half - 0.5).ceil().max(0.0) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|i| {
            let (lo, hi) = (i as f64 - 0.5, i as f64 + 0.5);
            (hi.min(half) - lo.max(-half)).max(0.0)
        })
        .collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}
