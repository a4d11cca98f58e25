//! Classification metrics for binary, multi-class and multi-label problems, with bootstrap intervals.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::bootstrap::{Clusters, Estimate, for_each_cluster_resample};

/// Ground truth of an evaluation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Targets {
    /// One class index per case (binary or multi-class).
    Single(Vec<usize>),
    /// One 0/1 flag per label per case (multi-label, e.g. ChestMNIST's 14 findings).
    Multi(Vec<Vec<u8>>),
}

impl Targets {
    /// Number of cases.
    pub fn len(&self) -> usize {
        match self {
            Targets::Single(t) => t.len(),
            Targets::Multi(t) => t.len(),
        }
    }

    /// Whether there are no cases.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn subset(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Single(t) => Targets::Single(idx.iter().map(|&i| t[i]).collect()),
            Targets::Multi(t) => Targets::Multi(idx.iter().map(|&i| t[i].clone()).collect()),
        }
    }
}

/// The headline metrics, each with a 95 % bootstrap interval, plus the confusion matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Number of cases evaluated.
    pub n: usize,
    /// `"binary"`, `"multiclass"` or `"multilabel"`.
    pub task: String,
    /// Metric name → estimate with interval: `accuracy`, `balanced_accuracy`, `auc`, `sensitivity`,
    /// `specificity`, `f1`.
    pub metrics: BTreeMap<String, Estimate>,
    /// Rows: true class; columns: predicted class (single-label tasks only).
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Bootstrap resamples drawn and the generator's seed.
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap generator.
    pub bootstrap_seed: u64,
    /// What the bootstrap resampled: `"patients"` (every image of a drawn patient) or `"cases"`.
    #[serde(default = "default_unit")]
    pub bootstrap_unit: String,
}

fn default_unit() -> String {
    "cases".into()
}

/// Point values of every metric on one set of cases; `None` where a metric is undefined.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PointMetrics {
    /// Fraction of correct predictions (multi-label: mean over labels, as MedMNIST).
    pub accuracy: Option<f64>,
    /// Mean recall over classes.
    pub balanced_accuracy: Option<f64>,
    /// ROC AUC: binary; one-vs-rest macro for multi-class; mean over labels for multi-label.
    pub auc: Option<f64>,
    /// True-positive rate (binary: class 1; otherwise macro over classes/labels).
    pub sensitivity: Option<f64>,
    /// True-negative rate (binary: class 1 as positive; otherwise macro).
    pub specificity: Option<f64>,
    /// F1 (binary: class 1; otherwise macro over classes/labels).
    pub f1: Option<f64>,
}

impl PointMetrics {
    fn get(&self, name: &str) -> Option<f64> {
        match name {
            "accuracy" => self.accuracy,
            "balanced_accuracy" => self.balanced_accuracy,
            "auc" => self.auc,
            "sensitivity" => self.sensitivity,
            "specificity" => self.specificity,
            "f1" => self.f1,
            _ => None,
        }
    }
}

/// Names of the headline metrics, in report order.
pub const METRICS: [&str; 6] = ["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1"];

fn check(scores: &[Vec<f32>], targets: &Targets) -> Result<usize, EvalError> {
    if scores.is_empty() {
        return Err(EvalError::Empty);
    }
    if scores.len() != targets.len() {
        return Err(EvalError::Shape(format!("{} score rows for {} targets", scores.len(), targets.len())));
    }
    let k = scores[0].len();
    if k == 0 || scores.iter().any(|s| s.len() != k) {
        return Err(EvalError::Shape("score rows must all have the same, non-zero width".into()));
    }
    match targets {
        Targets::Single(t) => {
            if let Some(&bad) = t.iter().find(|&&c| c >= k.max(2)) {
                return Err(EvalError::Shape(format!("class {bad} out of range for {k} scores")));
            }
        }
        Targets::Multi(t) => {
            if t.iter().any(|r| r.len() != k) {
                return Err(EvalError::Shape(format!("every target row must have {k} labels")));
            }
        }
    }
    Ok(k)
}

/// Predicted class of a single-label score row (a single column is the probability of class 1).
pub fn predicted_class(row: &[f32]) -> usize {
    if row.len() == 1 {
        return usize::from(row[0] >= 0.5);
    }
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Confusion matrix (rows true, columns predicted) over `k` classes.
pub fn confusion_matrix(scores: &[Vec<f32>], targets: &[usize], k: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; k]; k];
    for (row, &t) in scores.iter().zip(targets) {
        m[t][predicted_class(row)] += 1;
    }
    m
}

/// Area under the ROC curve of `scores` for binary `positive` flags (Mann–Whitney U with mid-ranks for ties).
///
/// `None` when one of the two classes is absent.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            if positive[o] {
                rank_sum_pos += mid_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Counts of one binary decision: (tp, fp, tn, fn).
fn counts(pred: impl Iterator<Item = (bool, bool)>) -> (f64, f64, f64, f64) {
    let (mut tp, mut fp, mut tn, mut fneg) = (0.0, 0.0, 0.0, 0.0);
    for (p, t) in pred {
        match (p, t) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, false) => tn += 1.0,
            (false, true) => fneg += 1.0,
        }
    }
    (tp, fp, tn, fneg)
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn f1_of(tp: f64, fp: f64, fneg: f64) -> Option<f64> {
    ratio(2.0 * tp, 2.0 * tp + fp + fneg)
}

fn mean_defined(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Every metric on one set of cases. `scores` holds one row per case: class probabilities for single-label tasks
/// (or one column with the probability of class 1), label probabilities for multi-label tasks.
pub fn point_metrics(scores: &[Vec<f32>], targets: &Targets) -> Result<PointMetrics, EvalError> {
    let k = check(scores, targets)?;
    Ok(match targets {
        Targets::Single(t) => {
            let classes = k.max(2);
            let cm = confusion_matrix(scores, t, classes);
            let n = t.len() as f64;
            let correct: u64 = (0..classes).map(|c| cm[c][c]).sum();
            let per_class = |c: usize| {
                let tp = cm[c][c] as f64;
                let fneg: f64 = cm[c].iter().sum::<u64>() as f64 - tp;
                let fp: f64 = (0..classes).map(|r| cm[r][c]).sum::<u64>() as f64 - tp;
                let tn = n - tp - fneg - fp;
                (tp, fp, tn, fneg)
            };
            let score_of = |row: &Vec<f32>, c: usize| if k == 1 { if c == 1 { row[0] } else { 1.0 - row[0] } } else { row[c] };
            let auc_c = |c: usize| {
                let s: Vec<f32> = scores.iter().map(|r| score_of(r, c)).collect();
                let p: Vec<bool> = t.iter().map(|&x| x == c).collect();
                roc_auc(&s, &p)
            };
            let recall = mean_defined((0..classes).map(|c| {
                let (tp, _, _, fneg) = per_class(c);
                ratio(tp, tp + fneg)
            }));
            if classes == 2 {
                let (tp, fp, tn, fneg) = per_class(1);
                PointMetrics {
                    accuracy: Some(correct as f64 / n),
                    balanced_accuracy: recall,
                    auc: auc_c(1),
                    sensitivity: ratio(tp, tp + fneg),
                    specificity: ratio(tn, tn + fp),
                    f1: f1_of(tp, fp, fneg),
                }
            } else {
                PointMetrics {
                    accuracy: Some(correct as f64 / n),
                    balanced_accuracy: recall,
                    auc: mean_defined((0..classes).map(auc_c)),
                    sensitivity: recall,
                    specificity: mean_defined((0..classes).map(|c| {
                        let (_, fp, tn, _) = per_class(c);
                        ratio(tn, tn + fp)
                    })),
                    f1: mean_defined((0..classes).map(|c| {
                        let (tp, fp, _, fneg) = per_class(c);
                        f1_of(tp, fp, fneg)
                    })),
                }
            }
        }
        Targets::Multi(t) => {
            let per_label: Vec<(f64, f64, f64, f64)> =
                (0..k).map(|l| counts(scores.iter().zip(t).map(|(s, tr)| (s[l] >= 0.5, tr[l] != 0)))).collect();
            let n = t.len() as f64;
            PointMetrics {
                accuracy: Some(per_label.iter().map(|(tp, _, tn, _)| (tp + tn) / n).sum::<f64>() / k as f64),
                balanced_accuracy: mean_defined(per_label.iter().map(|&(tp, fp, tn, fneg)| {
                    match (ratio(tp, tp + fneg), ratio(tn, tn + fp)) {
                        (Some(a), Some(b)) => Some((a + b) / 2.0),
                        _ => None,
                    }
                })),
                auc: mean_defined((0..k).map(|l| {
                    let s: Vec<f32> = scores.iter().map(|r| r[l]).collect();
                    let p: Vec<bool> = t.iter().map(|r| r[l] != 0).collect();
                    roc_auc(&s, &p)
                })),
                sensitivity: mean_defined(per_label.iter().map(|&(tp, _, _, fneg)| ratio(tp, tp + fneg))),
                specificity: mean_defined(per_label.iter().map(|&(_, fp, tn, _)| ratio(tn, tn + fp))),
                f1: mean_defined(per_label.iter().map(|&(tp, fp, _, fneg)| f1_of(tp, fp, fneg))),
            }
        }
    })
}

/// All metrics with 95 % percentile-bootstrap intervals (`resamples` draws of the cases, ChaCha8 seeded by `seed`).
pub fn evaluate(scores: &[Vec<f32>], targets: &Targets, resamples: usize, seed: u64) -> Result<ClassificationReport, EvalError> {
    evaluate_clustered(scores, targets, &Clusters::cases(scores.len()), resamples, seed)
}

/// [`evaluate`] with the bootstrap over `clusters` (patients) instead of cases.
pub fn evaluate_clustered(
    scores: &[Vec<f32>],
    targets: &Targets,
    clusters: &Clusters,
    resamples: usize,
    seed: u64,
) -> Result<ClassificationReport, EvalError> {
    let k = check(scores, targets)?;
    if clusters.cases_covered() != scores.len() {
        return Err(EvalError::Shape(format!(
            "{} scores but the patient grouping covers {} cases",
            scores.len(),
            clusters.cases_covered()
        )));
    }
    let point = point_metrics(scores, targets)?;
    let n = scores.len();
    // One pass of resampling computes all metrics on the same resamples.
    let mut samples: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(resamples); METRICS.len()];
    for_each_cluster_resample(clusters, resamples, seed, |idx| {
        let s: Vec<Vec<f32>> = idx.iter().map(|&i| scores[i].clone()).collect();
        let m = point_metrics(&s, &targets.subset(idx)).ok();
        for (j, name) in METRICS.iter().enumerate() {
            samples[j].push(m.as_ref().and_then(|m| m.get(name)));
        }
    });
    let mut metrics = BTreeMap::new();
    for (j, name) in METRICS.iter().enumerate() {
        let mut v: Vec<f64> = samples[j].iter().flatten().copied().collect();
        let (lo, hi) = crate::bootstrap::percentile_bounds(&mut v, 0.95);
        metrics.insert(
            (*name).to_string(),
            Estimate { value: point.get(name).unwrap_or(f64::NAN), ci_low: lo, ci_high: hi, resamples: v.len() },
        );
    }
    let (task, confusion) = match targets {
        Targets::Single(t) if k.max(2) == 2 => ("binary", Some(confusion_matrix(scores, t, 2))),
        Targets::Single(t) => ("multiclass", Some(confusion_matrix(scores, t, k))),
        Targets::Multi(_) => ("multilabel", None),
    };
    Ok(ClassificationReport {
        n,
        task: task.into(),
        metrics,
        confusion,
        bootstrap_resamples: resamples,
        bootstrap_seed: seed,
        bootstrap_unit: clusters.unit().into(),
    })
}
