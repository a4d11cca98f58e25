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
pub mod segmentation;

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
