//! Semi-automatic labelling of classification data: ranking unlabelled image files by the classifier's uncertainty,
//! pre-labelling the most uncertain with the predicted class for an annotator to confirm or correct, and taking the
//! corrected labels back into the recipe's manifest, whose next training starts from the previous network.
//!
//! The scores are the engine's ([`vesalius_train::label`], shared with segmentation), per image:
//! * [`Method::Entropy`]: the entropy of the class probabilities over `ln(classes)`; for multi-label runs the mean
//!   binary entropy of the labels over `ln 2`;
//! * [`Method::Tta`]: the variance of the probabilities over the image as read, mirrored left–right, top–bottom and
//!   both, averaged over classes;
//! * [`Method::McDropout`]: the same variance over forward passes with the network's dropout active (AlexNet, VGG,
//!   GoogLeNet, the multi-layer perceptron); burn's dropout acts on autodiff backends only, so the network must be
//!   given on one;
//! * [`Method::Random`]: a seeded random order (the baseline).
//!
//! [`accept`] writes a new manifest: every row of the recipe's manifest with its path made absolute and its patient
//! named (the row's `patient_id`, or the path as the manifest wrote it, which is the patient the split used), so the
//! new data set splits its old rows exactly as before; the accepted images are added to the training split, never to
//! validation or test.
//!
//! ```
//! use vesalius_cadx::label::prediction;
//! let classes = vec!["benign".to_string(), "malignant".to_string()];
//! assert_eq!(prediction(&[0.2, 0.8], &classes, false), "malignant");
//! // Multi-label runs name every label at or above one half.
//! assert_eq!(prediction(&[0.7, 0.9], &classes, true), "benign;malignant");
//! ```
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use vesalius_data::source::{SourceConfig, csv_field as field, read_manifest};
use vesalius_nets::Classifier;
pub use vesalius_train::label::{Method, Ranked, entropy_score, random_score, rank, variance_score};

use crate::CadxError;
use crate::infer::{files_batch, probabilities, rows};
use crate::recipe::Recipe;
use crate::run::RunInfo;

/// One pool image: its uncertainty and the run's probabilities for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// The image file.
    pub path: PathBuf,
    /// Its uncertainty under the method (higher: less certain).
    pub score: f64,
    /// The run's class (or label) probabilities for the image as read (for Monte-Carlo dropout, the mean over the
    /// passes).
    pub probabilities: Vec<f32>,
}

/// The pre-label of one image: the most probable class, or every label with probability at least one half
/// (`;`-separated, as manifests write label sets).
pub fn prediction(probabilities: &[f32], classes: &[String], multi_label: bool) -> String {
    if multi_label {
        return probabilities.iter().zip(classes).filter(|(p, _)| **p >= 0.5).map(|(_, c)| c.as_str()).collect::<Vec<_>>().join(";");
    }
    let best = probabilities.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    classes.get(best).cloned().unwrap_or_default()
}

/// The entropy score of one image's probabilities.
fn entropy_of(p: &[f32], multi_label: bool) -> f64 {
    if multi_label {
        // `[class][label]`: the probabilities of "present" and of "absent" for every label.
        let both: Vec<f32> = p.iter().copied().chain(p.iter().map(|q| 1.0 - q)).collect();
        entropy_score(&both, 2)
    } else {
        entropy_score(p, p.len())
    }
}

/// Scores image files (converted and resized as in training) by the run's uncertainty, in the order given. For
/// [`Method::McDropout`] `model` must live on an autodiff backend (where dropout acts) and have dropout; `samples`
/// passes are drawn with the backend's generator seeded from `seed`, which also seeds the random baseline.
#[allow(clippy::too_many_arguments)]
pub fn score_files<B: Backend>(
    model: &Classifier<B>,
    info: &RunInfo,
    files: &[PathBuf],
    method: Method,
    samples: usize,
    seed: u64,
    device: &B::Device,
) -> Result<Vec<Scored>, CadxError> {
    if method == Method::McDropout {
        if !model.has_dropout() {
            return Err(CadxError::Input(format!(
                "mc-dropout needs a network with dropout (alexnet, vgg11, vgg16, googlenet, mlp); this run's is {:?}",
                info.model.arch
            )));
        }
        if !B::ad_enabled(device) {
            return Err(CadxError::Internal("Monte-Carlo dropout needs the network on an autodiff backend".into()));
        }
    }
    let mut out = Vec::with_capacity(files.len());
    let bar = vesalius_train::progress::bar(files.len() as u64, "scoring", false);
    for chunk in files.chunks(32) {
        let refs: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
        let x = files_batch::<B>(info, &refs, device)?;
        let probs = |x: Tensor<B, 4>| rows(probabilities(model.forward(x), info.multi_label));
        let per_image = |views: &[Vec<Vec<f32>>]| -> Vec<f64> {
            (0..chunk.len()).map(|i| variance_score(&views.iter().map(|v| v[i].clone()).collect::<Vec<_>>())).collect()
        };
        let (scores, first): (Vec<f64>, Vec<Vec<f32>>) = match method {
            Method::Entropy => {
                let first = probs(x);
                (first.iter().map(|p| entropy_of(p, info.multi_label)).collect(), first)
            }
            Method::Random => {
                let scores = chunk.iter().map(|f| random_score(seed, &f.file_name().unwrap_or_default().to_string_lossy())).collect();
                (scores, probs(x))
            }
            Method::Tta => {
                let views = [probs(x.clone()), probs(x.clone().flip([3])), probs(x.clone().flip([2])), probs(x.flip([2, 3]))];
                (per_image(&views), views[0].clone())
            }
            Method::McDropout => {
                // Every pass seeded; the probabilities reported are the passes' mean (the predictive mean).
                let passes: Vec<Vec<Vec<f32>>> = (0..samples.max(2))
                    .map(|t| {
                        B::seed(device, seed.wrapping_add(t as u64));
                        probs(x.clone())
                    })
                    .collect();
                let t = passes.len() as f32;
                let mean = (0..chunk.len())
                    .map(|i| (0..passes[0][i].len()).map(|k| passes.iter().map(|p| p[i][k]).sum::<f32>() / t).collect())
                    .collect();
                (per_image(&passes), mean)
            }
        };
        for ((path, score), probabilities) in chunk.iter().zip(scores).zip(first) {
            out.push(Scored { path: path.clone(), score, probabilities });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Sorts scored images most uncertain first (ties by path), as [`rank`] does.
pub fn rank_scored(mut items: Vec<Scored>) -> Vec<Scored> {
    items.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.path.cmp(&b.path)));
    items
}

/// Image files a classification recipe's data already holds: the rows of a manifest, or the images under a folder
/// source (none for MedMNIST archives and volume patches, which are not files).
pub fn known_files(recipe: &Recipe) -> Result<Vec<PathBuf>, CadxError> {
    match &recipe.data {
        SourceConfig::Csv { path, .. } => {
            let base = path.parent().unwrap_or(Path::new("."));
            Ok(read_manifest(path)?.into_iter().map(|r| base.join(r.path)).collect())
        }
        SourceConfig::Folder { path } => {
            let mut out = Vec::new();
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() { stack.push(p) } else { out.push(p) }
                }
            }
            Ok(out)
        }
        SourceConfig::Medmnist { .. } | SourceConfig::VolumePatches(_) => Ok(Vec::new()),
    }
}

/// Whether two paths name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The result of [`accept`].
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// The new recipe: its data the new manifest, its training started from `init`.
    pub recipe: Recipe,
    /// The new manifest's text (`path,label,patient_id,split`).
    pub manifest: String,
    /// Images added.
    pub added: usize,
}

/// The recipe with the labelled `(image, label)` pairs added to its manifest's training split, the manifest to be
/// written at `manifest_path` and the training started from `init` (the previous run's network, exported). Each
/// label must be one of `classes` (every `;`-separated name for multi-label recipes) and each image a readable 2D
/// image not already in the manifest; recipes that read anything but a manifest are refused.
pub fn accept(
    recipe: &Recipe,
    classes: &[String],
    pairs: &[(PathBuf, String)],
    manifest_path: &Path,
    init: &Path,
) -> Result<Accepted, CadxError> {
    let SourceConfig::Csv { path: manifest, multi_label } = &recipe.data else {
        return Err(CadxError::Input(
            "label accept adds rows to a recipe's manifest (`kind = \"csv\"`); this recipe reads another source".into(),
        ));
    };
    let rows = read_manifest(manifest)?;
    let base = vesalius_io::folder_of(manifest);
    let mut text = String::from("path,label,patient_id,split\n");
    let mut known = Vec::with_capacity(rows.len() + pairs.len());
    for r in &rows {
        let file = base.join(&r.path);
        // The patient the split used: the manifest's, or the path as written (a sample's id).
        let patient = if r.patient.is_empty() { r.path.as_str() } else { r.patient.as_str() };
        text.push_str(&format!("{},{},{},{}\n", field(&file.to_string_lossy()), field(&r.label), field(patient), field(&r.split)));
        known.push(file);
    }
    for (image, label) in pairs {
        if known.iter().any(|k| same_file(k, image)) {
            return Err(CadxError::Input(format!("{}: already in the manifest {}", image.display(), manifest.display())));
        }
        let names: Vec<&str> =
            if *multi_label { label.split(';').map(str::trim).filter(|s| !s.is_empty()).collect() } else { vec![label.trim()] };
        if let Some(bad) = names.iter().find(|n| !classes.iter().any(|c| c == *n)) {
            return Err(CadxError::Input(format!("{}: label `{bad}` is not one of the run's classes {classes:?}", image.display())));
        }
        if !*multi_label && names.first().is_none_or(|n| n.is_empty()) {
            return Err(CadxError::Input(format!("{}: empty label", image.display())));
        }
        let img = vesalius_io::load(image)?;
        if img.ndim() != 2 {
            return Err(CadxError::Input(format!("{}: a {}-D image; classification takes 2D images", image.display(), img.ndim())));
        }
        let absolute = std::path::absolute(image).map_err(|e| CadxError::Internal(e.to_string()))?;
        text.push_str(&format!("{},{},,train\n", field(&absolute.to_string_lossy()), field(&names.join(";"))));
        known.push(absolute);
    }
    let mut next = recipe.clone();
    next.data = SourceConfig::Csv { path: manifest_path.to_path_buf(), multi_label: *multi_label };
    next.model.init = Some(init.to_path_buf());
    next.model.init_naming = Some(vesalius_nets::transfer::Naming::Vesalius);
    next.model.init_skip = None;
    Ok(Accepted { recipe: next, manifest: text, added: pairs.len() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vesalius_data::source::{Split, load};
    use vesalius_data::split::{SplitFractions, assign};

    use super::*;

    fn png(path: &Path, value: f32) {
        let image = vesalius_io::Image::new(vec![value; 28 * 28], vec![28, 28], 1, vesalius_io::ITK_2D_AFFINE, "uint8").unwrap();
        vesalius_io::save_2d(path, &image).unwrap();
    }

    /// Splits of a manifest's samples keyed by absolute path, as training assigns them.
    fn splits(manifest: &Path, fractions: SplitFractions, seed: u64) -> BTreeMap<PathBuf, Split> {
        let mut samples = load(&SourceConfig::Csv { path: manifest.to_path_buf(), multi_label: false }, 1, 28).unwrap();
        assign(&mut samples.samples, fractions, seed).unwrap();
        let base = manifest.parent().unwrap();
        samples.samples.iter().map(|s| (base.join(&s.id), s.split.unwrap())).collect()
    }

    #[test]
    fn accepted_images_train_and_the_old_rows_keep_their_splits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("pool")).unwrap();
        let mut manifest = String::from("path,label\n");
        for i in 0..20 {
            png(&dir.path().join(format!("data/{i:02}.png")), (i * 10) as f32);
            manifest.push_str(&format!("{i:02}.png,{}\n", if i % 2 == 0 { "benign" } else { "malignant" }));
        }
        let old = dir.path().join("data/manifest.csv");
        std::fs::write(&old, manifest).unwrap();
        for i in 0..2 {
            png(&dir.path().join(format!("pool/p{i}.png")), 100.0);
        }
        let recipe = Recipe::from_toml(&format!(
            "seed = 4\nsplit = {{ val = 0.2, test = 0.2 }}\n[data]\nkind = \"csv\"\npath = {old:?}\n[model]\narch = \"mlp\"\n\
             input_size = 28\n[train]\nepochs = 1\nbatch_size = 4\noptimizer = {{ kind = \"adam\", lr = 0.001 }}\n"
        ))
        .unwrap();
        let classes = vec!["benign".to_string(), "malignant".to_string()];
        let new_manifest = dir.path().join("next.manifest.csv");
        let pairs: Vec<(PathBuf, String)> = (0..2).map(|i| (dir.path().join(format!("pool/p{i}.png")), classes[i].clone())).collect();
        let done = accept(&recipe, &classes, &pairs, &new_manifest, Path::new("/w/init.safetensors")).unwrap();
        assert_eq!(done.added, 2);
        assert_eq!(done.recipe.data, SourceConfig::Csv { path: new_manifest.clone(), multi_label: false });
        assert_eq!(done.recipe.model.init.as_deref(), Some(Path::new("/w/init.safetensors")));
        std::fs::write(&new_manifest, &done.manifest).unwrap();

        let before = splits(&old, recipe.split, recipe.seed);
        let after = splits(&new_manifest, recipe.split, recipe.seed);
        let held_out = before.values().filter(|s| **s != Split::Train).count();
        assert!(held_out >= 6, "validation and test drawn from the free rows: {before:?}");
        for (path, split) in &before {
            assert_eq!(after.get(path), Some(split), "{}", path.display());
        }
        for (image, _) in &pairs {
            assert_eq!(after.get(image), Some(&Split::Train), "{}", image.display());
        }

        // A label outside the run's classes, an image already listed, and a source that is not a manifest are refused.
        let wrong = [(dir.path().join("pool/p0.png"), "normal".to_string())];
        let e = accept(&recipe, &classes, &wrong, &new_manifest, Path::new("i")).unwrap_err().to_string();
        assert!(e.contains("label `normal`") && e.contains("p0.png"), "{e}");
        let listed = [(dir.path().join("data/03.png"), "benign".to_string())];
        let e = accept(&recipe, &classes, &listed, &new_manifest, Path::new("i")).unwrap_err().to_string();
        assert!(e.contains("already in the manifest"), "{e}");
        let mut folder = recipe.clone();
        folder.data = SourceConfig::Folder { path: dir.path().join("data") };
        assert!(accept(&folder, &classes, &pairs, &new_manifest, Path::new("i")).unwrap_err().to_string().contains("manifest"));
    }

    #[test]
    fn scores_follow_their_definitions() {
        type B = burn::backend::Flex;
        type AB = burn::backend::Autodiff<B>;
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("{i}.png"))).collect();
        for (i, f) in files.iter().enumerate() {
            png(f, (i * 80) as f32);
        }
        let config = vesalius_nets::ClassifierConfig::new(vesalius_nets::Arch::Mlp, 1, 3, 28);
        let info = RunInfo::new(
            "classification",
            crate::run::ClassifierInfo { model: config.clone(), classes: vec!["a".into(), "b".into(), "c".into()], multi_label: false },
        );
        let device = Default::default();
        let model = config.init::<B>(&device).unwrap();
        let entropy = score_files::<B>(&model, &info, &files, Method::Entropy, 0, 0, &device).unwrap();
        for s in &entropy {
            let p: Vec<f32> = s.probabilities.clone();
            let h: f64 = -p.iter().map(|&q| q as f64 * (q as f64).ln()).sum::<f64>() / 3f64.ln();
            assert!((s.score - h).abs() < 1e-6, "{s:?}");
        }
        // Without autodiff, dropout is off: every pass agrees, so the network must be given on an autodiff backend.
        assert!(matches!(score_files::<B>(&model, &info, &files, Method::McDropout, 4, 0, &device), Err(CadxError::Internal(_))));
        let on_ad = config.init::<AB>(&device).unwrap();
        // Parameters are initialised lazily, from the generator, at their first use: use them once before sampling.
        let _ = on_ad.forward(files_batch::<AB>(&info, &[files[0].as_path()], &device).unwrap());
        let mc = score_files::<AB>(&on_ad, &info, &files, Method::McDropout, 4, 9, &device).unwrap();
        assert!(mc.iter().any(|s| s.score > 0.0), "{mc:?}");
        assert_eq!(mc, score_files::<AB>(&on_ad, &info, &files, Method::McDropout, 4, 9, &device).unwrap());
        // A uniform image is its own mirror: test-time augmentation sees no variance in it.
        let tta = score_files::<B>(&model, &info, &files, Method::Tta, 0, 0, &device).unwrap();
        assert!(tta.iter().all(|s| s.score.abs() < 1e-12), "{tta:?}");
        let lenet = vesalius_nets::ClassifierConfig::new(vesalius_nets::Arch::LeNet5, 1, 3, 28).init::<AB>(&device).unwrap();
        let e = score_files::<AB>(&lenet, &info, &files, Method::McDropout, 4, 0, &device).unwrap_err().to_string();
        assert!(e.contains("needs a network with dropout"), "{e}");
    }
}
