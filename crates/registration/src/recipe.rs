//! The recipe of a learned-registration run (`task = "registration"` in TOML): where the pairs come from, the
//! common grid, the networks and the training settings.
//!
//! Pairs come from one of three sources:
//! - `pairs`: a CSV file with columns `moving, fixed` and optionally `moving_labels, fixed_labels` (paths relative
//!   to the CSV);
//! - `atlas` + `subjects`: every subject (moving) registered to one atlas (fixed), as in VoxelMorph's atlas-based
//!   experiments, with optional `atlas_labels` and `subject_labels`;
//! - `[data.synthetic]`: one image against itself warped by random smooth fields drawn anew at every step (known
//!   fields, so the field error can be measured), its label map warped alike.
//!
//! Every volume is resampled onto one grid: axes along RAS+, voxel size `spacing` (mm), `shape` voxels (x, y, z),
//! centred on the fixed image's field of view; intensities are scaled to [0, 1] between their 0.5th and 99.5th
//! percentiles.
//!
//! ```
//! use vesalius_registration::recipe::RegRecipe;
//! let text = r#"
//! task = "registration"
//! [data]
//! spacing = [6.0, 6.0, 6.0]
//! shape = [32, 48, 32]
//! synthetic = { image = "mni152_t1.nii.gz", labels = "mni152_tissue_labels.nii.gz", amplitude_mm = 8.0 }
//! [model]
//! encoder = [16, 32, 32, 32]
//! decoder = [32, 32, 32, 32, 16, 16]
//! [train]
//! steps = 300
//! learning_rate = 1e-3
//! "#;
//! let recipe = RegRecipe::from_toml(text, std::path::Path::new("/data")).unwrap();
//! assert_eq!(recipe.train.similarity, "mse");
//! assert_eq!(recipe.train.validation, 4);
//! assert!(recipe.data.synthetic.as_ref().unwrap().image.starts_with("/data"));
//! // Four encoder levels need sides divisible by 16.
//! let odd = RegRecipe::from_toml(&text.replace("[32, 48, 32]", "[32, 40, 32]"), std::path::Path::new("/data"));
//! assert!(odd.unwrap_err().to_string().contains("multiple of 16"));
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RegError;
use crate::similarity::Similarity;

/// A learned-registration recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegRecipe {
    /// Always `"registration"`.
    pub task: String,
    /// Where the pairs come from and the common grid.
    pub data: RegData,
    /// The networks.
    #[serde(default)]
    pub model: RegModel,
    /// Training settings.
    #[serde(default)]
    pub train: RegTrain,
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegData {
    /// Voxel size of the common grid, mm (x, y, z).
    pub spacing: [f64; 3],
    /// Size of the common grid, voxels (x, y, z); each divisible by 2 to the number of encoder levels.
    pub shape: [usize; 3],
    /// CSV of pairs (`moving, fixed[, moving_labels, fixed_labels]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PathBuf>,
    /// The atlas (the fixed image of every pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas: Option<PathBuf>,
    /// The atlas's label map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas_labels: Option<PathBuf>,
    /// The subjects (moving images) registered to the atlas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<PathBuf>,
    /// The subjects' label maps, in the order of `subjects`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_labels: Vec<PathBuf>,
    /// Synthetic pairs from one image and random smooth fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<Synthetic>,
}

/// `[data.synthetic]`: pairs `(moving = image, fixed = image ∘ (id + v))` with `v` random and smooth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// The image.
    pub image: PathBuf,
    /// Its label map (warped alike, nearest neighbour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    /// Largest displacement of a control point, mm (each component uniform in ±amplitude).
    #[serde(default = "default_amplitude")]
    pub amplitude_mm: f64,
    /// Control points per axis of the lattice the field is interpolated from (trilinearly).
    #[serde(default = "default_control_points")]
    pub control_points: usize,
}

fn default_amplitude() -> f64 {
    8.0
}
fn default_control_points() -> usize {
    4
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegModel {
    /// VoxelMorph encoder channels (one stride-2 convolution each).
    #[serde(default = "default_encoder")]
    pub encoder: Vec<usize>,
    /// VoxelMorph decoder channels.
    #[serde(default = "default_decoder")]
    pub decoder: Vec<usize>,
    /// Scaling-and-squaring steps (0: the network predicts the displacement itself; > 0: a stationary velocity
    /// field, diffeomorphic).
    #[serde(default)]
    pub integration_steps: usize,
    /// Train an affine-regression network first and register its output deformably.
    #[serde(default)]
    pub affine: bool,
    /// Encoder channels of the affine network.
    #[serde(default = "default_encoder")]
    pub affine_encoder: Vec<usize>,
}

fn default_encoder() -> Vec<usize> {
    vec![16, 32, 32, 32]
}
fn default_decoder() -> Vec<usize> {
    vec![32, 32, 32, 32, 16, 16]
}

impl Default for RegModel {
    fn default() -> Self {
        Self {
            encoder: default_encoder(),
            decoder: default_decoder(),
            integration_steps: 0,
            affine: false,
            affine_encoder: default_encoder(),
        }
    }
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegTrain {
    /// Adam steps of the deformable network (one pair each).
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Adam steps of the affine network (with `model.affine`).
    #[serde(default = "default_affine_steps")]
    pub affine_steps: usize,
    /// Adam learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// `mse`, `ncc` (local, window 9) or `mi`.
    #[serde(default = "default_similarity")]
    pub similarity: String,
    /// Weight of the diffusion regulariser (VoxelMorph: 0.01 with MSE, 1 with NCC).
    #[serde(default = "default_smoothness")]
    pub smoothness: f64,
    /// Weight of the Dice term on warped labels (0: unsupervised).
    #[serde(default)]
    pub label_weight: f64,
    /// Pairs held out for validation (the last ones; synthetic: this many fixed fields).
    #[serde(default = "default_validation")]
    pub validation: usize,
    /// Pairs held out as the test set, never trained on nor used to select the model (listed pairs: the last ones,
    /// after the validation pairs; synthetic: this many fields of their own).
    #[serde(default)]
    pub test: usize,
    /// Validate (and keep the best model) every this many steps.
    #[serde(default = "default_val_every")]
    pub val_every: usize,
    /// Seed of the pair order and of the synthetic fields.
    #[serde(default)]
    pub seed: u64,
}

fn default_steps() -> usize {
    500
}
fn default_affine_steps() -> usize {
    200
}
fn default_lr() -> f64 {
    1e-4
}
fn default_similarity() -> String {
    "mse".into()
}
fn default_smoothness() -> f64 {
    0.01
}
fn default_validation() -> usize {
    4
}
fn default_val_every() -> usize {
    50
}

impl Default for RegTrain {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            affine_steps: default_affine_steps(),
            learning_rate: default_lr(),
            similarity: default_similarity(),
            smoothness: default_smoothness(),
            label_weight: 0.0,
            validation: default_validation(),
            test: 0,
            val_every: default_val_every(),
            seed: 0,
        }
    }
}

impl RegRecipe {
    /// Parses a recipe; relative paths are taken from `base` (the recipe's folder) and the recipe is checked.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, RegError> {
        let mut recipe: RegRecipe = toml::from_str(text).map_err(|e| RegError::Input(e.to_string()))?;
        recipe.resolve(base);
        recipe.validate()?;
        Ok(recipe)
    }

    /// Reads a recipe file (relative paths become absolute, from the file's folder); errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, RegError> {
        let text = std::fs::read_to_string(path).map_err(|e| RegError::Input(format!("{}: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        Self::from_toml(&text, &base).map_err(|e| RegError::Input(format!("{}: {e}", path.display())))
    }

    /// TOML text of the recipe.
    pub fn to_toml(&self) -> Result<String, RegError> {
        toml::to_string(self).map_err(|e| RegError::Internal(e.to_string()))
    }

    /// The similarity measure.
    pub fn similarity(&self) -> Similarity {
        Similarity::parse(&self.train.similarity).unwrap_or(Similarity::Mse)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let d = &mut self.data;
        d.pairs.iter_mut().chain(d.atlas.iter_mut()).chain(d.atlas_labels.iter_mut()).for_each(fix);
        d.subjects.iter_mut().chain(d.subject_labels.iter_mut()).for_each(fix);
        if let Some(s) = &mut d.synthetic {
            fix(&mut s.image);
            s.labels.iter_mut().for_each(fix);
        }
    }

    /// Checks the values that do not need the files.
    pub fn validate(&self) -> Result<(), RegError> {
        let bad = |m: String| Err(RegError::Input(m));
        if self.task != "registration" {
            return bad(format!("task is '{}', expected 'registration'", self.task));
        }
        let d = &self.data;
        let sources = [d.pairs.is_some(), d.atlas.is_some(), d.synthetic.is_some()].iter().filter(|&&b| b).count();
        if sources != 1 {
            return bad("[data] needs exactly one of: pairs (a CSV), atlas with subjects, synthetic".into());
        }
        if d.atlas.is_some() && d.subjects.is_empty() {
            return bad("[data] atlas needs a list of subjects".into());
        }
        if (!d.subjects.is_empty() || !d.subject_labels.is_empty() || d.atlas_labels.is_some()) && d.atlas.is_none() {
            return bad("[data] subjects, subject_labels and atlas_labels go with atlas".into());
        }
        if !d.subject_labels.is_empty() && (d.subject_labels.len() != d.subjects.len() || d.atlas_labels.is_none()) {
            return bad("[data] subject_labels needs one label map per subject and atlas_labels".into());
        }
        if d.spacing.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return bad(format!("[data] spacing {:?} must be positive", d.spacing));
        }
        let m = &self.model;
        if m.encoder.is_empty() || m.decoder.len() < m.encoder.len() || m.encoder.iter().chain(&m.decoder).any(|&c| c == 0) {
            return bad("[model] needs a non-empty encoder and at least as many decoder convolutions, all with channels".into());
        }
        let levels = if m.affine { m.encoder.len().max(m.affine_encoder.len()) } else { m.encoder.len() };
        let multiple = 1usize << levels;
        if d.shape.iter().any(|&s| s == 0 || s % multiple != 0) {
            return bad(format!("[data] shape {:?}: each side must be a positive multiple of {multiple} (2^encoder levels)", d.shape));
        }
        if let Some(s) = &d.synthetic
            && (!(s.amplitude_mm.is_finite() && s.amplitude_mm >= 0.0) || s.control_points < 2)
        {
            return bad("[data.synthetic] needs amplitude_mm ≥ 0 and at least 2 control points".into());
        }
        let t = &self.train;
        if Similarity::parse(&t.similarity).is_none() {
            return bad(format!("[train] unknown similarity '{}' (mse, ncc, mi)", t.similarity));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) || t.smoothness < 0.0 || t.label_weight < 0.0 {
            return bad("[train] learning_rate must be positive, smoothness and label_weight not negative".into());
        }
        if t.val_every == 0 || t.validation == 0 {
            return bad("[train] val_every and validation must be at least 1".into());
        }
        if t.label_weight > 0.0 && !self.has_labels() {
            return bad("[train] label_weight needs label maps".into());
        }
        Ok(())
    }

    /// Whether the pairs carry label maps.
    pub fn has_labels(&self) -> bool {
        let d = &self.data;
        d.atlas_labels.is_some() || d.synthetic.as_ref().is_some_and(|s| s.labels.is_some()) || d.pairs.is_some()
    }

    /// The recipe with its step counts cleared: two recipes that differ only there may share a run (training
    /// longer resumes).
    pub fn without_steps(&self) -> Self {
        let mut r = self.clone();
        r.train.steps = 0;
        r.train.affine_steps = 0;
        r
    }
}
