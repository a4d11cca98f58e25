//! Evaluation of medical-imaging models on independent data.
//!
//! [`classification`] holds the metrics of CADx tasks (accuracy, balanced accuracy, ROC AUC, sensitivity,
//! specificity, F1, confusion matrix) for binary, multi-class and multi-label problems, computed as MedMNIST and
//! scikit-learn do. [`bootstrap`] turns any per-case metric into a percentile confidence interval by resampling
//! cases with a seeded generator, so a report can say how far to trust its numbers. [`segmentation`] holds
//! the overlap and surface metrics of label maps in millimetres (Dice, IoU, HD95, ASSD, volume difference).
//!
//! ```
//! use vesalius_eval::classification::{evaluate, Targets};
//!
//! // Three cases, two classes: the scores rank every positive above every negative.
//! let scores = vec![vec![0.9, 0.1], vec![0.2, 0.8], vec![0.4, 0.6]];
//! let targets = Targets::Single(vec![0, 1, 1]);
//! let report = evaluate(&scores, &targets, 200, 0).unwrap();
//! assert_eq!(report.metrics["auc"].value, 1.0);
//! assert_eq!(report.metrics["accuracy"].value, 1.0);
//! ```

pub mod bootstrap;
pub mod classification;
pub mod detection;
pub mod regression;
pub mod segmentation;
pub mod survival;

/// Why a metric or report cannot be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// Scores and targets disagree in length or width.
    #[error("{0}")]
    Shape(String),
    /// There are no cases to evaluate.
    #[error("no cases to evaluate")]
    Empty,
}

/// Which cases an evaluation scores. Every task scores the test set by default; the validation set, which selected
/// the model and so flatters it, only when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSet {
    /// Cases never used for training or model selection.
    Test,
    /// The validation cases that selected the model.
    Validation,
}

impl EvalSet {
    /// `"test"` or `"validation"`.
    pub fn name(self) -> &'static str {
        match self {
            EvalSet::Test => "test",
            EvalSet::Validation => "validation",
        }
    }

    /// The run file the evaluation is written to: `metrics.json` (test) or `metrics-val.json` (validation).
    pub fn file(self) -> &'static str {
        match self {
            EvalSet::Test => "metrics.json",
            EvalSet::Validation => "metrics-val.json",
        }
    }

    /// Parses `test`, `val` or `validation`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "test" => Some(EvalSet::Test),
            "val" | "validation" => Some(EvalSet::Validation),
            _ => None,
        }
    }
}
