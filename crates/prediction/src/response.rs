//! Treatment response from a pair of scans (`task = "response"`): a convolutional network of the architectures crate
//! reads the scan before and the scan after treatment as two channels of one image and predicts the change of the
//! tumour, `ln(area after / area before)`.
//!
//! No public response data are available offline, so the pairs are made with a known change
//! ([`vesalius_data::response`]): real tumours (an image and its tumour mask, `[[data.cases]]`) and, optionally,
//! lesions inserted into a real host image (`[data.synthetic]`), shrunk or grown by a smooth radial warp, the after
//! scan shifted and given fresh noise; each scan's crop is standardised on its own, as new scans are. Training draws new pairs every epoch (seeded by the epoch, so a resumed
//! run sees the same pairs), with flips and quarter turns applied to both scans alike; the epoch with the best
//! validation R² is kept. The test set is a fixed draw of pairs from the test tumours: the regression metrics of
//! [`vesalius_eval::regression`] and, for the responders (area ratio below `responder_below`, by default 0.49 — a
//! 30 % drop in diameter, RECIST's partial response), the ROC AUC of the predicted change.
//!
//! ```
//! use vesalius_prediction::response::ResponseRecipe;
//! let r = ResponseRecipe::from_toml(r#"
//!     task = "response"
//!     [data]
//!     [[data.cases]]
//!     image = "brain2_image.nii.gz"
//!     mask = "brain2_label.nii.gz"
//!     split = "test"
//!     [data.synthetic]
//!     host = "mni152_t1.nii.gz"
//!     lesions = 60
//!     diameter_mm = [8.0, 30.0]
//!     contrast = [0.5, 4.0]
//!     [model]
//!     arch = "lenet5"
//! "#, std::path::Path::new("/data")).unwrap();
//! assert_eq!(r.data.side, 48);
//! assert_eq!(r.data.cases[0].image, std::path::Path::new("/data/brain2_image.nii.gz"));
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vesalius_data::lesions::{LesionSpec, insert_lesions_with_fractions};
use vesalius_data::response::{Jitter, ResponsePair, TumourSlice, response_pair, tumour_slices};
use vesalius_eval::bootstrap::{Clusters, Estimate, cluster_percentile_ci};
use vesalius_eval::regression::{RegressionReport, regression_report};
use vesalius_io::Image;
use vesalius_nets::{Arch, Classifier, ClassifierConfig};
use vesalius_train::engine::{self, RunOptions};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::PredError;

/// Which set a case belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseSplit {
    /// Training.
    Train,
    /// Model selection.
    Val,
    /// Testing.
    Test,
}

/// A real tumour: an image and its tumour mask on the same grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The image.
    pub image: PathBuf,
    /// Its tumour mask (> 0.5 inside).
    pub mask: PathBuf,
    /// Its set.
    pub split: CaseSplit,
}

/// Lesions inserted into a real host image, for training and validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Synthetic {
    /// The host image.
    pub host: PathBuf,
    /// Where lesion centres may lie (> 0.5; default: above the host's median).
    #[serde(default)]
    pub region: Option<PathBuf>,
    /// Number of lesions.
    pub lesions: usize,
    /// Equivalent diameter range, millimetres.
    pub diameter_mm: [f64; 2],
    /// Contrast range in units of the host's local standard deviation (negative: darker than the host).
    pub contrast: [f64; 2],
    /// Share of the lesions used for validation.
    #[serde(default = "default_val_share")]
    pub val_share: f64,
}

fn default_val_share() -> f64 {
    0.25
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseData {
    /// Real tumours.
    #[serde(default)]
    pub cases: Vec<Case>,
    /// Inserted lesions.
    #[serde(default)]
    pub synthetic: Option<Synthetic>,
    /// Side of the square crops, pixels.
    #[serde(default = "default_side")]
    pub side: usize,
    /// Pixel size of the crops, millimetres.
    #[serde(default = "one")]
    pub pixel_mm: f64,
    /// Smallest tumour area of a slice to use, mm².
    #[serde(default = "default_min_area")]
    pub min_area_mm2: f64,
    /// Range of the change drawn, natural log of the area ratio (uniform).
    #[serde(default = "default_log_ratio")]
    pub log_ratio: [f64; 2],
    /// Largest shift of the after scan, pixels.
    #[serde(default = "default_shift")]
    pub shift_px: f64,
    /// Noise added to both scans (standardised units).
    #[serde(default = "default_noise")]
    pub noise: f64,
}

fn default_side() -> usize {
    48
}
fn one() -> f64 {
    1.0
}
fn default_min_area() -> f64 {
    20.0
}
fn default_log_ratio() -> [f64; 2] {
    [0.25f64.ln(), 2f64.ln()]
}
fn default_shift() -> f64 {
    2.0
}
fn default_noise() -> f64 {
    0.05
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseModel {
    /// A network of the architectures crate (`lenet5`, `alexnet`, `vgg11`, `resnet18`, `sae`, …) with two input
    /// channels and one output. `sae`: the encoder of a stacked auto-encoder, pre-trained greedily (layer by layer,
    /// then fine-tuned) on `pretrain_pairs` training pairs before the whole network is trained.
    pub arch: Arch,
    /// `sae`: training pairs the auto-encoder is pre-trained on.
    #[serde(default = "default_pretrain_pairs")]
    pub pretrain_pairs: usize,
    /// `sae`: epochs of each greedy stage (the fine-tuning takes half as many).
    #[serde(default = "default_pretrain_epochs")]
    pub pretrain_epochs: usize,
}

fn default_pretrain_pairs() -> usize {
    512
}
fn default_pretrain_epochs() -> usize {
    10
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseTrain {
    /// Epochs.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Pairs drawn per epoch.
    #[serde(default = "default_pairs")]
    pub pairs: usize,
    /// Pairs per step.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Adam learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// L2 weight decay.
    #[serde(default)]
    pub weight_decay: f64,
}

fn default_epochs() -> usize {
    20
}
fn default_pairs() -> usize {
    256
}
fn default_batch() -> usize {
    32
}
fn default_lr() -> f64 {
    1e-3
}

impl Default for ResponseTrain {
    fn default() -> Self {
        Self { epochs: default_epochs(), pairs: default_pairs(), batch: default_batch(), lr: default_lr(), weight_decay: 0.0 }
    }
}

/// `[eval]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseEval {
    /// Pairs drawn from each validation or test slice.
    #[serde(default = "default_pairs_per_slice")]
    pub pairs_per_slice: usize,
    /// Area ratio below which a tumour counts as responding.
    #[serde(default = "default_responder")]
    pub responder_below: f64,
    /// Bootstrap resamples.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
}

fn default_pairs_per_slice() -> usize {
    10
}
fn default_responder() -> f64 {
    0.49
}
fn default_bootstrap() -> usize {
    1000
}

impl Default for ResponseEval {
    fn default() -> Self {
        Self { pairs_per_slice: default_pairs_per_slice(), responder_below: default_responder(), bootstrap: default_bootstrap() }
    }
}

/// A treatment-response recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRecipe {
    /// Always `"response"`.
    pub task: String,
    /// Seed of the lesions, the pairs, the network and the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// Data.
    pub data: ResponseData,
    /// Model.
    pub model: ResponseModel,
    /// Training.
    #[serde(default)]
    pub train: ResponseTrain,
    /// Evaluation.
    #[serde(default)]
    pub eval: ResponseEval,
}

impl ResponseRecipe {
    /// Parses a recipe; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, PredError> {
        let mut r: ResponseRecipe = toml::from_str(text).map_err(|e| PredError::Input(format!("invalid recipe: {e}")))?;
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for c in &mut r.data.cases {
            abs(&mut c.image);
            abs(&mut c.mask);
        }
        if let Some(s) = &mut r.data.synthetic {
            abs(&mut s.host);
            if let Some(m) = &mut s.region {
                abs(m);
            }
        }
        r.validate()?;
        Ok(r)
    }

    /// Reads a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, PredError> {
        let text = std::fs::read_to_string(path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        Self::from_toml(&text, &base).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), PredError> {
        let bad = |m: &str| Err(PredError::Input(m.to_string()));
        let d = &self.data;
        if self.task != "response" {
            return bad("task must be \"response\"");
        }
        let has = |s: CaseSplit| d.cases.iter().any(|c| c.split == s);
        if !has(CaseSplit::Test) {
            return bad("data.cases must hold a test case (split = \"test\")");
        }
        if !(has(CaseSplit::Train) || d.synthetic.is_some()) || !(has(CaseSplit::Val) || d.synthetic.is_some()) {
            return bad("training and validation need cases with split = \"train\" and \"val\", or data.synthetic");
        }
        if !((28..=256).contains(&d.side) && d.pixel_mm > 0.0 && d.pixel_mm.is_finite() && d.min_area_mm2 >= 0.0) {
            return bad("data.side must lie in 28..=256, pixel_mm be positive, min_area_mm2 ≥ 0");
        }
        if !(d.log_ratio[0] < d.log_ratio[1] && d.log_ratio[0] >= 0.1f64.ln() && d.log_ratio[1] <= 3f64.ln()) {
            return bad("data.log_ratio must be an increasing range within [ln 0.1, ln 3]");
        }
        if !(d.shift_px >= 0.0 && d.shift_px <= 8.0 && (0.0..=1.0).contains(&d.noise)) {
            return bad("data.shift_px in [0, 8], noise in [0, 1]");
        }
        if let Some(s) = &d.synthetic
            && (s.lesions < 2
                || s.lesions > 1000
                || !(s.diameter_mm[0] > 0.0 && s.diameter_mm[0] <= s.diameter_mm[1])
                || !(s.val_share > 0.0 && s.val_share < 1.0))
        {
            return bad("data.synthetic: 2 to 1000 lesions, a positive increasing diameter range, val_share in (0, 1)");
        }
        let t = &self.train;
        if t.epochs == 0
            || t.pairs == 0
            || t.batch == 0
            || t.batch > 1024
            || t.pairs > 1 << 20
            || !(t.lr > 0.0 && t.lr.is_finite())
            || !(t.weight_decay >= 0.0)
        {
            return bad("train: epochs, pairs and batch (≤ 1024) ≥ 1, lr > 0, weight_decay ≥ 0");
        }
        let e = &self.eval;
        if self.model.pretrain_pairs == 0
            || self.model.pretrain_pairs > 100_000
            || self.model.pretrain_epochs == 0
            || self.model.pretrain_epochs > 1000
        {
            return bad("model: pretrain_pairs in 1..=100000, pretrain_epochs in 1..=1000");
        }
        if e.pairs_per_slice == 0 || e.pairs_per_slice > 1000 || e.bootstrap == 0 || !(e.responder_below > 0.0 && e.responder_below < 1.0) {
            return bad("eval: pairs_per_slice in 1..=1000, bootstrap ≥ 1, responder_below in (0, 1)");
        }
        Ok(())
    }

    fn jitter(&self) -> Jitter {
        Jitter { shift_px: self.data.shift_px, noise: self.data.noise }
    }
}

fn load(path: &Path) -> Result<Image, PredError> {
    vesalius_io::load(path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))
}

/// The tumour slices of the sets in `wanted`: real cases by their split, inserted lesions (training and validation)
/// split by `val_share`. Lesions are inserted only when training or validation slices are asked for.
pub fn slices(recipe: &ResponseRecipe, wanted: &[CaseSplit]) -> Result<BTreeMap<CaseSplit, Vec<TumourSlice>>, PredError> {
    let d = &recipe.data;
    let mut out: BTreeMap<CaseSplit, Vec<TumourSlice>> = BTreeMap::new();
    for c in d.cases.iter().filter(|c| wanted.contains(&c.split)) {
        let (img, mask) = (load(&c.image)?, load(&c.mask)?);
        let name = c.image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let s = tumour_slices(&img, &mask, d.side, d.pixel_mm, d.min_area_mm2, &name).map_err(|e| PredError::Input(e.to_string()))?;
        if s.is_empty() {
            return Err(PredError::Input(format!("{}: no slice with a tumour of {} mm² or more", c.mask.display(), d.min_area_mm2)));
        }
        out.entry(c.split).or_default().extend(s);
    }
    if let Some(syn) = d.synthetic.as_ref().filter(|_| wanted.iter().any(|w| *w != CaseSplit::Test)) {
        let host = load(&syn.host)?;
        let region: Option<Vec<bool>> = match &syn.region {
            Some(p) => Some(load(p)?.channel(0).iter().map(|&v| v > 0.5).collect()),
            None => None,
        };
        let spec = LesionSpec { count: syn.lesions, diameter_mm: syn.diameter_mm, contrast: syn.contrast, elongation: 1.5 };
        let (img, lesions, fractions) = insert_lesions_with_fractions(&host, region.as_deref(), &spec, recipe.seed)
            .map_err(|e| PredError::Input(format!("{}: {e}", syn.host.display())))?;
        let n_val = ((syn.val_share * lesions.len() as f64).round() as usize).clamp(1, lesions.len() - 1);
        let sh = img.shape().to_vec();
        let sp = img.spacing();
        for (k, (lesion, frac)) in lesions.iter().zip(&fractions).enumerate() {
            // a box around the lesion, wide enough for the crop
            let half: Vec<i64> = (0..3)
                .map(|a| {
                    if a < 2 {
                        (d.side as f64 * d.pixel_mm / sp[a] / 2.0).ceil() as i64 + 1
                    } else {
                        (lesion.diameter_mm / sp[2]).ceil() as i64 + 1
                    }
                })
                .collect();
            let start: Vec<i64> = (0..3).map(|a| lesion.centre[a].round() as i64 - half[a]).collect();
            let shape: Vec<usize> = (0..3).map(|a| (2 * half[a] + 1) as usize).collect();
            let ci = vesalius_io::geometry::crop_or_pad(&img, &start, &shape, 0.0).map_err(|e| PredError::Internal(e.to_string()))?;
            // the lesion's mask (partial-volume share ≥ ½), in the box
            let mut box_mask = vec![0f32; shape.iter().product()];
            for &(i, _) in frac.iter().filter(|(_, f)| *f >= 0.5) {
                let v = [i % sh[0], (i / sh[0]) % sh[1], i / (sh[0] * sh[1])];
                let b: Vec<i64> = (0..3).map(|a| v[a] as i64 - start[a]).collect();
                if (0..3).all(|a| b[a] >= 0 && (b[a] as usize) < shape[a]) {
                    box_mask[b[0] as usize + shape[0] * (b[1] as usize + shape[1] * b[2] as usize)] = 1.0;
                }
            }
            let cm = Image::new(box_mask, shape.clone(), 1, *ci.affine(), "float32").map_err(|e| PredError::Internal(e.to_string()))?;
            let s = tumour_slices(&ci, &cm, d.side, d.pixel_mm, d.min_area_mm2, &format!("lesion {k}"))
                .map_err(|e| PredError::Internal(e.to_string()))?;
            let set = if k < n_val { CaseSplit::Val } else { CaseSplit::Train };
            if wanted.contains(&set) {
                out.entry(set).or_default().extend(s);
            }
        }
    }
    for &s in wanted {
        if out.get(&s).is_none_or(Vec::is_empty) {
            return Err(PredError::Input(format!("no {s:?} slice with a tumour of {} mm² or more", d.min_area_mm2).to_lowercase()));
        }
    }
    Ok(out)
}

/// The pair `k` drawn from `slices` with `seed`: a slice, a change in the recipe's range, the jitter; with
/// `augment`, a flip and a quarter turn applied to both scans.
fn draw(recipe: &ResponseRecipe, slices: &[TumourSlice], seed: u64, augment: bool) -> (ResponsePair, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let i = rng.random_range(0..slices.len());
    let [a, b] = recipe.data.log_ratio;
    let target = rng.random_range(a..=b);
    let mut p = response_pair(&slices[i], target, &recipe.jitter(), rng.random());
    if augment {
        let (flip, turns) = (rng.random_bool(0.5), rng.random_range(0..4u8));
        let side = slices[i].side;
        for img in [&mut p.pre, &mut p.post] {
            *img = transform(img, side, flip, turns);
        }
    }
    (p, i)
}

fn transform(img: &[f32], side: usize, flip: bool, turns: u8) -> Vec<f32> {
    let mut out = img.to_vec();
    if flip {
        out = (0..side * side).map(|i| img[(i / side) * side + side - 1 - i % side]).collect();
    }
    for _ in 0..turns {
        let prev = out.clone();
        out = (0..side * side).map(|i| prev[(i % side) * side + side - 1 - i / side]).collect();
    }
    out
}

/// The fixed evaluation pairs of a set: `pairs_per_slice` for each slice, with their slice index.
fn fixed_pairs(recipe: &ResponseRecipe, slices: &[TumourSlice], salt: u64) -> Vec<(ResponsePair, usize)> {
    let [a, b] = recipe.data.log_ratio;
    let n = recipe.eval.pairs_per_slice;
    let mut out = Vec::with_capacity(slices.len() * n);
    for (i, s) in slices.iter().enumerate() {
        for k in 0..n {
            // evenly spaced changes, so every slice sees the whole range
            let target = a + (b - a) * (k as f64 + 0.5) / n as f64;
            let seed = vesalius_io::mix(recipe.seed ^ salt ^ ((i as u64) << 20) ^ k as u64);
            out.push((response_pair(s, target, &recipe.jitter(), seed), i));
        }
    }
    out
}

/// The target scale: the mean and standard deviation of the uniform change range.
fn target_scale(recipe: &ResponseRecipe) -> (f64, f64) {
    let [a, b] = recipe.data.log_ratio;
    ((a + b) / 2.0, (b - a) / 12f64.sqrt())
}

fn batch_tensor<B: Backend>(pairs: &[&ResponsePair], side: usize, device: &B::Device) -> Tensor<B, 4> {
    let mut v = Vec::with_capacity(pairs.len() * 2 * side * side);
    for p in pairs {
        v.extend_from_slice(&p.pre);
        v.extend_from_slice(&p.post);
    }
    Tensor::from_data(TensorData::new(v, [pairs.len(), 2, side, side]), device)
}

/// Predicted changes (`ln` area ratio) of pairs.
pub fn predict_pairs<B: Backend>(net: &Classifier<B>, recipe: &ResponseRecipe, pairs: &[&ResponsePair], device: &B::Device) -> Vec<f64> {
    let (mean, sd) = target_scale(recipe);
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(64) {
        let y = net.forward(batch_tensor::<B>(chunk, recipe.data.side, device));
        out.extend(y.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(|v| mean + sd * v as f64));
    }
    out
}

struct ResponseTask<'a, B: AutodiffBackend> {
    pretrained: Option<vesalius_nets::Autoencoder<B>>,
    recipe: &'a ResponseRecipe,
    train: &'a [TumourSlice],
    val: Vec<(ResponsePair, usize)>,
}

impl<B: AutodiffBackend> Task<B> for ResponseTask<'_, B> {
    type Model = Classifier<B>;
    type Error = PredError;

    fn init_model(&mut self, device: &B::Device) -> Result<Classifier<B>, PredError> {
        let net = ClassifierConfig::new(self.recipe.model.arch, 2, 1, self.recipe.data.side)
            .init(device)
            .map_err(|e| PredError::Input(e.to_string()))?;
        net.with_pretrained(self.pretrained.as_ref()).map_err(|e| PredError::Internal(format!("pre-trained encoder: {e}")))
    }

    fn epochs(&self) -> usize {
        self.recipe.train.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.recipe.train.pairs.div_ceil(self.recipe.train.batch)
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.recipe.train.lr
    }

    fn train_epoch<O: Optimizer<Classifier<B>, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, Classifier<B>, O>,
    ) -> Result<(), PredError> {
        let device = stepper.device().clone();
        let r = self.recipe;
        let (mean, sd) = target_scale(r);
        let base = vesalius_io::mix(r.seed ^ ((epoch as u64) << 32));
        let pairs: Vec<ResponsePair> = (0..r.train.pairs).map(|k| draw(r, self.train, base ^ k as u64, true).0).collect();
        for chunk in pairs.chunks(r.train.batch) {
            let refs: Vec<&ResponsePair> = chunk.iter().collect();
            let x = batch_tensor::<B>(&refs, r.data.side, &device);
            let z: Vec<f32> = chunk.iter().map(|p| ((p.log_ratio - mean) / sd) as f32).collect();
            let y = Tensor::<B, 2>::from_data(TensorData::new(z, [chunk.len(), 1]), &device);
            stepper.step_split(chunk.len(), 1.0, |m: &Classifier<B>, r, d| {
                Ok::<_, PredError>(
                    MseLoss::new().forward(m.forward(engine::part(&x, &r, d)), engine::part(&y, &r, d), Reduction::Mean).reshape([1]),
                )
            })?;
        }
        Ok(())
    }

    fn validate(
        &mut self,
        model: &Classifier<B::InnerBackend>,
        _epoch: usize,
        device: &B::Device,
    ) -> Result<Option<Validation>, PredError> {
        let refs: Vec<&ResponsePair> = self.val.iter().map(|(p, _)| p).collect();
        let pred = predict_pairs(model, self.recipe, &refs, device);
        let truth: Vec<f64> = refs.iter().map(|p| p.log_ratio).collect();
        let r2 = vesalius_eval::regression::r2(&truth, &pred);
        let mae = vesalius_eval::regression::mae(&truth, &pred);
        Ok(Some(Validation::new().maybe("r2", Some(r2)).maybe("mae", Some(mae)).maybe_score(Some(r2))))
    }
}

/// What may change when a response run resumes: the learning rate and the number of epochs.
fn resume_rules() -> ResumeRules {
    ResumeRules { free: vec!["train.lr".into()], length: vec!["train.epochs".into()], schedule_depends: false }
}

/// `metrics.json` of a response run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseMetrics {
    /// The set scored (`test`).
    pub set: String,
    /// Test tumour slices.
    pub slices: usize,
    /// Test pairs (`pairs_per_slice` for each slice).
    pub pairs: usize,
    /// What the intervals resample.
    pub bootstrap_unit: String,
    /// MAE, RMSE, R², Pearson and Spearman of the predicted change.
    pub change: RegressionReport,
    /// ROC AUC of the predicted change for responders (area ratio below `responder_below`).
    pub responder_auc: Estimate,
    /// Responders among the test pairs.
    pub responders: usize,
}

/// Trains a response recipe into `run` and scores it on the test tumours.
pub fn train<AB: AutodiffBackend>(
    recipe: &ResponseRecipe,
    run: &Path,
    device: &AB::Device,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<ResponseMetrics, PredError> {
    train_dyn::<AB>(recipe, run, device, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &ResponseRecipe,
    run: &Path,
    device: &AB::Device,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<ResponseMetrics, PredError> {
    recipe.validate()?;
    let text = toml::to_string(recipe).map_err(|e| PredError::Internal(e.to_string()))?;
    let sets = slices(recipe, &[CaseSplit::Train, CaseSplit::Val])?;
    let run_dir = RunDir::new(run);
    engine::prepare(&run_dir, &text, &resume_rules())?;
    let val = fixed_pairs(recipe, &sets[&CaseSplit::Val], 0x7a1);
    let pretrained = if recipe.model.arch == Arch::Sae {
        let side = recipe.data.side;
        let rows = || -> Result<Vec<f32>, vesalius_train::TrainError> {
            let base = vesalius_io::mix(recipe.seed ^ 0x5ae);
            Ok((0..recipe.model.pretrain_pairs)
                .flat_map(|k| {
                    let p = draw(recipe, &sets[&CaseSplit::Train], base ^ k as u64, true).0;
                    p.pre.into_iter().chain(p.post)
                })
                .collect())
        };
        let config = vesalius_train::greedy::GreedyConfig {
            hidden: vesalius_nets::SAE_HIDDEN.to_vec(),
            epochs: recipe.model.pretrain_epochs,
            fine_tune_epochs: recipe.model.pretrain_epochs.div_ceil(2),
            batch: recipe.train.batch,
            lr: recipe.train.lr,
            sigmoid_output: false,
            seed: recipe.seed,
            ..Default::default()
        };
        Some(vesalius_train::greedy::train_stacked_in_run::<AB>(&run_dir, rows, 2 * side * side, &config, device, true)?)
    } else {
        None
    };
    let mut task = ResponseTask { pretrained, recipe, train: &sets[&CaseSplit::Train], val };
    let mut cfg = AdamConfig::new();
    if recipe.train.weight_decay > 0.0 {
        cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(recipe.train.weight_decay as f32)));
    }
    let config = RunOptions { quiet: true, ..Default::default() }.config(recipe.seed, None);
    engine::train(&run_dir, &mut task, cfg.init::<AB, Classifier<AB>>(), &config, device, on_epoch)?;
    evaluate::<AB::InnerBackend>(run, device)
}

/// Whether `run` holds a response run.
pub fn is_run(run: &Path) -> bool {
    vesalius_train::run::recipe_task(run).as_deref() == Some("response")
}

/// Loads a run's recipe and best network.
pub fn load_run<B: Backend>(run: &Path, device: &B::Device) -> Result<(ResponseRecipe, Classifier<B>), PredError> {
    let path = run.join("recipe.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| PredError::Input(format!("{}: {e}", path.display())))?;
    let recipe = ResponseRecipe::from_toml(&text, run)?;
    let net =
        ClassifierConfig::new(recipe.model.arch, 2, 1, recipe.data.side).init::<B>(device).map_err(|e| PredError::Input(e.to_string()))?;
    let net = engine::load_module(net, &RunDir::new(run).best_model(), device)?;
    Ok((recipe, net))
}

/// Scores a run on its fixed test pairs; writes `metrics.json` and `predictions-test.csv`
/// (`pair,slice,true_log_ratio,predicted_log_ratio`).
pub fn evaluate<B: Backend>(run: &Path, device: &B::Device) -> Result<ResponseMetrics, PredError> {
    let (recipe, net) = load_run::<B>(run, device)?;
    let sets = slices(&recipe, &[CaseSplit::Test])?;
    let test = &sets[&CaseSplit::Test];
    let pairs = fixed_pairs(&recipe, test, 0x7e57);
    let refs: Vec<&ResponsePair> = pairs.iter().map(|(p, _)| p).collect();
    let pred = predict_pairs(&net, &recipe, &refs, device);
    let truth: Vec<f64> = refs.iter().map(|p| p.log_ratio).collect();
    let ids: Vec<Option<&str>> = pairs.iter().map(|(_, i)| Some(test[*i].source.as_str())).collect();
    let clusters = Clusters::from_ids(&ids);
    let b = recipe.eval.bootstrap;
    let change = regression_report(&truth, &pred, &clusters, b, recipe.seed).map_err(|e| PredError::Internal(e.to_string()))?;
    let cut = recipe.eval.responder_below.ln();
    let positive: Vec<bool> = truth.iter().map(|&t| t < cut).collect();
    let score: Vec<f32> = pred.iter().map(|&p| -p as f32).collect();
    let auc = |idx: &[usize]| {
        let s: Vec<f32> = idx.iter().map(|&i| score[i]).collect();
        let y: Vec<bool> = idx.iter().map(|&i| positive[i]).collect();
        vesalius_eval::classification::roc_auc(&s, &y)
    };
    let all: Vec<usize> = (0..truth.len()).collect();
    let value = auc(&all).unwrap_or(f64::NAN);
    let responder_auc = cluster_percentile_ci(&clusters, b, 0.95, recipe.seed, value, auc);
    let m = ResponseMetrics {
        set: "test".into(),
        slices: test.len(),
        pairs: pairs.len(),
        bootstrap_unit: "tumour slices".into(),
        change,
        responder_auc,
        responders: positive.iter().filter(|&&p| p).count(),
    };
    vesalius_train::run::write_json(&run.join("metrics.json"), &m).map_err(|e| PredError::Internal(e.to_string()))?;
    let mut csv = String::from("pair,slice,true_log_ratio,predicted_log_ratio\n");
    for (k, ((_, i), p)) in pairs.iter().zip(&pred).enumerate() {
        csv.push_str(&format!("{k},{},{:.6},{p:.6}\n", test[*i].source, truth[k]));
    }
    vesalius_io::write_atomic(&run.join("predictions-test.csv"), csv.as_bytes()).map_err(|e| PredError::Internal(e.to_string()))?;
    Ok(m)
}

/// The crops of each masked slice of a scan pair, before and after (the three files on one grid).
fn crops(recipe: &ResponseRecipe, before: &Path, after: &Path, mask: &Path) -> Result<(Vec<TumourSlice>, Vec<TumourSlice>), PredError> {
    let d = &recipe.data;
    let (pre, post, m) = (load(before)?, load(after)?, load(mask)?);
    if pre.shape() != post.shape() {
        return Err(PredError::Input(format!("{} and {}: the scans must share their grid", before.display(), after.display())));
    }
    let name = |p: &Path| p.display().to_string();
    let a = tumour_slices(&pre, &m, d.side, d.pixel_mm, d.min_area_mm2, &name(before)).map_err(|e| PredError::Input(e.to_string()))?;
    let b = tumour_slices(&post, &m, d.side, d.pixel_mm, d.min_area_mm2, &name(after)).map_err(|e| PredError::Input(e.to_string()))?;
    if a.is_empty() {
        return Err(PredError::Input(format!("{}: no slice with a tumour of {} mm² or more", mask.display(), d.min_area_mm2)));
    }
    Ok((a, b))
}

/// Predicts the change between a scan before and a scan after treatment with a tumour mask of the first: the crops of
/// each masked slice (the same grid for all three files), one `(slice, predicted log ratio)` per slice.
pub fn predict<B: Backend>(
    run: &Path,
    before: &Path,
    after: &Path,
    mask: &Path,
    device: &B::Device,
) -> Result<Vec<(String, f64)>, PredError> {
    let (recipe, net) = load_run::<B>(run, device)?;
    let (a, b) = crops(&recipe, before, after, mask)?;
    let pairs: Vec<ResponsePair> =
        a.iter().zip(&b).map(|(x, y)| ResponsePair { pre: x.pixels.clone(), post: y.pixels.clone(), log_ratio: f64::NAN }).collect();
    let refs: Vec<&ResponsePair> = pairs.iter().collect();
    let pred = predict_pairs(&net, &recipe, &refs, device);
    Ok(a.iter().map(|s| s.source.clone()).zip(pred).collect())
}

/// An explanation of the predicted change of one tumour slice.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseExplanation {
    /// The slice (`file:slice`).
    pub slice: String,
    /// The predicted `ln(area after / area before)`.
    pub predicted_log_ratio: f64,
    /// Grad-CAM: the layer used.
    pub layer: Option<usize>,
    /// LIME: the surrogate's weighted R².
    pub lime_r2: Option<f64>,
    /// The map on the crop (`side × side`, row-major): positive where the input pushes the prediction towards growth.
    #[serde(skip)]
    pub map: Vec<f32>,
    /// The before crop.
    #[serde(skip)]
    pub before: Vec<f32>,
    /// The after crop.
    #[serde(skip)]
    pub after: Vec<f32>,
    /// The tumour mask on the crop.
    #[serde(skip)]
    pub mask: Vec<bool>,
    /// The crop on the scans' grid.
    #[serde(skip)]
    pub crop: TumourSlice,
    /// Side of the crop.
    pub side: usize,
}

/// Explains a run's predicted change for each tumour slice of a scan pair (as [`predict`] reads them) with `method`
/// (saliency, SmoothGrad, Grad-CAM, occlusion, LIME) on the crop grid.
pub fn explain<AB: AutodiffBackend>(
    run: &Path,
    before: &Path,
    after: &Path,
    mask: &Path,
    method: vesalius_explain::Method,
    settings: &vesalius_nets::explain::Settings,
    device: &AB::Device,
) -> Result<Vec<ResponseExplanation>, PredError> {
    let (recipe, net) = load_run::<AB>(run, device)?;
    let (a, b) = crops(&recipe, before, after, mask)?;
    let side = recipe.data.side;
    let mut out = Vec::with_capacity(a.len());
    for (x, y) in a.iter().zip(&b) {
        let data: Vec<f32> = x.pixels.iter().chain(&y.pixels).copied().collect();
        let input = vesalius_explain::Input::new(data, 2, vec![side, side]).map_err(PredError::Internal)?;
        let (map, d) =
            vesalius_nets::explain::explain_output(&net, &input, 0, vesalius_nets::explain::Link::Identity, method, settings, device)
                .map_err(|m| PredError::Input(format!("{:?}: {m}", recipe.model.arch)))?;
        let pair = ResponsePair { pre: x.pixels.clone(), post: y.pixels.clone(), log_ratio: f64::NAN };
        let z = predict_pairs(&burn::module::AutodiffModule::valid(&net), &recipe, &[&pair], device);
        out.push(ResponseExplanation {
            slice: x.source.clone(),
            predicted_log_ratio: z.first().copied().unwrap_or(f64::NAN),
            layer: d.layer,
            lime_r2: d.lime_r2,
            map,
            before: x.pixels.clone(),
            after: y.pixels.clone(),
            mask: x.mask.clone(),
            crop: x.clone(),
            side,
        });
    }
    Ok(out)
}
