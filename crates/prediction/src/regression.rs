//! Continuous and ordinal targets from tables (`task = "regression"`): treatment response, disease severity, a
//! measurement to predict.
//!
//! Models (`[model] arch`, one or several, fitted on the same patient-level split and scored side by side):
//! * `linear` — ridge regression (scikit-learn's `Ridge`, intercept unpenalised) for the mean-squared error; with a
//!   Huber or quantile loss, or an ordinal target, a linear model trained with that loss;
//! * `svr`, `svr-linear` — ε-support-vector regression with an RBF or a linear kernel (smartcore);
//! * `knn` — k-nearest-neighbour regression (smartcore);
//! * `random-forest` — a forest of regression trees on bootstrap samples (smartcore);
//! * `mlp` — a multi-layer perceptron trained full-batch with Adam and `loss` (`mse`, `huber`, `quantile` with one
//!   output per quantile), the step with the lowest validation loss kept.
//!
//! Ordinal targets (`target_type = "ordinal"`: levels sorted numerically, or as `levels` lists them; two levels make a
//! binary response) are modelled by a cumulative link: one score `f(x)` and ordered thresholds, `P(y > k) =
//! σ(f(x) + bₖ)`, trained with the sum of the `K − 1` binary cross-entropies (CORAL, Cao et al. 2020); the predicted
//! level is the number of `P(y > k) > ½`. The classic regressors predict the level index, rounded.
//!
//! Continuous targets and features are standardised on the training patients; every model fits the standardised
//! target, predictions are mapped back. Metrics (MAE, RMSE, R², Pearson, Spearman; pinball loss and interval coverage
//! for quantiles; accuracy, MAE in levels, quadratic κ and Spearman for ordinal targets) come from
//! [`vesalius_eval::regression`] with bootstrap intervals over the test patients.
//!
//! ```
//! use vesalius_prediction::regression::RegressionRecipe;
//! let r = RegressionRecipe::from_toml(r#"
//!     task = "regression"
//!     [data]
//!     kind = "table"
//!     path = "trial.csv"
//!     target = "cd420"
//!     [model]
//!     arch = ["linear", "mlp"]
//!     loss = "huber"
//! "#, std::path::Path::new("/data")).unwrap();
//! assert_eq!(r.model.arch.len(), 2);
//! assert_eq!(r.data.test_share, 0.2);
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{RandomForestRegressor, RandomForestRegressorParameters};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::ridge_regression::{RidgeRegression, RidgeRegressionParameters, RidgeRegressionSolverName};
use smartcore::metrics::distance::euclidian::Euclidian;
use smartcore::neighbors::knn_regressor::{KNNRegressor, KNNRegressorParameters};
use smartcore::svm::Kernels;
use smartcore::svm::svr::{SVR, SVRParameters};
use vesalius_eval::bootstrap::Clusters;
use vesalius_eval::regression::{RegressionReport, add_quantiles, ordinal_report, regression_report};
use vesalius_nets::{Mlp, MlpConfig};

use crate::PredError;
use crate::table::{Encoding, RawTable, Standardise, read_csv};

/// Whether the target is a quantity or ordered levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    /// A number.
    #[default]
    Continuous,
    /// Ordered levels (two for a binary response).
    Ordinal,
}

/// `[data]`: a table with one row per patient (or several rows per patient with `id`), or a manifest of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionData {
    /// `"table"` (features in the columns) or `"images"` (one image path per row in column `image`; the pixels are
    /// the inputs).
    pub kind: String,
    /// The CSV file.
    pub path: PathBuf,
    /// `kind = "images"`: the column of image paths (relative to the manifest's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The target column.
    pub target: String,
    /// Continuous or ordinal.
    #[serde(default)]
    pub target_type: TargetType,
    /// Ordinal levels, lowest first (default: the distinct values, numerically or alphabetically sorted).
    #[serde(default)]
    pub levels: Option<Vec<String>>,
    /// Patient id column (default: the row number); rows of one patient stay on one side of the split.
    #[serde(default)]
    pub id: Option<String>,
    /// Feature columns (default: every other column not in `exclude`).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Columns left out of the default features.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Feature columns holding codes rather than quantities (dummy-coded).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Share of patients held out for testing (seeded).
    #[serde(default = "default_test_share")]
    pub test_share: f64,
    /// Share of the remaining patients held out for model selection.
    #[serde(default = "default_val_share")]
    pub val_share: f64,
}

fn default_test_share() -> f64 {
    0.2
}
fn default_val_share() -> f64 {
    0.2
}

/// A regression model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegArch {
    /// Ridge regression, or a linear model trained with the loss.
    Linear,
    /// ε-SVR with an RBF kernel.
    Svr,
    /// ε-SVR with a linear kernel.
    SvrLinear,
    /// k-nearest-neighbour regression.
    Knn,
    /// Random forest of regression trees.
    RandomForest,
    /// Multi-layer perceptron.
    Mlp,
    /// A network of the architectures crate on images (`[model] backbone`).
    Cnn,
}

impl RegArch {
    /// The recipe's name of the model.
    pub fn name(self) -> &'static str {
        match self {
            RegArch::Linear => "linear",
            RegArch::Svr => "svr",
            RegArch::SvrLinear => "svr-linear",
            RegArch::Knn => "knn",
            RegArch::RandomForest => "random-forest",
            RegArch::Mlp => "mlp",
            RegArch::Cnn => "cnn",
        }
    }
}

/// The training loss of the networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error.
    #[default]
    Mse,
    /// Huber loss with threshold `huber_delta` (in training standard deviations of the target).
    Huber,
    /// Pinball loss at each of `quantiles`.
    Quantile,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RegArch>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(RegArch),
        Many(Vec<RegArch>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionModels {
    /// The models to fit.
    #[serde(deserialize_with = "one_or_many")]
    pub arch: Vec<RegArch>,
    /// Loss of the networks.
    #[serde(default)]
    pub loss: Loss,
    /// Huber threshold in standard deviations of the target.
    #[serde(default = "one")]
    pub huber_delta: f64,
    /// Quantiles of the quantile loss, increasing in (0, 1).
    #[serde(default = "default_quantiles")]
    pub quantiles: Vec<f64>,
    /// Ridge penalty of `linear` (on standardised features).
    #[serde(default = "one")]
    pub alpha: f64,
    /// SVR: C.
    #[serde(default = "one")]
    pub c: f64,
    /// SVR: ε (in standard deviations of the target).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// SVR: RBF γ (default `1 / features`).
    #[serde(default)]
    pub gamma: Option<f64>,
    /// k-NN: neighbours.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Random forest: trees.
    #[serde(default = "default_trees")]
    pub trees: usize,
    /// Random forest: maximum depth.
    #[serde(default)]
    pub max_depth: Option<u16>,
    /// Random forest: minimum samples per leaf.
    #[serde(default = "default_leaf")]
    pub min_samples_leaf: usize,
    /// MLP: hidden widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// MLP: dropout after each hidden layer.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Networks: full-batch Adam steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Networks: learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Networks: L2 weight decay.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// `cnn`: the network that reads each image (`lenet5`, `alexnet`, `vgg11`, `resnet18`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<vesalius_nets::Arch>,
    /// Image data: side of the network input (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// `cnn`: minibatch size (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// `cnn`: epochs (default 20); the epoch with the lowest validation loss is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
}

impl RegressionModels {
    /// Side of the network input of image data.
    pub fn image_size(&self) -> usize {
        self.size.unwrap_or(32)
    }
}

fn one() -> f64 {
    1.0
}
fn default_quantiles() -> Vec<f64> {
    vec![0.1, 0.5, 0.9]
}
fn default_eps() -> f64 {
    0.1
}
fn default_k() -> usize {
    10
}
fn default_trees() -> usize {
    100
}
fn default_leaf() -> usize {
    5
}
fn default_hidden() -> Vec<usize> {
    vec![32, 32]
}
fn default_dropout() -> f64 {
    0.1
}
fn default_steps() -> usize {
    500
}
fn default_lr() -> f64 {
    3e-3
}
fn default_wd() -> f64 {
    1e-4
}

/// `[eval]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionEval {
    /// Bootstrap resamples over patients.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
}

fn default_bootstrap() -> usize {
    1000
}

impl Default for RegressionEval {
    fn default() -> Self {
        Self { bootstrap: default_bootstrap() }
    }
}

/// A regression recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionRecipe {
    /// Always `"regression"`.
    pub task: String,
    /// Seed of the split, the models and the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// Data.
    pub data: RegressionData,
    /// Models.
    pub model: RegressionModels,
    /// Evaluation.
    #[serde(default)]
    pub eval: RegressionEval,
}

impl RegressionRecipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, PredError> {
        let mut r: RegressionRecipe = toml::from_str(text).map_err(|e| PredError::Input(format!("invalid recipe: {e}")))?;
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

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), PredError> {
        let bad = |m: &str| Err(PredError::Input(m.to_string()));
        let (d, m) = (&self.data, &self.model);
        if self.task != "regression" {
            return bad("task must be \"regression\"");
        }
        let cnn = m.arch.contains(&RegArch::Cnn);
        match d.kind.as_str() {
            "table" => {
                if d.image.is_some() || cnn || m.backbone.is_some() || m.size.is_some() {
                    return bad("data.image, model.backbone, model.size and the \"cnn\" model are for data.kind = \"images\"");
                }
            }
            "images" => {
                if d.image.is_none() || (cnn && m.backbone.is_none()) || d.features.is_some() {
                    return bad(
                        "data.kind = \"images\" needs data.image (the column of image paths) and no data.features; \"cnn\" needs model.backbone",
                    );
                }
                if !(vesalius_nets::MIN_INPUT..=vesalius_nets::MAX_INPUT).contains(&m.image_size())
                    || m.batch.is_some_and(|b| !(2..=4096).contains(&b))
                    || m.epochs.is_some_and(|e| !(1..=10_000).contains(&e))
                {
                    return bad("model.size must lie in 28..=512, model.batch in 2..=4096, model.epochs in 1..=10000");
                }
            }
            _ => return bad("data.kind must be \"table\" or \"images\""),
        }
        if !(d.test_share > 0.0 && d.test_share < 1.0 && d.val_share > 0.0 && d.val_share < 1.0) {
            return bad("data.test_share and data.val_share must lie in (0, 1)");
        }
        if m.arch.is_empty() || m.arch.iter().collect::<BTreeSet<_>>().len() != m.arch.len() {
            return bad("model.arch must name at least one model, each once");
        }
        if m.loss == Loss::Quantile
            && (m.quantiles.is_empty()
                || m.quantiles.windows(2).any(|w| !(w[1] > w[0]))
                || m.quantiles.iter().any(|q| !(*q > 0.0 && *q < 1.0)))
        {
            return bad("model.quantiles must increase within (0, 1)");
        }
        if d.target_type == TargetType::Ordinal && m.loss != Loss::Mse {
            return bad("ordinal targets are fitted with their cumulative-link likelihood: leave model.loss at \"mse\"");
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !(positive(m.huber_delta) && positive(m.c) && positive(m.eps) && m.alpha >= 0.0 && m.gamma.is_none_or(positive)) {
            return bad("model.huber_delta, c, eps and gamma must be positive, alpha ≥ 0");
        }
        if m.k == 0 || m.trees == 0 || m.trees > 10_000 || m.min_samples_leaf == 0 {
            return bad("model.k and min_samples_leaf must be ≥ 1, trees in 1..=10000");
        }
        if m.hidden.iter().any(|&h| h == 0 || h > 4096)
            || !(0.0..1.0).contains(&m.dropout)
            || m.steps == 0
            || !positive(m.lr)
            || !(m.weight_decay >= 0.0)
        {
            return bad("model: hidden widths in 1..=4096, dropout in [0, 1), steps ≥ 1, lr > 0, weight_decay ≥ 0");
        }
        if self.eval.bootstrap == 0 {
            return bad("eval.bootstrap must be at least 1");
        }
        Ok(())
    }
}

/// A table read for a recipe: targets (continuous values, or level indices as numbers), encoded features, patients.
#[derive(Clone, Debug)]
pub struct RegressionRows {
    /// The table.
    pub raw: RawTable,
    /// Feature columns.
    pub features: Vec<String>,
    /// Targets (level index for ordinal targets).
    pub y: Vec<f64>,
    /// Patient of each row.
    pub patient: Vec<String>,
    /// Ordinal levels (empty for continuous targets).
    pub levels: Vec<String>,
}

/// Reads the recipe's table: the target checked on every row, levels found or checked.
pub fn read_rows(d: &RegressionData) -> Result<RegressionRows, PredError> {
    let raw = read_csv(&d.path)?;
    let tc = raw.column(&d.target)?;
    let ic = d.id.as_deref().map(|c| raw.column(c)).transpose()?;
    let reserved: Vec<&str> = std::iter::once(d.target.as_str()).chain(d.id.as_deref()).collect();
    // Image data: the pixels are the inputs, no column is a feature.
    let features =
        if d.image.is_some() { Vec::new() } else { crate::table::feature_columns(&raw, d.features.as_deref(), &reserved, &d.exclude)? };
    if d.image.is_none() && (features.is_empty() || features.contains(&d.target)) {
        return Err(PredError::Input(format!("{}: the features must be other columns than the target \"{}\"", raw.source, d.target)));
    }
    let cells: Vec<String> = raw.rows.iter().map(|r| r[tc].trim().to_string()).collect();
    let (y, levels) = match d.target_type {
        TargetType::Continuous => {
            let y = (0..raw.rows.len()).map(|r| raw.number(r, tc)).collect::<Result<Vec<f64>, _>>()?;
            (y, Vec::new())
        }
        TargetType::Ordinal => {
            let levels = match &d.levels {
                Some(l) => l.clone(),
                None => crate::table::sorted_levels(cells.iter().map(String::as_str)),
            };
            if !(2..=100).contains(&levels.len()) {
                return Err(PredError::Input(format!(
                    "{}: an ordinal target needs 2 to 100 levels; column \"{}\" has {}",
                    raw.source,
                    d.target,
                    levels.len()
                )));
            }
            let y = cells
                .iter()
                .enumerate()
                .map(|(r, c)| {
                    levels.iter().position(|l| l == c).map(|k| k as f64).ok_or_else(|| {
                        PredError::Input(format!(
                            "{}: row {} column \"{}\": \"{c}\" is not one of the levels {levels:?}",
                            raw.source,
                            r + 2,
                            d.target
                        ))
                    })
                })
                .collect::<Result<Vec<f64>, _>>()?;
            (y, levels)
        }
    };
    let patient = (0..raw.rows.len()).map(|r| ic.map_or_else(|| (r + 2).to_string(), |c| raw.rows[r][c].trim().to_string())).collect();
    Ok(RegressionRows { raw, features, y, patient, levels })
}

/// Row indices of the training, validation and test patients: patients shuffled with `seed`, the first
/// `⌈test_share · n⌉` tested, then `⌈val_share · rest⌉` for validation.
pub fn split_rows(patient: &[String], test_share: f64, val_share: f64, seed: u64) -> [Vec<usize>; 3] {
    let (rest, test) = crate::train::split(patient, test_share, seed);
    let rest_ids: Vec<String> = rest.iter().map(|&i| patient[i].clone()).collect();
    let (fit, val) = crate::train::split(&rest_ids, val_share, seed ^ 0x5eed);
    [fit.iter().map(|&k| rest[k]).collect(), val.iter().map(|&k| rest[k]).collect(), test]
}

/// A fitted model as stored in `regression.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FittedReg {
    /// `b + wᵀx` (ridge).
    Ridge {
        /// Weights.
        w: Vec<f64>,
        /// Intercept.
        b: f64,
    },
    /// `b + Σ wᵢ K(svᵢ, x)`: `K = exp(−γ‖svᵢ − x‖²)`, or the dot product without γ.
    Svr {
        /// RBF γ (`None`: linear kernel).
        gamma: Option<f64>,
        /// Support vectors.
        sv: Vec<Vec<f64>>,
        /// Weights.
        w: Vec<f64>,
        /// Bias.
        b: f64,
    },
    /// k-NN as smartcore serialises it.
    Knn {
        /// The regressor.
        model: serde_json::Value,
    },
    /// Single-tree smartcore forests, each on its own bootstrap sample; the prediction is their mean.
    Forest {
        /// The trees.
        trees: Vec<serde_json::Value>,
    },
    /// A network on images; its weights are in `net-cnn.mpk` of the run.
    ImageNet {
        /// The backbone.
        backbone: vesalius_nets::Arch,
        /// Input side.
        size: usize,
        /// Outputs (quantiles, or 1).
        outputs: usize,
        /// Thresholds of an ordinal model (levels − 1), else 0.
        thresholds: usize,
        /// The epoch kept.
        epoch: usize,
    },
    /// A network; its weights are in `net-<arch>.mpk` of the run.
    Net {
        /// Inputs.
        inputs: usize,
        /// Hidden widths (none: linear).
        hidden: Vec<usize>,
        /// Outputs of the perceptron (quantiles, or 1).
        outputs: usize,
        /// Thresholds of an ordinal model (levels − 1), else 0.
        thresholds: usize,
        /// The step kept.
        step: usize,
    },
}

/// What a regression run stores in `regression.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegressionRun {
    /// Target column.
    pub target: String,
    /// Continuous or ordinal.
    pub target_type: TargetType,
    /// Ordinal levels.
    pub levels: Vec<String>,
    /// Training mean and standard deviation of a continuous target (0, 1 for ordinal).
    pub y_mean: f64,
    /// See `y_mean`.
    pub y_sd: f64,
    /// Quantiles the networks predict (empty unless `loss = "quantile"`).
    pub quantiles: Vec<f64>,
    /// Feature encoding fitted on the training patients.
    pub encoding: Encoding,
    /// Standardisation fitted on the training patients.
    pub standardise: Standardise,
    /// Fitted models in recipe order.
    pub models: Vec<(RegArch, FittedReg)>,
    /// Patients and rows per split.
    pub counts: BTreeMap<String, (usize, usize)>,
    /// Image data: the manifest's image column and the input side (the pixels are the inputs, unstandardised).
    #[serde(default)]
    pub image: Option<(String, usize)>,
}

/// `metrics.json` of a regression run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// The set scored (`test`).
    pub set: String,
    /// Patients scored.
    pub n_patients: usize,
    /// Rows scored.
    pub n_rows: usize,
    /// Target column.
    pub target: String,
    /// Continuous or ordinal.
    pub target_type: TargetType,
    /// What the intervals resample.
    pub bootstrap_unit: String,
    /// One report per model.
    pub models: BTreeMap<String, RegressionReport>,
}

/// A regression network: a perceptron, and the ordered thresholds of a cumulative-link (ordinal) model.
#[derive(Module, Debug)]
pub struct RegNet<B: Backend> {
    mlp: Mlp<B>,
    thresholds: Option<Param<Tensor<B, 1>>>,
}

/// Ordered thresholds of a cumulative-link model: spread around 0 and decreasing, as P(y > k) falls with k.
fn threshold_param<B: Backend>(thresholds: usize, device: &B::Device) -> Option<Param<Tensor<B, 1>>> {
    let init: Vec<f32> = (0..thresholds).map(|k| (thresholds as f32 - 1.0) / 2.0 - k as f32).collect();
    (thresholds > 0).then(|| Param::from_tensor(Tensor::from_data(TensorData::new(init, [thresholds]), device)))
}

/// A network that maps rows `[n, p]` to outputs `[n, k]` (pixels are rows for image networks).
pub trait RegForward<B: Backend> {
    /// Outputs `[n, k]`.
    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2>;
}

impl<B: Backend> RegForward<B> for RegNet<B> {
    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward(x)
    }
}

/// A regression network on images: a backbone of the architectures crate with `outputs` outputs, and the ordered
/// thresholds of a cumulative-link (ordinal) model.
#[derive(Module, Debug)]
pub struct ImageRegNet<B: Backend> {
    net: vesalius_nets::Classifier<B>,
    thresholds: Option<Param<Tensor<B, 1>>>,
    side: usize,
}

impl<B: Backend> ImageRegNet<B> {
    /// The network for `side`² grey images.
    pub fn new(
        backbone: vesalius_nets::Arch,
        side: usize,
        outputs: usize,
        thresholds: usize,
        device: &B::Device,
    ) -> Result<Self, PredError> {
        let net = vesalius_nets::ClassifierConfig::new(backbone, 1, outputs.max(1), side)
            .init(device)
            .map_err(|e| PredError::Input(format!("[model] backbone: {e}")))?;
        Ok(Self { net, thresholds: threshold_param(thresholds, device), side })
    }
}

impl<B: Backend> RegForward<B> for ImageRegNet<B> {
    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        let f = self.net.forward(x.reshape([n, 1, self.side, self.side]));
        match &self.thresholds {
            Some(b) => f + b.val().unsqueeze_dim(0),
            None => f,
        }
    }
}

impl<B: Backend> RegNet<B> {
    /// A network with `inputs` features; `outputs` perceptron outputs; `thresholds` > 0 for an ordinal model.
    pub fn new(inputs: usize, hidden: &[usize], dropout: f64, outputs: usize, thresholds: usize, device: &B::Device) -> Self {
        let mlp = MlpConfig::new(inputs, outputs).with_hidden(hidden.to_vec()).with_dropout(dropout).init(device);
        Self { mlp, thresholds: threshold_param(thresholds, device) }
    }

    /// Outputs `[n, outputs]`, or for an ordinal model the logits of `P(y > k)`, `[n, levels − 1]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, p] = x.dims();
        let f = self.mlp.forward(x.reshape([n, 1, 1, p]));
        match &self.thresholds {
            Some(b) => f + b.val().unsqueeze_dim(0),
            None => f,
        }
    }
}

fn rows_tensor<B: Backend>(x: &[Vec<f64>], device: &B::Device) -> Tensor<B, 2> {
    let p = x.first().map_or(0, Vec::len);
    Tensor::from_data(TensorData::new(x.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect::<Vec<f32>>(), [x.len(), p]), device)
}

fn net_outputs<B: Backend>(net: &dyn RegForward<B>, x: &[Vec<f64>], device: &B::Device) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(x.len());
    // Chunks bound the memory of image networks.
    for chunk in x.chunks(256) {
        let y = net.forward_rows(rows_tensor(chunk, device));
        let k = y.dims()[1];
        let v: Vec<f64> = y.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(f64::from).collect();
        out.extend(v.chunks(k.max(1)).map(<[f64]>::to_vec));
    }
    out
}

/// The loss of a batch: `out` against standardised targets (or level indices for ordinal models).
fn net_loss<B: Backend>(out: Tensor<B, 2>, y: &[f64], spec: &RegressionModels, ordinal: bool, device: &B::Device) -> Tensor<B, 1> {
    let [n, k] = out.dims();
    if ordinal {
        // Σₖ BCE(zₖ, [y > k]): softplus(z) − t·z, stably.
        let t: Vec<f32> = y.iter().flat_map(|&v| (0..k).map(move |j| if v > j as f64 { 1.0 } else { 0.0 })).collect();
        let t = Tensor::<B, 2>::from_data(TensorData::new(t, [n, k]), device);
        let softplus = out.clone().clamp_min(0.0) + out.clone().abs().neg().exp().log1p();
        return (softplus - t * out).sum() / n as f64;
    }
    let target =
        Tensor::<B, 1>::from_data(TensorData::new(y.iter().map(|&v| v as f32).collect::<Vec<f32>>(), [n]), device).unsqueeze_dim::<2>(1);
    match spec.loss {
        Loss::Mse => MseLoss::new().forward(out, target, Reduction::Mean).reshape([1]),
        Loss::Huber => {
            let d = spec.huber_delta;
            let r = (out - target).abs();
            let quad = r.clone().clamp_max(d);
            // ½ min(r, δ)² + δ (r − min(r, δ))
            (quad.clone().powf_scalar(2.0) * 0.5 + (r - quad) * d).mean().reshape([1])
        }
        Loss::Quantile => {
            let taus =
                Tensor::<B, 1>::from_data(TensorData::new(spec.quantiles.iter().map(|&q| q as f32).collect::<Vec<f32>>(), [k]), device)
                    .unsqueeze_dim::<2>(0);
            let e = target - out; // y − q
            let pos = e.clone().clamp_min(0.0);
            let neg = e.clamp_max(0.0);
            (pos * taus.clone() + neg * (taus - 1.0)).sum() / (n * k) as f64
        }
    }
}

/// Trains a network full-batch with Adam; the step with the lowest validation loss is kept (checked every 5 steps).
fn fit_net<AB: AutodiffBackend>(
    spec: &RegressionModels,
    hidden: &[usize],
    dropout: f64,
    outputs: usize,
    thresholds: usize,
    train: (&[Vec<f64>], &[f64]),
    val: (&[Vec<f64>], &[f64]),
    seed: u64,
    device: &AB::Device,
) -> (RegNet<AB::InnerBackend>, usize) {
    AB::seed(device, seed);
    let p = train.0[0].len();
    let mut net = RegNet::<AB>::new(p, hidden, dropout, outputs, thresholds, device);
    let mut opt = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(spec.weight_decay as f32))).init::<AB, RegNet<AB>>();
    let x = rows_tensor::<AB>(train.0, device);
    let xv = rows_tensor::<AB::InnerBackend>(val.0, device);
    let ordinal = thresholds > 0;
    let val_loss = |net: &RegNet<AB::InnerBackend>| -> f64 {
        let l = net_loss(net.forward(xv.clone()), val.1, spec, ordinal, device);
        l.into_data().convert::<f64>().to_vec::<f64>().ok().and_then(|v| v.first().copied()).unwrap_or(f64::INFINITY)
    };
    let mut best = (f64::INFINITY, net.valid(), 0);
    for step in 1..=spec.steps {
        let loss = net_loss(net.forward(x.clone()), train.1, spec, ordinal, device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = opt.step(spec.lr, net, grads);
        if step.is_multiple_of(5) || step == spec.steps {
            let v = net.valid();
            let l = val_loss(&v);
            if l < best.0 {
                best = (l, v, step);
            }
        }
    }
    (best.1, best.2)
}

/// The image network's training on the engine: shuffled minibatches, the recipe's loss, the epoch with the lowest
/// validation loss kept (checkpoints and resumption in the run's `cnn/` stage folder).
struct ImageRegTask<'a> {
    spec: &'a RegressionModels,
    backbone: vesalius_nets::Arch,
    outputs: usize,
    thresholds: usize,
    train: (&'a [Vec<f64>], &'a [f64]),
    val: (&'a [Vec<f64>], &'a [f64]),
    seed: u64,
}

impl ImageRegTask<'_> {
    fn batch(&self) -> usize {
        self.spec.batch.unwrap_or(32).min(self.train.0.len())
    }
}

impl<AB: AutodiffBackend> vesalius_train::Task<AB> for ImageRegTask<'_> {
    type Model = ImageRegNet<AB>;
    type Error = PredError;

    fn init_model(&mut self, device: &AB::Device) -> Result<ImageRegNet<AB>, PredError> {
        ImageRegNet::new(self.backbone, self.spec.image_size(), self.outputs, self.thresholds, device)
    }

    fn epochs(&self) -> usize {
        self.spec.epochs.unwrap_or(20)
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.train.0.len().div_ceil(self.batch())
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.spec.lr
    }

    fn train_epoch<O: Optimizer<ImageRegNet<AB>, AB>>(
        &mut self,
        epoch: usize,
        stepper: &mut vesalius_train::Stepper<'_, AB, ImageRegNet<AB>, O>,
    ) -> Result<(), PredError> {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let device = stepper.device().clone();
        let mut order: Vec<usize> = (0..self.train.0.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(vesalius_train::engine::stream_seed(self.seed, epoch as u64, 0)));
        // A last batch of one would leave batch normalisation without a variance.
        for chunk in order.chunks(self.batch()).filter(|c| c.len() > 1) {
            let rows: Vec<Vec<f64>> = chunk.iter().map(|&i| self.train.0[i].clone()).collect();
            let y: Vec<f64> = chunk.iter().map(|&i| self.train.1[i]).collect();
            let x = rows_tensor(&rows, &device);
            let (spec, ordinal) = (self.spec, self.thresholds > 0);
            stepper.step_split(chunk.len(), 1.0, |m: &ImageRegNet<AB>, r, d| {
                let out = m.forward_rows(vesalius_train::engine::part(&x, &r, d));
                Ok::<_, PredError>(net_loss(out, &y[r], spec, ordinal, d))
            })?;
        }
        Ok(())
    }

    fn validate(
        &mut self,
        model: &ImageRegNet<AB::InnerBackend>,
        _epoch: usize,
        device: &AB::Device,
    ) -> Result<Option<vesalius_train::Validation>, PredError> {
        let l = net_loss(model.forward_rows(rows_tensor(self.val.0, device)), self.val.1, self.spec, self.thresholds > 0, device);
        let l = l.into_data().convert::<f64>().to_vec::<f64>().ok().and_then(|v| v.first().copied()).unwrap_or(f64::INFINITY);
        Ok(Some(vesalius_train::Validation::new().metric("val_loss", l).score(-l)))
    }
}

/// Trains an image network on the engine in `stage` (see [`ImageRegTask`]); returns the best network and its epoch.
#[allow(clippy::too_many_arguments)]
fn fit_image_net<AB: AutodiffBackend>(
    stage: &vesalius_train::RunDir,
    recipe_toml: &str,
    spec: &RegressionModels,
    backbone: vesalius_nets::Arch,
    outputs: usize,
    thresholds: usize,
    train: (&[Vec<f64>], &[f64]),
    val: (&[Vec<f64>], &[f64]),
    seed: u64,
    device: &AB::Device,
) -> Result<(ImageRegNet<AB::InnerBackend>, usize), PredError> {
    let rules =
        vesalius_train::recipe::ResumeRules { free: vec!["model.lr".into()], length: vec!["model.epochs".into()], schedule_depends: false };
    vesalius_train::engine::prepare(stage, recipe_toml, &rules)?;
    let mut task = ImageRegTask { spec, backbone, outputs, thresholds, train, val, seed };
    let optim = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(spec.weight_decay as f32))).init::<AB, ImageRegNet<AB>>();
    let config = vesalius_train::RunOptions { quiet: true, ..Default::default() }.config(seed, None);
    let outcome = vesalius_train::engine::train(stage, &mut task, optim, &config, device, |_| {})?;
    let template = ImageRegNet::<AB::InnerBackend>::new(backbone, spec.image_size(), outputs, thresholds, device)?;
    let net = vesalius_train::engine::load_module(template, &stage.best_model(), device)?;
    Ok((net, outcome.state.best_epoch.unwrap_or(0)))
}

fn matrix(rows: &[Vec<f64>]) -> Result<DenseMatrix<f64>, PredError> {
    DenseMatrix::from_2d_vec(&rows.to_vec()).map_err(|e| PredError::Input(format!("feature matrix: {e}")))
}

fn fit_err(arch: RegArch) -> impl Fn(smartcore::error::Failed) -> PredError {
    move |e| PredError::Input(format!("{}: fitting failed: {e}", arch.name()))
}

fn internal(what: &'static str) -> impl Fn(serde_json::Error) -> PredError {
    move |e| PredError::Internal(format!("{what}: {e}"))
}

type Knn = KNNRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>, Euclidian<f64>>;
type Forest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// What a run needs to fit its models.
struct FitContext<'a> {
    spec: &'a RegressionModels,
    levels: usize,
    seed: u64,
    /// The run folder (image networks train on the engine in its `cnn/` stage) and the recipe's text.
    run: &'a Path,
    recipe_toml: &'a str,
}

/// Fits one model on standardised features and targets; networks also return their weights.
fn fit_model<AB: AutodiffBackend>(
    arch: RegArch,
    cx: &FitContext<'_>,
    train: (&[Vec<f64>], &[f64]),
    val: (&[Vec<f64>], &[f64]),
    device: &AB::Device,
) -> Result<(FittedReg, Option<SavedNet<AB::InnerBackend>>), PredError> {
    let spec = cx.spec;
    let p = train.0[0].len();
    let ordinal = cx.levels > 0;
    let outputs = if spec.loss == Loss::Quantile { spec.quantiles.len() } else { 1 };
    let thresholds = if ordinal { cx.levels - 1 } else { 0 };
    let net = |hidden: &[usize], dropout: f64| -> (FittedReg, Option<SavedNet<AB::InnerBackend>>) {
        let (net, step) = fit_net::<AB>(spec, hidden, dropout, outputs, thresholds, train, val, cx.seed, device);
        (FittedReg::Net { inputs: p, hidden: hidden.to_vec(), outputs, thresholds, step }, Some(SavedNet::Rows(net)))
    };
    if arch == RegArch::Cnn {
        let backbone = spec.backbone.ok_or_else(|| PredError::Input("the \"cnn\" model needs [model] backbone".into()))?;
        let stage = vesalius_train::RunDir::new(cx.run).stage("cnn");
        let (net, epoch) = fit_image_net::<AB>(&stage, cx.recipe_toml, spec, backbone, outputs, thresholds, train, val, cx.seed, device)?;
        let fitted = FittedReg::ImageNet { backbone, size: spec.image_size(), outputs, thresholds, epoch };
        return Ok((fitted, Some(SavedNet::Image(net))));
    }
    if arch == RegArch::Mlp {
        return Ok(net(&spec.hidden, spec.dropout));
    }
    if arch == RegArch::Linear && (ordinal || spec.loss != Loss::Mse) {
        return Ok(net(&[], 0.0));
    }
    let x = matrix(train.0)?;
    let y = train.1.to_vec();
    let fitted = match arch {
        RegArch::Linear => {
            let params = RidgeRegressionParameters::default()
                .with_alpha(spec.alpha)
                .with_normalize(false)
                .with_solver(RidgeRegressionSolverName::Cholesky);
            let m = RidgeRegression::fit(&x, &y, params).map_err(fit_err(arch))?;
            let coef = m.coefficients();
            let w = (0..p).map(|j| *coef.get((j, 0))).collect();
            FittedReg::Ridge { w, b: *m.intercept() }
        }
        RegArch::Svr | RegArch::SvrLinear => {
            let gamma = (arch == RegArch::Svr).then(|| spec.gamma.unwrap_or(1.0 / p as f64));
            let kernel = match gamma {
                Some(g) => Kernels::rbf().with_gamma(g),
                None => Kernels::linear(),
            };
            let params = SVRParameters::default().with_c(spec.c).with_eps(spec.eps).with_kernel(kernel);
            let svr = SVR::fit(&x, &y, &params).map_err(fit_err(arch))?;
            let v = serde_json::to_value(&svr).map_err(internal("SVR"))?;
            let sv: Vec<Vec<f64>> = serde_json::from_value(v["instances"].clone()).map_err(internal("SVR"))?;
            let w: Vec<f64> = serde_json::from_value(v["w"].clone()).map_err(internal("SVR"))?;
            FittedReg::Svr { gamma, sv, w, b: v["b"].as_f64().unwrap_or(0.0) }
        }
        RegArch::Knn => {
            let knn: Knn =
                KNNRegressor::fit(&x, &y, KNNRegressorParameters::default().with_k(spec.k.min(train.0.len()))).map_err(fit_err(arch))?;
            FittedReg::Knn { model: serde_json::to_value(&knn).map_err(internal("k-NN"))? }
        }
        RegArch::RandomForest => {
            let mut trees = Vec::with_capacity(spec.trees);
            for t in 0..spec.trees {
                let params = RandomForestRegressorParameters {
                    n_trees: 1,
                    max_depth: spec.max_depth,
                    min_samples_leaf: spec.min_samples_leaf,
                    min_samples_split: 2,
                    m: None,
                    keep_samples: false,
                    seed: vesalius_io::mix(cx.seed ^ t as u64),
                };
                let f: Forest = RandomForestRegressor::fit(&x, &y, params).map_err(fit_err(arch))?;
                trees.push(serde_json::to_value(&f).map_err(internal("forest"))?);
            }
            FittedReg::Forest { trees }
        }
        RegArch::Mlp | RegArch::Cnn => return Err(PredError::Internal("networks are fitted above".into())),
    };
    Ok((fitted, None))
}

/// Predictions of one model for standardised rows: per row, the outputs on the model's scale — one value
/// (standardised target, or level index) for classic models; the network's outputs otherwise.
fn raw_outputs<B: Backend>(
    fitted: &FittedReg,
    x: &[Vec<f64>],
    net: Option<&SavedNet<B>>,
    device: &B::Device,
) -> Result<Vec<Vec<f64>>, PredError> {
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let one = |v: Vec<f64>| v.into_iter().map(|p| vec![p]).collect();
    Ok(match fitted {
        FittedReg::Ridge { w, b } => one(x.iter().map(|r| b + w.iter().zip(r).map(|(a, c)| a * c).sum::<f64>()).collect()),
        FittedReg::Svr { gamma, sv, w, b } => {
            let k = |s: &[f64], r: &[f64]| match gamma {
                Some(g) => (-g * s.iter().zip(r).map(|(a, c)| (a - c).powi(2)).sum::<f64>()).exp(),
                None => s.iter().zip(r).map(|(a, c)| a * c).sum::<f64>(),
            };
            one(x.iter().map(|r| b + sv.iter().zip(w).map(|(s, wi)| wi * k(s, r)).sum::<f64>()).collect())
        }
        FittedReg::Knn { model } => {
            let knn: Knn = serde_json::from_value(model.clone()).map_err(internal("stored k-NN"))?;
            one(knn.predict(&matrix(x)?).map_err(|e| PredError::Internal(format!("k-NN: {e}")))?)
        }
        FittedReg::Forest { trees } => {
            let m = matrix(x)?;
            let mut sum = vec![0.0; x.len()];
            for t in trees {
                let tree: Forest = serde_json::from_value(t.clone()).map_err(internal("stored tree"))?;
                let pred = tree.predict(&m).map_err(|e| PredError::Internal(format!("forest: {e}")))?;
                sum.iter_mut().zip(pred).for_each(|(s, v)| *s += v / trees.len() as f64);
            }
            one(sum)
        }
        FittedReg::Net { .. } | FittedReg::ImageNet { .. } => {
            let net: &dyn RegForward<B> = match net.ok_or_else(|| PredError::Internal("the network's weights are missing".into()))? {
                SavedNet::Rows(n) => n,
                SavedNet::Image(n) => n,
            };
            net_outputs(net, x, device)
        }
    })
}

/// A model's predictions in the target's units.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    /// Point predictions (level index for ordinal targets).
    pub point: Vec<f64>,
    /// Quantile predictions `[quantile][row]`, sorted per row so that they do not cross (networks with the quantile
    /// loss only).
    pub quantiles: Vec<Vec<f64>>,
    /// Level probabilities `[row][level]` (ordinal networks only).
    pub levels: Vec<Vec<f64>>,
}

impl RegressionRun {
    /// Maps a model's raw outputs to predictions.
    pub fn predictions(&self, fitted: &FittedReg, out: Vec<Vec<f64>>) -> Predictions {
        let k = self.levels.len();
        let unscale = |v: f64| self.y_mean + self.y_sd * v;
        let ordinal_net = matches!(fitted, FittedReg::Net { thresholds, .. } | FittedReg::ImageNet { thresholds, .. } if *thresholds > 0);
        if ordinal_net {
            let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
            let probs: Vec<Vec<f64>> = out
                .iter()
                .map(|z| {
                    let gt: Vec<f64> = z.iter().map(|&v| sig(v)).collect(); // P(y > j)
                    (0..k)
                        .map(|j| {
                            let above = if j == 0 { 1.0 } else { gt[j - 1] };
                            let next = if j < gt.len() { gt[j] } else { 0.0 };
                            (above - next).max(0.0)
                        })
                        .collect()
                })
                .collect();
            let point = out.iter().map(|z| z.iter().filter(|&&v| v > 0.0).count() as f64).collect();
            return Predictions { point, quantiles: Vec::new(), levels: probs };
        }
        if k > 0 {
            let point = out.iter().map(|o| o[0].round().clamp(0.0, (k - 1) as f64)).collect();
            return Predictions { point, quantiles: Vec::new(), levels: Vec::new() };
        }
        if out.first().is_some_and(|o| o.len() > 1) {
            let sorted: Vec<Vec<f64>> = out
                .into_iter()
                .map(|mut o| {
                    o.sort_by(f64::total_cmp);
                    o.into_iter().map(unscale).collect()
                })
                .collect();
            let m = self.quantiles.len();
            let mid = (0..m).min_by(|&a, &b| (self.quantiles[a] - 0.5).abs().total_cmp(&(self.quantiles[b] - 0.5).abs())).unwrap_or(0);
            let quantiles: Vec<Vec<f64>> = (0..m).map(|j| sorted.iter().map(|r| r[j]).collect()).collect();
            return Predictions { point: quantiles[mid].clone(), quantiles, levels: Vec::new() };
        }
        Predictions { point: out.iter().map(|o| unscale(o[0])).collect(), quantiles: Vec::new(), levels: Vec::new() }
    }

    /// Standardised encoded rows of `raw`; for image runs, the pixels of the rows' images (paths relative to the
    /// table's folder).
    pub fn encode(&self, raw: &RawTable, idx: &[usize]) -> Result<Vec<Vec<f64>>, PredError> {
        if let Some((column, size)) = &self.image {
            let base = Path::new(&raw.source).parent().unwrap_or(Path::new("."));
            return crate::images::read_pixels_at(raw, column, base, *size, idx);
        }
        idx.iter().map(|&i| Ok(self.standardise.apply(&self.encoding.encode_row(raw, i)?))).collect()
    }
}

fn net_file(arch: RegArch) -> String {
    format!("net-{}.mpk", arch.name())
}

/// A fitted network's weights: a perceptron on rows, or an image network.
pub enum SavedNet<B: Backend> {
    /// [`RegNet`].
    Rows(RegNet<B>),
    /// [`ImageRegNet`].
    Image(ImageRegNet<B>),
}

impl<B: Backend> SavedNet<B> {
    fn to_bytes(&self) -> Result<Vec<u8>, PredError> {
        match self {
            SavedNet::Rows(n) => vesalius_nets::record::to_bytes::<B, _>(n.clone().into_record()),
            SavedNet::Image(n) => vesalius_nets::record::to_bytes::<B, _>(n.clone().into_record()),
        }
        .map_err(PredError::Internal)
    }
}

fn load_net<B: Backend>(run: &Path, arch: RegArch, fitted: &FittedReg, device: &B::Device) -> Result<Option<SavedNet<B>>, PredError> {
    let path = run.join(net_file(arch));
    let bytes = || std::fs::read(&path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())));
    match fitted {
        FittedReg::Net { inputs, hidden, outputs, thresholds, .. } => {
            let record = vesalius_nets::record::from_bytes::<B, _>(bytes()?, device).map_err(PredError::Input)?;
            Ok(Some(SavedNet::Rows(RegNet::new(*inputs, hidden, 0.0, *outputs, *thresholds, device).load_record(record))))
        }
        FittedReg::ImageNet { backbone, size, outputs, thresholds, .. } => {
            let record = vesalius_nets::record::from_bytes::<B, _>(bytes()?, device).map_err(PredError::Input)?;
            Ok(Some(SavedNet::Image(ImageRegNet::new(*backbone, *size, *outputs, *thresholds, device)?.load_record(record))))
        }
        _ => Ok(None),
    }
}

/// Whether `dir` holds a regression run.
pub fn is_run(dir: &Path) -> bool {
    dir.join("regression.json").is_file()
}

/// Fits every model of the recipe into `out` and scores them on the test patients. The run folder holds
/// `recipe.toml`, `regression.json` (encodings and every fitted model), `net-<arch>.mpk` for networks,
/// `splits.csv`, `predictions-test.csv` and `metrics.json`, each written atomically.
pub fn train<AB: AutodiffBackend>(recipe: &RegressionRecipe, out: &Path, device: &AB::Device) -> Result<RegressionMetrics, PredError> {
    recipe.validate()?;
    let rows = read_rows(&recipe.data)?;
    let [tr, va, te] = split_rows(&rows.patient, recipe.data.test_share, recipe.data.val_share, recipe.seed);
    if tr.len() < 2 || va.is_empty() || te.is_empty() {
        return Err(PredError::Input(format!("{}: too few patients for a training, validation and test set", rows.raw.source)));
    }
    let train_table = RawTable {
        source: rows.raw.source.clone(),
        header: rows.raw.header.clone(),
        rows: tr.iter().map(|&i| rows.raw.rows[i].clone()).collect(),
    };
    let encoding = Encoding::fit_with(&train_table, &rows.features, &recipe.data.categorical)?;
    let enc_train: Vec<Vec<f64>> = tr.iter().map(|&i| encoding.encode_row(&rows.raw, i)).collect::<Result<_, _>>()?;
    // Pixels enter every model as read (scaled by their stored range).
    let image = recipe.data.image.as_ref().map(|c| (c.clone(), recipe.model.image_size()));
    let standardise = if image.is_some() {
        let p = recipe.model.image_size().pow(2);
        Standardise { mean: vec![0.0; p], std: vec![1.0; p] }
    } else {
        Standardise::fit(&enc_train)
    };
    let ordinal = recipe.data.target_type == TargetType::Ordinal;
    let (y_mean, y_sd) = if ordinal {
        (0.0, 1.0)
    } else {
        let s = Standardise::fit(&tr.iter().map(|&i| vec![rows.y[i]]).collect::<Vec<_>>());
        (s.mean[0], s.std[0])
    };
    let mut run = RegressionRun {
        target: recipe.data.target.clone(),
        target_type: recipe.data.target_type,
        levels: rows.levels.clone(),
        y_mean,
        y_sd,
        quantiles: if recipe.model.loss == Loss::Quantile { recipe.model.quantiles.clone() } else { Vec::new() },
        encoding,
        standardise,
        models: Vec::new(),
        counts: BTreeMap::new(),
        image,
    };
    let x_of = |idx: &[usize]| run.encode(&rows.raw, idx);
    let z_of = |idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| (rows.y[i] - y_mean) / y_sd).collect() };
    let (x_fit, x_val) = (x_of(&tr)?, x_of(&va)?);
    let (z_fit, z_val) = (z_of(&tr), z_of(&va));

    std::fs::create_dir_all(out).map_err(|e| PredError::Internal(format!("{}: {e}", out.display())))?;
    let text = toml::to_string(recipe).map_err(|e| PredError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&out.join("recipe.toml"), text.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    let cx = FitContext { spec: &recipe.model, levels: rows.levels.len(), seed: recipe.seed, run: out, recipe_toml: &text };
    for &arch in &recipe.model.arch {
        let cx = FitContext { seed: vesalius_io::mix(recipe.seed ^ arch as u64), ..cx };
        let (fitted, net) = fit_model::<AB>(arch, &cx, (&x_fit, &z_fit), (&x_val, &z_val), device)?;
        if let Some(net) = net {
            let bytes = net.to_bytes()?;
            vesalius_io::write_atomic(&out.join(net_file(arch)), &bytes).map_err(|e| PredError::Internal(e.to_string()))?;
        }
        run.models.push((arch, fitted));
    }
    let count = |idx: &[usize]| (idx.iter().map(|&i| &rows.patient[i]).collect::<BTreeSet<_>>().len(), idx.len());
    run.counts = BTreeMap::from([("train".into(), count(&tr)), ("validation".into(), count(&va)), ("test".into(), count(&te))]);
    let json = serde_json::to_vec(&run).map_err(internal("regression.json"))?;
    vesalius_io::write_atomic(&out.join("regression.json"), &json).map_err(|e| PredError::Internal(e.to_string()))?;
    let mut splits = String::from("row,patient,split\n");
    for (name, idx) in [("train", &tr), ("validation", &va), ("test", &te)] {
        for &i in idx.iter() {
            let _ = writeln!(splits, "{},{},{name}", i + 2, rows.patient[i]);
        }
    }
    vesalius_io::write_atomic(&out.join("splits.csv"), splits.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    // Scored from the files as stored, so that `vesalius evaluate` reproduces metrics.json exactly.
    evaluate::<AB::InnerBackend>(out, device)
}

/// Scores a run's models on its test patients (from `regression.json`, the networks and `splits.csv`), writing
/// `predictions-test.csv` and `metrics.json`.
pub fn evaluate<B: Backend>(run_dir: &Path, device: &B::Device) -> Result<RegressionMetrics, PredError> {
    let recipe = RegressionRecipe::from_file(&run_dir.join("recipe.toml"))?;
    let run = read_run(run_dir)?;
    let rows = read_rows(&recipe.data)?;
    let [_, _, te] = split_rows(&rows.patient, recipe.data.test_share, recipe.data.val_share, recipe.seed);
    let x = run.encode(&rows.raw, &te)?;
    let ids: Vec<Option<&str>> = te.iter().map(|&i| Some(rows.patient[i].as_str())).collect();
    let clusters = Clusters::from_ids(&ids);
    let y: Vec<f64> = te.iter().map(|&i| rows.y[i]).collect();
    let (b, seed) = (recipe.eval.bootstrap, recipe.seed);
    let mut reports = BTreeMap::new();
    let mut csv = format!("row,patient,{}", recipe.data.target);
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); te.len()];
    for (arch, fitted) in &run.models {
        let net = load_net::<B>(run_dir, *arch, fitted, device)?;
        let pred = run.predictions(fitted, raw_outputs(fitted, &x, net.as_ref(), device)?);
        let report = if run.target_type == TargetType::Ordinal {
            let yi: Vec<usize> = y.iter().map(|&v| v as usize).collect();
            let pi: Vec<usize> = pred.point.iter().map(|&v| v as usize).collect();
            ordinal_report(&yi, &pi, run.levels.len(), &clusters, b, seed)
        } else {
            let mut r = regression_report(&y, &pred.point, &clusters, b, seed);
            if let Ok(r) = r.as_mut()
                && !pred.quantiles.is_empty()
            {
                add_quantiles(r, &y, &run.quantiles, &pred.quantiles, &clusters, b, seed)
                    .map_err(|e| PredError::Internal(e.to_string()))?;
            }
            r
        }
        .map_err(|e| PredError::Input(format!("{}: {e}", run_dir.display())))?;
        reports.insert(arch.name().to_string(), report);
        let _ = write!(csv, ",{}", arch.name());
        for (i, c) in columns.iter_mut().enumerate() {
            c.push(run.format_point(pred.point[i]));
        }
        for (j, tau) in run.quantiles.iter().enumerate().filter(|_| !pred.quantiles.is_empty()) {
            let _ = write!(csv, ",{}:q{tau}", arch.name());
            for (i, c) in columns.iter_mut().enumerate() {
                c.push(format!("{:.6}", pred.quantiles[j][i]));
            }
        }
    }
    csv.push('\n');
    for (k, &i) in te.iter().enumerate() {
        let truth = if run.target_type == TargetType::Ordinal { run.levels[rows.y[i] as usize].clone() } else { rows.y[i].to_string() };
        let _ = writeln!(csv, "{},{},{truth},{}", i + 2, rows.patient[i], columns[k].join(","));
    }
    vesalius_io::write_atomic(&run_dir.join("predictions-test.csv"), csv.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    let metrics = RegressionMetrics {
        set: "test".into(),
        n_patients: clusters.len(),
        n_rows: te.len(),
        target: run.target.clone(),
        target_type: run.target_type,
        bootstrap_unit: clusters.unit().into(),
        models: reports,
    };
    let mj = serde_json::to_vec_pretty(&metrics).map_err(internal("metrics.json"))?;
    vesalius_io::write_atomic(&run_dir.join("metrics.json"), &mj).map_err(|e| PredError::Internal(e.to_string()))?;
    Ok(metrics)
}

impl RegressionRun {
    /// A point prediction as written: the level's name for ordinal targets, the number otherwise.
    pub fn format_point(&self, v: f64) -> String {
        match self.target_type {
            TargetType::Ordinal => self.levels.get(v as usize).cloned().unwrap_or_default(),
            TargetType::Continuous => format!("{v:.6}"),
        }
    }
}

/// Reads `regression.json` of a run.
pub fn read_run(run_dir: &Path) -> Result<RegressionRun, PredError> {
    let path = run_dir.join("regression.json");
    let text = std::fs::read(&path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))
}

/// Applies a run's models to every row of another table with the same feature columns: CSV text with `row`, `model`,
/// `prediction`, then the quantiles or level probabilities the model gives.
pub fn predict<B: Backend>(run_dir: &Path, table: &Path, device: &B::Device) -> Result<String, PredError> {
    let run = read_run(run_dir)?;
    let raw = read_csv(table)?;
    let idx: Vec<usize> = (0..raw.rows.len()).collect();
    let x = run.encode(&raw, &idx)?;
    let mut out = String::from("row,model,prediction");
    for tau in &run.quantiles {
        let _ = write!(out, ",q{tau}");
    }
    for l in &run.levels {
        let _ = write!(out, ",p({l})");
    }
    out.push('\n');
    for (arch, fitted) in &run.models {
        let net = load_net::<B>(run_dir, *arch, fitted, device)?;
        let pred = run.predictions(fitted, raw_outputs(fitted, &x, net.as_ref(), device)?);
        for i in 0..x.len() {
            let _ = write!(out, "{},{},{}", i + 2, arch.name(), run.format_point(pred.point[i]));
            if !run.quantiles.is_empty() {
                for j in 0..run.quantiles.len() {
                    match pred.quantiles.get(j) {
                        Some(q) => write!(out, ",{:.6}", q[i]),
                        None => write!(out, ","),
                    }
                    .map_err(|e| PredError::Internal(e.to_string()))?;
                }
            }
            for l in 0..run.levels.len() {
                match pred.levels.get(i) {
                    Some(p) => write!(out, ",{:.6}", p[l]),
                    None => write!(out, ","),
                }
                .map_err(|e| PredError::Internal(e.to_string()))?;
            }
            out.push('\n');
        }
    }
    Ok(out)
}
