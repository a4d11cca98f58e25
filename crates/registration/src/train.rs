//! Training runs of learned registration: pairs from a recipe ([`crate::recipe`]) resampled onto one grid, an
//! optional affine-regression network trained first, then a VoxelMorph network on the affinely aligned pairs, on
//! the training engine ([`vesalius_train`]): validation every `val_every` steps keeps the best model; checkpoint
//! sets and resumption as for every task.
//!
//! A run folder holds `recipe.toml`, `run.json` (label values), `affine/` (the affine network's own run folder,
//! if any: its `model.mpk`, `log.jsonl` and `checkpoints/`), `model.mpk` (best validation score), `log.jsonl`,
//! `checkpoints/` and, after evaluation, `metrics.json` — the training engine's layout.
use std::path::{Path, PathBuf};

use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use vesalius_data::transforms::{resample_onto, rng};
use vesalius_data::{Affine, Image};
use vesalius_nets::loss::grad_l2;
use vesalius_nets::ops::{Padding, identity_grid, resize_linear, sample_nearest, warp, warp_nearest};
use vesalius_nets::{AffineNet, AffineNetConfig, warp_by_affine};
use vesalius_nets::{VoxelMorph, VoxelMorphConfig};
use vesalius_train::engine::{self, EngineState, RunOptions};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::affine::{Grid, identity};
use crate::learn::{LearnOptions, Pair, pair_loss};
use crate::recipe::{RegRecipe, Synthetic};
use crate::{RegError, normalised, to_vec};

/// Whether `dir` holds a learned-registration run (its `recipe.toml` says `task = "registration"`).
pub fn is_run(dir: &Path) -> bool {
    vesalius_train::run::recipe_task(dir).as_deref() == Some("registration")
}

/// The common grid of a fixed image: RAS+ axes, the recipe's spacing and shape (x, y, z), centred on the fixed
/// image's field of view. Returns its voxel-to-world matrix (indices i, j, k).
pub fn common_grid(recipe: &RegRecipe, fixed: &Image) -> Affine {
    let centre = Grid::of(fixed).centre();
    let mut a = identity();
    for axis in 0..3 {
        let s = recipe.data.spacing[axis];
        a[axis][axis] = s;
        a[axis][3] = centre[axis] - s * (recipe.data.shape[axis] as f64 - 1.0) / 2.0;
    }
    a
}

pub(crate) fn check_volume(image: &Image, path: &Path) -> Result<(), RegError> {
    if image.ndim() != 3 {
        return Err(RegError::Input(format!("{}: learned registration needs 3D volumes, this image is {}D", path.display(), image.ndim())));
    }
    Ok(())
}

pub(crate) fn load(path: &Path) -> Result<Image, RegError> {
    let image = vesalius_io::load(path)?;
    check_volume(&image, path)?;
    Ok(image)
}

/// An image's intensities scaled to [0, 1] (0.5–99.5th percentiles), resampled onto the grid `affine` of `shape`.
pub(crate) fn intensities_on(image: &Image, shape: &[usize; 3], affine: &Affine) -> Result<Vec<f32>, RegError> {
    let first = Image::new(image.data()[..image.voxels()].to_vec(), image.shape().to_vec(), 1, *image.affine(), "float32")?;
    Ok(resample_onto(&normalised(&first), shape, affine, false)?.data().to_vec())
}

/// A label map resampled (nearest neighbour) onto the grid, values rounded.
pub(crate) fn labels_on(labels: &Image, shape: &[usize; 3], affine: &Affine) -> Result<Vec<f32>, RegError> {
    let first = Image::new(labels.data()[..labels.voxels()].to_vec(), labels.shape().to_vec(), 1, *labels.affine(), "float32")?;
    Ok(resample_onto(&first, shape, affine, true)?.data().iter().map(|v| v.round()).collect())
}

/// The distinct values of label maps, 0 first.
fn distinct_values<'a>(maps: impl Iterator<Item = &'a Vec<f32>>) -> Vec<i64> {
    let mut values: Vec<i64> = vec![0];
    for m in maps {
        values.extend(m.iter().map(|&v| v as i64));
        values.sort_unstable();
        values.dedup();
    }
    values
}

/// Label values replaced by their index in `values`.
fn to_indices(map: &mut [f32], values: &[i64]) {
    for v in map.iter_mut() {
        *v = values.iter().position(|&l| l == *v as i64).unwrap_or(0) as f32;
    }
}

/// One pair on the common grid, flattened in tensor order (depth, height, width; width fastest).
#[derive(Clone, Debug)]
pub struct PreparedPair {
    /// A name for reports (the moving image's file name, or the synthetic field's seed).
    pub name: String,
    /// Moving intensities in [0, 1].
    pub moving: Vec<f32>,
    /// Fixed intensities in [0, 1].
    pub fixed: Vec<f32>,
    /// Moving labels as indices into the run's label values.
    pub moving_labels: Option<Vec<f32>>,
    /// Fixed labels.
    pub fixed_labels: Option<Vec<f32>>,
    /// The true displacement (voxels, `[3][d·h·w]` components depth, height, width), for synthetic pairs.
    pub truth: Option<Vec<f32>>,
}

/// The pairs of a recipe: listed (pairs file, atlas + subjects) or synthetic (drawn by seed).
pub struct PairSource {
    recipe: RegRecipe,
    /// Label values, in index order (0 first).
    pub label_values: Vec<i64>,
    listed: Vec<PreparedPair>,
    synthetic: Option<(Vec<f32>, Option<Vec<f32>>)>,
    /// Tensor size (depth, height, width) of the common grid.
    pub size: [usize; 3],
}

fn pair_rows(csv_path: &Path) -> Result<Vec<[Option<PathBuf>; 4]>, RegError> {
    let err = |m: String| RegError::Input(format!("{}: {m}", csv_path.display()));
    let mut reader = csv::Reader::from_path(csv_path).map_err(|e| err(e.to_string()))?;
    let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(m), Some(f)) = (column("moving"), column("fixed")) else {
        return Err(err("needs the columns moving and fixed (optionally moving_labels, fixed_labels)".into()));
    };
    let (ml, fl) = (column("moving_labels"), column("fixed_labels"));
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| err(format!("row {}: {e}", i + 2)))?;
        let get = |c: Option<usize>| c.and_then(|c| record.get(c)).map(str::trim).filter(|s| !s.is_empty()).map(|s| base.join(s));
        let (moving, fixed) = (get(Some(m)), get(Some(f)));
        if moving.is_none() || fixed.is_none() {
            return Err(err(format!("row {}: empty moving or fixed path", i + 2)));
        }
        rows.push([moving, fixed, get(ml), get(fl)]);
    }
    Ok(rows)
}

impl PairSource {
    /// Reads and resamples every image of the recipe (synthetic: the one image); label maps are mapped to indices.
    pub fn open(recipe: &RegRecipe) -> Result<Self, RegError> {
        let d = &recipe.data;
        let shape = d.shape;
        let size = [shape[2], shape[1], shape[0]];
        let mut listed = Vec::new();
        let mut synthetic = None;
        let label_values: Vec<i64>;
        if let Some(s) = &d.synthetic {
            let image = load(&s.image)?;
            let grid = common_grid(recipe, &image);
            let labels = s.labels.as_deref().map(load).transpose()?;
            let base = intensities_on(&image, &shape, &grid)?;
            let mut base_labels = labels.as_ref().map(|l| labels_on(l, &shape, &grid)).transpose()?;
            label_values = if base_labels.is_some() { distinct_values(base_labels.iter()) } else { Vec::new() };
            base_labels.iter_mut().for_each(|m| to_indices(m, &label_values));
            synthetic = Some((base, base_labels));
        } else {
            // (moving, fixed, moving labels, fixed labels) paths.
            let rows: Vec<[Option<PathBuf>; 4]> = if let Some(csv_path) = &d.pairs {
                pair_rows(csv_path)?
            } else {
                let atlas = d.atlas.clone();
                d.subjects
                    .iter()
                    .enumerate()
                    .map(|(i, s)| [Some(s.clone()), atlas.clone(), d.subject_labels.get(i).cloned(), d.atlas_labels.clone()])
                    .collect()
            };
            let need = recipe.train.validation + recipe.train.test + 1;
            if rows.len() < need {
                return Err(RegError::Input(format!(
                    "{} pairs: at least {need} needed ({} held out for validation, {} for test)",
                    rows.len(),
                    recipe.train.validation,
                    recipe.train.test
                )));
            }
            let with_labels = rows.iter().filter(|r| r[2].is_some() && r[3].is_some()).count();
            if with_labels != 0 && with_labels != rows.len() {
                return Err(RegError::Input("either every pair has both label maps or none has".into()));
            }
            if recipe.train.label_weight > 0.0 && with_labels == 0 {
                return Err(RegError::Input("[train] label_weight needs label maps for the pairs".into()));
            }
            // One pair at a time: read, check, resample onto the fixed image's common grid.
            for r in &rows {
                let get = |p: &Option<PathBuf>| p.as_deref().map(load).transpose();
                let (moving, fixed) = (get(&r[0])?.expect("checked"), get(&r[1])?.expect("checked"));
                let (ml, fl) = (get(&r[2])?, get(&r[3])?);
                for (map, image, path) in [(&ml, &moving, &r[2]), (&fl, &fixed, &r[3])] {
                    if let (Some(m), Some(p)) = (map, path)
                        && m.shape() != image.shape()
                    {
                        return Err(RegError::Input(format!("{}: the label map's grid differs from its image's", p.display())));
                    }
                }
                let grid = common_grid(recipe, &fixed);
                listed.push(PreparedPair {
                    name: r[0].as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    moving: intensities_on(&moving, &shape, &grid)?,
                    fixed: intensities_on(&fixed, &shape, &grid)?,
                    moving_labels: ml.as_ref().map(|l| labels_on(l, &shape, &grid)).transpose()?,
                    fixed_labels: fl.as_ref().map(|l| labels_on(l, &shape, &grid)).transpose()?,
                    truth: None,
                });
            }
            let maps = listed.iter().flat_map(|p| p.moving_labels.iter().chain(p.fixed_labels.iter()));
            label_values = if with_labels > 0 { distinct_values(maps) } else { Vec::new() };
            for p in &mut listed {
                p.moving_labels.iter_mut().chain(p.fixed_labels.iter_mut()).for_each(|m| to_indices(m, &label_values));
            }
        }
        Ok(Self { recipe: recipe.clone(), label_values, listed, synthetic, size })
    }

    /// Number of label classes (background included; 0 without labels).
    pub fn classes(&self) -> usize {
        self.label_values.len()
    }

    fn train_count(&self) -> usize {
        self.listed.len().saturating_sub(self.recipe.train.validation + self.recipe.train.test)
    }

    /// The validation pairs.
    pub fn validation<B: Backend>(&self, device: &B::Device) -> Vec<PreparedPair> {
        match &self.synthetic {
            Some(_) => (0..self.recipe.train.validation)
                .map(|k| self.synthetic_pair::<B>(mix(self.recipe.train.seed, 1, k as u64), device))
                .collect(),
            None => self.listed[self.train_count()..self.train_count() + self.recipe.train.validation].to_vec(),
        }
    }

    /// The test pairs (none unless the recipe holds some out).
    pub fn test<B: Backend>(&self, device: &B::Device) -> Vec<PreparedPair> {
        match &self.synthetic {
            Some(_) => {
                (0..self.recipe.train.test).map(|k| self.synthetic_pair::<B>(mix(self.recipe.train.seed, 3, k as u64), device)).collect()
            }
            None => self.listed[self.train_count() + self.recipe.train.validation..].to_vec(),
        }
    }

    /// The training pair of step `step`: listed pairs in an order shuffled anew each pass (by seed), or a synthetic
    /// pair with a fresh field.
    pub fn train_pair<B: Backend>(&self, step: usize, device: &B::Device) -> PreparedPair {
        match &self.synthetic {
            Some(_) => self.synthetic_pair::<B>(mix(self.recipe.train.seed, 0, step as u64), device),
            None => {
                let n = self.train_count();
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng(mix(self.recipe.train.seed, 2, (step / n) as u64)));
                self.listed[order[step % n]].clone()
            }
        }
    }

    fn synthetic_pair<B: Backend>(&self, seed: u64, device: &B::Device) -> PreparedPair {
        let (base, base_labels) = self.synthetic.as_ref().expect("a synthetic source");
        let s = self.recipe.data.synthetic.as_ref().expect("a synthetic recipe");
        let field = synthetic_field::<B>(s, self.recipe.data.spacing, self.size, seed, device);
        let moving = tensor5::<B>(base.clone(), 1, self.size, device);
        let fixed = warp(moving, field.clone(), Padding::Border);
        let fixed_labels = base_labels.as_ref().map(|l| to_vec(warp_nearest(tensor5::<B>(l.clone(), 1, self.size, device), field.clone())));
        PreparedPair {
            name: format!("synthetic-{seed:016x}"),
            moving: base.clone(),
            fixed: to_vec(fixed),
            moving_labels: base_labels.clone(),
            fixed_labels,
            truth: Some(to_vec(field)),
        }
    }
}

/// A seed for the `index`-th draw of kind `kind` (0 training fields, 1 validation fields, 2 pair orders, 3 test
/// fields).
fn mix(seed: u64, kind: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (kind << 56) ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// A random smooth field (voxels, `[1, 3, d, h, w]`): control-point displacements uniform in ±amplitude (mm, per
/// axis in voxels of `spacing` (x, y, z)), interpolated trilinearly.
pub fn synthetic_field<B: Backend>(s: &Synthetic, spacing: [f64; 3], size: [usize; 3], seed: u64, device: &B::Device) -> Tensor<B, 5> {
    let cp = s.control_points;
    let mut r = rng(seed);
    let mut values = Vec::with_capacity(3 * cp * cp * cp);
    for c in 0..3 {
        let amplitude = s.amplitude_mm / spacing[2 - c];
        for _ in 0..cp * cp * cp {
            values.push(((r.random::<f64>() * 2.0 - 1.0) * amplitude) as f32);
        }
    }
    resize_linear(Tensor::from_data(TensorData::new(values, [1, 3, cp, cp, cp]), device), size)
}

pub(crate) fn tensor5<B: Backend>(v: Vec<f32>, channels: usize, size: [usize; 3], device: &B::Device) -> Tensor<B, 5> {
    Tensor::from_data(TensorData::new(v, [1, channels, size[0], size[1], size[2]]), device)
}

pub(crate) fn int_labels<B: Backend>(v: &[f32], size: [usize; 3], device: &B::Device) -> Tensor<B, 4, Int> {
    let ints: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(ints, [1, size[0], size[1], size[2]]), device)
}

/// Positions `A·p` of every voxel `p` of a grid of `size` under voxel-space affines `[1, 3, 4]`: `[1, 3, d, h, w]`.
pub(crate) fn affine_coords<B: Backend>(affine: Tensor<B, 3>, size: [usize; 3]) -> Tensor<B, 5> {
    let device = affine.device();
    let v = size[0] * size[1] * size[2];
    let grid = identity_grid::<B>(size, &device).reshape([1, 3, v]);
    (affine.clone().narrow(2, 0, 3).matmul(grid) + affine.narrow(2, 3, 1)).reshape([1, 3, size[0], size[1], size[2]])
}

/// `run.json` of a learned-registration run: the engine's one run-information type with the label values.
pub type RunInfo = vesalius_train::run::RunInfo<RegistrationInfo>;

/// What a trained registration run needs besides its networks and recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationInfo {
    /// Label values of the label maps, in index order (empty without labels).
    pub label_values: Vec<i64>,
}

/// What a finished (or stopped) training reports.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// The affine network's stage (in the run's `affine/` folder), if the recipe has one.
    pub affine: Option<EngineState>,
    /// The deformable network's stage.
    pub state: EngineState,
    /// Steps already done when the run resumed (affine, deformable), if it did.
    pub resumed_after: Option<(usize, usize)>,
    /// Whether both stages ran to their step counts.
    pub complete: bool,
}

pub(crate) fn voxelmorph_config(recipe: &RegRecipe) -> VoxelMorphConfig {
    VoxelMorphConfig::new(recipe.model.encoder.clone(), recipe.model.decoder.clone()).with_integration_steps(recipe.model.integration_steps)
}

pub(crate) fn mean_dice(moved: &[f32], reference: &[f32], classes: usize) -> f64 {
    let per: Vec<f64> = (1..classes).map(|k| crate::metrics::dice(moved, reference, k as f32)).collect();
    per.iter().sum::<f64>() / per.len().max(1) as f64
}

/// What a recipe may change in a run folder that already trained: the learning rate, and the step counts (the
/// learning rate is constant, so training longer continues the same run). The affine network's step count may
/// not change once the deformable stage has started ([`train`] checks it).
pub fn resume_rules() -> ResumeRules {
    ResumeRules {
        free: vec!["train.learning_rate".into()],
        length: vec!["train.steps".into(), "train.affine_steps".into()],
        schedule_depends: false,
    }
}

/// Steps of a stage's "epoch": up to `val_every` from where the stage stands.
fn epoch_steps(val_every: usize, total: usize, steps_done: usize) -> usize {
    val_every.max(1).min(total.saturating_sub(steps_done))
}

/// Stage 1: the affine-regression network, trained on the similarity of the affinely warped moving image.
struct AffineStage<'a> {
    recipe: &'a RegRecipe,
    source: &'a PairSource,
    validation: &'a [PreparedPair],
    similarity: crate::similarity::Similarity,
}

impl<AB: AutodiffBackend> Task<AB> for AffineStage<'_> {
    type Model = AffineNet<AB>;
    type Error = RegError;

    fn init_model(&mut self, device: &AB::Device) -> Result<AffineNet<AB>, RegError> {
        Ok(AffineNetConfig::new(self.recipe.model.affine_encoder.clone()).init(device))
    }
    fn epochs(&self) -> usize {
        self.recipe.train.affine_steps.div_ceil(self.recipe.train.val_every.max(1))
    }
    fn more(&self, _epochs_done: usize, steps_done: usize) -> bool {
        steps_done < self.recipe.train.affine_steps
    }
    fn steps_in_epoch(&self, _epoch: usize, steps_done: usize) -> usize {
        epoch_steps(self.recipe.train.val_every, self.recipe.train.affine_steps, steps_done)
    }
    fn lr(&self, _epoch: usize) -> f64 {
        self.recipe.train.learning_rate
    }
    fn train_epoch<O: Optimizer<AffineNet<AB>, AB>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, AB, AffineNet<AB>, O>,
    ) -> Result<(), RegError> {
        let (device, size) = (stepper.device().clone(), self.source.size);
        let first = stepper.steps_done();
        for step in first..first + <Self as Task<AB>>::steps_in_epoch(self, epoch, first) {
            let p = self.source.train_pair::<AB::InnerBackend>(step, &device);
            let (m, f) = (tensor5::<AB>(p.moving, 1, size, &device), tensor5::<AB>(p.fixed, 1, size, &device));
            let (warped, _) = stepper.model().register(m, f.clone());
            stepper.step(self.similarity.loss(warped, f.clone(), f.ones_like()))?;
        }
        Ok(())
    }
    fn validate(&mut self, net: &AffineNet<AB::InnerBackend>, _epoch: usize, device: &AB::Device) -> Result<Option<Validation>, RegError> {
        let size = self.source.size;
        let val_loss = self
            .validation
            .iter()
            .map(|p| {
                let f = tensor5::<AB::InnerBackend>(p.fixed.clone(), 1, size, device);
                let (warped, _) = net.register(tensor5(p.moving.clone(), 1, size, device), f.clone());
                self.similarity.loss(warped, f.clone(), f.ones_like()).into_scalar().elem::<f64>()
            })
            .sum::<f64>()
            / self.validation.len().max(1) as f64;
        Ok(Some(Validation::new().metric("loss", val_loss).score(-val_loss)))
    }
}

/// Stage 2: the VoxelMorph network on the affinely aligned pairs; validation by warped-label Dice when there are
/// labels, otherwise by the validation loss.
struct DeformableStage<'a, B: Backend> {
    recipe: &'a RegRecipe,
    source: &'a PairSource,
    validation: &'a [PreparedPair],
    affine: Option<AffineNet<B>>,
    opts: LearnOptions,
    quiet: bool,
}

impl<B: Backend> DeformableStage<'_, B> {
    /// The moving image (and labels) of a pair after the affine stage.
    fn aligned(&self, p: &PreparedPair, device: &B::Device) -> (Tensor<B, 5>, Option<Tensor<B, 5>>) {
        let size = self.source.size;
        let m = tensor5::<B>(p.moving.clone(), 1, size, device);
        let labels = p.moving_labels.as_ref().map(|l| tensor5::<B>(l.clone(), 1, size, device));
        match &self.affine {
            None => (m, labels),
            Some(net) => {
                let a = net.forward(m.clone(), tensor5(p.fixed.clone(), 1, size, device));
                (warp_by_affine(m, a.clone(), size), labels.map(|l| sample_nearest(l, affine_coords(a, size))))
            }
        }
    }
}

impl<AB: AutodiffBackend> Task<AB> for DeformableStage<'_, AB::InnerBackend> {
    type Model = VoxelMorph<AB>;
    type Error = RegError;

    fn init_model(&mut self, device: &AB::Device) -> Result<VoxelMorph<AB>, RegError> {
        Ok(voxelmorph_config(self.recipe).init(device))
    }
    fn epochs(&self) -> usize {
        self.recipe.train.steps.div_ceil(self.recipe.train.val_every.max(1))
    }
    fn more(&self, _epochs_done: usize, steps_done: usize) -> bool {
        steps_done < self.recipe.train.steps
    }
    fn steps_in_epoch(&self, _epoch: usize, steps_done: usize) -> usize {
        epoch_steps(self.recipe.train.val_every, self.recipe.train.steps, steps_done)
    }
    fn lr(&self, _epoch: usize) -> f64 {
        self.recipe.train.learning_rate
    }
    fn train_epoch<O: Optimizer<VoxelMorph<AB>, AB>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, AB, VoxelMorph<AB>, O>,
    ) -> Result<(), RegError> {
        let (device, size) = (stepper.device().clone(), self.source.size);
        let first = stepper.steps_done();
        for step in first..first + <Self as Task<AB>>::steps_in_epoch(self, epoch, first) {
            let p = self.source.train_pair::<AB::InnerBackend>(step, &device);
            let (m, ml) = self.aligned(&p, &device);
            let pair = Pair {
                moving: Tensor::from_inner(m),
                fixed: tensor5::<AB>(p.fixed.clone(), 1, size, &device),
                moving_labels: ml.map(|l| Tensor::from_inner(l.reshape([1, size[0], size[1], size[2]]).int())),
                fixed_labels: p.fixed_labels.as_ref().map(|l| int_labels::<AB>(l, size, &device)),
            };
            let loss = pair_loss(stepper.model(), &pair, &self.opts);
            stepper.step(loss)?;
        }
        Ok(())
    }
    fn validate(&mut self, net: &VoxelMorph<AB::InnerBackend>, _epoch: usize, device: &AB::Device) -> Result<Option<Validation>, RegError> {
        let size = self.source.size;
        let (mut val_loss, mut dice_sum, mut dice_n) = (0.0, 0.0, 0);
        let bar = vesalius_train::progress::bar(self.validation.len() as u64, "validation", self.quiet);
        for p in self.validation {
            bar.inc(1);
            let (m, ml) = self.aligned(p, device);
            let f = tensor5::<AB::InnerBackend>(p.fixed.clone(), 1, size, device);
            let (warped, flow) = net.forward(m, f.clone());
            val_loss += (self.opts.similarity.loss(warped, f.clone(), f.ones_like()) + grad_l2(flow.clone()) * self.opts.smoothness)
                .into_scalar()
                .elem::<f64>();
            if let (Some(ml), Some(fl)) = (ml, &p.fixed_labels) {
                dice_sum += mean_dice(&to_vec(warp_nearest(ml, flow)), fl, self.opts.classes);
                dice_n += 1;
            }
        }
        bar.finish_and_clear();
        val_loss /= self.validation.len().max(1) as f64;
        let val_dice = (dice_n > 0).then(|| dice_sum / dice_n as f64);
        Ok(Some(Validation::new().metric("loss", val_loss).maybe("dice", val_dice).score(val_dice.unwrap_or(-val_loss))))
    }
}

/// Trains the run described by `recipe` in `run` with default options, resuming from its checkpoints when they
/// exist. `on_log` sees every validation record with its stage (`affine` or `deformable`).
pub fn train<AB: AutodiffBackend>(
    recipe: &RegRecipe,
    run: &RunDir,
    device: &AB::Device,
    on_log: impl FnMut(&str, &EpochRecord),
) -> Result<TrainOutcome, RegError> {
    train_with::<AB>(recipe, run, device, &RunOptions { quiet: true, ..Default::default() }, on_log)
}

/// Trains (or resumes) a learned-registration run on the training engine: the affine network's stage in
/// `RUN/affine/` (when the recipe has one), then the deformable network's in `RUN/`.
pub fn train_with<AB: AutodiffBackend>(
    recipe: &RegRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    mut on_log: impl FnMut(&str, &EpochRecord),
) -> Result<TrainOutcome, RegError> {
    train_with_dyn::<AB>(recipe, run, device, options, &mut on_log)
}

/// [`train_with`] behind one callback type: generated once per backend.
pub(crate) fn train_with_dyn<AB: AutodiffBackend>(
    recipe: &RegRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    on_log: &mut dyn FnMut(&str, &EpochRecord),
) -> Result<TrainOutcome, RegError> {
    let text = recipe.to_toml()?;
    let affine_run = run.stage("affine");
    let main_state = engine::read_state(run)?;
    let affine_state = engine::read_state(&affine_run)?;
    if let (Some(_), Some(a)) = (&main_state, &affine_state)
        && recipe.model.affine
        && recipe.train.affine_steps != a.steps_done
    {
        return Err(RegError::Input(format!(
            "{}: the deformable stage has started; affine_steps cannot change from {}",
            run.root().display(),
            a.steps_done
        )));
    }
    let resumed_after = (main_state.is_some() || affine_state.is_some())
        .then(|| (affine_state.as_ref().map_or(0, |s| s.steps_done), main_state.as_ref().map_or(0, |s| s.steps_done)));
    engine::prepare(run, &text, &resume_rules())?;
    let source = PairSource::open(recipe)?;
    run.write_info(&RunInfo::new("registration", RegistrationInfo { label_values: source.label_values.clone() }))?;
    let validation = source.validation::<AB::InnerBackend>(device);
    let similarity = recipe.similarity();

    let mut complete = true;
    let (affine_outcome, affine) = if recipe.model.affine {
        engine::prepare(&affine_run, &text, &resume_rules())?;
        let mut stage = AffineStage { recipe, source: &source, validation: &validation, similarity };
        let config = options.config(recipe.train.seed, None);
        let optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, AffineNet<AB>>();
        let o = engine::train(&affine_run, &mut stage, optim, &config, device, |r| on_log("affine", r))?;
        complete &= o.complete;
        if !o.complete {
            let state = main_state.unwrap_or_else(|| o.state.clone());
            return Ok(TrainOutcome { affine: Some(o.state), state, resumed_after, complete: false });
        }
        let net: AffineNet<AB::InnerBackend> = AffineNetConfig::new(recipe.model.affine_encoder.clone()).init(device);
        let net = vesalius_train::ids::deterministic_ids(net);
        let net = engine::load_module(net, &affine_run.best_model(), device)?;
        (Some(o.state), Some(net))
    } else {
        (None, None)
    };
    let opts = LearnOptions {
        similarity,
        smoothness: recipe.train.smoothness,
        label_weight: recipe.train.label_weight,
        classes: source.classes(),
        learning_rate: recipe.train.learning_rate,
    };
    let mut stage = DeformableStage { recipe, source: &source, validation: &validation, affine, opts, quiet: options.quiet };
    let config = options.config(recipe.train.seed.wrapping_add(1), None);
    let optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, VoxelMorph<AB>>();
    let o = engine::train(run, &mut stage, optim, &config, device, |r| on_log("deformable", r))?;
    complete &= o.complete;
    if !run.best_model().is_file() {
        return Err(RegError::Input(format!("{}: no deformable training step was run ([train] steps = 0)", run.root().display())));
    }
    Ok(TrainOutcome { affine: affine_outcome, state: o.state, resumed_after, complete })
}
