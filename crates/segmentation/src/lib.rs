//! Semantic segmentation end to end, in nnU-Net's order: **fingerprint** the training cases
//! ([`fingerprint`]), **plan** spacing, network, patch and batch within a memory budget ([`plan`]), **preprocess**
//! (resample, normalise; cached), **train** a U-Net on label-balanced augmented patches with sliding-window
//! validation and resumable checkpoints ([`train`]), **infer** label maps in each input's own grid ([`infer`]) and
//! **evaluate** Dice, IoU, HD95, ASSD and volume difference with bootstrap confidence intervals ([`evaluate`]).
//! An optional second stage ([`refine`], `[refine]` in the recipe) trains a CRF-as-RNN on the frozen U-Net's
//! output and applies it to every prediction. [`label`] ranks unlabelled images by the model's uncertainty and adds
//! corrected label maps to a recipe (semi-automatic labelling).
//!
//! A run folder holds `recipe.toml`, `splits.json`, `fingerprint.json`, `plans.json`, `model.mpk` (best
//! validation Dice), `log.jsonl`, `checkpoints/`, `refine/` (the refinement stage's own run folder) and, after
//! evaluation, `metrics.json`; every file is written atomically.
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
#[cfg(all(feature = "flex", debug_assertions))]
#[doc(hidden)]
pub mod cpu_instances;
pub mod evaluate;
pub mod explain;
pub mod fingerprint;
pub mod infer;
pub mod label;
pub mod network;
pub mod plan;
pub mod recipe;
pub mod refine;
pub mod train;

use std::path::Path;

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

impl From<vesalius_train::TrainError> for SegError {
    fn from(e: vesalius_train::TrainError) -> Self {
        match e {
            vesalius_train::TrainError::Input(m) => SegError::Input(m),
            other => SegError::Internal(other.to_string()),
        }
    }
}

impl From<vesalius_data::DataError> for SegError {
    fn from(e: vesalius_data::DataError) -> Self {
        match e {
            vesalius_data::DataError::Write { .. } => SegError::Internal(e.to_string()),
            other => SegError::Input(other.to_string()),
        }
    }
}

pub use vesalius_train::RunDir;

/// Writes pretty JSON atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), SegError> {
    Ok(vesalius_train::run::write_json(path, value)?)
}
