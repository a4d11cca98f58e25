//! `vesalius train|evaluate|predict` for treatment-response recipes (`task = "response"`).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vesalius_prediction::response::{self, ResponseMetrics, ResponseRecipe};

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// The test metrics as a table.
pub fn format_metrics(m: &ResponseMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} set: {} tumour slices, {} pairs ({} responders); predicted change ln(area after / area before), 95 % bootstrap intervals over {}",
        m.set, m.slices, m.pairs, m.responders, m.bootstrap_unit
    );
    for (name, e) in m.change.metrics.iter().chain(std::iter::once((&"responder AUC".to_string(), &m.responder_auc))) {
        let _ = writeln!(s, "  {name:<16} {:.4} [{:.4}, {:.4}]", e.value, e.ci_low, e.ci_high);
    }
    s
}

/// `vesalius train RESPONSE.toml`.
pub fn train(backend: BackendKind, source: &Path, out: Option<PathBuf>, quiet: bool) -> Result<(), CliError> {
    let recipe = ResponseRecipe::from_file(source)?;
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "response".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let m = with_backend!(backend, |B, AB, device| response::train::<AB>(&recipe, &out, &device, |log| {
        if !quiet {
            let r2 = log.val.get("r2").copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
            eprintln!("epoch {:>4}  loss {:.5}  val R² {r2}{}", log.epoch, log.train_loss, if log.best { "  *" } else { "" });
        }
    })
    .map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate --run RESPONSE_RUN`.
pub fn evaluate(backend: BackendKind, run: &Path, split: &str) -> Result<(), CliError> {
    if split != "test" {
        return Err(CliError::Usage(format!("response runs score their test tumours (--split test), not '{split}'")));
    }
    let m = with_backend!(backend, |B, AB, device| response::evaluate::<B>(run, &device).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("written: {}", run.join("metrics.json").display());
    Ok(())
}

/// `vesalius predict --run RESPONSE_RUN BEFORE AFTER --mask TUMOUR`: the predicted change of every masked slice.
pub fn predict(backend: BackendKind, run: &Path, inputs: &[PathBuf], mask: Option<&Path>, output: Option<&Path>) -> Result<(), CliError> {
    let ([before, after], Some(mask)) = (inputs, mask) else {
        return Err(CliError::Usage("response prediction takes the scan before and the scan after (two inputs) and --mask TUMOUR".into()));
    };
    let rows = with_backend!(backend, |B, AB, device| response::predict::<B>(run, before, after, mask, &device).map_err(CliError::from))?;
    let mut csv = String::from("slice,predicted_log_ratio,predicted_area_ratio\n");
    for (slice, v) in rows {
        let _ = writeln!(csv, "{slice},{v:.6},{:.6}", v.exp());
    }
    match output {
        Some(path) => vesalius_io::write_atomic(path, csv.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
        None => print!("{csv}"),
    }
    Ok(())
}
