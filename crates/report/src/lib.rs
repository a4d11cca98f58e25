//! One self-contained HTML file describing a run: what it was (recipe, task), how it trained (learning curves),
//! how it scored on its test set (metrics with 95 % intervals, confusion matrices, ROC curves with bootstrap bands
//! over patients, calibration, FROC), every case (sortable tables) and the images the run wrote.
//!
//! Nothing in the page is fetched: plots are inline SVG, images are `data:` URIs, style and script are inline, and a
//! Content-Security-Policy forbids any other source. A small inline script makes tables sortable and records on the
//! `<body>` how many figures have a non-zero size (`data-figures="shown/total"`) and any script error
//! (`data-errors`), which the browser test reads.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("metrics.json"), r#"{"split": "test", "n": 40,
//!     "metrics": {"auc": {"value": 0.91, "ci_low": 0.84, "ci_high": 0.97, "resamples": 1000}}}"#).unwrap();
//! std::fs::write(dir.path().join("log.jsonl"), concat!(
//!     r#"{"epoch":1,"steps":10,"lr":0.001,"train_loss":0.9,"val":{"auc":0.7},"score":0.7,"best":true,"seconds":1.0}"#, "\n",
//!     r#"{"epoch":2,"steps":20,"lr":0.001,"train_loss":0.5,"val":{"auc":0.9},"score":0.9,"best":true,"seconds":1.0}"#, "\n")).unwrap();
//! let html = vesalius_report::build(dir.path()).unwrap();
//! assert!(html.contains("<h2>Learning curves</h2>") && html.contains("0.910 [0.840, 0.970]"));
//! assert!(!html.contains("src=\"http") && !html.contains("href=\"http")); // inline SVG only names its namespace
//! ```
pub mod plot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::plot::{Chart, Series, calibration, line_chart, roc_points, tpr_at};
use vesalius_eval::survival::{KaplanMeier, log_rank};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The run folder is missing or holds nothing to report.
    #[error("{0}")]
    Input(String),
    /// A plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
}

/// Largest number of per-case rows shown, and of images embedded, and the largest image embedded (bytes).
pub const MAX_ROWS: usize = 5000;
/// Images embedded at most.
pub const MAX_IMAGES: usize = 24;
/// Largest image embedded.
pub const MAX_IMAGE_BYTES: u64 = 4 << 20;

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// A page under construction.
struct Page {
    body: String,
    figures: usize,
}

impl Page {
    fn section(&mut self, title: &str) {
        let _ = writeln!(self.body, "<h2>{}</h2>", esc(title));
    }
    fn figure(&mut self, content: &str, caption: &str) {
        self.figures += 1;
        let _ = writeln!(self.body, "<figure id=\"fig{}\">{content}<figcaption>{}</figcaption></figure>", self.figures, esc(caption));
    }
    fn table(&mut self, header: &[String], rows: &[Vec<String>], caption: &str) {
        self.table_of("sortable", header, rows, caption);
    }
    fn table_of(&mut self, class: &str, header: &[String], rows: &[Vec<String>], caption: &str) {
        let _ = write!(self.body, "<table class=\"{class}\"><caption>{}</caption><thead><tr>", esc(caption));
        for h in header {
            let _ = write!(self.body, "<th>{}</th>", esc(h));
        }
        self.body.push_str("</tr></thead><tbody>\n");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                let _ = write!(self.body, "<td>{}</td>", esc(c));
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</tbody></table>\n");
    }
}

fn estimate(v: &Value) -> Option<String> {
    let x = v.get("value")?.as_f64()?;
    match (v.get("ci_low").and_then(Value::as_f64), v.get("ci_high").and_then(Value::as_f64)) {
        (Some(lo), Some(hi)) => Some(format!("{x:.3} [{lo:.3}, {hi:.3}]")),
        _ => Some(format!("{x:.3}")),
    }
}

/// `(name, value)` rows of a JSON value, objects flattened with dotted names; estimates as "v [lo, hi]".
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    if let Some(e) = estimate(v) {
        out.push((prefix.to_string(), e));
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, x, out);
            }
        }
        Value::Array(a) if a.len() <= 16 && a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            out.push((prefix.to_string(), a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")));
        }
        Value::Array(a) => out.push((prefix.to_string(), format!("({} entries)", a.len()))),
        Value::Number(n) => out.push((prefix.to_string(), n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f:.4}")))),
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
        Value::Null => {}
    }
}

/// Sortable tables of the arrays of per-case objects in metrics.json (segmentation `cases`, enhancement `cases`,
/// registration `learned.pairs`, …), one row per case with its fields flattened.
fn per_case_tables(page: &mut Page, m: &Value, set: &str) {
    let mut found: Vec<(String, &Vec<Value>)> = Vec::new();
    if let Some(obj) = m.as_object() {
        for (k, v) in obj {
            match v {
                Value::Array(a) if a.first().is_some_and(Value::is_object) => found.push((k.clone(), a)),
                Value::Object(inner) => {
                    for (k2, v2) in inner {
                        if let Value::Array(a) = v2
                            && a.first().is_some_and(Value::is_object)
                        {
                            found.push((format!("{k}.{k2}"), a));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for (key, cases) in found {
        let flat: Vec<Vec<(String, String)>> = cases
            .iter()
            .take(MAX_ROWS)
            .map(|c| {
                let mut row = Vec::new();
                flatten("", c, &mut row);
                row
            })
            .collect();
        let mut header: Vec<String> = Vec::new();
        for row in &flat {
            for (k, _) in row {
                if !header.contains(k) {
                    header.push(k.clone());
                }
            }
        }
        let rows: Vec<Vec<String>> = flat
            .iter()
            .map(|row| header.iter().map(|h| row.iter().find(|(k, _)| k == h).map(|(_, v)| v.clone()).unwrap_or_default()).collect())
            .collect();
        page.table(&header, &rows, &format!("Per-case metrics on the {set} set ({key}; click a column to sort)"));
    }
}

fn confusion_table(page: &mut Page, m: &Value, classes: &[String], caption: &str) {
    let Some(cm) = m.as_array() else { return };
    let k = cm.len();
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    let header: Vec<String> = std::iter::once("truth \\ prediction".to_string()).chain((0..k).map(name)).collect();
    let rows: Vec<Vec<String>> = cm
        .iter()
        .enumerate()
        .map(|(i, r)| std::iter::once(name(i)).chain(r.as_array().into_iter().flatten().map(|v| v.to_string())).collect())
        .collect();
    page.table_of("confusion", &header, &rows, caption);
}

fn learning_curves(page: &mut Page, run: &Path) -> Result<(), ReportError> {
    let Ok(text) = std::fs::read_to_string(run.join("log.jsonl")) else { return Ok(()) };
    let recs: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if recs.is_empty() {
        return Ok(());
    }
    page.section("Learning curves");
    let epoch = |r: &Value| r["epoch"].as_f64().unwrap_or(0.0);
    let last = recs.iter().map(epoch).fold(1.0, f64::max);
    let loss: Vec<(f64, f64)> = recs.iter().filter_map(|r| Some((epoch(r), r["train_loss"].as_f64()?))).collect();
    let mut val: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &recs {
        if let Some(m) = r["val"].as_object() {
            for (k, v) in m {
                if let Some(v) = v.as_f64() {
                    val.entry(k.clone()).or_default().push((epoch(r), v));
                }
            }
        }
    }
    let best = recs.iter().filter(|r| r["best"].as_bool() == Some(true)).map(epoch).fold(f64::NAN, |_, e| e);
    let mut losses = vec![Series { name: "training loss".into(), points: loss, ..Default::default() }];
    if let Some(v) = val.remove("loss") {
        losses.push(Series { name: "validation loss".into(), points: v, ..Default::default() });
    }
    let ymax = losses.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
    let chart = Chart {
        title: "Loss".into(),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        x: (1.0, last.max(2.0)),
        y: (0.0, ymax * 1.05),
        log_x: false,
    };
    page.figure(
        &line_chart(&chart, &losses).map_err(ReportError::Plot)?,
        "Mean training loss per epoch (and validation loss where the task computes it).",
    );
    if !val.is_empty() {
        let series: Vec<Series> = val.into_iter().map(|(k, p)| Series { name: k, points: p, ..Default::default() }).collect();
        let (lo, hi) = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, 1.0) };
        let pad = (hi - lo) * 0.05;
        let chart = Chart {
            title: "Validation".into(),
            x_label: "epoch".into(),
            y_label: "value".into(),
            x: (1.0, last.max(2.0)),
            y: (lo - pad, hi + pad),
            log_x: false,
        };
        let caption = if best.is_finite() {
            format!("Validation metrics per epoch; the model of epoch {best} was kept.")
        } else {
            "Validation metrics per epoch.".into()
        };
        page.figure(&line_chart(&chart, &series).map_err(ReportError::Plot)?, &caption);
    }
    Ok(())
}

/// The rows of a CSV file (header first), at most `MAX_ROWS` + 1.
fn read_csv(path: &Path) -> Option<Vec<Vec<String>>> {
    let mut r = csv::Reader::from_path(path).ok()?;
    let mut rows = vec![r.headers().ok()?.iter().map(str::to_string).collect::<Vec<_>>()];
    for rec in r.records().take(MAX_ROWS) {
        rows.push(rec.ok()?.iter().map(str::to_string).collect());
    }
    Some(rows)
}

/// ROC curves with 95 % bands (bootstrap over patients, 200 draws) and calibration of the binary probability
/// columns of `predictions-test.csv` (`label`, `patient`, one `name:p(class)` column per model).
fn roc_section(page: &mut Page, rows: &[Vec<String>], classes: &[String]) -> Result<(), ReportError> {
    let header = &rows[0];
    let (Some(lc), Some(pc)) = (header.iter().position(|h| h == "label"), header.iter().position(|h| h == "patient")) else {
        return Ok(());
    };
    let positive_class = classes.last().cloned().unwrap_or_else(|| "1".into());
    let cols: Vec<(usize, String)> =
        header.iter().enumerate().filter_map(|(i, h)| h.split_once(":p(").map(|(m, _)| (i, m.to_string()))).collect();
    if cols.is_empty() || classes.len() != 2 {
        return Ok(());
    }
    let y: Vec<bool> = rows[1..].iter().map(|r| r[lc] == positive_class).collect();
    let mut patients: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows[1..].iter().enumerate() {
        patients.entry(r[pc].as_str()).or_default().push(i);
    }
    let groups: Vec<&Vec<usize>> = patients.values().collect();
    let grid: Vec<f64> = (0..=50).map(|k| k as f64 / 50.0).collect();
    let mut roc = Vec::new();
    let mut cal = Vec::new();
    for (col, name) in &cols {
        let s: Vec<f64> = rows[1..].iter().map(|r| r[*col].parse().unwrap_or(f64::NAN)).collect();
        let curve = roc_points(&s, &y);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut at: Vec<Vec<f64>> = vec![Vec::new(); grid.len()];
        for _ in 0..200 {
            let idx: Vec<usize> = (0..groups.len()).flat_map(|_| groups[rng.random_range(0..groups.len())].iter().copied()).collect();
            let c = roc_points(&idx.iter().map(|&i| s[i]).collect::<Vec<_>>(), &idx.iter().map(|&i| y[i]).collect::<Vec<_>>());
            for (g, v) in grid.iter().zip(at.iter_mut()) {
                v.push(tpr_at(&c, *g));
            }
        }
        let band: Vec<(f64, f64, f64)> = grid
            .iter()
            .zip(at.iter_mut())
            .map(|(&g, v)| {
                v.sort_by(f64::total_cmp);
                (g, v[(0.025 * (v.len() - 1) as f64).round() as usize], v[(0.975 * (v.len() - 1) as f64).round() as usize])
            })
            .collect();
        let auc: f64 = curve.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
        roc.push(Series { name: format!("{name} (AUC {auc:.3})"), points: curve, band, ..Default::default() });
        cal.push(Series {
            name: name.clone(),
            points: calibration(&s, &y, 10).into_iter().map(|(p, o, _)| (p, o)).collect(),
            ..Default::default()
        });
    }
    page.section("ROC and calibration");
    let diag = Series { points: vec![(0.0, 0.0), (1.0, 1.0)], reference: true, ..Default::default() };
    roc.push(diag.clone());
    let chart = Chart {
        title: "ROC".into(),
        x_label: "1 − specificity".into(),
        y_label: "sensitivity".into(),
        x: (0.0, 1.0),
        y: (0.0, 1.0),
        log_x: false,
    };
    page.figure(
        &line_chart(&chart, &roc).map_err(ReportError::Plot)?,
        &format!(
            "ROC curves on the test set (positive class {positive_class}); shaded: 95 % bands from 200 bootstrap draws of test patients."
        ),
    );
    cal.push(diag);
    let chart = Chart {
        title: "Calibration".into(),
        x_label: "mean predicted probability".into(),
        y_label: "observed frequency".into(),
        x: (0.0, 1.0),
        y: (0.0, 1.0),
        log_x: false,
    };
    page.figure(
        &line_chart(&chart, &cal).map_err(ReportError::Plot)?,
        "Reliability diagram: ten equal-width bins of predicted probability on the test set; the diagonal is perfect calibration.",
    );
    Ok(())
}

/// Kaplan–Meier steps for plotting, (time, survival) from (0, 1), from [`KaplanMeier`].
pub fn kaplan_meier(time: &[f64], event: &[bool]) -> Vec<(f64, f64)> {
    let km = KaplanMeier::fit(time, event);
    let mut out = vec![(0.0, 1.0)];
    let mut s = 1.0;
    for (&t, &v) in km.times.iter().zip(&km.survival) {
        if v != s {
            out.push((t, s));
            out.push((t, v));
            s = v;
        }
    }
    if let Some(&t) = km.times.last() {
        out.push((t, s));
    }
    out
}

fn km_section(page: &mut Page, rows: &[Vec<String>]) -> Result<(), ReportError> {
    let h = &rows[0];
    let (Some(tc), Some(ec), Some(rc)) =
        (h.iter().position(|c| c == "time"), h.iter().position(|c| c == "event"), h.iter().position(|c| c == "risk"))
    else {
        return Ok(());
    };
    let parsed: Vec<(f64, bool, f64)> =
        rows[1..].iter().filter_map(|r| Some((r[tc].parse().ok()?, r[ec].trim() == "1", r[rc].parse().ok()?))).collect();
    if parsed.len() < 4 {
        return Ok(());
    }
    let mut risks: Vec<f64> = parsed.iter().map(|p| p.2).collect();
    risks.sort_by(f64::total_cmp);
    let median = risks[risks.len() / 2];
    let high: Vec<bool> = parsed.iter().map(|p| p.2 >= median).collect();
    let time: Vec<f64> = parsed.iter().map(|p| p.0).collect();
    let event: Vec<bool> = parsed.iter().map(|p| p.1).collect();
    let group = |g: bool| -> (Vec<f64>, Vec<bool>) { parsed.iter().zip(&high).filter(|(_, h)| **h == g).map(|(p, _)| (p.0, p.1)).unzip() };
    let (tl, el) = group(false);
    let (th, eh) = group(true);
    let (chi2, p) = log_rank(&time, &event, &high);
    let tmax = time.iter().cloned().fold(0.0, f64::max).max(1e-9);
    page.section("Survival");
    let chart = Chart {
        title: "Kaplan–Meier by predicted risk".into(),
        x_label: "time".into(),
        y_label: "survival".into(),
        x: (0.0, tmax),
        y: (0.0, 1.0),
        log_x: false,
    };
    let series = [
        Series { name: format!("low risk ({} patients)", tl.len()), points: kaplan_meier(&tl, &el), ..Default::default() },
        Series { name: format!("high risk ({} patients)", th.len()), points: kaplan_meier(&th, &eh), ..Default::default() },
    ];
    page.figure(
        &line_chart(&chart, &series).map_err(ReportError::Plot)?,
        &format!("Test patients split at the median predicted risk; log-rank χ² = {chi2:.2}, p = {p:.2e}."),
    );
    Ok(())
}

/// Predicted against Kaplan–Meier survival by fifths of prediction (a survival run's `calibration` table).
fn survival_calibration(page: &mut Page, m: &Value) -> Result<(), ReportError> {
    let (Some(bins), Some(t)) = (m["calibration"].as_array(), m["calibration_time"].as_f64()) else {
        return Ok(());
    };
    let points: Vec<(f64, f64)> = bins.iter().filter_map(|b| Some((b["predicted"].as_f64()?, b["observed"].as_f64()?))).collect();
    if points.is_empty() {
        return Ok(());
    }
    let chart = Chart {
        title: format!("Calibration at t = {t}"),
        x_label: "mean predicted survival".into(),
        y_label: "Kaplan–Meier survival".into(),
        x: (0.0, 1.0),
        y: (0.0, 1.0),
        log_x: false,
    };
    let series = [
        Series { name: "model".into(), points, ..Default::default() },
        Series { points: vec![(0.0, 0.0), (1.0, 1.0)], reference: true, ..Default::default() },
    ];
    page.figure(
        &line_chart(&chart, &series).map_err(ReportError::Plot)?,
        &format!("Test patients in fifths of predicted survival at t = {t}: each fifth's mean prediction against its Kaplan–Meier survival; the diagonal is perfect calibration."),
    );
    Ok(())
}

/// A regression run: predicted against observed values (continuous targets), or a confusion matrix of levels per
/// model (ordinal targets), from `predictions-test.csv` (`row,patient,<target>,<model>…`).
fn regression_section(page: &mut Page, m: &Value, rows: &[Vec<String>]) -> Result<(), ReportError> {
    // a response run: the true and the predicted change of each test pair
    if let (Some(tc), Some(pc)) =
        (rows[0].iter().position(|c| c == "true_log_ratio"), rows[0].iter().position(|c| c == "predicted_log_ratio"))
    {
        let points: Vec<(f64, f64)> = rows[1..].iter().filter_map(|r| Some((r[tc].parse().ok()?, r[pc].parse().ok()?))).collect();
        return scatter(
            page,
            "ln(area after / area before)",
            vec![Series { name: "network".into(), points, markers: true, ..Default::default() }],
        );
    }
    let (Some(kind), Some(target)) = (m["target_type"].as_str(), m["target"].as_str()) else {
        return Ok(());
    };
    let h = &rows[0];
    let Some(tc) = h.iter().position(|c| c == target) else {
        return Ok(());
    };
    let models: Vec<(usize, &String)> = h.iter().enumerate().skip(tc + 1).filter(|(_, c)| !c.contains(':')).collect();
    if kind == "ordinal" {
        let mut levels: Vec<String> = rows[1..].iter().map(|r| r[tc].clone()).collect();
        levels.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        });
        levels.dedup();
        page.section("Predicted levels");
        for (c, name) in models {
            let mut counts = vec![vec![0u64; levels.len()]; levels.len()];
            for r in &rows[1..] {
                if let (Some(i), Some(j)) = (levels.iter().position(|l| *l == r[tc]), levels.iter().position(|l| *l == r[c])) {
                    counts[i][j] += 1;
                }
            }
            confusion_table(page, &serde_json::json!(counts), &levels, &format!("Levels of {target} predicted by {name} on the test set"));
        }
        return Ok(());
    }
    let parse = |r: &Vec<String>, c: usize| r[c].parse::<f64>().ok().filter(|v| v.is_finite());
    let y: Vec<Option<f64>> = rows[1..].iter().map(|r| parse(r, tc)).collect();
    let series = models
        .iter()
        .map(|(c, name)| {
            let points = rows[1..].iter().zip(&y).filter_map(|(r, y)| Some(((*y)?, parse(r, *c)?))).collect();
            Series { name: (*name).clone(), points, markers: true, ..Default::default() }
        })
        .collect();
    scatter(page, target, series)
}

/// Predicted against observed values, one colour per series, with the diagonal.
fn scatter(page: &mut Page, target: &str, mut series: Vec<Series>) -> Result<(), ReportError> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(a, b) in series.iter().flat_map(|s| &s.points) {
        lo = lo.min(a.min(b));
        hi = hi.max(a.max(b));
    }
    if series.is_empty() || !(hi > lo) {
        return Ok(());
    }
    page.section("Predicted against observed");
    series.push(Series { points: vec![(lo, lo), (hi, hi)], reference: true, ..Default::default() });
    let chart = Chart {
        title: format!("{target}: predicted against observed"),
        x_label: "observed".into(),
        y_label: "predicted".into(),
        x: (lo, hi),
        y: (lo, hi),
        log_x: false,
    };
    page.figure(
        &line_chart(&chart, &series).map_err(ReportError::Plot)?,
        &format!("Every test case, one colour per model; the diagonal is a perfect prediction of {target}."),
    );
    Ok(())
}

fn froc_section(page: &mut Page, run: &Path) -> Result<(), ReportError> {
    let Some(rows) = read_csv(&run.join("froc-test.csv")) else { return Ok(()) };
    let pts: Vec<(f64, f64)> = rows[1..]
        .iter()
        .filter_map(|r| Some((r.first()?.parse().ok()?, r.get(1)?.parse().ok()?)))
        .filter(|p: &(f64, f64)| p.0 > 0.0)
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    page.section("FROC");
    let chart = Chart {
        title: "FROC".into(),
        x_label: "false positives per scan".into(),
        y_label: "sensitivity".into(),
        x: (0.1, 10.0),
        y: (0.0, 1.0),
        log_x: true,
    };
    page.figure(
        &line_chart(&chart, &[Series { name: "test".into(), points: pts, ..Default::default() }]).map_err(ReportError::Plot)?,
        "Free-response ROC on the test scans (LUNA16 rules); CPM is the mean sensitivity at 1/8 … 8 false positives per scan.",
    );
    Ok(())
}

fn images(page: &mut Page, run: &Path) {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut stack = vec![(run.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() && depth < 2 && p.file_name().is_some_and(|n| n != "checkpoints") {
                stack.push((p, depth + 1));
            } else if p.extension().is_some_and(|e| e == "png") && std::fs::metadata(&p).is_ok_and(|m| m.len() <= MAX_IMAGE_BYTES) {
                found.push(p);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return;
    }
    page.section("Images");
    for p in found.iter().take(MAX_IMAGES) {
        let Ok(bytes) = std::fs::read(p) else { continue };
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let name = p.strip_prefix(run).unwrap_or(p).display().to_string();
        page.figure(&format!("<img alt=\"{}\" src=\"data:image/png;base64,{b64}\">", esc(&name)), &name);
    }
    if found.len() > MAX_IMAGES {
        let _ = writeln!(page.body, "<p>{} more images in the run folder are not shown.</p>", found.len() - MAX_IMAGES);
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}h1{font-size:1.6em}\
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}table{border-collapse:collapse;margin:1em 0;font-size:.9em}\
caption{text-align:left;font-weight:600;padding:.3em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}\
th{background:#f4f4f4;cursor:pointer}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}\
table.confusion{display:inline-table;margin-right:1.5em;vertical-align:top}table.confusion th{cursor:default}\
figcaption{font-size:.85em;color:#555;max-width:540px}img{max-width:540px;image-rendering:pixelated;border:1px solid #eee}\
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}";

const SCRIPT: &str = "window.addEventListener('error',function(e){document.body.dataset.errors=(document.body.dataset.errors||'')+e.message+';'});\
document.querySelectorAll('table.sortable').forEach(function(t){t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){\
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';\
rows.sort(function(x,y){var a=x.cells[i].textContent,c=y.cells[i].textContent,n=parseFloat(a),m=parseFloat(c);\
var r=(!isNaN(n)&&!isNaN(m))?n-m:a.localeCompare(c);return asc?r:-r});rows.forEach(function(r){b.appendChild(r)})})})});\
window.addEventListener('load',function(){var f=document.querySelectorAll('figure'),ok=0;f.forEach(function(x){var e=x.querySelector('svg,img');\
if(e){var r=e.getBoundingClientRect();if(r.width>0&&r.height>0&&(e.tagName!=='IMG'||e.naturalWidth>0))ok++}});\
document.body.dataset.figures=ok+'/'+f.length;if(!document.body.dataset.errors)document.body.dataset.errors='none'});";

/// The task a run folder holds, from its files.
pub fn task_of(run: &Path) -> String {
    if run.join("tabular.json").is_file() {
        return "classification (feature table)".into();
    }
    read_json(&run.join("run.json"))
        .and_then(|v| v["task"].as_str().map(String::from))
        .or_else(|| {
            let recipe = std::fs::read_to_string(run.join("recipe.toml")).ok()?;
            recipe.parse::<toml::Table>().ok()?.get("task")?.as_str().map(String::from)
        })
        .unwrap_or_else(|| "run".into())
}

/// The report of the run in `run` as one HTML document.
pub fn build(run: &Path) -> Result<String, ReportError> {
    if !run.is_dir() {
        return Err(ReportError::Input(format!("{}: not a run folder", run.display())));
    }
    // the test metrics, or the validation metrics of a run that holds no test set (a segmentation test evaluation
    // that scored no case, only pictured unlabelled images, counts as none)
    let scored = |m: &serde_json::Value| !m.get("cases").and_then(|c| c.as_array()).is_some_and(|c| c.is_empty());
    let metrics = read_json(&run.join("metrics.json")).filter(scored).or_else(|| read_json(&run.join("metrics-val.json")));
    let has_log = run.join("log.jsonl").is_file();
    if metrics.is_none() && !has_log {
        return Err(ReportError::Input(format!("{}: no metrics.json, metrics-val.json or log.jsonl to report", run.display())));
    }
    let name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let task = task_of(run);
    let mut page = Page { body: String::new(), figures: 0 };
    let _ = write!(
        page.body,
        "<h1>{}</h1>\n<p>Task: <b>{}</b>. Run folder: <code>{}</code>.</p>\n",
        esc(&name),
        esc(&task),
        esc(&run.display().to_string())
    );
    let classes: Vec<String> = metrics
        .as_ref()
        .and_then(|m| m["classes"].as_array().cloned())
        .or_else(|| read_json(&run.join("run.json")).and_then(|v| v["details"]["classes"].as_array().cloned()))
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if let Some(m) = &metrics {
        page.section(if m["set"].as_str() == Some("validation") { "Validation metrics" } else { "Test metrics" });
        let set = m["set"].as_str().or(m["split"].as_str()).unwrap_or("test");
        if let Some(models) = m["models"].as_object() {
            // one report per model, side by side
            let names: Vec<String> =
                models.values().next().and_then(|r| r["metrics"].as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
            let header: Vec<String> = std::iter::once("model".to_string()).chain(names.iter().cloned()).collect();
            let rows: Vec<Vec<String>> = models
                .iter()
                .map(|(k, r)| {
                    std::iter::once(k.clone()).chain(names.iter().map(|n| estimate(&r["metrics"][n]).unwrap_or_default())).collect()
                })
                .collect();
            let unit = m["bootstrap_unit"].as_str().unwrap_or("patients");
            let size = match (m["n_patients"].as_u64(), m["n_rows"].as_u64(), m["n"].as_u64()) {
                (Some(p), Some(r), _) => format!("{p} patients, {r} rows"),
                (_, _, Some(n)) => format!("{n} {unit}"),
                _ => String::from("size not recorded"),
            };
            let caption = format!("The {set} set ({size}): value [95 % bootstrap interval over {unit}]");
            page.table(&header, &rows, &caption);
            for (k, r) in models {
                confusion_table(&mut page, &r["confusion"], &classes, &format!("Confusion matrix of {k} on the {set} set"));
            }
        } else {
            let mut rows = Vec::new();
            flatten("", m, &mut rows);
            let rows: Vec<Vec<String>> = rows.into_iter().filter(|(k, _)| !k.starts_with("confusion")).map(|(k, v)| vec![k, v]).collect();
            page.table(
                &["metric".to_string(), "value [95 % interval]".to_string()],
                &rows,
                &format!("Metrics on the {set} set, as metrics.json holds them"),
            );
            confusion_table(&mut page, &m["confusion"], &classes, &format!("Confusion matrix on the {set} set"));
            per_case_tables(&mut page, m, set);
        }
    }
    learning_curves(&mut page, run)?;
    let predictions = read_csv(&run.join("predictions-test.csv"));
    if let Some(rows) = &predictions {
        roc_section(&mut page, rows, &classes)?;
        km_section(&mut page, rows)?;
    }
    if let Some(m) = &metrics {
        survival_calibration(&mut page, m)?;
        if let Some(rows) = &predictions {
            regression_section(&mut page, m, rows)?;
        }
    }
    froc_section(&mut page, run)?;
    if let Some(rows) = &predictions {
        page.section("Cases");
        page.table(&rows[0], &rows[1..], "Every test case (click a column to sort)");
    }
    images(&mut page, run);
    if let Ok(recipe) = std::fs::read_to_string(run.join("recipe.toml")) {
        page.section("Recipe");
        let _ = writeln!(page.body, "<pre>{}</pre>", esc(&recipe));
    }
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n<title>{} — Vesalius report</title><style>{STYLE}</style></head>\n<body>\n{}<script>{SCRIPT}</script>\n</body></html>\n",
        esc(&name),
        page.body
    ))
}

/// The page's outline: headings, table captions and figure captions, one per line (for snapshot tests).
pub fn outline(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    let tags = [
        ("<h1>", "</h1>", "# "),
        ("<h2>", "</h2>", "## "),
        ("<caption>", "</caption>", "  table: "),
        ("<figcaption>", "</figcaption>", "  figure: "),
    ];
    loop {
        let next = tags.iter().filter_map(|t| rest.find(t.0).map(|i| (i, t))).min_by_key(|(i, _)| *i);
        let Some((i, (open, close, prefix))) = next else { break };
        let start = i + open.len();
        let Some(end) = rest[start..].find(close) else { break };
        let _ = writeln!(out, "{prefix}{}", &rest[start..start + end]);
        rest = &rest[start + end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaplan_meier_steps_match_lifelines() {
        // lifelines: KaplanMeierFitter gives 0.75, 0.5 and 0 after 2, 3 and 5
        let km = kaplan_meier(&[1.0, 2.0, 3.0, 4.0, 5.0], &[false, true, true, false, true]);
        assert_eq!(km, vec![(0.0, 1.0), (2.0, 1.0), (2.0, 0.75), (3.0, 0.75), (3.0, 0.5), (5.0, 0.5), (5.0, 0.0), (5.0, 0.0)]);
    }
}
