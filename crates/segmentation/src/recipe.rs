//! The segmentation recipe (TOML): where the cases are, how validation is split off, plan overrides, training,
//! augmentation and inference settings.
use crate::SegError;
use crate::plan::PlanOverrides;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vesalius_data::transforms::{Pipeline, Transform};
use vesalius_train::transfer::TransferSpec;

/// One case listed in the recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseEntry {
    /// Identifier (default: the image file name).
    #[serde(default)]
    pub id: Option<String>,
    /// Image file, or one file per channel.
    pub image: Vec<PathBuf>,
    /// Label map.
    pub label: PathBuf,
}

/// An image without a reference, listed for `vesalius evaluate` to segment and picture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Identifier (default: the image file name).
    #[serde(default)]
    pub id: Option<String>,
    /// Image file, or one file per channel.
    pub image: Vec<PathBuf>,
}

impl ImageEntry {
    /// The identifier: `id`, or the first image's file name without `.nii` / `.nii.gz`.
    pub fn name(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let name = self.image.first().and_then(|p| p.file_name()).map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            name.trim_end_matches(".gz").trim_end_matches(".nii").to_string()
        })
    }
}

/// A slab of each case held out for validation: voxels `start..end` along `axis`; the rest trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slab {
    /// Voxel axis.
    pub axis: usize,
    /// First held-out index.
    pub start: usize,
    /// One past the last held-out index.
    pub end: usize,
}

/// `[data]`: exactly one of `dataset`, `manifest` or `cases`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A Medical Segmentation Decathlon / nnU-Net raw folder (`dataset.json`, `imagesTr/`, `labelsTr/`).
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    /// A CSV manifest (`image`, `label`, `patient_id`, optional `case_id`, `stratum`).
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Cases listed here.
    #[serde(default)]
    pub cases: Vec<CaseEntry>,
    /// Channel names for `manifest` and `cases` (`"CT"` selects CT normalisation).
    #[serde(default = "default_channels")]
    pub channel_names: Vec<String>,
    /// Label name → value for `manifest` and `cases`.
    #[serde(default = "default_labels")]
    pub labels: BTreeMap<String, u32>,
    /// Number of patient-level folds (`splits.json`).
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// The fold validated on.
    #[serde(default)]
    pub fold: usize,
    /// Hold out a slab of every case instead of whole cases (for a single subject).
    #[serde(default)]
    pub slab: Option<Slab>,
    /// Labelled test cases, never used for training or model selection (besides a dataset's `imagesTs/` with
    /// `labelsTs/`).
    #[serde(default)]
    pub test: Vec<CaseEntry>,
    /// Images without a reference (other subjects, scanners or contrasts): `vesalius evaluate` segments each on
    /// the test run and saves a picture of the mask over the image, with the segmented volumes; no metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlabelled: Vec<ImageEntry>,
    /// Share of patients held out as the test set before folds are made (seeded; 0: none).
    #[serde(default)]
    pub test_share: f64,
    /// With `slab`: a second slab of every case held out as the test set (it must not overlap the validation slab).
    #[serde(default)]
    pub test_slab: Option<Slab>,
    /// Preprocessed-case cache folder (default: `cache/` in the run folder).
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn default_channels() -> Vec<String> {
    vec!["image".into()]
}
fn default_labels() -> BTreeMap<String, u32> {
    BTreeMap::from([("background".to_string(), 0), ("foreground".to_string(), 1)])
}
fn default_folds() -> usize {
    5
}

/// The training objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Soft Dice + cross-entropy (nnU-Net).
    #[default]
    DiceCe,
    /// Soft Dice.
    Dice,
    /// Generalised Dice.
    GeneralisedDice,
    /// Focal (γ = `focal_gamma`).
    Focal,
    /// Tversky (α, β = `tversky_alpha`, `tversky_beta`).
    Tversky,
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs.
    pub epochs: usize,
    /// Batches per epoch.
    pub iterations: usize,
    /// Initial learning rate of Adam; decays as `(1 − epoch/epochs)^0.9` (nnU-Net's poly schedule).
    pub lr: f64,
    /// Objective.
    pub loss: LossKind,
    /// γ of the focal loss.
    pub focal_gamma: f64,
    /// α (false-positive weight) of the Tversky loss.
    pub tversky_alpha: f64,
    /// β (false-negative weight) of the Tversky loss.
    pub tversky_beta: f64,
    /// Validate every this many epochs (and after the last).
    pub val_every: usize,
    /// Share of foreground-centred patches per batch.
    pub foreground_share: f64,
    /// Loader threads (0: one per core).
    pub threads: usize,
    /// Seed of initialisation, sampling and augmentation.
    pub seed: u64,
    /// Which epoch's network the run keeps.
    pub select: Select,
}

/// Which epoch's network a run keeps as its model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The one with the best validation Dice.
    #[default]
    Best,
    /// The last one (nnU-Net's final checkpoint), for validation sets that cannot rank networks well, such as a
    /// thin slab of the training subject; validation is still computed and logged.
    Last,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 50,
            iterations: 50,
            lr: 1e-3,
            loss: LossKind::DiceCe,
            focal_gamma: 2.0,
            tversky_alpha: 0.3,
            tversky_beta: 0.7,
            val_every: 1,
            foreground_share: 1.0 / 3.0,
            threads: 0,
            seed: 0,
            select: Select::Best,
        }
    }
}

/// `[infer]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferSection {
    /// Window overlap.
    pub overlap: f64,
    /// Flip test-time augmentation.
    pub flip_tta: bool,
    /// Windows per model call.
    pub batch: usize,
    /// Keep only the largest connected component (6-connectivity) of each foreground class.
    pub largest_component: bool,
    /// Fill holes: background regions of the plan grid not connected to its border take the class around them
    /// (for a single foreground class).
    pub fill_holes: bool,
}

impl Default for InferSection {
    fn default() -> Self {
        Self { overlap: 0.5, flip_tta: false, batch: 1, largest_component: false, fill_holes: false }
    }
}

/// The refinement of the network's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefineKind {
    /// Mean-field CRF iterations unrolled as a recurrent network ([`vesalius_nets::CrfRnn`]).
    #[default]
    CrfRnn,
}

/// `[refine]`: a second stage trained after the U-Net, with the U-Net frozen, on the same augmented patches and
/// loss; chosen by validation Dice; applied to the whole image's probabilities at inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefineSection {
    /// The refinement.
    pub kind: RefineKind,
    /// Mean-field iterations.
    pub iterations: usize,
    /// Window radius (voxels of the plan grid).
    pub radius: f64,
    /// Spatial bandwidth of the appearance kernel (voxels).
    pub theta_alpha: f64,
    /// Initial intensity bandwidth of the appearance kernel (normalised intensity units; learnt).
    pub theta_beta: f64,
    /// Spatial bandwidth of the smoothness kernel (voxels).
    pub theta_gamma: f64,
    /// Epochs of the refinement stage.
    pub epochs: usize,
    /// Batches per epoch.
    pub steps: usize,
    /// Learning rate of Adam (constant).
    pub lr: f64,
}

impl Default for RefineSection {
    fn default() -> Self {
        Self {
            kind: RefineKind::CrfRnn,
            iterations: 5,
            radius: 2.0,
            theta_alpha: 2.0,
            theta_beta: 0.5,
            theta_gamma: 1.0,
            epochs: 10,
            steps: 25,
            lr: 0.01,
        }
    }
}

impl RefineSection {
    /// The network of the refinement for `classes` classes.
    pub fn crf(&self, classes: usize) -> vesalius_nets::CrfRnnConfig {
        vesalius_nets::CrfRnnConfig::new(classes)
            .with_iterations(self.iterations)
            .with_radius(self.radius)
            .with_theta_alpha(self.theta_alpha)
            .with_theta_beta(self.theta_beta)
            .with_theta_gamma(self.theta_gamma)
    }

    /// Every key of the section as the run's recipe spells it (`refine.epochs`, …).
    pub fn keys() -> Vec<String> {
        ["kind", "iterations", "radius", "theta_alpha", "theta_beta", "theta_gamma", "epochs", "steps", "lr"]
            .iter()
            .map(|k| format!("refine.{k}"))
            .collect()
    }
}

/// A segmentation recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegRecipe {
    /// Always `"segmentation"`.
    pub task: String,
    /// Cases and validation split.
    pub data: DataSection,
    /// Plan overrides.
    #[serde(default)]
    pub plan: PlanOverrides,
    /// Transfer learning: weights to start from (`init`, `init_naming`, `init_skip`), frozen layers (`freeze`,
    /// `unfreeze_every`) and per-layer learning rates (`lr_scale`), as [`vesalius_train::transfer::TransferSpec`].
    #[serde(default, skip_serializing_if = "TransferSpec::is_default")]
    pub model: TransferSpec,
    /// Training.
    #[serde(default)]
    pub train: TrainSection,
    /// Transforms applied once to every training case after preprocessing (seeded by the recipe's seed), before
    /// patches are cut: typically [`Transform::HeadLayers`], which pads the grid and adds generation labels for
    /// synthesis. Label values at or above the task's number of classes are generation labels: they are left out
    /// of the label-balanced sampling and become background after augmentation. Validation and test cases are not
    /// prepared.
    #[serde(default, skip_serializing_if = "Pipeline::is_empty")]
    pub prepare: Pipeline,
    /// Transforms applied once to every validation case after `[prepare]` and before preprocessing (seeded by 0):
    /// typically `synthesise_from_labels` with `keep`, which puts a skull-stripped validation slab in a synthetic
    /// head, so that model selection penalises masks that take in the head.
    #[serde(default, skip_serializing_if = "Pipeline::is_empty")]
    pub validate: Pipeline,
    /// Augmentation of training patches.
    #[serde(default = "default_augment")]
    pub augment: Pipeline,
    /// Inference.
    #[serde(default)]
    pub infer: InferSection,
    /// Refinement of the network's output (a second training stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<RefineSection>,
    /// A stacked auto-encoder over the patch around each voxel instead of the U-Net ([`SaeSection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sae: Option<SaeSection>,
}

/// `[sae]`: voxel-wise classification by a stacked auto-encoder's encoder of the `patch`-sided patch around each
/// voxel (`vesalius_nets::PatchSae`), the encoder pre-trained greedily, layer by layer
/// (`vesalius_train::greedy`), on `samples` patches of the training cases (as many centred on each class), then
/// trained end to end with a linear head on the recipe's loss, patches and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeSection {
    /// Patch side in voxels (odd); 2D plans use `patch × patch`.
    pub patch: usize,
    /// Encoder widths, input side first.
    #[serde(default = "default_sae_hidden")]
    pub hidden: Vec<usize>,
    /// Patches drawn for pre-training.
    #[serde(default = "default_sae_samples")]
    pub samples: usize,
    /// Epochs of each layer's pre-training.
    #[serde(default = "default_sae_epochs")]
    pub epochs: usize,
    /// Epochs of the stack's end-to-end fine-tuning on reconstruction.
    #[serde(default = "default_sae_fine_tune")]
    pub fine_tune_epochs: usize,
    /// Patches per pre-training step.
    #[serde(default = "default_sae_batch")]
    pub batch: usize,
    /// Pre-training learning rate (Adam).
    #[serde(default = "default_sae_lr")]
    pub lr: f64,
    /// Fraction of each patch masked to zero during pre-training (a denoising auto-encoder).
    #[serde(default)]
    pub corruption: f64,
    /// KL sparsity of the codes during pre-training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<vesalius_train::greedy::Sparsity>,
}

fn default_sae_hidden() -> Vec<usize> {
    vec![128, 64]
}
fn default_sae_samples() -> usize {
    20_000
}
fn default_sae_epochs() -> usize {
    10
}
fn default_sae_fine_tune() -> usize {
    5
}
fn default_sae_batch() -> usize {
    64
}
fn default_sae_lr() -> f64 {
    1e-3
}

impl SaeSection {
    /// The greedy pre-training of this section (linear reconstruction: inputs are normalised intensities).
    pub fn greedy(&self, seed: u64) -> vesalius_train::greedy::GreedyConfig {
        vesalius_train::greedy::GreedyConfig {
            hidden: self.hidden.clone(),
            epochs: self.epochs,
            fine_tune_epochs: self.fine_tune_epochs,
            batch: self.batch,
            lr: self.lr,
            corruption: self.corruption,
            sparsity: self.sparsity,
            sigmoid_output: false,
            seed,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.patch.is_multiple_of(2) || self.patch > 15 {
            return Err(format!("[sae] patch must be odd and at most 15, not {}", self.patch));
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(format!("[sae] hidden needs positive widths, not {:?}", self.hidden));
        }
        if self.samples < self.batch || self.batch == 0 || self.samples > 1_000_000 {
            return Err(format!("[sae] samples ({}) must be between batch ({}) and 1000000", self.samples, self.batch));
        }
        if !(0.0..1.0).contains(&self.corruption) || !(self.lr > 0.0) {
            return Err("[sae] corruption must be in [0, 1) and lr positive".into());
        }
        Ok(())
    }
}

/// nnU-Net-like augmentation: rotation and scaling, noise, blur, contrast, gamma, mirroring.
pub fn default_augment() -> Pipeline {
    Pipeline {
        transforms: vec![
            Transform::RandAffine { prob: 0.2, rotate: vec![15.0], scale: 0.15, shear: 0.0, translate: vec![] },
            Transform::RandGaussianNoise { prob: 0.1, std: [0.0, 0.1] },
            Transform::RandGaussianBlur { prob: 0.1, sigma: [0.5, 1.0] },
            Transform::RandScaleShift { prob: 0.15, scale: [0.75, 1.25], shift: [0.0, 0.0] },
            Transform::RandGamma { prob: 0.15, gamma: [0.7, 1.5] },
            Transform::RandFlip { prob: 0.5, axes: vec![0, 1, 2] },
        ],
    }
}

impl SegRecipe {
    /// A recipe training on an MSD / nnU-Net folder with every default.
    pub fn for_dataset(dataset: &Path) -> Self {
        Self {
            task: "segmentation".into(),
            data: DataSection {
                dataset: Some(dataset.to_path_buf()),
                manifest: None,
                cases: Vec::new(),
                channel_names: default_channels(),
                labels: default_labels(),
                folds: default_folds(),
                fold: 0,
                slab: None,
                test: Vec::new(),
                unlabelled: Vec::new(),
                test_share: 0.0,
                test_slab: None,
                cache: None,
            },
            plan: PlanOverrides::default(),
            model: TransferSpec::default(),
            train: TrainSection::default(),
            prepare: Pipeline::default(),
            validate: Pipeline::default(),
            augment: default_augment(),
            infer: InferSection::default(),
            refine: None,
            sae: None,
        }
    }

    /// Parses a recipe; relative paths are resolved against `base` and made absolute, so the copy a run keeps
    /// (`recipe.toml`) names the same files from anywhere.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, SegError> {
        let mut r: SegRecipe = toml::from_str(text).map_err(|e| SegError::Input(format!("segmentation recipe: {e}")))?;
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        r.resolve(&base);
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, SegError> {
        let text = std::fs::read_to_string(path).map_err(|e| SegError::Input(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| SegError::Input(format!("{}: {e}", path.display())))
    }

    /// TOML text of the recipe.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let d = &mut self.data;
        for p in [&mut d.dataset, &mut d.manifest, &mut d.cache].into_iter().flatten() {
            fix(p);
        }
        for c in d.cases.iter_mut().chain(d.test.iter_mut()) {
            c.image.iter_mut().for_each(fix);
            fix(&mut c.label);
        }
        for c in &mut d.unlabelled {
            c.image.iter_mut().for_each(fix);
        }
        if let Some(init) = &mut self.model.init {
            fix(init);
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), SegError> {
        let bad = |m: String| Err(SegError::Input(m));
        if self.task != "segmentation" {
            return bad(format!("task is '{}', expected 'segmentation'", self.task));
        }
        self.model.validate().map_err(SegError::Input)?;
        if let Some(sae) = &self.sae {
            sae.validate().map_err(SegError::Input)?;
            if self.model.is_active() {
                return bad("[model] transfer learning applies to the U-Net, not to an [sae] network".into());
            }
        }
        if let Some(p) = self.plan.dropout
            && !(0.0..1.0).contains(&p)
        {
            return Err(SegError::Input(format!("plan.dropout must be in [0, 1), not {p}")));
        }
        let d = &self.data;
        let sources = d.dataset.is_some() as u8 + d.manifest.is_some() as u8 + (!d.cases.is_empty()) as u8;
        if sources != 1 {
            return bad("[data] needs exactly one of `dataset`, `manifest` or `cases`".into());
        }
        if d.slab.is_none() && (d.folds < 2 || d.fold >= d.folds) {
            return bad(format!("fold {} of {} folds: folds must be ≥ 2 and fold < folds", d.fold, d.folds));
        }
        for s in d.slab.iter().chain(d.test_slab.iter()) {
            if s.end <= s.start || s.axis > 2 {
                return bad(format!("slab {s:?} is empty or on an axis above 2"));
            }
        }
        if let Some(t) = d.test_slab {
            let Some(v) = d.slab else { return bad("[data] test_slab needs a validation `slab`".into()) };
            if t.axis != v.axis || (t.start < v.end && v.start < t.end) {
                return bad(format!("test_slab {t:?} must lie on the validation slab's axis without overlapping it ({v:?})"));
            }
        }
        if !(0.0..1.0).contains(&d.test_share) {
            return bad(format!("[data] test_share {} must be in [0, 1)", d.test_share));
        }
        let t = &self.train;
        if t.epochs == 0 || t.iterations == 0 || !(t.lr > 0.0) || t.val_every == 0 || !(0.0..=1.0).contains(&t.foreground_share) {
            return bad("[train] needs epochs, iterations, val_every ≥ 1, lr > 0 and 0 ≤ foreground_share ≤ 1".into());
        }
        if let Some(r) = &self.refine {
            let positive = [r.radius, r.theta_alpha, r.theta_beta, r.theta_gamma, r.lr].iter().all(|v| *v > 0.0 && v.is_finite());
            if r.iterations == 0 || r.epochs == 0 || r.steps == 0 || r.radius < 1.0 || !positive {
                return bad(
                    "[refine] needs iterations, epochs, steps ≥ 1, radius ≥ 1 and positive theta_alpha, theta_beta, theta_gamma and lr"
                        .into(),
                );
            }
        }
        if !(0.0..1.0).contains(&self.infer.overlap) || self.infer.batch == 0 {
            return bad("[infer] needs 0 ≤ overlap < 1 and batch ≥ 1".into());
        }
        Ok(())
    }
}
