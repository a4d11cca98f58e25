//! The classification task's files in the shared run folder ([`vesalius_train::RunDir`]): `run.json`
//! ([`RunInfo`]) and the best model.
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vesalius_nets::{Classifier, ClassifierConfig};
pub use vesalius_train::RunDir;

use crate::CadxError;

/// `run.json` of a classification run: the engine's one run-information type with the classifier's details.
pub type RunInfo = vesalius_train::run::RunInfo<ClassifierInfo>;

/// What a trained classifier needs besides its weights: how to build it and how to read its outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// Network configuration (architecture, channels, outputs, input size).
    pub model: ClassifierConfig,
    /// Class (or label) names in output order.
    pub classes: Vec<String>,
    /// Whether outputs are independent labels (sigmoid) rather than classes (softmax).
    pub multi_label: bool,
}

/// The classification files of a run folder.
pub trait ClassificationRun {
    /// `run.json`.
    fn info(&self) -> PathBuf;
    /// Reads `run.json`.
    fn read_classifier_info(&self) -> Result<RunInfo, CadxError>;
    /// Builds the network of `info` and loads the best model's weights into it.
    fn load_best<B: Backend>(&self, info: &RunInfo, device: &B::Device) -> Result<Classifier<B>, CadxError>;
}

impl ClassificationRun for RunDir {
    fn info(&self) -> PathBuf {
        self.file("run.json")
    }

    fn read_classifier_info(&self) -> Result<RunInfo, CadxError> {
        self.read_info().map_err(|e| CadxError::Input(format!("invalid run information: {e}")))
    }

    fn load_best<B: Backend>(&self, info: &RunInfo, device: &B::Device) -> Result<Classifier<B>, CadxError> {
        let model = info.model.init::<B>(device).map_err(|e| CadxError::Input(format!("{}: {e}", self.info().display())))?;
        Ok(vesalius_train::engine::load_module(model, &self.best_model(), device)?)
    }
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<(), CadxError> {
    vesalius_train::run::write_json(path, value).map_err(|e| CadxError::Internal(e.to_string()))
}
