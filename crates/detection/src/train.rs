//! Training on the shared engine: seeded patches — near findings, anywhere in the training region, and on the
//! previous model's false positives (hard-negative mining) — with flips and transpositions that move the findings
//! with the image, lesions inserted afresh every epoch when the recipe asks, CenterNet's loss, Adam; the mean of
//! the CPM and the F1 on the validation scans selects the model, and the best model's test evaluation is written as `metrics.json`.
use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};
use vesalius_nets::Autoencoder;
use vesalius_train::engine::{self, RunOptions, part, stream_seed};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::DetectError;
use crate::data::{self, Augment, Prepared, Scan, cut, epoch_rng, patch_start, render_targets};
use crate::evaluate::{self, DetMetrics};
use crate::infer::{DetectOptions, Scanning, detect};
use crate::model::{Detector, build, centre_loss};
use crate::recipe::{Arch, DetRecipe};

/// Whether `dir` holds a detection run (its recipe says `task = "detection"`).
pub fn is_run(dir: &Path) -> bool {
    vesalius_train::run::recipe_task(dir).as_deref() == Some("detection")
}

/// What may change in a run folder that already trained: the learning rate and the number of epochs.
pub fn resume_rules() -> ResumeRules {
    ResumeRules { free: vec!["train.lr".into()], length: vec!["train.epochs".into()], schedule_depends: false }
}

/// What a finished run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The engine's final state.
    pub state: vesalius_train::engine::EngineState,
    /// Epochs done before this invocation, when it resumed.
    pub resumed_after: Option<usize>,
    /// Whether the run completed.
    pub complete: bool,
    /// The test evaluation of the best model (complete runs).
    pub test: Option<DetMetrics>,
    /// Training images, validation scans, test scans.
    pub sizes: [usize; 3],
}

/// The detection options of a recipe with what the training findings say about sizes.
pub fn detect_options(recipe: &DetRecipe, info: &DetInfo) -> DetectOptions {
    DetectOptions {
        roi: recipe.train.patch.clone(),
        min_probability: recipe.eval.min_probability,
        max_marks: recipe.eval.max_marks,
        min_diameter_mm: info.min_diameter_mm,
        scanning: (recipe.model.arch == Arch::Sae).then_some(Scanning {
            patch: recipe.model.sae.patch,
            stride: recipe.model.sae.stride,
            diameter_mm: info.median_diameter_mm,
        }),
    }
}

/// The median diameter among the training findings (and the middle of the inserted lesions' range); 10 mm when
/// there is none.
pub fn median_diameter(recipe: &DetRecipe, data: &Prepared) -> f64 {
    let mut d: Vec<f64> = data.train.iter().flat_map(|t| t.scan.findings.iter().map(|f| f.diameter_mm)).filter(|d| *d > 0.0).collect();
    if let Some(i) = recipe.insert.as_ref().filter(|i| i.count > 0) {
        d.push(0.5 * (i.diameter_mm[0] + i.diameter_mm[1]));
    }
    if d.is_empty() {
        return 10.0;
    }
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
}

/// The smallest diameter among the training findings and the inserted lesions (0 when there is none).
pub fn smallest_diameter(recipe: &DetRecipe, data: &Prepared) -> f64 {
    let own = data.train.iter().flat_map(|t| t.scan.findings.iter().map(|f| f.diameter_mm)).filter(|d| *d > 0.0);
    let inserted = recipe.insert.as_ref().filter(|i| i.count > 0).map(|i| i.diameter_mm[0]);
    own.chain(inserted).reduce(f64::min).unwrap_or(0.0)
}

/// `run.json` of a detection run.
pub type RunInfo = vesalius_train::run::RunInfo<DetInfo>;

/// What inference needs besides the recipe and the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetInfo {
    /// The smallest training finding's diameter (the floor of duplicate suppression).
    pub min_diameter_mm: f64,
    /// The median training finding's diameter (the size of the scanned classifier's marks).
    pub median_diameter_mm: f64,
}

impl DetInfo {
    /// The sizes of a recipe's training data.
    pub fn of(recipe: &DetRecipe, data: &Prepared) -> Self {
        Self { min_diameter_mm: smallest_diameter(recipe, data), median_diameter_mm: median_diameter(recipe, data) }
    }
}

struct DetTask<'a, B: AutodiffBackend> {
    recipe: &'a DetRecipe,
    data: &'a Prepared,
    info: DetInfo,
    pretrained: Option<Autoencoder<B>>,
}

impl<B: AutodiffBackend> DetTask<'_, B> {
    /// The training scans of an epoch: the images, with a fresh lesion draw when the recipe inserts lesions.
    fn epoch_scans(&self, epoch: usize) -> Result<Vec<Scan>, DetectError> {
        self.data
            .train
            .iter()
            .enumerate()
            .map(|(i, img)| match &self.recipe.insert {
                Some(ins) if ins.count > 0 && img.insert => {
                    data::training_draw(img, self.recipe, ins, data::insertion_seed(self.recipe.seed, epoch, i))
                }
                _ => Ok(img.scan.clone()),
            })
            .collect()
    }

    /// One epoch of the auto-encoder classifier: object-centred and background patches (hard negatives among
    /// them), cross-entropy.
    fn sae_epoch<O: Optimizer<Detector<B>, B>>(
        &self,
        scans: &[Scan],
        targets: &[Vec<crate::data::Target>],
        hard: &[Vec<[f64; 3]>],
        rng: &mut rand_chacha::ChaCha8Rng,
        stepper: &mut Stepper<'_, B, Detector<B>, O>,
    ) -> Result<(), DetectError> {
        let t = &self.recipe.train;
        let k = self.recipe.model.sae.patch;
        let device = stepper.device().clone();
        for _ in 0..t.iterations {
            let mut x = Vec::with_capacity(t.batch * k * k);
            let mut y = Vec::with_capacity(t.batch);
            while y.len() < t.batch {
                let i = rng.random_range(0..scans.len());
                let r: f64 = rng.random();
                let positive = r < t.positive_fraction;
                let use_hard = !positive && r < t.positive_fraction + t.hard_negative_fraction;
                let bands = &self.data.train[i].bands;
                let Some((p, label)) = crate::sae::draw(&scans[i], &targets[i], bands, k, positive, &hard[i], use_hard, rng) else {
                    return Err(DetectError::Input(format!("{}: no {k}-pixel patch fits outside the held-out bands", scans[i].id)));
                };
                let mut p = p;
                data::jitter_intensity(&mut p, t.intensity_jitter, rng);
                x.extend(p);
                y.push(label as i64);
            }
            let n = y.len();
            let x = Tensor::<B, 4>::from_data(TensorData::new(x, [n, 1, k, k]), &device);
            let labels = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(y, [n]), &device);
            stepper.step_split(n, 1.0, |m: &Detector<B>, r, d| {
                let Detector::Sae(net) = m else {
                    return Err(DetectError::Internal("an sae recipe with another network".into()));
                };
                let logits = net.forward(part(&x, &r, d));
                Ok(burn::nn::loss::CrossEntropyLossConfig::new().init(d).forward(logits, part(&labels, &r, d)))
            })?;
        }
        Ok(())
    }
}

/// The Retina U-Net loss of a batch: focal and box losses of every level, over the batch's positive anchors.
fn retina_loss<B: burn::tensor::backend::Backend>(
    net: &vesalius_nets::UNet<B>,
    input: Tensor<B, 5>,
    boxes: &[Vec<vesalius_eval::detection::Aabb>],
    nd: usize,
) -> Tensor<B, 1> {
    let device = input.device();
    let (last, aux) = net.forward_all(input);
    let strides = crate::model::retina_strides(net.levels());
    let mut total: Option<Tensor<B, 1>> = None;
    let mut positives = 0.0;
    for (out, stride) in aux.into_iter().chain(std::iter::once(last)).zip(strides) {
        let [_, _, d, h, w] = out.dims();
        let level = crate::retina::Level { stride, grid: [w, h, d] };
        let matches: Vec<_> = boxes.iter().map(|b| crate::retina::match_anchors(&level, nd, b)).collect();
        let (sum, pos) = crate::retina::level_loss(out, &matches, nd);
        positives += pos;
        total = Some(match total {
            Some(t) => t + sum,
            None => sum,
        });
    }
    let total = total.unwrap_or_else(|| Tensor::zeros([1], &device));
    total / positives.max(1.0)
}

/// False-positive marks (probability ≥ 0.3, outside every finding's radius) of `net` on a training scan, in voxels.
fn false_positives<B: burn::tensor::backend::Backend>(
    net: &Detector<B>,
    scan: &Scan,
    options: &DetectOptions,
    device: &B::Device,
) -> Result<Vec<[f64; 3]>, DetectError> {
    let options = DetectOptions { min_probability: 0.3, max_marks: 0, ..options.clone() };
    let g = &scan.geometry;
    Ok(detect(net, scan, &options, device)?
        .into_iter()
        .filter(|m| {
            scan.findings.iter().all(|f| {
                let r = f.diameter_mm.max(0.0) / 2.0;
                (0..3).map(|a| (f.centre[a] - m.centre[a]).powi(2)).sum::<f64>() >= r * r
            })
        })
        .map(|m| g.to_voxel(m.centre))
        .collect())
}

impl<B: AutodiffBackend> Task<B> for DetTask<'_, B> {
    type Model = Detector<B>;
    type Error = DetectError;

    fn init_model(&mut self, device: &B::Device) -> Result<Detector<B>, DetectError> {
        Ok(match (build(self.recipe, device), &self.pretrained) {
            (Detector::Sae(m), Some(ae)) => {
                Detector::Sae(m.with_encoder(ae).map_err(|e| DetectError::Internal(format!("pre-trained encoder: {e}")))?)
            }
            (m, _) => m,
        })
    }

    fn epochs(&self) -> usize {
        self.recipe.train.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.recipe.train.iterations
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.recipe.train.lr
    }

    fn train_epoch<O: Optimizer<Detector<B>, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, Detector<B>, O>,
    ) -> Result<(), DetectError> {
        let t = &self.recipe.train;
        let nd = self.recipe.dims();
        let size: [usize; 3] = std::array::from_fn(|a| if a < nd { t.patch[a] } else { 1 });
        let mut rng = epoch_rng(stream_seed(self.recipe.seed, epoch as u64, 1));
        let device = stepper.device().clone();
        let scans = self.epoch_scans(epoch)?;
        let targets: Vec<_> = scans.iter().map(Scan::targets).collect();
        // Hard negatives of the model as it starts this epoch (a deterministic function of the checkpoint).
        let hard: Vec<Vec<[f64; 3]>> = if t.hard_negative_fraction > 0.0 && epoch > 0 {
            let net = stepper.model().valid();
            let options = detect_options(self.recipe, &self.info);
            scans.iter().map(|s| false_positives(&net, s, &options, &device)).collect::<Result<_, _>>()?
        } else {
            vec![Vec::new(); scans.len()]
        };
        if self.recipe.model.arch == Arch::Sae {
            return self.sae_epoch(&scans, &targets, &hard, &mut rng, stepper);
        }
        let per = size.iter().product::<usize>();
        for _ in 0..t.iterations {
            let mut x = Vec::with_capacity(t.batch * per);
            let (mut heat, mut sz, mut mask) =
                (Vec::with_capacity(t.batch * per), Vec::with_capacity(t.batch * per), Vec::with_capacity(t.batch * per));
            let mut boxes: Vec<Vec<vesalius_eval::detection::Aabb>> = Vec::new();
            for _ in 0..t.batch {
                let i = rng.random_range(0..scans.len());
                let (scan, tg) = (&scans[i], &targets[i]);
                let r: f64 = rng.random();
                let around = if r < t.positive_fraction && !tg.is_empty() {
                    Some(tg[rng.random_range(0..tg.len())].centre)
                } else if r < t.positive_fraction + t.hard_negative_fraction && !hard[i].is_empty() {
                    Some(hard[i][rng.random_range(0..hard[i].len())])
                } else {
                    None
                };
                let bands = &self.data.train[i].bands;
                let start = patch_start(scan.shape, bands, size, around, &mut rng)
                    .or_else(|| patch_start(scan.shape, bands, size, None, &mut rng))
                    .ok_or_else(|| DetectError::Input(format!("{}: no patch of {:?} fits outside the held-out bands", scan.id, t.patch)))?;
                let (values, local) = cut(scan, tg, start, size);
                let aug = Augment::draw(&mut rng, size, nd);
                let moved: Vec<_> = local.iter().map(|l| aug.target(l, size)).collect();
                let out_size = if aug.transpose { [size[1], size[0], size[2]] } else { size };
                let mut values = aug.channels(&values, size);
                data::jitter_intensity(&mut values, t.intensity_jitter, &mut rng);
                x.extend(values);
                if self.recipe.model.arch == Arch::Retina {
                    boxes.push(
                        moved
                            .iter()
                            .filter(|m| (0..nd).all(|a| m.centre[a] >= -0.5 && m.centre[a] < out_size[a] as f64 - 0.5))
                            .map(|m| {
                                let lo = std::array::from_fn(|a| if a < nd { m.centre[a] - m.half[a] } else { -0.5 });
                                let hi = std::array::from_fn(|a| if a < nd { m.centre[a] + m.half[a] } else { 0.5 });
                                vesalius_eval::detection::Aabb::new(lo, hi)
                            })
                            .collect(),
                    );
                    continue;
                }
                let rendered = render_targets(out_size, &moved);
                heat.extend(rendered.heat);
                sz.extend(rendered.size);
                mask.extend(rendered.size_mask);
            }
            let shape = [t.batch, 1, size[2], size[1], size[0]];
            let tensor = |v: Vec<f32>| Tensor::<B, 5>::from_data(TensorData::new(v, shape), &device);
            let channels = scans[0].channels;
            let input = Tensor::<B, 5>::from_data(TensorData::new(x, [t.batch, channels, size[2], size[1], size[0]]), &device);
            // Heat maps are rendered for the centre-point heads only (the RetinaNet-style head matches boxes).
            let maps = (self.recipe.model.arch != Arch::Retina).then(|| (tensor(heat), tensor(sz), tensor(mask)));
            stepper.step_split(t.batch, 1.0, |m: &Detector<B>, r, d| {
                let x = part(&input, &r, d);
                let (out, (heat, sz, mask)) = match (m, &maps) {
                    (Detector::Retina(net), _) => return Ok(retina_loss(net, x, &boxes[r.clone()], nd)),
                    (Detector::Centre(net), Some(maps)) => (net.forward(x), maps),
                    (Detector::Crnn(net), Some(maps)) => (net.forward(x), maps),
                    _ => return Err(DetectError::Internal("a centre-point recipe with another network".into())),
                };
                Ok(centre_loss(out, part(heat, &r, d), part(sz, &r, d), part(mask, &r, d)))
            })?;
        }
        Ok(())
    }

    fn validate(
        &mut self,
        model: &Detector<B::InnerBackend>,
        _epoch: usize,
        device: &B::Device,
    ) -> Result<Option<Validation>, DetectError> {
        let options = detect_options(self.recipe, &self.info);
        let mut marks = Vec::new();
        for scan in &self.data.val {
            marks.extend(detect(model, scan, &options, device)?);
        }
        let threshold = self.recipe.eval.threshold.unwrap_or_else(|| evaluate::choose_threshold(&self.data.val, &marks));
        let (froc, op) = evaluate::score(&self.data.val, &marks, threshold, self.recipe, 0)?;
        Ok(Some(
            Validation::new()
                .metric("cpm", froc.cpm)
                .metric("sensitivity", op.sensitivity.value)
                .metric("precision", op.precision.value)
                .metric("threshold", threshold)
                .metric("f1", op.f1.value)
                .score(selection_score(froc.cpm, op.f1.value)),
        ))
    }
}

/// The validation score that selects the model: the mean of the CPM (ranking over the whole FROC range) and the F1
/// at the validation-chosen threshold (the operating point users apply), so that a model whose CPM saturates on a
/// small validation set is still told apart by how clean its marks are.
pub fn selection_score(cpm: f64, f1: f64) -> f64 {
    0.5 * (cpm + if f1.is_finite() { f1 } else { 0.0 })
}

/// Trains `recipe` into `run` (resuming a run of the same recipe), then evaluates the best model on the test
/// scans and writes `metrics.json`. `on_epoch` sees each epoch's log record.
pub fn train<AB: AutodiffBackend>(
    recipe: &DetRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<TrainOutcome, DetectError> {
    train_dyn::<AB>(recipe, run, device, options, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &DetRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<TrainOutcome, DetectError> {
    recipe.validate()?;
    engine::prepare(run, &recipe.to_toml()?, &resume_rules())?;
    let data = data::prepare(recipe)?;
    let details = DetInfo::of(recipe, &data);
    run.write_info(&RunInfo::new("detection", details.clone())).map_err(|e| DetectError::Internal(e.to_string()))?;
    let pretrained = if recipe.model.arch == Arch::Sae {
        let scans: Vec<(Scan, Vec<crate::recipe::Band>)> = data.train.iter().map(|t| (t.scan.clone(), t.bands.clone())).collect();
        Some(crate::sae::pretrain::<AB>(recipe, &scans, run, device, options.quiet)?)
    } else {
        None
    };
    let mut task = DetTask { recipe, data: &data, info: details, pretrained };
    let config = options.config(recipe.seed, recipe.train.early_stopping_patience);
    let optimiser = AdamConfig::new().with_epsilon(1e-8).init::<AB, Detector<AB>>();
    let outcome = engine::train(run, &mut task, optimiser, &config, device, on_epoch)?;
    let test = if outcome.complete {
        Some(evaluate::evaluate_prepared::<AB::InnerBackend>(run, recipe, &data, vesalius_eval::EvalSet::Test, device)?)
    } else {
        None
    };
    Ok(TrainOutcome {
        state: outcome.state,
        resumed_after: outcome.resumed_after,
        complete: outcome.complete,
        test,
        sizes: [data.train.len(), data.val.len(), data.test.len()],
    })
}
