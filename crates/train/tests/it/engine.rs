//! The engine's run-folder invariants on a small task with a known answer: interruption at every point of a
//! checkpoint resumes to the same files, identical runs write identical model files, divergence stops with its
//! epoch and step, early stopping, a changed recipe is refused with its keys named.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vesalius_train::engine::{self, CheckpointStage, EngineConfig, stream_seed};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{RunDir, Stepper, Task, TrainError, Validation};

use crate::{AD, Device, P};

/// Fits y = 3x − 1 from noisy samples drawn anew every step from `(seed, epoch, step)`.
struct Line {
    epochs: usize,
    steps: usize,
    lr: f64,
    /// Validation scores to report instead of the real one (for early stopping), by epoch.
    scripted: Option<Vec<f64>>,
    /// Make the loss infinite at this (epoch, step of the epoch).
    blow_up: Option<(usize, usize)>,
}

fn uniform(seed: u64, i: u64) -> f32 {
    (stream_seed(seed, 99, i) >> 40) as f32 / (1u64 << 24) as f32
}

fn batch<Bk: Backend>(seed: u64, device: &Bk::Device) -> (Tensor<Bk, 2>, Tensor<Bk, 2>) {
    let xs: Vec<f32> = (0..16).map(|i| uniform(seed, i) * 4.0 - 2.0).collect();
    let ys: Vec<f32> = xs.iter().enumerate().map(|(i, x)| 3.0 * x - 1.0 + 0.1 * (uniform(seed, 100 + i as u64) - 0.5)).collect();
    (Tensor::from_data(TensorData::new(xs, [16, 1]), device), Tensor::from_data(TensorData::new(ys, [16, 1]), device))
}

impl Task<AD> for Line {
    type Model = Linear<AD>;
    type Error = TrainError;
    fn init_model(&mut self, device: &Device) -> Result<Linear<AD>, TrainError> {
        Ok(LinearConfig::new(1, 1).init(device))
    }
    fn epochs(&self) -> usize {
        self.epochs
    }
    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.steps
    }
    fn lr(&self, _epoch: usize) -> f64 {
        self.lr
    }
    fn train_epoch<O: Optimizer<Linear<AD>, AD>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, AD, Linear<AD>, O>,
    ) -> Result<(), TrainError> {
        for step in 0..self.steps {
            let (x, y) = batch::<AD>(stream_seed(11, epoch as u64, step as u64), stepper.device());
            let mut loss = (stepper.model().forward(x) - y).powi_scalar(2).mean();
            if self.blow_up == Some((epoch, step)) {
                loss = loss * f32::INFINITY;
            }
            stepper.step(loss)?;
        }
        Ok(())
    }
    fn validate(&mut self, model: &Linear<P>, epoch: usize, device: &Device) -> Result<Option<Validation>, TrainError> {
        let (x, y) = batch::<P>(12345, device);
        let mse = (model.forward(x) - y).powi_scalar(2).mean().into_scalar() as f64;
        let score = self.scripted.as_ref().map_or(-mse, |s| s[epoch]);
        Ok(Some(Validation::new().metric("mse", mse).score(score)))
    }
}

fn line(epochs: usize) -> Line {
    Line { epochs, steps: 5, lr: 0.05, scripted: None, blow_up: None }
}

fn config() -> EngineConfig {
    EngineConfig { seed: 3, quiet: true, ..Default::default() }
}

fn run_to_end(run: &RunDir, task: &mut Line, config: &EngineConfig) -> Result<engine::Outcome, TrainError> {
    let _turn = crate::take_turn();
    engine::prepare(run, &format!("epochs = {}\n", task.epochs), &ResumeRules::default())?;
    engine::train(run, task, AdamConfig::new().init(), config, &Default::default(), |_| {})
}

fn log_without_times(run: &RunDir) -> Vec<vesalius_train::EpochRecord> {
    run.read_log().unwrap().into_iter().map(vesalius_train::EpochRecord::timeless).collect()
}

#[test]
fn learns_the_line_and_identical_runs_write_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (RunDir::new(dir.path().join("a")), RunDir::new(dir.path().join("b")));
    let out = run_to_end(&a, &mut line(30), &config()).unwrap();
    run_to_end(&b, &mut line(30), &config()).unwrap();
    assert!(out.complete);
    assert_eq!(out.state.epochs_done, 30);
    assert_eq!(out.state.steps_done, 150);
    let mse = -out.state.best_score.unwrap();
    assert!(mse < 0.05, "validation MSE {mse}");
    assert_eq!(std::fs::read(a.best_model()).unwrap(), std::fs::read(b.best_model()).unwrap());
    assert_eq!(log_without_times(&a), log_without_times(&b));
    assert_eq!(log_without_times(&a).len(), 30);
}

#[test]
fn a_run_stopped_at_any_point_of_a_checkpoint_resumes_to_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let whole = RunDir::new(dir.path().join("whole"));
    run_to_end(&whole, &mut line(4), &config()).unwrap();
    // The state up to the log's length in bytes (wall times in the log differ in their digits).
    let state_of = |run: &RunDir| {
        let mut v: serde_json::Value = run.read_json("checkpoints/state.json").unwrap();
        v.as_object_mut().unwrap().remove("log_len");
        v
    };
    let reference_state = state_of(&whole);
    for (i, stage) in [
        CheckpointStage::LogAppended,
        CheckpointStage::ModelWritten,
        CheckpointStage::OptimiserWritten,
        CheckpointStage::SetWritten,
        CheckpointStage::StateRenamed,
    ]
    .into_iter()
    .enumerate()
    {
        let run = RunDir::new(dir.path().join(format!("cut{i}")));
        let stopped = EngineConfig { interrupt: Some((2, stage)), ..config() };
        let e = run_to_end(&run, &mut line(4), &stopped).unwrap_err();
        assert!(matches!(e, TrainError::Interrupted(_)), "{e}");
        // What the state names is complete; the log holds exactly the lines up to the named epoch, or one more
        // that resumption cuts off.
        let state: engine::EngineState = run.read_json("checkpoints/state.json").unwrap();
        let named = if stage == CheckpointStage::StateRenamed { 2 } else { 1 };
        assert_eq!(state.epochs_done, named, "{stage:?}");
        for f in ["model.mpk", "optim.mpk", "state.json"] {
            assert!(run.checkpoint(&state.checkpoint).join(f).is_file(), "{stage:?}: {f}");
        }
        let resumed = run_to_end(&run, &mut line(4), &config()).unwrap();
        assert_eq!(resumed.resumed_after, Some(named), "{stage:?}");
        assert_eq!(std::fs::read(run.best_model()).unwrap(), std::fs::read(whole.best_model()).unwrap(), "{stage:?}");
        assert_eq!(log_without_times(&run), log_without_times(&whole), "{stage:?}");
        assert_eq!(state_of(&run), reference_state, "{stage:?}");
        // Only the last set and the best one remain.
        let sets = std::fs::read_dir(run.checkpoint("")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count();
        assert!(sets <= 2, "{stage:?}: {sets} sets");
    }
}

#[test]
fn a_half_written_log_line_is_cut_on_resumption() {
    let dir = tempfile::tempdir().unwrap();
    let whole = RunDir::new(dir.path().join("whole"));
    run_to_end(&whole, &mut line(3), &config()).unwrap();
    let run = RunDir::new(dir.path().join("run"));
    run_to_end(&run, &mut line(3), &EngineConfig { stop_after: Some(2), ..config() }).unwrap();
    // A kill in the middle of appending epoch 3's line.
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(run.log()).unwrap().write_all(b"{\"epoch\":3,\"ste").unwrap();
    run_to_end(&run, &mut line(3), &config()).unwrap();
    assert_eq!(log_without_times(&run), log_without_times(&whole));
}

#[test]
fn divergence_names_the_epoch_and_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    let mut task = Line { blow_up: Some((2, 3)), ..line(5) };
    let e = run_to_end(&run, &mut task, &config()).unwrap_err().to_string();
    assert!(e.contains("diverged at epoch 3, step 14 (loss inf)") && e.contains("after epoch 2 is kept"), "{e}");
    let state: engine::EngineState = run.read_json("checkpoints/state.json").unwrap();
    assert_eq!(state.epochs_done, 2);
    assert_eq!(std::fs::read_to_string(run.log()).unwrap().lines().count(), 2);
    // Resumed without the fault, it finishes.
    let out = run_to_end(&run, &mut line(5), &config()).unwrap();
    assert_eq!((out.resumed_after, out.state.epochs_done), (Some(2), 5));
}

#[test]
fn early_stopping_ends_after_the_patience_and_keeps_the_best_set() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    let mut task = Line { scripted: Some(vec![0.1, 0.5, 0.4, 0.3, 0.2, 0.9, 0.9, 0.9]), ..line(8) };
    let out = run_to_end(&run, &mut task, &EngineConfig { early_stopping_patience: Some(3), ..config() }).unwrap();
    assert!(out.state.stopped_early);
    assert_eq!((out.state.epochs_done, out.state.best_epoch), (5, Some(2)));
    assert_eq!(out.state.best_checkpoint.as_deref(), Some("epoch-0002"));
    assert_eq!(std::fs::read(run.best_model()).unwrap(), std::fs::read(run.checkpoint("epoch-0002").join("model.mpk")).unwrap());
    let best: Vec<bool> = log_without_times(&run).iter().map(|l| l.best).collect();
    assert_eq!(best, [true, true, false, false, false]);
}

#[test]
fn a_changed_recipe_is_refused_with_the_differing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    run_to_end(&run, &mut line(2), &config()).unwrap();
    let rules = ResumeRules { free: vec!["train.lr".into()], length: vec!["train.epochs".into()], schedule_depends: true };
    std::fs::write(run.recipe(), "seed = 1\n[train]\nepochs = 2\nlr = 0.1\n").unwrap();
    let e = engine::prepare(&run, "seed = 2\n[train]\nepochs = 2\nlr = 0.1\nbatch = 3\n", &rules).unwrap_err().to_string();
    assert!(e.contains("differing keys: seed, train.batch"), "{e}");
    let e = engine::prepare(&run, "seed = 1\n[train]\nepochs = 4\nlr = 0.1\n", &rules).unwrap_err().to_string();
    assert!(e.contains("train.epochs changed") && e.contains("schedule depends"), "{e}");
    engine::prepare(&run, "seed = 1\n[train]\nepochs = 2\nlr = 0.01\n", &rules).unwrap();
    let free_length = ResumeRules { schedule_depends: false, ..rules };
    engine::prepare(&run, "seed = 1\n[train]\nepochs = 4\nlr = 0.01\n", &free_length).unwrap();
}
