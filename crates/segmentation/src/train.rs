//! Training: cases and their split, fingerprint and plan, preprocessing into the cache, patch training with
//! sliding-window validation, best model by validation Dice, resumable checkpoints after every epoch.
use crate::fingerprint::{self, Fingerprint};
use crate::plan::{self, Plans};
use crate::recipe::{LossKind, SegRecipe, Slab};
use crate::{RunDir, SegError};

use crate::network::SegNetwork;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use vesalius_data::Image;
use vesalius_data::cache::{DiskCache, Volume};
use vesalius_data::folds::{Fold, kfold, read_splits, write_splits};
use vesalius_data::loader::{Cases, LoaderConfig, PatchLoader, load_case};
use vesalius_data::msd::{self, Case};
use vesalius_data::patch::{PatchSampler, Sampling};
use vesalius_data::transforms::{Pipeline, Subject};
use vesalius_eval::segmentation::dice_of;
use vesalius_nets::loss;
use vesalius_nets::{PatchSae, UNet};
use vesalius_train::engine::{self, EngineState, RunOptions};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::sliding::SlidingWindow;
use vesalius_train::transfer::{self, LayerPlan};
use vesalius_train::{EpochRecord, Stepper, Task, Validation};

/// A case as training sees it: on disk, or a piece of one held in memory (slab splits).
#[derive(Clone, Debug)]
pub enum CaseSource {
    /// Files of a dataset.
    File(Case),
    /// A sub-volume cut from a case.
    Memory {
        /// Identifier.
        id: String,
        /// The patient of the case it was cut from.
        patient: String,
        /// Image and labels on their own grid.
        subject: Subject,
    },
}

impl CaseSource {
    /// The case id.
    pub fn id(&self) -> &str {
        match self {
            CaseSource::File(c) => &c.id,
            CaseSource::Memory { id, .. } => id,
        }
    }

    /// The patient the case belongs to (a piece of a case belongs to that case's patient).
    pub fn patient(&self) -> &str {
        match self {
            CaseSource::File(c) => &c.patient,
            CaseSource::Memory { patient, .. } => patient,
        }
    }

    /// The case as stored (original grid, no preprocessing).
    pub fn load(&self) -> Result<Subject, SegError> {
        match self {
            CaseSource::File(c) => Ok(load_case(c, &Pipeline::default())?),
            CaseSource::Memory { subject, .. } => Ok(subject.clone()),
        }
    }
}

/// Training, validation and test cases with the dataset's channel and label names.
#[derive(Clone, Debug)]
pub struct Split {
    /// Cases trained on.
    pub train: Vec<CaseSource>,
    /// Cases validated on (model selection).
    pub val: Vec<CaseSource>,
    /// Labelled cases held out from training and model selection.
    pub test: Vec<CaseSource>,
    /// Channel names.
    pub channel_names: Vec<String>,
    /// Label value → name.
    pub labels: BTreeMap<u32, String>,
}

fn listed_case(c: &crate::recipe::CaseEntry) -> Case {
    let id = crate::recipe::ImageEntry { id: c.id.clone(), image: c.image.clone() }.name();
    Case { patient: id.clone(), id, images: c.image.clone(), label: Some(c.label.clone()), stratum: None }
}

/// The patients held out as the test set by `share` (at least one when `share > 0`): patients in sorted order,
/// shuffled by `seed`, the first `ceil(share · n)` taken.
pub fn held_out_patients(cases: &[Case], share: f64, seed: u64) -> std::collections::BTreeSet<String> {
    let patients: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.patient.as_str()).collect();
    let mut order: Vec<&str> = patients.into_iter().collect();
    if share <= 0.0 || order.len() < 2 {
        return Default::default();
    }
    let mut state = seed ^ 0x07E5_75E7;
    for i in (1..order.len()).rev() {
        state = vesalius_train::engine::stream_seed(state, 7, i as u64);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let k = ((share * order.len() as f64).ceil() as usize).clamp(1, order.len() - 1);
    order[..k].iter().map(|s| s.to_string()).collect()
}

/// Gathers the recipe's cases and splits them: by the slab (and test slab), or by fold of `splits.json` (written
/// on first use, patient-level, seeded by the recipe's seed) after the test patients are held out. Test cases
/// come from a dataset's `imagesTs/` with `labelsTs/`, the recipe's `test` list, `test_share` or `test_slab`.
pub fn split(recipe: &SegRecipe, run: &RunDir) -> Result<Split, SegError> {
    let d = &recipe.data;
    let (mut cases, channel_names, labels, mut test_cases) = if let Some(root) = &d.dataset {
        let ds = msd::open(root)?;
        let labelled_test: Vec<Case> = ds.test.into_iter().filter(|c| c.label.is_some()).collect();
        (ds.training, ds.channels, ds.label_names, labelled_test)
    } else {
        let labels: BTreeMap<u32, String> = d.labels.iter().map(|(n, v)| (*v, n.clone())).collect();
        let cases = if let Some(m) = &d.manifest { msd::read_manifest(m)? } else { d.cases.iter().map(listed_case).collect() };
        (cases, d.channel_names.clone(), labels, Vec::new())
    };
    test_cases.extend(d.test.iter().map(listed_case));
    if cases.iter().any(|c| c.label.is_none()) {
        return Err(SegError::Input("every training case needs a label map".into()));
    }
    let held = held_out_patients(&cases, d.test_share, recipe.train.seed);
    if !held.is_empty() {
        let (test, rest): (Vec<Case>, Vec<Case>) = cases.into_iter().partition(|c| held.contains(&c.patient));
        test_cases.extend(test);
        cases = rest;
    }
    let train_patients: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.patient.as_str()).collect();
    if let Some(c) = test_cases.iter().find(|c| train_patients.contains(c.patient.as_str())) {
        return Err(SegError::Input(format!("test case '{}' belongs to patient '{}', who also has training cases", c.id, c.patient)));
    }
    let mut test: Vec<CaseSource> = test_cases.into_iter().map(CaseSource::File).collect();
    if let Some(slab) = d.slab {
        let mut train = Vec::new();
        let mut val = Vec::new();
        for c in &cases {
            let s = load_case(c, &Pipeline::default())?;
            let shape = s.image.shape().to_vec();
            let fits = |sl: &Slab| sl.axis < shape.len() && sl.end <= shape[sl.axis];
            if let Some(bad) = [Some(slab), d.test_slab].into_iter().flatten().find(|sl| !fits(sl)) {
                return Err(SegError::Input(format!("slab {bad:?} does not fit case '{}' of shape {shape:?}", c.id)));
            }
            let cut = |s: &Subject, from: usize, to: usize| -> Result<Subject, SegError> {
                let mut start = vec![0i64; s.image.ndim()];
                let mut size = s.image.shape().to_vec();
                start[slab.axis] = from as i64;
                size[slab.axis] = to - from;
                Ok(vesalius_data::patch::extract(s, &start, &size)?)
            };
            // Training and validation pieces come from the prepared case (its slab indices moved by what preparing
            // added below them); the test slab from the case as stored.
            let (prepared, shift) = if recipe.prepare.is_empty() {
                (s.clone(), 0)
            } else {
                let p = recipe
                    .prepare
                    .apply_seeded(s.clone(), recipe.train.seed)
                    .map_err(|e| SegError::Input(format!("case '{}' ({}): [prepare]: {e}", c.id, c.images[0].display())))?;
                let shift = slab_shift(s.image.affine(), p.image.affine(), slab.axis)
                    .ok_or_else(|| SegError::Input(format!("[prepare] must keep the voxel axes of case '{}' for a slab split", c.id)))?;
                (p, shift)
            };
            let inside = |sl: &Slab| sl.start as i64 + shift >= 0 && sl.end as i64 + shift <= prepared.image.shape()[slab.axis] as i64;
            if let Some(bad) = [Some(slab), d.test_slab].into_iter().flatten().find(|sl| !inside(sl)) {
                return Err(SegError::Input(format!("slab {bad:?} of case '{}' is cut away by [prepare]", c.id)));
            }
            let at = |i: usize| (i as i64 + shift) as usize;
            let shape = prepared.image.shape().to_vec();
            // A prepared piece is extended across its cut faces by reflection (up to 64 mm): with generation labels
            // around the organ, a face left open reads as organ cut flat against air, which no real image shows.
            let reach = (64.0 / prepared.image.spacing()[slab.axis]).ceil() as usize;
            let piece = |from: usize, to: usize| -> Result<Subject, SegError> {
                let p = cut(&prepared, from, to)?;
                if recipe.prepare.is_empty() {
                    return Ok(p);
                }
                let len = to - from;
                let before = if from > 0 { reach.min(len) } else { 0 };
                let after = if to < shape[slab.axis] { reach.min(len) } else { 0 };
                let extend = |img: &Image| vesalius_io::geometry::pad_reflect(img, slab.axis, before, after);
                let label = p.label.as_ref().map(extend).transpose()?;
                Ok(Subject { image: extend(&p.image)?, label })
            };
            val.push(CaseSource::Memory {
                patient: c.patient.clone(),
                id: format!("{}_slab", c.id),
                subject: piece(at(slab.start), at(slab.end))?,
            });
            let mut held_out = vec![(at(slab.start), at(slab.end))];
            if let Some(t) = d.test_slab {
                test.push(CaseSource::Memory {
                    patient: c.patient.clone(),
                    id: format!("{}_test_slab", c.id),
                    subject: cut(&s, t.start, t.end)?,
                });
                held_out.push((at(t.start), at(t.end)));
            }
            held_out.sort_unstable();
            // Training pieces: what lies outside every held-out slab.
            let mut from = 0;
            for (k, &(a, b)) in held_out.iter().enumerate() {
                if a > from {
                    let name = if k == 0 { "below".to_string() } else { format!("between{k}") };
                    train.push(CaseSource::Memory { patient: c.patient.clone(), id: format!("{}_{name}", c.id), subject: piece(from, a)? });
                }
                from = b;
            }
            if from < shape[slab.axis] {
                train.push(CaseSource::Memory {
                    patient: c.patient.clone(),
                    id: format!("{}_above", c.id),
                    subject: piece(from, shape[slab.axis])?,
                });
            }
        }
        return Ok(Split { train, val, test, channel_names, labels });
    }
    let splits_path = run.file("splits.json");
    let folds: Vec<Fold> = if splits_path.is_file() {
        read_splits(&splits_path)?
    } else {
        // Fewer patients than folds: one patient per fold (leave-one-out).
        let f = kfold(&cases, d.folds.min(train_patients.len()), recipe.train.seed)?;
        write_splits(&splits_path, &f)?;
        f
    };
    let fold = folds.get(d.fold).ok_or_else(|| SegError::Input(format!("{} has no fold {}", splits_path.display(), d.fold)))?;
    let pick = |ids: &[String]| -> Result<Vec<CaseSource>, SegError> {
        ids.iter()
            .map(|id| {
                cases
                    .iter()
                    .find(|c| &c.id == id)
                    .cloned()
                    .map(CaseSource::File)
                    .ok_or_else(|| SegError::Input(format!("{}: unknown case '{id}'", splits_path.display())))
            })
            .collect()
    };
    Ok(Split { train: pick(&fold.train)?, val: pick(&fold.val)?, test, channel_names, labels })
}

/// How many voxels preparing moved the voxel grid along `axis` (the new index of old index 0), when the old and
/// new grids share their axes and spacing; `None` otherwise.
fn slab_shift(old: &vesalius_io::Affine, new: &vesalius_io::Affine, axis: usize) -> Option<i64> {
    let inv = vesalius_io::geometry::mat3_inv(&[
        [new[0][0], new[0][1], new[0][2]],
        [new[1][0], new[1][1], new[1][2]],
        [new[2][0], new[2][1], new[2][2]],
    ])?;
    let map = |p: [f64; 3]| -> [f64; 3] { std::array::from_fn(|r| (0..3).map(|c| inv[r][c] * p[c]).sum::<f64>()) };
    // The new index of the old origin, and of one step along the old axis.
    let origin = map(std::array::from_fn(|r| old[r][3] - new[r][3]));
    let step = map(std::array::from_fn(|r| old[r][axis]));
    let same_axis = (0..3).all(|a| (step[a] - if a == axis { 1.0 } else { 0.0 }).abs() < 1e-6);
    let whole = (origin[axis] - origin[axis].round()).abs() < 1e-6;
    (same_axis && whole).then(|| origin[axis].round() as i64)
}

/// Preprocesses a case: a file through `prepared` (the recipe's preparation, then preprocessing) and the disk cache;
/// a piece, cut from a prepared case already, through `pipeline` in memory.
fn preprocessed(source: &CaseSource, prepared: &Pipeline, pipeline: &Pipeline, cache: &DiskCache) -> Result<Volume, SegError> {
    match source {
        CaseSource::File(c) => {
            let pipeline = prepared;
            let mut inputs: Vec<&std::path::Path> = c.images.iter().map(|p| p.as_path()).collect();
            if let Some(l) = &c.label {
                inputs.push(l);
            }
            let key = cache.key(&inputs, pipeline)?;
            cache.get_or_insert(&key, || load_case(c, pipeline)).map_err(|e| match e {
                vesalius_data::DataError::Invalid(m) => SegError::Input(format!("case '{}': {m}", c.id)),
                other => other.into(),
            })
        }
        CaseSource::Memory { subject, .. } => Ok(Volume::in_memory(pipeline.apply_seeded(subject.clone(), 0)?)),
    }
}

/// `run.json` of a segmentation run: the engine's one run-information type with the channel and label names (the
/// plan, in `plans.json`, says how to build the network).
pub type RunInfo = vesalius_train::run::RunInfo<SegmentationInfo>;

/// Channel and label names of a segmentation run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentationInfo {
    /// Channel names, in input order.
    pub channel_names: Vec<String>,
    /// Label value → name.
    pub labels: BTreeMap<u32, String>,
}

/// What a finished (or stopped) training reports.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// The engine's state after the last completed epoch (best epoch and score = mean validation Dice).
    pub state: EngineState,
    /// Epoch resumed after, if the run continued an earlier one.
    pub resumed_after: Option<usize>,
    /// Whether every epoch ran (false when stopped by [`RunOptions::stop_after`]).
    pub complete: bool,
    /// The plan used.
    pub plans: Plans,
    /// The refinement stage's engine state (best epoch and score = mean validation Dice after refinement), when the
    /// recipe has `[refine]` and the U-Net finished.
    pub refinement: Option<EngineState>,
}

/// Stacks patches into `[n, c, d, h, w]` images and `[n, d, h, w]` labels; every patch must have the first one's
/// shape and channels (an augmentation that changes the shape, such as a quarter turn in a non-square plane, is
/// reported).
pub fn batch_tensors<B: Backend>(patches: &[Subject], device: &B::Device) -> Result<(Tensor<B, 5>, Tensor<B, 4, Int>), SegError> {
    let s = &patches.first().ok_or_else(|| SegError::Internal("empty batch".into()))?.image;
    if let Some(p) = patches.iter().find(|p| p.image.shape() != s.shape() || p.image.channels() != s.channels()) {
        return Err(SegError::Input(format!(
            "augmentation changed a patch from {:?} to {:?}; shape-changing transforms (e.g. rand_rot90 in a non-square plane, crops) cannot be used on training patches",
            s.shape(),
            p.image.shape()
        )));
    }
    let mut shape = [1usize; 3];
    shape[..s.ndim()].copy_from_slice(s.shape());
    let [w, h, d] = shape;
    let c = s.channels();
    let mut img = Vec::with_capacity(patches.len() * c * w * h * d);
    let mut lab = Vec::with_capacity(patches.len() * w * h * d);
    for p in patches {
        img.extend_from_slice(p.image.data());
        match &p.label {
            Some(l) => lab.extend(l.data().iter().map(|&v| v.round() as i64)),
            None => lab.extend(std::iter::repeat_n(0i64, w * h * d)),
        }
    }
    let n = patches.len();
    Ok((Tensor::from_data(TensorData::new(img, [n, c, d, h, w]), device), Tensor::from_data(TensorData::new(lab, [n, d, h, w]), device)))
}

/// Checks what the network needs of a plan: two levels at least, and a patch that every pooling halves exactly.
pub(crate) fn check_plan(plans: &Plans) -> Result<(), SegError> {
    if plans.features.len() < 2 {
        return Err(SegError::Input(format!("a U-Net needs at least two levels; [plan] features = {:?}", plans.features)));
    }
    let factor = 1usize << (plans.features.len() - 1);
    let pooled = if plans.dims == 2 { 2 } else { 3 };
    if plans.patch.len() != plans.dims || plans.patch.iter().take(pooled).any(|&p| p == 0 || p % factor != 0) {
        return Err(SegError::Input(format!(
            "patch {:?} must have {} sizes, each divisible by {factor} (2^(levels − 1) for {} levels)",
            plans.patch,
            plans.dims,
            plans.features.len()
        )));
    }
    Ok(())
}

pub(crate) fn objective<B: Backend>(recipe: &SegRecipe, logits: Tensor<B, 5>, labels: Tensor<B, 4, Int>) -> Tensor<B, 1> {
    let t = &recipe.train;
    match t.loss {
        LossKind::DiceCe => loss::dice_ce(logits, labels),
        LossKind::Dice => loss::soft_dice(logits, labels),
        LossKind::GeneralisedDice => loss::generalised_dice(logits, labels),
        LossKind::Focal => loss::focal(logits, labels, t.focal_gamma),
        LossKind::Tversky => loss::tversky(logits, labels, t.tversky_alpha, t.tversky_beta),
    }
}

/// Labels at every `factor`-th voxel along each axis longer than 1 (nearest down-sampling for deep supervision).
fn downsample_labels<B: Backend>(labels: Tensor<B, 4, Int>, factor: usize) -> Tensor<B, 4, Int> {
    if factor == 1 {
        return labels;
    }
    let [n, d, h, w] = labels.dims();
    let fd = if d > 1 { factor } else { 1 };
    labels.reshape([n, d / fd, fd, h / factor, factor, w / factor, factor]).narrow(2, 0, 1).narrow(4, 0, 1).narrow(6, 0, 1).reshape([
        n,
        d / fd,
        h / factor,
        w / factor,
    ])
}

/// The deep-supervision loss: the objective at full resolution and at each auxiliary head's resolution against
/// down-sampled labels, weighted 1, ½, ¼, … from the finest and normalised to sum to 1.
fn supervised_deeply<B: Backend, N: SegNetwork<B>>(
    recipe: &SegRecipe,
    model: &N,
    x: Tensor<B, 5>,
    labels: Tensor<B, 4, Int>,
) -> Tensor<B, 1> {
    let (main, aux) = model.logits_all(x);
    let count = aux.len() + 1;
    let weights: Vec<f64> = (0..count).map(|k| 0.5f64.powi(k as i32)).collect();
    let total: f64 = weights.iter().sum();
    let mut loss = objective(recipe, main, labels.clone()) * (weights[0] / total);
    // aux is coarsest first: head i sees factor 2^(aux.len() − i).
    for (i, logits) in aux.into_iter().enumerate() {
        let k = count - 1 - i;
        loss = loss + objective(recipe, logits, downsample_labels(labels.clone(), 1 << k)) * (weights[k] / total);
    }
    loss
}

/// Sliding-window prediction of a preprocessed image with a model.
pub fn sliding_predict<B: Backend, N: SegNetwork<B>>(
    model: &N,
    image: &Image,
    plans: &Plans,
    recipe: &SegRecipe,
    probabilities: bool,
    device: &B::Device,
) -> Result<vesalius_train::sliding::Prediction, SegError> {
    let sw = SlidingWindow {
        roi: plans.patch.clone(),
        overlap: recipe.infer.overlap,
        batch: recipe.infer.batch,
        sigma_scale: 0.125,
        flip_tta: recipe.infer.flip_tta,
        probabilities,
    };
    Ok(sw.run::<B>(image, device, |x| burn::tensor::activation::softmax(model.logits(x), 1))?)
}

/// What a recipe may change in a run folder that already trained: the learning rate (a diverged run resumes
/// with a smaller one) and the `[refine]` stage. The poly schedule depends on the number of epochs, so that may
/// not change.
pub fn resume_rules() -> ResumeRules {
    let mut free = vec!["train.lr".to_string()];
    // A refinement stage may be added to, or changed in, a run whose U-Net has trained.
    free.extend(crate::recipe::RefineSection::keys());
    ResumeRules { free, length: vec!["train.epochs".into()], schedule_depends: true }
}

/// The segmentation task for the training engine: label-balanced augmented patches from the loader, the recipe's
/// loss (deep supervision optional), poly learning-rate decay, sliding-window validation Dice on the plan grid.
/// `init` builds the network (`M`) and its layer plan.
struct SegTask<'a, M, I> {
    recipe: &'a SegRecipe,
    plans: &'a Plans,
    loader: PatchLoader<'a>,
    val: Vec<Subject>,
    fg_classes: Vec<u16>,
    quiet: bool,
    plan: Option<LayerPlan>,
    init: I,
    net: std::marker::PhantomData<M>,
}

impl<'a, M, I> SegTask<'a, M, I> {
    fn new(
        recipe: &'a SegRecipe,
        plans: &'a Plans,
        loader: PatchLoader<'a>,
        val: Vec<Subject>,
        fg_classes: Vec<u16>,
        quiet: bool,
        init: I,
    ) -> Self {
        Self { recipe, plans, loader, val, fg_classes, quiet, plan: None, init, net: std::marker::PhantomData }
    }
}

impl<AB, M, I> Task<AB> for SegTask<'_, M, I>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB> + SegNetwork<AB>,
    M::InnerModule: SegNetwork<AB::InnerBackend>,
    I: FnMut(&AB::Device) -> Result<(M, Option<LayerPlan>), SegError>,
{
    type Model = M;
    type Error = SegError;

    fn init_model(&mut self, device: &AB::Device) -> Result<M, SegError> {
        let (model, plan) = (self.init)(device)?;
        self.plan = plan;
        Ok(model)
    }

    fn layer_plan(&self) -> Option<&LayerPlan> {
        self.plan.as_ref()
    }

    fn epochs(&self) -> usize {
        self.recipe.train.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.recipe.train.iterations
    }

    fn lr(&self, epoch: usize) -> f64 {
        let t = &self.recipe.train;
        t.lr * (1.0 - epoch as f64 / t.epochs as f64).powf(0.9)
    }

    fn train_epoch<O: Optimizer<M, AB>>(&mut self, epoch: usize, stepper: &mut Stepper<'_, AB, M, O>) -> Result<(), SegError> {
        let (recipe, plans) = (self.recipe, self.plans);
        let device = stepper.device().clone();
        let mut batch: Vec<Subject> = Vec::with_capacity(plans.batch);
        let mut failed: Option<SegError> = None;
        let result = self.loader.run((epoch + 1) as u64, recipe.train.iterations * plans.batch, |_, patch| {
            batch.push(patch);
            if batch.len() == plans.batch {
                let step = (|| -> Result<(), SegError> {
                    let (x, y) = batch_tensors::<AB>(&batch, &device)?;
                    batch.clear();
                    let n = x.dims()[0];
                    stepper.step_split(n, 1.0, |m: &M, range, device| {
                        let (x, y) = (engine::part(&x, &range, device), engine::part(&y, &range, device));
                        Ok::<_, SegError>(if plans.deep_supervision {
                            supervised_deeply(recipe, m, x, y)
                        } else {
                            objective(recipe, m.logits(x), y)
                        })
                    })?;
                    Ok(())
                })();
                if let Err(e) = step {
                    failed = Some(e);
                    return Err(vesalius_data::DataError::Invalid("training step failed".into()));
                }
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(result?)
    }

    fn validate(&mut self, model: &M::InnerModule, epoch: usize, device: &AB::Device) -> Result<Option<Validation>, SegError> {
        let t = &self.recipe.train;
        let done = epoch + 1;
        if !done.is_multiple_of(t.val_every) && done != t.epochs {
            return Ok(None);
        }
        let bar = vesalius_train::progress::bar(self.val.len() as u64, "validation", self.quiet);
        let mut per_class = vec![0.0; self.fg_classes.len()];
        for s in &self.val {
            let pred = sliding_predict(model, &s.image, self.plans, self.recipe, false, device)?;
            let reference = s.label.as_ref().ok_or_else(|| SegError::Internal("validation case without labels".into()))?;
            for (k, &c) in self.fg_classes.iter().enumerate() {
                per_class[k] += dice_of(pred.labels.iter().map(|&p| p == c), reference.data().iter().map(|&r| r.round() as u16 == c))
                    / self.val.len() as f64;
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mean = per_class.iter().sum::<f64>() / per_class.len().max(1) as f64;
        let mut v = Validation::new();
        for (k, &c) in self.fg_classes.iter().enumerate() {
            v = v.metric(&format!("dice_{c}"), per_class[k]);
        }
        // Keeping the last network: only the last epoch has a score, which beats the first epoch's undefined one.
        let score = (t.select == crate::recipe::Select::Best || done == t.epochs).then_some(mean);
        Ok(Some(v.metric("mean_dice", mean).maybe_score(score)))
    }
}

/// Trains (or resumes) the run in `run` from `recipe` with default options; `on_epoch` sees every finished epoch.
pub fn train<AB: AutodiffBackend>(
    recipe: &SegRecipe,
    run: &RunDir,
    device: &AB::Device,
    on_epoch: impl FnMut(&EpochRecord),
) -> Result<TrainOutcome, SegError> {
    train_with::<AB>(recipe, run, device, &RunOptions { quiet: true, ..Default::default() }, on_epoch)
}

/// Trains (or resumes) the run in `run` from `recipe` on the training engine ([`vesalius_train::engine`]).
pub fn train_with<AB: AutodiffBackend>(
    recipe: &SegRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<TrainOutcome, SegError> {
    train_dyn::<AB>(recipe, run, device, options, &mut on_epoch)
}

/// [`train_with`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &SegRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    mut on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<TrainOutcome, SegError> {
    std::fs::create_dir_all(run.checkpoint("")).map_err(|e| SegError::Input(format!("{}: {e}", run.root().display())))?;
    let started = engine::prepare(run, &recipe.to_toml(), &resume_rules())?;

    let split = split(recipe, run)?;
    if split.train.is_empty() || split.val.is_empty() {
        return Err(SegError::Input("training and validation both need at least one case".into()));
    }
    // Fingerprint and plan (kept when resuming).
    let plans: Plans = if run.file("plans.json").is_file() && started.is_some() {
        run.read_json("plans.json")?
    } else {
        let fp = fingerprint_of(&split)?;
        run.write_json("fingerprint.json", &fp)?;
        let p = plan::plan(&fp, &recipe.plan);
        run.write_json("plans.json", &p)?;
        p
    };
    if plans.normalisation.windows(2).any(|w| w[0] != w[1]) {
        return Err(SegError::Input(
            "channels with different normalisation schemes are not supported; set [plan] normalisation to one scheme".into(),
        ));
    }
    check_plan(&plans)?;
    run.write_info(&RunInfo::new(
        "segmentation",
        SegmentationInfo { channel_names: split.channel_names.clone(), labels: split.labels.clone() },
    ))?;
    // Files are prepared (seeded 0, as preprocessing) on their own grid, then preprocessed, both cached under one
    // key; slab pieces were cut from prepared cases.
    let pipeline = plans.preprocess();
    let join = |parts: &[&Pipeline]| Pipeline { transforms: parts.iter().flat_map(|p| p.transforms.iter().cloned()).collect() };
    let prepared = join(&[&recipe.prepare, &pipeline]);
    let (val_prepared, val_pipeline) = (join(&[&recipe.prepare, &recipe.validate, &pipeline]), join(&[&recipe.validate, &pipeline]));
    let cache = DiskCache::new(recipe.data.cache.clone().unwrap_or_else(|| run.file("cache")))?;
    let classes = plans.classes as u32;
    let volumes: Vec<Arc<Volume>> = split
        .train
        .iter()
        .map(|c| Ok(Arc::new(preprocessed(c, &prepared, &pipeline, &cache)?.targets_below(classes))))
        .collect::<Result<_, SegError>>()?;
    let val: Vec<Subject> = split
        .val
        .iter()
        .map(|c| preprocessed(c, &val_prepared, &val_pipeline, &cache).and_then(|v| Ok(v.subject()?)))
        .collect::<Result<_, _>>()?;
    let train_volumes = volumes.clone();
    let cases = Cases::Memory(volumes);

    let t = &recipe.train;
    let threads = if t.threads == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { t.threads };
    let loader_config = LoaderConfig {
        sampler: PatchSampler { patch: plans.patch.clone(), sampling: Sampling::LabelBalanced { foreground: t.foreground_share } },
        augment: augment_for(recipe, classes),
        batch: plans.batch,
        threads,
        seed: t.seed,
    };
    let loader = PatchLoader::new(&cases, loader_config.clone());
    let fg_classes: Vec<u16> = (1..plans.classes as u16).collect();
    let config = options.config(t.seed, None);
    let outcome = match &recipe.sae {
        None => {
            let init = |device: &AB::Device| -> Result<(UNet<AB>, Option<LayerPlan>), SegError> {
                let model = plans.unet().init::<AB>(device);
                let layout = model.layout();
                let (model, init) = transfer::initialise(model, &layout, "", &recipe.model, Path::new("."))?;
                if let Some(init) = init {
                    run.write_json("init.json", &init)?;
                }
                let plan = transfer::layer_plan(&model, &recipe.model)?;
                Ok((model, plan))
            };
            let mut task = SegTask::new(recipe, &plans, loader, val.clone(), fg_classes, options.quiet, init);
            let optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, UNet<AB>>();
            engine::train(run, &mut task, optim, &config, device, &mut on_epoch)?
        }
        Some(sae) => {
            // The encoder is pre-trained greedily on patches of the training cases (kept in RUN/pretrain/).
            let init = |device: &AB::Device| -> Result<(PatchSae<AB>, Option<LayerPlan>), SegError> {
                let subjects = || train_volumes.iter().map(|v| Ok(v.subject()?)).collect::<Result<Vec<_>, SegError>>();
                let ae = crate::network::pretrained_sae::<AB>(run, sae, &plans, subjects, t.seed, options.quiet, device)?;
                let net = crate::network::sae_config(sae, &plans).init::<AB>(device).with_encoder(&ae).map_err(SegError::Internal)?;
                Ok((net, None))
            };
            let mut task = SegTask::new(recipe, &plans, loader, val.clone(), fg_classes, options.quiet, init);
            let optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, PatchSae<AB>>();
            engine::train(run, &mut task, optim, &config, device, &mut on_epoch)?
        }
    };
    let mut result = TrainOutcome {
        state: outcome.state,
        resumed_after: outcome.resumed_after,
        complete: outcome.complete,
        plans: plans.clone(),
        refinement: None,
    };
    let Some(section) = recipe.refine.as_ref().filter(|_| outcome.complete) else { return Ok(result) };
    // The refinement stage, on the frozen best network.
    let stage = crate::refine::stage(run);
    std::fs::create_dir_all(stage.checkpoint("")).map_err(|e| SegError::Input(format!("{}: {e}", stage.root().display())))?;
    engine::prepare(&stage, &recipe.to_toml(), &crate::refine::resume_rules())?;
    let unet = crate::network::SegNet::<AB::InnerBackend>::load(recipe, &plans, &run.best_model(), device)?;
    let loader = PatchLoader::new(&cases, loader_config);
    let mut task = crate::refine::RefineTask::new(recipe, section, &plans, unet, loader, val, &stage, device)?;
    let config = options.config(t.seed.wrapping_add(1), None);
    let optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, vesalius_nets::CrfRnn<AB>>();
    let refined = engine::train(&stage, &mut task, optim, &config, device, on_epoch)?;
    result.complete = refined.complete;
    result.refinement = Some(refined.state);
    Ok(result)
}

/// The recipe's augmentation, followed (when the recipe prepares its cases) by turning generation labels, values
/// from `classes` on, into background.
fn augment_for(recipe: &SegRecipe, classes: u32) -> Pipeline {
    let mut p = recipe.augment.clone();
    if !recipe.prepare.is_empty() {
        p.transforms.push(vesalius_data::transforms::Transform::BackgroundFrom { label: classes });
    }
    p
}

fn fingerprint_of(split: &Split) -> Result<Fingerprint, SegError> {
    let files: Vec<Case> = split.train.iter().filter_map(|c| if let CaseSource::File(c) = c { Some(c.clone()) } else { None }).collect();
    if files.len() == split.train.len() {
        return fingerprint::compute(&files, &split.channel_names, &split.labels);
    }
    // Pieces of cases held in memory; generation labels that preparing added count as background.
    let classes = split.labels.keys().max().map_or(1, |m| m + 1);
    let targets = Pipeline { transforms: vec![vesalius_data::transforms::Transform::BackgroundFrom { label: classes }] };
    fingerprint::compute_subjects(
        split.train.iter().map(|c| Ok((c.id().to_string(), targets.apply_seeded(c.load()?, 0)?))),
        &split.channel_names,
        &split.labels,
    )
}

/// A label map on the grid of `grid`.
pub fn labels_image(labels: &[u16], grid: &Image) -> Result<Image, SegError> {
    let data: Vec<f32> = labels.iter().map(|&v| v as f32).collect();
    Ok(Image::new(data, grid.shape().to_vec(), 1, *grid.affine(), "uint8")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_indices_follow_padding_and_refuse_other_grids() {
        // A 2 mm grid, oblique origin; padding 3 voxels below along axis 2 moves index i to i + 3.
        let mut old = vesalius_io::IDENTITY;
        for a in 0..3 {
            old[a][a] = 2.0;
            old[a][3] = [10.0, -4.0, 7.0][a];
        }
        let mut padded = old;
        for a in 0..3 {
            padded[a][3] -= 2.0 * [1.0, 2.0, 3.0][a];
        }
        assert_eq!(slab_shift(&old, &padded, 2), Some(3));
        assert_eq!(slab_shift(&old, &padded, 0), Some(1));
        // Another spacing, a flipped axis, or half a voxel: no shift to speak of.
        let mut finer = padded;
        finer[2][2] = 1.0;
        assert_eq!(slab_shift(&old, &finer, 2), None);
        let mut flipped = padded;
        flipped[2][2] = -2.0;
        assert_eq!(slab_shift(&old, &flipped, 2), None);
        let mut half = padded;
        half[2][3] += 1.0;
        assert_eq!(slab_shift(&old, &half, 2), None);
    }
}
