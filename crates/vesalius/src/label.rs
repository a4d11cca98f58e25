//! `vesalius label suggest` and `vesalius label accept`: semi-automatic labelling of segmentation data
//! ([`vesalius_segmentation::label`]).
use std::path::{Path, PathBuf};

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
    /// Pre-label files written (the first `n`).
    pub prelabels: Vec<PathBuf>,
}

/// `vesalius label suggest`: scores every pool image the run has not trained on, writes `OUT/suggestions.csv`
/// (`rank,image,score`) and the run's segmentation of the `n` most uncertain as `OUT/<name>.nii.gz`.
pub fn suggest(
    backend: BackendKind,
    run: &Path,
    pool: &Path,
    n: usize,
    method: Method,
    samples: usize,
    seed: u64,
    out: &Path,
) -> Result<Suggested, CliError> {
    let files = pool_images(pool)?;
    std::fs::create_dir_all(out).map_err(|e| CliError::Internal(format!("{}: {e}", out.display())))?;
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

/// `vesalius label accept`: the recipe with the corrected label maps of `labels` (named as `suggest` wrote them)
/// and their pool images added to its cases, starting from the run's network (exported beside the new recipe).
pub fn accept(backend: BackendKind, recipe: &Path, run: &Path, pool: &Path, labels: &Path, out: &Path) -> Result<usize, CliError> {
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
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let init = std::path::absolute(parent.join(format!("{}.init.safetensors", stem(out).trim_end_matches(".toml"))))
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let next = vesalius_segmentation::label::accept(&r, &pairs, &init)?;
    crate::export::export(backend, run, Some(vesalius_nets::transfer::Naming::Vesalius), &init)?;
    let text = next.to_toml();
    if text.is_empty() {
        return Err(CliError::Internal("the new recipe could not be written as TOML".into()));
    }
    vesalius_io::write_atomic(out, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?;
    Ok(pairs.len())
}
