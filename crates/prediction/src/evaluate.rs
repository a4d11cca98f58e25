//! Scoring a survival model on its test patients: Harrell's C, Uno's C truncated at τ, cumulative/dynamic AUC at
//! the evaluation times and its mean, the integrated Brier score of the model's survival curves — each with a 95 %
//! bootstrap interval over patients (all rows of a drawn patient enter a resample). The censoring distribution of
//! Uno's C and the Brier score is the training patients'.
use std::path::Path;

use serde::{Deserialize, Serialize};
use vesalius_eval::bootstrap::{Clusters, Estimate, cluster_percentile_ci, quantile_sorted};
use vesalius_eval::survival::{CensoringDistribution, brier_scores, cumulative_dynamic_auc, harrell_c, integrated_brier, uno_c};

use crate::PredError;
use crate::recipe::SurvivalRecipe;
use burn::tensor::backend::Backend;

use crate::train::{Scorer, SurvivalData, SurvivalModel, load, split};

/// Bootstrap resamples by default.
pub const DEFAULT_BOOTSTRAP: usize = 1000;

/// `metrics.json` of a survival run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurvivalMetrics {
    /// The set scored (`test`).
    pub set: String,
    /// Patients and rows scored.
    pub patients: usize,
    /// Events among them.
    pub events: usize,
    /// Evaluation times.
    pub times: Vec<f64>,
    /// Truncation time of Uno's C.
    pub tau: f64,
    /// Harrell's C.
    pub c_index: Estimate,
    /// Uno's C.
    pub uno_c: Estimate,
    /// Cumulative/dynamic AUC at each time.
    pub td_auc: Vec<Estimate>,
    /// Its mean weighted by the Kaplan–Meier drop.
    pub td_auc_mean: Estimate,
    /// Integrated Brier score over the evaluation times.
    pub integrated_brier: Estimate,
    /// Brier score at each time (point values).
    pub brier: Vec<f64>,
    /// Calibration at the middle evaluation time: five groups by predicted survival, each group's mean prediction
    /// beside its Kaplan–Meier survival.
    pub calibration: Vec<vesalius_eval::survival::CalibrationBin>,
    /// The time of the calibration table.
    pub calibration_time: f64,
    /// What the intervals resample.
    pub bootstrap_unit: String,
}

/// Scores the rows `rows` of `data` with `scorer` (risks and survival curves).
pub fn evaluate_rows<B: Backend>(
    model: &SurvivalModel,
    scorer: &Scorer<B>,
    data: &SurvivalData,
    rows: &[usize],
    recipe: &SurvivalRecipe,
) -> Result<SurvivalMetrics, PredError> {
    let time: Vec<f64> = rows.iter().map(|&i| data.time[i]).collect();
    let event: Vec<bool> = rows.iter().map(|&i| data.event[i]).collect();
    let x: Vec<Vec<f64>> = rows.iter().map(|&i| data.x[i].clone()).collect();
    let mut event_times: Vec<f64> = time.iter().zip(&event).filter(|(_, e)| **e).map(|(t, _)| *t).collect();
    if event_times.len() < 2 {
        return Err(PredError::Input("the test patients hold fewer than two events: nothing to score".into()));
    }
    event_times.sort_by(f64::total_cmp);
    let times = recipe.eval.times.clone().unwrap_or_else(|| [0.25, 0.5, 0.75].iter().map(|&q| quantile_sorted(&event_times, q)).collect());
    let tau = recipe.eval.tau.unwrap_or(times[times.len() - 1]);
    let censoring = CensoringDistribution::fit(&model.train_time, &model.train_event);
    let (risk, survival) = scorer.predict(model, &x, &times);
    let err = |e: vesalius_eval::survival::SurvivalError| PredError::Input(format!("test set: {e}"));
    let c = harrell_c(&time, &event, &risk).map_err(err)?.c;
    let uno = uno_c(&time, &event, &risk, &censoring, tau).map_err(err)?.c;
    let (auc, auc_mean) = cumulative_dynamic_auc(&time, &event, &risk, &times, &censoring).map_err(err)?;
    let ibs = if times.len() > 1 { integrated_brier(&time, &event, &survival, &times, &censoring).map_err(err)? } else { f64::NAN };
    let brier = brier_scores(&time, &event, &survival, &times, &censoring).map_err(err)?;
    let mid = times.len() / 2;
    let calibration_time = times[mid];
    let predicted: Vec<f64> = survival.iter().map(|s| s[mid]).collect();
    let calibration = vesalius_eval::survival::calibration(&time, &event, &predicted, calibration_time, 5.min(time.len())).map_err(err)?;

    let ids: Vec<Option<&str>> = rows.iter().map(|&i| Some(data.ids[i].as_str())).collect();
    let clusters = Clusters::from_ids(&ids);
    let b = recipe.eval.bootstrap.unwrap_or(DEFAULT_BOOTSTRAP);
    let pick = |idx: &[usize]| -> (Vec<f64>, Vec<bool>, Vec<f64>, Vec<Vec<f64>>) {
        (
            idx.iter().map(|&k| time[k]).collect(),
            idx.iter().map(|&k| event[k]).collect(),
            idx.iter().map(|&k| risk[k]).collect(),
            idx.iter().map(|&k| survival[k].clone()).collect(),
        )
    };
    let ci = |value: f64, salt: u64, metric: &dyn Fn(&[f64], &[bool], &[f64], &[Vec<f64>]) -> Option<f64>| {
        cluster_percentile_ci(&clusters, b, 0.95, recipe.seed ^ salt, value, |idx| {
            let (t, e, r, s) = pick(idx);
            metric(&t, &e, &r, &s)
        })
    };
    let c_index = ci(c, 1, &|t, e, r, _| harrell_c(t, e, r).ok().map(|x| x.c));
    let uno_c = ci(uno, 2, &|t, e, r, _| uno_c(t, e, r, &censoring, tau).ok().map(|x| x.c));
    let td_auc = (0..times.len())
        .map(|k| {
            let tk = [times[k]];
            ci(auc[k], 3 + k as u64, &|t, e, r, _| cumulative_dynamic_auc(t, e, r, &tk, &censoring).ok().map(|x| x.1))
        })
        .collect();
    let td_auc_mean = ci(auc_mean, 100, &|t, e, r, _| cumulative_dynamic_auc(t, e, r, &times, &censoring).ok().map(|x| x.1));
    let integrated_brier = ci(ibs, 101, &|t, e, _, s| integrated_brier(t, e, s, &times, &censoring).ok());
    Ok(SurvivalMetrics {
        set: "test".into(),
        patients: clusters.len(),
        events: event.iter().filter(|&&e| e).count(),
        times,
        tau,
        c_index,
        uno_c,
        td_auc,
        td_auc_mean,
        integrated_brier,
        brier,
        calibration,
        calibration_time,
        bootstrap_unit: clusters.unit().into(),
    })
}

/// Reads a survival run's recipe and model.
pub fn read_run(run: &Path) -> Result<(SurvivalRecipe, SurvivalModel), PredError> {
    let text = std::fs::read_to_string(run.join("recipe.toml"))
        .map_err(|e| PredError::Input(format!("{}: {e}", run.join("recipe.toml").display())))?;
    let recipe = SurvivalRecipe::from_toml(&text, run)?;
    let model: SurvivalModel = vesalius_train::run::read_json(&run.join("model.json")).map_err(|e| PredError::Input(e.to_string()))?;
    Ok((recipe, model))
}

/// Evaluates a run on its test patients and writes `metrics.json` and `predictions-test.csv` (`id,time,event,risk`).
pub fn evaluate<B: Backend>(run: &Path, device: &B::Device) -> Result<SurvivalMetrics, PredError> {
    let (recipe, model) = read_run(run)?;
    let (_, _, data) = load(&recipe, Some(&model.encoding))?;
    let (_, test) = split(&data.ids, recipe.data.test_share, recipe.seed);
    let scorer = Scorer::<B>::load(run, &recipe, &model, device)?;
    let m = evaluate_rows(&model, &scorer, &data, &test, &recipe)?;
    vesalius_train::run::write_json(&run.join("metrics.json"), &m).map_err(|e| PredError::Internal(e.to_string()))?;
    let x: Vec<Vec<f64>> = test.iter().map(|&i| data.x[i].clone()).collect();
    let (risk, _) = scorer.predict(&model, &x, &[]);
    let mut csv = String::from("id,time,event,risk\n");
    for (k, &i) in test.iter().enumerate() {
        let id = if data.ids[i].contains([',', '"']) { format!("\"{}\"", data.ids[i].replace('"', "\"\"")) } else { data.ids[i].clone() };
        csv.push_str(&format!("{id},{},{},{}\n", data.time[i], u8::from(data.event[i]), risk[k]));
    }
    vesalius_io::write_atomic(&run.join("predictions-test.csv"), csv.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    Ok(m)
}
