//! Neural survival models on the shared engine, trained on full batches with Adam, dropout and L2 weight decay,
//! the epoch with the best validation Harrell's C kept:
//!
//! * DeepSurv (Katzman et al. 2018): a multi-layer perceptron whose output is the log-risk `f(x)` of a Cox model,
//!   trained with the negative Cox partial log-likelihood (Breslow ties); survival curves from Breslow's baseline
//!   hazard on the training patients, `S(t | x) = exp(−H₀(t) · e^{f(x)})`.
//! * The logistic-hazard (discrete-time) model (Gensheimer and Narasimhan 2019; pycox's `LogisticHazard`): time cut
//!   into intervals at quantiles of the training event times, one output per interval giving the conditional
//!   hazard `hₖ = σ(zₖ)`; the likelihood of surviving every interval before the subject's, then the event (or
//!   surviving it, when censored) in it; `S(t) = Π_{cutₖ ≤ t} (1 − hₖ)`, and the risk score the cumulative hazard
//!   `Σₖ −ln(1 − hₖ)` over all intervals.
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use vesalius_nets::{Mlp, MlpConfig};
use vesalius_train::engine::{self, RunOptions};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::PredError;
use crate::recipe::ModelSection;

/// The network of a neural survival model with `inputs` features and `outputs` outputs (1 for DeepSurv, one per
/// interval for the logistic hazard).
pub fn network<B: Backend>(inputs: usize, outputs: usize, spec: &ModelSection, device: &B::Device) -> Mlp<B> {
    MlpConfig::new(inputs, outputs).with_hidden(spec.hidden.clone()).with_dropout(spec.dropout).init(device)
}

/// The network's outputs for standardised rows, `[rows][outputs]`.
pub fn outputs<B: Backend>(net: &Mlp<B>, rows: &[Vec<f64>], device: &B::Device) -> Vec<Vec<f64>> {
    if rows.is_empty() {
        return Vec::new();
    }
    let p = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [rows.len(), 1, 1, p]), device);
    let y = net.forward(x);
    let k = y.dims()[1];
    let v: Vec<f64> = y.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(f64::from).collect();
    v.chunks(k.max(1)).map(<[f64]>::to_vec).collect()
}

/// Interval upper bounds for the logistic hazard: `k` quantiles of the training event times (distinct, the last the
/// largest event time).
pub fn cuts(time: &[f64], event: &[bool], k: usize) -> Vec<f64> {
    let mut t: Vec<f64> = time.iter().zip(event).filter(|(_, e)| **e).map(|(t, _)| *t).collect();
    t.sort_by(f64::total_cmp);
    if t.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<f64> = (1..=k).map(|i| t[((i as f64 / k as f64) * (t.len() - 1) as f64).round() as usize]).collect();
    out.dedup();
    out
}

/// The interval of a time: the first cut at or after it (`cuts.len()` beyond the last).
pub fn interval(cuts: &[f64], t: f64) -> usize {
    cuts.partition_point(|&c| c < t)
}

/// Survival at `t` from per-interval logits: `Π_{cutₖ ≤ t} (1 − σ(zₖ))`.
pub fn lh_survival(logits: &[f64], cuts: &[f64], t: f64) -> f64 {
    let done = cuts.partition_point(|&c| c <= t);
    logits[..done.min(logits.len())].iter().map(|z| 1.0 - 1.0 / (1.0 + (-z).exp())).product()
}

/// The logistic hazard's risk score: the cumulative hazard over all intervals, `Σ ln(1 + e^{zₖ})`.
pub fn lh_risk(logits: &[f64]) -> f64 {
    logits.iter().map(|z| if *z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }).sum()
}

/// The logistic-hazard negative log-likelihood per subject: binary cross-entropy of the logits against targets
/// `y` (1 in the event's interval) over the intervals `mask` marks (up to and including the subject's).
pub fn lh_loss<B: Backend>(logits: Tensor<B, 2>, y: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = logits.dims()[0] as f64;
    // softplus(z) − y·z, computed stably: max(z, 0) + ln(1 + e^{−|z|}) − y·z.
    let softplus = logits.clone().clamp_min(0.0) + logits.clone().abs().neg().exp().log1p();
    ((softplus - y * logits) * mask).sum() / n
}

/// Targets and masks of the logistic hazard for rows with `time` and `event`.
pub fn lh_targets(cuts: &[f64], time: &[f64], event: &[bool]) -> (Vec<f32>, Vec<f32>) {
    let k = cuts.len();
    let (mut y, mut m) = (vec![0.0f32; time.len() * k], vec![0.0f32; time.len() * k]);
    for i in 0..time.len() {
        let j = interval(cuts, time[i]);
        for c in 0..k.min(j + 1) {
            m[i * k + c] = 1.0;
        }
        if event[i] && j < k {
            y[i * k + j] = 1.0;
        }
    }
    (y, m)
}

/// Log-risks of standardised rows.
pub fn log_risk<B: Backend>(net: &Mlp<B>, rows: &[Vec<f64>], device: &B::Device) -> Vec<f64> {
    if rows.is_empty() {
        return Vec::new();
    }
    let p = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [rows.len(), 1, 1, p]), device);
    net.forward(x).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(f64::from).collect()
}

/// The negative Cox partial log-likelihood (Breslow ties) per event of log-risks `eta`, for subjects sorted by
/// decreasing time: `group_end[k]` is the last index of `k`'s tie group, `events` the 0/1 event flags.
pub fn cox_loss<B: Backend>(eta: Tensor<B, 1>, group_end: Tensor<B, 1, Int>, events: Tensor<B, 1>, n_events: f64) -> Tensor<B, 1> {
    let m = eta.clone().detach().max();
    let shifted = eta.clone() - m.clone();
    let risk_set = shifted.exp().cumsum(0).select(0, group_end).log() + m;
    ((eta - risk_set) * events).sum().neg() / n_events
}

/// Subjects sorted by decreasing time, with their tie groups.
pub struct Sorted {
    /// Standardised features, in order.
    pub x: Vec<f32>,
    /// Features per subject.
    pub p: usize,
    /// The last index of each subject's tie group.
    pub group_end: Vec<i64>,
    /// 0/1 events.
    pub events: Vec<f32>,
}

impl Sorted {
    /// Sorts rows by decreasing time.
    pub fn new(x: &[Vec<f64>], time: &[f64], event: &[bool]) -> Self {
        let mut order: Vec<usize> = (0..time.len()).collect();
        order.sort_by(|&a, &b| time[b].total_cmp(&time[a]));
        let n = order.len();
        let mut group_end = vec![0i64; n];
        let mut k = 0;
        while k < n {
            let mut end = k;
            while end + 1 < n && time[order[end + 1]] == time[order[k]] {
                end += 1;
            }
            group_end[k..=end].iter_mut().for_each(|g| *g = end as i64);
            k = end + 1;
        }
        Self {
            x: order.iter().flat_map(|&i| x[i].iter().map(|&v| v as f32)).collect(),
            p: x.first().map_or(0, Vec::len),
            group_end,
            events: order.iter().map(|&i| if event[i] { 1.0 } else { 0.0 }).collect(),
        }
    }
}

struct DeepSurvTask<'a> {
    spec: &'a ModelSection,
    train: Sorted,
    val: (&'a [Vec<f64>], &'a [f64], &'a [bool]),
    inputs: usize,
    /// Logistic hazard: the interval cuts, and targets and masks in the sorted order.
    lh: Option<(Vec<f64>, Vec<f32>, Vec<f32>)>,
}

impl<B: AutodiffBackend> Task<B> for DeepSurvTask<'_> {
    type Model = Mlp<B>;
    type Error = PredError;

    fn init_model(&mut self, device: &B::Device) -> Result<Mlp<B>, PredError> {
        Ok(network(self.inputs, self.lh.as_ref().map_or(1, |(c, _, _)| c.len()), self.spec, device))
    }

    fn epochs(&self) -> usize {
        self.spec.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.spec.steps
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.spec.lr
    }

    fn train_epoch<O: Optimizer<Mlp<B>, B>>(&mut self, _epoch: usize, stepper: &mut Stepper<'_, B, Mlp<B>, O>) -> Result<(), PredError> {
        let device = stepper.device().clone();
        let n = self.train.events.len();
        let n_events = self.train.events.iter().sum::<f32>() as f64;
        // The full batch, made once per epoch (tensors are shared, not copied, by `clone`).
        let x = Tensor::<B, 4>::from_data(TensorData::new(self.train.x.clone(), [n, 1, 1, self.train.p]), &device);
        let ends = Tensor::<B, 1, Int>::from_data(TensorData::new(self.train.group_end.clone(), [n]), &device);
        let events = Tensor::<B, 1>::from_data(TensorData::new(self.train.events.clone(), [n]), &device);
        let lh = self.lh.as_ref().map(|(cuts, y, m)| {
            let k = cuts.len();
            (
                Tensor::<B, 2>::from_data(TensorData::new(y.clone(), [n, k]), &device),
                Tensor::<B, 2>::from_data(TensorData::new(m.clone(), [n, k]), &device),
            )
        });
        for _ in 0..self.spec.steps {
            let out = stepper.model().forward(x.clone());
            let loss = match &lh {
                Some((y, m)) => lh_loss(out, y.clone(), m.clone()),
                None => cox_loss(out.reshape([n]), ends.clone(), events.clone(), n_events),
            };
            stepper.step(loss)?;
        }
        Ok(())
    }

    fn validate(&mut self, model: &Mlp<B::InnerBackend>, _epoch: usize, device: &B::Device) -> Result<Option<Validation>, PredError> {
        let (x, t, e) = self.val;
        let risk = match &self.lh {
            Some(_) => outputs(model, x, device).iter().map(|z| lh_risk(z)).collect(),
            None => log_risk(model, x, device),
        };
        let c = vesalius_eval::survival::harrell_c(t, e, &risk).map(|c| c.c).ok();
        Ok(Some(Validation::new().maybe("c_index", c).maybe_score(c)))
    }
}

/// What may change when a DeepSurv run resumes: the learning rate and the number of epochs.
pub fn resume_rules() -> ResumeRules {
    ResumeRules { free: vec!["model.lr".into()], length: vec!["model.epochs".into()], schedule_depends: false }
}

/// Trains DeepSurv (or, with `lh_cuts`, the logistic hazard) on standardised training rows, selecting by
/// Harrell's C on the validation rows; returns the best network.
pub fn train<B: AutodiffBackend>(
    run: &RunDir,
    recipe_toml: &str,
    spec: &ModelSection,
    seed: u64,
    train: (&[Vec<f64>], &[f64], &[bool]),
    val: (&[Vec<f64>], &[f64], &[bool]),
    lh_cuts: Option<&[f64]>,
    device: &B::Device,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<Mlp<B::InnerBackend>, PredError> {
    train_dyn::<B>(run, recipe_toml, spec, seed, train, val, lh_cuts, device, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<B: AutodiffBackend>(
    run: &RunDir,
    recipe_toml: &str,
    spec: &ModelSection,
    seed: u64,
    train: (&[Vec<f64>], &[f64], &[bool]),
    val: (&[Vec<f64>], &[f64], &[bool]),
    lh_cuts: Option<&[f64]>,
    device: &B::Device,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Mlp<B::InnerBackend>, PredError> {
    engine::prepare(run, recipe_toml, &resume_rules())?;
    let inputs = train.0.first().map_or(0, Vec::len);
    let sorted = Sorted::new(train.0, train.1, train.2);
    let lh = lh_cuts.map(|cuts| {
        // Targets in the sorted order (decreasing time) that `Sorted` uses.
        let mut order: Vec<usize> = (0..train.1.len()).collect();
        order.sort_by(|&a, &b| train.1[b].total_cmp(&train.1[a]));
        let t: Vec<f64> = order.iter().map(|&i| train.1[i]).collect();
        let e: Vec<bool> = order.iter().map(|&i| train.2[i]).collect();
        let (y, m) = lh_targets(cuts, &t, &e);
        (cuts.to_vec(), y, m)
    });
    let outputs_n = lh.as_ref().map_or(1, |(c, _, _)| c.len());
    let mut task = DeepSurvTask { spec, train: sorted, val, inputs, lh };
    let mut cfg = AdamConfig::new().with_epsilon(1e-8);
    if spec.weight_decay > 0.0 {
        cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(spec.weight_decay as f32)));
    }
    let config = RunOptions { quiet: true, ..Default::default() }.config(seed, spec.early_stopping_patience);
    engine::train(run, &mut task, cfg.init::<B, Mlp<B>>(), &config, device, on_epoch)?;
    let template = network::<B::InnerBackend>(inputs, outputs_n, spec, device);
    Ok(engine::load_module(template, &run.best_model(), device)?)
}

/// Loads a neural survival run's best network.
pub fn load<B: Backend>(run: &RunDir, inputs: usize, outputs: usize, spec: &ModelSection, device: &B::Device) -> Result<Mlp<B>, PredError> {
    let net = network::<B>(inputs, outputs, spec, device);
    let net: Mlp<B> = engine::load_module(net, &run.best_model(), device)?;
    Ok(net.no_grad())
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::Flex;

    #[test]
    fn logistic_hazard_targets_survival_and_loss() {
        let cuts = [2.0, 4.0, 6.0];
        let (y, m) = lh_targets(&cuts, &[1.0, 4.0, 5.0, 9.0], &[true, true, false, false]);
        assert_eq!(m, vec![1., 0., 0., 1., 1., 0., 1., 1., 1., 1., 1., 1.]);
        assert_eq!(y, vec![1., 0., 0., 0., 1., 0., 0., 0., 0., 0., 0., 0.]);
        // Hazards ½ in every interval: S halves at each cut.
        let z = [0.0, 0.0, 0.0];
        assert_eq!((lh_survival(&z, &cuts, 1.0), lh_survival(&z, &cuts, 4.0), lh_survival(&z, &cuts, 7.0)), (1.0, 0.25, 0.125));
        assert!((lh_risk(&z) - 3.0 * 2f64.ln()).abs() < 1e-12);
        // The loss is the masked binary cross-entropy: at logits 0 every term is ln 2.
        let device = Default::default();
        let t = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [4, 3]), &device);
        let loss: f32 = lh_loss(t(vec![0.0; 12]), t(y), t(m.clone())).into_scalar();
        let terms = m.iter().sum::<f32>();
        assert!((loss - terms * 2f32.ln() / 4.0).abs() < 1e-6);
    }

    #[test]
    fn the_loss_equals_the_breslow_partial_likelihood() {
        // Times with a tie; the Cox model's Breslow log-likelihood at β = 1 on x gives the same value per event.
        let time = [5.0, 3.0, 3.0, 1.0, 4.0];
        let event = [true, true, false, true, false];
        let x = [0.3, -1.0, 0.5, 2.0, 0.1];
        let rows: Vec<Vec<f64>> = x.iter().map(|&v| vec![v]).collect();
        let s = Sorted::new(&rows, &time, &event);
        let device = Default::default();
        let eta = Tensor::<B, 1>::from_data(TensorData::new(s.x.clone(), [5]), &device);
        let ends = Tensor::<B, 1, Int>::from_data(TensorData::new(s.group_end.clone(), [5]), &device);
        let ev = Tensor::<B, 1>::from_data(TensorData::new(s.events.clone(), [5]), &device);
        let loss: f32 = cox_loss(eta, ends, ev, 3.0).into_scalar();
        // Direct: Σ over events of x_i − log Σ_{t_j ≥ t_i} e^{x_j}.
        let ll: f64 =
            (0..5).filter(|&i| event[i]).map(|i| x[i] - (0..5).filter(|&j| time[j] >= time[i]).map(|j| x[j].exp()).sum::<f64>().ln()).sum();
        assert!((loss as f64 + ll / 3.0).abs() < 1e-5, "{loss} vs {}", -ll / 3.0);
    }
}
