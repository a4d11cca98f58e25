//! The detection recipe (TOML, `task = "detection"`): images with their findings (instance maps or LUNA16 CSV),
//! how validation and test data are held out, optional lesion insertion, the detector, training and evaluation.
//!
//! ```
//! use vesalius_detection::recipe::DetRecipe;
//! let r = DetRecipe::from_toml(r#"
//!     task = "detection"
//!     [data]
//!     images = [{ id = "dsb", image = "nuclei.png", instances = "nuclei_labels.png" }]
//!     val_band = { axis = 1, start = 320, end = 416 }
//!     test_band = { axis = 1, start = 416, end = 512 }
//!     test_tile = 128
//!     [train]
//!     patch = [64, 64]
//! "#, std::path::Path::new("/data")).unwrap();
//! assert_eq!(r.data.images[0].instances.as_deref(), Some(std::path::Path::new("/data/nuclei_labels.png")));
//! assert_eq!(r.model.channels, vec![16, 32, 64]); // defaults
//! assert_eq!(r.eval.max_marks, 100);
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DetectError;

/// One image with its findings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Identifier, the `seriesuid` of its findings and detections (default: the file name).
    #[serde(default)]
    pub id: Option<String>,
    /// The image (NIfTI, DICOM, MetaImage, PNG, TIFF); one channel.
    pub image: PathBuf,
    /// An instance label map on the image's grid: one finding per instance id.
    #[serde(default)]
    pub instances: Option<PathBuf>,
    /// A binary lesion mask on the image's grid: one finding per connected component.
    #[serde(default)]
    pub mask: Option<PathBuf>,
    /// A LUNA16 CSV (world LPS mm) whose rows with `seriesuid` equal to the id are this image's findings.
    #[serde(default)]
    pub annotations: Option<PathBuf>,
    /// Where lesions may be inserted (a mask on the image's grid, > 0.5 inside); default: voxels above the image's
    /// median.
    #[serde(default)]
    pub region: Option<PathBuf>,
    /// Whether `[insert]` puts lesions into this image (false for images whose own lesions are the findings).
    #[serde(default = "yes")]
    pub insert: bool,
    /// Lesions inserted into this image for validation or testing, instead of `[insert] eval_count`.
    #[serde(default)]
    pub count: Option<usize>,
}

fn yes() -> bool {
    true
}

impl ImageEntry {
    /// The identifier: `id`, or the file name.
    pub fn name(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.image.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
    }
}

/// Voxels `start..end` along `axis` of every training image, held out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Voxel axis.
    pub axis: usize,
    /// First held-out index.
    pub start: usize,
    /// One past the last.
    pub end: usize,
}

/// How intensities are mapped for the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Intensity {
    /// `[low, high]` mapped to [0, 1] (HU windows for CT).
    Range([f32; 2]),
    /// `"percentile"`: each image divided by its own 99.5th percentile.
    Scheme(String),
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity::Scheme("percentile".into())
    }
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training images (outside the held-out bands).
    pub images: Vec<ImageEntry>,
    /// Intensity mapping.
    #[serde(default)]
    pub intensity: Intensity,
    /// Resample every image to this voxel size (millimetres per axis; linear for images, nearest for regions)
    /// after its findings are read on its own grid.
    #[serde(default)]
    pub spacing: Option<Vec<f64>>,
    /// A band of every training image held out for validation (model selection).
    #[serde(default)]
    pub val_band: Option<Band>,
    /// A band of every training image held out for testing.
    #[serde(default)]
    pub test_band: Option<Band>,
    /// Cut each band into tiles of this many voxels along the image's other in-plane axis; each tile is one scan
    /// of the evaluation (so the false-positive rate and the bootstrap have units). 0: one scan per band.
    #[serde(default)]
    pub test_tile: usize,
    /// Whole validation images.
    #[serde(default)]
    pub val: Vec<ImageEntry>,
    /// Whole test images, never seen in training or model selection.
    #[serde(default)]
    pub test: Vec<ImageEntry>,
}

/// `[insert]`: lesions inserted into every image (a new draw for every training patch's image each epoch; a fixed
/// draw per validation and test image).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsertSection {
    /// Lesions per training image draw.
    #[serde(default = "default_count")]
    pub count: usize,
    /// Lesions per validation or test image.
    #[serde(default = "default_count")]
    pub eval_count: usize,
    /// Diameter range in millimetres.
    #[serde(default = "default_diameter")]
    pub diameter_mm: [f64; 2],
    /// Contrast range in units of the host tissue's standard deviation around the centre (negative: darker).
    #[serde(default = "default_contrast")]
    pub contrast: [f64; 2],
    /// Largest ratio of an ellipsoid's longest to shortest axis (1: spheres).
    #[serde(default = "default_elongation")]
    pub elongation: f64,
}

fn default_count() -> usize {
    6
}
fn default_diameter() -> [f64; 2] {
    [6.0, 20.0]
}
fn default_contrast() -> [f64; 2] {
    [1.5, 4.0]
}
fn default_elongation() -> f64 {
    1.5
}

/// The detector family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// Centre-point heatmap detector (a U-Net predicting a Gaussian heatmap of centres and the log-diameter),
    /// for small round objects.
    #[default]
    Centre,
    /// A stacked sparse auto-encoder patch classifier scanned over the image (Xu et al. 2016, nuclei): greedy
    /// layer-wise pre-training on training patches, then fine-tuning as object-centred vs background; 2D.
    Sae,
    /// CNN + RNN over the frames of a dynamic series: a 2D U-Net encodes every frame, a GRU runs over the frames of
    /// each pixel, and a linear head gives the heatmap and size of the centre-point detector; 2D series.
    Crnn,
    /// Retina U-Net: RetinaNet's anchors, focal loss and box regression on every decoder level of a U-Net (a
    /// feature pyramid), 2D or 3D; marks are boxes.
    Retina,
}

/// `[dynamic]`: the images become dynamic series (one channel per frame) in which the inserted lesions wash in and
/// as many distractors wash out; the time-mean of both kinds is the same. Networks other than `crnn` see the
/// time-mean image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicSection {
    /// Frames per series.
    pub frames: usize,
    /// Wash-out distractors per image.
    pub distractors: usize,
}

/// `[model.sae]`: the scanned patch classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeSection {
    /// Patch side in pixels.
    #[serde(default = "default_sae_patch")]
    pub patch: usize,
    /// Hidden widths of the stacked auto-encoder.
    #[serde(default = "default_sae_hidden")]
    pub hidden: Vec<usize>,
    /// Scanning stride in pixels.
    #[serde(default = "default_sae_stride")]
    pub stride: usize,
    /// Patches drawn for greedy pre-training.
    #[serde(default = "default_sae_samples")]
    pub samples: usize,
    /// Epochs per layer of pre-training.
    #[serde(default = "default_sae_epochs")]
    pub pretrain_epochs: usize,
    /// Sparsity target (mean activation) and weight of the KL penalty.
    #[serde(default = "default_sae_sparsity")]
    pub sparsity: [f64; 2],
}

fn default_sae_patch() -> usize {
    24
}
fn default_sae_hidden() -> Vec<usize> {
    vec![256, 64]
}
fn default_sae_stride() -> usize {
    2
}
fn default_sae_samples() -> usize {
    4000
}
fn default_sae_epochs() -> usize {
    10
}
fn default_sae_sparsity() -> [f64; 2] {
    [0.05, 0.1]
}

impl Default for SaeSection {
    fn default() -> Self {
        Self {
            patch: default_sae_patch(),
            hidden: default_sae_hidden(),
            stride: default_sae_stride(),
            samples: default_sae_samples(),
            pretrain_epochs: default_sae_epochs(),
            sparsity: default_sae_sparsity(),
        }
    }
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The detector.
    #[serde(default)]
    pub arch: Arch,
    /// Channels per U-Net level.
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// The scanned auto-encoder classifier (`arch = "sae"`).
    #[serde(default)]
    pub sae: SaeSection,
}

fn default_channels() -> Vec<usize> {
    vec![16, 32, 64]
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { arch: Arch::Centre, channels: default_channels(), sae: SaeSection::default() }
    }
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Batches per epoch.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Patches per batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Patch size per spatial axis (image order); each divisible by 2^(levels − 1).
    pub patch: Vec<usize>,
    /// Adam learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Share of patches centred near a finding (the rest are drawn anywhere in the training region).
    #[serde(default = "default_positive")]
    pub positive_fraction: f64,
    /// Share of patches centred on a false positive of the previous epoch's model on the training region
    /// (hard-negative mining; 0 turns it off).
    #[serde(default = "default_hard")]
    pub hard_negative_fraction: f64,
    /// Stop after this many epochs without a better validation score.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// Intensity augmentation of each patch: values scaled by a factor in `1 ± jitter`, shifted by up to
    /// `± jitter / 2` and given Gaussian noise of standard deviation up to `jitter / 4` (normalised units; 0: off).
    #[serde(default)]
    pub intensity_jitter: f64,
}

fn default_epochs() -> usize {
    30
}
fn default_iterations() -> usize {
    20
}
fn default_batch() -> usize {
    8
}
fn default_lr() -> f64 {
    1e-3
}
fn default_positive() -> f64 {
    0.5
}
fn default_hard() -> f64 {
    0.25
}

/// `[eval]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Marks kept per scan (LUNA16: 100).
    #[serde(default = "default_max_marks")]
    pub max_marks: usize,
    /// Heatmap peaks below this probability are not marks.
    #[serde(default = "default_min_prob")]
    pub min_probability: f64,
    /// The operating point of the reported sensitivity and precision; when absent, the threshold of highest F1 on
    /// the validation scans (0.05, 0.10, …, 0.95).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Bootstrap resamples of the intervals (over scans).
    #[serde(default = "default_resamples")]
    pub resamples: usize,
}

fn default_max_marks() -> usize {
    100
}
fn default_min_prob() -> f64 {
    0.05
}
fn default_resamples() -> usize {
    1000
}

impl Default for EvalSection {
    fn default() -> Self {
        Self { max_marks: 100, min_probability: 0.05, threshold: None, resamples: 1000 }
    }
}

/// A detection recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetRecipe {
    /// Always `"detection"`.
    pub task: String,
    /// Seed of every draw.
    #[serde(default)]
    pub seed: u64,
    /// The data.
    pub data: DataSection,
    /// Lesion insertion.
    #[serde(default)]
    pub insert: Option<InsertSection>,
    /// Dynamic series made from the images.
    #[serde(default)]
    pub dynamic: Option<DynamicSection>,
    /// The network.
    #[serde(default)]
    pub model: ModelSection,
    /// Training.
    pub train: TrainSection,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
}

/// Largest patch side accepted (bounds allocation before any image is read).
pub const MAX_PATCH: usize = 512;
/// Largest batch accepted.
pub const MAX_BATCH: usize = 256;

impl DetRecipe {
    /// Parses a recipe; relative paths are resolved against `base` (the recipe's folder).
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, DetectError> {
        let mut r: DetRecipe = toml::from_str(text).map_err(|e| DetectError::Input(format!("recipe: {e}")))?;
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for e in r.data.images.iter_mut().chain(r.data.val.iter_mut()).chain(r.data.test.iter_mut()) {
            fix(&mut e.image);
            for p in [&mut e.instances, &mut e.mask, &mut e.annotations, &mut e.region].into_iter().flatten() {
                fix(p);
            }
        }
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, DetectError> {
        let text = std::fs::read_to_string(path).map_err(|e| DetectError::Input(format!("{}: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        Self::from_toml(&text, &base).map_err(|e| DetectError::Input(format!("{}: {e}", path.display())))
    }

    /// The recipe as TOML (absolute paths), as stored in the run folder.
    pub fn to_toml(&self) -> Result<String, DetectError> {
        toml::to_string(self).map_err(|e| DetectError::Internal(e.to_string()))
    }

    /// Checks every setting before anything is loaded.
    pub fn validate(&self) -> Result<(), DetectError> {
        let bad = |m: String| Err(DetectError::Input(format!("recipe: {m}")));
        if self.task != "detection" {
            return bad(format!("task is '{}', expected 'detection'", self.task));
        }
        if self.data.images.is_empty() {
            return bad("[data] images is empty".into());
        }
        for e in self.data.images.iter().chain(&self.data.val).chain(&self.data.test) {
            let sources = [&e.instances, &e.mask, &e.annotations].iter().filter(|s| s.is_some()).count();
            if sources > 1 {
                return bad(format!("image {}: give one of instances, mask and annotations", e.name()));
            }
            if e.count.is_some_and(|c| c > 1000) {
                return bad(format!("image {}: count ≤ 1000", e.name()));
            }
            if sources == 0 && self.insert.is_none() {
                return bad(format!("image {}: no findings (instances, mask or annotations) and no [insert]", e.name()));
            }
        }
        if self.data.val_band.is_none() && self.data.val.is_empty() {
            return bad("validation needs a val_band or val images".into());
        }
        if self.data.test_band.is_none() && self.data.test.is_empty() {
            return bad("testing needs a test_band or test images".into());
        }
        let t = &self.train;
        if t.patch.is_empty() || t.patch.len() > 3 || t.patch.iter().any(|&p| p == 0 || p > MAX_PATCH) {
            return bad(format!("train.patch {:?}: 2 or 3 sizes in 1..={MAX_PATCH}", t.patch));
        }
        let levels = self.model.channels.len();
        if !(2..=6).contains(&levels) || self.model.channels.iter().any(|&c| c == 0 || c > 1024) {
            return bad(format!("model.channels {:?}: 2 to 6 levels of 1..=1024 channels", self.model.channels));
        }
        if self.model.arch == Arch::Retina && levels < 3 {
            return bad("the retina detector needs at least 3 U-Net levels (heads on strides 1, 2, …)".into());
        }
        let div = 1usize << (levels - 1);
        if t.patch.iter().any(|p| !p.is_multiple_of(div)) {
            return bad(format!("train.patch {:?}: every size must be divisible by {div} for {levels} levels", t.patch));
        }
        if t.batch == 0 || t.batch > MAX_BATCH || t.iterations == 0 || t.epochs == 0 {
            return bad(format!("train: batch 1..={MAX_BATCH}, iterations and epochs ≥ 1"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr must be positive".into());
        }
        let frac = |v: f64| (0.0..=1.0).contains(&v);
        if !(0.0..=0.9).contains(&t.intensity_jitter) {
            return bad("train.intensity_jitter must be in [0, 0.9]".into());
        }
        if !frac(t.positive_fraction) || !frac(t.hard_negative_fraction) || t.positive_fraction + t.hard_negative_fraction > 1.0 {
            return bad("train.positive_fraction and hard_negative_fraction are in [0, 1] and add up to at most 1".into());
        }
        let e = &self.eval;
        if !frac(e.min_probability) || !e.threshold.is_none_or(frac) || e.resamples > 100_000 {
            return bad("eval: min_probability and threshold in [0, 1], resamples ≤ 100000".into());
        }
        if let Some(i) = &self.insert {
            let ok = i.count <= 1000
                && i.eval_count <= 1000
                && i.diameter_mm[0] > 0.0
                && i.diameter_mm[0] <= i.diameter_mm[1]
                && i.diameter_mm[1] < 1000.0
                && i.contrast[0] <= i.contrast[1]
                && i.contrast.iter().all(|c| c.is_finite())
                && (1.0..=10.0).contains(&i.elongation);
            if !ok {
                return bad(
                    "[insert]: counts ≤ 1000, 0 < diameter_mm[0] ≤ diameter_mm[1] < 1000, contrast low ≤ high, elongation in [1, 10]"
                        .into(),
                );
            }
        }
        if let Intensity::Scheme(s) = &self.data.intensity
            && s != "percentile"
        {
            return bad(format!("data.intensity '{s}': [low, high] or \"percentile\""));
        }
        if let Intensity::Range([lo, hi]) = self.data.intensity
            && !(hi > lo)
        {
            return bad("data.intensity [low, high] needs high > low".into());
        }
        if self.model.arch == Arch::Sae {
            let a = &self.model.sae;
            if t.patch.len() != 2 {
                return bad("the sae detector is 2D".into());
            }
            if !(4..=128).contains(&a.patch)
                || a.stride == 0
                || a.stride > a.patch
                || a.hidden.is_empty()
                || a.hidden.iter().any(|&h| h == 0 || h > 4096)
                || a.samples == 0
                || a.samples > 200_000
                || !(a.sparsity[0] > 0.0 && a.sparsity[0] < 1.0 && a.sparsity[1] >= 0.0)
            {
                return bad("[model.sae]: patch 4..=128, stride 1..=patch, hidden widths 1..=4096, samples 1..=200000, sparsity [rho in (0, 1), beta ≥ 0]".into());
            }
        }
        if let Some(d) = &self.dynamic {
            if self.insert.is_none() || t.patch.len() != 2 || !(2..=64).contains(&d.frames) || d.distractors > 1000 {
                return bad("[dynamic] needs [insert], a 2D patch, 2..=64 frames and at most 1000 distractors".into());
            }
            if self.model.arch == Arch::Sae {
                return bad("the sae detector does not take dynamic series".into());
            }
            if self.model.arch == Arch::Retina {
                return bad("the retina detector does not take dynamic series".into());
            }
        } else if self.model.arch == Arch::Crnn {
            return bad("arch = \"crnn\" needs a [dynamic] section".into());
        }
        if let Some(sp) = &self.data.spacing
            && (sp.len() != t.patch.len() || sp.iter().any(|v| !(*v >= 0.05 && *v <= 100.0)))
        {
            return bad(format!("data.spacing {sp:?}: one size in 0.05..=100 mm per axis of the patch"));
        }
        for b in [self.data.val_band, self.data.test_band].into_iter().flatten() {
            if b.axis >= t.patch.len() || b.start >= b.end {
                return bad(format!("band {b:?}: axis below {} and start < end", t.patch.len()));
            }
        }
        Ok(())
    }

    /// Spatial dimensions of the detector (the patch's).
    pub fn dims(&self) -> usize {
        self.train.patch.len()
    }
}
