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
use crate::data::Scan;

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

/// Sensitivity, precision and F1 of the marks at or above an operating threshold, with bootstrap intervals over
/// scans. Marks are matched one to one, the most probable first, to a finding they hit by LUNA16's rule (distance
/// below the radius) that no earlier mark took; a second mark on a found finding is a false positive here (unlike
/// the FROC, where LUNA16 ignores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// The probability threshold.
    pub threshold: f64,
    /// Findings hit by a mark / findings.
    pub sensitivity: Estimate,
    /// Marks that hit a finding / marks.
    pub precision: Estimate,
    /// Harmonic mean of the two.
    pub f1: Estimate,
    /// Marks at or above the threshold.
    pub marks: usize,
    /// Per scan: `(scan, findings, findings found, marks, false-positive marks)` at the threshold.
    pub per_scan: Vec<(String, usize, usize, usize, usize)>,
}

use vesalius_eval::bootstrap::{Estimate, for_each_resample, percentile_bounds};

fn dist2(f: &Detection, m: &Detection) -> f64 {
    (0..3).map(|a| (f.centre[a] - m.centre[a]).powi(2)).sum()
}

fn hits(f: &Detection, m: &Detection) -> bool {
    let d = if f.diameter_mm < 0.0 { vesalius_eval::detection::UNKNOWN_DIAMETER_MM } else { f.diameter_mm };
    f.scan == m.scan && (0..3).map(|a| (f.centre[a] - m.centre[a]).powi(2)).sum::<f64>() < (d / 2.0).powi(2)
}

/// The operating point of `marks` against the findings of `scans` at `threshold`.
pub fn operating_point(scans: &[Scan], marks: &[Detection], threshold: f64, resamples: usize, seed: u64) -> OperatingPoint {
    // Per scan: [findings, findings hit, marks, marks that hit].
    let counts: Vec<[f64; 4]> = scans
        .iter()
        .map(|s| {
            let mut mine: Vec<&Detection> = marks.iter().filter(|m| m.scan == s.id && m.probability.unwrap_or(0.0) >= threshold).collect();
            mine.sort_by(|a, b| b.probability.unwrap_or(0.0).total_cmp(&a.probability.unwrap_or(0.0)));
            let mut taken = vec![false; s.findings.len()];
            let mut good = 0usize;
            for m in &mine {
                // The nearest free finding the mark hits.
                let best = (0..s.findings.len())
                    .filter(|&k| !taken[k] && hits(&s.findings[k], m))
                    .min_by(|&a, &b| dist2(&s.findings[a], m).total_cmp(&dist2(&s.findings[b], m)));
                if let Some(k) = best {
                    taken[k] = true;
                    good += 1;
                }
            }
            [s.findings.len() as f64, good as f64, mine.len() as f64, good as f64]
        })
        .collect();
    let metrics = |idx: &mut dyn Iterator<Item = usize>| {
        let mut t = [0.0; 4];
        for i in idx {
            for k in 0..4 {
                t[k] += counts[i][k];
            }
        }
        let sens = if t[0] > 0.0 { t[1] / t[0] } else { f64::NAN };
        let prec = if t[2] > 0.0 { t[3] / t[2] } else { f64::NAN };
        let f1 = if sens + prec > 0.0 { 2.0 * sens * prec / (sens + prec) } else { 0.0 };
        [sens, prec, f1]
    };
    let point = metrics(&mut (0..counts.len()));
    let mut draws: [Vec<f64>; 3] = Default::default();
    for_each_resample(counts.len(), resamples, seed, |idx| {
        let m = metrics(&mut idx.iter().copied());
        for k in 0..3 {
            if m[k].is_finite() {
                draws[k].push(m[k]);
            }
        }
    });
    let est = |k: usize, d: &mut Vec<f64>| {
        let resamples = d.len();
        let (ci_low, ci_high) = percentile_bounds(d, 0.95);
        Estimate { value: point[k], ci_low, ci_high, resamples }
    };
    let [mut a, mut b, mut c] = draws;
    OperatingPoint {
        threshold,
        sensitivity: est(0, &mut a),
        precision: est(1, &mut b),
        f1: est(2, &mut c),
        marks: counts.iter().map(|c| c[2] as usize).sum(),
        per_scan: scans
            .iter()
            .zip(&counts)
            .map(|(s, c)| (s.id.clone(), c[0] as usize, c[1] as usize, c[2] as usize, (c[2] - c[3]) as usize))
            .collect(),
    }
}

/// The threshold of highest F1 of `marks` on `scans` among 0.05, 0.10, …, 0.95 (the lowest on ties).
pub fn choose_threshold(scans: &[Scan], marks: &[Detection]) -> f64 {
    let mut best = (f64::NEG_INFINITY, 0.5);
    for k in 1..20 {
        let t = k as f64 * 0.05;
        let f1 = operating_point(scans, marks, t, 0, 0).f1.value;
        if f1 > best.0 {
            best = (f1, t);
        }
    }
    best.1
}

/// The FROC report and the operating point of `marks` on `scans` at `threshold` with the recipe's evaluation
/// settings.
pub fn score(
    scans: &[Scan],
    marks: &[Detection],
    threshold: f64,
    recipe: &crate::recipe::DetRecipe,
    seed: u64,
) -> Result<(FrocReport, OperatingPoint), DetectError> {
    let truth: Vec<Detection> = scans.iter().flat_map(|s| s.findings.iter().cloned()).collect();
    let ids: Vec<String> = scans.iter().map(|s| s.id.clone()).collect();
    let e = &recipe.eval;
    let options = EvalOptions { max_marks: e.max_marks, resamples: e.resamples, seed };
    let (report, _) = evaluate_detections(&truth, &[], marks, Some(&ids), &options)?;
    Ok((report, operating_point(scans, marks, threshold, e.resamples, seed)))
}

/// The evaluation of a run on one set (`metrics.json` or `metrics-val.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetMetrics {
    /// `"test"` or `"validation"`.
    pub set: String,
    /// The scans scored.
    pub scans: Vec<String>,
    /// FROC, CPM and the seven sensitivities with intervals over scans.
    pub froc: FrocReport,
    /// Sensitivity, precision and F1 at the operating threshold.
    pub operating_point: OperatingPoint,
    /// `"recipe"` when the recipe set the threshold, `"validation"` when it was the best F1 on the validation scans.
    pub threshold_from: String,
    /// The file of the marks (LUNA16 columns, world LPS) in the run folder.
    pub detections_file: String,
    /// Box detectors: COCO average precision at IoU 0.1 and 0.5 (keys `"0.1"`, `"0.5"`), reference boxes from the
    /// findings' boxes (the cube of the diameter where a finding has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_precision: Option<BTreeMap<String, f64>>,
}

/// A finding's or mark's box: its own, or the cube (square) of its diameter.
fn box_of(d: &Detection, nd: usize) -> vesalius_eval::detection::Aabb {
    d.bbox.unwrap_or_else(|| {
        let r = d.diameter_mm.max(0.0) / 2.0;
        let lo = std::array::from_fn(|a| if a < nd { d.centre[a] - r } else { d.centre[a] });
        let hi = std::array::from_fn(|a| if a < nd { d.centre[a] + r } else { d.centre[a] + 1.0 });
        vesalius_eval::detection::Aabb::new(lo, hi)
    })
}

/// COCO average precision of box marks at IoU 0.1 and 0.5 on `scans`.
pub fn box_average_precision(scans: &[Scan], marks: &[Detection]) -> Option<BTreeMap<String, f64>> {
    let nd = scans.first()?.ndim;
    let truth: Vec<(String, vesalius_eval::detection::Aabb)> =
        scans.iter().flat_map(|s| s.findings.iter().map(|f| (s.id.clone(), box_of(f, nd)))).collect();
    let dets: Vec<vesalius_eval::detection::ScoredBox> = marks
        .iter()
        .map(|m| vesalius_eval::detection::ScoredBox { image: m.scan.clone(), bbox: box_of(m, nd), score: m.probability.unwrap_or(0.0) })
        .collect();
    let mut out = BTreeMap::new();
    for t in [0.1, 0.5] {
        out.insert(format!("{t}"), vesalius_eval::detection::average_precision(&truth, &dets, t)?);
    }
    Some(out)
}

/// Reads a run's recipe.
pub fn read_run(run: &vesalius_train::RunDir) -> Result<crate::recipe::DetRecipe, DetectError> {
    let text = std::fs::read_to_string(run.recipe()).map_err(|e| DetectError::Input(format!("{}: {e}", run.recipe().display())))?;
    crate::recipe::DetRecipe::from_toml(&text, run.root()).map_err(|e| DetectError::Input(format!("{}: {e}", run.recipe().display())))
}

/// A run's inference settings (`run.json`).
pub fn read_info(run: &vesalius_train::RunDir) -> Result<crate::train::DetInfo, DetectError> {
    let info: crate::train::RunInfo = run.read_info().map_err(|e| DetectError::Input(format!("{}: {e}", run.info_file().display())))?;
    Ok(info.details)
}

/// The run's best model.
pub fn load_best<B: burn::tensor::backend::Backend>(
    run: &vesalius_train::RunDir,
    recipe: &crate::recipe::DetRecipe,
    device: &B::Device,
) -> Result<crate::model::Detector<B>, DetectError> {
    Ok(vesalius_train::engine::load_module(crate::model::build::<B>(recipe, device), &run.best_model(), device)?)
}

/// Evaluates a run's best model on `set` and writes the metrics, the marks and the FROC curve in the run folder.
pub fn evaluate<B: burn::tensor::backend::Backend>(
    run: &vesalius_train::RunDir,
    device: &B::Device,
    set: vesalius_eval::EvalSet,
) -> Result<DetMetrics, DetectError> {
    let recipe = read_run(run)?;
    let data = crate::data::prepare(&recipe)?;
    evaluate_prepared::<B>(run, &recipe, &data, set, device)
}

/// [`evaluate`] on prepared data.
pub fn evaluate_prepared<B: burn::tensor::backend::Backend>(
    run: &vesalius_train::RunDir,
    recipe: &crate::recipe::DetRecipe,
    data: &crate::data::Prepared,
    set: vesalius_eval::EvalSet,
    device: &B::Device,
) -> Result<DetMetrics, DetectError> {
    let net = load_best::<B>(run, recipe, device)?;
    let scans = match set {
        vesalius_eval::EvalSet::Test => &data.test,
        vesalius_eval::EvalSet::Validation => &data.val,
    };
    let options = crate::train::detect_options(recipe, &read_info(run)?);
    let run_on = |set: &[Scan]| -> Result<Vec<Detection>, DetectError> {
        let mut marks = Vec::new();
        for s in set {
            marks.extend(crate::infer::detect(&net, s, &options, device)?);
        }
        Ok(marks)
    };
    let marks = run_on(scans)?;
    let (threshold, threshold_from) = match recipe.eval.threshold {
        Some(t) => (t, "recipe"),
        None if set == vesalius_eval::EvalSet::Validation => (choose_threshold(scans, &marks), "validation"),
        None => (choose_threshold(&data.val, &run_on(&data.val)?), "validation"),
    };
    let (froc_report, op) = score(scans, &marks, threshold, recipe, recipe.seed)?;
    let name = set.name();
    let det_file = format!("detections-{name}.csv");
    crate::annotations::write_luna_marks_csv(&run.file(&det_file), &marks, crate::geometry::Frame::Lps)?;
    let truth: Vec<Detection> = scans.iter().flat_map(|s| s.findings.iter().cloned()).collect();
    let ids: Vec<String> = scans.iter().map(|s| s.id.clone()).collect();
    let (_, curve) =
        evaluate_detections(&truth, &[], &marks, Some(&ids), &EvalOptions { max_marks: recipe.eval.max_marks, resamples: 0, seed: 0 })?;
    write_curve(&run.file(&format!("froc-{name}.csv")), &curve)?;
    for s in scans.iter().filter(|s| s.ndim == 2) {
        let file = run.file(&format!("detections-{}.png", s.id.replace([':', '/', '\\'], "_")));
        overlay(&file, s, &marks, threshold)?;
    }
    let m = DetMetrics {
        set: name.to_string(),
        scans: ids,
        froc: froc_report,
        operating_point: op,
        threshold_from: threshold_from.to_string(),
        detections_file: det_file,
        average_precision: if recipe.model.arch == crate::recipe::Arch::Retina { box_average_precision(scans, &marks) } else { None },
    };
    let text = serde_json::to_string_pretty(&m).map_err(|e| DetectError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&run.file(set.file()), text.as_bytes()).map_err(|e| DetectError::Internal(e.to_string()))?;
    Ok(m)
}

/// Draws a 2D scan in grey with its findings (green circles of their diameter) and the marks at or above
/// `threshold` (red circles), as PNG.
pub fn overlay(path: &Path, scan: &Scan, marks: &[Detection], threshold: f64) -> Result<(), DetectError> {
    let [w, h, _] = scan.shape;

    let (lo, hi) = scan.mean_channel().iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    let mean = scan.mean_channel();
    let grey: Vec<f32> = mean.iter().map(|&v| ((v - lo) * scale).round().clamp(0.0, 255.0)).collect();
    let mut rgb = [grey.clone(), grey.clone(), grey];
    let g = &scan.geometry;
    let mut circle = |centre: [f64; 3], diameter: f64, colour: [f32; 3]| {
        let c = g.to_voxel(centre);
        let r = (diameter.max(2.0) / 2.0) / g.spacing()[0].max(1e-6);
        let steps = (2.0 * std::f64::consts::PI * r).ceil().max(8.0) as usize * 2;
        for k in 0..steps {
            let t = 2.0 * std::f64::consts::PI * k as f64 / steps as f64;
            let (x, y) = ((c[0] + r * t.cos()).round(), (c[1] + r * t.sin()).round());
            if x >= 0.0 && y >= 0.0 && (x as usize) < w && (y as usize) < h {
                let p = x as usize + w * y as usize;
                for ch in 0..3 {
                    rgb[ch][p] = colour[ch];
                }
            }
        }
    };
    for f in &scan.findings {
        circle(f.centre, f.diameter_mm, [0.0, 220.0, 0.0]);
    }
    for m in marks.iter().filter(|m| m.scan == scan.id && m.probability.unwrap_or(0.0) >= threshold) {
        circle(m.centre, m.diameter_mm, [255.0, 0.0, 0.0]);
    }
    let data: Vec<f32> = rgb.into_iter().flatten().collect();
    let img = vesalius_io::Image::new(data, vec![w, h], 3, vesalius_io::ITK_2D_AFFINE, "uint8")?;
    vesalius_io::save_2d(path, &img).map_err(|e| DetectError::Internal(e.to_string()))
}
