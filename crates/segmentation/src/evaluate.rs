//! Evaluation of a run on its test cases (by default) or its validation cases, in each case's original grid: per
//! class Dice, IoU, HD95 and ASSD in millimetres, volume difference; per-case values and means with 95 %
//! percentile-bootstrap confidence intervals (1,000 resamples of patients when cases name their patients, of cases
//! otherwise), written to `metrics.json` (test) or `metrics-val.json` (validation), which say which set they
//! scored.
//!
//! Surface distances of a case where a structure is missed (or predicted where the reference has none) are
//! undefined; the means count such cases with the image diagonal in millimetres as their distance (the largest
//! distance inside the image) instead of dropping them, and report how many there were.
use crate::infer::Predictor;
use crate::train::split;
use crate::{RunDir, SegError};
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use vesalius_eval::bootstrap::{Clusters, Estimate, cluster_percentile_ci};
use vesalius_eval::segmentation::{ClassMetrics, class_metrics};

/// Bootstrap resamples.
pub const RESAMPLES: usize = 1000;

pub use vesalius_eval::EvalSet;

/// One case's metrics per foreground class (by name).
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Case id.
    pub id: String,
    /// Patient id.
    pub patient: String,
    /// Metrics per class name (surface distances `null` where one of the two maps is empty).
    pub classes: BTreeMap<String, ClassMetrics>,
}

/// `metrics.json`.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsFile {
    /// The set scored: `"test"` or `"validation"`.
    pub set: String,
    /// What the bootstrap resampled: `"patients"` or `"cases"`.
    pub bootstrap_unit: String,
    /// Cases evaluated.
    pub cases: Vec<CaseResult>,
    /// Per class name, per metric: mean over cases with its 95 % interval. Surface distances count a case with a
    /// missed or spurious structure at the image diagonal (see `missing_surface`).
    pub mean: BTreeMap<String, BTreeMap<String, Estimate>>,
    /// Per class name: cases where exactly one of prediction and reference was empty (surface distance taken as
    /// the image diagonal in the means).
    pub missing_surface: BTreeMap<String, usize>,
    /// Confidence level.
    pub level: f64,
}

fn mean_ci(values: &[f64], clusters: &Clusters, seed: u64) -> Estimate {
    let value = values.iter().sum::<f64>() / values.len().max(1) as f64;
    cluster_percentile_ci(clusters, RESAMPLES, 0.95, seed, value, |idx| {
        Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64)
    })
}

/// Length of the image's diagonal in millimetres.
pub fn diagonal_mm(shape: [usize; 3], spacing: [f64; 3]) -> f64 {
    (0..3).map(|a| (shape[a] as f64 * spacing[a]).powi(2)).sum::<f64>().sqrt()
}

/// Predicts every case of `set` with the run's best model and scores it against its labels.
pub fn evaluate<B: Backend>(run: &RunDir, device: &B::Device, flip_tta: bool, set: EvalSet) -> Result<MetricsFile, SegError> {
    let predictor = Predictor::<B>::load(run, device)?;
    let split = split(&predictor.recipe, run)?;
    let sources = match set {
        EvalSet::Test => &split.test,
        EvalSet::Validation => &split.val,
    };
    if sources.is_empty() {
        return Err(SegError::Input(format!(
            "{}: this run has no labelled {} cases (a test set comes from imagesTs/ with labelsTs/, [data] test, test_share or test_slab); score the validation set with --split val",
            run.root().display(),
            set.name()
        )));
    }
    let bar = vesalius_train::progress::bar(sources.len() as u64, &format!("evaluation ({})", set.name()), false);
    let mut cases = Vec::new();
    let mut diagonals = Vec::new();
    for source in sources {
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
        cases.push(CaseResult { id: source.id().to_string(), patient: source.patient().to_string(), classes });
        diagonals.push(diagonal_mm(shape, spacing));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let patients: Vec<Option<&str>> = cases.iter().map(|c| Some(c.patient.as_str())).collect();
    let clusters = Clusters::from_ids(&patients);
    let mut mean = BTreeMap::new();
    let mut missing_surface = BTreeMap::new();
    for (&value, name) in split.labels.iter().filter(|(v, _)| **v > 0) {
        let get = |f: &dyn Fn(&ClassMetrics) -> f64| -> Vec<f64> { cases.iter().map(|c| f(&c.classes[name])).collect() };
        let or_diagonal = |f: &dyn Fn(&ClassMetrics) -> Option<f64>| -> Vec<f64> {
            cases.iter().zip(&diagonals).map(|(c, d)| f(&c.classes[name]).unwrap_or(*d)).collect()
        };
        let mut m = BTreeMap::new();
        let seed = value as u64;
        m.insert("dice".to_string(), mean_ci(&get(&|c| c.dice), &clusters, seed));
        m.insert("iou".to_string(), mean_ci(&get(&|c| c.iou), &clusters, seed));
        m.insert("hd95_mm".to_string(), mean_ci(&or_diagonal(&|c| c.hd95), &clusters, seed));
        m.insert("assd_mm".to_string(), mean_ci(&or_diagonal(&|c| c.assd), &clusters, seed));
        m.insert("volume_difference_mm3".to_string(), mean_ci(&get(&|c| c.volume_difference), &clusters, seed));
        mean.insert(name.clone(), m);
        missing_surface.insert(name.clone(), cases.iter().filter(|c| c.classes[name].hd95.is_none()).count());
    }
    let metrics = MetricsFile { set: set.name().into(), bootstrap_unit: clusters.unit().into(), cases, mean, missing_surface, level: 0.95 };
    run.write_json(set.file(), &metrics)?;
    Ok(metrics)
}
