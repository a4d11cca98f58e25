//! The epoch loop every task runs on.
//!
//! A task says how to build its model, how to run one epoch's steps (handing each batch's loss to a
//! [`Stepper`]), the learning rate of an epoch, and how to validate (metrics and a selection score, higher is
//! better). The engine owns the rest: the run folder, seeding, checkpoints, resumption, the best model, early
//! stopping, divergence, progress bars and `log.jsonl`.
//!
//! After each epoch, in this order: one line is appended to `log.jsonl`; the checkpoint set
//! `checkpoints/epoch-NNNN/` is written in full (`model.mpk`, `optim.mpk`, then `state.json`, each atomically);
//! `checkpoints/state.json` is replaced by one atomic rename, which is the moment the epoch counts as done; the
//! best model is published as `model.mpk`; older sets are pruned (the current one and the best one stay). A
//! process killed at any instant resumes from the set the state names: the log is cut back to the length that set
//! recorded (so no line is lost or repeated), `model.mpk` is published again from the best set, and since the
//! backend's random stream and every data draw derive from `(seed, epoch)` (see [`stream_seed`]), the resumed run
//! ends with the same weights, byte for byte, as one never interrupted. Parameter ids are derived from parameter
//! paths ([`crate::ids`]), so identical weights are identical files.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::{AutodiffModule, Module};
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::{Optimizer, SgdConfig};
//! use burn::tensor::backend::{AutodiffBackend, Backend};
//! use burn::tensor::{Tensor, TensorData};
//! use vesalius_train::engine::{self, EngineConfig, Stepper, Task, Validation};
//! use vesalius_train::run::RunDir;
//! use vesalius_train::TrainError;
//! type B = Autodiff<Flex>;
//!
//! /// Fits y = 2x with one linear unit.
//! struct Fit;
//! fn data<Bk: Backend>(d: &Bk::Device) -> (Tensor<Bk, 2>, Tensor<Bk, 2>) {
//!     let x = Tensor::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [4, 1]), d);
//!     (x.clone(), x * 2.0)
//! }
//! impl Task<B> for Fit {
//!     type Model = Linear<B>;
//!     type Error = TrainError;
//!     fn init_model(&mut self, d: &burn::tensor::Device<B>) -> Result<Linear<B>, TrainError> { Ok(LinearConfig::new(1, 1).init(d)) }
//!     fn epochs(&self) -> usize { 40 }
//!     fn lr(&self, _epoch: usize) -> f64 { 0.05 }
//!     fn train_epoch<O: Optimizer<Linear<B>, B>>(&mut self, _e: usize, s: &mut Stepper<'_, B, Linear<B>, O>) -> Result<(), TrainError> {
//!         let (x, y) = data::<B>(&Default::default());
//!         let loss = (s.model().forward(x) - y).powi_scalar(2).mean();
//!         s.step(loss)?;
//!         Ok(())
//!     }
//!     fn validate(&mut self, m: &Linear<Flex>, _e: usize, d: &burn::tensor::Device<B>) -> Result<Option<Validation>, TrainError> {
//!         let (x, y) = data::<Flex>(d);
//!         let mse: f32 = (m.forward(x) - y).powi_scalar(2).mean().into_scalar();
//!         Ok(Some(Validation::new().metric("mse", mse as f64).score(-(mse as f64))))
//!     }
//! }
//! let dir = tempfile::tempdir().unwrap();
//! let run = RunDir::new(dir.path());
//! let config = EngineConfig { seed: 7, quiet: true, ..Default::default() };
//! engine::prepare(&run, "epochs = 40\n", &Default::default()).unwrap();
//! let outcome = engine::train(&run, &mut Fit, SgdConfig::new().init(), &config, &Default::default(), |_| {}).unwrap();
//! assert_eq!(outcome.state.epochs_done, 40);
//! assert!(outcome.state.best_score.unwrap() > -0.05);
//! assert_eq!(std::fs::read_to_string(run.log()).unwrap().lines().count(), 40);
//! ```
use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};
use vesalius_io::write_atomic;

use crate::TrainError;
use crate::ids::deterministic_ids;
use crate::recipe::ResumeRules;
use crate::run::RunDir;

/// The seed of the random stream of `(seed, epoch, step)`: the backend's generator is re-seeded from it at the
/// start of every epoch (step 0), and tasks derive their own draws from it, so nothing depends on how a run was
/// interrupted.
pub fn stream_seed(seed: u64, epoch: u64, step: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD6E8_FEB8_6659_FD93).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A validation's metrics and the score that selects the best model (higher is better).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Validation {
    /// Metrics by name (non-finite values become `None`).
    pub metrics: BTreeMap<String, Option<f64>>,
    /// The selection score; `None` when undefined (the epoch is then never better than a defined one).
    pub score: Option<f64>,
}

impl Validation {
    /// No metrics yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a metric.
    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.insert(name.to_string(), value.is_finite().then_some(value));
        self
    }
    /// Adds a metric that may be undefined.
    pub fn maybe(mut self, name: &str, value: Option<f64>) -> Self {
        self.metrics.insert(name.to_string(), value.filter(|v| v.is_finite()));
        self
    }
    /// Sets the selection score.
    pub fn score(mut self, score: f64) -> Self {
        self.score = score.is_finite().then_some(score);
        self
    }
    /// Sets a selection score that may be undefined.
    pub fn maybe_score(mut self, score: Option<f64>) -> Self {
        self.score = score.filter(|v| v.is_finite());
        self
    }
}

/// One line of `log.jsonl`, the same for every task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimisation steps done since the start of the run.
    pub steps: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch's steps (weighted as the task asked).
    pub train_loss: f64,
    /// Validation metrics (empty when the epoch was not validated).
    pub val: BTreeMap<String, Option<f64>>,
    /// Selection score of the validation (higher is better).
    pub score: Option<f64>,
    /// Whether this epoch's model became the best.
    pub best: bool,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
}

impl EpochRecord {
    /// The record with its wall time set to 0, to compare runs (the only field that differs between identical
    /// runs).
    pub fn timeless(self) -> Self {
        Self { seconds: 0.0, ..self }
    }
}

/// `checkpoints/state.json` and each set's own `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Completed optimisation steps.
    pub steps_done: usize,
    /// The checkpoint set of the last completed epoch (`epoch-NNNN`).
    pub checkpoint: String,
    /// Epoch (1-based) of the best model.
    pub best_epoch: Option<usize>,
    /// Its score.
    pub best_score: Option<f64>,
    /// Steps done when the best model was reached.
    #[serde(default)]
    pub best_steps: Option<usize>,
    /// The checkpoint set that holds the best model.
    pub best_checkpoint: Option<String>,
    /// Length of `log.jsonl` in bytes after this epoch's line.
    pub log_len: u64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The task's own state ([`Task::task_state`]).
    #[serde(default)]
    pub task: serde_json::Value,
}

/// A point inside an epoch's checkpoint, for tests that stop a run there as a kill would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointStage {
    /// The epoch's log line is appended; nothing of the set is written.
    LogAppended,
    /// The set's weights are written.
    ModelWritten,
    /// The set's weights and optimiser are written.
    OptimiserWritten,
    /// The whole set is written; `checkpoints/state.json` still names the previous one.
    SetWritten,
    /// `checkpoints/state.json` names the new set; the best model is not yet published, nothing pruned.
    StateRenamed,
}

/// How a caller wants a run to go, the same for every task (what to train is the recipe's).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// No progress bars or per-epoch lines on standard error.
    pub quiet: bool,
    /// Stop after this many completed epochs in total, as an interruption would (the run can be resumed).
    pub stop_after: Option<usize>,
    /// Stop at this point of this epoch's (1-based) checkpoint, returning [`TrainError::Interrupted`].
    pub interrupt: Option<(usize, CheckpointStage)>,
    /// Devices to split every batch across (0 or 1: one; see [`EngineConfig::devices`]).
    pub devices: usize,
}

impl RunOptions {
    /// The engine configuration of a recipe's seed and early-stopping patience with these options.
    pub fn config(&self, seed: u64, early_stopping_patience: Option<usize>) -> EngineConfig {
        EngineConfig {
            seed,
            early_stopping_patience,
            quiet: self.quiet,
            stop_after: self.stop_after,
            interrupt: self.interrupt,
            devices: self.devices,
            threads: false,
        }
    }
}

/// How the engine runs (what to train is the task's).
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// The run's seed.
    pub seed: u64,
    /// Stop after this many epochs without a better validation score.
    pub early_stopping_patience: Option<usize>,
    /// No progress bars.
    pub quiet: bool,
    /// Stop after this many completed epochs in total, as an interruption would (the run can be resumed).
    pub stop_after: Option<usize>,
    /// Stop at this point of this epoch's (1-based) checkpoint, returning [`TrainError::Interrupted`].
    pub interrupt: Option<(usize, CheckpointStage)>,
    /// Devices to split every batch across, data-parallel ([`Stepper::step_split`]); 0: the process-wide number
    /// ([`set_devices`], 1 unless set). The first is the training device; the others are the backend's next devices
    /// of the same kind, or replicas of the training device when the backend has fewer (a CPU has one).
    pub devices: usize,
    /// Runs every device's part of a batch in its own thread, replicas of one device included (parts on distinct
    /// devices always do). Worth it where the backend's own operations use one core; random draws inside the model
    /// then depend on the threads' timing.
    pub threads: bool,
}

/// What a task provides to the engine.
pub trait Task<B: AutodiffBackend> {
    /// The trained module.
    type Model: AutodiffModule<B>;
    /// The task's error type.
    type Error: From<TrainError>;
    /// Builds the model; the engine seeds the backend before and fixes parameter ids after.
    fn init_model(&mut self, device: &B::Device) -> Result<Self::Model, Self::Error>;
    /// Epochs in all.
    fn epochs(&self) -> usize;
    /// Whether another epoch is to run after `epochs_done` epochs and `steps_done` steps (default: fewer epochs
    /// than [`Task::epochs`]). Step-based tasks override it.
    fn more(&self, epochs_done: usize, _steps_done: usize) -> bool {
        epochs_done < self.epochs()
    }
    /// Steps epoch `epoch` (0-based) will take, for the progress bar (0: unknown).
    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        0
    }
    /// Learning rate of epoch `epoch` (0-based).
    fn lr(&self, epoch: usize) -> f64;
    /// Runs epoch `epoch` (0-based): every batch's loss goes to [`Stepper::step`].
    fn train_epoch<O: Optimizer<Self::Model, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, Self::Model, O>,
    ) -> Result<(), Self::Error>;
    /// Validates the model after epoch `epoch` (0-based); `None` when this epoch is not validated.
    fn validate(
        &mut self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
        epoch: usize,
        device: &B::Device,
    ) -> Result<Option<Validation>, Self::Error>;
    /// State of the task to keep with a checkpoint.
    fn task_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Frozen layers and per-layer learning-rate scales ([`crate::transfer`]); `None`: every parameter trains at the
    /// epoch's rate.
    fn layer_plan(&self) -> Option<&crate::transfer::LayerPlan> {
        None
    }
    /// Restores [`Task::task_state`] when resuming.
    fn restore_task_state(&mut self, _state: &serde_json::Value) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Takes optimisation steps for a task: checks the loss, back-propagates, updates, counts and draws progress.
pub struct Stepper<'a, B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> {
    model: Option<M>,
    optim: &'a mut O,
    lr: f64,
    epoch: usize,
    steps_done: usize,
    loss_sum: f64,
    loss_weight: f64,
    bar: indicatif::ProgressBar,
    device: B::Device,
    /// The devices a batch is split across ([`Stepper::step_split`]); the first is `device`.
    devices: Vec<B::Device>,
    /// Parts run in threads even on replicas of one device ([`EngineConfig::threads`]).
    threads: bool,
    /// Learning-rate factors and their parameters for this epoch, when not every parameter trains at factor 1.
    groups: Option<Vec<(f64, Vec<burn::module::ParamId>)>>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>> Stepper<'_, B, M, O> {
    /// The model as it is now.
    pub fn model(&self) -> &M {
        self.model.as_ref().expect("the model is only taken inside a step")
    }
    /// The device training runs on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }
    /// Steps done since the start of the run.
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }
    /// The devices a batch is split across by [`Stepper::step_split`] (one unless the run asked for more).
    pub fn devices(&self) -> &[B::Device] {
        &self.devices
    }
    /// One optimisation step on `loss`; returns its value.
    pub fn step(&mut self, loss: Tensor<B, 1>) -> Result<f64, TrainError> {
        self.step_weighted(loss, 1.0)
    }
    /// One step whose loss counts `weight` times in the epoch's mean (for example the batch size).
    pub fn step_weighted(&mut self, loss: Tensor<B, 1>, weight: f64) -> Result<f64, TrainError> {
        let value = checked(&loss, self.epoch, self.steps_done)?;
        let model = self.model.take().expect("the model is only taken inside a step");
        let mut grads = loss.backward();
        let parts = split_grads::<B, M>(&mut grads, &model, self.groups.as_deref());
        self.update(model, parts, value, weight);
        Ok(value)
    }
    /// One data-parallel optimisation step on a batch of `n` items, the way PyTorch's `DistributedDataParallel`
    /// takes one: `loss(model, range, device)` is the mean loss of the items in `range` (a part of `0..n`) computed
    /// by a copy of the model on `device`. The batch is cut into one contiguous part per device (sizes differing by
    /// at most one); every part's gradient, weighted by its share of the batch, is brought to the training device
    /// and summed (an all-reduce), and the optimiser takes one step with the sum. When the loss is a mean over
    /// items this is the gradient of the whole batch's mean loss, so the step equals one-device training on the
    /// same batch up to float rounding; a loss that couples the items of a batch (batch statistics, Cox risk sets,
    /// a Dice over the batch) is computed per part, as in PyTorch. Parts on distinct devices run in parallel
    /// threads; replicas of one device (a CPU) run one after another, so the backend's random draws stay
    /// reproducible. With one device, `loss` runs once on the whole batch. Returns the batch's mean loss.
    pub fn step_split<E, F>(&mut self, n: usize, weight: f64, loss: F) -> Result<f64, E>
    where
        E: From<TrainError> + Send,
        F: Fn(&M, std::ops::Range<usize>, &B::Device) -> Result<Tensor<B, 1>, E> + Sync,
    {
        let parts = shard_ranges(n, self.devices.len());
        if parts.len() <= 1 {
            let l = loss(self.model(), 0..n, &self.device)?;
            return Ok(self.step_weighted(l, weight)?);
        }
        let model = self.model.take().expect("the model is only taken inside a step");
        let (epoch, steps_done, main, groups) = (self.epoch, self.steps_done, &self.device, self.groups.as_deref());
        let shard = |replica: M, range: std::ops::Range<usize>, device: &B::Device| -> Result<(f64, Vec<GradientsParams>), E> {
            let l = loss(&replica, range.clone(), device)?;
            let share = range.len() as f64 / n as f64;
            let value = checked(&l, epoch, steps_done)?;
            let mut grads = (l * share).backward();
            let parts = split_grads::<B, M>(&mut grads, &replica, groups);
            Ok((value * share, parts.into_iter().map(|g| g.to_device(main, &replica)).collect()))
        };
        let distinct = self.devices.iter().enumerate().all(|(i, d)| !self.devices[..i].contains(d));
        let results: Vec<Result<(f64, Vec<GradientsParams>), E>> = if distinct || self.threads {
            std::thread::scope(|scope| {
                let handles: Vec<_> = parts
                    .iter()
                    .zip(&self.devices)
                    .map(|(range, device)| {
                        let replica = model.clone().fork(device);
                        let shard = &shard;
                        scope.spawn(move || shard(replica, range.clone(), device))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Internal("a device's training thread panicked".into()).into())))
                    .collect()
            })
        } else {
            parts.iter().zip(&self.devices).map(|(range, device)| shard(model.clone().fork(device), range.clone(), device)).collect()
        };
        let groups = self.groups.as_ref().map_or(1, Vec::len);
        let mut sums: Vec<GradientsAccumulator<M>> = (0..groups).map(|_| GradientsAccumulator::new()).collect();
        let mut value = 0.0;
        for result in results {
            let (v, grads) = result?;
            value += v;
            for (sum, g) in sums.iter_mut().zip(grads) {
                sum.accumulate(&model, g);
            }
        }
        let parts = sums.iter_mut().map(GradientsAccumulator::grads).collect();
        self.update(model, parts, value, weight);
        Ok(value)
    }
    /// Steps the optimiser with the gradients of [`split_grads`] and counts the step.
    fn update(&mut self, mut model: M, parts: Vec<GradientsParams>, value: f64, weight: f64) {
        let factors: Vec<f64> = match &self.groups {
            None => vec![1.0],
            Some(groups) => groups.iter().map(|(f, _)| *f).collect(),
        };
        for (factor, grads) in factors.into_iter().zip(parts) {
            model = self.optim.step(self.lr * factor, model, grads);
        }
        self.model = Some(model);
        self.steps_done += 1;
        self.loss_sum += value * weight;
        self.loss_weight += weight;
        self.bar.inc(1);
    }
}

/// Draws every lazily initialised parameter's values.
struct Materialise;

impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        let _ = param.val();
    }
    fn visit_int<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, burn::tensor::Int>>) {
        let _ = param.val();
    }
    fn visit_bool<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, burn::tensor::Bool>>) {
        let _ = param.val();
    }
}

/// The loss's value, or the divergence error when it is not finite.
fn checked<B: AutodiffBackend>(loss: &Tensor<B, 1>, epoch: usize, steps_done: usize) -> Result<f64, TrainError> {
    let value: f64 = loss.clone().into_scalar().elem();
    if !value.is_finite() {
        return Err(TrainError::Diverged { epoch: epoch + 1, step: steps_done + 1, value, resume_epoch: epoch });
    }
    Ok(value)
}

/// The gradients of the trained parameters: one set, or one per learning-rate group (frozen parameters belong to
/// none).
fn split_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    grads: &mut B::Gradients,
    model: &M,
    groups: Option<&[(f64, Vec<burn::module::ParamId>)]>,
) -> Vec<GradientsParams> {
    match groups {
        None => vec![GradientsParams::from_module(grads, model)],
        Some(groups) => groups.iter().map(|(_, ids)| GradientsParams::from_params(grads, model, ids)).collect(),
    }
}

/// The items `range` of a batch tensor (its first dimension), on `device`: a part for [`Stepper::step_split`].
pub fn part<Bk: burn::tensor::backend::Backend, const D: usize, K: burn::tensor::TensorKind<Bk> + burn::tensor::BasicOps<Bk>>(
    batch: &Tensor<Bk, D, K>,
    range: &std::ops::Range<usize>,
    device: &Bk::Device,
) -> Tensor<Bk, D, K> {
    let whole = range.start == 0 && range.len() == batch.dims()[0];
    // One device takes the whole batch: no copy.
    let part = if whole { batch.clone() } else { batch.clone().narrow(0, range.start, range.len()) };
    part.to_device(device)
}

/// `n` items cut into at most `parts` contiguous non-empty ranges whose sizes differ by at most one.
pub fn shard_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|k| {
            let len = base + usize::from(k < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// The process-wide number of devices of [`set_devices`] (0: not set).
static DEVICES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Splits every batch of every engine run of this process across `n` devices ([`EngineConfig::devices`]);
/// `vesalius train --devices N` sets it.
pub fn set_devices(n: usize) {
    DEVICES.store(n, std::sync::atomic::Ordering::SeqCst);
}

/// The most devices a batch is split across ([`devices`] caps its count there).
pub const MAX_DEVICES: usize = 1024;

/// `n` devices (at most [`MAX_DEVICES`]) for data-parallel training on `device`: `device` first, then the backend's next devices of the same
/// kind by index, or replicas of `device` where the backend has fewer.
pub fn devices<B: burn::tensor::backend::Backend>(device: &B::Device, n: usize) -> Vec<B::Device> {
    use burn::tensor::backend::{Device as _, DeviceId};
    let id = device.to_id();
    let available = B::device_count(id.type_id);
    let mut out = vec![device.clone()];
    for k in 1..n.clamp(1, MAX_DEVICES) {
        let index = usize::from(id.index_id) + k;
        out.push(if index < available && index <= usize::from(u16::MAX) {
            B::Device::from_id(DeviceId { type_id: id.type_id, index_id: index as u16 })
        } else {
            device.clone()
        });
    }
    out
}

/// What [`train`] reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The state after the last completed epoch.
    pub state: EngineState,
    /// Epochs already done when this call resumed the run, if it did.
    pub resumed_after: Option<usize>,
    /// Whether the run is finished (false when stopped by [`EngineConfig::stop_after`]).
    pub complete: bool,
}

/// Checks an existing run folder before a task prepares its data: when it holds a started run, its recipe must
/// be `recipe` up to what `rules` allow (an input error names the differing keys otherwise). Writes
/// `recipe.toml` and returns the state of the started run, if any.
pub fn prepare(run: &RunDir, recipe: &str, rules: &ResumeRules) -> Result<Option<EngineState>, TrainError> {
    let state = read_state(run)?;
    if state.is_some()
        && let Ok(old) = std::fs::read_to_string(run.recipe())
    {
        rules.check(&old, recipe).map_err(|m| TrainError::Input(format!("{}: {m}", run.root().display())))?;
    }
    write_atomic(&run.recipe(), recipe.as_bytes())?;
    Ok(state)
}

/// Reads `checkpoints/state.json` if there is one.
pub fn read_state(run: &RunDir) -> Result<Option<EngineState>, TrainError> {
    let path = run.state();
    if !path.is_file() {
        return Ok(None);
    }
    let state: EngineState = crate::run::read_json(&path).map_err(|e| TrainError::Input(format!("corrupt training state: {e}")))?;
    Ok(Some(state))
}

fn set_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

fn hook(config: &EngineConfig, epoch: usize, stage: CheckpointStage) -> Result<(), TrainError> {
    if config.interrupt == Some((epoch, stage)) {
        return Err(TrainError::Interrupted(format!("stopped at {stage:?} of epoch {epoch}")));
    }
    Ok(())
}

/// Copies the best set's weights to `model.mpk` (atomically; skipped when already equal).
fn publish_best(run: &RunDir, state: &EngineState) -> Result<(), TrainError> {
    let Some(best) = &state.best_checkpoint else { return Ok(()) };
    let src = run.checkpoint(best).join("model.mpk");
    let bytes = std::fs::read(&src).map_err(|e| TrainError::Input(format!("{}: {e}", src.display())))?;
    if std::fs::read(run.best_model()).ok().as_deref() != Some(&bytes[..]) {
        write_atomic(&run.best_model(), &bytes)?;
    }
    Ok(())
}

/// Removes every checkpoint set other than the state's current and best ones.
fn prune(run: &RunDir, state: &EngineState) {
    let Ok(entries) = std::fs::read_dir(run.checkpoint("")) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = name == state.checkpoint || state.best_checkpoint.as_deref() == Some(name.as_str());
        if name.starts_with("epoch-") && !keep && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Loads a module's weights from a record file.
pub fn load_module<B: burn::tensor::backend::Backend, M: Module<B>>(
    module: M,
    path: &std::path::Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
    let record = vesalius_nets::record::from_bytes::<B, M::Record>(bytes, device)
        .map_err(|e| TrainError::Input(format!("{}: {e}", path.display())))?;
    Ok(module.load_record(record))
}

/// Writes a module's weights atomically.
pub fn save_module<B: burn::tensor::backend::Backend, M: Module<B>>(module: &M, path: &std::path::Path) -> Result<(), TrainError> {
    let bytes = vesalius_nets::record::to_bytes::<B, _>(module.clone().into_record())
        .map_err(|e| TrainError::Internal(format!("{}: {e}", path.display())))?;
    Ok(write_atomic(path, &bytes)?)
}

/// A process-wide cap on the epochs of every engine run of this process (0: none).
static EPOCH_LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Caps every engine run of this process at `limit` epochs (as [`EngineConfig::stop_after`] does for one run; the
/// run stops after that epoch's checkpoint and resumes later). `vesalius train --max-epochs` sets it, so that a
/// hyper-parameter search can train any task's run a few epochs at a time.
pub fn set_epoch_limit(limit: Option<usize>) {
    EPOCH_LIMIT.store(limit.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
}

/// The process-wide cap of [`set_epoch_limit`].
pub fn epoch_limit() -> Option<usize> {
    Some(EPOCH_LIMIT.load(std::sync::atomic::Ordering::SeqCst)).filter(|&n| n > 0)
}

/// Trains `task` in `run` (after [`prepare`]), resuming from the last complete checkpoint set when there is one.
/// `on_epoch` sees every completed epoch's record.
pub fn train<B: AutodiffBackend, T: Task<B>, O: Optimizer<T::Model, B>>(
    run: &RunDir,
    task: &mut T,
    mut optim: O,
    config: &EngineConfig,
    device: &B::Device,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<Outcome, T::Error> {
    std::fs::create_dir_all(run.checkpoint("")).map_err(|e| TrainError::Internal(format!("{}: {e}", run.root().display())))?;
    B::seed(device, config.seed);
    let mut model = deterministic_ids(task.init_model(device)?);
    let existing = read_state(run)?;
    let resumed_after = existing.as_ref().map(|s| s.epochs_done);
    let mut state = match existing {
        Some(s) => {
            let set = run.checkpoint(&s.checkpoint);
            model = load_module(model, &set.join("model.mpk"), device)?;
            let bytes =
                std::fs::read(set.join("optim.mpk")).map_err(|e| TrainError::Input(format!("{}: {e}", set.join("optim.mpk").display())))?;
            let record = vesalius_nets::record::from_bytes::<B, O::Record>(bytes, device)
                .map_err(|e| TrainError::Input(format!("{}: {e}", set.display())))?;
            optim = optim.load_record(record);
            task.restore_task_state(&s.task)?;
            run.truncate_log(s.log_len).map_err(TrainError::from)?;
            publish_best(run, &s)?;
            if !config.quiet {
                eprintln!("resuming {} after epoch {}", run.root().display(), s.epochs_done);
            }
            s
        }
        None => {
            run.truncate_log(0).map_err(TrainError::from)?;
            let _ = std::fs::remove_file(run.best_model());
            EngineState {
                epochs_done: 0,
                steps_done: 0,
                checkpoint: String::new(),
                best_epoch: None,
                best_score: None,
                best_steps: None,
                best_checkpoint: None,
                log_len: 0,
                stopped_early: false,
                task: serde_json::Value::Null,
            }
        }
    };
    let wanted = if config.devices > 0 { config.devices } else { DEVICES.load(std::sync::atomic::Ordering::SeqCst) };
    let devices = devices::<B>(device, wanted);
    if devices.len() > 1 && !config.quiet {
        let replicas = devices.iter().filter(|d| *d == device).count();
        let how = if replicas > 1 && !config.threads { ", replicas' parts one after another" } else { ", parts in parallel threads" };
        eprintln!("data-parallel over {} devices {devices:?}{how}", devices.len());
    }
    let mut complete = true;
    while task.more(state.epochs_done, state.steps_done) && !state.stopped_early {
        let stop_after = match (config.stop_after, epoch_limit()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if stop_after.is_some_and(|s| state.epochs_done >= s) {
            complete = false;
            break;
        }
        let epoch = state.epochs_done;
        let started = Instant::now();
        B::seed(device, stream_seed(config.seed, epoch as u64, 0));
        // Parameters are initialised lazily, and each copy of an uninitialised one would draw its own values: they
        // are drawn here, in the module's order, before the first step copies the model to other devices.
        model.visit(&mut Materialise);
        let lr = task.lr(epoch);
        let steps = task.steps_in_epoch(epoch, state.steps_done);
        let label = format!("epoch {}/{}", epoch + 1, task.epochs());
        let groups = task.layer_plan().and_then(|plan| plan.groups(&model, epoch));
        let mut stepper = Stepper {
            groups,
            model: Some(model),
            optim: &mut optim,
            lr,
            epoch,
            steps_done: state.steps_done,
            loss_sum: 0.0,
            loss_weight: 0.0,
            bar: crate::progress::bar(steps as u64, &label, config.quiet),
            device: device.clone(),
            devices: devices.clone(),
            threads: config.threads,
        };
        task.train_epoch(epoch, &mut stepper)?;
        stepper.bar.finish_and_clear();
        let train_loss = stepper.loss_sum / stepper.loss_weight.max(f64::MIN_POSITIVE);
        let steps_done = stepper.steps_done;
        model = stepper.model.take().expect("the model is back after the epoch");
        let validation = task.validate(&model.valid(), epoch, device)?;
        let done = epoch + 1;
        let name = set_name(done);
        let mut record = EpochRecord {
            epoch: done,
            steps: steps_done,
            lr,
            train_loss,
            val: validation.as_ref().map(|v| v.metrics.clone()).unwrap_or_default(),
            score: validation.as_ref().and_then(|v| v.score),
            best: false,
            seconds: 0.0,
        };
        let mut next = state.clone();
        if let Some(v) = &validation {
            let better = match (v.score, state.best_score) {
                (Some(s), Some(b)) => s > b,
                (Some(_), None) => true,
                (None, _) => state.best_epoch.is_none(),
            };
            if better {
                next.best_epoch = Some(done);
                next.best_score = v.score;
                next.best_steps = Some(steps_done);
                next.best_checkpoint = Some(name.clone());
                record.best = true;
            }
        }
        // A task that validates no epoch keeps its last model as the best.
        if next.best_epoch.is_none() && !task.more(done, steps_done) {
            next.best_epoch = Some(done);
            next.best_steps = Some(steps_done);
            next.best_checkpoint = Some(name.clone());
            record.best = true;
        }
        if let (Some(p), Some(b)) = (config.early_stopping_patience, next.best_epoch)
            && done - b >= p
        {
            next.stopped_early = true;
            if !config.quiet {
                eprintln!("early stop: no better validation score for {p} epochs");
            }
        }
        record.seconds = started.elapsed().as_secs_f64();
        let line = serde_json::to_string(&record).map_err(|e| TrainError::Internal(e.to_string()))?;
        next.log_len = run.append_log_line(&line).map_err(TrainError::from)?;
        hook(config, done, CheckpointStage::LogAppended)?;
        next.epochs_done = done;
        next.steps_done = steps_done;
        next.checkpoint = name.clone();
        next.task = task.task_state();
        let set = run.checkpoint(&name);
        if set.exists() {
            std::fs::remove_dir_all(&set).map_err(|e| TrainError::Internal(format!("{}: {e}", set.display())))?;
        }
        save_module::<B, _>(&model, &set.join("model.mpk"))?;
        hook(config, done, CheckpointStage::ModelWritten)?;
        let optim_bytes = vesalius_nets::record::to_bytes::<B, _>(optim.to_record()).map_err(TrainError::Internal)?;
        write_atomic(&set.join("optim.mpk"), &optim_bytes).map_err(TrainError::from)?;
        hook(config, done, CheckpointStage::OptimiserWritten)?;
        crate::run::write_json(&set.join("state.json"), &next).map_err(TrainError::from)?;
        hook(config, done, CheckpointStage::SetWritten)?;
        crate::run::write_json(&run.state(), &next).map_err(TrainError::from)?;
        state = next;
        hook(config, done, CheckpointStage::StateRenamed)?;
        // Only a new best changes `model.mpk` (a resumed run republishes it once, before its first epoch).
        if record.best {
            publish_best(run, &state)?;
        }
        prune(run, &state);
        on_epoch(&record);
    }
    Ok(Outcome { state, resumed_after, complete })
}
