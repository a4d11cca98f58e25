//! Data-parallel training: a batch split across devices (here replicas of the CPU device, one after another or in
//! threads) ends in the same weights as one device training on the same global batches, with and without a layer
//! plan, and with uneven parts.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, activation};
use vesalius_train::engine::{self, EngineConfig, shard_ranges, stream_seed};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::transfer::{Freeze, LayerPlan};
use vesalius_train::{RunDir, Stepper, Task, TrainError, Validation};

use crate::{AD, Device, P};

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    a: Linear<B>,
    b: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.b.forward(activation::tanh(self.a.forward(x)))
    }
}

const BATCH: usize = 16;

fn uniform(seed: u64, i: u64) -> f32 {
    (stream_seed(seed, 7, i) >> 40) as f32 / (1u64 << 24) as f32
}

/// A batch of y = sin(2 x₀) + x₁² drawn from `seed`, on `device`.
fn batch<Bk: Backend>(seed: u64, device: &Bk::Device) -> (Tensor<Bk, 2>, Tensor<Bk, 2>) {
    let xs: Vec<f32> = (0..2 * BATCH as u64).map(|i| uniform(seed, i) * 2.0 - 1.0).collect();
    let ys: Vec<f32> = xs.chunks(2).map(|p| (2.0 * p[0]).sin() + p[1] * p[1]).collect();
    (Tensor::from_data(TensorData::new(xs, [BATCH, 2]), device), Tensor::from_data(TensorData::new(ys, [BATCH, 1]), device))
}

/// Fits the surface with the batch split by [`Stepper::step_split`]; records each step's returned loss.
struct Surface {
    plan: Option<LayerPlan>,
    losses: Vec<f64>,
    /// The parts each step's loss function was called with.
    parts: Vec<Vec<std::ops::Range<usize>>>,
    /// The first layer's initial weights and bias.
    init: Vec<f32>,
}

fn layer_values<Bk: Backend>(l: &Linear<Bk>) -> Vec<f32> {
    let mut v = l.weight.val().into_data().to_vec::<f32>().unwrap();
    v.extend(l.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap());
    v
}

impl Task<AD> for Surface {
    type Model = Mlp<AD>;
    type Error = TrainError;
    fn init_model(&mut self, device: &Device) -> Result<Mlp<AD>, TrainError> {
        let model = Mlp { a: LinearConfig::new(2, 12).init(device), b: LinearConfig::new(12, 1).init(device) };
        self.init = layer_values(&model.a);
        Ok(model)
    }
    fn epochs(&self) -> usize {
        3
    }
    fn lr(&self, _epoch: usize) -> f64 {
        0.02
    }
    fn layer_plan(&self) -> Option<&LayerPlan> {
        self.plan.as_ref()
    }
    fn train_epoch<O: Optimizer<Mlp<AD>, AD>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, AD, Mlp<AD>, O>,
    ) -> Result<(), TrainError> {
        for step in 0..4 {
            let (x, y) = batch::<AD>(stream_seed(11, epoch as u64, step), stepper.device());
            let seen = std::sync::Mutex::new(Vec::new());
            let loss = stepper.step_split(BATCH, 1.0, |model: &Mlp<AD>, range: std::ops::Range<usize>, device: &Device| {
                seen.lock().unwrap().push(range.clone());
                let (x, y) = (x.clone().slice(range.clone()).to_device(device), y.clone().slice(range).to_device(device));
                Ok::<_, TrainError>((model.forward(x) - y).powi_scalar(2).mean())
            })?;
            let mut seen = seen.into_inner().unwrap();
            seen.sort_by_key(|r| r.start);
            self.parts.push(seen);
            self.losses.push(loss);
        }
        Ok(())
    }
    fn validate(
        &mut self,
        _m: &<Mlp<AD> as AutodiffModule<AD>>::InnerModule,
        _e: usize,
        _d: &Device,
    ) -> Result<Option<Validation>, TrainError> {
        Ok(None)
    }
}

/// The final weights (both layers, flattened), each step's loss and parts, and the log's training losses.
struct Fitted {
    weights: Vec<f32>,
    losses: Vec<f64>,
    parts: Vec<Vec<std::ops::Range<usize>>>,
    log: Vec<f64>,
    init: Vec<f32>,
}

fn fit(devices: usize, threads: bool, plan: Option<LayerPlan>) -> Fitted {
    let _turn = crate::take_turn();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    engine::prepare(&run, "x = 1\n", &ResumeRules::default()).unwrap();
    let mut task = Surface { plan, losses: Vec::new(), parts: Vec::new(), init: Vec::new() };
    let config = EngineConfig { seed: 5, quiet: true, devices, threads, ..Default::default() };
    engine::train(&run, &mut task, AdamConfig::new().init(), &config, &Default::default(), |_| {}).unwrap();
    let device = Default::default();
    let init = Mlp::<P> { a: LinearConfig::new(2, 12).init(&device), b: LinearConfig::new(12, 1).init(&device) };
    let model = engine::load_module::<P, _>(init, &run.best_model(), &device).unwrap();
    let mut weights = layer_values(&model.a);
    weights.extend(layer_values(&model.b));
    let log = run.read_log().unwrap().iter().map(|r| r.train_loss).collect();
    Fitted { weights, losses: task.losses, parts: task.parts, log, init: task.init }
}

fn assert_close(a: &Fitted, b: &Fitted, what: &str) {
    assert_eq!(a.weights.len(), b.weights.len());
    let moved = a.weights.iter().zip(&b.weights).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(moved < 2e-5, "{what}: weights differ by up to {moved}");
    for (x, y) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{what}: step losses {x} vs {y}");
    }
    for (x, y) in a.log.iter().zip(&b.log) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{what}: logged losses {x} vs {y}");
    }
}

#[test]
fn parts_are_contiguous_and_differ_by_at_most_one() {
    assert_eq!(shard_ranges(16, 3), vec![0..6, 6..11, 11..16]);
    assert_eq!(shard_ranges(16, 1), vec![0..16]);
    assert_eq!(shard_ranges(2, 4), vec![0..1, 1..2]);
    assert_eq!(shard_ranges(0, 2), Vec::<std::ops::Range<usize>>::new());
    // The CPU backend has one device: further devices are replicas of it.
    let devices = engine::devices::<P>(&Default::default(), 3);
    assert_eq!(devices.len(), 3);
    assert!(devices.iter().all(|d| *d == devices[0]));
    assert_eq!(engine::devices::<P>(&Default::default(), usize::MAX).len(), engine::MAX_DEVICES);
}

#[test]
fn a_batch_split_across_devices_trains_as_on_one_device() {
    let one = fit(1, false, None);
    assert_eq!(one.parts[0], vec![0..BATCH], "one device: one call on the whole batch");
    assert_eq!(one.losses.len(), 12);
    assert!(one.losses[11] < one.losses[0], "it learns: {:?}", one.losses);
    let two = fit(2, false, None);
    assert_eq!(two.parts[0], vec![0..8, 8..16]);
    assert_close(&one, &two, "two replicas");
    // Uneven parts (6, 5, 5) are weighted by their share of the batch.
    let three = fit(3, false, None);
    assert_eq!(three.parts[0], vec![0..6, 6..11, 11..16]);
    assert_close(&one, &three, "three replicas");
    // The same parts in threads.
    let threaded = fit(3, true, None);
    assert_close(&one, &threaded, "three replicas in threads");
    // Different batches do train differently: the comparison can fail.
    let other = Fitted { weights: one.weights.iter().map(|w| w + 1e-3).collect(), ..fit(1, false, None) };
    assert!(std::panic::catch_unwind(|| assert_close(&one, &other, "moved")).is_err());
}

#[test]
fn a_layer_plan_holds_across_devices() {
    let groups = vec!["a".to_string(), "b".to_string()];
    let plan =
        || Some(LayerPlan::new(&groups, &Freeze::Layers(vec!["a".into()]), None, &BTreeMap::from([("b".to_string(), 0.5)])).unwrap());
    let one = fit(1, false, plan());
    let two = fit(2, true, plan());
    assert_close(&one, &two, "frozen a, b at half rate");
    // Layer a (the first 36 values) never moved; b did.
    assert_eq!(two.weights[..36], two.init[..], "a frozen layer keeps its weights");
    let plain = fit(2, true, None);
    assert_ne!(plain.weights[..36], plain.init[..]);
    assert_eq!(plain.init, two.init);
    assert!(two.weights[36..].iter().zip(&plain.weights[36..]).any(|(x, y)| x != y));
}
