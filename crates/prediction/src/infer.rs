//! Applying a survival run to a new table: one row per subject with its id, risk (`xᵀβ` on the training
//! standardisation; higher = earlier event) and survival probability at each evaluation time.
use std::path::Path;

use burn::tensor::backend::Backend;

use crate::PredError;
use crate::evaluate::read_run;
use crate::table::read_csv;
use crate::train::Scorer;

/// Predictions for the rows of `table` (same columns as the training table, or for image runs a manifest with the
/// same image column, paths relative to its folder; time and event columns are not needed): `(id, risk, survival at each time)`, and the times.
pub fn predict<B: Backend>(run: &Path, table: &Path, device: &B::Device) -> Result<(Vec<(String, f64, Vec<f64>)>, Vec<f64>), PredError> {
    let (recipe, model) = read_run(run)?;
    let scorer = Scorer::<B>::load(run, &recipe, &model, device)?;
    let metrics: crate::evaluate::SurvivalMetrics =
        vesalius_train::run::read_json(&run.join("metrics.json")).map_err(|e| PredError::Input(e.to_string()))?;
    let raw = read_csv(table)?;
    let id_col = recipe.data.id.as_deref().and_then(|c| raw.column(c).ok());
    let rows: Vec<Vec<f64>> = match &recipe.data.image {
        Some(column) => crate::images::read_pixels(&raw, column, table.parent().unwrap_or(Path::new(".")), recipe.model.image_size())?,
        None => (0..raw.rows.len()).map(|r| model.encoding.encode_row(&raw, r)).collect::<Result<_, _>>()?,
    };
    let (risks, survival) = scorer.predict(&model, &rows, &metrics.times);
    let out = risks
        .iter()
        .zip(survival)
        .enumerate()
        .map(|(r, (&risk, surv))| (id_col.map_or_else(|| (r + 1).to_string(), |c| raw.rows[r][c].trim().to_string()), risk, surv))
        .collect();
    Ok((out, metrics.times))
}

/// The predictions as CSV: `id,risk,survival_<t>…`.
pub fn to_csv(rows: &[(String, f64, Vec<f64>)], times: &[f64]) -> String {
    let mut s = String::from("id,risk");
    for t in times {
        s.push_str(&format!(",survival_{t}"));
    }
    s.push('\n');
    for (id, risk, surv) in rows {
        let id = if id.contains([',', '"', '\n']) { format!("\"{}\"", id.replace('"', "\"\"")) } else { id.clone() };
        s.push_str(&format!("{id},{risk:.6}"));
        for v in surv {
            s.push_str(&format!(",{v:.6}"));
        }
        s.push('\n');
    }
    s
}
