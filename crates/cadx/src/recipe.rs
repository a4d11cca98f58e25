//! Recipes: everything that defines a classification run, in TOML.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vesalius_data::augment::Augment2d;
use vesalius_data::source::SourceConfig;
use vesalius_data::split::SplitFractions;
use vesalius_nets::Arch;
use vesalius_train::transfer::{Freeze, TransferSpec};

use crate::CadxError;

/// A complete, self-describing training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name shown in logs.
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of everything random: splits, shuffling, augmentation, initialisation, dropout, bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// Where the samples come from.
    pub data: SourceConfig,
    /// Patient-level split shares, for sources that fix no split.
    #[serde(default)]
    pub split: SplitFractions,
    /// The network.
    pub model: ModelSection,
    /// Optimisation.
    pub train: TrainSection,
    /// Final evaluation.
    #[serde(default)]
    pub eval: EvalSection,
}

fn default_name() -> String {
    "run".into()
}

/// The `[model]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Architecture name (`mlp`, `sae`, `lenet5`, `alexnet`, `vgg11`, `vgg16`, `googlenet`, `resnet18`,
    /// `resnet34`, `resnet50`).
    pub arch: Arch,
    /// `sae` only: greedy layer-wise pre-training of the stacked auto-encoder on the training images before
    /// supervised training (defaults when absent).
    #[serde(default)]
    pub pretrain: Option<PretrainSection>,
    /// Input channels; taken from the data when absent (and files are converted to it when present).
    #[serde(default)]
    pub in_channels: Option<usize>,
    /// Side the images are resized to; taken from the data when absent (MedMNIST, patches) and required for
    /// file sources.
    #[serde(default)]
    pub input_size: Option<usize>,
    /// Transfer learning: a weight file to start from (`.pt`, `.pth`, `.safetensors`; torchvision, MONAI or
    /// Vesalius names), relative to the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Whose names `init` uses (`vesalius`, `torchvision`, `monai`); found from the file when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_naming: Option<vesalius_nets::transfer::Naming>,
    /// Layers that keep their random initialisation (absent: the head, when the class count differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_skip: Option<Vec<String>>,
    /// Layers frozen at the start: a list of layer names, or the number of leading layer groups.
    #[serde(default, skip_serializing_if = "Freeze::is_none")]
    pub freeze: Freeze,
    /// Gradual unfreezing: every this many epochs the frozen group nearest the head trains again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfreeze_every: Option<usize>,
    /// Learning-rate multipliers by layer (`lr_scale = { stem = 0.1 }`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lr_scale: std::collections::BTreeMap<String, f64>,
}

impl ModelSection {
    /// The transfer-learning keys as the engine's [`TransferSpec`].
    pub fn transfer(&self) -> TransferSpec {
        TransferSpec {
            init: self.init.clone(),
            init_naming: self.init_naming,
            init_skip: self.init_skip.clone(),
            freeze: self.freeze.clone(),
            unfreeze_every: self.unfreeze_every,
            lr_scale: self.lr_scale.clone(),
        }
    }
}

/// Greedy layer-wise pre-training of an `sae` classifier's encoder (see [`vesalius_train::greedy`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSection {
    /// Epochs per layer.
    #[serde(default = "default_pretrain_epochs")]
    pub epochs: usize,
    /// Epochs of end-to-end fine-tuning of the stack on reconstruction.
    #[serde(default = "default_fine_tune_epochs")]
    pub fine_tune_epochs: usize,
    /// Samples per step.
    #[serde(default = "default_pretrain_batch")]
    pub batch: usize,
    /// Adam learning rate.
    #[serde(default = "default_pretrain_lr")]
    pub lr: f64,
    /// Fraction of inputs masked to zero (denoising auto-encoder).
    #[serde(default)]
    pub corruption: f64,
    /// KL sparsity penalty (sparse auto-encoder).
    #[serde(default)]
    pub sparsity: Option<vesalius_train::greedy::Sparsity>,
}

fn default_pretrain_epochs() -> usize {
    10
}
fn default_fine_tune_epochs() -> usize {
    5
}
fn default_pretrain_batch() -> usize {
    64
}
fn default_pretrain_lr() -> f64 {
    1e-3
}

impl Default for PretrainSection {
    fn default() -> Self {
        Self {
            epochs: default_pretrain_epochs(),
            fine_tune_epochs: default_fine_tune_epochs(),
            batch: default_pretrain_batch(),
            lr: default_pretrain_lr(),
            corruption: 0.0,
            sparsity: None,
        }
    }
}

/// Optimisers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Adam (β = 0.9, 0.999; ε = 1e-8) with optional L2 weight decay.
    Adam {
        /// Base learning rate.
        lr: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Stochastic gradient descent with optional momentum and weight decay.
    Sgd {
        /// Base learning rate.
        lr: f64,
        /// Momentum (0 for none).
        #[serde(default)]
        momentum: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr,
        }
    }
}

pub use vesalius_train::recipe::Schedule;

/// Class weights of the loss, against class imbalance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClassWeights {
    /// `"none"` or `"balanced"` (`n / (classes · n_c)` from the training split, as scikit-learn).
    Named(WeightsName),
    /// One weight per class (or per label, as a positive weight, for multi-label tasks).
    Given(Vec<f64>),
}

/// Named weighting schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsName {
    /// No weighting.
    None,
    /// Inverse class frequency.
    Balanced,
}

/// Which validation metric selects the best epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// ROC AUC (higher is better) — MedMNIST's choice.
    #[default]
    Auc,
    /// Accuracy.
    Accuracy,
    /// Balanced accuracy.
    BalancedAccuracy,
    /// Validation loss (lower is better).
    Loss,
}

impl Selection {
    /// Name as written in logs.
    pub fn name(self) -> &'static str {
        match self {
            Selection::Auc => "auc",
            Selection::Accuracy => "accuracy",
            Selection::BalancedAccuracy => "balanced_accuracy",
            Selection::Loss => "loss",
        }
    }
}

/// The `[train]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Number of epochs.
    pub epochs: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// The optimiser.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Class weights of the loss; none when absent.
    #[serde(default)]
    pub class_weights: Option<ClassWeights>,
    /// Validation metric that selects the best model.
    #[serde(default)]
    pub select: Selection,
    /// Stop when the selection metric has not improved for this many epochs.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// Training augmentation; none when absent.
    #[serde(default)]
    pub augment: Option<Augment2d>,
}

/// The `[eval]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Bootstrap resamples for the confidence intervals.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
}

fn default_bootstrap() -> usize {
    1000
}

impl Default for EvalSection {
    fn default() -> Self {
        Self { bootstrap: default_bootstrap() }
    }
}

impl Recipe {
    /// Parses a recipe; relative data paths are resolved against the recipe file's folder.
    pub fn from_file(path: &Path) -> Result<Recipe, CadxError> {
        let text = std::fs::read_to_string(path).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))?;
        let mut recipe = Self::from_toml(&text).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))?;
        let base: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = std::path::absolute(&base).unwrap_or(base);
        recipe.data.resolve(&base);
        if let Some(init) = &recipe.model.init {
            recipe.model.init = Some(base.join(init));
        }
        Ok(recipe)
    }

    /// Parses and checks a recipe from TOML text (paths are left as written).
    pub fn from_toml(text: &str) -> Result<Recipe, String> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| e.to_string())?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        if t.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        if t.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        let lr = t.optimizer.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("train.optimizer.lr must be positive, not {lr}"));
        }
        t.schedule.check(lr).map_err(|e| format!("train.schedule: {e}"))?;
        if self.eval.bootstrap == 0 {
            return Err("eval.bootstrap must be at least 1".into());
        }
        self.model.transfer().validate()?;
        if self.model.pretrain.is_some() && self.model.arch != Arch::Sae {
            return Err("model.pretrain applies to arch = \"sae\" only".into());
        }
        Ok(())
    }

    /// The recipe as TOML (what the run directory keeps as `recipe.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_rejected_with_their_name() {
        let base = r#"
            [data]
            kind = "medmnist"
            path = "x.npz"
            [model]
            arch = "resnet18"
            [train]
            epochs = 0
            batch_size = 4
            optimizer = { kind = "adam", lr = 0.001 }
        "#;
        assert!(Recipe::from_toml(base).unwrap_err().contains("train.epochs"));
        let unknown = base.replace("epochs = 0", "epochs = 1\nepoks = 3");
        assert!(Recipe::from_toml(&unknown).unwrap_err().contains("epoks"));
        let schedule = base.replace("epochs = 0", "epochs = 1\nschedule = { kind = \"multistep\", milestones = [5], gamma = 2.0 }");
        assert!(Recipe::from_toml(&schedule).unwrap_err().contains("train.schedule"));
        let ok = base.replace("epochs = 0", "epochs = 1\nclass_weights = \"balanced\"");
        let r = Recipe::from_toml(&ok).unwrap();
        assert_eq!(r.train.class_weights, Some(ClassWeights::Named(WeightsName::Balanced)));
        assert_eq!(Recipe::from_toml(&r.to_toml()).unwrap(), r);
    }
}
