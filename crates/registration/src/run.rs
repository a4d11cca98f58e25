//! Training runs of learned registration: pairs from a recipe ([`crate::recipe`]) resampled onto one grid, an
//! optional affine-regression network trained first, then a VoxelMorph network on the affinely aligned pairs;
//! validation every `val_every` steps keeping the best model; model, optimiser and state checkpointed atomically
//! so that an interrupted run resumes. [`LearnedRegistrar`] registers new images with a run's networks (outputs
//! in the fixed image's grid, like [`crate::register`]) and [`evaluate`] measures a run on its validation pairs.
//!
//! A run folder holds `recipe.toml`, `run.json` (label values), `affine/` (the affine network's own run folder,
//! if any: its `model.mpk`, `log.jsonl` and `checkpoints/`), `model.mpk` (best validation score), `log.jsonl`,
//! `checkpoints/` and, after evaluation, `metrics.json` — the training engine's layout ([`vesalius_train`]).
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use vesalius_train::engine::{self, EngineState, RunOptions};
use vesalius_train::recipe::ResumeRules;
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};
use vesalius_data::transforms::{resample_onto, rng};
use vesalius_data::{Affine, Image};
use vesalius_eval::bootstrap::{percentile_ci, Estimate};
use vesalius_eval::EvalSet;
use vesalius_nets::{warp_by_affine, AffineNet, AffineNetConfig};
use vesalius_nets::loss::grad_l2;
use vesalius_nets::ops::{identity_grid, resize_linear, sample_linear, sample_nearest, warp, warp_nearest, Padding};
use vesalius_nets::{VoxelMorph, VoxelMorphConfig};

use crate::affine::{identity, Grid};
use crate::evaluate::{jacobian_determinants, jacobian_stats, label_metrics, JacobianStats};
use crate::learn::{pair_loss, LearnOptions, Pair};
use crate::recipe::{RegRecipe, Synthetic};
use crate::{finish, mat_inv, mat_mul, normalised, to_vec, Mat4, RegError, Registration};

/// Whether `dir` holds a learned-registration run (its `recipe.toml` says `task = "registration"`).
pub fn is_run(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("recipe.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.get("task").and_then(|v| v.as_str()) == Some("registration"))
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

fn check_volume(image: &Image, path: &Path) -> Result<(), RegError> {
    if image.ndim() != 3 {
        return Err(RegError::Input(format!("{}: learned registration needs 3D volumes, this image is {}D", path.display(), image.ndim())));
    }
    Ok(())
}

fn load(path: &Path) -> Result<Image, RegError> {
    let image = vesalius_data::io::load(path)?;
    check_volume(&image, path)?;
    Ok(image)
}

/// An image's intensities scaled to [0, 1] (0.5–99.5th percentiles), resampled onto the grid `affine` of `shape`.
fn intensities_on(image: &Image, shape: &[usize; 3], affine: &Affine) -> Result<Vec<f32>, RegError> {
    let first = Image::new(image.data()[..image.voxels()].to_vec(), image.shape().to_vec(), 1, *image.affine(), "float32")?;
    Ok(resample_onto(&normalised(&first), shape, affine, false)?.data().to_vec())
}

/// A label map resampled (nearest neighbour) onto the grid, values rounded.
fn labels_on(labels: &Image, shape: &[usize; 3], affine: &Affine) -> Result<Vec<f32>, RegError> {
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
                d.subjects.iter().enumerate().map(|(i, s)| [Some(s.clone()), atlas.clone(), d.subject_labels.get(i).cloned(), d.atlas_labels.clone()]).collect()
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
                    if let (Some(m), Some(p)) = (map, path) {
                        if m.shape() != image.shape() {
                            return Err(RegError::Input(format!("{}: the label map's grid differs from its image's", p.display())));
                        }
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
            Some(_) => (0..self.recipe.train.validation).map(|k| self.synthetic_pair::<B>(mix(self.recipe.train.seed, 1, k as u64), device)).collect(),
            None => self.listed[self.train_count()..self.train_count() + self.recipe.train.validation].to_vec(),
        }
    }

    /// The test pairs (none unless the recipe holds some out).
    pub fn test<B: Backend>(&self, device: &B::Device) -> Vec<PreparedPair> {
        match &self.synthetic {
            Some(_) => (0..self.recipe.train.test).map(|k| self.synthetic_pair::<B>(mix(self.recipe.train.seed, 3, k as u64), device)).collect(),
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

fn tensor5<B: Backend>(v: Vec<f32>, channels: usize, size: [usize; 3], device: &B::Device) -> Tensor<B, 5> {
    Tensor::from_data(TensorData::new(v, [1, channels, size[0], size[1], size[2]]), device)
}

fn int_labels<B: Backend>(v: &[f32], size: [usize; 3], device: &B::Device) -> Tensor<B, 4, Int> {
    let ints: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(ints, [1, size[0], size[1], size[2]]), device)
}

/// Positions `A·p` of every voxel `p` of a grid of `size` under voxel-space affines `[1, 3, 4]`: `[1, 3, d, h, w]`.
fn affine_coords<B: Backend>(affine: Tensor<B, 3>, size: [usize; 3]) -> Tensor<B, 5> {
    let device = affine.device();
    let v = size[0] * size[1] * size[2];
    let grid = identity_grid::<B>(size, &device).reshape([1, 3, v]);
    (affine.clone().narrow(2, 0, 3).matmul(grid) + affine.narrow(2, 3, 1)).reshape([1, 3, size[0], size[1], size[2]])
}

/// Run metadata besides the recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
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

fn voxelmorph_config(recipe: &RegRecipe) -> VoxelMorphConfig {
    VoxelMorphConfig::new(recipe.model.encoder.clone(), recipe.model.decoder.clone()).with_integration_steps(recipe.model.integration_steps)
}

fn mean_dice(moved: &[f32], reference: &[f32], classes: usize) -> f64 {
    let per: Vec<f64> = (1..classes).map(|k| crate::evaluate::dice(moved, reference, k as f32)).collect();
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
    fn train_epoch<O: Optimizer<AffineNet<AB>, AB>>(&mut self, epoch: usize, stepper: &mut Stepper<'_, AB, AffineNet<AB>, O>) -> Result<(), RegError> {
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
    fn train_epoch<O: Optimizer<VoxelMorph<AB>, AB>>(&mut self, epoch: usize, stepper: &mut Stepper<'_, AB, VoxelMorph<AB>, O>) -> Result<(), RegError> {
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
        for p in self.validation {
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
        val_loss /= self.validation.len().max(1) as f64;
        let val_dice = (dice_n > 0).then(|| dice_sum / dice_n as f64);
        Ok(Some(Validation::new().metric("loss", val_loss).maybe("dice", val_dice).score(val_dice.unwrap_or(-val_loss))))
    }
}

/// Trains the run described by `recipe` in `run` with default options, resuming from its checkpoints when they
/// exist. `on_log` sees every validation record with its stage (`affine` or `deformable`).
pub fn train<AB: AutodiffBackend>(recipe: &RegRecipe, run: &RunDir, device: &AB::Device, on_log: impl FnMut(&str, &EpochRecord)) -> Result<TrainOutcome, RegError> {
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
    let text = recipe.to_toml()?;
    let affine_run = run.stage("affine");
    let main_state = engine::read_state(run)?;
    let affine_state = engine::read_state(&affine_run)?;
    if let (Some(_), Some(a)) = (&main_state, &affine_state) {
        if recipe.model.affine && recipe.train.affine_steps != a.steps_done {
            return Err(RegError::Input(format!(
                "{}: the deformable stage has started; affine_steps cannot change from {}",
                run.root().display(),
                a.steps_done
            )));
        }
    }
    let resumed_after = (main_state.is_some() || affine_state.is_some())
        .then(|| (affine_state.as_ref().map_or(0, |s| s.steps_done), main_state.as_ref().map_or(0, |s| s.steps_done)));
    engine::prepare(run, &text, &resume_rules())?;
    let source = PairSource::open(recipe)?;
    run.write_json("run.json", &RunInfo { label_values: source.label_values.clone() })?;
    let validation = source.validation::<AB::InnerBackend>(device);
    let similarity = recipe.similarity();

    let mut complete = true;
    let (affine_outcome, affine) = if recipe.model.affine {
        engine::prepare(&affine_run, &text, &resume_rules())?;
        let mut stage = AffineStage { recipe, source: &source, validation: &validation, similarity: similarity.clone() };
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
    let mut stage = DeformableStage { recipe, source: &source, validation: &validation, affine, opts };
    let config = options.config(recipe.train.seed.wrapping_add(1), None);
    let optim = AdamConfig::new().with_epsilon(1e-8).init::<AB, VoxelMorph<AB>>();
    let o = engine::train(run, &mut stage, optim, &config, device, |r| on_log("deformable", r))?;
    complete &= o.complete;
    if !run.best_model().is_file() {
        return Err(RegError::Input(format!("{}: no deformable training step was run ([train] steps = 0)", run.root().display())));
    }
    Ok(TrainOutcome { affine: affine_outcome, state: o.state, resumed_after, complete })
}

/// A trained run's networks, ready to register images.
pub struct LearnedRegistrar<B: Backend> {
    recipe: RegRecipe,
    info: RunInfo,
    affine: Option<AffineNet<B>>,
    net: VoxelMorph<B>,
}

/// The fields a run's networks predict for one pair on the common grid.
pub struct Prediction<B: Backend> {
    /// The affine network's voxel-space affine `[1, 3, 4]`, if the run has one.
    pub affine: Option<Tensor<B, 3>>,
    /// The deformable field `[1, 3, d, h, w]` (voxels of the common grid) applied after the affine.
    pub field: Tensor<B, 5>,
    /// Where each voxel reads the moving image: `A·(p + u(p))`, `[1, 3, d, h, w]`.
    pub coords: Tensor<B, 5>,
}

impl<B: Backend> LearnedRegistrar<B> {
    /// Loads the best networks of a run.
    pub fn load(run: &RunDir, device: &B::Device) -> Result<Self, RegError> {
        let recipe = RegRecipe::from_file(&run.file("recipe.toml"))?;
        let info: RunInfo = run.read_json("run.json")?;
        let affine = if recipe.model.affine {
            let net: AffineNet<B> = AffineNetConfig::new(recipe.model.affine_encoder.clone()).init(device);
            Some(engine::load_module(net, &run.stage("affine").best_model(), device)?)
        } else {
            None
        };
        let net: VoxelMorph<B> = voxelmorph_config(&recipe).init(device);
        let net = engine::load_module(net, &run.best_model(), device)?;
        Ok(Self { recipe, info, affine, net })
    }

    /// The run's recipe.
    pub fn recipe(&self) -> &RegRecipe {
        &self.recipe
    }

    /// Label values of the run's label maps (index order).
    pub fn label_values(&self) -> &[i64] {
        &self.info.label_values
    }

    /// Tensor size of the common grid (depth, height, width).
    pub fn size(&self) -> [usize; 3] {
        let s = self.recipe.data.shape;
        [s[2], s[1], s[0]]
    }

    /// The fields for a pair on the common grid (`[1, 1, d, h, w]` intensities in [0, 1]).
    pub fn predict(&self, moving: Tensor<B, 5>, fixed: Tensor<B, 5>) -> Prediction<B> {
        let size = self.size();
        let device = moving.device();
        match &self.affine {
            None => {
                let field = self.net.field(moving, fixed);
                Prediction { affine: None, coords: identity_grid::<B>(size, &device) + field.clone(), field }
            }
            Some(net) => {
                let a = net.forward(moving.clone(), fixed.clone());
                let field = self.net.field(warp_by_affine(moving, a.clone(), size), fixed);
                let v = size[0] * size[1] * size[2];
                let p = (identity_grid::<B>(size, &device) + field.clone()).reshape([1, 3, v]);
                let coords = (a.clone().narrow(2, 0, 3).matmul(p) + a.clone().narrow(2, 3, 1)).reshape([1, 3, size[0], size[1], size[2]]);
                Prediction { affine: Some(a), field, coords }
            }
        }
    }

    /// Registers `moving` to `fixed` (3D images, any grids): both are resampled onto the run's grid about the fixed
    /// image, the networks predict there, and the result maps every voxel of the fixed image's own grid, like
    /// [`crate::register`]; `field_voxels` holds the deformable stage's displacement in fixed voxels.
    pub fn register(&self, fixed: &Image, moving: &Image, device: &B::Device) -> Result<Registration, RegError> {
        check_volume(fixed, Path::new("fixed image"))?;
        check_volume(moving, Path::new("moving image"))?;
        let shape = self.recipe.data.shape;
        let size = self.size();
        let common = common_grid(&self.recipe, fixed);
        let f = tensor5::<B>(intensities_on(fixed, &shape, &common)?, 1, size, device);
        let m = tensor5::<B>(intensities_on(moving, &shape, &common)?, 1, size, device);
        let prediction = self.predict(m, f);
        let (g, fg, mg) = (Grid::from_affine(&shape, &common), Grid::of(fixed), Grid::of(moving));
        let [d, h, w] = fg.size;
        let n = d * h * w;
        // Fixed voxel → common-grid voxel q.
        let to_common = mat_mul(&mat_inv(&g.to_world), &fg.to_world);
        let mut q: [Vec<f32>; 3] = [Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n)];
        for i in 0..n {
            let p = [(i / (h * w)) as f64, ((i / w) % h) as f64, (i % w) as f64];
            for (r, out) in q.iter_mut().enumerate() {
                out.push((to_common[r][0] * p[0] + to_common[r][1] * p[1] + to_common[r][2] * p[2] + to_common[r][3]) as f32);
            }
        }
        let u = to_vec(sample_linear(prediction.field, crate::tensor_of::<B>(q.concat(), [1, 3, d, h, w], device), Padding::Border));
        let a: Mat4 = match &prediction.affine {
            None => identity(),
            Some(t) => {
                let v = to_vec(t.clone());
                let mut m = identity();
                for r in 0..3 {
                    for c in 0..4 {
                        m[r][c] = v[r * 4 + c] as f64;
                    }
                }
                m
            }
        };
        // Common voxel q → A·(q + u) → world → moving voxel; the deformable part alone in fixed voxels.
        let to_moving = mat_mul(&mat_mul(&mat_inv(&mg.to_world), &g.to_world), &a);
        let lin = mat_mul(&mat_inv(&fg.to_world), &g.to_world);
        let mut mapped: [Vec<f32>; 3] = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        let mut field: [Vec<f32>; 3] = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        for i in 0..n {
            let du = [u[i] as f64, u[n + i] as f64, u[2 * n + i] as f64];
            let p = [q[0][i] as f64 + du[0], q[1][i] as f64 + du[1], q[2][i] as f64 + du[2]];
            for r in 0..3 {
                mapped[r][i] = (to_moving[r][0] * p[0] + to_moving[r][1] * p[1] + to_moving[r][2] * p[2] + to_moving[r][3]) as f32;
                field[r][i] = (lin[r][0] * du[0] + lin[r][1] * du[1] + lin[r][2] * du[2]) as f32;
            }
        }
        let world = mat_mul(&mat_mul(&g.to_world, &a), &mat_inv(&g.to_world));
        Ok(finish::<B>(fixed, moving, world, mapped, field, device))
    }
}

/// One validation pair's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    /// The pair.
    pub name: String,
    /// Mean Dice over the non-background labels: before registration, after the affine network (if any), after
    /// the whole registration.
    pub dice_before: Option<f64>,
    /// After the affine stage.
    pub dice_affine: Option<f64>,
    /// After registration.
    pub dice_after: Option<f64>,
    /// Mean 95th-percentile Hausdorff distance over the labels after registration, mm.
    pub hd95_after: Option<f64>,
    /// Per label value: (Dice before, Dice after).
    pub dice_per_label: Vec<(i64, f64, f64)>,
    /// Mean squared intensity difference before and after.
    pub mse_before: f64,
    /// After registration.
    pub mse_after: f64,
    /// Jacobian determinant of the deformable field.
    pub jacobian: JacobianStats,
    /// For synthetic pairs: mean and maximum error of the recovered displacement, mm, inside the fixed labels (or
    /// where the fixed image is above 10 % of its range): without registration and with it.
    pub field_error_mm: Option<FieldError>,
    /// Seconds for the networks and the warp of this pair.
    pub seconds: f64,
}

/// Error of a recovered displacement against the truth, mm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldError {
    /// Mean |truth| (no registration).
    pub mean_before: f64,
    /// Maximum |truth|.
    pub max_before: f64,
    /// Mean |recovered − truth|.
    pub mean_after: f64,
    /// Maximum |recovered − truth|.
    pub max_after: f64,
}

/// A method's evaluation on the validation pairs: per pair, and means with 95 % bootstrap confidence intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodMetrics {
    /// Per pair.
    pub pairs: Vec<PairMetrics>,
    /// Means over pairs with their intervals, by name.
    pub mean: Vec<(String, Estimate)>,
}

impl MethodMetrics {
    /// The mean of a metric by name (`dice_after`, `folding_percent`, …).
    pub fn mean_of(&self, name: &str) -> Option<f64> {
        self.mean.iter().find(|(n, _)| n == name).map(|(_, e)| e.value)
    }
}

/// A run's evaluation on its test (`metrics.json`) or validation pairs (`metrics-val.json`): the trained networks,
/// and optionally registration by optimisation on the same pairs for comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// The pairs scored: `"test"` or `"validation"`.
    pub set: String,
    /// The run's networks.
    pub learned: MethodMetrics,
    /// Optimisation ([`crate::register`]) on the same pairs, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimisation: Option<MethodMetrics>,
}

/// Metrics of one pair registered by the map `coords` (`[3][d·h·w]`: where each voxel of the common grid reads
/// the moving image, in its voxels), whose deformable part is `field` and affine-only map `affine_coords`.
struct PairEval<'a> {
    pair: &'a PreparedPair,
    size: [usize; 3],
    spacing: [f64; 3],
    shape: [usize; 3],
    classes: usize,
    label_values: &'a [i64],
}

impl PairEval<'_> {
    #[allow(clippy::too_many_arguments)]
    fn metrics<B: Backend>(&self, coords: Vec<f32>, warped: &[f32], field: &[f32], affine_coords: Option<Vec<f32>>, seconds: f64, device: &B::Device) -> PairMetrics {
        let (p, size, classes) = (self.pair, self.size, self.classes);
        let n = size[0] * size[1] * size[2];
        let coords_t = |v: Vec<f32>| tensor5::<B>(v, 3, size, device);
        let mse = |a: &[f32]| a.iter().zip(&p.fixed).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
        let jacobian = jacobian_stats(&jacobian_determinants(&[field[..n].to_vec(), field[n..2 * n].to_vec(), field[2 * n..].to_vec()], size));
        let mut grid_affine = identity();
        for (a, s) in self.spacing.iter().enumerate() {
            grid_affine[a][a] = *s;
        }
        let as_image = |v: Vec<f32>| Image::new(v, self.shape.to_vec(), 1, grid_affine, "float32").expect("grid-sized");
        let (mut dice_before, mut dice_affine, mut dice_after, mut hd95_after, mut dice_per_label) = (None, None, None, None, Vec::new());
        if let (Some(ml), Some(fl)) = (&p.moving_labels, &p.fixed_labels) {
            let labels = tensor5::<B>(ml.clone(), 1, size, device);
            let after = to_vec(sample_nearest(labels.clone(), coords_t(coords.clone())));
            dice_before = Some(mean_dice(ml, fl, classes));
            dice_after = Some(mean_dice(&after, fl, classes));
            dice_affine = affine_coords.map(|c| mean_dice(&to_vec(sample_nearest(labels, coords_t(c))), fl, classes));
            let metrics = label_metrics(&as_image(after.clone()), &as_image(fl.clone()));
            let hd: Vec<f64> = metrics.iter().filter_map(|(_, m)| m.hd95).collect();
            hd95_after = (!hd.is_empty()).then(|| hd.iter().sum::<f64>() / hd.len() as f64);
            for (k, value) in self.label_values.iter().enumerate().skip(1) {
                dice_per_label.push((*value, crate::evaluate::dice(ml, fl, k as f32), crate::evaluate::dice(&after, fl, k as f32)));
            }
        }
        let field_error_mm = p.truth.as_ref().map(|truth| {
            let inside: Vec<usize> = match &p.fixed_labels {
                Some(fl) => (0..n).filter(|&i| fl[i] > 0.0).collect(),
                None => (0..n).filter(|&i| p.fixed[i] > 0.1).collect(),
            };
            let voxel = |i: usize| [(i / (size[1] * size[2])) as f32, ((i / size[2]) % size[1]) as f32, (i % size[2]) as f32];
            let length = |v: [f64; 3]| (0..3).map(|c| (v[c] * self.spacing[2 - c]).powi(2)).sum::<f64>().sqrt();
            let before: Vec<f64> = inside.iter().map(|&i| length([0, 1, 2].map(|c| truth[c * n + i] as f64))).collect();
            let after: Vec<f64> =
                inside.iter().map(|&i| length([0, 1, 2].map(|c| (coords[c * n + i] - voxel(i)[c] - truth[c * n + i]) as f64))).collect();
            let stats = |v: &[f64]| (v.iter().sum::<f64>() / v.len().max(1) as f64, v.iter().copied().fold(0.0, f64::max));
            let ((mean_before, max_before), (mean_after, max_after)) = (stats(&before), stats(&after));
            FieldError { mean_before, max_before, mean_after, max_after }
        });
        PairMetrics {
            name: p.name.clone(),
            dice_before,
            dice_affine,
            dice_after,
            hd95_after,
            dice_per_label,
            mse_before: mse(&p.moving),
            mse_after: mse(warped),
            jacobian,
            field_error_mm,
            seconds,
        }
    }
}

fn summarise(pairs: Vec<PairMetrics>) -> MethodMetrics {
    type Getter = fn(&PairMetrics) -> Option<f64>;
    let series: [(&str, Getter); 11] = [
        ("dice_before", |p| p.dice_before),
        ("dice_affine", |p| p.dice_affine),
        ("dice_after", |p| p.dice_after),
        ("dice_gain", |p| p.dice_after.zip(p.dice_affine.or(p.dice_before)).map(|(a, b)| a - b)),
        ("hd95_after_mm", |p| p.hd95_after),
        ("mse_before", |p| Some(p.mse_before)),
        ("mse_after", |p| Some(p.mse_after)),
        ("folding_percent", |p| Some(p.jacobian.folding_percent)),
        ("field_error_before_mm", |p| p.field_error_mm.as_ref().map(|e| e.mean_before)),
        ("field_error_after_mm", |p| p.field_error_mm.as_ref().map(|e| e.mean_after)),
        ("seconds_per_pair", |p| Some(p.seconds)),
    ];
    let mut mean = Vec::new();
    for (name, get) in series {
        let values: Vec<f64> = pairs.iter().filter_map(get).collect();
        if values.len() != pairs.len() || values.is_empty() {
            continue;
        }
        let value = values.iter().sum::<f64>() / values.len() as f64;
        let estimate = percentile_ci(values.len(), 1000, 0.95, 0, value, |idx| Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64));
        mean.push((name.to_string(), estimate));
    }
    MethodMetrics { pairs, mean }
}

/// Evaluates a run's best networks on its test (or validation) pairs, on the common grid, and with `optimisation`
/// also registration by optimisation of the same pairs; writes `metrics.json` (or `metrics-val.json`).
pub fn evaluate<AB: AutodiffBackend>(run: &RunDir, device: &AB::Device, optimisation: Option<&crate::RegisterOptions>, set: EvalSet) -> Result<RunMetrics, RegError> {
    let registrar = LearnedRegistrar::<AB::InnerBackend>::load(run, device)?;
    let source = PairSource::open(&registrar.recipe)?;
    let size = registrar.size();
    let (shape, spacing) = (registrar.recipe.data.shape, registrar.recipe.data.spacing);
    let mut grid_affine = identity();
    for (a, s) in spacing.iter().enumerate() {
        grid_affine[a][a] = *s;
    }
    let (mut learned, mut optimised) = (Vec::new(), Vec::new());
    let pairs = match set {
        EvalSet::Test => source.test::<AB::InnerBackend>(device),
        EvalSet::Validation => source.validation::<AB::InnerBackend>(device),
    };
    if pairs.is_empty() {
        return Err(RegError::Input(format!(
            "{}: this run holds out no test pairs ([train] test = N); score the validation pairs with --split val",
            run.root().display()
        )));
    }
    let bar = vesalius_train::progress::bar(pairs.len() as u64, &format!("evaluation ({})", set.name()), false);
    for p in pairs {
        bar.inc(1);
        let eval = PairEval { pair: &p, size, spacing, shape, classes: registrar.label_values().len(), label_values: registrar.label_values() };
        let started = Instant::now();
        let m = tensor5::<AB::InnerBackend>(p.moving.clone(), 1, size, device);
        let prediction = registrar.predict(m.clone(), tensor5(p.fixed.clone(), 1, size, device));
        let warped = to_vec(sample_linear(m, prediction.coords.clone(), Padding::Zeros));
        let seconds = started.elapsed().as_secs_f64();
        let affine_only = prediction.affine.as_ref().map(|a| to_vec(affine_coords(a.clone(), size)));
        learned.push(eval.metrics::<AB::InnerBackend>(to_vec(prediction.coords), &warped, &to_vec(prediction.field), affine_only, seconds, device));
        if let Some(options) = optimisation {
            let as_image = |v: &Vec<f32>| Image::new(v.clone(), shape.to_vec(), 1, grid_affine, "float32").expect("grid-sized");
            let started = Instant::now();
            let r = crate::register::<AB>(&as_image(&p.fixed), &as_image(&p.moving), options, device);
            let seconds = started.elapsed().as_secs_f64();
            optimised.push(eval.metrics::<AB::InnerBackend>(r.moving_voxel.concat(), &r.warped.data()[..r.warped.voxels()], &r.field_voxels.concat(), None, seconds, device));
        }
    }
    bar.finish_and_clear();
    let metrics = RunMetrics { set: set.name().into(), learned: summarise(learned), optimisation: optimisation.map(|_| summarise(optimised)) };
    run.write_json(set.file(), &metrics)?;
    Ok(metrics)
}
