//! `train`, `evaluate` and `predict` for survival recipes and runs.
use std::path::{Path, PathBuf};

use vesalius_prediction::PredError;
use vesalius_prediction::evaluate::SurvivalMetrics;
use vesalius_prediction::longitudinal::LongitudinalMetrics;

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

impl From<PredError> for CliError {
    fn from(e: PredError) -> Self {
        match e {
            PredError::Internal(m) => CliError::Internal(m),
            PredError::Input(m) => CliError::Usage(m),
        }
    }
}

/// The table `train` and `evaluate` print.
pub fn format_metrics(m: &SurvivalMetrics) -> String {
    let e = |x: &vesalius_eval::bootstrap::Estimate| format!("{:.4} [{:.4}, {:.4}]", x.value, x.ci_low, x.ci_high);
    let mut s =
        format!("{} set: {} {} ({} events); 95 % bootstrap intervals over patients\n", m.set, m.patients, m.bootstrap_unit, m.events);
    let mut line = |label: String, x: &vesalius_eval::bootstrap::Estimate| s.push_str(&format!("  {label:<20} {}\n", e(x)));
    line("Harrell's C".into(), &m.c_index);
    line(format!("Uno's C (τ = {})", m.tau), &m.uno_c);
    for (t, a) in m.times.iter().zip(&m.td_auc) {
        line(format!("AUC(t = {t})"), a);
    }
    line("mean AUC".into(), &m.td_auc_mean);
    line("integrated Brier".into(), &m.integrated_brier);
    let cal: Vec<String> = m.calibration.iter().map(|b| format!("{:.2}/{:.2}", b.predicted, b.observed)).collect();
    s.push_str(&format!(
        "  calibration at t = {} (predicted/observed survival by fifths of prediction): {}\n",
        m.calibration_time,
        cal.join(" ")
    ));
    s
}

/// The table a longitudinal run prints: Harrell's C per landmark for the network and the first-visit Cox model.
pub fn format_landmarks(m: &LongitudinalMetrics) -> String {
    let e = |x: &vesalius_eval::bootstrap::Estimate| format!("{:.4} [{:.4}, {:.4}]", x.value, x.ci_low, x.ci_high);
    let mut s = format!(
        "{} set: {} patients, {} visits; Harrell's C against the time left after each landmark, 95 % bootstrap intervals over patients\n",
        m.set, m.patients, m.visits
    );
    s.push_str(&format!(
        "  {:>8} {:>8} {:>7}  {:<26} {:<26} {}\n",
        "landmark", "at risk", "events", "RNN over visits", "Cox on first visit", "difference"
    ));
    for l in &m.landmarks {
        s.push_str(&format!(
            "  {:>8} {:>8} {:>7}  {:<26} {:<26} {}\n",
            l.landmark,
            l.patients,
            l.events,
            e(&l.c_index_rnn),
            e(&l.c_index_cox_first_visit),
            e(&l.difference)
        ));
    }
    s
}

/// `vesalius train` for a survival recipe.
pub fn train(backend: BackendKind, source: &Path, out: Option<PathBuf>, quiet: bool) -> Result<(), CliError> {
    let recipe = vesalius_prediction::recipe::SurvivalRecipe::from_file(source)?;
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "survival".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    if recipe.model.arch == vesalius_prediction::recipe::Arch::Rnn {
        let m = with_backend!(backend, |B, AB, device| vesalius_prediction::longitudinal::train::<AB>(&recipe, &out, &device, |log| {
            if !quiet {
                let c = log.val.get("c_index").copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
                eprintln!("epoch {:>4}  loss {:.5}  val C-index {c}{}", log.epoch, log.train_loss, if log.best { "  *" } else { "" });
            }
        })
        .map_err(CliError::from))?;
        print!("{}", format_landmarks(&m));
        println!("run directory: {}", out.display());
        return Ok(());
    }
    let (model, metrics) =
        with_backend!(backend, |B, AB, device| vesalius_prediction::train::train::<AB>(&recipe, &out, &device, |log| {
            if !quiet {
                let c = log.val.get("c_index").copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
                eprintln!("epoch {:>4}  loss {:.5}  val C-index {c}{}", log.epoch, log.train_loss, if log.best { "  *" } else { "" });
            }
        })
        .map_err(CliError::from))?;
    match &model.cox {
        Some(cox) => {
            println!(
                "Cox model ({} features, {} Newton iterations); coefficients per training standard deviation:",
                model.features.len(),
                cox.iterations
            );
            for (f, b) in model.features.iter().zip(&cox.coefficients) {
                println!("  {f:<24} {b:>9.4}  (hazard ratio {:.3})", b.exp());
            }
        }
        None => println!("DeepSurv network on {} features (best validation C-index selected)", model.features.len()),
    }
    print!("{}", format_metrics(&metrics));
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate` for a survival run.
pub fn evaluate(backend: BackendKind, run: &Path, split: &str) -> Result<(), CliError> {
    if split != "test" {
        return Err(CliError::Usage(format!("survival runs score their test patients (--split test), not '{split}'")));
    }
    if vesalius_prediction::longitudinal::is_run(run) {
        let m =
            with_backend!(backend, |B, AB, device| vesalius_prediction::longitudinal::evaluate::<B>(run, &device).map_err(CliError::from))?;
        print!("{}", format_landmarks(&m));
        println!("written: {}", run.join("metrics.json").display());
        return Ok(());
    }
    let m = with_backend!(backend, |B, AB, device| vesalius_prediction::evaluate::evaluate::<B>(run, &device).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("written: {}", run.join("metrics.json").display());
    Ok(())
}

/// `vesalius predict` for a survival run: one CSV row per subject of each table.
pub fn predict(backend: BackendKind, run: &Path, inputs: &[PathBuf], output: Option<&Path>) -> Result<(), CliError> {
    let mut text = String::new();
    for (k, input) in inputs.iter().enumerate() {
        if vesalius_prediction::longitudinal::is_run(run) {
            let csv = with_backend!(backend, |B, AB, device| vesalius_prediction::longitudinal::predict::<B>(run, input, &device)
                .map_err(CliError::from))?;
            text.push_str(if k == 0 { &csv } else { csv.split_once('\n').map_or("", |(_, rest)| rest) });
            continue;
        }
        let (rows, times) =
            with_backend!(backend, |B, AB, device| vesalius_prediction::infer::predict::<B>(run, input, &device).map_err(CliError::from))?;
        let csv = vesalius_prediction::infer::to_csv(&rows, &times);
        text.push_str(if k == 0 { &csv } else { csv.split_once('\n').map_or("", |(_, rest)| rest) });
    }
    match output {
        Some(path) => vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
        None => print!("{text}"),
    }
    Ok(())
}
