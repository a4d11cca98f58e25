//! Detection metrics: the FROC curve and CPM exactly as the LUNA16 challenge computes them, and COCO-style
//! average precision for boxes.
//!
//! # FROC and CPM (LUNA16)
//!
//! [`froc`] follows `noduleCADEvaluationLUNA16.py` (`evaluateCAD` and `computeFROC`) rule by rule:
//!
//! * marks of one scan are capped at [`FrocOptions::max_marks`] (100 by default): when a scan has more, the
//!   probability of the (cap + 1)-th most probable mark is a threshold, and the marks strictly above it are kept in
//!   their input order, at most cap of them — marks tied at the cut are dropped;
//! * a mark hits a finding when its squared distance to the finding's centre is strictly below the squared radius;
//!   a finding with a negative diameter (LUNA16's unmeasured findings, `-1`) has a 10 mm diameter;
//! * findings of a scan are visited reference nodules first, then excluded findings; a mark that hits only an
//!   excluded finding is neither a true nor a false positive;
//! * a reference nodule hit by several marks is one true positive with the highest of their probabilities (a mark
//!   may hit two nodules and count for both, as in the script);
//! * a missed nodule counts in the sensitivity's denominator only;
//! * every mark that hit nothing is a false positive, and false positives per scan divide by every listed scan,
//!   including scans without nodules and scans without marks;
//! * the curve is scikit-learn's `roc_curve` (with `drop_intermediate`) over the true and false positives, so
//!   equal probabilities form one step, scaled to false positives per scan and to sensitivity over all nodules.
//!
//! The script plots the curve but does not compute the CPM. Here the sensitivity at a rate is read from the curve
//! by linear interpolation as `np.interp` does (holding the last sensitivity beyond the curve's end; at a rate the
//! curve reaches in a vertical step, the top of the step), and the CPM is the mean of the sensitivities at 1/8,
//! 1/4, 1/2, 1, 2, 4 and 8 false positives per scan. Where the script would produce NaN — a system without true
//! positives — the sensitivity is 0.
//!
//! Coordinates are in millimetres in any one frame shared by findings and marks (LUNA16 uses world LPS).
//!
//! ```
//! use vesalius_eval::detection::{froc, Finding, FrocOptions, Mark};
//! let scans = vec!["a".to_string(), "b".to_string()];
//! let truth = vec![Finding::new("a", [0.0, 0.0, 0.0], 10.0)];
//! let marks = vec![
//!     Mark::new("a", [1.0, 1.0, 0.0], 0.9), // inside the 5 mm radius: a true positive
//!     Mark::new("b", [50.0, 0.0, 0.0], 0.5), // a false positive on a scan without nodules
//! ];
//! let curve = froc(&scans, &truth, &[], &marks, &FrocOptions::default()).unwrap();
//! assert_eq!(curve.n_detected, 1);
//! assert_eq!(curve.cpm(), 1.0); // the nodule is found before the first false positive
//! ```
//!
//! # Average precision
//!
//! [`average_precision`] scores boxes as COCO does: detections of all images sorted by score, each matched
//! greedily to the unmatched reference box of its image with the highest IoU at or above the threshold, and the
//! precision–recall curve summarised at 101 recall points with the precision envelope.
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::bootstrap::{Estimate, for_each_resample, percentile_bounds};

/// The seven false-positive rates of the CPM.
pub const CPM_RATES: [f64; 7] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0];

/// The diameter LUNA16 reads for a finding of negative (unknown) diameter.
pub const UNKNOWN_DIAMETER_MM: f64 = 10.0;

/// The probability LUNA16 gives a missed nodule (it never enters the curve).
const MISSED: f64 = -1_000_000_000.0;

/// A reference finding: a nodule or an excluded finding, with its centre and diameter in millimetres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The scan (LUNA16's `seriesuid`).
    pub scan: String,
    /// Centre in millimetres.
    pub centre: [f64; 3],
    /// Diameter in millimetres; negative means unknown and reads as [`UNKNOWN_DIAMETER_MM`].
    pub diameter_mm: f64,
}

impl Finding {
    /// A finding of `scan` at `centre` with `diameter_mm`.
    pub fn new(scan: &str, centre: [f64; 3], diameter_mm: f64) -> Self {
        Self { scan: scan.to_string(), centre, diameter_mm }
    }

    /// The squared radius of the hit test.
    fn radius_squared(&self) -> f64 {
        let d = if self.diameter_mm < 0.0 { UNKNOWN_DIAMETER_MM } else { self.diameter_mm };
        (d / 2.0).powi(2)
    }
}

/// A detection mark: a centre in millimetres with the system's probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// The scan (LUNA16's `seriesuid`).
    pub scan: String,
    /// Centre in millimetres.
    pub centre: [f64; 3],
    /// The system's probability (any increasing score).
    pub probability: f64,
}

impl Mark {
    /// A mark on `scan` at `centre` with `probability`.
    pub fn new(scan: &str, centre: [f64; 3], probability: f64) -> Self {
        Self { scan: scan.to_string(), centre, probability }
    }
}

/// Options of [`froc`].
#[derive(Clone, Debug, PartialEq)]
pub struct FrocOptions {
    /// At most this many marks per scan (0: no cap). LUNA16 evaluates with 100.
    pub max_marks: usize,
}

impl Default for FrocOptions {
    fn default() -> Self {
        Self { max_marks: 100 }
    }
}

/// One entry of the curve's input: a true positive (with its best probability), a false positive, or a missed
/// nodule (which only counts in the denominator).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    positive: bool,
    probability: f64,
    missed: bool,
}

/// A FROC curve with the counts behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Froc {
    /// False positives per scan at each point (non-decreasing, from 0).
    pub fps: Vec<f64>,
    /// Sensitivity at each point.
    pub sensitivity: Vec<f64>,
    /// The probability threshold of each point (the first is `+inf`: nothing marked).
    pub thresholds: Vec<f64>,
    /// Scans evaluated (the false-positive rate's denominator).
    pub n_scans: usize,
    /// Reference nodules on those scans.
    pub n_nodules: usize,
    /// Marks kept after the cap that are true or false positives (marks on excluded findings only are not).
    pub n_candidates: usize,
    /// Nodules hit by at least one mark.
    pub n_detected: usize,
    /// False positive marks.
    pub n_false_positives: usize,
    /// Marks that hit only excluded findings.
    pub n_irrelevant: usize,
    /// Marks beyond the per-scan cap, left out.
    pub n_capped: usize,
    /// Marks on scans not in the scan list, left out.
    pub n_unlisted: usize,
    #[serde(skip)]
    per_scan: Vec<Vec<Entry>>,
}

impl Froc {
    /// The sensitivity at `rate` false positives per scan, by `np.interp` over the curve.
    pub fn sensitivity_at(&self, rate: f64) -> f64 {
        interp(rate, &self.fps, &self.sensitivity)
    }

    /// `(rate, sensitivity)` at the seven CPM rates.
    pub fn sensitivities(&self) -> [(f64, f64); 7] {
        CPM_RATES.map(|r| (r, self.sensitivity_at(r)))
    }

    /// The competition performance metric: the mean sensitivity at the seven rates.
    pub fn cpm(&self) -> f64 {
        CPM_RATES.iter().map(|&r| self.sensitivity_at(r)).sum::<f64>() / CPM_RATES.len() as f64
    }

    /// Percentile intervals of the CPM and of the seven sensitivities by resampling scans with replacement
    /// (`n_resamples` times, ChaCha8 seeded with `seed`): `(cpm, [sensitivity at each rate])`.
    pub fn bootstrap(&self, n_resamples: usize, level: f64, seed: u64) -> (Estimate, [Estimate; 7]) {
        let mut cpms = Vec::with_capacity(n_resamples);
        let mut sens: [Vec<f64>; 7] = Default::default();
        for_each_resample(self.per_scan.len(), n_resamples, seed, |idx| {
            let entries: Vec<Entry> = idx.iter().flat_map(|&s| self.per_scan[s].iter().copied()).collect();
            let (fps, sensitivity, _) = curve(&entries, idx.len());
            let at: Vec<f64> = CPM_RATES.iter().map(|&r| interp(r, &fps, &sensitivity)).collect();
            cpms.push(at.iter().sum::<f64>() / at.len() as f64);
            for (k, v) in at.into_iter().enumerate() {
                sens[k].push(v);
            }
        });
        let estimate = |value: f64, values: &mut Vec<f64>| {
            let resamples = values.len();
            let (ci_low, ci_high) = percentile_bounds(values, level);
            Estimate { value, ci_low, ci_high, resamples }
        };
        let cpm = estimate(self.cpm(), &mut cpms);
        let per_rate = std::array::from_fn(|k| estimate(self.sensitivity_at(CPM_RATES[k]), &mut sens[k]));
        (cpm, per_rate)
    }
}

/// `np.interp(x, xp, fp)` for non-decreasing `xp`: the last point with `xp <= x` starts the segment; beyond the
/// ends the end values hold.
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len().min(fp.len());
    if n == 0 {
        return f64::NAN;
    }
    if x < xp[0] {
        return fp[0];
    }
    // Last j with xp[j] <= x.
    let j = xp[..n].partition_point(|&v| v <= x) - 1;
    if j + 1 >= n {
        return fp[n - 1];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let y = slope * (x - xp[j]) + fp[j];
    // numpy falls back to the left value when the slope is undefined.
    if y.is_nan() { fp[j] } else { y }
}

/// The LUNA16 FROC of `marks` against reference `truth` and `excluded` findings over `scans`.
///
/// Findings and marks of scans not in `scans` are left out (counted in [`Froc::n_unlisted`] for marks). Errors when
/// `scans` is empty or a value is not finite.
pub fn froc(scans: &[String], truth: &[Finding], excluded: &[Finding], marks: &[Mark], options: &FrocOptions) -> Result<Froc, EvalError> {
    if scans.is_empty() {
        return Err(EvalError::Empty);
    }
    for f in truth.iter().chain(excluded) {
        if f.centre.iter().any(|v| !v.is_finite()) || !f.diameter_mm.is_finite() {
            return Err(EvalError::Shape(format!("finding on scan {} has a value that is not a number", f.scan)));
        }
    }
    for m in marks {
        if m.centre.iter().any(|v| !v.is_finite()) || !m.probability.is_finite() {
            return Err(EvalError::Shape(format!("mark on scan {} has a value that is not a number", m.scan)));
        }
    }
    let index: std::collections::HashMap<&str, usize> = scans.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let mut by_scan: Vec<Vec<&Mark>> = vec![Vec::new(); scans.len()];
    let mut n_unlisted = 0;
    for m in marks {
        match index.get(m.scan.as_str()) {
            Some(&i) => by_scan[i].push(m),
            None => n_unlisted += 1,
        }
    }
    let mut truth_by: Vec<Vec<&Finding>> = vec![Vec::new(); scans.len()];
    let mut excl_by: Vec<Vec<&Finding>> = vec![Vec::new(); scans.len()];
    for f in truth {
        if let Some(&i) = index.get(f.scan.as_str()) {
            truth_by[i].push(f);
        }
    }
    for f in excluded {
        if let Some(&i) = index.get(f.scan.as_str()) {
            excl_by[i].push(f);
        }
    }

    let mut n_capped = 0;
    let mut n_irrelevant = 0;
    let mut n_nodules = 0;
    let mut per_scan = Vec::with_capacity(scans.len());
    for s in 0..scans.len() {
        let cands = cap(&by_scan[s], options.max_marks);
        n_capped += by_scan[s].len() - cands.len();
        let mut remaining = vec![true; cands.len()];
        let mut entries = Vec::new();
        let findings = truth_by[s].iter().map(|f| (*f, true)).chain(excl_by[s].iter().map(|f| (*f, false)));
        for (f, included) in findings {
            if included {
                n_nodules += 1;
            }
            let r2 = f.radius_squared();
            let mut best: Option<f64> = None;
            for (k, c) in cands.iter().enumerate() {
                let d2 = (f.centre[0] - c.centre[0]).powi(2) + (f.centre[1] - c.centre[1]).powi(2) + (f.centre[2] - c.centre[2]).powi(2);
                if d2 < r2 {
                    if included {
                        best = Some(best.map_or(c.probability, |b: f64| b.max(c.probability)));
                    } else if remaining[k] {
                        n_irrelevant += 1;
                    }
                    remaining[k] = false;
                }
            }
            if included {
                entries.push(match best {
                    Some(p) => Entry { positive: true, probability: p, missed: false },
                    None => Entry { positive: true, probability: MISSED, missed: true },
                });
            }
        }
        for (k, c) in cands.iter().enumerate() {
            if remaining[k] {
                entries.push(Entry { positive: false, probability: c.probability, missed: false });
            }
        }
        per_scan.push(entries);
    }
    let all: Vec<Entry> = per_scan.iter().flatten().copied().collect();
    let (fps, sensitivity, thresholds) = curve(&all, scans.len());
    let n_detected = all.iter().filter(|e| e.positive && !e.missed).count();
    let n_false_positives = all.iter().filter(|e| !e.positive).count();
    Ok(Froc {
        fps,
        sensitivity,
        thresholds,
        n_scans: scans.len(),
        n_nodules,
        n_candidates: n_detected + n_false_positives,
        n_detected,
        n_false_positives,
        n_irrelevant,
        n_capped,
        n_unlisted,
        per_scan,
    })
}

/// The script's cap: keep marks strictly above the (cap + 1)-th highest probability, in input order, at most `cap`.
fn cap<'a>(marks: &[&'a Mark], max: usize) -> Vec<&'a Mark> {
    if max == 0 || marks.len() <= max {
        return marks.to_vec();
    }
    let mut probs: Vec<f64> = marks.iter().map(|m| m.probability).collect();
    probs.sort_by(|a, b| b.total_cmp(a));
    let threshold = probs[max];
    marks.iter().filter(|m| m.probability > threshold).take(max).copied().collect()
}

/// `computeFROC`: scikit-learn's ROC over the entries that are not missed nodules, scaled to false positives per
/// scan and sensitivity over every nodule. Returns `(fps, sensitivity, thresholds)`.
fn curve(entries: &[Entry], n_scans: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let total_nodules = entries.iter().filter(|e| e.positive).count() as f64;
    let local: Vec<&Entry> = entries.iter().filter(|e| !e.missed).collect();
    let detected = local.iter().filter(|e| e.positive).count() as f64;
    let no_false_positives = entries.iter().all(|e| e.positive);
    if local.is_empty() {
        return (vec![0.0], vec![0.0], vec![f64::INFINITY]);
    }
    let (fp_counts, tp_counts, thresholds) = roc_counts(&local);
    let neg = fp_counts.last().copied().unwrap_or(0.0);
    let pos = tp_counts.last().copied().unwrap_or(0.0);
    let fps = if no_false_positives {
        vec![0.0; fp_counts.len()]
    } else {
        fp_counts.iter().map(|&f| (f / neg) * (local.len() as f64 - detected) / n_scans as f64).collect()
    };
    let sensitivity =
        if pos > 0.0 { tp_counts.iter().map(|&t| ((t / pos) * detected) / total_nodules).collect() } else { vec![0.0; tp_counts.len()] };
    (fps, sensitivity, thresholds)
}

/// scikit-learn's `roc_curve(drop_intermediate=True)` as counts: `(false positives, true positives, thresholds)`,
/// starting at `(0, 0, +inf)`.
fn roc_counts(entries: &[&Entry]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[b].probability.total_cmp(&entries[a].probability));
    let mut fps = Vec::new();
    let mut tps = Vec::new();
    let mut thr = Vec::new();
    let mut tp = 0.0;
    for (i, &k) in order.iter().enumerate() {
        if entries[k].positive {
            tp += 1.0;
        }
        let last_of_value = i + 1 == order.len() || entries[order[i + 1]].probability != entries[k].probability;
        if last_of_value {
            tps.push(tp);
            fps.push((i + 1) as f64 - tp);
            thr.push(entries[k].probability);
        }
    }
    // drop_intermediate: keep the ends and every point where either count's second difference is not zero.
    if fps.len() > 2 {
        let keep: Vec<usize> = (0..fps.len())
            .filter(|&i| {
                i == 0
                    || i + 1 == fps.len()
                    || fps[i + 1] - 2.0 * fps[i] + fps[i - 1] != 0.0
                    || tps[i + 1] - 2.0 * tps[i] + tps[i - 1] != 0.0
            })
            .collect();
        fps = keep.iter().map(|&i| fps[i]).collect();
        tps = keep.iter().map(|&i| tps[i]).collect();
        thr = keep.iter().map(|&i| thr[i]).collect();
    }
    fps.insert(0, 0.0);
    tps.insert(0, 0.0);
    thr.insert(0, f64::INFINITY);
    (fps, tps, thr)
}

/// An axis-aligned box in millimetres (or voxels): `lo` and `hi` corners. A 2D box has a unit third extent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aabb {
    /// The low corner.
    pub lo: [f64; 3],
    /// The high corner.
    pub hi: [f64; 3],
}

impl Aabb {
    /// The box from its corners (in any order along each axis).
    pub fn new(a: [f64; 3], b: [f64; 3]) -> Self {
        Self { lo: [a[0].min(b[0]), a[1].min(b[1]), a[2].min(b[2])], hi: [a[0].max(b[0]), a[1].max(b[1]), a[2].max(b[2])] }
    }

    /// The 2D box `[x0, x1] × [y0, y1]` (unit depth).
    pub fn new_2d(x0: f64, y0: f64, x1: f64, y1: f64) -> Self {
        Self::new([x0, y0, 0.0], [x1, y1, 1.0])
    }

    /// The centre.
    pub fn centre(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| 0.5 * (self.lo[a] + self.hi[a]))
    }

    /// The volume (area for a 2D box).
    pub fn volume(&self) -> f64 {
        (0..3).map(|a| (self.hi[a] - self.lo[a]).max(0.0)).product()
    }

    /// Intersection over union; 0 for disjoint or empty boxes.
    pub fn iou(&self, other: &Aabb) -> f64 {
        let inter: f64 = (0..3).map(|a| (self.hi[a].min(other.hi[a]) - self.lo[a].max(other.lo[a])).max(0.0)).product();
        let union = self.volume() + other.volume() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// A scored box of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredBox {
    /// The image.
    pub image: String,
    /// The box.
    pub bbox: Aabb,
    /// The detector's score.
    pub score: f64,
}

/// COCO average precision of `detections` against `truth` boxes (image, box) at `iou_threshold`, with 101-point
/// interpolation. `None` when there is no reference box.
pub fn average_precision(truth: &[(String, Aabb)], detections: &[ScoredBox], iou_threshold: f64) -> Option<f64> {
    if truth.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..detections.len()).collect();
    // COCO sorts by score descending with a stable sort.
    order.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
    let mut used = vec![false; truth.len()];
    let mut tp = 0.0;
    let mut fp = 0.0;
    let mut recall = Vec::with_capacity(order.len());
    let mut precision = Vec::with_capacity(order.len());
    for &d in &order {
        let det = &detections[d];
        let mut best = (iou_threshold, None);
        for (g, (image, b)) in truth.iter().enumerate() {
            if used[g] || *image != det.image {
                continue;
            }
            let iou = b.iou(&det.bbox);
            if iou >= best.0 {
                best = (iou, Some(g));
            }
        }
        match best.1 {
            Some(g) => {
                used[g] = true;
                tp += 1.0;
            }
            None => fp += 1.0,
        }
        recall.push(tp / truth.len() as f64);
        precision.push(tp / (tp + fp));
    }
    // Precision envelope, then precision at recall 0, 0.01, …, 1 (the first point reaching each recall).
    for i in (0..precision.len().saturating_sub(1)).rev() {
        precision[i] = precision[i].max(precision[i + 1]);
    }
    let mut sum = 0.0;
    for k in 0..=100 {
        let r = k as f64 / 100.0;
        let i = recall.partition_point(|&v| v < r);
        if i < precision.len() {
            sum += precision[i];
        }
    }
    Some(sum / 101.0)
}

/// Mean of [`average_precision`] over IoU thresholds 0.50, 0.55, …, 0.95 (COCO's mAP@[.5:.95]).
pub fn mean_average_precision(truth: &[(String, Aabb)], detections: &[ScoredBox]) -> Option<f64> {
    let aps: Option<Vec<f64>> = (0..10).map(|k| average_precision(truth, detections, 0.5 + 0.05 * k as f64)).collect();
    aps.map(|v| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn interp_matches_numpy_rules() {
        let xp = [0.0, 0.0, 1.0, 1.0, 3.0];
        let fp = [0.0, 0.2, 0.4, 0.6, 1.0];
        assert_eq!(interp(0.0, &xp, &fp), 0.2); // top of the vertical step at 0
        assert_eq!(interp(0.5, &xp, &fp), 0.30000000000000004);
        assert_eq!(interp(1.0, &xp, &fp), 0.6);
        assert_eq!(interp(2.0, &xp, &fp), 0.8);
        assert_eq!(interp(8.0, &xp, &fp), 1.0);
    }

    #[test]
    fn hit_is_strictly_inside_and_unknown_diameter_is_ten() {
        let scans = s(&["a"]);
        let truth = vec![Finding::new("a", [0.0; 3], 4.0)];
        // At exactly the radius: not a hit, a false positive.
        let m = vec![Mark::new("a", [2.0, 0.0, 0.0], 0.5)];
        let c = froc(&scans, &truth, &[], &m, &FrocOptions::default()).unwrap();
        assert_eq!((c.n_detected, c.n_false_positives), (0, 1));
        // A finding of diameter -1 reaches 5 mm.
        let t = vec![Finding::new("a", [0.0; 3], -1.0)];
        let m = vec![Mark::new("a", [4.9, 0.0, 0.0], 0.5), Mark::new("a", [5.0, 0.0, 0.0], 0.4)];
        let c = froc(&scans, &t, &[], &m, &FrocOptions::default()).unwrap();
        assert_eq!((c.n_detected, c.n_false_positives), (1, 1));
    }

    #[test]
    fn excluded_marks_are_neither_and_duplicates_make_one_hit() {
        let scans = s(&["a", "b", "c", "d"]);
        let truth = vec![Finding::new("a", [0.0; 3], 10.0)];
        let excluded = vec![Finding::new("a", [30.0, 0.0, 0.0], -1.0)];
        let m = vec![
            Mark::new("a", [1.0, 0.0, 0.0], 0.3),
            Mark::new("a", [0.0, 1.0, 0.0], 0.8),   // the same nodule: one TP at 0.8
            Mark::new("a", [31.0, 0.0, 0.0], 0.99), // on the excluded finding: ignored
            Mark::new("b", [0.0, 0.0, 0.0], 0.9),   // false positive on a scan without nodules
        ];
        let c = froc(&scans, &truth, &excluded, &m, &FrocOptions::default()).unwrap();
        assert_eq!((c.n_detected, c.n_false_positives, c.n_irrelevant, c.n_nodules), (1, 1, 1, 1));
        // One FP at 0.9 (over 4 scans), then the TP at 0.8.
        assert_eq!(c.fps, vec![0.0, 0.25, 0.25]);
        assert_eq!(c.sensitivity, vec![0.0, 0.0, 1.0]);
        assert_eq!(c.sensitivity_at(0.125), 0.0);
        assert_eq!(c.sensitivity_at(0.25), 1.0);
        assert!((c.cpm() - 6.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn cap_drops_ties_at_the_cut() {
        let scans = s(&["a"]);
        let m: Vec<Mark> = [0.9, 0.5, 0.7, 0.5, 0.5].iter().map(|&p| Mark::new("a", [100.0, 0.0, 0.0], p)).collect();
        let c = froc(&scans, &[], &[], &m, &FrocOptions { max_marks: 3 }).unwrap();
        // The 4th highest is 0.5: only 0.9 and 0.7 are strictly above it.
        assert_eq!((c.n_false_positives, c.n_capped), (2, 3));
        let c = froc(&scans, &[], &[], &m, &FrocOptions { max_marks: 0 }).unwrap();
        assert_eq!(c.n_false_positives, 5);
    }

    #[test]
    fn missed_nodules_lower_the_ceiling() {
        let scans = s(&["a"]);
        let truth = vec![Finding::new("a", [0.0; 3], 6.0), Finding::new("a", [50.0, 0.0, 0.0], 6.0)];
        let m = vec![Mark::new("a", [0.0; 3], 0.7)];
        let c = froc(&scans, &truth, &[], &m, &FrocOptions::default()).unwrap();
        assert_eq!(c.cpm(), 0.5);
        // No marks at all: sensitivity 0, not NaN.
        let c = froc(&scans, &truth, &[], &[], &FrocOptions::default()).unwrap();
        assert_eq!(c.cpm(), 0.0);
    }

    #[test]
    fn average_precision_of_known_rankings() {
        let truth = vec![("i".to_string(), Aabb::new_2d(0.0, 0.0, 10.0, 10.0)), ("i".to_string(), Aabb::new_2d(20.0, 20.0, 30.0, 30.0))];
        let b = |x0: f64, y0: f64, score: f64| ScoredBox { image: "i".into(), bbox: Aabb::new_2d(x0, y0, x0 + 10.0, y0 + 10.0), score };
        // Both found first: AP 1.
        assert_eq!(average_precision(&truth, &[b(0.0, 0.0, 0.9), b(20.0, 20.0, 0.8), b(50.0, 50.0, 0.1)], 0.5), Some(1.0));
        // A false positive ranked first: precision 1/2 then 2/3 → envelope 2/3 over every recall point.
        let ap = average_precision(&truth, &[b(50.0, 50.0, 0.95), b(0.0, 0.0, 0.9), b(20.0, 20.0, 0.8)], 0.5).unwrap();
        assert!((ap - 2.0 / 3.0).abs() < 1e-12);
        // Shifted by 5 of 10: IoU 1/3, below 0.5.
        assert_eq!(average_precision(&truth, &[b(5.0, 0.0, 0.9)], 0.5), Some(0.0));
        assert!((Aabb::new_2d(0.0, 0.0, 10.0, 10.0).iou(&Aabb::new_2d(5.0, 0.0, 15.0, 10.0)) - 1.0 / 3.0).abs() < 1e-12);
    }
}
