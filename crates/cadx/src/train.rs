//! The training loop: epochs of seeded batches, validation, best-model selection, early stopping, checkpoints
//! and resumption, then the test report.
use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use vesalius_data::batch::{ClassificationBatch, ClassificationBatcher, SeededItem, epoch_batches};
use vesalius_data::dataset::ClassificationDataset;
use vesalius_data::source::{self, Samples, SourceConfig, Split};
use vesalius_data::split;
use vesalius_eval::classification::{ClassificationReport, point_metrics};
use vesalius_nets::{Arch, Autoencoder, Classifier, ClassifierConfig, SAE_HIDDEN};
use vesalius_train::engine::{self, RunOptions};
use vesalius_train::greedy::{GreedyConfig, train_stacked_in_run};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::transfer::{self, LayerPlan};
use vesalius_train::{EpochRecord, Stepper, Task, Validation};

use crate::CadxError;
use crate::evaluate::{MetricsFile, evaluate_dataset};
use crate::infer::{batch_loss, predict_dataset, targets_of};
use crate::recipe::{ClassWeights, OptimizerConfig, Recipe, Schedule, Selection, WeightsName};
use crate::run::{ClassificationRun, ClassifierInfo, RunDir, RunInfo, write_json};

/// How to run (not what to train: that is the recipe): the engine's options, the same for every task.
pub type TrainOptions = RunOptions;

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
    RunInfo::new(
        "classification",
        ClassifierInfo {
            model: ClassifierConfig::new(recipe.model.arch, s.channels, s.classes.len(), s.size),
            classes: s.classes.clone(),
            multi_label: s.multi_label,
        },
    )
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

/// What a recipe may change in a run folder that already trained: the learning rate (a diverged run resumes
/// with a smaller one), and the number of epochs unless the schedule depends on it (cosine annealing).
pub fn resume_rules(recipe: &Recipe) -> ResumeRules {
    ResumeRules {
        free: vec!["train.optimizer.lr".into()],
        length: vec!["train.epochs".into()],
        schedule_depends: matches!(recipe.train.schedule, Schedule::Cosine { .. }),
    }
}

/// The classification task for the training engine.
struct CadxTask<'a, B: AutodiffBackend> {
    recipe: &'a Recipe,
    data: &'a PreparedData,
    info: &'a RunInfo,
    weights: Option<Vec<f32>>,
    batcher: ClassificationBatcher,
    val_targets: vesalius_eval::classification::Targets,
    pretrained: Option<Autoencoder<B>>,
    run: &'a RunDir,
    plan: Option<LayerPlan>,
}

impl<B: AutodiffBackend> Task<B> for CadxTask<'_, B> {
    type Model = Classifier<B>;
    type Error = CadxError;

    fn init_model(&mut self, device: &B::Device) -> Result<Classifier<B>, CadxError> {
        let model = self.info.model.init(device).map_err(|e| CadxError::Input(format!("model: {e}")))?;
        let model =
            model.with_pretrained(self.pretrained.as_ref()).map_err(|e| CadxError::Internal(format!("pre-trained encoder: {e}")))?;
        let spec = self.recipe.model.transfer();
        let (layout, head) = (model.layout(), model.head());
        let (model, init) = transfer::initialise(model, &layout, head, &spec, Path::new("."))?;
        if let Some(init) = init {
            write_json(&init, &self.run.root().join("init.json"))?;
        }
        self.plan = transfer::layer_plan(&model, &spec)?;
        Ok(model)
    }

    fn layer_plan(&self) -> Option<&LayerPlan> {
        self.plan.as_ref()
    }

    fn epochs(&self) -> usize {
        self.recipe.train.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.data.train.len().div_ceil(self.recipe.train.batch_size.max(1))
    }

    fn lr(&self, epoch: usize) -> f64 {
        let t = &self.recipe.train;
        t.schedule.lr(t.optimizer.lr(), epoch, t.epochs)
    }

    fn train_epoch<O: Optimizer<Classifier<B>, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, Classifier<B>, O>,
    ) -> Result<(), CadxError> {
        let device = stepper.device().clone();
        for idx in &epoch_batches(self.data.train.len(), self.recipe.train.batch_size, self.recipe.seed, epoch, true) {
            let items: Vec<SeededItem> =
                idx.iter().filter_map(|&(i, seed)| self.data.train.get(i).map(|item| SeededItem { item, seed })).collect();
            let n = items.len();
            let batch: ClassificationBatch<B> = self.batcher.batch(items, &device);
            let weights = self.weights.as_deref();
            stepper.step_split(n, idx.len() as f64, |model: &Classifier<B>, range, device| {
                let part = batch.part(&range, device);
                Ok::<_, CadxError>(batch_loss(model.forward(part.images), part.targets, weights))
            })?;
        }
        Ok(())
    }

    fn validate(
        &mut self,
        model: &Classifier<B::InnerBackend>,
        _epoch: usize,
        device: &B::Device,
    ) -> Result<Option<Validation>, CadxError> {
        let (scores, val_loss) = predict_dataset(model, &self.data.val, self.info.multi_label, 256, device);
        let m = point_metrics(&scores, &self.val_targets).map_err(|e| CadxError::Internal(format!("validation: {e}")))?;
        let score = match self.recipe.train.select {
            Selection::Auc => m.auc,
            Selection::Accuracy => m.accuracy,
            Selection::BalancedAccuracy => m.balanced_accuracy,
            Selection::Loss => Some(-val_loss),
        };
        Ok(Some(
            Validation::new()
                .metric("loss", val_loss)
                .maybe("accuracy", m.accuracy)
                .maybe("balanced_accuracy", m.balanced_accuracy)
                .maybe("auc", m.auc)
                .maybe_score(score),
        ))
    }
}

/// Greedy layer-wise pre-training of an `sae` classifier's stacked auto-encoder on the training images (never the
/// validation or test images), kept as `pretrain/autoencoder.mpk` with every stage's losses in
/// `pretrain/log.jsonl`; a run that resumes reads them back instead of training again.
pub fn pretrain<B: AutodiffBackend>(
    recipe: &Recipe,
    data: &PreparedData,
    run: &RunDir,
    device: &B::Device,
    quiet: bool,
) -> Result<Option<Autoencoder<B>>, CadxError> {
    if recipe.model.arch != Arch::Sae {
        return Ok(None);
    }
    let p = recipe.model.pretrain.clone().unwrap_or_default();
    let (channels, size) = (data.train.channels, data.train.size);
    let dim = channels * size * size;
    let batcher = ClassificationBatcher { channels, size, augment: None };
    let mut rows = Vec::with_capacity(data.train.len() * dim);
    for chunk in (0..data.train.len()).collect::<Vec<_>>().chunks(256) {
        let items: Vec<SeededItem> = chunk.iter().filter_map(|&i| data.train.get(i).map(|item| SeededItem { item, seed: 0 })).collect();
        let batch: ClassificationBatch<B::InnerBackend> = batcher.batch(items, device);
        rows.extend(batch.images.flatten::<2>(1, 3).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
    }
    // A sigmoid reconstruction for data in [0, 1]; a linear one otherwise.
    let sigmoid_output = rows.iter().all(|v| (0.0..=1.0).contains(v));
    let config = GreedyConfig {
        hidden: SAE_HIDDEN.to_vec(),
        epochs: p.epochs,
        fine_tune_epochs: p.fine_tune_epochs,
        batch: p.batch,
        lr: p.lr,
        corruption: p.corruption,
        sparsity: p.sparsity,
        sigmoid_output,
        seed: recipe.seed,
    };
    let ae = train_stacked_in_run::<B>(run, || Ok(rows), dim, &config, device, quiet).map_err(|e| match e {
        vesalius_train::TrainError::Input(m) => CadxError::Input(m),
        other => CadxError::Internal(other.to_string()),
    })?;
    Ok(Some(ae))
}

/// Trains `recipe` into the run directory `out` on the training engine, resuming from its last complete
/// checkpoint when it holds a run of the same recipe, then evaluates the best model on the test split and writes
/// `metrics.json`.
pub fn train<B: AutodiffBackend>(
    recipe: &Recipe,
    out: &Path,
    device: &B::Device,
    options: &TrainOptions,
) -> Result<TrainOutcome, CadxError> {
    let run = RunDir::new(out);
    engine::prepare(&run, &recipe.to_toml(), &resume_rules(recipe))?;
    let data = prepare_data(recipe)?;
    let info = run_info(recipe, &data);
    run.write_info(&info).map_err(|e| CadxError::Internal(e.to_string()))?;
    let pretrained = pretrain::<B>(recipe, &data, &run, device, options.quiet)?;
    let t = &recipe.train;
    let mut task = CadxTask {
        pretrained,
        recipe,
        data: &data,
        info: &info,
        weights: class_weights(recipe, &data.train, info.classes.len(), info.multi_label)?,
        batcher: ClassificationBatcher { channels: data.train.channels, size: data.train.size, augment: t.augment.clone() },
        val_targets: targets_of(&data.val),
        run: &run,
        plan: None,
    };
    let config = options.config(recipe.seed, t.early_stopping_patience);
    let on_epoch = |r: &EpochRecord| {
        if !options.quiet {
            let v = |k: &str| r.val.get(k).copied().flatten().map_or("-".to_string(), |x| format!("{x:.4}"));
            eprintln!(
                "epoch {:>3}/{}  lr {:.2e}  train loss {:.4}  val loss {}  val acc {}  val auc {}{}  ({:.1} s)",
                r.epoch,
                t.epochs,
                r.lr,
                r.train_loss,
                v("loss"),
                v("accuracy"),
                v("auc"),
                if r.best { "  *" } else { "" },
                r.seconds
            );
        }
    };
    let outcome = match &t.optimizer {
        OptimizerConfig::Adam { weight_decay, .. } => {
            let mut cfg = AdamConfig::new().with_epsilon(1e-8);
            if *weight_decay > 0.0 {
                cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(*weight_decay as f32)));
            }
            engine::train(&run, &mut task, cfg.init::<B, Classifier<B>>(), &config, device, on_epoch)?
        }
        OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
            let mut cfg = SgdConfig::new();
            if *momentum > 0.0 {
                cfg = cfg.with_momentum(Some(MomentumConfig { momentum: *momentum, dampening: 0.0, nesterov: false }));
            }
            if *weight_decay > 0.0 {
                cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(*weight_decay as f32)));
            }
            engine::train(&run, &mut task, cfg.init::<B, Classifier<B>>(), &config, device, on_epoch)?
        }
    };
    let mut split_sizes = std::collections::BTreeMap::new();
    for (name, d) in [("train", &data.train), ("val", &data.val), ("test", &data.test)] {
        split_sizes.insert(name.to_string(), d.len());
    }
    let best_epoch = outcome.state.best_epoch.unwrap_or(0);
    let best = run.load_best::<B::InnerBackend>(&info, device)?;
    let test = evaluate_dataset(&best, &data.test, &info, recipe.eval.bootstrap, recipe.seed, device)?;
    if outcome.complete {
        write_json(&MetricsFile { split: "test".into(), best_epoch, report: test.clone(), classes: info.classes.clone() }, &run.metrics())?;
    }
    Ok(TrainOutcome { epochs: outcome.state.epochs_done, best_epoch, test, complete: outcome.complete, split_sizes })
}
