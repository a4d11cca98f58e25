//! The survival recipe (TOML, `task = "survival"`).
//!
//! ```
//! use vesalius_prediction::recipe::SurvivalRecipe;
//! let r = SurvivalRecipe::from_toml(r#"
//!     task = "survival"
//!     [data]
//!     kind = "table"
//!     path = "gbsg2.csv"
//!     time = "time"
//!     event = "cens"
//!     [model]
//!     arch = "cox"
//! "#, std::path::Path::new("/data")).unwrap();
//! assert_eq!(r.data.path, std::path::Path::new("/data/gbsg2.csv"));
//! assert_eq!(r.data.test_share, 0.3);
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::PredError;
use crate::cox::Ties;

/// `[data]`: a table of subjects, or a manifest of their images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `"table"` (features in the columns) or `"images"` (a manifest: one image path per row in column `image`).
    pub kind: String,
    /// The CSV file (one row per patient).
    pub path: PathBuf,
    /// `kind = "images"`: the column of image paths (relative to the manifest's folder; 2D images in any format the
    /// I/O crate reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Time column.
    pub time: String,
    /// Event column: 1 = event, 0 = censored.
    pub event: String,
    /// Patient id column (default: the row number).
    #[serde(default)]
    pub id: Option<String>,
    /// Feature columns (default: every other column).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Share of patients held out for testing (seeded, patient-level).
    #[serde(default = "default_test_share")]
    pub test_share: f64,
    /// Longitudinal tables (one row per visit, `arch = "rnn"`): the column with the time of each visit, in the units
    /// of `time` and from the same origin.
    #[serde(default)]
    pub visit_time: Option<String>,
    /// Missing cells (`NA`, empty): an error naming them (`"error"`), or `"locf"` — carried forward from the patient's
    /// previous visit, else the median (most frequent text) of the training patients' values.
    #[serde(default)]
    pub missing: Missing,
}

/// What to do with missing cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// A missing feature cell is an error naming its row and column.
    #[default]
    Error,
    /// Last observation carried forward within the patient, then the training median.
    Locf,
}

/// The recurrent cell of `arch = "rnn"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    /// Gated recurrent unit.
    #[default]
    Gru,
    /// Long short-term memory.
    Lstm,
}

fn default_test_share() -> f64 {
    0.3
}

/// Survival models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Cox proportional hazards.
    #[default]
    Cox,
    /// DeepSurv: a multi-layer perceptron trained with the Cox partial likelihood.
    Deepsurv,
    /// A discrete-time logistic-hazard model (one output per time interval).
    LogisticHazard,
    /// A recurrent network over each patient's visits (longitudinal tables), trained with the Cox partial
    /// likelihood; the run also fits a Cox model on the first visit for comparison.
    Rnn,
}

impl Arch {
    /// Whether the model is a network trained on the engine.
    pub fn is_network(self) -> bool {
        matches!(self, Arch::Deepsurv | Arch::LogisticHazard | Arch::Rnn)
    }
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model.
    #[serde(default)]
    pub arch: Arch,
    /// Cox: tie handling.
    #[serde(default)]
    pub ties: Ties,
    /// Cox: ridge penalty `½ λ ‖β‖²` on standardised features.
    #[serde(default)]
    pub l2: f64,
    /// DeepSurv: hidden layer widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// DeepSurv: dropout after each hidden layer.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// DeepSurv: epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// DeepSurv: full-batch steps per epoch.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// DeepSurv: Adam learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// DeepSurv: L2 weight decay.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// DeepSurv: share of the training patients held out for model selection.
    #[serde(default = "default_val_share")]
    pub val_share: f64,
    /// DeepSurv: stop after this many epochs without a better validation C-index.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// Logistic hazard: time intervals (cut at quantiles of the training event times).
    #[serde(default = "default_intervals")]
    pub intervals: usize,
    /// RNN: the recurrent cell (its hidden size is `hidden[0]`).
    #[serde(default)]
    pub cell: Cell,
    /// RNN: read the visits in both directions (the prediction at a visit uses that visit and the earlier ones only).
    #[serde(default = "yes")]
    pub bidirectional: bool,
    /// Image data: the network that reads each image (`lenet5`, `alexnet`, `vgg11`, `vgg16`, `googlenet`,
    /// `resnet18`, `resnet34`, `resnet50`, `mlp`, or `sae` — pre-trained greedily on the training images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<vesalius_nets::Arch>,
    /// Image data: side of the square network input (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Image data: images per minibatch, whose risk set the partial likelihood uses (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

impl ModelSection {
    /// Side of the network input of image data.
    pub fn image_size(&self) -> usize {
        self.size.unwrap_or(32)
    }

    /// Minibatch size of image data.
    pub fn image_batch(&self) -> usize {
        self.batch.unwrap_or(64)
    }
}

fn yes() -> bool {
    true
}

fn default_intervals() -> usize {
    10
}

fn default_hidden() -> Vec<usize> {
    vec![32, 32]
}
fn default_dropout() -> f64 {
    0.1
}
fn default_epochs() -> usize {
    50
}
fn default_steps() -> usize {
    10
}
fn default_lr() -> f64 {
    1e-3
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_val_share() -> f64 {
    0.2
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            arch: Arch::Cox,
            ties: Ties::default(),
            l2: 0.0,
            hidden: default_hidden(),
            dropout: default_dropout(),
            epochs: default_epochs(),
            steps: default_steps(),
            lr: default_lr(),
            weight_decay: default_weight_decay(),
            val_share: default_val_share(),
            early_stopping_patience: None,
            intervals: default_intervals(),
            cell: Cell::default(),
            bidirectional: true,
            backbone: None,
            size: None,
            batch: None,
        }
    }
}

/// `[eval]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Times for time-dependent AUC, Brier scores and survival predictions (default: the 25th, 50th and 75th
    /// percentiles of the test patients' event times).
    #[serde(default)]
    pub times: Option<Vec<f64>>,
    /// Truncation time of Uno's C (default: the last evaluation time).
    #[serde(default)]
    pub tau: Option<f64>,
    /// Bootstrap resamples (over patients).
    #[serde(default)]
    pub bootstrap: Option<usize>,
    /// Longitudinal runs: landmark times. At each, the test patients still at risk are scored from their visits up to
    /// it, against their residual time (default: 0 and the quartiles of the test patients' visit times).
    #[serde(default)]
    pub landmarks: Option<Vec<f64>>,
}

/// A survival recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurvivalRecipe {
    /// Always `"survival"`.
    pub task: String,
    /// Seed of the split and the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// Data.
    pub data: DataSection,
    /// Model.
    #[serde(default)]
    pub model: ModelSection,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
}

impl SurvivalRecipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, PredError> {
        let mut r: SurvivalRecipe = toml::from_str(text).map_err(|e| PredError::Input(format!("invalid recipe: {e}")))?;
        if r.data.path.is_relative() {
            r.data.path = base.join(&r.data.path);
        }
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, PredError> {
        let text = std::fs::read_to_string(path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        Self::from_toml(&text, &base).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))
    }

    /// The recipe as TOML.
    pub fn to_toml(&self) -> Result<String, PredError> {
        toml::to_string(self).map_err(|e| PredError::Internal(e.to_string()))
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), PredError> {
        let bad = |m: &str| Err(PredError::Input(m.to_string()));
        if self.task != "survival" {
            return bad("task must be \"survival\"");
        }
        match self.data.kind.as_str() {
            "table" => {
                if self.data.image.is_some() || self.model.backbone.is_some() || self.model.size.is_some() || self.model.batch.is_some() {
                    return bad("data.image, model.backbone, model.size and model.batch are for data.kind = \"images\"");
                }
            }
            "images" => {
                if self.data.image.is_none() || self.model.backbone.is_none() || self.model.arch != Arch::Deepsurv {
                    return bad(
                        "data.kind = \"images\" needs data.image (the column of image paths), model.arch = \"deepsurv\" and model.backbone",
                    );
                }
                if !(vesalius_nets::MIN_INPUT..=vesalius_nets::MAX_INPUT).contains(&self.model.image_size())
                    || !(2..=4096).contains(&self.model.image_batch())
                {
                    return bad("model.size must lie in 28..=512 and model.batch in 2..=4096");
                }
                if self.data.features.is_some() || self.data.visit_time.is_some() {
                    return bad("data.features and data.visit_time are for tables");
                }
            }
            _ => return bad("data.kind must be \"table\" or \"images\""),
        }
        if !(self.data.test_share > 0.0 && self.data.test_share < 1.0) {
            return bad("data.test_share must lie in (0, 1)");
        }
        if !(self.model.l2 >= 0.0 && self.model.l2.is_finite()) {
            return bad("model.l2 must be finite and ≥ 0");
        }
        if let Some(t) = &self.eval.times
            && (t.is_empty() || t.windows(2).any(|w| !(w[1] > w[0])) || t.iter().any(|v| !v.is_finite()))
        {
            return bad("eval.times must be finite and increasing");
        }
        let m = &self.model;
        if m.arch == Arch::LogisticHazard && !(2..=200).contains(&m.intervals) {
            return bad("model.intervals must lie in 2..=200");
        }
        if m.arch.is_network()
            && (m.hidden.is_empty()
                || m.hidden.iter().any(|&h| h == 0 || h > 4096)
                || !(0.0..1.0).contains(&m.dropout)
                || m.epochs == 0
                || m.steps == 0
                || !(m.lr > 0.0 && m.lr.is_finite())
                || !(m.weight_decay >= 0.0)
                || !(m.val_share > 0.0 && m.val_share < 1.0))
        {
            return bad(
                "model (deepsurv): hidden widths in 1..=4096, dropout in [0, 1), epochs and steps ≥ 1, lr > 0, weight_decay ≥ 0, val_share in (0, 1)",
            );
        }
        if self.data.visit_time.is_some() != (m.arch == Arch::Rnn) {
            return bad("data.visit_time (one row per visit) and model.arch = \"rnn\" go together");
        }
        if let Some(l) = &self.eval.landmarks
            && (l.is_empty() || l.windows(2).any(|w| !(w[1] > w[0])) || l.iter().any(|v| !(v.is_finite() && *v >= 0.0)))
        {
            return bad("eval.landmarks must be finite, ≥ 0 and increasing");
        }
        if self.eval.bootstrap == Some(0) {
            return bad("eval.bootstrap must be at least 1");
        }
        Ok(())
    }
}
