//! `vesalius label suggest` and `vesalius label accept`: semi-automatic labelling of segmentation data
//! ([`vesalius_segmentation::label`]) and of classification data ([`vesalius_cadx::label`]).
use std::path::{Path, PathBuf};

use vesalius_cadx::run::ClassificationRun;
use vesalius_segmentation::infer::Predictor;
use vesalius_segmentation::label::{Method, Ranked, rank, stem};
use vesalius_segmentation::recipe::SegRecipe;

use crate::backend::BackendKind;
use crate::{CliError, with_backend};

/// Image files a pool folder holds, sorted by name.
pub fn pool_images(pool: &Path) -> Result<Vec<PathBuf>, CliError> {
    let entries = std::fs::read_dir(pool).map_err(|e| CliError::Usage(format!("{}: {e}", pool.display())))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            // Image files by their format; the `.img` half of an Analyze/NIfTI pair is read through its `.hdr`.
            let name = p.file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
            p.is_file()
                && !name.ends_with(".img")
                && !name.ends_with(".img.gz")
                && matches!(vesalius_io::Format::from_path(p), Some(f) if f != vesalius_io::Format::Dicom)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CliError::Usage(format!("{}: no images (NIfTI, Analyze, MetaImage, PNG, JPEG, TIFF) in the pool", pool.display())));
    }
    Ok(files)
}

/// What `suggest` found.
pub struct Suggested {
    /// Every pool image not yet in the run's cases, most uncertain first.
    pub ranked: Vec<Ranked>,
    /// Pre-label files written: one label map per image for segmentation (the first `n`), `labels.csv` for
    /// classification.
    pub prelabels: Vec<PathBuf>,
}

/// What `suggest` is asked for.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The segmentation or classification run.
    pub run: &'a Path,
    /// The folder of unlabelled images.
    pub pool: &'a Path,
    /// Images to pre-label.
    pub n: usize,
    /// How uncertainty is scored.
    pub method: Method,
    /// Monte-Carlo dropout passes.
    pub samples: usize,
    /// Seed of the dropout masks and of the random order.
    pub seed: u64,
    /// The output folder.
    pub out: &'a Path,
}

/// The classification run at `run`, refusing table and other runs.
fn classification_run(run: &Path) -> Result<vesalius_cadx::run::RunDir, CliError> {
    let dir = vesalius_cadx::run::RunDir::new(run);
    if !dir.file("run.json").is_file() || vesalius_cadx::tabular::is_run(run) {
        return Err(CliError::Usage(format!("{}: not an image classification or segmentation run", run.display())));
    }
    Ok(dir)
}

/// Writes `text` to `path` atomically.
fn write(path: &Path, text: &str) -> Result<(), CliError> {
    vesalius_io::write_atomic(path, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))
}

/// `suggest` for a classification run: `OUT/suggestions.csv` (`rank,image,score,prediction,p_<class>…`) and
/// `OUT/labels.csv` (`path,label`: the predicted class of the first `n`, to confirm or correct).
fn suggest_classes(backend: BackendKind, request: &Request, files: Vec<PathBuf>) -> Result<Suggested, CliError> {
    let Request { run, pool, n, method, samples, seed, out } = *request;
    let dir = classification_run(run)?;
    let info = dir.read_classifier_info()?;
    let recipe = vesalius_cadx::recipe::Recipe::from_file(&dir.file("recipe.toml"))?;
    let known = vesalius_cadx::label::known_files(&recipe)?;
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let known: Vec<PathBuf> = known.iter().map(|p| canon(p)).collect();
    let files: Vec<PathBuf> = files.into_iter().filter(|f| !known.contains(&canon(f))).collect();
    if files.is_empty() {
        return Err(CliError::Usage(format!("{}: every image of the pool is already in the run's data", pool.display())));
    }
    let scored = with_backend!(backend, |B, AB, device| {
        let scored = if method == Method::McDropout {
            let model = dir.load_best::<AB>(&info, &device)?;
            vesalius_cadx::label::score_files::<AB>(&model, &info, &files, method, samples, seed, &device)
        } else {
            let model = dir.load_best::<B>(&info, &device)?;
            vesalius_cadx::label::score_files::<B>(&model, &info, &files, method, samples, seed, &device)
        };
        scored.map_err(CliError::from)
    })?;
    let scored = vesalius_cadx::label::rank_scored(scored);
    let mut csv = String::from("rank,image,score,prediction");
    for c in &info.classes {
        csv.push_str(&format!(",p_{c}"));
    }
    csv.push('\n');
    let mut labels = String::from("path,label\n");
    for (i, s) in scored.iter().enumerate() {
        let predicted = vesalius_cadx::label::prediction(&s.probabilities, &info.classes, info.multi_label);
        csv.push_str(&format!("{},{},{:.6},{predicted}", i + 1, s.path.display(), s.score));
        for p in &s.probabilities {
            csv.push_str(&format!(",{p:.6}"));
        }
        csv.push('\n');
        if i < n {
            labels.push_str(&format!("{},{predicted}\n", s.path.display()));
        }
    }
    write(&out.join("suggestions.csv"), &csv)?;
    let labels_path = out.join("labels.csv");
    write(&labels_path, &labels)?;
    let ranked = scored.into_iter().map(|s| Ranked { path: s.path, score: s.score }).collect();
    Ok(Suggested { ranked, prelabels: vec![labels_path] })
}

/// `vesalius label suggest`: scores every pool image the run has not trained on, writes `OUT/suggestions.csv`
/// (`rank,image,score`) and the run's segmentation of the `n` most uncertain as `OUT/<name>.nii.gz` (for a
/// classification run: the predicted classes in `OUT/labels.csv`).
pub fn suggest(backend: BackendKind, request: &Request) -> Result<Suggested, CliError> {
    let Request { run, pool, n, method, samples, seed, out } = *request;
    let files = pool_images(pool)?;
    std::fs::create_dir_all(out).map_err(|e| CliError::Internal(format!("{}: {e}", out.display())))?;
    if !crate::commands::is_segmentation_run(run) {
        return suggest_classes(backend, request, files);
    }
    let dir = vesalius_segmentation::RunDir::new(run);
    with_backend!(backend, |B, AB, device| {
        let predictor = Predictor::<B>::load(&dir, &device)?;
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let known: Vec<PathBuf> =
            predictor.recipe.data.cases.iter().chain(&predictor.recipe.data.test).flat_map(|c| c.image.iter().map(|p| canon(p))).collect();
        let mut scored = Vec::new();
        for f in files.iter().filter(|f| !known.contains(&canon(f))) {
            let image = predictor.read_case(f)?;
            let score = predictor.uncertainty(&image, &stem(f), method, samples, seed)?;
            scored.push(Ranked { path: f.clone(), score });
        }
        if scored.is_empty() {
            return Err(CliError::Usage(format!("{}: every image of the pool is already among the run's cases", pool.display())));
        }
        let ranked = rank(scored);
        let mut csv = String::from("rank,image,score\n");
        for (i, r) in ranked.iter().enumerate() {
            csv.push_str(&format!("{},{},{:.6}\n", i + 1, r.path.display(), r.score));
        }
        vesalius_io::write_atomic(&out.join("suggestions.csv"), csv.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?;
        let mut prelabels = Vec::new();
        for r in ranked.iter().take(n) {
            let image = predictor.read_case(&r.path)?;
            let seg = predictor.predict(&image, false, predictor.recipe.infer.flip_tta)?;
            let path = out.join(format!("{}.nii.gz", stem(&r.path)));
            vesalius_segmentation::infer::write(&seg, &path, &out.join("unused_probabilities.nii.gz"))?;
            prelabels.push(path);
        }
        Ok::<_, CliError>(Suggested { ranked, prelabels })
    })
}

/// `<stem of out><suffix>` beside `out`, absolute.
fn beside(out: &Path, suffix: &str) -> Result<PathBuf, CliError> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::path::absolute(parent.join(format!("{}{suffix}", stem(out).trim_end_matches(".toml"))))
        .map_err(|e| CliError::Internal(e.to_string()))
}

/// `accept` for a classification run: the rows of the `labels` CSV (`path,label`, as `suggest` wrote it and the
/// annotator corrected it) added to the recipe's manifest, written beside the new recipe as `<name>.manifest.csv`.
fn accept_classes(
    backend: BackendKind,
    recipe: &Path,
    run: &Path,
    pool: Option<&Path>,
    labels: &Path,
    out: &Path,
) -> Result<usize, CliError> {
    let dir = classification_run(run)?;
    let info = dir.read_classifier_info()?;
    let r = vesalius_cadx::recipe::Recipe::from_file(recipe)?;
    if !labels.is_file() {
        return Err(CliError::Usage(format!("{}: a classification run takes its labels from a CSV file (path,label)", labels.display())));
    }
    let base = labels.parent().unwrap_or(Path::new("."));
    let rows = vesalius_data::source::read_manifest(labels)?;
    if rows.is_empty() {
        return Err(CliError::Usage(format!("{}: no labelled images", labels.display())));
    }
    let mut pairs = Vec::with_capacity(rows.len());
    for row in rows {
        let image = base.join(&row.path);
        if let Some(pool) = pool
            && !matches!((image.parent().map(Path::canonicalize), pool.canonicalize()), (Some(Ok(a)), Ok(b)) if a == b)
        {
            return Err(CliError::Usage(format!("{}: {} is not an image of the pool {}", labels.display(), row.path, pool.display())));
        }
        pairs.push((image, row.label));
    }
    let manifest = beside(out, ".manifest.csv")?;
    let init = beside(out, ".init.safetensors")?;
    let accepted = vesalius_cadx::label::accept(&r, &info.classes, &pairs, &manifest, &init)?;
    crate::export::export(backend, run, Some(vesalius_nets::transfer::Naming::Vesalius), &init)?;
    write(&manifest, &accepted.manifest)?;
    let text = accepted.recipe.to_toml();
    if text.is_empty() {
        return Err(CliError::Internal("the new recipe could not be written as TOML".into()));
    }
    write(out, &text)?;
    Ok(accepted.added)
}

/// `vesalius label accept`: the recipe with the corrected label maps of `labels` (named as `suggest` wrote them)
/// and their pool images added to its cases, starting from the run's network (exported beside the new recipe). For
/// a classification run `labels` is the corrected `labels.csv` and the rows join the recipe's manifest.
pub fn accept(backend: BackendKind, recipe: &Path, run: &Path, pool: Option<&Path>, labels: &Path, out: &Path) -> Result<usize, CliError> {
    if !crate::commands::is_segmentation_run(run) {
        return accept_classes(backend, recipe, run, pool, labels, out);
    }
    let pool = pool.ok_or_else(|| CliError::Usage("--pool: a segmentation run pairs label maps with the pool's images".into()))?;
    let r = SegRecipe::from_file(recipe)?;
    let images = pool_images(pool)?;
    let mut maps = pool_images(labels)?;
    maps.retain(|m| !m.file_name().is_some_and(|f| f.to_string_lossy().ends_with("_probabilities.nii.gz")));
    let mut pairs = Vec::new();
    for m in &maps {
        let s = stem(m);
        let image = images
            .iter()
            .find(|i| stem(i) == s)
            .ok_or_else(|| CliError::Usage(format!("{}: no image named {s} in {}", m.display(), pool.display())))?;
        pairs.push((std::path::absolute(image).unwrap_or(image.clone()), std::path::absolute(m).unwrap_or(m.clone())));
    }
    let init = beside(out, ".init.safetensors")?;
    let next = vesalius_segmentation::label::accept(&r, &pairs, &init)?;
    crate::export::export(backend, run, Some(vesalius_nets::transfer::Naming::Vesalius), &init)?;
    let text = next.to_toml();
    if text.is_empty() {
        return Err(CliError::Internal("the new recipe could not be written as TOML".into()));
    }
    write(out, &text)?;
    Ok(pairs.len())
}
