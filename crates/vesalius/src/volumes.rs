//! `vesalius train|evaluate` for volume-classification recipes: the CNN + RNN over slices beside the 3D CNN.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use vesalius_cadx::volumes::{self, VolumeMetrics, VolumeRecipe};

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// The networks' test metrics side by side.
pub fn format_metrics(m: &VolumeMetrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} set: {} cubes ({} / {}); 95 % bootstrap CI over cubes", m.set, m.n, m.classes[0], m.classes[1]);
    s.push_str(&crate::tabular::models_table(m.models.iter().map(|(k, r)| (k, &r.metrics))));
    s
}

/// `vesalius train VOLUMES.toml`.
pub fn train(backend: BackendKind, source: &Path, out: Option<PathBuf>, quiet: bool) -> Result<(), CliError> {
    let recipe = VolumeRecipe::from_file(source)?;
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "volumes".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let m = with_backend!(backend, |B, AB, device| volumes::train::<AB>(&recipe, &out, &device, |arch, log| {
        if !quiet {
            let auc = log.val.get("auc").copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
            eprintln!(
                "{:<6} epoch {:>4}  loss {:.5}  val AUC {auc}{}",
                arch.name(),
                log.epoch,
                log.train_loss,
                if log.best { "  *" } else { "" }
            );
        }
    })
    .map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate --run VOLUMES_RUN`.
pub fn evaluate(backend: BackendKind, run: &Path, split: &str) -> Result<(), CliError> {
    if split != "test" {
        return Err(CliError::Usage(format!("volume-classification runs score their test cubes (--split test), not '{split}'")));
    }
    let m = with_backend!(backend, |B, AB, device| volumes::evaluate::<B>(run, &device).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("written: {}", run.join("metrics.json").display());
    Ok(())
}
