//! Evaluation of a classification run: its best model on the test split (by default) or another split, with
//! bootstrap intervals over patients when the source names them (over images otherwise) → `metrics.json`
//! (`metrics-val.json`, `metrics-train.json` for the other splits).
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vesalius_data::dataset::ClassificationDataset;
use vesalius_data::source::Split;
use vesalius_eval::bootstrap::Clusters;
use vesalius_eval::classification::{ClassificationReport, evaluate_clustered};
use vesalius_nets::Classifier;

use crate::CadxError;
use crate::infer::{predict_dataset, targets_of};
use crate::recipe::Recipe;
use crate::run::{ClassificationRun, RunDir, RunInfo, write_json};
use crate::train::prepare_data;

/// Content of `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    /// Which split was evaluated.
    pub split: String,
    /// Epoch of the evaluated model.
    pub best_epoch: usize,
    /// Class names, in confusion-matrix order.
    pub classes: Vec<String>,
    /// The metrics.
    #[serde(flatten)]
    pub report: ClassificationReport,
}

/// Metrics with bootstrap intervals of `model` on `data` (resampling patients whenever the data name them).
pub fn evaluate_dataset<B: Backend>(
    model: &Classifier<B>,
    data: &ClassificationDataset,
    info: &RunInfo,
    bootstrap: usize,
    seed: u64,
    device: &B::Device,
) -> Result<ClassificationReport, CadxError> {
    let (scores, _) = predict_dataset(model, data, info.multi_label, 256, device);
    let clusters = Clusters::from_ids(data.patients());
    evaluate_clustered(&scores, &targets_of(data), &clusters, bootstrap, seed).map_err(|e| CadxError::Input(format!("evaluation: {e}")))
}

/// The file a split's evaluation is written to: `metrics.json` for the test split, `metrics-<split>.json` else.
pub fn metrics_file(split: Split) -> String {
    if split == Split::Test { "metrics.json".into() } else { format!("metrics-{}.json", split.name()) }
}

/// Re-evaluates a run's best model on `split` and writes the metrics file.
pub fn evaluate_run<B: Backend>(run: &RunDir, split: Split, device: &B::Device) -> Result<MetricsFile, CadxError> {
    if !run.recipe().exists() {
        return Err(CadxError::Input(format!("{}: not a run directory (no recipe.toml)", run.root().display())));
    }
    let recipe = Recipe::from_file(&run.recipe())?;
    let info = run.read_classifier_info()?;
    let data = prepare_data(&recipe)?;
    let dataset = match split {
        Split::Train => &data.train,
        Split::Val => &data.val,
        Split::Test => &data.test,
    };
    let best_epoch = vesalius_train::engine::read_state(run)?.and_then(|s| s.best_epoch).unwrap_or(0);
    let model = run.load_best::<B>(&info, device)?;
    let report = evaluate_dataset(&model, dataset, &info, recipe.eval.bootstrap, recipe.seed, device)?;
    let file = MetricsFile { split: split.name().into(), best_epoch, classes: info.classes.clone(), report };
    write_json(&file, &run.file(&metrics_file(split)))?;
    Ok(file)
}
