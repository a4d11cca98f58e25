//! The training loop: epochs of seeded batches, validation, best-model selection, early stopping, checkpoints
//! and resumption, then the test report.
use std::path::Path;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use serde::{Deserialize, Serialize};
use vesalius_data::batch::{epoch_batches, mix, ClassificationBatch, ClassificationBatcher, SeededItem};
use vesalius_data::dataset::ClassificationDataset;
use vesalius_data::source::{self, Samples, SourceConfig, Split};
use vesalius_data::split;
use vesalius_eval::classification::{point_metrics, ClassificationReport};
use vesalius_nets::{Classifier, ClassifierConfig};

use crate::infer::{batch_loss, evaluate_dataset, predict_dataset, targets_of};
use crate::recipe::{ClassWeights, OptimizerConfig, Recipe, Selection, WeightsName};
use crate::run::{load_module, load_record, save_module, save_record, write_json, RunDir, RunInfo};
use crate::CadxError;

/// How to run (not what to train: that is the recipe).
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// No progress bar or per-epoch lines on standard error.
    pub quiet: bool,
    /// Stop after this many completed epochs in total, as an interruption would (the run can be resumed).
    pub stop_after: Option<usize>,
}

/// One line of `log.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Validation balanced accuracy.
    pub val_balanced_accuracy: f64,
    /// Validation ROC AUC (`NaN` written as `null` when undefined).
    pub val_auc: Option<f64>,
    /// Whether this epoch's model is the best so far.
    pub best: bool,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
}

/// Training state saved with each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Best selection score so far (higher is better; the negated loss when selecting by loss).
    pub best_score: Option<f64>,
    /// Epoch (1-based) of the best model.
    pub best_epoch: usize,
    /// Log lines so far.
    pub history: Vec<EpochLog>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Epochs completed.
    pub epochs: usize,
    /// Epoch of the selected model.
    pub best_epoch: usize,
    /// Test metrics of the selected model.
    pub test: ClassificationReport,
    /// Whether the run completed (false when stopped by [`TrainOptions::stop_after`]).
    pub complete: bool,
    /// Samples per split.
    pub split_sizes: std::collections::BTreeMap<String, usize>,
}

/// The data of a recipe, loaded and split at patient level.
pub struct PreparedData {
    /// All samples with their splits.
    pub samples: Samples,
    /// Training split.
    pub train: ClassificationDataset,
    /// Validation split.
    pub val: ClassificationDataset,
    /// Test split.
    pub test: ClassificationDataset,
}

/// Loads the recipe's data, assigns splits and checks that each split has samples.
pub fn prepare_data(recipe: &Recipe) -> Result<PreparedData, CadxError> {
    let fixed_shape = matches!(recipe.data, SourceConfig::Medmnist { .. } | SourceConfig::VolumePatches(_));
    let channels = recipe.model.in_channels.unwrap_or(1);
    let size = match (recipe.model.input_size, fixed_shape) {
        (Some(s), _) => s,
        (None, true) => 0,
        (None, false) => return Err(CadxError::Input("model.input_size is required for file sources".into())),
    };
    let mut samples = source::load(&recipe.data, channels, size)?;
    if fixed_shape {
        if recipe.model.in_channels.is_some_and(|c| c != samples.channels) {
            return Err(CadxError::Input(format!("model.in_channels does not match the data's {} channel(s)", samples.channels)));
        }
        if recipe.model.input_size.is_some_and(|s| s != samples.size) {
            return Err(CadxError::Input(format!("model.input_size does not match the data's {}-pixel images", samples.size)));
        }
    }
    split::assign(&mut samples.samples, recipe.split, recipe.seed)?;
    let train = ClassificationDataset::from_split(&samples, Split::Train);
    let val = ClassificationDataset::from_split(&samples, Split::Val);
    let test = ClassificationDataset::from_split(&samples, Split::Test);
    for (name, d) in [("train", &train), ("val", &val), ("test", &test)] {
        if d.is_empty() {
            return Err(CadxError::Input(format!("the {name} split is empty: add data or change the split fractions")));
        }
    }
    Ok(PreparedData { samples, train, val, test })
}

/// The run information implied by a recipe and its data.
pub fn run_info(recipe: &Recipe, data: &PreparedData) -> RunInfo {
    let s = &data.samples;
    RunInfo {
        model: ClassifierConfig::new(recipe.model.arch, s.channels, s.classes.len(), s.size),
        classes: s.classes.clone(),
        multi_label: s.multi_label,
    }
}

fn class_weights(recipe: &Recipe, train: &ClassificationDataset, classes: usize, multi: bool) -> Result<Option<Vec<f32>>, CadxError> {
    Ok(match &recipe.train.class_weights {
        None | Some(ClassWeights::Named(WeightsName::None)) => None,
        Some(ClassWeights::Given(w)) => {
            if w.len() != classes || w.iter().any(|&x| !(x > 0.0)) {
                return Err(CadxError::Input(format!("train.class_weights needs {classes} positive values")));
            }
            Some(w.iter().map(|&x| x as f32).collect())
        }
        Some(ClassWeights::Named(WeightsName::Balanced)) => {
            let counts = train.class_counts(classes);
            let n = train.len() as f32;
            Some(if multi {
                // Positive weight per label: negatives / positives, as commonly passed to pos_weight.
                counts.iter().map(|&c| if c > 0 { (n - c as f32) / c as f32 } else { 1.0 }).collect()
            } else {
                counts.iter().map(|&c| if c > 0 { n / (classes as f32 * c as f32) } else { 0.0 }).collect()
            })
        }
    })
}

fn score(sel: Selection, log: &EpochLog) -> Option<f64> {
    match sel {
        Selection::Auc => log.val_auc,
        Selection::Accuracy => Some(log.val_accuracy),
        Selection::BalancedAccuracy => Some(log.val_balanced_accuracy),
        Selection::Loss => Some(-log.val_loss),
    }
    .filter(|v| v.is_finite())
}

/// Trains `recipe` into the run directory `out`, resuming from its last checkpoint when it holds one for the same
/// recipe, then evaluates the best model on the test split and writes `metrics.json`.
pub fn train<B: AutodiffBackend>(
    recipe: &Recipe,
    out: &Path,
    device: &B::Device,
    options: &TrainOptions,
) -> Result<TrainOutcome, CadxError> {
    let run = RunDir::new(out);
    let recipe_text = recipe.to_toml();
    if let Ok(existing) = std::fs::read_to_string(run.recipe()) {
        if existing != recipe_text {
            return Err(CadxError::Input(format!(
                "{}: the run directory holds a different recipe; choose another --out",
                out.display()
            )));
        }
    }
    let data = prepare_data(recipe)?;
    let info = run_info(recipe, &data);
    std::fs::create_dir_all(run.checkpoints()).map_err(|e| CadxError::Internal(format!("{}: {e}", out.display())))?;
    vesalius_data::io::write_atomic(&run.recipe(), recipe_text.as_bytes()).map_err(|e| CadxError::Internal(e.to_string()))?;
    write_json(&info, &run.info())?;

    B::seed(device, recipe.seed);
    let model: Classifier<B> = info.model.init(device).map_err(|e| CadxError::Input(format!("model: {e}")))?;
    match &recipe.train.optimizer {
        OptimizerConfig::Adam { weight_decay, .. } => {
            let mut cfg = AdamConfig::new().with_epsilon(1e-8);
            if *weight_decay > 0.0 {
                cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(*weight_decay as f32)));
            }
            run_epochs(recipe, &run, &data, &info, model, cfg.init(), device, options)
        }
        OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
            let mut cfg = SgdConfig::new();
            if *momentum > 0.0 {
                cfg = cfg.with_momentum(Some(MomentumConfig { momentum: *momentum, dampening: 0.0, nesterov: false }));
            }
            if *weight_decay > 0.0 {
                cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(*weight_decay as f32)));
            }
            run_epochs(recipe, &run, &data, &info, model, cfg.init(), device, options)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_epochs<B: AutodiffBackend, O: Optimizer<Classifier<B>, B>>(
    recipe: &Recipe,
    run: &RunDir,
    data: &PreparedData,
    info: &RunInfo,
    mut model: Classifier<B>,
    mut optim: O,
    device: &B::Device,
    options: &TrainOptions,
) -> Result<TrainOutcome, CadxError> {
    let t = &recipe.train;
    let k = info.classes.len();
    let weights = class_weights(recipe, &data.train, k, info.multi_label)?;
    let mut state = TrainState { epochs_done: 0, best_score: None, best_epoch: 0, history: Vec::new(), stopped_early: false };
    if let Ok(text) = std::fs::read_to_string(run.state()) {
        state = serde_json::from_str(&text)
            .map_err(|e| CadxError::Input(format!("{}: corrupt training state: {e}", run.state().display())))?;
        if state.epochs_done > 0 {
            model = load_module(model, &run.epoch_model(state.epochs_done), device)?;
            optim = optim.load_record(load_record::<B, O::Record>(&run.epoch_optim(state.epochs_done), device)?);
            if !options.quiet {
                eprintln!("resuming {} after epoch {}", run.root().display(), state.epochs_done);
            }
        }
    }
    let train_batcher = ClassificationBatcher { channels: data.train.channels, size: data.train.size, augment: t.augment.clone() };
    let val_targets = targets_of(&data.val);
    let mut complete = true;
    while state.epochs_done < t.epochs && !state.stopped_early {
        if options.stop_after.is_some_and(|s| state.epochs_done >= s) {
            complete = false;
            break;
        }
        let epoch = state.epochs_done;
        let started = Instant::now();
        let lr = t.schedule.lr(t.optimizer.lr(), epoch, t.epochs);
        // Seeding per epoch makes dropout draws, like batches, depend only on (seed, epoch): resumed runs match.
        B::seed(device, mix(recipe.seed ^ mix(epoch as u64 + 1)));
        let batches = epoch_batches(data.train.len(), t.batch_size, recipe.seed, epoch, true);
        let bar = (!options.quiet).then(|| progress_bar(batches.len() as u64, epoch + 1, t.epochs));
        let mut loss_sum = 0.0;
        let mut seen = 0usize;
        for idx in &batches {
            let items: Vec<SeededItem> =
                idx.iter().filter_map(|&(i, seed)| data.train.get(i).map(|item| SeededItem { item, seed })).collect();
            let batch: ClassificationBatch<B> = train_batcher.batch(items, device);
            let logits = model.forward(batch.images);
            let loss = batch_loss(logits, batch.targets, weights.as_deref());
            let value: f32 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                return Err(CadxError::Internal(format!("training diverged at epoch {} (loss {value}); lower the learning rate", epoch + 1)));
            }
            loss_sum += value as f64 * idx.len() as f64;
            seen += idx.len();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let valid = model.valid();
        let (scores, val_loss) = predict_dataset(&valid, &data.val, info.multi_label, 256, device);
        let m = point_metrics(&scores, &val_targets).map_err(|e| CadxError::Internal(format!("validation: {e}")))?;
        let mut log = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            val_loss,
            val_accuracy: m.accuracy.unwrap_or(f64::NAN),
            val_balanced_accuracy: m.balanced_accuracy.unwrap_or(f64::NAN),
            val_auc: m.auc,
            best: false,
            seconds: started.elapsed().as_secs_f64(),
        };
        let s = score(t.select, &log);
        if s.is_some_and(|s| state.best_score.is_none_or(|b| s > b)) || state.best_epoch == 0 {
            state.best_score = s.or(state.best_score);
            state.best_epoch = epoch + 1;
            log.best = true;
            save_module::<B::InnerBackend, _>(&valid, &run.best_model())?;
        }
        if !options.quiet {
            eprintln!(
                "epoch {:>3}/{}  lr {:.2e}  train loss {:.4}  val loss {:.4}  val acc {:.4}  val auc {}{}  ({:.1} s)",
                log.epoch,
                t.epochs,
                lr,
                log.train_loss,
                log.val_loss,
                log.val_accuracy,
                log.val_auc.map_or("-".into(), |a| format!("{a:.4}")),
                if log.best { "  *" } else { "" },
                log.seconds
            );
        }
        state.history.push(log);
        state.epochs_done = epoch + 1;
        if let Some(p) = t.early_stopping_patience {
            if state.epochs_done - state.best_epoch >= p {
                state.stopped_early = true;
                if !options.quiet {
                    eprintln!("early stop: no improvement of val {} for {p} epochs", t.select.name());
                }
            }
        }
        // Checkpoint: weights and optimiser of this epoch first, then the state that points at them.
        save_module::<B, _>(&model, &run.epoch_model(state.epochs_done))?;
        save_record::<B, _>(optim.to_record(), &run.epoch_optim(state.epochs_done))?;
        write_log(run, &state.history)?;
        write_json(&state, &run.state())?;
        if state.epochs_done > 1 {
            let _ = std::fs::remove_file(run.epoch_model(state.epochs_done - 1));
            let _ = std::fs::remove_file(run.epoch_optim(state.epochs_done - 1));
        }
    }
    let mut split_sizes = std::collections::BTreeMap::new();
    for (name, d) in [("train", &data.train), ("val", &data.val), ("test", &data.test)] {
        split_sizes.insert(name.to_string(), d.len());
    }
    let best = run.load_best::<B::InnerBackend>(info, device)?;
    let test = evaluate_dataset(&best, &data.test, info, recipe.eval.bootstrap, recipe.seed, device)?;
    if complete {
        write_json(&MetricsFile { split: "test".into(), best_epoch: state.best_epoch, report: test.clone(), classes: info.classes.clone() }, &run.metrics())?;
    }
    Ok(TrainOutcome { epochs: state.epochs_done, best_epoch: state.best_epoch, test, complete, split_sizes })
}

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

fn write_log(run: &RunDir, history: &[EpochLog]) -> Result<(), CadxError> {
    let mut text = String::new();
    for l in history {
        text.push_str(&serde_json::to_string(l).map_err(|e| CadxError::Internal(e.to_string()))?);
        text.push('\n');
    }
    vesalius_data::io::write_atomic(&run.log(), text.as_bytes()).map_err(|e| CadxError::Internal(e.to_string()))
}

fn progress_bar(len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} batches {per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}
