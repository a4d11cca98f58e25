//! Hyper-parameter search over any key of any recipe trained on the engine: a search space, random or quasi-random
//! (Sobol) sampling, schedulers that give promising trials more epochs (successive halving in Hyperband's brackets,
//! ASHA, or keeping the top k after the first rung), and early termination of hopeless trials by learning-curve
//! extrapolation ([`curve`], Domhan et al. 2015).
//!
//! A study lives in one folder: `study.json` (the recipe, the space and the settings; a study resumes only with the
//! same), one `trial-NNN/` per trial (`params.json`, `recipe.toml` — the base recipe with the trial's values — and
//! `run/`, an ordinary run folder), and after each call `trials.csv`, `best.toml` and `summary.json`. Trials are
//! trained by a [`Runner`] to a number of epochs at a time; runs resume from their checkpoints, and every decision
//! is a function of the scores already in the runs' logs, so a study killed at any point and started again with
//! the same command replays its decisions without retraining (deterministically when trials run one at a time).
//! Scores are the engine's validation scores (higher is better); a trial's score is its best epoch's.
//!
//! ```
//! use vesalius_train::tune::{Space, apply};
//! let space = Space::from_toml(r#"
//!     [params."train.lr"]
//!     type = "log_uniform"
//!     low = 1e-4
//!     high = 1e-2
//!     [params."model.arch"]
//!     type = "choice"
//!     values = ["lenet5", "resnet18"]
//! "#).unwrap();
//! let point = space.point(&[0.9, 0.5]); // unit coordinates in key order: model.arch, train.lr
//! assert!((point["train.lr"].as_float().unwrap() - 1e-3).abs() < 1e-12);
//! assert_eq!(point["model.arch"].as_str(), Some("resnet18"));
//! let recipe = apply("[train]\nlr = 0.1\n[model]\narch = \"vgg11\"\n", &point).unwrap();
//! assert!(recipe.contains("arch = \"resnet18\""));
//! ```
pub mod curve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One dimension of the search space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Uniform on `[low, high]`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Log-uniform on `[low, high]` (both positive).
    LogUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// An integer in `low..=high`.
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound (included).
        high: i64,
    },
    /// One of the values (any TOML values: numbers, strings, arrays).
    Choice {
        /// The values.
        values: Vec<toml::Value>,
    },
}

impl Dist {
    /// The value at the unit coordinate `u ∈ [0, 1)`.
    pub fn at(&self, u: f64) -> toml::Value {
        let u = u.clamp(0.0, 1.0 - 1e-12);
        match self {
            Dist::Uniform { low, high } => toml::Value::Float(low + u * (high - low)),
            Dist::LogUniform { low, high } => toml::Value::Float((low.ln() + u * (high.ln() - low.ln())).exp()),
            Dist::Int { low, high } => toml::Value::Integer(low + ((u * (high - low + 1) as f64).floor() as i64).min(high - low)),
            Dist::Choice { values } => values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone(),
        }
    }
}

/// The search space (`SPACE.toml`): one `[params."dotted.key"]` table per recipe key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    /// Recipe key → distribution.
    pub params: BTreeMap<String, Dist>,
}

impl Space {
    /// Parses and checks a space.
    pub fn from_toml(text: &str) -> Result<Self, TrainError> {
        let space: Space = toml::from_str(text).map_err(|e| TrainError::Input(format!("search space: {e}")))?;
        if space.params.is_empty() || space.params.len() > 256 {
            return Err(TrainError::Input("search space: between 1 and 256 [params.\"key\"] tables".into()));
        }
        for (k, d) in &space.params {
            let ok = match d {
                Dist::Uniform { low, high } => low.is_finite() && high.is_finite() && low < high,
                Dist::LogUniform { low, high } => *low > 0.0 && high.is_finite() && low < high,
                Dist::Int { low, high } => low <= high,
                Dist::Choice { values } => !values.is_empty(),
            };
            if !ok {
                return Err(TrainError::Input(format!(
                    "search space: \"{k}\" needs low < high (both positive for log_uniform) or at least one value"
                )));
            }
        }
        Ok(space)
    }

    /// The point at unit coordinates `u` (one per parameter, in key order).
    pub fn point(&self, u: &[f64]) -> BTreeMap<String, toml::Value> {
        self.params.iter().zip(u).map(|((k, d), &x)| (k.clone(), d.at(x))).collect()
    }
}

/// How points are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Independent uniform draws (seeded).
    Random,
    /// An Owen-scrambled Sobol sequence (seeded): quasi-random, covering the space evenly.
    #[default]
    Sobol,
}

/// Unit coordinates of trial `index` in `dims` dimensions.
pub fn unit_sample(sampler: Sampler, seed: u64, index: usize, dims: usize) -> Vec<f64> {
    match sampler {
        Sampler::Random => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(vesalius_io::mix(seed ^ (index as u64).wrapping_mul(0x9E37_79B9)));
            (0..dims).map(|_| rng.random::<f64>()).collect()
        }
        Sampler::Sobol => {
            (0..dims).map(|d| f64::from(sobol_burley::sample(index as u32, d as u32, vesalius_io::mix(seed) as u32))).collect()
        }
    }
}

/// The recipe with each dotted key set to its value; every table on a key's path must exist in the recipe.
pub fn apply(recipe: &str, params: &BTreeMap<String, toml::Value>) -> Result<String, TrainError> {
    let mut table: toml::Table = recipe.parse().map_err(|e| TrainError::Input(format!("recipe: {e}")))?;
    for (key, value) in params {
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, path) = parts.split_last().ok_or_else(|| TrainError::Input("search space: an empty key".into()))?;
        let mut t = &mut table;
        for (i, part) in path.iter().enumerate() {
            t = t.get_mut(*part).and_then(toml::Value::as_table_mut).ok_or_else(|| {
                TrainError::Input(format!("search space key \"{key}\": the recipe has no table [{}]", parts[..=i].join(".")))
            })?;
        }
        t.insert((*leaf).to_string(), value.clone());
    }
    toml::to_string(&table).map_err(|e| TrainError::Internal(format!("recipe: {e}")))
}

/// How trials share the epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Every trial to the full budget (early termination by `curve_stop` only).
    #[default]
    None,
    /// Hyperband (Li et al. 2018): brackets of successive halving from `budget / η^s` epochs up, keeping the best
    /// `1/η` at each rung.
    Hyperband,
    /// Asynchronous successive halving (ASHA, Li et al. 2020): a trial moves to the next rung (× η epochs) as soon as
    /// it is in the top `1/η` of those that reached its rung; otherwise a new trial starts.
    Asha,
    /// Every trial for `min_epochs`, then the best `keep` to the full budget.
    TopK,
}

/// A study's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyConfig {
    /// Trials (configurations drawn).
    pub trials: usize,
    /// The scheduler.
    pub scheduler: Scheduler,
    /// The sampler.
    pub sampler: Sampler,
    /// Seed of the sampler.
    pub seed: u64,
    /// Epochs of a full trial (the recipe's).
    pub budget: usize,
    /// Reduction factor of the schedulers.
    pub eta: usize,
    /// Epochs of the first rung.
    pub min_epochs: usize,
    /// `TopK`: trials kept after the first rung (default `⌈trials / η⌉`).
    pub keep: Option<usize>,
    /// Stop a trial when the probability that it beats the best complete trial in its remaining epochs falls below
    /// `curve_threshold` (scheduler `None`).
    pub curve_stop: bool,
    /// See `curve_stop`.
    pub curve_threshold: f64,
    /// Epochs between curve checks (default `max(1, budget / 10)`).
    pub curve_every: Option<usize>,
    /// Validation scores needed before the first check (default `max(5, budget / 5)`).
    pub curve_min_points: Option<usize>,
    /// Trials trained at once.
    pub parallel: usize,
}

impl Default for StudyConfig {
    fn default() -> Self {
        Self {
            trials: 20,
            scheduler: Scheduler::None,
            sampler: Sampler::Sobol,
            seed: 0,
            budget: 10,
            eta: 3,
            min_epochs: 1,
            keep: None,
            curve_stop: false,
            curve_threshold: 0.05,
            curve_every: None,
            curve_min_points: None,
            parallel: 1,
        }
    }
}

/// What a trial's run holds after a call of the runner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Validation score per completed epoch (`None` where the epoch did not validate).
    pub scores: Vec<Option<f64>>,
    /// Whether the run ended before its budget (early stopping).
    pub stopped_early: bool,
}

impl Progress {
    /// The progress of an engine run folder: its log's scores and its state.
    pub fn read(run: &Path) -> Result<Self, TrainError> {
        let dir = crate::RunDir::new(run);
        if !dir.log().is_file() {
            return Ok(Self::default());
        }
        let log = dir.read_log()?;
        let state = crate::engine::read_state(&dir)?;
        Ok(Self { scores: log.iter().map(|r| r.score).collect(), stopped_early: state.is_some_and(|s| s.stopped_early) })
    }

    /// The best score so far.
    pub fn best(&self) -> Option<f64> {
        self.scores.iter().flatten().copied().filter(|v| v.is_finite()).reduce(f64::max)
    }
}

/// Trains trials: `run(recipe, run_dir, epochs)` trains the run in `run_dir` from `recipe` until it has `epochs`
/// epochs (resuming it; nothing to do when it has them) and reports its progress.
pub trait Runner: Sync {
    /// Trains to `epochs` epochs.
    fn run(&self, recipe: &Path, run_dir: &Path, epochs: usize) -> Result<Progress, String>;
}

/// How a trial ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trained to the full budget (or stopped early by its own recipe).
    Complete,
    /// Left behind by the scheduler.
    Stopped,
    /// Terminated by the learning-curve rule: the probability of beating the best was below the threshold.
    CurveStopped {
        /// That probability.
        probability: f64,
    },
    /// The runner failed.
    Failed {
        /// Its message.
        message: String,
    },
    /// Not trained.
    Pending,
}

/// One trial of a study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Index.
    pub index: usize,
    /// Its values.
    pub params: BTreeMap<String, toml::Value>,
    /// Epochs trained.
    pub epochs: usize,
    /// Best validation score.
    pub best: Option<f64>,
    /// How it ended.
    pub status: Status,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The best complete trial (the best trial of any status when none completed).
    pub best_trial: Option<usize>,
    /// Its score.
    pub best_score: Option<f64>,
    /// Epochs trained over all trials.
    pub epochs_trained: usize,
    /// Trials per status name.
    pub statuses: BTreeMap<String, usize>,
    /// The trials.
    pub trials: Vec<Trial>,
}

/// `study.json`: what a study is; a folder holds one study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StudyFile {
    recipe: String,
    space: Space,
    config: StudyConfig,
}

/// A study in its folder.
pub struct Study {
    dir: PathBuf,
    recipe: String,
    space: Space,
    config: StudyConfig,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Internal(format!("{}: {e}", path.display()))
}

/// Runs `f` over `items` with at most `parallel` at a time, results in item order.
fn parallel_map<T: Sync, R: Send>(items: &[T], parallel: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut o) = out.lock() {
                        o[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_default().into_iter().flatten().collect()
}

impl Study {
    /// Opens (or creates) the study in `dir`; an existing study must have the same recipe, space and settings
    /// (`trials` and `parallel` may change).
    pub fn open(dir: &Path, recipe: &str, space: Space, config: StudyConfig) -> Result<Self, TrainError> {
        if config.trials == 0 || config.budget == 0 || config.eta < 2 || config.min_epochs == 0 || config.min_epochs > config.budget {
            return Err(TrainError::Input("tune: trials and budget ≥ 1, eta ≥ 2 and 1 ≤ min_epochs ≤ budget".into()));
        }
        if config.trials > 65_536 {
            return Err(TrainError::Input("tune: at most 65536 trials".into()));
        }
        if !(config.curve_threshold > 0.0 && config.curve_threshold < 1.0) {
            return Err(TrainError::Input("tune: the curve threshold must lie in (0, 1)".into()));
        }
        if config.curve_stop && config.scheduler != Scheduler::None {
            return Err(TrainError::Input("tune: --curve-stop applies to --scheduler none (the schedulers stop trials themselves)".into()));
        }
        // Every key must land in the recipe.
        apply(recipe, &space.point(&vec![0.5; space.params.len()]))?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let file = StudyFile { recipe: recipe.to_string(), space: space.clone(), config: config.clone() };
        let path = dir.join("study.json");
        if path.is_file() {
            let old: StudyFile = crate::run::read_json(&path)?;
            let same = StudyFile { config: StudyConfig { trials: config.trials, parallel: config.parallel, ..old.config.clone() }, ..old };
            if same != file {
                return Err(TrainError::Input(format!(
                    "{}: the folder holds a study of another recipe, space or settings; choose another folder",
                    dir.display()
                )));
            }
        }
        crate::run::write_json(&path, &file)?;
        Ok(Self { dir: dir.to_path_buf(), recipe: recipe.to_string(), space, config })
    }

    /// The folder of trial `i`.
    pub fn trial_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("trial-{i:03}"))
    }

    /// Trial `i`'s values.
    pub fn params(&self, i: usize) -> BTreeMap<String, toml::Value> {
        self.space.point(&unit_sample(self.config.sampler, self.config.seed, i, self.space.params.len()))
    }

    /// Writes trial `i`'s recipe and values (once).
    fn prepare(&self, i: usize) -> Result<PathBuf, TrainError> {
        let dir = self.trial_dir(i);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let recipe = dir.join("recipe.toml");
        if !recipe.is_file() {
            let params = self.params(i);
            crate::run::write_json(&dir.join("params.json"), &params)?;
            vesalius_io::write_atomic(&recipe, apply(&self.recipe, &params)?.as_bytes())?;
        }
        Ok(recipe)
    }

    /// Trains trial `i` to `epochs` epochs.
    fn advance(&self, runner: &dyn Runner, i: usize, epochs: usize) -> Result<Progress, String> {
        let recipe = self.prepare(i).map_err(|e| e.to_string())?;
        runner.run(&recipe, &self.trial_dir(i).join("run"), epochs)
    }

    /// Runs the study with `runner`, writes `trials.csv`, `best.toml` and `summary.json`, and returns the summary.
    pub fn run(&self, runner: &dyn Runner) -> Result<Summary, TrainError> {
        let trials = match self.config.scheduler {
            Scheduler::None => self.run_plain(runner),
            Scheduler::TopK => self.run_top_k(runner),
            Scheduler::Hyperband => self.run_hyperband(runner),
            Scheduler::Asha => self.run_asha(runner),
        }?;
        self.write(trials)
    }

    fn trial(&self, i: usize, p: &Progress, status: Status) -> Trial {
        Trial { index: i, params: self.params(i), epochs: p.scores.len(), best: p.best(), status }
    }

    fn failed(&self, i: usize, message: String) -> Trial {
        Trial { index: i, params: self.params(i), epochs: 0, best: None, status: Status::Failed { message } }
    }

    /// Whether a trial has its full budget (or ended by its own early stopping).
    fn done(&self, p: &Progress) -> bool {
        p.stopped_early || p.scores.len() >= self.config.budget
    }

    fn run_plain(&self, runner: &dyn Runner) -> Result<Vec<Trial>, TrainError> {
        let c = &self.config;
        let every = c.curve_every.unwrap_or((c.budget / 10).max(1)).max(1);
        let min_points = c.curve_min_points.unwrap_or((c.budget / 5).max(5));
        // The best complete trial's score, shared by the workers (trials complete in index order when one at a time).
        let best: Mutex<Option<f64>> = Mutex::new(None);
        let indices: Vec<usize> = (0..c.trials).collect();
        Ok(parallel_map(&indices, c.parallel, |&i| {
            let mut target = if c.curve_stop { every.min(c.budget) } else { c.budget };
            loop {
                let p = match self.advance(runner, i, target) {
                    Ok(p) => p,
                    Err(e) => return self.failed(i, e),
                };
                if self.done(&p) {
                    if let (Ok(mut b), Some(s)) = (best.lock(), p.best()) {
                        *b = Some(b.map_or(s, |v: f64| v.max(s)));
                    }
                    return self.trial(i, &p, Status::Complete);
                }
                if p.scores.len() < target {
                    return self.failed(i, format!("the run stopped at epoch {} of {target}", p.scores.len()));
                }
                let pts = curve::points(&p.scores);
                let reference = best.lock().ok().and_then(|b| *b);
                // A trial that already beats the best complete one is never stopped (its best epoch is kept).
                let beaten = reference.filter(|&b| pts.len() >= min_points && p.best().is_none_or(|own| own < b));
                if let Some(b) = beaten {
                    let prob = curve::Extrapolation::new(&pts, p.scores.len(), c.budget, c.seed ^ i as u64).probability_above(b);
                    if prob < c.curve_threshold {
                        return self.trial(i, &p, Status::CurveStopped { probability: prob });
                    }
                }
                target = (target + every).min(c.budget);
            }
        }))
    }

    /// Ranks trials by score (best first; failed and unscored last, then by index).
    fn ranked(results: &[(usize, Result<Progress, String>)]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..results.len()).collect();
        let score = |k: usize| results[k].1.as_ref().ok().and_then(Progress::best).unwrap_or(f64::NEG_INFINITY);
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(results[a].0.cmp(&results[b].0)));
        order
    }

    /// Successive halving of `ids` through rungs of `epochs` (increasing), keeping `keep[k]` after rung `k`.
    fn halve(&self, runner: &dyn Runner, ids: Vec<usize>, rungs: &[(usize, usize)], out: &mut BTreeMap<usize, Trial>) {
        let mut alive = ids;
        for (k, &(epochs, keep)) in rungs.iter().enumerate() {
            let results: Vec<(usize, Result<Progress, String>)> =
                parallel_map(&alive, self.config.parallel, |&i| (i, self.advance(runner, i, epochs)));
            let last = k + 1 == rungs.len();
            let order = Self::ranked(&results);
            let mut next = Vec::new();
            for (rank, &r) in order.iter().enumerate() {
                let (i, res) = &results[r];
                match res {
                    Err(e) => {
                        out.insert(*i, self.failed(*i, e.clone()));
                    }
                    Ok(p) if last || self.done(p) => {
                        out.insert(*i, self.trial(*i, p, Status::Complete));
                    }
                    Ok(p) if rank < keep => {
                        out.insert(*i, self.trial(*i, p, Status::Pending));
                        next.push(*i);
                    }
                    Ok(p) => {
                        out.insert(*i, self.trial(*i, p, Status::Stopped));
                    }
                }
            }
            next.sort_unstable();
            alive = next;
            if alive.is_empty() {
                break;
            }
        }
    }

    fn run_top_k(&self, runner: &dyn Runner) -> Result<Vec<Trial>, TrainError> {
        let c = &self.config;
        let keep = c.keep.unwrap_or(c.trials.div_ceil(c.eta)).clamp(1, c.trials);
        let mut out = BTreeMap::new();
        self.halve(runner, (0..c.trials).collect(), &[(c.min_epochs, keep), (c.budget, 0)], &mut out);
        Ok(out.into_values().collect())
    }

    /// Hyperband's brackets for the settings: per bracket, its trials and rungs `(epochs, kept after)`; brackets are
    /// added from the most aggressive until `trials` configurations are used.
    pub fn brackets(&self) -> Vec<(Vec<usize>, Vec<(usize, usize)>)> {
        let c = &self.config;
        let eta = c.eta as f64;
        let s_max = ((c.budget as f64 / c.min_epochs as f64).ln() / eta.ln() + 1e-9).floor() as u32;
        let mut next = 0usize;
        let mut out = Vec::new();
        for s in (0..=s_max).rev() {
            if next >= c.trials {
                break;
            }
            let n = (((s_max + 1) as f64 / (s + 1) as f64) * eta.powi(s as i32)).ceil() as usize;
            let n = n.min(c.trials - next);
            let ids: Vec<usize> = (next..next + n).collect();
            next += n;
            let rungs: Vec<(usize, usize)> = (0..=s)
                .map(|k| {
                    let epochs = ((c.budget as f64) / eta.powi((s - k) as i32)).round().max(c.min_epochs as f64) as usize;
                    let kept = ((n as f64) / eta.powi(k as i32 + 1)).floor() as usize;
                    (epochs.min(c.budget), if k == s { 0 } else { kept.max(1) })
                })
                .collect();
            out.push((ids, rungs));
        }
        out
    }

    fn run_hyperband(&self, runner: &dyn Runner) -> Result<Vec<Trial>, TrainError> {
        let mut out = BTreeMap::new();
        for (ids, rungs) in self.brackets() {
            self.halve(runner, ids, &rungs, &mut out);
        }
        Ok(out.into_values().collect())
    }

    /// ASHA's rungs: `min_epochs · ηᵏ` below the budget, then the budget.
    pub fn asha_rungs(&self) -> Vec<usize> {
        let c = &self.config;
        let mut rungs = Vec::new();
        let mut r = c.min_epochs;
        while r < c.budget {
            rungs.push(r);
            r *= c.eta;
        }
        rungs.push(c.budget);
        rungs
    }

    fn run_asha(&self, runner: &dyn Runner) -> Result<Vec<Trial>, TrainError> {
        let c = &self.config;
        let rungs = self.asha_rungs();
        struct State {
            /// Per rung: (trial, score) of the trials that reached it.
            reached: Vec<Vec<(usize, f64)>>,
            /// Trials promoted out of each rung.
            promoted: Vec<std::collections::BTreeSet<usize>>,
            started: usize,
            running: usize,
            trials: BTreeMap<usize, Trial>,
        }
        let state = Mutex::new(State {
            reached: vec![Vec::new(); rungs.len()],
            promoted: vec![Default::default(); rungs.len()],
            started: 0,
            running: 0,
            trials: BTreeMap::new(),
        });
        let wake = Condvar::new();
        let eta = c.eta;
        // The next job: the promotion from the highest rung that allows one, else a new trial.
        let next_job = |s: &mut State| -> Option<(usize, usize)> {
            for k in (0..rungs.len() - 1).rev() {
                let mut at: Vec<(usize, f64)> = s.reached[k].clone();
                at.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let top = at.len() / eta;
                if let Some(&(i, _)) = at[..top].iter().find(|(i, _)| !s.promoted[k].contains(i)) {
                    s.promoted[k].insert(i);
                    return Some((i, k + 1));
                }
            }
            (s.started < c.trials).then(|| {
                s.started += 1;
                (s.started - 1, 0)
            })
        };
        std::thread::scope(|scope| {
            for _ in 0..c.parallel.max(1) {
                scope.spawn(|| {
                    loop {
                        let job = {
                            let Ok(mut s) = state.lock() else { return };
                            loop {
                                if let Some(j) = next_job(&mut s) {
                                    s.running += 1;
                                    break Some(j);
                                }
                                if s.running == 0 {
                                    break None;
                                }
                                s = match wake.wait(s) {
                                    Ok(g) => g,
                                    Err(_) => return,
                                };
                            }
                        };
                        let Some((i, k)) = job else {
                            wake.notify_all();
                            return;
                        };
                        let result = self.advance(runner, i, rungs[k]);
                        let Ok(mut s) = state.lock() else { return };
                        s.running -= 1;
                        match result {
                            Err(e) => {
                                s.trials.insert(i, self.failed(i, e));
                            }
                            Ok(p) => {
                                let finished = k + 1 == rungs.len() || self.done(&p);
                                let status = if finished { Status::Complete } else { Status::Stopped };
                                if !finished {
                                    s.reached[k].push((i, p.best().unwrap_or(f64::NEG_INFINITY)));
                                }
                                s.trials.insert(i, self.trial(i, &p, status));
                            }
                        }
                        wake.notify_all();
                    }
                });
            }
        });
        Ok(state.into_inner().map(|s| s.trials.into_values().collect()).unwrap_or_default())
    }

    /// Writes `trials.csv`, `best.toml` (the best complete trial's recipe) and `summary.json`.
    fn write(&self, mut trials: Vec<Trial>) -> Result<Summary, TrainError> {
        trials.sort_by_key(|t| t.index);
        let keys: Vec<&String> = self.space.params.keys().collect();
        let mut csv = String::from("trial");
        for k in &keys {
            csv.push(',');
            csv.push_str(k);
        }
        csv.push_str(",epochs,best_score,status\n");
        let status_name = |s: &Status| match s {
            Status::Complete => "complete".to_string(),
            Status::Stopped => "stopped".to_string(),
            Status::CurveStopped { probability } => format!("curve_stopped (p = {probability:.3})"),
            Status::Failed { message } => format!("failed: {}", message.replace([',', '\n', '"'], " ")),
            Status::Pending => "pending".to_string(),
        };
        for t in &trials {
            csv.push_str(&t.index.to_string());
            for k in &keys {
                let v = t.params.get(*k).map(|v| v.to_string().replace(',', ";")).unwrap_or_default();
                csv.push(',');
                csv.push_str(&v);
            }
            let best = t.best.map(|b| format!("{b:.6}")).unwrap_or_default();
            csv.push_str(&format!(",{},{best},{}\n", t.epochs, status_name(&t.status)));
        }
        vesalius_io::write_atomic(&self.dir.join("trials.csv"), csv.as_bytes())?;
        let score = |t: &&Trial| t.best.unwrap_or(f64::NEG_INFINITY);
        let complete: Vec<&Trial> = trials.iter().filter(|t| t.status == Status::Complete && t.best.is_some()).collect();
        let pool: Vec<&Trial> = if complete.is_empty() { trials.iter().filter(|t| t.best.is_some()).collect() } else { complete };
        let best = pool.iter().max_by(|a, b| score(a).total_cmp(&score(b)).then(b.index.cmp(&a.index))).copied();
        if let Some(b) = best {
            let recipe = std::fs::read_to_string(self.trial_dir(b.index).join("recipe.toml")).map_err(io(&self.trial_dir(b.index)))?;
            vesalius_io::write_atomic(&self.dir.join("best.toml"), recipe.as_bytes())?;
        }
        let mut statuses = BTreeMap::new();
        for t in &trials {
            let name = match &t.status {
                Status::CurveStopped { .. } => "curve_stopped".to_string(),
                Status::Failed { .. } => "failed".to_string(),
                s => status_name(s),
            };
            *statuses.entry(name).or_insert(0) += 1;
        }
        let summary = Summary {
            best_trial: best.map(|b| b.index),
            best_score: best.and_then(|b| b.best),
            epochs_trained: trials.iter().map(|t| t.epochs).sum(),
            statuses,
            trials,
        };
        crate::run::write_json(&self.dir.join("summary.json"), &summary)?;
        Ok(summary)
    }
}
