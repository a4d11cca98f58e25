//! Computer-aided diagnosis (CADx): training, evaluating and applying image classifiers.
//!
//! A [`Recipe`](recipe::Recipe) names the data source, the network, the optimisation and the evaluation.
//! [`train::train`] runs it into a run directory:
//!
//! ```text
//! RUN/
//!   recipe.toml        the resolved recipe (paths absolute)
//!   run.json           model configuration, class names, task kind
//!   checkpoints/       state.json naming the last complete checkpoint set (epoch-NNNN/: model, optimiser, state)
//!   model.mpk          the best model by the validation metric
//!   log.jsonl          one JSON line per epoch: train/val loss, val metrics, learning rate, time
//!   metrics.json       test metrics of the best model with 95 % bootstrap intervals
//! ```
//!
//! Every file is written atomically (temporary file + rename), so an interrupted run leaves a consistent
//! directory; running the same recipe into it again resumes after the last completed epoch and gives the same
//! result as an uninterrupted run. The test split is only read after training, by the best model.
//!
//! Everything is generic over burn's backends: training needs an
//! [`AutodiffBackend`](burn::tensor::backend::AutodiffBackend), evaluation and prediction any
//! [`Backend`](burn::tensor::backend::Backend).
//!
//! ```
//! use vesalius_cadx::recipe::{Recipe, Schedule};
//!
//! let recipe = Recipe::from_toml(r#"
//!     [data]
//!     kind = "medmnist"
//!     path = "pathmnist.npz"
//!     [model]
//!     arch = "resnet18"
//!     [train]
//!     epochs = 100
//!     batch_size = 128
//!     optimizer = { kind = "adam", lr = 0.001 }
//!     schedule = { kind = "multistep", milestones = [50, 75] }
//! "#).unwrap();
//! assert_eq!(recipe.train.schedule, Schedule::MultiStep { milestones: vec![50, 75], gamma: 0.1 });
//! assert!((recipe.train.schedule.lr(1e-3, 60, 100) - 1e-4).abs() < 1e-12);
//! ```
//!
//! Training it (here without running: it needs the archive):
//!
//! ```no_run
//! use std::path::Path;
//! use vesalius_cadx::{recipe::Recipe, train::{train, TrainOptions}};
//! type B = burn::backend::Autodiff<burn::backend::Flex>;
//!
//! let recipe = Recipe::from_file(Path::new("recipes/mni152-tissue.toml")).unwrap();
//! let outcome = train::<B>(&recipe, Path::new("runs/tissue"), &Default::default(), &TrainOptions::default()).unwrap();
//! println!("test AUC {:.3}", outcome.test.metrics["auc"].value);
//! ```

#[cfg(all(feature = "flex", debug_assertions))]
#[doc(hidden)]
pub mod cpu_instances;
pub mod evaluate;
pub mod explain;
pub mod infer;
pub mod label;
pub mod loss;
pub mod recipe;
pub mod run;
pub mod tabular;
pub mod train;
pub mod volumes;

/// Failures of a CADx run.
#[derive(Debug, thiserror::Error)]
pub enum CadxError {
    /// Bad input: a recipe, data file or run directory that cannot be used. The message names it.
    #[error("{0}")]
    Input(String),
    /// A data file that cannot be read.
    #[error(transparent)]
    Data(#[from] vesalius_data::DataError),
    /// Anything else (a failed write, a corrupt checkpoint).
    #[error("{0}")]
    Internal(String),
}

impl From<vesalius_train::TrainError> for CadxError {
    fn from(e: vesalius_train::TrainError) -> Self {
        match e {
            vesalius_train::TrainError::Input(m) => CadxError::Input(m),
            other => CadxError::Internal(other.to_string()),
        }
    }
}
