//! Prediction (CADx): time-to-event, continuous and ordinal targets from tables.
//!
//! * [`cox`] — Cox proportional hazards (Efron or Breslow ties, ridge penalty, Breslow baseline hazard and
//!   survival curves), equal to lifelines and scikit-survival on the Rossi data.
//! * [`deepsurv`] — DeepSurv: a multi-layer perceptron trained on the shared engine with the Cox partial
//!   likelihood, selected by validation C-index.
//! * [`images`] — survival from images (`[data] kind = "images"`: a manifest of image paths with time and event
//!   columns): any CNN of the architectures crate, or a pre-trained stacked auto-encoder's encoder, as the log-risk
//!   network of a Cox model.
//! * [`table`] — a CSV table read into features, times, events and patient ids; string columns dummy-coded.
//! * [`longitudinal`] — a GRU or LSTM over each patient's visits (`arch = "rnn"`), compared at landmark times with a
//!   Cox model on the first visit.
//! * [`regression`] — continuous and ordinal targets (`task = "regression"`): ridge, SVR, k-NN, random forest and
//!   networks trained with MSE, Huber, quantile or cumulative-link (ordinal) losses, scored side by side.
//! * [`response`] — treatment response from a pair of scans (`task = "response"`): any CNN of the architectures
//!   crate on the before and after scans as two channels, trained and tested on real tumours with a known change.
//! * [`recipe`], [`train`], [`evaluate`], [`infer`] — the `task = "survival"` recipe: a patient-level split, the
//!   model fitted on the training patients, scored on the test patients (Harrell's and Uno's C, time-dependent AUC,
//!   integrated Brier score, with bootstrap intervals over patients) and applied to new tables.
//!
//! Conventions: higher risk means an earlier event; times are in the table's units; evaluation times must lie
//! inside the test data's follow-up.
//!
//! ```
//! use vesalius_prediction::cox::{fit, CoxConfig};
//! let x = vec![vec![0.0], vec![1.0], vec![0.0], vec![1.0]];
//! let model = fit(&x, &[4.0, 1.0, 3.0, 2.0], &[true; 4], &CoxConfig::default()).unwrap();
//! assert!(model.coefficients[0] > 0.0); // x = 1 fails first
//! ```
pub mod cox;
pub mod deepsurv;
pub mod evaluate;
pub mod images;
pub mod infer;
pub mod longitudinal;
pub mod recipe;
pub mod regression;
pub mod response;
/// Tables of subjects: the data layer's reader, encoding and standardisation.
pub use vesalius_data::table;
#[cfg(all(feature = "flex", debug_assertions))]
#[doc(hidden)]
pub mod cpu_instances;
pub mod train;

/// Errors of the prediction task.
#[derive(Debug, thiserror::Error)]
pub enum PredError {
    /// Bad input: a table, a recipe, a parameter.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself.
    #[error("{0}")]
    Internal(String),
}

impl From<vesalius_train::TrainError> for PredError {
    fn from(e: vesalius_train::TrainError) -> Self {
        match e {
            vesalius_train::TrainError::Input(m) => PredError::Input(m),
            other => PredError::Internal(other.to_string()),
        }
    }
}

impl From<vesalius_data::DataError> for PredError {
    fn from(e: vesalius_data::DataError) -> Self {
        match e {
            w @ vesalius_data::DataError::Write { .. } => PredError::Internal(w.to_string()),
            other => PredError::Input(other.to_string()),
        }
    }
}
