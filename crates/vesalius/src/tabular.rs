//! `vesalius train|evaluate|predict` for classic models and the MLP on feature tables.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vesalius_cadx::tabular::{self, TableMetrics, TableRecipe};
use vesalius_eval::bootstrap::Estimate;

use crate::CliError;
use crate::backend::BackendKind;
use crate::with_backend;

/// Whether the recipe file is a table recipe.
pub fn is_table_recipe(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| TableRecipe::is_table_recipe(&t))
}

/// The models' test metrics side by side.
pub fn format_metrics(m: &TableMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} metrics: {} patients, {} rows; 95 % bootstrap CI over patients", m.set, m.n_patients, m.n_rows);
    s.push_str(&models_table(m.models.iter().map(|(k, r)| (k, &r.metrics))));
    s
}

/// One row per model, one column per metric (the first model's metrics), each `value [low, high]`.
pub fn models_table<'a>(models: impl Iterator<Item = (&'a String, &'a BTreeMap<String, Estimate>)> + Clone) -> String {
    let mut s = String::new();
    let names: Vec<&String> = models.clone().next().map(|(_, r)| r.keys().collect()).unwrap_or_default();
    let _ = write!(s, "  {:<14}", "model");
    for n in &names {
        let _ = write!(s, " {n:>24}");
    }
    s.push('\n');
    for (model, r) in models {
        let _ = write!(s, "  {model:<14}");
        for n in &names {
            let cell = r.get(*n).map_or(String::from("-"), |e| format!("{:.3} [{:.3}, {:.3}]", e.value, e.ci_low, e.ci_high));
            let _ = write!(s, " {cell:>24}");
        }
        s.push('\n');
    }
    s
}

/// `vesalius train TABLE.toml`.
pub fn train(backend: BackendKind, recipe_path: &Path, out: Option<PathBuf>) -> Result<(), CliError> {
    let recipe = TableRecipe::from_file(recipe_path)?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name));
    let m = with_backend!(backend, |B, AB, device| tabular::train::<AB>(&recipe, &out, &device).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate --run TABLE_RUN`: the stored test metrics (the models are scored when trained).
pub fn evaluate(run: &Path, split: &str) -> Result<(), CliError> {
    if split != "test" {
        return Err(CliError::Usage(format!("table runs score their test patients (--split test), not '{split}'")));
    }
    let path = run.join("metrics.json");
    let text = std::fs::read(&path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let m: TableMetrics = serde_json::from_slice(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    print!("{}", format_metrics(&m));
    Ok(())
}

/// `vesalius predict --run TABLE_RUN TABLE.csv…`: class probabilities of every row by every model.
pub fn predict(backend: BackendKind, run: &Path, inputs: &[PathBuf], output: Option<&Path>) -> Result<(), CliError> {
    let mut text = String::new();
    for (k, input) in inputs.iter().enumerate() {
        let csv = with_backend!(backend, |B, AB, device| tabular::predict::<B>(run, input, &device).map_err(CliError::from))?;
        text.push_str(if k == 0 { &csv } else { csv.split_once('\n').map_or("", |(_, rest)| rest) });
    }
    match output {
        Some(path) => vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
        None => print!("{text}"),
    }
    Ok(())
}
