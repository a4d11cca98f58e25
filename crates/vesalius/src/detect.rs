//! `evaluate`, `train` and `predict` for detection.
use std::path::{Path, PathBuf};

use vesalius_detection::DetectError;
use vesalius_detection::annotations::{read_luna_csv, read_scans};
use vesalius_detection::evaluate::{EvalOptions, evaluate_detections, write_curve};
use vesalius_detection::geometry::Frame;

use crate::backend::BackendKind;
use crate::{CliError, with_backend};
use vesalius_detection::recipe::DetRecipe;
use vesalius_train::RunDir;
use vesalius_train::engine::RunOptions;

impl From<DetectError> for CliError {
    fn from(e: DetectError) -> Self {
        match e {
            DetectError::Internal(m) => CliError::Internal(m),
            DetectError::Input(m) => CliError::Usage(m),
        }
    }
}

/// The files of `vesalius evaluate --truth … --detections …`.
#[derive(Debug)]
pub struct EvalFiles {
    /// Reference nodules.
    pub truth: Option<PathBuf>,
    /// The system's marks.
    pub detections: Option<PathBuf>,
    /// Excluded findings.
    pub exclude: Option<PathBuf>,
    /// The scan list.
    pub scans: Option<PathBuf>,
    /// Where to write the curve.
    pub froc: Option<PathBuf>,
    /// Marks kept per scan.
    pub max_marks: usize,
    /// The files' frame.
    pub frame: String,
}

/// `vesalius evaluate --truth … --detections …`: prints the LUNA16 report as JSON.
pub fn evaluate_files(f: &EvalFiles) -> Result<(), CliError> {
    let frame = Frame::parse(&f.frame).ok_or_else(|| CliError::Usage(format!("unknown frame '{}' (LPS or RAS)", f.frame)))?;
    let (Some(truth), Some(dets)) = (&f.truth, &f.detections) else {
        return Err(CliError::Usage("--truth and --detections go together".into()));
    };
    let truth = read_luna_csv(truth, frame)?;
    let detections = read_luna_csv(dets, frame)?;
    if let Some(d) = detections.iter().find(|d| d.probability.is_none()) {
        return Err(CliError::Usage(format!("{}: no probability column (detections need one; scan {})", dets.display(), d.scan)));
    }
    let excluded = match &f.exclude {
        Some(p) => read_luna_csv(p, frame)?,
        None => Vec::new(),
    };
    let scans = match &f.scans {
        Some(p) => Some(read_scans(p)?),
        None => None,
    };
    let options = EvalOptions { max_marks: f.max_marks, ..EvalOptions::default() };
    let (report, curve) = evaluate_detections(&truth, &excluded, &detections, scans.as_deref(), &options)?;
    if let Some(path) = &f.froc {
        write_curve(path, &curve)?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| CliError::Internal(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The lines `train` and `evaluate` print.
pub fn format_metrics(m: &vesalius_detection::evaluate::DetMetrics) -> String {
    let f = &m.froc;
    let mut s = format!(
        "{} set: {} scan(s), {} finding(s); 95 % bootstrap intervals over scans\n  CPM {:.4} [{:.4}, {:.4}]\n",
        m.set, f.n_scans, f.n_nodules, f.cpm, f.cpm_ci[0], f.cpm_ci[1]
    );
    let rates: Vec<String> = f.sensitivities.iter().map(|(k, v)| format!("{k}: {v:.3}")).collect();
    s.push_str(&format!("  sensitivity at FP/scan  {}\n", rates.join("  ")));
    let op = &m.operating_point;
    let e = |x: &vesalius_eval::bootstrap::Estimate| format!("{:.4} [{:.4}, {:.4}]", x.value, x.ci_low, x.ci_high);
    s.push_str(&format!(
        "  at p >= {:.2} (chosen on {}): sensitivity {}  precision {}  F1 {}  ({} marks)\n",
        op.threshold,
        m.threshold_from,
        e(&op.sensitivity),
        e(&op.precision),
        e(&op.f1),
        op.marks
    ));
    if let Some(ap) = &m.average_precision {
        let v: Vec<String> = ap.iter().map(|(k, v)| format!("AP@{k} {v:.4}")).collect();
        s.push_str(&format!("  boxes: {}\n", v.join("  ")));
    }
    s
}

/// `vesalius train` for a detection recipe.
pub fn train(backend: BackendKind, source: &Path, out: Option<PathBuf>, quiet: bool) -> Result<(), CliError> {
    let recipe = DetRecipe::from_file(source)?;
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "detection".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let run = RunDir::new(&out);
    let outcome = with_backend!(backend, |B, AB, device| {
        vesalius_detection::train::train::<AB>(&recipe, &run, &device, &RunOptions { quiet, ..Default::default() }, |log| {
            if !quiet {
                let v = |k: &str| log.val.get(k).copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
                eprintln!(
                    "epoch {:>4}  loss {:.5}  val CPM {}  sensitivity {}  precision {}{}  ({:.1} s)",
                    log.epoch,
                    log.train_loss,
                    v("cpm"),
                    v("sensitivity"),
                    v("precision"),
                    if log.best { "  *" } else { "" },
                    log.seconds
                );
            }
        })
        .map_err(CliError::from)
    })?;
    let [images, val, test] = outcome.sizes;
    println!("data: {images} training image(s), {val} validation and {test} test scan(s)");
    if let Some(after) = outcome.resumed_after {
        println!("resumed after epoch {after}");
    }
    if !outcome.complete {
        println!("stopped after epoch {}", outcome.state.epochs_done);
    }
    println!(
        "best validation score (mean of CPM and F1) {} (epoch {})",
        outcome.state.best_score.map_or("-".to_string(), |d| format!("{d:.4}")),
        outcome.state.best_epoch.unwrap_or(0)
    );
    if let Some(m) = &outcome.test {
        print!("{}", format_metrics(m));
    }
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate --run` for a detection run.
pub fn evaluate(backend: BackendKind, run_dir: &Path, split: &str) -> Result<(), CliError> {
    let set = vesalius_eval::EvalSet::parse(split)
        .ok_or_else(|| CliError::Usage(format!("detection runs score the test or the validation set (--split test|val), not '{split}'")))?;
    let run = RunDir::new(run_dir);
    let m =
        with_backend!(backend, |B, AB, device| vesalius_detection::evaluate::evaluate::<B>(&run, &device, set).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("written: {}", run.file(set.file()).display());
    Ok(())
}

/// `vesalius predict` for a detection run: the marks of every input as LUNA16 CSV (world LPS millimetres).
pub fn predict(backend: BackendKind, run_dir: &Path, inputs: &[PathBuf], output: Option<&Path>) -> Result<(), CliError> {
    let run = RunDir::new(run_dir);
    let recipe = vesalius_detection::evaluate::read_run(&run)?;
    let options = vesalius_detection::train::detect_options(&recipe, &vesalius_detection::evaluate::read_info(&run)?);
    let marks = with_backend!(backend, |B, AB, device| {
        let net = vesalius_detection::evaluate::load_best::<B>(&run, &recipe, &device)?;
        let mut all = Vec::new();
        for path in inputs {
            let scan = vesalius_detection::infer::scan_of_file(path, &recipe)?;
            all.extend(vesalius_detection::infer::detect(&net, &scan, &options, &device)?);
        }
        Ok::<_, CliError>(all)
    })?;
    match output {
        Some(path) => vesalius_detection::annotations::write_luna_marks_csv(path, &marks, Frame::Lps)?,
        None => print!("{}", vesalius_detection::annotations::luna_marks_csv(&marks, Frame::Lps)),
    }
    Ok(())
}
