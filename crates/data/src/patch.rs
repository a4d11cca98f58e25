//! Patch sampling for training (uniform or label-balanced) and the regular grid of windows used by
//! sliding-window inference.
//!
//! ```
//! use vesalius_data::patch::{grid_starts, PatchSampler, Sampling};
//! use vesalius_data::transforms::{rng, Subject};
//! use vesalius_data::{Image, IDENTITY};
//!
//! // Windows of 4 with overlap 0.5 over 10 voxels start at 0, 2, 4, 6 (the last one flush with the end).
//! assert_eq!(grid_starts(&[10], &[4], 0.5).unwrap(), vec![vec![0], vec![2], vec![4], vec![6]]);
//!
//! let mut labels = vec![0.0; 32 * 32];
//! labels[5 * 32 + 7] = 1.0; // one foreground pixel at x = 7, y = 5
//! let subject = Subject::with_label(
//!     Image::new(vec![0.0; 32 * 32], vec![32, 32], 1, IDENTITY, "float32").unwrap(),
//!     Image::new(labels, vec![32, 32], 1, IDENTITY, "uint8").unwrap(),
//! ).unwrap();
//! let sampler = PatchSampler { patch: vec![8, 8], sampling: Sampling::LabelBalanced { foreground: 1.0 } };
//! let patch = sampler.sample(&subject, true, &mut rng(0)).unwrap();
//! assert_eq!(patch.label.unwrap().data().iter().sum::<f32>(), 1.0); // the foreground pixel is inside
//! ```
use crate::cache::{ClassLocations, class_locations};
use crate::transforms::Subject;
use crate::{DataError, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use vesalius_io::geometry;

/// How training patches are placed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sampling {
    /// Anywhere in the image, uniformly.
    Uniform,
    /// A share `foreground` of patches (nnU-Net: one third) centred on a voxel of a foreground class, the class
    /// chosen uniformly among those present; the rest uniform.
    LabelBalanced {
        /// Share of foreground-centred patches, 0–1.
        foreground: f64,
    },
}

/// Draws training patches of a fixed size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatchSampler {
    /// Patch size per spatial axis.
    pub patch: Vec<usize>,
    /// Placement rule.
    pub sampling: Sampling,
}

impl PatchSampler {
    /// Whether patch `index` of a batch of `batch` must be foreground-centred: the last
    /// `round(batch · foreground)` of each batch, as nnU-Net does, so the share holds in every batch.
    pub fn force_foreground(&self, index: usize, batch: usize) -> bool {
        match self.sampling {
            Sampling::Uniform => false,
            Sampling::LabelBalanced { foreground } => {
                let n_fg = (batch as f64 * foreground.clamp(0.0, 1.0)).round() as usize;
                index >= batch - n_fg.min(batch)
            }
        }
    }

    /// One patch from `subject` (zero padding where the patch is larger than the image). With `foreground`
    /// set and a label map holding foreground, the patch is centred on a random foreground voxel.
    pub fn sample(&self, subject: &Subject, foreground: bool, rng: &mut impl Rng) -> Result<Subject> {
        let shape = subject.image.shape();
        let nd = shape.len();
        if self.patch.len() != nd || self.patch.contains(&0) {
            return Err(DataError::Invalid(format!("patch size {:?} needs {nd} positive sizes", self.patch)));
        }
        let locations =
            if foreground { subject.label.as_ref().map(|l| class_locations(l.data())).unwrap_or_default() } else { ClassLocations::new() };
        let start = self.start(shape, &locations, foreground, rng)?;
        extract(subject, &start, &self.patch)
    }

    /// Where a patch starts in an image of `shape`: centred on one of `locations` (a class chosen uniformly, then
    /// a location) when `foreground` is set and there are any, else uniform. Patches larger than the image are
    /// centred on it.
    pub fn start(&self, shape: &[usize], locations: &ClassLocations, foreground: bool, rng: &mut impl Rng) -> Result<Vec<i64>> {
        let nd = shape.len();
        if self.patch.len() != nd || self.patch.contains(&0) {
            return Err(DataError::Invalid(format!("patch size {:?} needs {nd} positive sizes", self.patch)));
        }
        let centre: Option<Vec<usize>> = if foreground && !locations.is_empty() {
            let classes: Vec<&Vec<u64>> = locations.values().filter(|v| !v.is_empty()).collect();
            let list = classes[rng.random_range(0..classes.len())];
            let mut rem = list[rng.random_range(0..list.len())] as usize;
            Some(
                shape
                    .iter()
                    .map(|&d| {
                        let i = rem % d;
                        rem /= d;
                        i
                    })
                    .collect(),
            )
        } else {
            None
        };
        Ok((0..nd)
            .map(|a| {
                let max = shape[a] as i64 - self.patch[a] as i64;
                match &centre {
                    Some(c) if max >= 0 => (c[a] as i64 - self.patch[a] as i64 / 2).clamp(0, max),
                    None if max > 0 => rng.random_range(0..=max),
                    _ => max / 2,
                }
            })
            .collect())
    }
}

/// The sub-volume of `shape` starting at `start` from the image and its labels (zero outside).
pub fn extract(subject: &Subject, start: &[i64], shape: &[usize]) -> Result<Subject> {
    Ok(Subject {
        image: geometry::crop_or_pad(&subject.image, start, shape, 0.0)?,
        label: subject.label.as_ref().map(|l| geometry::crop_or_pad(l, start, shape, 0.0)).transpose()?,
    })
}

/// Window starts covering `shape` with windows of `window` voxels overlapping by `overlap` (0 ≤ overlap < 1):
/// step `max(1, ⌊window·(1 − overlap)⌋)` along each axis, the last window flush with the end (MONAI's
/// `dense_patch_slices`). An axis shorter than the window gets one window at 0.
pub fn grid_starts(shape: &[usize], window: &[usize], overlap: f64) -> Result<Vec<Vec<usize>>> {
    if shape.len() != window.len() || window.contains(&0) || !(0.0..1.0).contains(&overlap) {
        return Err(DataError::Invalid(format!(
            "grid needs one positive window size per axis and 0 ≤ overlap < 1 (shape {shape:?}, window {window:?}, overlap {overlap})"
        )));
    }
    let per_axis: Vec<Vec<usize>> = shape
        .iter()
        .zip(window)
        .map(|(&n, &w)| {
            if n <= w {
                return vec![0];
            }
            let step = ((w as f64 * (1.0 - overlap)).floor() as usize).max(1);
            let mut v: Vec<usize> = (0..).map(|i| i * step).take_while(|&s| s + w < n).collect();
            v.push(n - w);
            v
        })
        .collect();
    let mut out = vec![Vec::new()];
    for axis in &per_axis {
        out = out.into_iter().flat_map(|prefix| axis.iter().map(move |&s| [prefix.clone(), vec![s]].concat())).collect();
    }
    Ok(out)
}
