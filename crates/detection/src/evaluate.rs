//! FROC evaluation of detection files or of a run's detections: the LUNA16 numbers with bootstrap intervals over
//! scans, as JSON, and the curve as CSV.
//!
//! ```
//! use vesalius_detection::annotations::Detection;
//! use vesalius_detection::evaluate::{evaluate_detections, EvalOptions};
//! let truth = vec![Detection::finding("a", [0.0; 3], 10.0), Detection::finding("b", [0.0; 3], 10.0)];
//! let marks = vec![Detection::mark("a", [1.0, 0.0, 0.0], 6.0, 0.9), Detection::mark("b", [40.0, 0.0, 0.0], 6.0, 0.8)];
//! let (report, _curve) = evaluate_detections(&truth, &[], &marks, None, &EvalOptions::default()).unwrap();
//! assert_eq!((report.n_scans, report.n_nodules, report.n_detected), (2, 2, 1));
//! assert_eq!(report.sensitivities["0.125"], 0.5);
//! assert_eq!(report.scans_from, "files");
//! ```
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vesalius_eval::detection::{CPM_RATES, Froc, FrocOptions, froc};

use crate::DetectError;
use crate::annotations::Detection;

/// Options of [`evaluate_detections`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// Marks kept per scan (LUNA16: 100; 0: all).
    pub max_marks: usize,
    /// Bootstrap resamples of the scans.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { max_marks: 100, resamples: 1000, seed: 0 }
    }
}

/// The LUNA16 numbers of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrocReport {
    /// Mean sensitivity at 1/8 … 8 false positives per scan.
    pub cpm: f64,
    /// 95 % percentile bootstrap interval of the CPM over scans.
    pub cpm_ci: [f64; 2],
    /// Sensitivity at each rate, keyed `"0.125"`, `"0.25"`, `"0.5"`, `"1"`, `"2"`, `"4"`, `"8"`.
    pub sensitivities: BTreeMap<String, f64>,
    /// 95 % intervals of the sensitivities.
    pub sensitivities_ci: BTreeMap<String, [f64; 2]>,
    /// Reference nodules.
    pub n_nodules: usize,
    /// Scans (the false-positive rate's denominator).
    pub n_scans: usize,
    /// Nodules hit.
    pub n_detected: usize,
    /// False-positive marks.
    pub n_false_positives: usize,
    /// Marks on excluded findings only (neither true nor false positives).
    pub n_irrelevant: usize,
    /// Marks left out by the per-scan cap.
    pub n_capped: usize,
    /// Marks on scans outside the scan list.
    pub n_unlisted: usize,
    /// The per-scan cap used.
    pub max_marks: usize,
    /// Bootstrap resamples of the intervals.
    pub resamples: usize,
    /// `"list"` when the scans came from a scan list; `"files"` when they are the scans named by the truth,
    /// excluded and detection files (scans without nodules and marks are then missing from the denominator).
    pub scans_from: String,
}

/// The key of a rate in [`FrocReport::sensitivities`].
pub fn rate_key(rate: f64) -> String {
    if rate.fract() == 0.0 { format!("{}", rate as i64) } else { format!("{rate}") }
}

/// Scores `detections` against `truth` (and `excluded` findings) over `scans`, or over every scan named in the
/// three lists when `scans` is `None`. Returns the report and the curve.
pub fn evaluate_detections(
    truth: &[Detection],
    excluded: &[Detection],
    detections: &[Detection],
    scans: Option<&[String]>,
    options: &EvalOptions,
) -> Result<(FrocReport, Froc), DetectError> {
    let (scans, scans_from) = match scans {
        Some(s) => (s.to_vec(), "list"),
        None => {
            let mut seen = std::collections::HashSet::new();
            let all = truth.iter().chain(excluded).chain(detections).map(|d| d.scan.clone()).filter(|s| seen.insert(s.clone())).collect();
            (all, "files")
        }
    };
    if let Some(d) = detections.iter().find(|d| d.probability.is_none()) {
        return Err(DetectError::Input(format!("detection on scan {} has no probability", d.scan)));
    }
    let t: Vec<_> = truth.iter().map(Detection::to_finding).collect();
    let e: Vec<_> = excluded.iter().map(Detection::to_finding).collect();
    let m: Vec<_> = detections.iter().map(Detection::to_mark).collect();
    let curve = froc(&scans, &t, &e, &m, &FrocOptions { max_marks: options.max_marks })?;
    let (cpm, per_rate) = curve.bootstrap(options.resamples, 0.95, options.seed);
    let report = FrocReport {
        cpm: curve.cpm(),
        cpm_ci: [cpm.ci_low, cpm.ci_high],
        sensitivities: CPM_RATES.iter().map(|&r| (rate_key(r), curve.sensitivity_at(r))).collect(),
        sensitivities_ci: CPM_RATES.iter().zip(&per_rate).map(|(&r, e)| (rate_key(r), [e.ci_low, e.ci_high])).collect(),
        n_nodules: curve.n_nodules,
        n_scans: curve.n_scans,
        n_detected: curve.n_detected,
        n_false_positives: curve.n_false_positives,
        n_irrelevant: curve.n_irrelevant,
        n_capped: curve.n_capped,
        n_unlisted: curve.n_unlisted,
        max_marks: options.max_marks,
        resamples: options.resamples,
        scans_from: scans_from.to_string(),
    };
    Ok((report, curve))
}

/// Writes the FROC curve as CSV (`fps_per_scan,sensitivity,threshold`), atomically.
pub fn write_curve(path: &Path, curve: &Froc) -> Result<(), DetectError> {
    let mut text = String::from("fps_per_scan,sensitivity,threshold\n");
    for k in 0..curve.fps.len() {
        text.push_str(&format!("{},{},{}\n", curve.fps[k], curve.sensitivity[k], curve.thresholds[k]));
    }
    vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| DetectError::Internal(e.to_string()))
}
