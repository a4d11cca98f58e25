//! Fitting a survival recipe: the table read and encoded, patients split (seeded, patient level), features
//! standardised on the training patients, the model fitted on them, then scored on the test patients. The run
//! folder holds `recipe.toml`, `model.json` (everything prediction needs) and `metrics.json`, each written
//! atomically.
use std::collections::BTreeSet;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::PredError;
use burn::tensor::backend::{AutodiffBackend, Backend};
use vesalius_nets::Mlp;
use vesalius_train::{EpochRecord, RunDir};

use crate::cox::{CoxConfig, CoxModel, breslow_baseline, fit};
use crate::evaluate::SurvivalMetrics;
use crate::recipe::{Arch, SurvivalRecipe};
use crate::table::{Encoding, RawTable, Standardise, read_csv};

/// A table read for a recipe: one entry per row.
#[derive(Clone, Debug, PartialEq)]
pub struct SurvivalData {
    /// Patient ids (the id column, or the 1-based row number).
    pub ids: Vec<String>,
    /// Times.
    pub time: Vec<f64>,
    /// Events.
    pub event: Vec<bool>,
    /// Encoded (not standardised) features.
    pub x: Vec<Vec<f64>>,
}

/// Everything a fitted survival run predicts with (`model.json`; a DeepSurv run's network is its `model.mpk`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurvivalModel {
    /// Feature encoding.
    pub encoding: Encoding,
    /// Encoded feature names.
    pub features: Vec<String>,
    /// Standardisation fitted on the training patients.
    pub standardise: Standardise,
    /// The Cox model on standardised features (`arch = "cox"`).
    pub cox: Option<CoxModel>,
    /// Event times of Breslow's baseline hazard on the training patients.
    pub baseline_times: Vec<f64>,
    /// `H₀` at each of them.
    pub baseline_hazard: Vec<f64>,
    /// Logistic hazard: the interval upper bounds.
    #[serde(default)]
    pub cuts: Vec<f64>,
    /// Training times and events (the censoring distribution of Uno's C and the Brier score).
    pub train_time: Vec<f64>,
    /// See `train_time`.
    pub train_event: Vec<bool>,
}

impl SurvivalModel {
    /// `H₀(t)`.
    pub fn cumulative_baseline(&self, t: f64) -> f64 {
        match self.baseline_times.partition_point(|&s| s <= t) {
            0 => 0.0,
            i => self.baseline_hazard[i - 1],
        }
    }

    /// `S(t)` of a subject with log-risk `risk`.
    pub fn survival(&self, risk: f64, t: f64) -> f64 {
        (-self.cumulative_baseline(t) * risk.exp()).exp()
    }
}

/// What scores encoded rows: a Cox model's coefficients, a DeepSurv network or a logistic-hazard network.
pub enum Scorer<B: Backend> {
    /// `xᵀβ`.
    Cox(CoxModel),
    /// `f(x)`.
    Net(Mlp<B>, B::Device),
    /// Per-interval hazard logits.
    Lh(Mlp<B>, B::Device),
    /// `f(image)` of an image network, with its input side.
    Image(vesalius_nets::Classifier<B>, usize, B::Device),
}

impl<B: Backend> Scorer<B> {
    /// Risk scores (higher = earlier event) of encoded rows, standardised with `model`'s standardisation.
    pub fn log_risks(&self, model: &SurvivalModel, rows: &[Vec<f64>]) -> Vec<f64> {
        self.predict(model, rows, &[]).0
    }

    /// Risk scores and survival probabilities at `times` of encoded rows.
    pub fn predict(&self, model: &SurvivalModel, rows: &[Vec<f64>], times: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let std: Vec<Vec<f64>> = rows.iter().map(|r| model.standardise.apply(r)).collect();
        let from_baseline = |risk: Vec<f64>| {
            let surv = risk.iter().map(|&r| times.iter().map(|&t| model.survival(r, t)).collect()).collect();
            (risk, surv)
        };
        match self {
            Scorer::Cox(cox) => from_baseline(std.iter().map(|r| cox.risk(r)).collect()),
            Scorer::Net(net, device) => from_baseline(crate::deepsurv::log_risk(net, &std, device)),
            Scorer::Image(net, size, device) => from_baseline(crate::images::log_risk(net, &std, *size, device)),
            Scorer::Lh(net, device) => {
                let z = crate::deepsurv::outputs(net, &std, device);
                let risk = z.iter().map(|z| crate::deepsurv::lh_risk(z)).collect();
                let surv = z.iter().map(|z| times.iter().map(|&t| crate::deepsurv::lh_survival(z, &model.cuts, t)).collect()).collect();
                (risk, surv)
            }
        }
    }

    /// The scorer of a run.
    pub fn load(run: &Path, recipe: &SurvivalRecipe, model: &SurvivalModel, device: &B::Device) -> Result<Self, PredError> {
        match (&recipe.model.arch, &model.cox) {
            (Arch::Cox, Some(cox)) => Ok(Scorer::Cox(cox.clone())),
            (Arch::Deepsurv, _) if recipe.data.image.is_some() => {
                Ok(Scorer::Image(crate::images::load(run, recipe, device)?, recipe.model.image_size(), device.clone()))
            }
            (Arch::Deepsurv, _) => {
                Ok(Scorer::Net(crate::deepsurv::load(&RunDir::new(run), model.features.len(), 1, &recipe.model, device)?, device.clone()))
            }
            (Arch::LogisticHazard, _) => Ok(Scorer::Lh(
                crate::deepsurv::load(&RunDir::new(run), model.features.len(), model.cuts.len(), &recipe.model, device)?,
                device.clone(),
            )),
            (Arch::Cox, None) => Err(PredError::Input(format!("{}: model.json holds no Cox coefficients", run.display()))),
            (Arch::Rnn, _) => Err(PredError::Input(format!("{}: a longitudinal run is scored by its visits", run.display()))),
        }
    }
}

/// Reads and encodes the recipe's table with `encoding` (fitted on it when `None`).
pub fn load(recipe: &SurvivalRecipe, encoding: Option<&Encoding>) -> Result<(RawTable, Encoding, SurvivalData), PredError> {
    let table = read_csv(&recipe.data.path)?;
    let d = &recipe.data;
    let (tc, ec) = (table.column(&d.time)?, table.column(&d.event)?);
    let ic = d.id.as_deref().map(|c| table.column(c)).transpose()?;
    let reserved: Vec<&str> = [d.time.as_str(), d.event.as_str()].into_iter().chain(d.id.as_deref()).chain(d.image.as_deref()).collect();
    // Image data: no table features (the pixels are the inputs).
    let pixels = match &d.image {
        Some(column) => {
            Some(crate::images::read_pixels(&table, column, d.path.parent().unwrap_or(Path::new(".")), recipe.model.image_size())?)
        }
        None => None,
    };
    let features =
        if pixels.is_some() { Vec::new() } else { crate::table::feature_columns(&table, d.features.as_deref(), &reserved, &[])? };
    let encoding = match encoding {
        Some(e) => e.clone(),
        None => Encoding::fit(&table, &features)?,
    };
    let mut data = SurvivalData { ids: Vec::new(), time: Vec::new(), event: Vec::new(), x: Vec::new() };
    for r in 0..table.rows.len() {
        let t = table.number(r, tc)?;
        if t < 0.0 {
            return Err(PredError::Input(format!("{}: row {} has a negative time {t}", table.source, r + 2)));
        }
        let e = table.number(r, ec)?;
        if e != 0.0 && e != 1.0 {
            return Err(PredError::Input(format!(
                "{}: row {} column \"{}\": events are 1 (event) or 0 (censored), not {e}",
                table.source,
                r + 2,
                d.event
            )));
        }
        data.ids.push(ic.map_or_else(|| (r + 1).to_string(), |c| table.rows[r][c].trim().to_string()));
        data.time.push(t);
        data.event.push(e == 1.0);
        match &pixels {
            Some(p) => data.x.push(p[r].clone()),
            None => data.x.push(encoding.encode_row(&table, r)?),
        }
    }
    Ok((table, encoding, data))
}

/// Rows of the training and test patients: the patients (not rows) shuffled with the seed, the first
/// `⌈test_share · patients⌉` held out.
pub fn split(ids: &[String], test_share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut patients: Vec<&String> = ids.iter().collect::<BTreeSet<_>>().into_iter().collect();
    patients.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_test = ((test_share * patients.len() as f64).ceil() as usize).clamp(1, patients.len().saturating_sub(1).max(1));
    let test: BTreeSet<&String> = patients[..n_test].iter().copied().collect();
    (0..ids.len()).partition(|&i| !test.contains(&ids[i]))
}

/// Fits `recipe` into `run` and evaluates it on the test patients. DeepSurv trains on the shared engine (the
/// run folder's checkpoints, resumable) with a validation share of the training patients; `on_epoch` sees its
/// epochs.
pub fn train<AB: AutodiffBackend>(
    recipe: &SurvivalRecipe,
    run: &Path,
    device: &AB::Device,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<(SurvivalModel, SurvivalMetrics), PredError> {
    train_dyn::<AB>(recipe, run, device, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &SurvivalRecipe,
    run: &Path,
    device: &AB::Device,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<(SurvivalModel, SurvivalMetrics), PredError> {
    recipe.validate()?;
    if recipe.model.arch == Arch::Rnn {
        return Err(PredError::Input("a longitudinal recipe (arch = \"rnn\") is fitted by longitudinal::train".into()));
    }
    std::fs::create_dir_all(run).map_err(|e| PredError::Internal(format!("{}: {e}", run.display())))?;
    let text = recipe.to_toml()?;
    if recipe.model.arch == Arch::Cox {
        let recipe_path = run.join("recipe.toml");
        if let Ok(existing) = std::fs::read_to_string(&recipe_path)
            && existing != text
        {
            return Err(PredError::Input(format!("{} holds a run of another recipe: use another --out", run.display())));
        }
        vesalius_io::write_atomic(&recipe_path, text.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    }
    let (_, encoding, data) = load(recipe, None)?;
    let (train_rows, test_rows) = split(&data.ids, recipe.data.test_share, recipe.seed);
    let x_train: Vec<Vec<f64>> = train_rows.iter().map(|&i| data.x[i].clone()).collect();
    // Pixels enter the network as read (scaled by their stored range); table features are standardised.
    let standardise = match &recipe.data.image {
        Some(_) => {
            let p = x_train.first().map_or(0, Vec::len);
            Standardise { mean: vec![0.0; p], std: vec![1.0; p] }
        }
        None => Standardise::fit(&x_train),
    };
    let pick = |rows: &[usize]| -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
        (
            rows.iter().map(|&i| standardise.apply(&data.x[i])).collect(),
            rows.iter().map(|&i| data.time[i]).collect(),
            rows.iter().map(|&i| data.event[i]).collect(),
        )
    };
    let (xs, t, e) = pick(&train_rows);
    if !e.iter().any(|&ev| ev) {
        return Err(PredError::Input(format!("{}: the training patients hold no event: nothing to fit", recipe.data.path.display())));
    }
    let lh_cuts =
        if recipe.model.arch == Arch::LogisticHazard { crate::deepsurv::cuts(&t, &e, recipe.model.intervals) } else { Vec::new() };
    let (cox, risk) = match recipe.model.arch {
        Arch::Cox => {
            let cox = fit(&xs, &t, &e, &CoxConfig { ties: recipe.model.ties, l2: recipe.model.l2 })?;
            let risk: Vec<f64> = xs.iter().map(|r| cox.risk(r)).collect();
            (Some(cox), risk)
        }
        Arch::Deepsurv | Arch::LogisticHazard | Arch::Rnn => {
            // Model selection on a share of the training patients; the baseline hazard on all of them.
            let ids: Vec<String> = train_rows.iter().map(|&i| data.ids[i].clone()).collect();
            let (fit_idx, val_idx) = split(&ids, recipe.model.val_share, recipe.seed ^ 0x5eed);
            let sub = |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&k| train_rows[k]).collect() };
            let (fx, ft, fe) = pick(&sub(&fit_idx));
            let (vx, vt, ve) = pick(&sub(&val_idx));
            let lh = (recipe.model.arch == Arch::LogisticHazard).then_some(lh_cuts.as_slice());
            if recipe.data.image.is_some() {
                let net = crate::images::train::<AB>(&RunDir::new(run), &text, recipe, (&fx, &ft, &fe), (&vx, &vt, &ve), device, on_epoch)?;
                (None, crate::images::log_risk(&net, &xs, recipe.model.image_size(), device))
            } else {
                let net = crate::deepsurv::train::<AB>(
                    &RunDir::new(run),
                    &text,
                    &recipe.model,
                    recipe.seed,
                    (&fx, &ft, &fe),
                    (&vx, &vt, &ve),
                    lh,
                    device,
                    on_epoch,
                )?;
                // (The logistic hazard's survival comes from its own outputs; its Breslow baseline is kept for reference.)
                let risk = match lh {
                    Some(_) => crate::deepsurv::outputs(&net, &xs, device).iter().map(|z| crate::deepsurv::lh_risk(z)).collect(),
                    None => crate::deepsurv::log_risk(&net, &xs, device),
                };
                (None, risk)
            }
        }
    };
    let (baseline_times, baseline_hazard) = breslow_baseline(&risk, &t, &e);
    let model = SurvivalModel {
        features: encoding.names(),
        encoding,
        standardise,
        cox,
        baseline_times,
        baseline_hazard,
        cuts: lh_cuts,
        train_time: t,
        train_event: e,
    };
    vesalius_train::run::write_json(&run.join("model.json"), &model).map_err(|e| PredError::Internal(e.to_string()))?;
    // Scored as read back, so that `vesalius evaluate` (which reads the files) reproduces metrics.json exactly.
    let metrics = crate::evaluate::evaluate::<AB::InnerBackend>(run, device)?;
    let model: SurvivalModel = vesalius_train::run::read_json(&run.join("model.json")).map_err(|e| PredError::Internal(e.to_string()))?;
    debug_assert_eq!(metrics.patients, test_rows.iter().map(|&i| &data.ids[i]).collect::<BTreeSet<_>>().len());
    Ok((model, metrics))
}

/// Whether `dir` holds a survival run.
pub fn is_run(dir: &Path) -> bool {
    vesalius_train::run::recipe_task(dir).as_deref() == Some("survival")
}
