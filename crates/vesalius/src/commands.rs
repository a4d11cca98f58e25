//! The commands, written against generic backends.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vesalius_cadx::infer::predict_files;
use vesalius_cadx::recipe::Recipe;
use vesalius_cadx::run::{ClassificationRun, RunDir};
use vesalius_cadx::train::{TrainOptions, train as train_run};
use vesalius_data::source::Split;
use vesalius_eval::classification::ClassificationReport;
use vesalius_io::{Format, load};
use vesalius_train::RunOptions;

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// `vesalius train`.
pub fn train(backend: BackendKind, recipe_path: &Path, out: Option<PathBuf>, quiet: bool) -> Result<(), CliError> {
    let recipe = Recipe::from_file(recipe_path)?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name));
    let options = TrainOptions { quiet, ..Default::default() };
    let outcome = with_backend!(backend, |B, AB, device| train_run::<AB>(&recipe, &out, &device, &options).map_err(CliError::from))?;
    let classes = RunDir::new(&out).read_classifier_info()?.classes.clone();
    print!("{}", format_report(&outcome.test, &classes, "test", outcome.best_epoch));
    println!("run directory: {}", out.display());
    Ok(())
}

/// A human-readable table of a report.
pub fn format_report(r: &ClassificationReport, classes: &[String], split: &str, best_epoch: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{split} metrics ({} cases, {}, model of epoch {best_epoch}; 95 % bootstrap CI, {} resamples of {})",
        r.n, r.task, r.bootstrap_resamples, r.bootstrap_unit
    );
    for (name, e) in &r.metrics {
        let _ = writeln!(s, "  {name:<18} {:.4}  [{:.4}, {:.4}]", e.value, e.ci_low, e.ci_high);
    }
    if let Some(cm) = &r.confusion {
        let _ = writeln!(s, "  confusion matrix (rows: truth, columns: prediction)");
        for (i, row) in cm.iter().enumerate() {
            let name = classes.get(i).map(String::as_str).unwrap_or("?");
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>6}")).collect();
            let _ = writeln!(s, "  {name:>18} {}", cells.join(""));
        }
    }
    s
}

/// `vesalius evaluate`.
pub fn evaluate(backend: BackendKind, run_dir: &Path, split: &str) -> Result<(), CliError> {
    let run = RunDir::new(run_dir);
    let split = Split::parse(split).ok_or_else(|| CliError::Usage(format!("unknown split '{split}' (expected train, val or test)")))?;
    let file =
        with_backend!(backend, |B, AB, device| vesalius_cadx::evaluate::evaluate_run::<B>(&run, split, &device).map_err(CliError::from))?;
    print!("{}", format_report(&file.report, &file.classes, split.name(), file.best_epoch));
    println!("written: {}", run.file(&vesalius_cadx::evaluate::metrics_file(split)).display());
    Ok(())
}

/// `vesalius predict`.
pub fn predict(backend: BackendKind, run_dir: &Path, inputs: &[PathBuf], output: Option<&Path>) -> Result<(), CliError> {
    let run = RunDir::new(run_dir);
    let info = run.read_classifier_info()?;
    let files: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let probs = with_backend!(backend, |B, AB, device| {
        let model = run.load_best::<B>(&info, &device)?;
        predict_files(&model, &info, &files, &device).map_err(CliError::from)
    })?;
    let mut csv = String::from("path,prediction");
    for c in &info.classes {
        let _ = write!(csv, ",p_{}", c.replace([',', '"', '\n'], "_"));
    }
    csv.push('\n');
    for (path, p) in files.iter().zip(&probs) {
        let pred = if info.multi_label {
            info.classes.iter().zip(p).filter(|(_, v)| **v >= 0.5).map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(";")
        } else {
            let best = vesalius_eval::classification::predicted_class(p);
            info.classes.get(best).cloned().unwrap_or_default()
        };
        let _ = write!(csv, "{},{}", csv_field(&path.display().to_string()), csv_field(&pred));
        for v in p {
            let _ = write!(csv, ",{v:.6}");
        }
        csv.push('\n');
    }
    match output {
        Some(path) => vesalius_io::write_atomic(path, csv.as_bytes())?,
        None => print!("{csv}"),
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// `vesalius convert`.
pub fn convert(input: &Path, output: &Path, nifti2: bool, series: Option<&str>, slice: Option<(usize, usize)>) -> Result<(), CliError> {
    use vesalius_io::nifti::{NiftiType, NiftiVersion, save, save_version};
    let mut img = load_input(input, series)?;
    if let Some((axis, index)) = slice {
        img = vesalius_io::geometry::slice(&img, axis, index).map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
    }
    match Format::from_path(output) {
        Some(Format::Nifti | Format::NiftiGz | Format::NiftiPair) => {
            let dtype = NiftiType::from_name(img.dtype()).unwrap_or(NiftiType::F32);
            let dtype = if img.channels() == 3 && dtype == NiftiType::U8 && img.ndim() == 2 { NiftiType::Rgb24 } else { dtype };
            if nifti2 {
                save_version(output, &img, dtype, NiftiVersion::V2)?;
            } else {
                save(output, &img, dtype)?;
            }
        }
        Some(Format::Png | Format::Tiff) => vesalius_io::save_2d(output, &img)?,
        _ => {
            return Err(CliError::Usage(format!(
                "{}: cannot write this format (outputs: .nii, .nii.gz, .hdr (+ .img), .png, .tif, .tiff)",
                output.display()
            )));
        }
    }
    println!("{} → {} ({:?}, {})", input.display(), output.display(), img.shape(), img.dtype());
    Ok(())
}

/// An image file, or one series of a DICOM folder (the only one, or the one named by `series`).
pub(crate) fn load_input(path: &Path, series: Option<&str>) -> Result<vesalius_data::Image, CliError> {
    if path.is_dir() {
        return Ok(vesalius_io::dicom::load_series(path, series)?.0);
    }
    Ok(load(path)?)
}

/// Arguments of `vesalius register`.
#[derive(Debug)]
pub struct RegisterArgs {
    /// Fixed image.
    pub fixed: PathBuf,
    /// Moving image.
    pub moving: PathBuf,
    /// Warped output.
    pub output: PathBuf,
    /// Displacement field output.
    pub field: Option<PathBuf>,
    /// Label map to warp.
    pub labels: Option<PathBuf>,
    /// Warped label map output.
    pub labels_out: Option<PathBuf>,
    /// Fixed image's label map.
    pub fixed_labels: Option<PathBuf>,
    /// Evaluation output (JSON).
    pub metrics: Option<PathBuf>,
    /// Landmark pairs (CSV).
    pub landmarks: Option<PathBuf>,
    /// Method name.
    pub method: String,
    /// Similarity name.
    pub similarity: String,
    /// `dense` or `bspline`.
    pub deformation: String,
    /// B-spline control-point spacing (voxels of the fixed image).
    pub control_spacing: usize,
    /// Points per iteration of the affine and B-spline stages; 0 uses every voxel.
    pub samples: usize,
    /// `diffusion` or `bending`; `None`: bending for a B-spline, diffusion for a dense field.
    pub regulariser: Option<String>,
    /// The deformable stage's regulariser weight; `None` takes 100 for a sampled B-spline
    /// ([`DeformableOptions::sampled_bspline`](vesalius_registration::DeformableOptions::sampled_bspline)) and the
    /// similarity's [`Similarity::default_smoothness`](vesalius_registration::Similarity::default_smoothness) otherwise.
    pub smoothness: Option<f64>,
    /// A learned-registration run to register with.
    pub run: Option<PathBuf>,
}

/// Writes an image as NIfTI or a 2D format, by the output's extension.
pub fn save_image(path: &Path, img: &vesalius_data::Image, dtype: vesalius_io::nifti::NiftiType) -> Result<(), CliError> {
    match Format::from_path(path) {
        Some(Format::Nifti | Format::NiftiGz | Format::NiftiPair) => Ok(vesalius_io::nifti::save(path, img, dtype)?),
        Some(Format::Png | Format::Tiff) => Ok(vesalius_io::save_2d(path, img)?),
        _ => Err(CliError::Usage(format!("{}: cannot write this format (outputs: .nii, .nii.gz, .hdr, .png, .tif)", path.display()))),
    }
}

/// `vesalius register`.
pub fn register(backend: BackendKind, args: &RegisterArgs) -> Result<(), CliError> {
    use vesalius_io::nifti::NiftiType;
    use vesalius_registration::{DeformableOptions, Method, RegisterOptions, Similarity};
    let method = Method::parse(&args.method)
        .ok_or_else(|| CliError::Usage(format!("unknown method '{}' (affine, deformable, affine+deformable)", args.method)))?;
    if args.samples > 10_000_000 {
        return Err(CliError::Usage(format!("--samples {}: at most 10,000,000 points an iteration", args.samples)));
    }
    let sampled_bspline = args.deformation == "bspline" && args.samples > 0;
    // `auto`: Mattes mutual information for the affine stage and for a sampled B-spline, local correlation for a
    // field optimised on every voxel; all are robust to contrast differences between scanners and subjects.
    let (similarity, affine_similarity) = match args.similarity.as_str() {
        "auto" if sampled_bspline => (Similarity::Mi { bins: 32 }, None),
        "auto" => (Similarity::Ncc { window: 9 }, Some(Similarity::Mi { bins: 32 })),
        name => {
            (Similarity::parse(name).ok_or_else(|| CliError::Usage(format!("unknown similarity '{name}' (auto, mse, ncc, mi)")))?, None)
        }
    };
    if let Some(f) = &args.field
        && !matches!(Format::from_path(f), Some(Format::Nifti | Format::NiftiGz | Format::NiftiPair))
    {
        return Err(CliError::Usage(format!("{}: the field is written as NIfTI (.nii, .nii.gz)", f.display())));
    }
    let fixed = load(&args.fixed)?;
    let moving = load(&args.moving)?;
    if fixed.ndim() != moving.ndim() {
        return Err(CliError::Usage(format!(
            "{}: a {}D image cannot be registered to the {}D image {}",
            args.moving.display(),
            moving.ndim(),
            fixed.ndim(),
            args.fixed.display()
        )));
    }
    if args.run.is_some() && fixed.ndim() != 3 {
        return Err(CliError::Usage(format!(
            "{}: learned registration needs 3D volumes, this image is {}D",
            args.fixed.display(),
            fixed.ndim()
        )));
    }
    let labels = args.labels.as_deref().map(load).transpose()?;
    if let Some(l) = &labels
        && l.shape() != moving.shape()
    {
        return Err(CliError::Usage(format!(
            "{}: the label map's grid differs from the moving image's",
            args.labels.as_deref().unwrap_or(Path::new("")).display()
        )));
    }
    let landmarks = args.landmarks.as_deref().map(vesalius_registration::metrics::read_landmarks).transpose().map_err(CliError::Usage)?;
    let fixed_labels = args.fixed_labels.as_deref().map(load).transpose()?;
    if let (Some(l), Some(p)) = (&fixed_labels, &args.fixed_labels)
        && l.shape() != fixed.shape()
    {
        return Err(CliError::Usage(format!("{}: the label map's grid differs from the fixed image's", p.display())));
    }
    let base = if sampled_bspline { DeformableOptions::sampled_bspline() } else { DeformableOptions::default() };
    let smoothness = args.smoothness.unwrap_or(if sampled_bspline { base.smoothness } else { similarity.default_smoothness() });
    if !(smoothness >= 0.0 && smoothness.is_finite()) {
        return Err(CliError::Usage(format!("--smoothness {smoothness}: expected a finite weight of at least 0")));
    }
    let regulariser_name = args.regulariser.as_deref().unwrap_or(if args.deformation == "bspline" { "bending" } else { "diffusion" });
    let regulariser = vesalius_registration::Regulariser::parse(regulariser_name)
        .ok_or_else(|| CliError::Usage(format!("unknown regulariser '{regulariser_name}' (diffusion, bending)")))?;
    let deformation = match args.deformation.as_str() {
        "bspline" if args.control_spacing < 2 => return Err(CliError::Usage("--control-spacing must be at least 2 voxels".into())),
        "bspline" => vesalius_registration::Deformation::BSpline { spacing: args.control_spacing },
        _ => vesalius_registration::Deformation::Dense,
    };
    let defaults = RegisterOptions::default();
    let options = RegisterOptions {
        method,
        similarity,
        affine_similarity,
        affine: vesalius_registration::AffineOptions { samples: args.samples, ..defaults.affine.clone() },
        deformable: DeformableOptions { deformation, regulariser, smoothness, samples: args.samples, ..base },
    };
    if let Some(run) = &args.run
        && !vesalius_registration::train::is_run(run)
    {
        return Err(CliError::Usage(format!(
            "{}: not a learned-registration run (no recipe.toml with task = \"registration\")",
            run.display()
        )));
    }
    let started = std::time::Instant::now();
    let (result, warped_labels, labels_before) = with_backend!(backend, |B, AB, device| {
        let r = match &args.run {
            Some(run) => {
                let registrar = vesalius_registration::infer::LearnedRegistrar::<B>::load(&vesalius_train::RunDir::new(run), &device)?;
                registrar.register(&fixed, &moving, &device)?
            }
            None => vesalius_registration::register::<AB>(&fixed, &moving, &options, &device),
        };
        let l = labels.as_ref().map(|l| r.warp_labels::<B>(l, &fixed, &device));
        // Before: the moving labels placed on the fixed grid by their own geometry alone.
        let before = labels.as_ref().map(|l| {
            let identity = vesalius_registration::affine::identity();
            vesalius_registration::labels_at::<B>(l, &fixed, &vesalius_registration::voxel_map(&fixed, &moving, &identity), &device)
        });
        Ok::<_, CliError>((r, l, before))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let warped_dtype =
        NiftiType::from_name(moving.dtype()).filter(|t| *t == NiftiType::U8 && Format::from_path(&args.output) == Some(Format::Png));
    let warped = if warped_dtype.is_some() { result.warped.clone().with_dtype("uint8") } else { result.warped.clone() };
    save_image(&args.output, &warped, NiftiType::F32)?;
    if let Some(f) = &args.field {
        vesalius_io::nifti::save(f, &result.displacement_mm, NiftiType::F32)?;
    }
    if let (Some(l), Some(out)) = (&warped_labels, &args.labels_out) {
        let dtype = NiftiType::from_name(l.dtype()).unwrap_or(NiftiType::I16);
        save_image(out, l, dtype)?;
    }
    let dets = vesalius_registration::metrics::jacobian_determinants(&result.field_voxels, vesalius_registration::Grid::of(&fixed).size);
    let stats = vesalius_registration::metrics::jacobian_stats(&dets);
    let similarity_name = match (args.similarity.as_str(), method) {
        ("auto", Method::Affine) => String::from("auto (mi)"),
        ("auto", _) if sampled_bspline => String::from("auto (mi)"),
        ("auto", Method::Deformable) => String::from("auto (ncc)"),
        ("auto", Method::AffineDeformable) => String::from("auto (affine: mi, deformable: ncc)"),
        (name, _) => name.to_string(),
    };
    let (method_name, similarity_name) = match &args.run {
        Some(run) => (format!("learned ({})", run.display()), String::from("-")),
        None if method == Method::Affine => (args.method.clone(), similarity_name),
        None => {
            let field = match deformation {
                vesalius_registration::Deformation::Dense => String::from("dense"),
                vesalius_registration::Deformation::BSpline { spacing } if sampled_bspline => {
                    format!("bspline, control points every {spacing} voxels, {} points an iteration", args.samples)
                }
                vesalius_registration::Deformation::BSpline { spacing } => format!("bspline, control points every {spacing} voxels"),
            };
            (format!("{} ({field}, {regulariser_name})", args.method), similarity_name)
        }
    };
    let mut summary = json!({
        "method": method_name,
        "similarity": similarity_name,
        "seconds": (seconds * 100.0).round() / 100.0,
        "affine_world": result.world,
        "jacobian": stats,
    });
    if method != Method::Affine && args.run.is_none() {
        summary["smoothness"] = json!(smoothness);
    }
    if let Some(report) = &result.affine_report {
        summary["affine"] = json!(report);
        if report.kept_start {
            eprintln!("note: the affine stage ended worse than its start by the similarity; the start ({}) was kept", report.start);
        }
    }
    if let Some(report) = &result.deformable_report {
        summary["deformable"] = json!(report);
        if report.kept_start {
            eprintln!("note: the deformable stage ended worse than its start by the similarity; no displacement was kept");
        }
    }
    if let (Some(reference), Some(after), Some(before)) = (&fixed_labels, &warped_labels, &labels_before) {
        use vesalius_registration::metrics::label_metrics;
        let (b, a) = (label_metrics(before, reference), label_metrics(after, reference));
        let per_label: serde_json::Map<String, Value> = b
            .into_iter()
            .zip(a)
            .map(|((label, before), (_, after))| (label.to_string(), json!({ "before": before, "after": after })))
            .collect();
        summary["labels"] = Value::Object(per_label);
    }
    if let Some(pairs) = &landmarks {
        let n = result.displacement_mm.voxels();
        let disp = [0, 1, 2].map(|c| result.displacement_mm.data()[c * n..(c + 1) * n].to_vec());
        // The image stores voxels first axis fastest: the same order as the registration grid's (d, h, w) flattening.
        let ((b_mean, b_max), (a_mean, a_max)) =
            vesalius_registration::metrics::target_registration_error(pairs, &disp, &vesalius_registration::Grid::of(&fixed));
        summary["tre_mm"] =
            json!({ "landmarks": pairs.len(), "before": { "mean": b_mean, "max": b_max }, "after": { "mean": a_mean, "max": a_max } });
    }
    if let Some(path) = &args.metrics {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| CliError::Internal(e.to_string()))?;
        vesalius_io::write_atomic(path, text.as_bytes())?;
    }
    println!("{}", serde_json::to_string(&summary).map_err(|e| CliError::Internal(e.to_string()))?);
    Ok(())
}

/// The JSON object that `vesalius info` prints. A DICOM folder with several series, none chosen, gives the list
/// of its series (UID, modality, description, number of files) instead of one image's description.
pub fn info_json(path: &Path, series: Option<&str>) -> Result<Value, CliError> {
    let format = Format::from_path(path).map(Format::name).unwrap_or("unknown");
    if path.is_dir() && series.is_none() {
        let listed = vesalius_io::dicom::list_series(path)?;
        if listed.len() > 1 {
            return Ok(json!({ "format": "dicom", "series": listed }));
        }
    }
    let img = load_input(path, series)?;
    let mut shape: Vec<usize> = img.shape().to_vec();
    if img.channels() > 1 {
        shape.push(img.channels());
    }
    let round = |v: f64| if v == 0.0 { 0.0 } else { (v * 1e6).round() / 1e6 };
    let affine: Vec<Vec<f64>> = img.affine().iter().map(|r| r.iter().map(|&v| round(v)).collect()).collect();
    let mut extra = serde_json::Map::new();
    if format == "dicom" {
        let header = if path.is_dir() {
            let all = vesalius_io::dicom::scan(path)?;
            match series {
                Some(uid) => all.get(uid).and_then(|f| f.first().cloned()),
                None => all.values().next().and_then(|f| f.first().cloned()),
            }
        } else {
            Some(vesalius_io::dicom::read_header(path)?)
        };
        if let Some(h) = header {
            extra.insert("modality".into(), json!(h.modality));
            extra.insert("series_uid".into(), json!(h.series_uid));
            extra.insert("n_slices".into(), json!(if img.ndim() == 3 { img.shape()[2] } else { 1 }));
        }
    }
    let mut out = json!({
        "format": format,
        "shape": shape,
        "dtype": img.dtype(),
        "spacing": img.spacing().into_iter().map(round).collect::<Vec<_>>(),
        "affine": affine,
        "orientation": img.orientation(),
    });
    if let Some(obj) = out.as_object_mut() {
        obj.extend(extra);
    }
    Ok(out)
}

/// The segmentation recipe behind `path`: a dataset folder (defaults), or a TOML file whose `task` is
/// `"segmentation"`; `None` for anything else (a classification recipe).
pub fn segmentation_recipe(path: &Path) -> Result<Option<vesalius_segmentation::recipe::SegRecipe>, CliError> {
    use vesalius_segmentation::recipe::SegRecipe;
    if path.is_dir() {
        if !path.join("dataset.json").is_file() {
            return Err(CliError::Usage(format!("{}: a folder to train on needs a dataset.json (MSD / nnU-Net layout)", path.display())));
        }
        return Ok(Some(SegRecipe::for_dataset(path)));
    }
    if !path.is_file() {
        std::fs::metadata(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    }
    match recipe_task(path).as_deref() {
        Some("segmentation") => Ok(Some(SegRecipe::from_file(path)?)),
        _ => Ok(None),
    }
}

/// Whether `run` holds a segmentation run (it has a `plans.json`).
pub fn is_segmentation_run(run: &Path) -> bool {
    run.join("plans.json").is_file()
}

/// `vesalius train` for segmentation.
pub fn train_segmentation(
    backend: BackendKind,
    source: &Path,
    recipe: vesalius_segmentation::recipe::SegRecipe,
    out: Option<PathBuf>,
    quiet: bool,
) -> Result<(), CliError> {
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "segmentation".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let run = vesalius_segmentation::RunDir::new(&out);
    let outcome = with_backend!(backend, |B, AB, device| {
        vesalius_segmentation::train::train_with::<AB>(&recipe, &run, &device, &RunOptions { quiet, ..Default::default() }, |log| {
            if !quiet {
                let dice = log.val.get("mean_dice").copied().flatten().map_or(String::from("-"), |d| format!("{d:.4}"));
                eprintln!(
                    "epoch {:>4}  loss {:.4}  val Dice {dice}{}  ({:.1} s)",
                    log.epoch,
                    log.train_loss,
                    if log.best { "  *" } else { "" },
                    log.seconds
                );
            }
        })
        .map_err(CliError::from)
    })?;
    let p = &outcome.plans;
    println!(
        "plan: {}D, spacing {:?} mm, patch {:?}, batch {}, U-Net {:?} ({:.0} MiB estimated of {:.0})",
        p.dims, p.target_spacing, p.patch, p.batch, p.features, p.estimated_mib, p.memory_mib
    );
    if let Some(after) = outcome.resumed_after {
        println!("resumed after epoch {after}");
    }
    if !outcome.complete {
        println!("stopped after epoch {}", outcome.state.epochs_done);
    }
    println!(
        "best validation Dice {} (epoch {})",
        outcome.state.best_score.map_or("-".to_string(), |d| format!("{d:.4}")),
        outcome.state.best_epoch.unwrap_or(0)
    );
    if let Some(r) = &outcome.refinement {
        println!(
            "refinement (CRF-as-RNN): best validation Dice {} (epoch {})",
            r.best_score.map_or("-".to_string(), |d| format!("{d:.4}")),
            r.best_epoch.unwrap_or(0)
        );
    }
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate` for segmentation.
pub fn evaluate_segmentation(backend: BackendKind, run_dir: &Path, tta: bool, split: &str) -> Result<(), CliError> {
    use vesalius_segmentation::evaluate::EvalSet;
    let set = EvalSet::parse(split).ok_or_else(|| {
        CliError::Usage(format!("segmentation runs score the test or the validation set (--split test|val), not '{split}'"))
    })?;
    let run = vesalius_segmentation::RunDir::new(run_dir);
    let m = with_backend!(backend, |B, AB, device| vesalius_segmentation::evaluate::evaluate::<B>(&run, &device, tta, set)
        .map_err(CliError::from))?;
    println!("{} metrics ({} cases; mean [95 % bootstrap CI over {}])", m.set, m.cases.len(), m.bootstrap_unit);
    for (class, metrics) in &m.mean {
        for (name, e) in metrics {
            println!("  {class:<16} {name:<22} {:>10.4}  [{:.4}, {:.4}]", e.value, e.ci_low, e.ci_high);
        }
    }
    for (class, n) in m.missing_surface.iter().filter(|(_, n)| **n > 0) {
        println!("  {class}: {n} case(s) with a missed or spurious structure, counted at the image diagonal in hd95/assd");
    }
    for u in &m.unlabelled {
        let volumes: Vec<String> = u.volume_ml.iter().map(|(class, ml)| format!("{class} {ml:.0} ml")).collect();
        println!("unlabelled {}: {} (figures/unlabelled-{}.png)", u.id, volumes.join(", "), u.id);
    }
    println!("written: {}", run.file(set.file()).display());
    Ok(())
}

/// `vesalius predict` for segmentation.
pub fn predict_segmentation(
    backend: BackendKind,
    run_dir: &Path,
    inputs: &[PathBuf],
    out: &Path,
    probabilities: bool,
    tta: bool,
) -> Result<(), CliError> {
    use vesalius_segmentation::infer::{Predictor, output_paths, write};
    let run = vesalius_segmentation::RunDir::new(run_dir);
    std::fs::create_dir_all(out).map_err(|e| CliError::Usage(format!("{}: {e}", out.display())))?;
    with_backend!(backend, |B, AB, device| {
        let predictor = Predictor::<B>::load(&run, &device)?;
        let bar = vesalius_train::progress::bar(inputs.len() as u64, "prediction", false);
        for input in inputs {
            let image = predictor.read_case(input)?;
            let seg = predictor.predict(&image, probabilities, tta).map_err(|e| CliError::Usage(format!("{}: {e}", input.display())))?;
            let (labels, probs) = output_paths(input, out);
            write(&seg, &labels, &probs)?;
            bar.suspend(|| println!("{} -> {}", input.display(), labels.display()));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok::<(), CliError>(())
    })
}

/// The `task` a recipe file declares, if it is a TOML file that declares one.
pub fn recipe_task(path: &Path) -> Option<String> {
    if !path.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    text.parse::<toml::Table>().ok()?.get("task")?.as_str().map(str::to_string)
}

/// `vesalius train` for learned registration (`--epochs` sets the deformable network's steps).
pub fn train_registration(
    backend: BackendKind,
    source: &Path,
    out: Option<PathBuf>,
    quiet: bool,
    steps: Option<usize>,
) -> Result<(), CliError> {
    use vesalius_registration::recipe::RegRecipe;
    let mut recipe = RegRecipe::from_file(source)?;
    if let Some(s) = steps {
        recipe.train.steps = s;
    }
    let name = source.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "registration".into());
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
    let run = vesalius_train::RunDir::new(&out);
    let outcome = with_backend!(backend, |B, AB, device| {
        vesalius_registration::train::train_with::<AB>(&recipe, &run, &device, &RunOptions { quiet, ..Default::default() }, |stage, log| {
            if !quiet {
                let v = |k: &str| log.val.get(k).copied().flatten().map_or(String::from("-"), |d| format!("{d:.5}"));
                eprintln!(
                    "{stage:<10} step {:>6}  loss {:.5}  val loss {}  val Dice {}  ({:.1} s)",
                    log.steps,
                    log.train_loss,
                    v("loss"),
                    v("dice"),
                    log.seconds
                );
            }
        })
        .map_err(CliError::from)
    })?;
    if let Some((affine, deformable)) = outcome.resumed_after {
        println!("resumed after {affine} affine and {deformable} deformable steps");
    }
    let s = &outcome.state;
    let best_step = s.best_steps.unwrap_or(0);
    let affine_steps = outcome.affine.as_ref().map_or(0, |a| a.steps_done);
    println!(
        "best validation score {} (step {best_step}); {affine_steps} affine, {} deformable steps",
        s.best_score.map_or("-".to_string(), |v| format!("{v:.4}")),
        s.steps_done
    );
    println!("run directory: {}", out.display());
    Ok(())
}

/// `vesalius evaluate` for learned registration, optionally against optimisation on the same pairs.
pub fn evaluate_registration(backend: BackendKind, run_dir: &Path, optimisation: Option<&str>, split: &str) -> Result<(), CliError> {
    use vesalius_registration::{Method, RegisterOptions};
    let set = vesalius_eval::EvalSet::parse(split).ok_or_else(|| {
        CliError::Usage(format!("registration runs score the test or the validation pairs (--split test|val), not '{split}'"))
    })?;
    let run = vesalius_train::RunDir::new(run_dir);
    let options = match optimisation {
        None => None,
        Some(name) => {
            let method = Method::parse(name)
                .ok_or_else(|| CliError::Usage(format!("unknown method '{name}' (affine, deformable, affine+deformable)")))?;
            let recipe = vesalius_registration::recipe::RegRecipe::from_file(&run.file("recipe.toml"))?;
            Some(RegisterOptions { method, similarity: recipe.similarity(), ..RegisterOptions::default() })
        }
    };
    let m = with_backend!(backend, |B, AB, device| vesalius_registration::evaluate::evaluate::<AB>(&run, &device, options.as_ref(), set)
        .map_err(CliError::from))?;
    println!("{} pairs: {} (mean [95 % bootstrap CI over pairs])", m.set, m.learned.pairs.len());
    let print = |title: &str, method: &vesalius_registration::evaluate::MethodMetrics| {
        println!("{title}");
        for (name, e) in &method.mean {
            println!("  {name:<24} {:>10.4}  [{:.4}, {:.4}]", e.value, e.ci_low, e.ci_high);
        }
    };
    print("learned", &m.learned);
    if let Some(o) = &m.optimisation {
        print(&format!("optimisation ({})", optimisation.unwrap_or_default()), o);
    }
    println!("written: {}", run.file(set.file()).display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vesalius_eval::bootstrap::Estimate;

    use super::*;

    #[test]
    fn report_table() {
        let e = |v: f64, lo: f64, hi: f64| Estimate { value: v, ci_low: lo, ci_high: hi, resamples: 1000 };
        let metrics = BTreeMap::from([("accuracy".to_string(), e(0.9, 0.85, 0.94)), ("auc".to_string(), e(0.97, 0.95, 0.985))]);
        let report = ClassificationReport {
            n: 200,
            task: "binary".into(),
            metrics,
            confusion: Some(vec![vec![90, 10], vec![10, 90]]),
            bootstrap_resamples: 1000,
            bootstrap_seed: 0,
            bootstrap_unit: "patients".into(),
        };
        insta::assert_snapshot!(format_report(&report, &["benign".into(), "malignant".into()], "test", 7));
    }
}
