//! `vesalius degrade`, and `train` / `evaluate` / `predict` for enhancement runs.
use std::path::{Path, PathBuf};

use vesalius_enhancement::degrade::Degradation;
use vesalius_enhancement::recipe::EnhanceRecipe;
use vesalius_io::nifti::NiftiType;
use vesalius_train::RunDir;
use vesalius_train::engine::RunOptions;

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// Parameters of `vesalius degrade` (those a model does not use must be absent).
#[derive(Debug, Default)]
pub struct DegradeArgs {
    /// Model name.
    pub model: String,
    /// low-dose-ct: dose fraction.
    pub dose: Option<f64>,
    /// low-dose-ct: full-dose photons per ray.
    pub photons: Option<f64>,
    /// low-dose-ct: projection angles.
    pub angles: Option<usize>,
    /// thick-slice / downsample: factor.
    pub factor: Option<usize>,
    /// thick-slice: axis.
    pub axis: Option<usize>,
    /// kspace: acceleration.
    pub acceleration: Option<f64>,
    /// kspace: centre fraction.
    pub centre: Option<f64>,
    /// gaussian / rician: σ.
    pub sigma: Option<f64>,
}

impl DegradeArgs {
    /// The degradation model these arguments name.
    pub fn model(&self) -> Result<Degradation, CliError> {
        let need = |v: Option<f64>, flag: &str| v.ok_or_else(|| CliError::Usage(format!("--model {} needs --{flag}", self.model)));
        let used: &[&str] = match self.model.as_str() {
            "low-dose-ct" => &["dose", "photons", "angles"],
            "thick-slice" => &["factor", "axis"],
            "downsample" => &["factor"],
            "kspace" => &["acceleration", "centre"],
            "gaussian" | "rician" => &["sigma"],
            other => {
                return Err(CliError::Usage(format!(
                    "unknown degradation model '{other}' (low-dose-ct, thick-slice, downsample, kspace, gaussian, rician)"
                )));
            }
        };
        let given = [
            ("dose", self.dose.is_some()),
            ("photons", self.photons.is_some()),
            ("angles", self.angles.is_some()),
            ("factor", self.factor.is_some()),
            ("axis", self.axis.is_some()),
            ("acceleration", self.acceleration.is_some()),
            ("centre", self.centre.is_some()),
            ("sigma", self.sigma.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(f, g)| *g && !used.contains(f)) {
            return Err(CliError::Usage(format!("--{flag} does not apply to --model {}", self.model)));
        }
        let model = match self.model.as_str() {
            "low-dose-ct" => Degradation::LowDoseCt {
                dose: need(self.dose, "dose")?,
                photons: self.photons.unwrap_or(vesalius_enhancement::degrade::FULL_DOSE_PHOTONS),
                angles: self.angles,
            },
            "thick-slice" => Degradation::ThickSlice {
                factor: self.factor.ok_or_else(|| CliError::Usage("--model thick-slice needs --factor".into()))?,
                axis: self.axis.unwrap_or(2),
            },
            "downsample" => {
                Degradation::Downsample { factor: self.factor.ok_or_else(|| CliError::Usage("--model downsample needs --factor".into()))? }
            }
            "kspace" => Degradation::Kspace { acceleration: need(self.acceleration, "acceleration")?, centre: self.centre.unwrap_or(0.08) },
            "gaussian" => Degradation::Gaussian { sigma: need(self.sigma, "sigma")? },
            _ => Degradation::Rician { sigma: need(self.sigma, "sigma")? },
        };
        model.validate().map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(model)
    }
}

impl From<vesalius_enhancement::EnhanceError> for CliError {
    fn from(e: vesalius_enhancement::EnhanceError) -> Self {
        match e {
            vesalius_enhancement::EnhanceError::Internal(m) => CliError::Internal(m),
            vesalius_enhancement::EnhanceError::Input(m) => CliError::Usage(m),
        }
    }
}

/// `OUT` with `_SUFFIX` before its extension (`x.nii.gz` → `x_mask.nii.gz`).
pub fn beside(output: &Path, suffix: &str) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (stem, ext) = [".nii.gz", ".nii", ".png", ".tif"]
        .iter()
        .find_map(|e| name.strip_suffix(e).map(|s| (s.to_string(), *e)))
        .unwrap_or((name.clone(), ""));
    output.with_file_name(format!("{stem}_{suffix}{ext}"))
}

/// `vesalius degrade IN OUT --model NAME …`: writes the degraded image (float32 NIfTI, or PNG/TIFF by extension)
/// and, for k-space models, the sampling mask beside it.
pub fn degrade(input: &Path, output: &Path, args: &DegradeArgs, seed: u64) -> Result<(), CliError> {
    let model = args.model()?;
    // The k-space model also takes dynamic series (frames along a fourth axis).
    let img = if matches!(model, vesalius_enhancement::degrade::Degradation::Kspace { .. }) {
        vesalius_io::load(input)?
    } else {
        vesalius_enhancement::data::load_image(input)?
    };
    let out = model.apply(&img, seed).map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
    crate::commands::save_image(output, &out.image, NiftiType::F32)?;
    println!("{} → {} ({}, {:?}, seed {seed})", input.display(), output.display(), model.name(), out.image.shape());
    if let Some(mask) = &out.mask {
        let path = beside(output, "mask");
        crate::commands::save_image(&path, mask, NiftiType::U8)?;
        println!("mask → {}", path.display());
    }
    if let Some(complex) = &out.complex {
        // Two channels: NIfTI only.
        let name = output.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let path = if name.ends_with(".nii") || name.ends_with(".nii.gz") {
            beside(output, "complex")
        } else {
            output.with_file_name("complex.nii.gz")
        };
        let path = if path.extension().is_some_and(|e| e == "gz" || e == "nii") { path } else { path.with_extension("nii.gz") };
        vesalius_io::nifti::save(&path, complex, NiftiType::F32)?;
        println!("zero-filled complex image → {}", path.display());
    }
    Ok(())
}

/// `vesalius train` for an enhancement recipe.
pub fn train(backend: BackendKind, source: &Path, out: Option<PathBuf>, quiet: bool) -> Result<(), CliError> {
    let recipe = EnhanceRecipe::from_file(source)?;
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "enhancement".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let run = RunDir::new(&out);
    let outcome = with_backend!(backend, |B, AB, device| {
        vesalius_enhancement::train::train::<AB>(&recipe, &run, &device, &RunOptions { quiet, ..Default::default() }, |log| {
            if !quiet {
                let v = |k: &str| log.val.get(k).copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
                eprintln!(
                    "epoch {:>4}  loss {:.6}  val PSNR {} dB  val SSIM {}{}  ({:.1} s)",
                    log.epoch,
                    log.train_loss,
                    v("psnr"),
                    v("ssim"),
                    if log.best { "  *" } else { "" },
                    log.seconds
                );
            }
        })
        .map_err(CliError::from)
    })?;
    let [planes, val, test] = outcome.sizes;
    println!("data: {planes} training plane(s), {val} validation and {test} test case(s)");
    if let Some(after) = outcome.resumed_after {
        println!("resumed after epoch {after}");
    }
    if !outcome.complete {
        println!("stopped after epoch {}", outcome.state.epochs_done);
    }
    println!(
        "best validation PSNR {} dB (epoch {})",
        outcome.state.best_score.map_or("-".to_string(), |d| format!("{d:.2}")),
        outcome.state.best_epoch.unwrap_or(0)
    );
    if let Some(m) = &outcome.test {
        print!("{}", format_metrics(m));
    }
    println!("run directory: {}", out.display());
    Ok(())
}

/// The table `evaluate` prints.
pub fn format_metrics(m: &vesalius_enhancement::evaluate::EnhanceMetrics) -> String {
    let mut s = format!(
        "{} set: {} case(s), {} {} resampled; window [{}, {}]{}\n",
        m.set,
        m.cases.len(),
        m.clusters,
        m.bootstrap_unit,
        m.window[0],
        m.window[1],
        m.gaussian_sigma.map_or(String::new(), |s| format!(
            "; Gaussian σ {s} px, non-local means h = {} σ̂ (chosen on validation)",
            m.nlm_factor.unwrap_or(f64::NAN)
        ))
    );
    s.push_str(&format!("  {:<10} {:>26} {:>26} {:>26}\n", "method", "PSNR dB [95 % CI]", "SSIM [95 % CI]", "RMSE [95 % CI]"));
    for (name, q) in &m.methods {
        let e = |e: &vesalius_eval::bootstrap::Estimate, p: usize| format!("{:.p$} [{:.p$}, {:.p$}]", e.value, e.ci_low, e.ci_high);
        s.push_str(&format!("  {:<10} {:>26} {:>26} {:>26}\n", name, e(&q.psnr, 2), e(&q.ssim, 4), e(&q.rmse, 2)));
    }
    if m.by_patient.len() > 1 {
        for (patient, methods) in &m.by_patient {
            let line: Vec<String> = methods.iter().map(|(name, [p, s])| format!("{name} {p:.2} dB / {s:.4}")).collect();
            s.push_str(&format!("  patient {patient}: {}\n", line.join(", ")));
        }
    }
    s.push_str(&format!("  input: {}\n", m.input));
    for (name, g) in &m.psnr_gain {
        s.push_str(&format!("  PSNR gain {name}: {:.2} dB [{:.2}, {:.2}]\n", g.value, g.ci_low, g.ci_high));
    }
    s
}

/// `vesalius evaluate` for an enhancement run.
pub fn evaluate(backend: BackendKind, run_dir: &Path, split: &str) -> Result<(), CliError> {
    let set = vesalius_eval::EvalSet::parse(split).ok_or_else(|| {
        CliError::Usage(format!("enhancement runs score the test or the validation cases (--split test|val), not '{split}'"))
    })?;
    let run = RunDir::new(run_dir);
    let m =
        with_backend!(backend, |B, AB, device| vesalius_enhancement::evaluate::evaluate::<B>(&run, &device, set).map_err(CliError::from))?;
    print!("{}", format_metrics(&m));
    println!("written: {}", run.file(set.file()).display());
    Ok(())
}

/// `vesalius predict` for an enhancement run: one `<name>_enhanced.nii.gz` per input in `out`. Reconstruction
/// (CRNN) runs take zero-filled complex images and their k-space `mask`.
pub fn predict(backend: BackendKind, run_dir: &Path, inputs: &[PathBuf], out: &Path, mask: Option<&Path>) -> Result<(), CliError> {
    use vesalius_enhancement::infer::{Enhancer, as_picture, is_picture, output_path};
    let run = RunDir::new(run_dir);
    std::fs::create_dir_all(out).map_err(|e| CliError::Usage(format!("{}: {e}", out.display())))?;
    with_backend!(backend, |B, AB, device| {
        let enhancer = Enhancer::<B>::load(&run, &device)?;
        let mask = mask.map(|m| vesalius_io::load(m).map_err(|e| CliError::Usage(e.to_string()))).transpose()?;
        for input in inputs {
            let (enhanced, dtype) = match &mask {
                Some(mask) => {
                    let img = vesalius_io::load(input)?;
                    (enhancer.reconstruct(&img, mask), img.dtype().to_string())
                }
                None => {
                    let img = vesalius_enhancement::data::load_image(input)?;
                    (enhancer.enhance(&img), img.dtype().to_string())
                }
            };
            let enhanced = enhanced.map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
            let path = output_path(input, out);
            if is_picture(input) {
                vesalius_io::save_2d(&path, &as_picture(&enhanced, &dtype)?)?;
            } else {
                vesalius_io::nifti::save(&path, &enhanced, NiftiType::F32)?;
            }
            println!("{} -> {}", input.display(), path.display());
        }
        Ok::<(), CliError>(())
    })
}

/// `vesalius train` for a stain-normalisation recipe: the normalised images and `metrics.json` in the run folder.
pub fn stain(backend: BackendKind, source: &Path, out: Option<PathBuf>) -> Result<(), CliError> {
    let recipe = vesalius_enhancement::stain::StainRecipe::from_file(source)?;
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "stain".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let report =
        with_backend!(backend, |B, AB, device| vesalius_enhancement::stain::run::<AB>(&recipe, &out, &device).map_err(CliError::from))?;
    println!("colour distance to the target in CIE L*a*b* (mean |Δmean|, mean |Δstd|, mean 1-Wasserstein over L*, a*, b*)");
    for (source, methods) in &report.sources {
        for (method, d) in methods {
            println!("  {source:<24} {method:<9} {:>7.3} {:>7.3} {:>7.3}", d.mean, d.std, d.wasserstein);
        }
    }
    println!("run directory: {}", out.display());
    Ok(())
}
