//! The engine applies a layer plan: frozen layers keep their weights, a scaled layer moves by its scale times the
//! plain step (plain SGD, one step), gradual unfreezing releases a layer at its epoch.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vesalius_train::engine::{self, EngineConfig};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::transfer::{Freeze, LayerPlan};
use vesalius_train::{RunDir, Stepper, Task, TrainError, Validation};

use crate::{AD, Device};

#[derive(Module, Debug)]
struct Two<B: Backend> {
    a: Linear<B>,
    b: Linear<B>,
}

impl<B: Backend> Two<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.b.forward(self.a.forward(x))
    }
}

fn weights<Bk: Backend>(l: &Linear<Bk>) -> Vec<f32> {
    l.weight.val().into_data().to_vec::<f32>().unwrap()
}

/// Fits y = 2x through two linear layers; records both layers' weights at init and after every epoch.
struct Fit {
    epochs: usize,
    plan: Option<LayerPlan>,
    seen: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Task<AD> for Fit {
    type Model = Two<AD>;
    type Error = TrainError;
    fn init_model(&mut self, device: &Device) -> Result<Two<AD>, TrainError> {
        let m = Two { a: LinearConfig::new(1, 4).init(device), b: LinearConfig::new(4, 1).init(device) };
        self.seen.push((weights(&m.a), weights(&m.b)));
        Ok(m)
    }
    fn epochs(&self) -> usize {
        self.epochs
    }
    fn lr(&self, _epoch: usize) -> f64 {
        0.1
    }
    fn layer_plan(&self) -> Option<&LayerPlan> {
        self.plan.as_ref()
    }
    fn train_epoch<O: Optimizer<Two<AD>, AD>>(
        &mut self,
        _epoch: usize,
        stepper: &mut Stepper<'_, AD, Two<AD>, O>,
    ) -> Result<(), TrainError> {
        let x = Tensor::<AD, 2>::from_data(TensorData::new(vec![1.0f32, -0.5, 2.0], [3, 1]), stepper.device());
        let y = x.clone() * 2.0;
        let loss = (stepper.model().forward(x) - y).powi_scalar(2).mean();
        stepper.step(loss)?;
        Ok(())
    }
    fn validate(
        &mut self,
        model: &<Two<AD> as AutodiffModule<AD>>::InnerModule,
        _e: usize,
        _d: &Device,
    ) -> Result<Option<Validation>, TrainError> {
        self.seen.push((weights(&model.a), weights(&model.b)));
        Ok(Some(Validation::new().score(0.0)))
    }
}

fn fit(epochs: usize, plan: Option<LayerPlan>) -> Vec<(Vec<f32>, Vec<f32>)> {
    let _turn = crate::take_turn();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path().join("run"));
    engine::prepare(&run, "x = 1\n", &ResumeRules::default()).unwrap();
    let mut task = Fit { epochs, plan, seen: Vec::new() };
    let config = EngineConfig { seed: 5, quiet: true, ..Default::default() };
    engine::train(&run, &mut task, SgdConfig::new().init(), &config, &Default::default(), |_| {}).unwrap();
    task.seen
}

fn groups() -> Vec<String> {
    vec!["a".to_string(), "b".to_string()]
}

fn delta(after: &[f32], before: &[f32]) -> Vec<f32> {
    after.iter().zip(before).map(|(x, y)| x - y).collect()
}

#[test]
fn frozen_layers_keep_their_weights_and_scaled_layers_move_by_their_scale() {
    let plain = fit(1, None);
    let frozen = fit(1, Some(LayerPlan::new(&groups(), &Freeze::Layers(vec!["a".into()]), None, &BTreeMap::new()).unwrap()));
    let scaled = fit(1, Some(LayerPlan::new(&groups(), &Freeze::None, None, &BTreeMap::from([("a".to_string(), 0.5)])).unwrap()));
    // Same seed, same initial weights.
    assert_eq!(plain[0], frozen[0]);
    assert_eq!(plain[0], scaled[0]);
    let (a0, b0) = &plain[0];
    let plain_da = delta(&plain[1].0, a0);
    assert!(plain_da.iter().any(|d| d.abs() > 1e-4), "the plain step moves a: {plain_da:?}");
    // Frozen: a is untouched, b takes the plain step.
    assert_eq!(&frozen[1].0, a0);
    assert_eq!(frozen[1].1, plain[1].1);
    // Scaled by 0.5: a moves half as far, b as far.
    for (s, p) in delta(&scaled[1].0, a0).iter().zip(&plain_da) {
        assert!((s - 0.5 * p).abs() <= 1e-6 * p.abs().max(1.0), "{s} vs half of {p}");
    }
    assert_eq!(delta(&scaled[1].1, b0), delta(&plain[1].1, b0));
}

#[test]
fn gradual_unfreezing_releases_a_layer_at_its_epoch() {
    let plan = LayerPlan::new(&groups(), &Freeze::Groups(1), Some(2), &BTreeMap::new()).unwrap();
    assert_eq!(plan.frozen(1), vec!["a"]);
    assert!(plan.frozen(2).is_empty());
    let seen = fit(3, Some(plan));
    let a0 = &seen[0].0;
    assert_eq!(&seen[1].0, a0, "frozen in epoch 1");
    assert_eq!(&seen[2].0, a0, "frozen in epoch 2");
    assert_ne!(&seen[3].0, a0, "trains in epoch 3");
    assert_ne!(seen[1].1, seen[0].1, "b trains throughout");
}

#[test]
fn plans_name_unknown_layers_and_refuse_freezing_everything() {
    let err = LayerPlan::new(&groups(), &Freeze::Layers(vec!["c".into()]), None, &BTreeMap::new()).unwrap_err();
    assert!(err.contains("no layer `c`") && err.contains("a, b"), "{err}");
    let err = LayerPlan::new(&groups(), &Freeze::Groups(2), None, &BTreeMap::new()).unwrap_err();
    assert!(err.contains("all 2 layer groups"), "{err}");
    let err = LayerPlan::new(&groups(), &Freeze::None, None, &BTreeMap::from([("z".to_string(), 0.1)])).unwrap_err();
    assert!(err.contains("lr_scale"), "{err}");
}
