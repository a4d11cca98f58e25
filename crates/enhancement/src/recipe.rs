//! The enhancement recipe (TOML, `task = "enhancement"`): the clean reference images, how validation and test
//! data are held out, the degradation that makes the inputs, the network, training and evaluation settings.
//!
//! ```
//! use vesalius_enhancement::recipe::EnhanceRecipe;
//! let recipe = EnhanceRecipe::from_toml(r#"
//!     task = "enhancement"
//!     [data]
//!     images = [{ image = "ct.dcm" }]
//!     intensity = [-1024.0, 3072.0]
//!     val_band = { axis = 1, start = 80, end = 104 }
//!     test_band = { axis = 1, start = 104, end = 128 }
//!     [degrade]
//!     model = "low-dose-ct"
//!     dose = 0.25
//! "#, std::path::Path::new("/data")).unwrap();
//! assert_eq!(recipe.data.images[0].image, std::path::Path::new("/data/ct.dcm")); // relative to the recipe
//! assert_eq!(recipe.degrade.as_ref().unwrap().name(), "low-dose-ct");
//! assert_eq!(recipe.eval_window(), [-1024.0, 3072.0]);                            // defaults to the intensity range
//! ```
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EnhanceError;
use crate::degrade::Degradation;

/// How intensities are mapped for the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntensitySpec {
    /// `[low, high]` mapped to [0, 1].
    Range([f32; 2]),
    /// A per-image scheme.
    Scheme(IntensityScheme),
}

/// Per-image intensity schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntensityScheme {
    /// Divide by the image's 99.5th percentile (metrics are then in those units: window [0, 1]).
    Percentile,
}

/// One clean reference image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Identifier (default: the file name).
    #[serde(default)]
    pub id: Option<String>,
    /// The image (NIfTI, DICOM file or series folder, MetaImage, PNG, TIFF); one channel (or RGB with equal
    /// channels).
    pub image: PathBuf,
    /// Image-to-image translation: a registered image of another contrast on the same grid, which the network
    /// translates into `image` (the recipe then has no `[degrade]`).
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// Patient identifier (default: the image's id); cases of one patient are resampled together.
    #[serde(default)]
    pub patient: Option<String>,
}

impl ImageEntry {
    /// The identifier: `id`, or the file name.
    pub fn name(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.image.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
    }
    /// The patient: `patient`, or the identifier.
    pub fn patient_id(&self) -> String {
        self.patient.clone().unwrap_or_else(|| self.name())
    }
}

/// Voxels `start..end` along `axis` of every training image, held out (never a training target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Voxel axis (0 or 1 within a slice, 2 for whole axial slices).
    pub axis: usize,
    /// First held-out index.
    pub start: usize,
    /// One past the last.
    pub end: usize,
}

impl Band {
    /// Whether index `i` lies in the band.
    pub fn contains(&self, i: usize) -> bool {
        (self.start..self.end).contains(&i)
    }
    /// Whether `start..start + len` overlaps the band.
    pub fn overlaps(&self, start: usize, len: usize) -> bool {
        start < self.end && self.start < start + len
    }
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Clean reference images that train (outside the held-out bands).
    pub images: Vec<ImageEntry>,
    /// How intensities are mapped for the network: a fixed `[low, high]` mapped to [0, 1] (HU for CT), or
    /// `"percentile"`: each image divided by its own 99.5th percentile (MR, whose scale differs between scans).
    pub intensity: IntensitySpec,
    /// Reorient every image to these axis codes on loading (e.g. `"RAS"`), so that planes and bands mean the
    /// same anatomical directions in every image.
    #[serde(default)]
    pub orientation: Option<String>,
    /// Resample every image the recipe loads to these voxel sizes (mm, one per axis, after reorientation) before
    /// it is degraded — to train at the resolution the network will be used at. Each axis is smoothed first by a
    /// Gaussian whose FWHM makes up the difference to the new voxel size (`σ² = (new² − old²) / 8 ln 2`, none where
    /// the new voxel is not larger), then sampled linearly; an image already at these sizes is unchanged.
    #[serde(default)]
    pub spacing: Option<Vec<f64>>,
    /// A band of every training image held out for validation (model selection, the baseline's σ).
    #[serde(default)]
    pub val_band: Option<Band>,
    /// A band of every training image held out for testing.
    #[serde(default)]
    pub test_band: Option<Band>,
    /// Whole images for validation.
    #[serde(default)]
    pub val: Vec<ImageEntry>,
    /// Whole images for testing (other patients), never used for training or selection.
    #[serde(default)]
    pub test: Vec<ImageEntry>,
    /// The two voxel axes that form the network's 2D planes (default `[0, 1]`, axial slices); through-plane
    /// super-resolution along axis 2 uses `[0, 2]` or `[1, 2]`.
    #[serde(default)]
    pub plane: Option<[usize; 2]>,
    /// Degraded realisations of each training image (each a fresh random draw of the degradation).
    #[serde(default = "default_train_realisations")]
    pub train_realisations: usize,
    /// Degraded realisations of each validation and test case.
    #[serde(default = "default_eval_realisations")]
    pub eval_realisations: usize,
    /// Degraded realisations of each test case, when they should differ from validation's (default
    /// `eval_realisations`): more draws of a random degradation make a steadier test figure without slowing the
    /// validation of every epoch.
    #[serde(default)]
    pub test_realisations: Option<usize>,
}

impl DataSection {
    /// Realisations of each validation case (`val`) or test case.
    pub fn realisations(&self, val: bool) -> usize {
        if val { self.eval_realisations } else { self.test_realisations.unwrap_or(self.eval_realisations) }
    }
}

fn default_train_realisations() -> usize {
    8
}
fn default_eval_realisations() -> usize {
    2
}

/// The network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// RED-CNN (Chen et al. 2017).
    #[default]
    RedCnn,
    /// A 2D U-Net (batch norm) predicting the residual that is added to its input.
    Unet,
    /// The convolutional recurrent reconstruction network with k-space data consistency (k-space models only;
    /// trains on whole planes).
    Crnn,
    /// A convolutional (denoising) auto-encoder: stride-2 convolutions down, transposed convolutions up, sigmoid
    /// output (intensities in [0, 1]); `channels` per level.
    ConvAe,
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Architecture.
    #[serde(default)]
    pub arch: Arch,
    /// RED-CNN: feature maps per layer (96 in the paper).
    #[serde(default = "default_features")]
    pub features: usize,
    /// RED-CNN: kernel size.
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// U-Net: channels per level.
    #[serde(default = "default_unet_channels")]
    pub channels: Vec<usize>,
    /// CRNN: unrolled iterations.
    #[serde(default = "default_iterations_crnn")]
    pub iterations: usize,
    /// CRNN: recurrent units per iteration.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// CRNN: reconstruct dynamic series (images whose frames are a fourth axis) with the first unit recurrent
    /// over frames in both directions (BCRNN-t-i); every frame gets its own random line mask.
    #[serde(default)]
    pub temporal: bool,
    /// CRNN (single frames): reconstruct each plane also mirrored along either axis and along both, and average
    /// the four complex images (four times the inference; validation, evaluation and prediction alike).
    #[serde(default)]
    pub flips: bool,
}

fn default_iterations_crnn() -> usize {
    5
}
fn default_layers() -> usize {
    3
}

fn default_features() -> usize {
    32
}
fn default_kernel() -> usize {
    5
}
fn default_unet_channels() -> Vec<usize> {
    vec![16, 32, 64]
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            arch: Arch::RedCnn,
            features: default_features(),
            kernel: default_kernel(),
            channels: default_unet_channels(),
            iterations: default_iterations_crnn(),
            layers: default_layers(),
            temporal: false,
            flips: false,
        }
    }
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Optimisation steps per epoch.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Patches per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Square patch side, pixels.
    #[serde(default = "default_patch")]
    pub patch: usize,
    /// Adam's (base) learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// The learning-rate schedule over the epochs (default constant; `{ kind = "cosine", min_lr = 0.0 }` or
    /// `{ kind = "multistep", milestones = [..], gamma = 0.1 }` as the classification recipes).
    #[serde(default)]
    pub schedule: vesalius_train::recipe::Schedule,
    /// Stop after this many epochs without a better validation PSNR.
    #[serde(default)]
    pub early_stopping_patience: Option<usize>,
    /// k-space reconstruction with a CRNN: each training plane drawn is raised to a power drawn log-uniformly from
    /// this range (intensities in `[0, 1]`-like units), so the network sees other contrasts than the training
    /// images'.
    #[serde(default)]
    pub gamma: Option<[f64; 2]>,
    /// k-space reconstruction with a CRNN: Gaussian noise of a standard deviation drawn uniformly from `[0, noise]`
    /// is added to each training plane where it is not zero (its target included: measured noise is data), so the
    /// network sees noisy scans, not only the training images' smoothness.
    #[serde(default)]
    pub noise: Option<f64>,
}

fn default_epochs() -> usize {
    20
}
fn default_iterations() -> usize {
    20
}
fn default_batch() -> usize {
    8
}
fn default_patch() -> usize {
    48
}
fn default_lr() -> f64 {
    1e-4
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            iterations: default_iterations(),
            batch: default_batch(),
            patch: default_patch(),
            lr: default_lr(),
            schedule: Default::default(),
            early_stopping_patience: None,
            gamma: None,
            noise: None,
        }
    }
}

/// `[eval]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Values are clipped to this window before every metric, and PSNR's data range is its width (default: the
    /// intensity range; `[0, 1]` with `intensity = "percentile"`, in units of each reference's 99.5th
    /// percentile).
    #[serde(default)]
    pub window: Option<[f32; 2]>,
    /// Bootstrap resamples for confidence intervals.
    #[serde(default)]
    pub bootstrap: Option<usize>,
}

/// `[adapt]`: self-supervised adaptation to each image being enhanced, before the network enhances it: a copy of
/// the network is fine-tuned on what the image itself holds.
///
/// - Thick-slice super-resolution: the image's fine in-plane axes, degraded by the same thick-slice model, are
///   learnt back (after SMORE, Zhao et al. 2021).
/// - k-space reconstruction (CRNN): each plane's measured lines are split at random, the network reconstructs
///   from one part and is scored in k-space on the other (`holdout`), after SSDU (Yaman et al. 2020) and its
///   zero-shot form (Yaman et al. 2022); the lines of the fully sampled centre always stay in the input. A fixed
///   share (`validation`) is set aside to choose the weights kept.
///
/// Only the degraded input (or the measured k-space) is used, never a reference; evaluation reports the network
/// before adaptation beside it. Whole validation and test images are adapted to; the held-out bands of training
/// images are not (their images trained the network).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptSection {
    /// Optimisation steps on each image's own pairs.
    #[serde(default = "default_adapt_steps")]
    pub steps: usize,
    /// Adam's starting learning rate, decayed to 0 over the steps by a half cosine.
    #[serde(default = "default_adapt_lr")]
    pub lr: f64,
    /// Patches per step (k-space models: whole planes per step).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Square patch side, pixels (thick-slice models).
    #[serde(default = "default_patch")]
    pub patch: usize,
    /// The share of a plane's measured lines held out from the network's input and scored (k-space models; 0.4
    /// as SSDU).
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// The share of a plane's measured lines set aside once to choose the adapted weights by their loss there
    /// (k-space models; zero-shot SSDU's self-validation).
    #[serde(default = "default_validation")]
    pub validation: f64,
    /// Also enhance the other planes that contain the thick axis, and average the two results.
    #[serde(default = "default_true")]
    pub orthogonal: bool,
    /// Enhance every plane under its eight flips and transpositions and average the outputs (eight times the
    /// inference).
    #[serde(default)]
    pub flips: bool,
    /// Seed of the patch draws.
    #[serde(default)]
    pub seed: u64,
}

fn default_adapt_steps() -> usize {
    1500
}
fn default_adapt_lr() -> f64 {
    2e-4
}
fn default_holdout() -> f64 {
    0.4
}
fn default_validation() -> f64 {
    0.2
}
fn default_true() -> bool {
    true
}

impl Default for AdaptSection {
    fn default() -> Self {
        Self {
            steps: default_adapt_steps(),
            lr: default_adapt_lr(),
            batch: default_batch(),
            patch: default_patch(),
            holdout: default_holdout(),
            validation: default_validation(),
            orthogonal: true,
            flips: false,
            seed: 0,
        }
    }
}

/// A whole enhancement recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnhanceRecipe {
    /// Always `"enhancement"`.
    pub task: String,
    /// Seed of every random draw (degradations, patches, initialisation).
    #[serde(default)]
    pub seed: u64,
    /// Data.
    pub data: DataSection,
    /// The degradation that makes the network's inputs (absent for image-to-image translation, where every image
    /// names its `input`).
    #[serde(default)]
    pub degrade: Option<Degradation>,
    /// Network.
    #[serde(default)]
    pub model: ModelSection,
    /// Training.
    #[serde(default)]
    pub train: TrainSection,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// Self-supervised adaptation to each image before it is enhanced (thick-slice super-resolution).
    #[serde(default)]
    pub adapt: Option<AdaptSection>,
}

impl EnhanceRecipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, EnhanceError> {
        let mut r: EnhanceRecipe = toml::from_str(text).map_err(|e| EnhanceError::Input(format!("invalid recipe: {e}")))?;
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let d = &mut r.data;
        d.images.iter_mut().chain(d.val.iter_mut()).chain(d.test.iter_mut()).for_each(|e| {
            fix(&mut e.image);
            e.input.iter_mut().for_each(fix);
        });
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file (paths relative to its folder).
    pub fn from_file(path: &Path) -> Result<Self, EnhanceError> {
        let text = std::fs::read_to_string(path).map_err(|e| EnhanceError::Input(format!("{}: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        Self::from_toml(&text, &base).map_err(|e| EnhanceError::Input(format!("{}: {e}", path.display())))
    }

    /// The recipe as TOML (what the run folder keeps).
    pub fn to_toml(&self) -> Result<String, EnhanceError> {
        toml::to_string(self).map_err(|e| EnhanceError::Internal(e.to_string()))
    }

    /// The evaluation window.
    pub fn eval_window(&self) -> [f32; 2] {
        match self.data.intensity {
            IntensitySpec::Range(r) => self.eval.window.unwrap_or(r),
            IntensitySpec::Scheme(IntensityScheme::Percentile) => self.eval.window.unwrap_or([0.0, 1.0]),
        }
    }

    /// Checks values that would otherwise fail late.
    pub fn validate(&self) -> Result<(), EnhanceError> {
        let bad = |m: String| Err(EnhanceError::Input(m));
        if self.task != "enhancement" {
            return bad(format!("task must be \"enhancement\", not \"{}\"", self.task));
        }
        let d = &self.data;
        let entries = || d.images.iter().chain(&d.val).chain(&d.test);
        match &self.degrade {
            Some(model) => {
                model.validate()?;
                if entries().any(|e| e.input.is_some()) {
                    return bad("images name an `input` (image-to-image translation) and the recipe a [degrade] model: choose one".into());
                }
            }
            None => {
                if let Some(e) = entries().find(|e| e.input.is_none()) {
                    return bad(format!("{} has no `input`: without a [degrade] model every image needs one", e.image.display()));
                }
            }
        }
        if d.images.is_empty() {
            return bad("data.images lists no training image".into());
        }
        if let IntensitySpec::Range([lo, hi]) = d.intensity
            && !(lo.is_finite() && hi.is_finite() && hi > lo)
        {
            return bad(format!("data.intensity must be an increasing pair of finite values, not [{lo}, {hi}]"));
        }
        if matches!(self.degrade, Some(Degradation::Kspace { .. })) && matches!(d.intensity, IntensitySpec::Range([lo, _]) if lo != 0.0) {
            return bad(
                "k-space models need intensities scaled, not shifted: use intensity = \"percentile\" or a range starting at 0".into()
            );
        }
        if self.model.temporal && (self.model.arch != Arch::Crnn || !matches!(self.degrade, Some(Degradation::Kspace { .. }))) {
            return bad("model.temporal reconstructs dynamic series: it needs arch = \"crnn\" and a kspace [degrade] model".into());
        }
        if self.model.flips && (self.model.arch != Arch::Crnn || self.model.temporal) {
            return bad("model.flips mirrors the planes of a single-frame CRNN: it needs arch = \"crnn\" without temporal".into());
        }
        if let Some(sp) = &d.spacing
            && (sp.is_empty() || sp.len() > 3 || sp.iter().any(|v| !(v.is_finite() && *v > 0.0)))
        {
            return bad(format!("data.spacing must be one to three positive voxel sizes in mm, not {sp:?}"));
        }
        if let Some(o) = &d.orientation
            && (o.len() != 3 || !o.chars().all(|c| "RLAPSI".contains(c)))
        {
            return bad(format!("data.orientation must be three axis codes such as \"RAS\", not \"{o}\""));
        }
        if let Some([a, b]) = self.eval.window
            && !(a.is_finite() && b.is_finite() && b > a)
        {
            return bad(format!("eval.window must be an increasing pair of finite values, not [{a}, {b}]"));
        }
        if d.val_band.is_none() && d.val.is_empty() {
            return bad("no validation data: give data.val_band or data.val images".into());
        }
        if d.test_band.is_none() && d.test.is_empty() {
            return bad("no test data: give data.test_band or data.test images".into());
        }
        for (name, band) in [("val_band", d.val_band), ("test_band", d.test_band)] {
            if let Some(b) = band
                && (b.axis > 2 || b.end <= b.start)
            {
                return bad(format!("data.{name}: axis must be 0, 1 or 2 and end > start"));
            }
        }
        if let (Some(v), Some(t)) = (d.val_band, d.test_band)
            && v.axis == t.axis
            && v.overlaps(t.start, t.end - t.start)
        {
            return bad("data.val_band and data.test_band overlap".into());
        }
        if d.train_realisations == 0 || d.eval_realisations == 0 || d.train_realisations > 256 || d.eval_realisations > 64 {
            return bad("data.train_realisations must lie in 1..=256 and data.eval_realisations in 1..=64".into());
        }
        if d.test_realisations.is_some_and(|n| !(1..=64).contains(&n)) {
            return bad("data.test_realisations must lie in 1..=64".into());
        }
        let t = &self.train;
        if t.epochs == 0
            || t.iterations == 0
            || !(1..=4096).contains(&t.batch)
            || !(8..=512).contains(&t.patch)
            || !(t.lr > 0.0 && t.lr.is_finite())
        {
            return bad("train: epochs and iterations must be ≥ 1, batch in 1..=4096, patch in 8..=512 and lr > 0".into());
        }
        if let Err(e) = t.schedule.check(t.lr) {
            return bad(format!("train.schedule: {e}"));
        }
        if (t.gamma.is_some() || t.noise.is_some()) && (self.model.arch != Arch::Crnn || self.model.temporal) {
            return bad(
                "train.gamma and train.noise change the planes a single-frame CRNN trains on: they need model.arch = \"crnn\"".into()
            );
        }
        if let Some([lo, hi]) = t.gamma
            && (!(0.1..=10.0).contains(&lo) || !(lo..=10.0).contains(&hi))
        {
            return bad(format!("train.gamma must be an increasing pair of powers in [0.1, 10], not [{lo}, {hi}]"));
        }
        if let Some(n) = t.noise
            && !(0.0..=1.0).contains(&n)
        {
            return bad(format!("train.noise must be a standard deviation in [0, 1], not {n}"));
        }
        if let Some(a) = &self.adapt {
            match (&self.degrade, self.model.arch) {
                (Some(Degradation::ThickSlice { .. }), _) => {}
                (Some(Degradation::Kspace { .. }), Arch::Crnn) if !self.model.temporal => {}
                (Some(Degradation::Kspace { .. }), Arch::Crnn) => {
                    return bad("[adapt] reconstructs single frames: it does not apply to a temporal CRNN".into());
                }
                _ => {
                    return bad(
                        "[adapt] learns from the image itself: it needs degrade.model = \"thick-slice\" (its fine axes) or \"kspace\" with the CRNN (its measured lines)"
                            .into(),
                    );
                }
            }
            let ok = (1..=100_000).contains(&a.steps)
                && (1..=4096).contains(&a.batch)
                && (8..=512).contains(&a.patch)
                && a.lr > 0.0
                && a.lr.is_finite()
                && a.holdout > 0.0
                && a.validation > 0.0
                && a.holdout + a.validation < 1.0;
            if !ok {
                return bad(
                    "adapt: steps must lie in 1..=100000, batch in 1..=4096, patch in 8..=512, lr > 0, and holdout and validation > 0 with holdout + validation < 1".into(),
                );
            }
        }
        let m = &self.model;
        match m.arch {
            Arch::RedCnn => {
                if !((1..=512).contains(&m.features) && m.kernel % 2 == 1 && (3..=9).contains(&m.kernel)) {
                    return bad("model: features must lie in 1..=512 and kernel be odd in 3..=9".into());
                }
                if t.patch <= 10 * (m.kernel - 1) / 2 {
                    return bad(format!("train.patch must exceed {} pixels for RED-CNN with kernel {}", 10 * (m.kernel - 1) / 2, m.kernel));
                }
            }
            Arch::Crnn => {
                if !matches!(self.degrade, Some(Degradation::Kspace { .. })) {
                    return bad("model.arch = \"crnn\" reconstructs k-space data: it needs degrade.model = \"kspace\"".into());
                }
                if !(1..=20).contains(&m.iterations) || !(1..=8).contains(&m.layers) || !(1..=256).contains(&m.features) {
                    return bad("model: CRNN iterations must lie in 1..=20, layers in 1..=8 and features in 1..=256".into());
                }
                if d.plane.is_some_and(|p| p != [0, 1]) {
                    return bad("the CRNN works in the axial planes where k-space was sampled: data.plane must be [0, 1]".into());
                }
                if [d.val_band, d.test_band].iter().flatten().any(|b| b.axis != 2) {
                    return bad("the CRNN trains on whole planes: hold out whole slices (band axis 2) or whole images".into());
                }
            }
            Arch::ConvAe => {
                if m.channels.is_empty() || m.channels.iter().any(|&c| c == 0 || c > 512) {
                    return bad("model.channels: at least one level of 1..=512 channels".into());
                }
                if !t.patch.is_multiple_of(1 << m.channels.len()) {
                    return bad(format!(
                        "train.patch must be a multiple of {} for a {}-level auto-encoder",
                        1 << m.channels.len(),
                        m.channels.len()
                    ));
                }
            }
            Arch::Unet => {
                if m.channels.len() < 2 || m.channels.iter().any(|&c| c == 0 || c > 512) {
                    return bad("model.channels: at least two levels of 1..=512 channels".into());
                }
                if !t.patch.is_multiple_of(1 << (m.channels.len() - 1)) {
                    return bad(format!(
                        "train.patch must be a multiple of {} for a {}-level U-Net",
                        1 << (m.channels.len() - 1),
                        m.channels.len()
                    ));
                }
            }
        }
        // Adaptation draws its own patches: they must suit the network as training's do.
        if let Some(a) = &self.adapt
            && a.patch != self.train.patch
        {
            let mut other = self.clone();
            other.adapt = None;
            other.train.patch = a.patch;
            other.validate().map_err(|e| EnhanceError::Input(format!("adapt.patch = {}: {e}", a.patch)))?;
        }
        Ok(())
    }
}
