//! The dataset fingerprint (nnU-Net's first step): per case its shape and spacing, and per channel the intensity
//! statistics of foreground voxels (label > 0), sampled evenly — at most 10,000 voxels per case.
use crate::SegError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vesalius_data::loader::load_case;
use vesalius_data::msd::Case;
use vesalius_data::transforms::{Pipeline, Subject, Transform, percentile};

/// Foreground voxels sampled per case and channel.
pub const SAMPLES_PER_CASE: usize = 10_000;

/// One case's geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseFingerprint {
    /// Case id.
    pub id: String,
    /// Spatial shape.
    pub shape: Vec<usize>,
    /// Voxel size in millimetres.
    pub spacing: Vec<f64>,
    /// Share of voxels with a label above 0.
    pub foreground_fraction: f64,
}

/// Intensity statistics of one channel over the sampled foreground voxels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Median.
    pub median: f64,
    /// 0.5th percentile.
    pub percentile_00_5: f64,
    /// 99.5th percentile.
    pub percentile_99_5: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

/// What the planner knows of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Channel names (`"CT"` selects CT normalisation).
    pub channel_names: Vec<String>,
    /// Label value → name.
    pub labels: BTreeMap<u32, String>,
    /// Every training case.
    pub cases: Vec<CaseFingerprint>,
    /// Foreground statistics per channel.
    pub foreground: Vec<ChannelStats>,
}

impl Fingerprint {
    /// Median of each axis's spacing over the cases.
    pub fn median_spacing(&self) -> Vec<f64> {
        per_axis(&self.cases, |c| &c.spacing, 50.0)
    }

    /// The `q`-th percentile of each axis's spacing.
    pub fn spacing_percentile(&self, q: f64) -> Vec<f64> {
        per_axis(&self.cases, |c| &c.spacing, q)
    }

    /// Median of each axis's extent in millimetres (shape × spacing).
    pub fn median_extent_mm(&self) -> Vec<f64> {
        let nd = self.cases.first().map_or(0, |c| c.shape.len());
        (0..nd)
            .map(|a| {
                let v: Vec<f32> = self.cases.iter().map(|c| (c.shape[a] as f64 * c.spacing[a]) as f32).collect();
                percentile(&v, 50.0) as f64
            })
            .collect()
    }
}

fn per_axis(cases: &[CaseFingerprint], f: impl Fn(&CaseFingerprint) -> &Vec<f64>, q: f64) -> Vec<f64> {
    let nd = cases.first().map_or(0, |c| f(c).len());
    (0..nd)
        .map(|a| {
            let v: Vec<f32> = cases.iter().map(|c| f(c)[a] as f32).collect();
            percentile(&v, q) as f64
        })
        .collect()
}

/// Computes the fingerprint of labelled `cases`, reading them one at a time.
pub fn compute(cases: &[Case], channel_names: &[String], labels: &BTreeMap<u32, String>) -> Result<Fingerprint, SegError> {
    compute_subjects(cases.iter().map(|c| Ok((c.id.clone(), load_case(c, &Pipeline::default())?))), channel_names, labels)
}

/// Computes the fingerprint of labelled subjects given as `(id, subject)`.
pub fn compute_subjects(
    subjects: impl Iterator<Item = Result<(String, Subject), SegError>>,
    channel_names: &[String],
    labels: &BTreeMap<u32, String>,
) -> Result<Fingerprint, SegError> {
    let mut out = Vec::new();
    let mut samples: Vec<Vec<f32>> = vec![Vec::new(); channel_names.len()];
    let mut nd = None;
    for item in subjects {
        let (id, s) = item?;
        // Geometry as the network will see it: volumes in RAS order.
        let s = if s.image.ndim() == 3 {
            Transform::Reorient { codes: "RAS".into() }.apply(s, &mut vesalius_data::transforms::rng(0))?
        } else {
            s
        };
        let label = s.label.as_ref().ok_or_else(|| SegError::Input(format!("case '{id}' has no label map")))?;
        if s.image.channels() != channel_names.len() {
            return Err(SegError::Input(format!(
                "case '{id}' has {} channels, the dataset names {}",
                s.image.channels(),
                channel_names.len()
            )));
        }
        if *nd.get_or_insert(s.image.ndim()) != s.image.ndim() {
            return Err(SegError::Input(format!("case '{id}' mixes 2D and 3D images")));
        }
        if let Some(v) = label.data().iter().find(|v| v.fract() != 0.0 || **v < 0.0 || !labels.contains_key(&(**v as u32))) {
            return Err(SegError::Input(format!(
                "case '{id}': label value {v} is not one of the dataset's labels {:?}",
                labels.keys().collect::<Vec<_>>()
            )));
        }
        let fg: Vec<usize> = label.data().iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(i, _)| i).collect();
        let step = (fg.len() as f64 / SAMPLES_PER_CASE as f64).max(1.0);
        let picked: Vec<usize> = (0..fg.len().min(SAMPLES_PER_CASE)).map(|k| fg[(k as f64 * step) as usize]).collect();
        for (c, dst) in samples.iter_mut().enumerate() {
            let ch = s.image.channel(c);
            dst.extend(picked.iter().map(|&i| ch[i]));
        }
        out.push(CaseFingerprint {
            id,
            shape: s.image.shape().to_vec(),
            spacing: s.image.spacing(),
            foreground_fraction: fg.len() as f64 / s.image.voxels() as f64,
        });
    }
    if out.is_empty() {
        return Err(SegError::Input("no training cases to fingerprint".into()));
    }
    let foreground = samples
        .iter()
        .map(|v| {
            if v.is_empty() {
                return ChannelStats { mean: 0.0, std: 1.0, median: 0.0, percentile_00_5: 0.0, percentile_99_5: 0.0, min: 0.0, max: 0.0 };
            }
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            ChannelStats {
                mean,
                std,
                median: percentile(v, 50.0) as f64,
                percentile_00_5: percentile(v, 0.5) as f64,
                percentile_99_5: percentile(v, 99.5) as f64,
                min: v.iter().copied().fold(f32::INFINITY, f32::min) as f64,
                max: v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
            }
        })
        .collect();
    Ok(Fingerprint { channel_names: channel_names.to_vec(), labels: labels.clone(), cases: out, foreground })
}
