//! `evaluate`, `train` and `predict` for detection.
use std::path::PathBuf;

use vesalius_detection::DetectError;
use vesalius_detection::annotations::{read_luna_csv, read_scans};
use vesalius_detection::evaluate::{EvalOptions, evaluate_detections, write_curve};
use vesalius_detection::geometry::Frame;

use crate::CliError;

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
