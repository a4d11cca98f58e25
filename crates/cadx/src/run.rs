//! The run directory: its files, atomic writes, model and optimiser records.
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::Record;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vesalius_data::io::write_atomic;
use vesalius_nets::{Classifier, ClassifierConfig};

use crate::CadxError;

/// What a trained model needs besides its weights: how to build it and how to read its outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Network configuration (architecture, channels, outputs, input size).
    pub model: ClassifierConfig,
    /// Class (or label) names in output order.
    pub classes: Vec<String>,
    /// Whether outputs are independent labels (sigmoid) rather than classes (softmax).
    pub multi_label: bool,
}

/// Paths inside a classification run directory (a [`vesalius_data::run::RunDir`] with the files of this task).
#[derive(Clone, Debug)]
pub struct RunDir {
    dir: vesalius_data::run::RunDir,
}

impl RunDir {
    /// The run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { dir: vesalius_data::run::RunDir::new(root) }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        self.dir.root()
    }

    /// `recipe.toml`.
    pub fn recipe(&self) -> PathBuf {
        self.dir.file("recipe.toml")
    }

    /// `run.json`.
    pub fn info(&self) -> PathBuf {
        self.dir.file("run.json")
    }

    /// `model.mpk`, the best model.
    pub fn best_model(&self) -> PathBuf {
        self.dir.file("model.mpk")
    }

    /// `log.jsonl`.
    pub fn log(&self) -> PathBuf {
        self.dir.file("log.jsonl")
    }

    /// `metrics.json`.
    pub fn metrics(&self) -> PathBuf {
        self.dir.file("metrics.json")
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.file("checkpoints")
    }

    /// `checkpoints/state.json`.
    pub fn state(&self) -> PathBuf {
        self.checkpoints().join("state.json")
    }

    /// Model weights after `epoch` (1-based count of completed epochs).
    pub fn epoch_model(&self, epoch: usize) -> PathBuf {
        self.checkpoints().join(format!("epoch-{epoch:04}.model.mpk"))
    }

    /// Optimiser state after `epoch`.
    pub fn epoch_optim(&self, epoch: usize) -> PathBuf {
        self.checkpoints().join(format!("epoch-{epoch:04}.optim.mpk"))
    }

    /// Reads `run.json`.
    pub fn read_info(&self) -> Result<RunInfo, CadxError> {
        let p = self.info();
        let text = std::fs::read_to_string(&p).map_err(|e| CadxError::Input(format!("{}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| CadxError::Input(format!("{}: invalid run information: {e}", p.display())))
    }

    /// Builds the network of `info` and loads the best model's weights into it.
    pub fn load_best<B: Backend>(&self, info: &RunInfo, device: &B::Device) -> Result<Classifier<B>, CadxError> {
        let model = info.model.init::<B>(device).map_err(|e| CadxError::Input(format!("{}: {e}", self.info().display())))?;
        load_module(model, &self.best_model(), device)
    }
}

/// Writes any burn record atomically.
pub fn save_record<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<(), CadxError> {
    let bytes = vesalius_nets::record::to_bytes::<B, R>(record).map_err(|e| CadxError::Internal(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes).map_err(|e| CadxError::Internal(e.to_string()))
}

/// Reads a burn record written by [`save_record`].
pub fn load_record<B: Backend, R: Record<B>>(path: &Path, device: &B::Device) -> Result<R, CadxError> {
    let bytes = std::fs::read(path).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))?;
    vesalius_nets::record::from_bytes::<B, R>(bytes, device).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))
}

/// Writes a module's weights atomically.
pub fn save_module<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<(), CadxError> {
    save_record::<B, _>(module.clone().into_record(), path)
}

/// Loads weights from `path` into `module`.
pub fn load_module<B: Backend, M: Module<B>>(module: M, path: &Path, device: &B::Device) -> Result<M, CadxError> {
    let record = load_record::<B, M::Record>(path, device)?;
    Ok(module.load_record(record))
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<(), CadxError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CadxError::Internal(e.to_string()))?;
    write_atomic(path, format!("{text}\n").as_bytes()).map_err(|e| CadxError::Internal(e.to_string()))
}
