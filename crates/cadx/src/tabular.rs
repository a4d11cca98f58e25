//! Classic baselines and a small network on feature tables: logistic regression, linear and RBF support vector
//! machines, k-nearest neighbours and random forests from smartcore, and a multi-layer perceptron on burn, trained
//! side by side on one patient-level split and scored on the same test patients with the same bootstrap.
//!
//! A table recipe is a classification recipe whose `[data]` names a CSV `table` (radiomics output, clinical
//! variables, embeddings of a network), the `label` column and the `patient` column:
//!
//! ```
//! use vesalius_cadx::tabular::{TableRecipe, ClassicArch};
//! let r = TableRecipe::from_toml(r#"
//!     name = "lidc-malignancy"
//!     [data]
//!     table = "malignancy.csv"
//!     label = "malignant"
//!     patient = "patient_id"
//!     exclude = ["nodule_id"]
//!     [model]
//!     arch = ["logistic", "svm-rbf", "random-forest"]
//! "#, std::path::Path::new(".")).unwrap();
//! assert_eq!(r.model.arch, vec![ClassicArch::Logistic, ClassicArch::SvmRbf, ClassicArch::RandomForest]);
//! assert_eq!(r.split.test, 0.15);
//! ```
//!
//! Patients are shuffled (ChaCha8, the recipe's seed) and cut into train, validation and test; the feature
//! encoding (categorical columns dummy-coded) and the standardisation are fitted on the training rows only;
//! `class_weight = "balanced"` oversamples the rarer classes of the training rows (seeded) so that every class
//! weighs the same; SVM decision values become probabilities by Platt scaling fitted on the validation patients;
//! the MLP keeps the epoch with the best validation loss. The test patients are read only to score the fitted
//! models. The run folder holds `recipe.toml`, `tabular.json` (classes, encoding, standardisation, fitted
//! models), `mlp.mpk`, `splits.csv` (row, patient, split), `predictions-test.csv` and `metrics.json` (every
//! model's report with 95 % bootstrap intervals over test patients).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};
use smartcore::metrics::distance::euclidian::Euclidian;
use smartcore::neighbors::knn_classifier::{KNNClassifier, KNNClassifierParameters};
use smartcore::svm::Kernels;
use smartcore::svm::svc::{SVC, SVCParameters};
use vesalius_data::split::SplitFractions;
use vesalius_data::table::{Encoding, RawTable, Standardise, read_csv};
use vesalius_eval::bootstrap::Clusters;
use vesalius_eval::classification::{ClassificationReport, Targets, evaluate_clustered};
use vesalius_nets::{Mlp, MlpConfig};

use crate::CadxError;

/// A classic model or the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassicArch {
    /// L2-penalised logistic regression (multinomial for more than two classes).
    Logistic,
    /// Support vector machine with a linear kernel (two classes).
    SvmLinear,
    /// Support vector machine with a Gaussian (RBF) kernel (two classes).
    SvmRbf,
    /// k-nearest neighbours, Euclidean, uniform weights; probabilities are neighbour fractions.
    Knn,
    /// Random forest of Gini trees on bootstrap samples; probabilities are the trees' vote fractions.
    RandomForest,
    /// Multi-layer perceptron (ReLU, dropout), full-batch Adam.
    Mlp,
}

impl ClassicArch {
    /// The recipe name.
    pub fn name(self) -> &'static str {
        match self {
            ClassicArch::Logistic => "logistic",
            ClassicArch::SvmLinear => "svm-linear",
            ClassicArch::SvmRbf => "svm-rbf",
            ClassicArch::Knn => "knn",
            ClassicArch::RandomForest => "random-forest",
            ClassicArch::Mlp => "mlp",
        }
    }
}

const ALL: [ClassicArch; 6] =
    [ClassicArch::Logistic, ClassicArch::SvmLinear, ClassicArch::SvmRbf, ClassicArch::Knn, ClassicArch::RandomForest, ClassicArch::Mlp];

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ClassicArch>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let names = match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    };
    names
        .iter()
        .map(|n| {
            ALL.iter().copied().find(|a| a.name() == n).ok_or_else(|| {
                let known: Vec<&str> = ALL.iter().map(|a| a.name()).collect();
                serde::de::Error::custom(format!("unknown model {n:?} (known: {})", known.join(", ")))
            })
        })
        .collect()
}

/// The `[data]` table of a table recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableData {
    /// The CSV file (relative to the recipe).
    pub table: PathBuf,
    /// The class column (numbers or text; classes sorted, numerically when all are numbers).
    pub label: String,
    /// The patient column: rows of one patient share a split and a bootstrap draw. Default: each row its own.
    #[serde(default)]
    pub patient: Option<String>,
    /// Feature columns; empty: every column but the label, the patient and `exclude`.
    #[serde(default)]
    pub features: Vec<String>,
    /// Columns that are not features (identifiers).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The `[model]` table: which models, and their settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableModels {
    /// One model or a list, trained side by side.
    #[serde(deserialize_with = "one_or_many")]
    pub arch: Vec<ClassicArch>,
    /// SVM: the soft-margin penalty C.
    #[serde(default = "one")]
    pub c: f64,
    /// RBF SVM: γ of exp(−γ‖x − y‖²); default 1 / number of features (scikit-learn's `"scale"` on standardised data).
    #[serde(default)]
    pub gamma: Option<f64>,
    /// SVM: optimiser passes over the data.
    #[serde(default = "two")]
    pub svm_epochs: usize,
    /// Logistic regression: the L2 penalty α.
    #[serde(default)]
    pub alpha: f64,
    /// k-NN: neighbours.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Random forest: trees.
    #[serde(default = "default_trees")]
    pub trees: usize,
    /// Random forest: maximum depth (default: unlimited).
    #[serde(default)]
    pub max_depth: Option<u16>,
    /// Random forest: smallest leaf.
    #[serde(default = "one_usize")]
    pub min_samples_leaf: usize,
    /// MLP: hidden widths.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// MLP: dropout after each hidden layer.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// MLP: full-batch Adam steps.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// MLP: learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// MLP: L2 weight decay.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
}

fn one() -> f64 {
    1.0
}
fn two() -> usize {
    2
}
fn one_usize() -> usize {
    1
}
fn default_k() -> usize {
    15
}
fn default_trees() -> usize {
    200
}
fn default_hidden() -> Vec<usize> {
    vec![32, 16]
}
fn default_dropout() -> f64 {
    0.1
}
fn default_epochs() -> usize {
    300
}
fn default_lr() -> f64 {
    0.01
}
fn default_wd() -> f64 {
    1e-4
}

/// Class weighting of the training rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    /// Rows as they are.
    #[default]
    None,
    /// Rarer classes oversampled (seeded) to the size of the largest.
    Balanced,
}

/// The `[train]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableTrain {
    /// Class weighting.
    #[serde(default)]
    pub class_weight: ClassWeight,
}

/// The `[eval]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEval {
    /// Bootstrap resamples of test patients.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
}

fn default_bootstrap() -> usize {
    1000
}

impl Default for TableEval {
    fn default() -> Self {
        Self { bootstrap: default_bootstrap() }
    }
}

/// A classification recipe on a feature table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRecipe {
    /// `"classification"` when present.
    #[serde(default)]
    pub task: Option<String>,
    /// Name shown in reports.
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed of the split, the oversampling, the forests, the SVM optimiser, the MLP and the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// The table.
    pub data: TableData,
    /// Patient shares for validation and test.
    #[serde(default)]
    pub split: SplitFractions,
    /// The models.
    pub model: TableModels,
    /// Training options.
    #[serde(default)]
    pub train: TableTrain,
    /// Evaluation options.
    #[serde(default)]
    pub eval: TableEval,
}

fn default_name() -> String {
    "table".into()
}

impl TableRecipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, CadxError> {
        let mut r: Self = toml::from_str(text).map_err(|e| CadxError::Input(format!("table recipe: {}", e.message())))?;
        if r.data.table.is_relative() {
            r.data.table = base.join(&r.data.table);
        }
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, CadxError> {
        let text = std::fs::read_to_string(path).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| CadxError::Input(format!("{}: {e}", path.display())))
    }

    /// Whether a recipe's text is a table recipe (its `[data]` has a `table`).
    pub fn is_table_recipe(text: &str) -> bool {
        toml::from_str::<toml::Table>(text).ok().and_then(|t| t.get("data").and_then(|d| d.get("table")).map(|_| ())).is_some()
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), CadxError> {
        let bad = |m: String| Err(CadxError::Input(m));
        if let Some(t) = &self.task
            && t != "classification"
        {
            return bad(format!("a table recipe is a classification recipe, not task = {t:?}"));
        }
        let m = &self.model;
        if m.arch.is_empty() {
            return bad("[model] arch names no model".into());
        }
        if !(m.c > 0.0 && m.c.is_finite()) || m.gamma.is_some_and(|g| !(g > 0.0 && g.is_finite())) || !(m.alpha >= 0.0) {
            return bad("[model] c and gamma must be positive, alpha non-negative".into());
        }
        if m.k == 0 || m.trees == 0 || m.trees > u16::MAX as usize || m.min_samples_leaf == 0 || m.svm_epochs == 0 {
            return bad("[model] k, trees (≤ 65535), min_samples_leaf and svm_epochs must be positive".into());
        }
        if m.hidden.contains(&0) || !(0.0..1.0).contains(&m.dropout) || m.epochs == 0 || !(m.lr > 0.0) || !(m.weight_decay >= 0.0) {
            return bad("[model] MLP settings out of range (hidden > 0, 0 ≤ dropout < 1, epochs > 0, lr > 0)".into());
        }
        let s = self.split;
        if !(s.val > 0.0 && s.test > 0.0 && s.val + s.test < 0.9) {
            return bad(format!("[split] val and test must be positive with val + test < 0.9, got {} and {}", s.val, s.test));
        }
        if self.eval.bootstrap == 0 || self.eval.bootstrap > 100_000 {
            return bad("[eval] bootstrap must be in 1..=100000".into());
        }
        Ok(())
    }
}

/// A table read for training: encoded rows, class indices and patient ids.
#[derive(Clone, Debug)]
pub struct Rows {
    /// The source table.
    pub raw: RawTable,
    /// Class names, index order.
    pub classes: Vec<String>,
    /// Class index per row.
    pub y: Vec<usize>,
    /// Patient per row.
    pub patient: Vec<String>,
    /// Feature columns.
    pub features: Vec<String>,
}

/// Reads the table and resolves labels, patients and feature columns.
pub fn read_rows(data: &TableData) -> Result<Rows, CadxError> {
    let raw = read_csv(&data.table)?;
    let lc = raw.column(&data.label)?;
    let pc = data.patient.as_deref().map(|p| raw.column(p)).transpose()?;
    if let Some(i) = raw.rows.iter().position(|r| matches!(r[lc].trim(), "" | "NA")) {
        return Err(CadxError::Input(format!("{}: row {} has no {}", raw.source, i + 2, data.label)));
    }
    let classes = vesalius_data::table::sorted_levels(raw.rows.iter().map(|r| r[lc].as_str()));
    if classes.len() < 2 || classes.len() > 1000 {
        return Err(CadxError::Input(format!("{}: column {} has {} classes (2 to 1000 needed)", raw.source, data.label, classes.len())));
    }
    let y: Vec<usize> = raw.rows.iter().map(|r| classes.iter().position(|c| *c == r[lc].trim()).unwrap_or(0)).collect();
    let patient: Vec<String> =
        raw.rows.iter().enumerate().map(|(i, r)| pc.map_or_else(|| format!("row{}", i + 2), |c| r[c].trim().to_string())).collect();
    let listed = (!data.features.is_empty()).then_some(data.features.as_slice());
    let reserved: Vec<&str> = std::iter::once(data.label.as_str()).chain(data.patient.as_deref()).collect();
    let features = vesalius_data::table::feature_columns(&raw, listed, &reserved, &data.exclude)?;
    Ok(Rows { raw, classes, y, patient, features })
}

/// Patient-level split: indices of train, validation and test rows.
pub fn split_rows(patient: &[String], fractions: SplitFractions, seed: u64) -> [Vec<usize>; 3] {
    let mut ids: Vec<&String> = patient.iter().collect();
    ids.sort();
    ids.dedup();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = ids.len();
    let n_test = ((n as f64 * fractions.test).round() as usize).clamp(1, n.saturating_sub(2).max(1));
    let n_val = ((n as f64 * fractions.val).round() as usize).clamp(1, n.saturating_sub(n_test + 1).max(1));
    let which: BTreeMap<&String, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                *p,
                if i < n_test {
                    2
                } else if i < n_test + n_val {
                    1
                } else {
                    0
                },
            )
        })
        .collect();
    let mut out: [Vec<usize>; 3] = Default::default();
    for (i, p) in patient.iter().enumerate() {
        out[which[p]].push(i);
    }
    out
}

/// Oversamples the rarer classes of `idx` (seeded) so that every class has as many rows as the largest.
pub fn balance(idx: &[usize], y: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
    for &i in idx {
        by_class[y[i]].push(i);
    }
    let most = by_class.iter().map(Vec::len).max().unwrap_or(0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xBA1A);
    let mut out = idx.to_vec();
    for rows in by_class.iter().filter(|r| !r.is_empty()) {
        for _ in rows.len()..most {
            out.push(*rows.choose(&mut rng).unwrap_or(&rows[0]));
        }
    }
    out
}

/// A fitted model, in a form stored in the run and applied without refitting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fitted {
    /// Logistic regression: one weight row and intercept per class score (one row for two classes).
    Logistic {
        /// Weights.
        w: Vec<Vec<f64>>,
        /// Intercepts.
        b: Vec<f64>,
    },
    /// A support vector machine: decision `b + Σ wᵢ K(svᵢ, x)` mapped by Platt's `σ(A·d + B)`.
    Svm {
        /// RBF γ (`None`: linear kernel).
        gamma: Option<f64>,
        /// Support vectors.
        sv: Vec<Vec<f64>>,
        /// Their weights.
        w: Vec<f64>,
        /// Bias.
        b: f64,
        /// Platt scaling (A, B) fitted on the validation patients.
        platt: (f64, f64),
    },
    /// k-NN as smartcore serialises it.
    Knn {
        /// The classifier.
        model: serde_json::Value,
    },
    /// A forest of single-tree smartcore forests (each a bootstrap sample and random feature subsets).
    Forest {
        /// The trees.
        trees: Vec<serde_json::Value>,
    },
    /// The MLP; its weights are in `mlp.mpk` of the run.
    Mlp {
        /// Inputs.
        inputs: usize,
        /// Hidden widths.
        hidden: Vec<usize>,
        /// The epoch kept.
        epoch: usize,
    },
}

type Knn = KNNClassifier<f64, i32, DenseMatrix<f64>, Vec<i32>, Euclidian<f64>>;
type Forest = RandomForestClassifier<f64, i32, DenseMatrix<f64>, Vec<i32>>;

fn matrix(rows: &[Vec<f64>]) -> Result<DenseMatrix<f64>, CadxError> {
    DenseMatrix::from_2d_vec(&rows.to_vec()).map_err(|e| CadxError::Input(format!("feature matrix: {e}")))
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn fit_err(arch: ClassicArch) -> impl Fn(smartcore::error::Failed) -> CadxError {
    move |e| CadxError::Input(format!("{}: fitting failed: {e}", arch.name()))
}

/// Platt scaling: (A, B) minimising the log-loss of σ(A·d + B) with Platt's smoothed targets (Newton's method).
pub fn platt(d: &[f64], positive: &[bool]) -> (f64, f64) {
    let np = positive.iter().filter(|&&p| p).count() as f64;
    let nn = positive.len() as f64 - np;
    let (tp, tn) = ((np + 1.0) / (np + 2.0), 1.0 / (nn + 2.0));
    let t: Vec<f64> = positive.iter().map(|&p| if p { tp } else { tn }).collect();
    let (mut a, mut b) = (1.0, 0.0);
    for _ in 0..100 {
        let (mut g1, mut g2, mut h11, mut h22, mut h12) = (0.0, 0.0, 1e-12, 1e-12, 0.0);
        for (di, ti) in d.iter().zip(&t) {
            let p = sigmoid(a * di + b);
            let r = p - ti;
            let w = p * (1.0 - p);
            g1 += r * di;
            g2 += r;
            h11 += w * di * di;
            h22 += w;
            h12 += w * di;
        }
        let det = h11 * h22 - h12 * h12;
        if det.abs() < 1e-18 {
            break;
        }
        let (da, db) = ((h22 * g1 - h12 * g2) / det, (h11 * g2 - h12 * g1) / det);
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

impl Fitted {
    /// Class probabilities of standardised rows (`mlp`: the network, for the MLP).
    pub fn scores<B: Backend>(
        &self,
        x: &[Vec<f64>],
        k: usize,
        mlp: Option<&Mlp<B>>,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>, CadxError> {
        if x.is_empty() {
            return Ok(Vec::new());
        }
        let to_f32 = |v: Vec<Vec<f64>>| v.into_iter().map(|r| r.into_iter().map(|p| p as f32).collect()).collect();
        Ok(match self {
            Fitted::Logistic { w, b } => to_f32(
                x.iter()
                    .map(|r| {
                        let z: Vec<f64> = w.iter().zip(b).map(|(wi, bi)| bi + wi.iter().zip(r).map(|(a, c)| a * c).sum::<f64>()).collect();
                        if z.len() == 1 {
                            let p = sigmoid(z[0]);
                            vec![1.0 - p, p]
                        } else {
                            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                            let s: f64 = e.iter().sum();
                            e.iter().map(|v| v / s).collect()
                        }
                    })
                    .collect(),
            ),
            Fitted::Svm { gamma, sv, w, b, platt } => to_f32(
                x.iter()
                    .map(|r| {
                        let d = svm_decision(*gamma, sv, w, *b, r);
                        let p = sigmoid(platt.0 * d + platt.1);
                        vec![1.0 - p, p]
                    })
                    .collect(),
            ),
            Fitted::Knn { model } => {
                let knn: Knn = serde_json::from_value(model.clone()).map_err(|e| CadxError::Internal(format!("stored k-NN: {e}")))?;
                let p = knn.predict_proba(&matrix(x)?).map_err(|e| CadxError::Internal(format!("k-NN: {e}")))?;
                to_f32(p.into_iter().map(|row| pad(row, k)).collect())
            }
            Fitted::Forest { trees } => {
                let m = matrix(x)?;
                let mut votes = vec![vec![0f64; k]; x.len()];
                for t in trees {
                    let tree: Forest = serde_json::from_value(t.clone()).map_err(|e| CadxError::Internal(format!("stored tree: {e}")))?;
                    let pred = tree.predict(&m).map_err(|e| CadxError::Internal(format!("forest: {e}")))?;
                    for (i, c) in pred.iter().enumerate() {
                        votes[i][(*c).clamp(0, k as i32 - 1) as usize] += 1.0 / trees.len() as f64;
                    }
                }
                to_f32(votes)
            }
            Fitted::Mlp { .. } => {
                let net = mlp.ok_or_else(|| CadxError::Internal("the MLP's weights are missing".into()))?;
                mlp_probabilities(net, x, device)
            }
        })
    }
}

fn pad(mut row: Vec<f64>, k: usize) -> Vec<f64> {
    row.resize(k, 0.0);
    row
}

fn svm_decision(gamma: Option<f64>, sv: &[Vec<f64>], w: &[f64], b: f64, x: &[f64]) -> f64 {
    let mut f = b;
    for (s, wi) in sv.iter().zip(w) {
        let k = match gamma {
            None => s.iter().zip(x).map(|(a, c)| a * c).sum::<f64>(),
            Some(g) => (-g * s.iter().zip(x).map(|(a, c)| (a - c).powi(2)).sum::<f64>()).exp(),
        };
        f += wi * k;
    }
    f
}

fn mlp_network<B: Backend>(inputs: usize, k: usize, m: &TableModels, device: &B::Device) -> Mlp<B> {
    MlpConfig::new(inputs, k).with_hidden(m.hidden.clone()).with_dropout(m.dropout).init(device)
}

fn mlp_probabilities<B: Backend>(net: &Mlp<B>, x: &[Vec<f64>], device: &B::Device) -> Vec<Vec<f32>> {
    let p = x[0].len();
    let flat: Vec<f32> = x.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect();
    let t = Tensor::<B, 4>::from_data(TensorData::new(flat, [x.len(), 1, 1, p]), device);
    let probs = burn::tensor::activation::softmax(net.forward(t), 1);
    let k = probs.dims()[1];
    let v = probs.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    v.chunks(k).map(<[f32]>::to_vec).collect()
}

/// Trains the MLP full-batch with Adam on `train`, keeping the step with the lowest validation cross-entropy.
fn fit_mlp<B: AutodiffBackend>(
    m: &TableModels,
    k: usize,
    train: (&[Vec<f64>], &[usize]),
    val: (&[Vec<f64>], &[usize]),
    seed: u64,
    device: &B::Device,
) -> (Mlp<B::InnerBackend>, usize) {
    B::seed(device, seed);
    let p = train.0[0].len();
    let mut net = mlp_network::<B>(p, k, m, device);
    let mut opt = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(m.weight_decay as f32))).init::<B, Mlp<B>>();
    let x_of = |rows: &[Vec<f64>]| -> Vec<f32> { rows.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect() };
    let x = Tensor::<B, 4>::from_data(TensorData::new(x_of(train.0), [train.0.len(), 1, 1, p]), device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(train.1.iter().map(|&c| c as i64).collect::<Vec<_>>(), [train.1.len()]), device);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let val_ce = |net: &Mlp<B::InnerBackend>| -> f64 {
        let probs = mlp_probabilities(net, val.0, device);
        -probs.iter().zip(val.1).map(|(p, &c)| (p[c].max(1e-7) as f64).ln()).sum::<f64>() / val.1.len().max(1) as f64
    };
    let mut best = (f64::INFINITY, net.valid(), 0);
    for step in 1..=m.epochs {
        let loss = loss_fn.forward(net.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = opt.step(m.lr, net, grads);
        if step % 5 == 0 || step == m.epochs {
            let v = net.valid();
            let ce = val_ce(&v);
            if ce < best.0 {
                best = (ce, v, step);
            }
        }
    }
    (best.1, best.2)
}

/// Fits one model on (already balanced, standardised) training rows; `val` serves Platt scaling.
pub fn fit<B: AutodiffBackend>(
    arch: ClassicArch,
    m: &TableModels,
    k: usize,
    train: (&[Vec<f64>], &[usize]),
    val: (&[Vec<f64>], &[usize]),
    seed: u64,
    device: &B::Device,
) -> Result<(Fitted, Option<Mlp<B::InnerBackend>>), CadxError> {
    let x = matrix(train.0)?;
    let y: Vec<i32> = train.1.iter().map(|&c| c as i32).collect();
    let p = train.0[0].len();
    if matches!(arch, ClassicArch::SvmLinear | ClassicArch::SvmRbf) && k != 2 {
        return Err(CadxError::Input(format!("{} separates two classes; the table has {k}", arch.name())));
    }
    let fitted = match arch {
        ClassicArch::Logistic => {
            let params = LogisticRegressionParameters::default().with_alpha(m.alpha);
            let lr = LogisticRegression::fit(&x, &y, params).map_err(fit_err(arch))?;
            let (coef, icpt) = (lr.coefficients(), lr.intercept());
            let (rows, cols) = coef.shape();
            let w: Vec<Vec<f64>> = (0..rows).map(|i| (0..cols).map(|j| *coef.get((i, j))).collect()).collect();
            let b: Vec<f64> = (0..rows).map(|i| *icpt.get((i, 0))).collect();
            Fitted::Logistic { w, b }
        }
        ClassicArch::SvmLinear | ClassicArch::SvmRbf => {
            let gamma = (arch == ClassicArch::SvmRbf).then(|| m.gamma.unwrap_or(1.0 / p as f64));
            let kernel = match gamma {
                Some(g) => Kernels::rbf().with_gamma(g),
                None => Kernels::linear(),
            };
            let ys: Vec<i32> = y.iter().map(|&c| if c == 1 { 1 } else { -1 }).collect();
            let params = SVCParameters::default().with_c(m.c).with_epoch(m.svm_epochs).with_kernel(kernel).with_seed(Some(seed));
            let svc = SVC::fit(&x, &ys, &params).map_err(fit_err(arch))?;
            let v = serde_json::to_value(&svc).map_err(|e| CadxError::Internal(format!("SVM: {e}")))?;
            let sv: Vec<Vec<f64>> = serde_json::from_value(v["instances"].clone()).map_err(|e| CadxError::Internal(format!("SVM: {e}")))?;
            let w: Vec<f64> = serde_json::from_value(v["w"].clone()).map_err(|e| CadxError::Internal(format!("SVM: {e}")))?;
            let b = v["b"].as_f64().unwrap_or(0.0);
            let dv: Vec<f64> = val.0.iter().map(|r| svm_decision(gamma, &sv, &w, b, r)).collect();
            let pos: Vec<bool> = val.1.iter().map(|&c| c == 1).collect();
            Fitted::Svm { gamma, sv, w, b, platt: platt(&dv, &pos) }
        }
        ClassicArch::Knn => {
            let params = KNNClassifierParameters::default().with_k(m.k.min(train.0.len()));
            let knn = KNNClassifier::fit(&x, &y, params).map_err(fit_err(arch))?;
            Fitted::Knn { model: serde_json::to_value(&knn).map_err(|e| CadxError::Internal(format!("k-NN: {e}")))? }
        }
        ClassicArch::RandomForest => {
            let mut trees = Vec::with_capacity(m.trees);
            for t in 0..m.trees {
                let params = RandomForestClassifierParameters {
                    n_trees: 1,
                    max_depth: m.max_depth,
                    min_samples_leaf: m.min_samples_leaf,
                    seed: vesalius_io::mix(seed ^ t as u64),
                    ..Default::default()
                };
                let f: Forest = RandomForestClassifier::fit(&x, &y, params).map_err(fit_err(arch))?;
                trees.push(serde_json::to_value(&f).map_err(|e| CadxError::Internal(format!("forest: {e}")))?);
            }
            Fitted::Forest { trees }
        }
        ClassicArch::Mlp => {
            let (net, epoch) = fit_mlp::<B>(m, k, train, val, seed, device);
            return Ok((Fitted::Mlp { inputs: p, hidden: m.hidden.clone(), epoch }, Some(net)));
        }
    };
    Ok((fitted, None))
}

/// What a table run stores in `tabular.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableRun {
    /// Class names.
    pub classes: Vec<String>,
    /// Feature encoding fitted on the training rows.
    pub encoding: Encoding,
    /// Standardisation fitted on the training rows.
    pub standardise: Standardise,
    /// The fitted models, in recipe order.
    pub models: Vec<(ClassicArch, Fitted)>,
    /// Patients and rows per split.
    pub counts: BTreeMap<String, (usize, usize)>,
}

/// Test metrics of every model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableMetrics {
    /// The set scored.
    pub set: String,
    /// Patients in it.
    pub n_patients: usize,
    /// Rows in it.
    pub n_rows: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// One report per model.
    pub models: BTreeMap<String, ClassificationReport>,
}

/// Whether `dir` holds a table run.
pub fn is_run(dir: &Path) -> bool {
    dir.join("tabular.json").is_file()
}

fn encode(enc: &Encoding, std: &Standardise, raw: &RawTable, idx: &[usize]) -> Result<Vec<Vec<f64>>, CadxError> {
    idx.iter().map(|&i| Ok(std.apply(&enc.encode_row(raw, i)?))).collect()
}

/// Trains every model of the recipe into `out` and scores them on the test patients.
pub fn train<B: AutodiffBackend>(recipe: &TableRecipe, out: &Path, device: &B::Device) -> Result<TableMetrics, CadxError> {
    let rows = read_rows(&recipe.data)?;
    let k = rows.classes.len();
    let [tr, va, te] = split_rows(&rows.patient, recipe.split, recipe.seed);
    for (name, idx) in [("train", &tr), ("validation", &va), ("test", &te)] {
        let mut seen = vec![false; k];
        idx.iter().for_each(|&i| seen[rows.y[i]] = true);
        if seen.iter().any(|s| !s) {
            return Err(CadxError::Input(format!(
                "{}: the {name} patients lack a class ({} rows); use more data or larger split shares",
                rows.raw.source,
                idx.len()
            )));
        }
    }
    let train_table = RawTable {
        source: rows.raw.source.clone(),
        header: rows.raw.header.clone(),
        rows: tr.iter().map(|&i| rows.raw.rows[i].clone()).collect(),
    };
    let encoding = Encoding::fit(&train_table, &rows.features)?;
    let enc_train: Vec<Vec<f64>> = tr.iter().map(|&i| encoding.encode_row(&rows.raw, i)).collect::<Result<_, _>>()?;
    let standardise = Standardise::fit(&enc_train);
    let fit_idx = match recipe.train.class_weight {
        ClassWeight::Balanced => balance(&tr, &rows.y, k, recipe.seed),
        ClassWeight::None => tr.clone(),
    };
    let x_fit = encode(&encoding, &standardise, &rows.raw, &fit_idx)?;
    let y_fit: Vec<usize> = fit_idx.iter().map(|&i| rows.y[i]).collect();
    let x_val = encode(&encoding, &standardise, &rows.raw, &va)?;
    let y_val: Vec<usize> = va.iter().map(|&i| rows.y[i]).collect();
    let x_test = encode(&encoding, &standardise, &rows.raw, &te)?;
    let y_test: Vec<usize> = te.iter().map(|&i| rows.y[i]).collect();

    std::fs::create_dir_all(out).map_err(|e| CadxError::Internal(format!("{}: {e}", out.display())))?;
    let text = toml::to_string(recipe).map_err(|e| CadxError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&out.join("recipe.toml"), text.as_bytes())?;
    let ids: Vec<Option<&str>> = te.iter().map(|&i| Some(rows.patient[i].as_str())).collect();
    let clusters = Clusters::from_ids(&ids);
    let mut models = Vec::new();
    let mut reports = BTreeMap::new();
    let mut test_scores: Vec<(ClassicArch, Vec<Vec<f32>>)> = Vec::new();
    for &arch in &recipe.model.arch {
        let seed = vesalius_io::mix(recipe.seed ^ arch as u64);
        let (fitted, net) = fit::<B>(arch, &recipe.model, k, (&x_fit, &y_fit), (&x_val, &y_val), seed, device)?;
        if let Some(net) = &net {
            let bytes = vesalius_nets::record::to_bytes::<B::InnerBackend, _>(net.clone().into_record()).map_err(CadxError::Internal)?;
            vesalius_io::write_atomic(&out.join("mlp.mpk"), &bytes)?;
        }
        let scores = fitted.scores::<B::InnerBackend>(&x_test, k, net.as_ref(), device)?;
        let report = evaluate_clustered(&scores, &Targets::Single(y_test.clone()), &clusters, recipe.eval.bootstrap, recipe.seed)
            .map_err(|e| CadxError::Internal(e.to_string()))?;
        reports.insert(arch.name().to_string(), report);
        test_scores.push((arch, scores));
        models.push((arch, fitted));
    }
    let count = |idx: &[usize]| {
        let mut p: Vec<&String> = idx.iter().map(|&i| &rows.patient[i]).collect();
        p.sort();
        p.dedup();
        (p.len(), idx.len())
    };
    let counts =
        BTreeMap::from([("train".to_string(), count(&tr)), ("validation".to_string(), count(&va)), ("test".to_string(), count(&te))]);
    let run = TableRun { classes: rows.classes.clone(), encoding, standardise, models, counts };
    let json = serde_json::to_vec(&run).map_err(|e| CadxError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&out.join("tabular.json"), &json)?;
    // per-row test predictions: one probability column per model and class beyond the first
    let mut csv = String::from("row,patient,label");
    for (arch, _) in &test_scores {
        for c in &rows.classes[1..] {
            csv.push_str(&format!(",{}:p({c})", arch.name()));
        }
    }
    csv.push('\n');
    for (j, &i) in te.iter().enumerate() {
        csv.push_str(&format!("{},{},{}", i + 2, rows.patient[i], rows.classes[rows.y[i]]));
        for (_, s) in &test_scores {
            for c in 1..k {
                csv.push_str(&format!(",{:.6}", s[j][c]));
            }
        }
        csv.push('\n');
    }
    vesalius_io::write_atomic(&out.join("predictions-test.csv"), csv.as_bytes())?;
    let mut splits = String::from("row,patient,split\n");
    for (name, idx) in [("train", &tr), ("validation", &va), ("test", &te)] {
        for &i in idx.iter() {
            splits.push_str(&format!("{},{},{name}\n", i + 2, rows.patient[i]));
        }
    }
    vesalius_io::write_atomic(&out.join("splits.csv"), splits.as_bytes())?;
    let metrics = TableMetrics { set: "test".into(), n_patients: count(&te).0, n_rows: te.len(), classes: rows.classes, models: reports };
    let mj = serde_json::to_vec_pretty(&metrics).map_err(|e| CadxError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&out.join("metrics.json"), &mj)?;
    Ok(metrics)
}

/// Applies a table run's models to the rows of another table (the same feature columns): one row of class
/// probabilities per input row and model, as CSV text (`row,model,p(class)…`).
pub fn predict<B: Backend>(run: &Path, table: &Path, device: &B::Device) -> Result<String, CadxError> {
    let text = std::fs::read(run.join("tabular.json")).map_err(|e| CadxError::Input(format!("{}: {e}", run.display())))?;
    let r: TableRun = serde_json::from_slice(&text).map_err(|e| CadxError::Input(format!("{}/tabular.json: {e}", run.display())))?;
    let raw = read_csv(table)?;
    let idx: Vec<usize> = (0..raw.rows.len()).collect();
    let x = encode(&r.encoding, &r.standardise, &raw, &idx)?;
    let k = r.classes.len();
    let mut out = String::from("row,model");
    for c in &r.classes {
        out.push_str(&format!(",p({c})"));
    }
    out.push('\n');
    for (arch, fitted) in &r.models {
        let net = match fitted {
            Fitted::Mlp { inputs, hidden, .. } => {
                let bytes = std::fs::read(run.join("mlp.mpk")).map_err(|e| CadxError::Input(format!("{}/mlp.mpk: {e}", run.display())))?;
                let spec = TableModels { hidden: hidden.clone(), ..TableRecipe::from_file(&run.join("recipe.toml"))?.model };
                let template = mlp_network::<B>(*inputs, k, &spec, device);
                let record = vesalius_nets::record::from_bytes::<B, _>(bytes, device).map_err(CadxError::Internal)?;
                Some(template.load_record(record))
            }
            _ => None,
        };
        let s = fitted.scores::<B>(&x, k, net.as_ref(), device)?;
        for (i, p) in s.iter().enumerate() {
            out.push_str(&format!("{},{}", i + 2, arch.name()));
            for v in p {
                out.push_str(&format!(",{v:.6}"));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_scaling_recovers_a_logistic_link() {
        // decision values whose true probability is σ(2d − 1): the fit comes close to (2, −1)
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d: Vec<f64> = (0..4000).map(|i| (i as f64 / 4000.0) * 6.0 - 3.0).collect();
        let pos: Vec<bool> = d.iter().map(|&v| rand::Rng::random::<f64>(&mut rng) < sigmoid(2.0 * v - 1.0)).collect();
        let (a, b) = platt(&d, &pos);
        assert!((a - 2.0).abs() < 0.25 && (b + 1.0).abs() < 0.2, "{a} {b}");
    }

    #[test]
    fn splits_keep_patients_together_and_balance_oversamples() {
        let patient: Vec<String> = (0..100).map(|i| format!("p{}", i / 2)).collect();
        let [tr, va, te] = split_rows(&patient, SplitFractions { val: 0.2, test: 0.2 }, 5);
        assert_eq!(tr.len() + va.len() + te.len(), 100);
        assert_eq!((va.len(), te.len()), (20, 20));
        for (a, b) in [(&tr, &va), (&tr, &te), (&va, &te)] {
            assert!(a.iter().all(|&i| b.iter().all(|&j| patient[i] != patient[j])));
        }
        let y: Vec<usize> = (0..100).map(|i| usize::from(i % 10 == 0)).collect();
        let bal = balance(&tr, &y, 2, 1);
        let ones = bal.iter().filter(|&&i| y[i] == 1).count();
        assert_eq!(ones * 2, bal.len());
    }
}
