//! Hyper-parameter search on curves with a known answer: the curve models recover a known curve, the learning-curve
//! rule stops trials that cannot win and keeps those that can, the schedulers find the best trial, and a study
//! resumes without retraining.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use vesalius_train::tune::curve::{self, Extrapolation, Model};
use vesalius_train::tune::{Progress, Runner, Scheduler, Space, Status, Study, StudyConfig, apply};

/// The validation score of a trial of plateau `level` at `epoch`: rising from 0.3 towards the plateau, never
/// crossing another trial's curve (a higher plateau is higher at every epoch).
fn score(level: f64, epoch: usize) -> f64 {
    level - (level - 0.3) * (-(epoch as f64) / 4.0).exp()
}

/// Trains nothing: writes how many epochs a run has into its folder and reports the known curve of the recipe's
/// `model.level`, counting the epochs it adds.
struct Curves {
    trained: AtomicUsize,
    budget: usize,
}

impl Runner for Curves {
    fn run(&self, recipe: &Path, run_dir: &Path, epochs: usize) -> Result<Progress, String> {
        let text = std::fs::read_to_string(recipe).map_err(|e| e.to_string())?;
        let table: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        let level = table["model"]["level"].as_float().unwrap();
        std::fs::create_dir_all(run_dir).unwrap();
        let file = run_dir.join("epochs");
        let done: usize = std::fs::read_to_string(&file).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let now = done.max(epochs.min(self.budget));
        self.trained.fetch_add(now - done, Ordering::SeqCst);
        std::fs::write(&file, now.to_string()).unwrap();
        Ok(Progress { scores: (1..=now).map(|e| Some(score(level, e))).collect(), stopped_early: false })
    }
}

const RECIPE: &str = "task = \"toy\"\n[model]\nlevel = 0.5\n[train]\nepochs = 27\n";

fn space() -> Space {
    Space::from_toml("[params.\"model.level\"]\ntype = \"uniform\"\nlow = 0.5\nhigh = 0.95\n").unwrap()
}

fn level_of(study: &Study, trial: usize) -> f64 {
    study.params(trial)["model.level"].as_float().unwrap()
}

#[test]
fn curve_models_recover_known_curves() {
    // Each model's own curve, observed for 15 epochs, is refitted and extrapolated to epoch 60.
    let truths: [(Model, Vec<f64>); 4] = [
        (Model::Pow3, vec![0.9, 0.5, 0.7]),
        (Model::Janoschek, vec![0.85, 0.2, 0.15, 1.1]),
        (Model::Mmf, vec![0.9, 0.3, 0.2, 1.5]),
        (Model::LogLinear, vec![0.05, 0.5]),
    ];
    for (model, params) in truths {
        let pts: Vec<(f64, f64)> = (1..=15).map(|x| (x as f64, model.eval(&params, x as f64))).collect();
        let fit = curve::fit(model, &pts).unwrap();
        let (want, got) = (model.eval(&params, 60.0), fit.model.eval(&fit.params, 60.0));
        assert!((want - got).abs() < 0.01, "{}: {got} vs {want}", model.name());
        assert!(fit.sse < 1e-6, "{}: {}", model.name(), fit.sse);
    }
    // With noise (σ = 0.01) on a pow3 curve the ensemble's mean lands near the truth.
    let mut state = 11u64;
    let noisy: Vec<(f64, f64)> = (1..=20)
        .map(|x| {
            state = vesalius_io::mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            (x as f64, 0.9 - 0.5 * (x as f64).powf(-0.7) + 0.02 * (u - 0.5))
        })
        .collect();
    let e = Extrapolation::new(&noisy, 20, 60, 3);
    assert!((e.mean() - (0.9 - 0.5 * 60f64.powf(-0.7))).abs() < 0.03, "{}", e.mean());
}

#[test]
fn the_curve_rule_stops_hopeless_trials_and_keeps_promising_ones() {
    // Six epochs of 40 observed. A trial levelling off at 0.6 cannot reach a best of 0.8; one rising towards 0.95
    // can; and a best it has already passed is beaten for sure.
    let seen = |level: f64| -> Vec<(f64, f64)> { (1..=6).map(|e| (e as f64, score(level, e))).collect() };
    let hopeless = Extrapolation::new(&seen(0.6), 6, 40, 1).probability_above(0.8);
    let promising = Extrapolation::new(&seen(0.95), 6, 40, 1).probability_above(0.8);
    assert!(hopeless < 0.05, "{hopeless}");
    assert!(promising > 0.5, "{promising}");
    assert!(Extrapolation::new(&seen(0.95), 6, 40, 1).probability_above(0.5) > 0.99);
    // A curve that peaks and falls is judged by its peak ahead, not by its last value: rising to 0.8 at epoch 10 and
    // back to 0.4 at epoch 40 (y = 0.8 − (x − 10)² / 2250), seen for 8 epochs, can still beat 0.75.
    let peaked: Vec<(f64, f64)> = (1..=8).map(|e| (e as f64, 0.8 - ((e as f64) - 10.0).powi(2) / 2250.0)).collect();
    assert!(Extrapolation::new(&peaked, 8, 40, 1).probability_above(0.75) > 0.5);
    // Too few points for any model: nothing is known, nothing is stopped.
    assert_eq!(Extrapolation::new(&seen(0.6)[..2], 2, 40, 1).probability_above(0.8), 1.0);
}

#[test]
fn curve_stop_saves_epochs_without_losing_the_best_trial() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        StudyConfig { trials: 12, budget: 27, curve_stop: true, curve_every: Some(3), curve_min_points: Some(6), ..Default::default() };
    let study = Study::open(dir.path(), RECIPE, space(), config.clone()).unwrap();
    let runner = Curves { trained: AtomicUsize::new(0), budget: 27 };
    let summary = study.run(&runner).unwrap();
    let best_level = (0..12).map(|i| level_of(&study, i)).fold(f64::MIN, f64::max);
    let winner = summary.best_trial.unwrap();
    assert_eq!(level_of(&study, winner), best_level);
    let stopped: Vec<usize> = summary.trials.iter().filter(|t| matches!(t.status, Status::CurveStopped { .. })).map(|t| t.index).collect();
    assert!(stopped.len() >= 4, "{:?}", summary.statuses);
    // Every stopped trial was below the best complete trial when it was stopped, and could not have won.
    for &i in &stopped {
        assert!(level_of(&study, i) < best_level);
    }
    let trained = runner.trained.load(Ordering::SeqCst);
    assert_eq!(trained, summary.epochs_trained);
    assert!(trained < 12 * 27 * 3 / 4, "{trained} epochs");
    // best.toml is the winner's recipe; trials.csv has a row per trial.
    let best = std::fs::read_to_string(dir.path().join("best.toml")).unwrap();
    assert_eq!(best, std::fs::read_to_string(study.trial_dir(winner).join("recipe.toml")).unwrap());
    assert_eq!(std::fs::read_to_string(dir.path().join("trials.csv")).unwrap().lines().count(), 13);

    // Run again (a killed study started anew): every decision replays from the runs, nothing is retrained.
    let again = Study::open(dir.path(), RECIPE, space(), config.clone()).unwrap();
    let fresh = Curves { trained: AtomicUsize::new(0), budget: 27 };
    let replay = again.run(&fresh).unwrap();
    assert_eq!(fresh.trained.load(Ordering::SeqCst), 0);
    assert_eq!(replay, summary);
    // The folder holds this study only.
    let other = Study::open(dir.path(), RECIPE, space(), StudyConfig { seed: 9, ..config }).err().unwrap().to_string();
    assert!(other.contains("another recipe, space or settings"), "{other}");
}

#[test]
fn every_scheduler_finds_the_best_trial_in_fewer_epochs() {
    for scheduler in [Scheduler::Hyperband, Scheduler::Asha, Scheduler::TopK] {
        let dir = tempfile::tempdir().unwrap();
        let config = StudyConfig { trials: 27, budget: 27, scheduler, parallel: 2, ..Default::default() };
        let study = Study::open(dir.path(), RECIPE, space(), config).unwrap();
        let runner = Curves { trained: AtomicUsize::new(0), budget: 27 };
        let summary = study.run(&runner).unwrap();
        let winner = summary.best_trial.unwrap();
        let levels: Vec<f64> = summary.trials.iter().map(|t| level_of(&study, t.index)).collect();
        let best_seen = levels.iter().copied().fold(f64::MIN, f64::max);
        assert_eq!(level_of(&study, winner), best_seen, "{scheduler:?}");
        assert_eq!(summary.trials[winner].status, Status::Complete);
        let trained = runner.trained.load(Ordering::SeqCst);
        assert!(trained < 27 * 27 / 2, "{scheduler:?}: {trained} epochs");
    }
    // Hyperband's brackets for a budget of 27 epochs and η = 3: 27 configurations from 1 epoch, 12 from 3, …
    let dir = tempfile::tempdir().unwrap();
    let study = Study::open(
        dir.path(),
        RECIPE,
        space(),
        StudyConfig { trials: 100, budget: 27, scheduler: Scheduler::Hyperband, ..Default::default() },
    )
    .unwrap();
    let b = study.brackets();
    let sizes: Vec<usize> = b.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, vec![27, 12, 6, 4]);
    assert_eq!(b[0].1, vec![(1, 9), (3, 3), (9, 1), (27, 0)]);
    assert_eq!(b[3].1, vec![(27, 0)]);
}

#[test]
fn spaces_and_keys_are_checked() {
    let bad = Space::from_toml("[params.\"train.lr\"]\ntype = \"log_uniform\"\nlow = 0.0\nhigh = 1.0\n").unwrap_err().to_string();
    assert!(bad.contains("train.lr"), "{bad}");
    let missing = Space::from_toml("[params.\"optim.lr\"]\ntype = \"int\"\nlow = 1\nhigh = 3\n").unwrap();
    let e = apply(RECIPE, &missing.point(&[0.5])).unwrap_err().to_string();
    assert!(e.contains("optim.lr") && e.contains("[optim]"), "{e}");
    // Integers cover their range evenly; choices keep their TOML type.
    let s = Space::from_toml(
        "[params.\"a.n\"]\ntype = \"int\"\nlow = 1\nhigh = 3\n[params.\"a.h\"]\ntype = \"choice\"\nvalues = [[16], [32, 32]]\n",
    )
    .unwrap();
    let ns: Vec<i64> = [0.0, 0.34, 0.99].iter().map(|&u| s.point(&[0.0, u])["a.n"].as_integer().unwrap()).collect();
    assert_eq!(ns, vec![1, 2, 3]);
    assert_eq!(s.point(&[0.9, 0.0])["a.h"].as_array().unwrap().len(), 2);
    // Sobol points of a study stratify the interval: each eighth holds four of 32 trials.
    let dir = tempfile::tempdir().unwrap();
    let study = Study::open(dir.path(), RECIPE, space(), StudyConfig { trials: 32, budget: 27, ..Default::default() }).unwrap();
    let mut counts = [0; 8];
    for i in 0..32 {
        counts[(((level_of(&study, i) - 0.5) / 0.45) * 8.0) as usize] += 1;
    }
    assert_eq!(counts, [4; 8]);
}

/// Trial 0 rises to 0.7; trial 1 peaks at 0.9 on epoch 3 and falls to 0.3; trial 2 levels off at 0.5.
struct Shapes;

impl Runner for Shapes {
    fn run(&self, _recipe: &Path, run_dir: &Path, epochs: usize) -> Result<Progress, String> {
        let trial = run_dir.parent().unwrap().file_name().unwrap().to_string_lossy().to_string();
        let curve = |e: usize| -> f64 {
            let x = e as f64;
            match trial.as_str() {
                "trial-000" => score(0.7, e),
                "trial-001" => 0.9 - 0.6 * ((x - 3.0) / 27.0).abs().sqrt(),
                _ => score(0.5, e),
            }
        };
        Ok(Progress { scores: (1..=epochs.min(30)).map(|e| Some(curve(e))).collect(), stopped_early: false })
    }
}

#[test]
fn a_trial_that_already_beats_the_best_is_not_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        StudyConfig { trials: 3, budget: 30, curve_stop: true, curve_every: Some(5), curve_min_points: Some(5), ..Default::default() };
    let summary = Study::open(dir.path(), RECIPE, space(), config).unwrap().run(&Shapes).unwrap();
    let status: Vec<&Status> = summary.trials.iter().map(|t| &t.status).collect();
    // Trial 1's last values are far below trial 0's, but its best epoch (0.9) is above: it runs to the end and wins.
    assert_eq!(status[1], &Status::Complete);
    assert_eq!(summary.best_trial, Some(1));
    assert!(matches!(status[2], Status::CurveStopped { .. }), "{status:?}");
}
