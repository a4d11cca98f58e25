//! One training engine for every Vesalius task.
//!
//! * [`run`]: the run folder ([`run::RunDir`]) and its files, the same for every task.
//! * [`engine`]: the epoch loop over a small [`engine::Task`] trait — seeding of every random stream from
//!   `(seed, epoch, step)`, crash-safe checkpoint sets named by one atomic rename of `state.json`, resumption to
//!   bit-identical results, best-model selection, early stopping, divergence handling, progress bars and one
//!   `log.jsonl` schema.
//! * [`recipe`]: which keys of a recipe differ from a run's, and whether the run may resume with them.
//! * [`greedy`]: greedy layer-wise training of stacked (denoising, sparse) auto-encoders, then end-to-end
//!   fine-tuning, with every stage's losses reported.
//! * [`ids`]: parameter ids derived from parameter paths, so identical models are identical files.
//! * [`progress`]: progress bars with ETA, drawn only on a terminal.
//! * [`tune`]: hyper-parameter search over any recipe key — random or Sobol sampling, Hyperband, ASHA, top-k, and
//!   early termination by learning-curve extrapolation — with one folder per study that resumes after a kill.
//! * [`transfer`]: starting from weights trained elsewhere (PyTorch, safetensors), frozen layers, per-layer
//!   learning rates and gradual unfreezing, applied by the engine at every step.
//! * [`label`]: uncertainty scores and the ranking of unlabelled images for semi-automatic labelling, the same
//!   for every task.
//! * [`sliding`]: inference over whole volumes window by window with bounded memory (Gaussian importance,
//!   mirror test-time augmentation), for every task that predicts dense maps.
//!
//! The engine's own example trains a linear unit end to end: see [`engine`].
pub mod engine;
pub mod greedy;
pub mod ids;
pub mod label;
pub mod progress;
pub mod recipe;
pub mod run;
pub mod sliding;
pub mod transfer;
pub mod tune;

pub use engine::{EngineConfig, EpochRecord, RunOptions, Stepper, Task, Validation};
pub use run::RunDir;

/// Failures of the engine.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad input: a run folder holding another recipe, a corrupt checkpoint.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself (a failed write).
    #[error("{0}")]
    Internal(String),
    /// A loss that is not a finite number.
    #[error(
        "training diverged at epoch {epoch}, step {step} (loss {value}); the checkpoint after epoch {resume_epoch} is kept: lower the learning rate in the recipe and run the same command again to resume from it"
    )]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step since the start of the run.
        step: usize,
        /// The loss.
        value: f64,
        /// Epochs completed and checkpointed before it.
        resume_epoch: usize,
    },
    /// Stopped at a checkpoint stage on request ([`engine::EngineConfig::interrupt`]).
    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl From<vesalius_io::DataError> for TrainError {
    fn from(e: vesalius_io::DataError) -> Self {
        match e {
            vesalius_io::DataError::Io { .. } | vesalius_io::DataError::Write { .. } => TrainError::Internal(e.to_string()),
            other => TrainError::Input(other.to_string()),
        }
    }
}
