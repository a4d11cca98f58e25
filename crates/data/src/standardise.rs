//! Histogram standardisation (Nyúl and Udupa 2000; TorchIO's `HistogramStandardization`): intensities of images
//! from different scanners mapped onto one standard scale by matching landmarks of their histograms.
//!
//! Training takes the foreground of each training image (voxels above the image's mean, as TorchIO does by
//! default), its percentiles at `quantiles` (default 1, 10, 20, …, 90, 99), maps them linearly so that the two
//! cut-off percentiles land on `[0, 100]`, and averages over images: these are the standard landmarks. Applying it
//! maps each image's own landmarks onto the standard ones, piecewise linearly, extending the first and last
//! segments beyond them. An image that differs from another by `a·v + b` (a > 0) comes out the same.
//!
//! ```
//! use vesalius_data::standardise::HistogramStandard;
//! use vesalius_io::{Image, IDENTITY};
//! let ramp = |scale: f32, offset: f32| {
//!     let v: Vec<f32> = (0..1000).map(|i| offset + scale * ((i * 37 % 1000) as f32)).collect();
//!     Image::new(v, vec![10, 10, 10], 1, IDENTITY, "float32").unwrap()
//! };
//! let standard = HistogramStandard::train(&[ramp(1.0, 0.0), ramp(2.0, 50.0)]).unwrap();
//! let (a, b) = (standard.apply(&ramp(3.0, 7.0)).unwrap(), standard.apply(&ramp(0.5, -20.0)).unwrap());
//! let worst = a.data().iter().zip(b.data()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
//! assert!(worst < 1e-3);
//! // In a pipeline (TOML: `type = "histogram_standardise"` with `quantiles` and `landmarks`):
//! let t = vesalius_data::transforms::Transform::HistogramStandardise(standard);
//! assert!(toml::to_string(&vesalius_data::transforms::Pipeline { transforms: vec![t] }).unwrap().contains("histogram_standardise"));
//! ```
use serde::{Deserialize, Serialize};

use crate::{DataError, Image, Result};

/// The default landmark quantiles: 1 %, 10 %, 20 %, …, 90 %, 99 %.
pub fn default_quantiles() -> Vec<f64> {
    let mut q = vec![0.01];
    q.extend((1..10).map(|k| k as f64 / 10.0));
    q.push(0.99);
    q
}

/// Learnt standard landmarks: the scale every image is mapped onto.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramStandard {
    /// Quantiles of the landmarks, increasing, in (0, 1); the first and last are the cut-offs mapped to the
    /// ends of the standard range.
    pub quantiles: Vec<f64>,
    /// Standard landmark values, one per quantile.
    pub landmarks: Vec<f64>,
}

/// Percentile `q` in [0, 1] of sorted values, interpolated linearly (numpy's default).
fn quantile(sorted: &[f32], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * (pos - lo as f64)
}

/// The landmarks of an image's foreground (first channel, voxels above its mean) at `quantiles`.
pub fn landmarks_of(img: &Image, quantiles: &[f64]) -> Result<Vec<f64>> {
    let values = img.channel(0);
    let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return Err(DataError::Invalid("histogram standardisation needs an image with finite values".into()));
    }
    let mean = finite.iter().map(|&v| v as f64).sum::<f64>() / finite.len() as f64;
    let mut fg: Vec<f32> = finite.iter().copied().filter(|&v| v as f64 > mean).collect();
    if fg.len() < 2 {
        fg = finite;
    }
    fg.sort_by(f32::total_cmp);
    Ok(quantiles.iter().map(|&q| quantile(&fg, q)).collect())
}

fn check_quantiles(q: &[f64]) -> Result<()> {
    if q.len() < 2 || q.iter().any(|&x| !(x > 0.0 && x < 1.0)) || q.windows(2).any(|w| w[0] >= w[1]) {
        return Err(DataError::Invalid(format!("landmark quantiles must be at least two increasing values in (0, 1), got {q:?}")));
    }
    Ok(())
}

impl HistogramStandard {
    /// Learns the standard landmarks from training images with the default quantiles and range [0, 100].
    pub fn train(images: &[Image]) -> Result<Self> {
        Self::train_with(images, &default_quantiles(), [0.0, 100.0])
    }

    /// Learns the standard landmarks at `quantiles`, the cut-offs (first and last) mapped to `range`.
    pub fn train_with(images: &[Image], quantiles: &[f64], range: [f64; 2]) -> Result<Self> {
        check_quantiles(quantiles)?;
        if images.is_empty() {
            return Err(DataError::Invalid("histogram standardisation needs at least one training image".into()));
        }
        let mut sum = vec![0.0; quantiles.len()];
        for img in images {
            let l = landmarks_of(img, quantiles)?;
            let (lo, hi) = (l[0], l[l.len() - 1]);
            if !(hi > lo) {
                return Err(DataError::Invalid("a training image's foreground is constant: its landmarks cannot be scaled".into()));
            }
            for (s, v) in sum.iter_mut().zip(&l) {
                *s += range[0] + (v - lo) / (hi - lo) * (range[1] - range[0]);
            }
        }
        Ok(Self { quantiles: quantiles.to_vec(), landmarks: sum.iter().map(|s| s / images.len() as f64).collect() })
    }

    /// The piecewise-linear map taking `from` landmarks onto the standard ones, evaluated at `v` (the first and
    /// last segments extended beyond the ends).
    pub fn map_value(&self, from: &[f64], v: f64) -> f64 {
        let n = from.len();
        let k = match from.iter().position(|&x| v < x) {
            Some(0) => 0,
            Some(i) => i - 1,
            None => n - 2,
        }
        .min(n - 2);
        let (x0, x1, y0, y1) = (from[k], from[k + 1], self.landmarks[k], self.landmarks[k + 1]);
        if x1 > x0 { y0 + (v - x0) * (y1 - y0) / (x1 - x0) } else { y0 }
    }

    /// The image with every channel mapped onto the standard scale by the first channel's landmarks.
    pub fn apply(&self, img: &Image) -> Result<Image> {
        if self.quantiles.len() != self.landmarks.len() {
            return Err(DataError::Invalid("histogram standard: one landmark per quantile is needed".into()));
        }
        check_quantiles(&self.quantiles)?;
        let from = landmarks_of(img, &self.quantiles)?;
        let data = img.data().iter().map(|&v| if v.is_finite() { self.map_value(&from, v as f64) as f32 } else { v }).collect();
        Image::new(data, img.shape().to_vec(), img.channels(), *img.affine(), "float32")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesalius_io::IDENTITY;

    fn image(values: Vec<f32>) -> Image {
        let n = values.len();
        Image::new(values, vec![n], 1, IDENTITY, "float32").unwrap()
    }

    /// A skewed "tissue" histogram: background near 0, two tissue classes.
    fn scan(scale: f32, offset: f32, seed: u32) -> Image {
        let v: Vec<f32> = (0..4000u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761).wrapping_add(seed)) % 1000;
                let base = if i % 4 == 0 {
                    5.0
                } else if i % 4 == 1 {
                    300.0 + h as f32 * 0.1
                } else {
                    600.0 + h as f32 * 0.2
                };
                offset + scale * base
            })
            .collect();
        image(v)
    }

    #[test]
    fn learnt_landmarks_are_mapped_exactly_and_lie_on_the_range() {
        let train = [scan(1.0, 0.0, 1), scan(1.7, 40.0, 2), scan(0.6, -10.0, 3)];
        let s = HistogramStandard::train(&train).unwrap();
        assert_eq!(s.landmarks.len(), 11);
        assert!((s.landmarks[0] - 0.0).abs() < 1e-9 && (s.landmarks[10] - 100.0).abs() < 1e-9, "{:?}", s.landmarks);
        assert!(s.landmarks.windows(2).all(|w| w[0] <= w[1]));
        // Each image's own landmarks land exactly on the standard ones.
        for img in &train {
            let from = landmarks_of(img, &s.quantiles).unwrap();
            for (f, l) in from.iter().zip(&s.landmarks) {
                assert!((s.map_value(&from, *f) - l).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn scans_that_differ_by_a_linear_intensity_change_come_out_the_same() {
        let s = HistogramStandard::train(&[scan(1.0, 0.0, 1), scan(2.0, 100.0, 2)]).unwrap();
        let a = s.apply(&scan(1.0, 0.0, 7)).unwrap();
        let b = s.apply(&scan(3.5, 250.0, 7)).unwrap();
        let worst = a.data().iter().zip(b.data()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-2, "largest difference {worst}");
        // Before standardisation they were far apart.
        assert!((scan(3.5, 250.0, 7).data()[1] - scan(1.0, 0.0, 7).data()[1]).abs() > 100.0);
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(HistogramStandard::train(&[]).is_err());
        assert!(HistogramStandard::train(&[image(vec![3.0; 50])]).is_err());
        assert!(HistogramStandard::train_with(&[scan(1.0, 0.0, 1)], &[0.5, 0.2], [0.0, 1.0]).is_err());
    }
}
