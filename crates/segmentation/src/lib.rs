//! Semantic segmentation end to end, in nnU-Net's order: **fingerprint** the training cases
//! ([`fingerprint`]), **plan** spacing, network, patch and batch within a memory budget ([`plan`]), **preprocess**
//! (resample, normalise; cached), **train** a U-Net on label-balanced augmented patches with sliding-window
//! validation and resumable checkpoints ([`train`]), **infer** label maps in each input's own grid ([`infer`]) and
//! **evaluate** Dice, IoU, HD95, ASSD and volume difference with bootstrap confidence intervals ([`evaluate`]).
//!
//! A run folder holds `recipe.toml`, `splits.json`, `fingerprint.json`, `plans.json`, `model.mpk` (best
//! validation Dice), `log.jsonl`, `checkpoints/` and, after evaluation, `metrics.json`; every file is written
//! atomically.
//!
//! ```
//! use vesalius_segmentation::plan::{plan, PlanOverrides};
//! use vesalius_segmentation::fingerprint::{CaseFingerprint, ChannelStats, Fingerprint};
//! let stats = ChannelStats { mean: 40.0, std: 200.0, median: 30.0, percentile_00_5: -900.0, percentile_99_5: 1200.0, min: -1000.0, max: 3000.0 };
//! let case = |i| CaseFingerprint { id: format!("c{i}"), shape: vec![256, 256, 40], spacing: vec![0.8, 0.8, 5.0], foreground_fraction: 0.02 };
//! let fp = Fingerprint { channel_names: vec!["CT".into()], labels: [(0, "background".into()), (1, "liver".into())].into(),
//!                        cases: (0..4).map(case).collect(), foreground: vec![stats] };
//! let plans = plan(&fp, &PlanOverrides { memory_mib: Some(1024.0), ..Default::default() });
//! assert_eq!(plans.dims, 3);
//! assert_eq!(plans.classes, 2);
//! assert!(plans.estimated_mib <= 1024.0);               // patch and batch fit the budget
//! assert!(matches!(plans.normalisation[0], vesalius_segmentation::plan::Normalisation::Ct { .. }));
//! ```
pub mod evaluate;
pub mod fingerprint;
pub mod infer;
pub mod plan;
pub mod recipe;
pub mod train;

use std::path::{Path, PathBuf};

/// Errors of the segmentation task.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// Bad input: a file, a recipe, a run folder.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself.
    #[error("{0}")]
    Internal(String),
}

impl From<vesalius_data::DataError> for SegError {
    fn from(e: vesalius_data::DataError) -> Self {
        SegError::Input(e.to_string())
    }
}

/// Paths inside a segmentation run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A file of the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// `checkpoints/NAME`.
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.root.join("checkpoints").join(name)
    }
    /// Reads and parses a JSON file of the run.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, SegError> {
        let p = self.file(name);
        let text = std::fs::read_to_string(&p).map_err(|e| SegError::Input(format!("{}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| SegError::Input(format!("{}: {e}", p.display())))
    }
    /// Writes pretty JSON atomically.
    pub fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), SegError> {
        write_json(&self.file(name), value)
    }
}

/// Writes pretty JSON atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), SegError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| SegError::Internal(e.to_string()))?;
    vesalius_data::io::write_atomic(path, format!("{text}\n").as_bytes())?;
    Ok(())
}
