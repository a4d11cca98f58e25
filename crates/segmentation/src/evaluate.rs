//! Evaluation of a run on its validation cases, in each case's original grid: per class Dice, IoU, HD95 and ASSD
//! in millimetres, volume difference; per-case values and means with 95 % percentile-bootstrap confidence
//! intervals (1,000 resamples of cases), written to `metrics.json`.
use crate::infer::Predictor;
use crate::train::split;
use crate::{RunDir, SegError};
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use vesalius_eval::bootstrap::{percentile_ci, Estimate};
use vesalius_eval::segmentation::{class_metrics, ClassMetrics};

/// Bootstrap resamples.
pub const RESAMPLES: usize = 1000;

/// One case's metrics per foreground class (by name).
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Case id.
    pub id: String,
    /// Metrics per class name.
    pub classes: BTreeMap<String, ClassMetrics>,
}

/// `metrics.json`.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsFile {
    /// Cases evaluated.
    pub cases: Vec<CaseResult>,
    /// Per class name, per metric: mean over cases with its 95 % interval. Distances are averaged over the cases
    /// where they are defined (`resamples` counts the resamples that had one).
    pub mean: BTreeMap<String, BTreeMap<String, Estimate>>,
    /// Confidence level.
    pub level: f64,
}

fn mean_ci(values: &[Option<f64>], seed: u64) -> Estimate {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    let value = if defined.is_empty() { f64::NAN } else { defined.iter().sum::<f64>() / defined.len() as f64 };
    percentile_ci(values.len(), RESAMPLES, 0.95, seed, value, |idx| {
        let v: Vec<f64> = idx.iter().filter_map(|&i| values[i]).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    })
}

/// Predicts every validation case of `run` with its best model and scores it against its labels.
pub fn evaluate<B: Backend>(run: &RunDir, device: &B::Device, flip_tta: bool) -> Result<MetricsFile, SegError> {
    let predictor = Predictor::<B>::load(run, device)?;
    let split = split(&predictor.recipe, run)?;
    let mut cases = Vec::new();
    for source in &split.val {
        let subject = source.load()?;
        let reference = subject.label.as_ref().ok_or_else(|| SegError::Input(format!("case '{}' has no labels", source.id())))?;
        let seg = predictor.predict(&subject.image, false, flip_tta)?;
        let mut shape = [1usize; 3];
        shape[..subject.image.ndim()].copy_from_slice(subject.image.shape());
        let mut spacing = [1.0f64; 3];
        spacing[..subject.image.ndim()].copy_from_slice(&subject.image.spacing());
        let mut classes = BTreeMap::new();
        for (&value, name) in split.labels.iter().filter(|(v, _)| **v > 0) {
            classes.insert(name.clone(), class_metrics(seg.labels.data(), reference.data(), value as f32, shape, spacing));
        }
        cases.push(CaseResult { id: source.id().to_string(), classes });
    }
    let mut mean = BTreeMap::new();
    for (&value, name) in split.labels.iter().filter(|(v, _)| **v > 0) {
        let get = |f: &dyn Fn(&ClassMetrics) -> Option<f64>| -> Vec<Option<f64>> { cases.iter().map(|c| f(&c.classes[name])).collect() };
        let mut m = BTreeMap::new();
        let seed = value as u64;
        m.insert("dice".to_string(), mean_ci(&get(&|c| Some(c.dice)), seed));
        m.insert("iou".to_string(), mean_ci(&get(&|c| Some(c.iou)), seed));
        m.insert("hd95_mm".to_string(), mean_ci(&get(&|c| c.hd95), seed));
        m.insert("assd_mm".to_string(), mean_ci(&get(&|c| c.assd), seed));
        m.insert("volume_difference_mm3".to_string(), mean_ci(&get(&|c| Some(c.volume_difference)), seed));
        mean.insert(name.clone(), m);
    }
    let metrics = MetricsFile { cases, mean, level: 0.95 };
    run.write_json("metrics.json", &metrics)?;
    Ok(metrics)
}
