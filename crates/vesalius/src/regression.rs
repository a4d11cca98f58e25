//! `vesalius train|evaluate|predict` for regression recipes (continuous and ordinal targets from tables).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vesalius_prediction::regression::{self, RegressionMetrics, RegressionRecipe};

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// The models' test metrics side by side.
pub fn format_metrics(m: &RegressionMetrics) -> String {
    let mut s = String::new();
    let kind = match m.target_type {
        regression::TargetType::Continuous => "continuous",
        regression::TargetType::Ordinal => "ordinal",
    };
    let _ = writeln!(
        s,
        "{} metrics of {} ({kind}): {} {}, {} rows; 95 % bootstrap CI over {}",
        m.set, m.target, m.n_patients, m.bootstrap_unit, m.n_rows, m.bootstrap_unit
    );
    s.push_str(&crate::tabular::models_table(m.models.iter().map(|(k, r)| (k, &r.metrics))));
    s
}

/// `vesalius train REGRESSION.toml`.
pub fn train(backend: BackendKind, recipe_path: &Path, out: Option<PathBuf>) -> Result<(), CliError> {
    let recipe = RegressionRecipe::from_file(recipe_path)?;
    let name = recipe_path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "regression".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let m = with_backend!(backend, |B, AB, device| regression::train::<AB>(&recipe, &out, &device).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate --run REGRESSION_RUN`: the models re-scored on the test patients.
pub fn evaluate(backend: BackendKind, run: &Path, split: &str) -> Result<(), CliError> {
    if split != "test" {
        return Err(CliError::Usage(format!("regression runs score their test patients (--split test), not '{split}'")));
    }
    let m = with_backend!(backend, |B, AB, device| regression::evaluate::<B>(run, &device).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("written: {}", run.join("metrics.json").display());
    Ok(())
}

/// `vesalius predict --run REGRESSION_RUN TABLE.csv…`: every row's prediction by every model.
pub fn predict(backend: BackendKind, run: &Path, inputs: &[PathBuf], output: Option<&Path>) -> Result<(), CliError> {
    let mut text = String::new();
    for (k, input) in inputs.iter().enumerate() {
        let csv = with_backend!(backend, |B, AB, device| regression::predict::<B>(run, input, &device).map_err(CliError::from))?;
        text.push_str(if k == 0 { &csv } else { csv.split_once('\n').map_or("", |(_, rest)| rest) });
    }
    match output {
        Some(path) => vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
        None => print!("{text}"),
    }
    Ok(())
}
