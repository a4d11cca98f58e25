//! Training on the shared engine: seeded random patches of (degraded, clean) pairs with flips and
//! transpositions, MSE loss, Adam at a constant learning rate, whole-plane validation PSNR in the evaluation
//! window as the selection score; the best model's test evaluation is written as `metrics.json`.
use std::path::Path;

use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vesalius_train::engine::{self, RunOptions, part, stream_seed};
use vesalius_train::recipe::{ResumeRules, Schedule};
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::EnhanceError;
use crate::data::{self, Prepared};
use crate::degrade::Degradation;
use crate::degrade::line_mask;
use crate::evaluate::{self, EnhanceMetrics};
use crate::kspace::{mask_plane, measure};
use crate::metrics::quality;
use crate::model::{EnhanceNet, build};
use crate::recipe::{Arch, EnhanceRecipe, IntensitySpec, ModelSection, TrainSection};

/// `run.json` of an enhancement run.
pub type RunInfo = vesalius_train::run::RunInfo<EnhanceInfo>;

/// What a trained enhancement network needs besides its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnhanceInfo {
    /// The network.
    pub model: ModelSection,
    /// Intensity normalisation.
    pub intensity: IntensitySpec,
    /// Evaluation window.
    pub window: [f32; 2],
    /// The degradation the network was trained to undo (`None`: image-to-image translation).
    pub degradation: Option<Degradation>,
    /// The plane axes.
    pub plane: [usize; 2],
    /// Self-supervised adaptation to each image before it is enhanced.
    #[serde(default)]
    pub adapt: Option<crate::recipe::AdaptSection>,
}

/// Whether `dir` holds an enhancement run (its recipe says `task = "enhancement"`).
pub fn is_run(dir: &Path) -> bool {
    vesalius_train::run::recipe_task(dir).as_deref() == Some("enhancement")
}

/// What may change in a run folder that already trained: the learning rate, and the number of epochs unless
/// `recipe`'s schedule depends on it (a cosine; a multi-step schedule's milestones are epochs).
pub fn resume_rules(recipe: &EnhanceRecipe) -> ResumeRules {
    let schedule_depends = matches!(recipe.train.schedule, Schedule::Cosine { .. });
    ResumeRules { free: vec!["train.lr".into()], length: vec!["train.epochs".into()], schedule_depends }
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
    pub test: Option<EnhanceMetrics>,
    /// Training planes, validation and test cases.
    pub sizes: [usize; 3],
}

/// Mean PSNR and SSIM of a network on the validation cases (in the evaluation window).
pub fn score_cases<B: burn::tensor::backend::Backend>(
    net: &EnhanceNet<B>,
    spec: &ModelSection,
    data: &Prepared,
    window: [f32; 2],
    device: &B::Device,
) -> (f64, f64) {
    let cases = &data.val;
    let (mut psnr, mut ssim, mut n_ssim) = (0.0, 0.0, 0usize);
    let mut outputs = crate::evaluate::NetworkOutputs::default();
    for case in cases {
        let out = outputs.of(net, spec, case, device);
        let (est, shape) = case.crop(&data.metric_units(case, &out));
        let (reference, _) = case.crop(&data.metric_units(case, &case.clean));
        let q = quality(&est, &reference, &shape, window);
        psnr += q.psnr;
        if q.ssim.is_finite() {
            ssim += q.ssim;
            n_ssim += 1;
        }
    }
    (psnr / cases.len().max(1) as f64, if n_ssim > 0 { ssim / n_ssim as f64 } else { f64::NAN })
}

struct EnhanceTask<'a> {
    recipe: &'a EnhanceRecipe,
    data: &'a Prepared,
}

impl<B: AutodiffBackend> Task<B> for EnhanceTask<'_> {
    type Model = EnhanceNet<B>;
    type Error = EnhanceError;

    fn init_model(&mut self, device: &B::Device) -> Result<EnhanceNet<B>, EnhanceError> {
        Ok(build(&self.recipe.model, device))
    }

    fn epochs(&self) -> usize {
        self.recipe.train.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.recipe.train.iterations
    }

    fn lr(&self, epoch: usize) -> f64 {
        let t = &self.recipe.train;
        t.schedule.lr(t.lr, epoch, t.epochs)
    }

    fn train_epoch<O: Optimizer<EnhanceNet<B>, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, EnhanceNet<B>, O>,
    ) -> Result<(), EnhanceError> {
        let t = &self.recipe.train;
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(self.recipe.seed, epoch as u64, 1));
        let device = stepper.device().clone();
        if let (Arch::Crnn, Some(Degradation::Kspace { acceleration, centre })) = (self.recipe.model.arch, self.recipe.degrade.as_ref()) {
            // Whole planes, each with a fresh random line mask.
            let (w, h) = (self.data.train[0].w, self.data.train[0].h);
            let frames = self.data.train[0].frames.len();
            // Single frames of images of several sizes train together on a plane of the largest, each placed at a
            // random position in zeros.
            let (pw, ph) = (self.data.train.iter().map(|p| p.w).max().unwrap_or(w), self.data.train.iter().map(|p| p.h).max().unwrap_or(h));
            if frames > 0 {
                // Dynamic series: every frame of a plane with its own fresh mask, reconstructed together.
                for _ in 0..t.iterations {
                    let (mut x0s, mut k0s, mut masks, mut targets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for _ in 0..t.batch {
                        let plane = &self.data.train[rng.random_range(0..self.data.train.len())];
                        for frame in &plane.frames {
                            let frame: Vec<f32> = frame.iter().map(|v| v / plane.scale).collect();
                            let lines = line_mask(h, *acceleration, *centre, &mut rng);
                            let (k0, x0) = measure(&frame, w, h, &lines);
                            x0s.extend(x0);
                            k0s.extend(k0);
                            masks.extend(mask_plane(w, &lines));
                            targets.extend(frame.iter().copied().chain(std::iter::repeat_n(0.0, w * h)));
                        }
                    }
                    let t5 = |v: Vec<f32>, c: usize| Tensor::<B, 5>::from_data(TensorData::new(v, [t.batch, frames, c, h, w]), &device);
                    let (x0, k0, mask, target) = (t5(x0s, 2), t5(k0s, 2), t5(masks, 1), t5(targets, 2));
                    stepper.step_split(t.batch, 1.0, |m: &EnhanceNet<B>, r, d| {
                        let EnhanceNet::Crnn(net) = m else {
                            return Err(EnhanceError::Internal("a k-space run without a CRNN".into()));
                        };
                        let out = net.forward_frames(part(&x0, &r, d), part(&k0, &r, d), part(&mask, &r, d));
                        Ok((out - part(&target, &r, d)).powi_scalar(2).mean())
                    })?;
                }
                return Ok(());
            }
            for _ in 0..t.iterations {
                let (mut x0s, mut k0s, mut masks, mut targets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for _ in 0..t.batch {
                    let plane = &self.data.train[rng.random_range(0..self.data.train.len())];
                    let placed = data::place(&plane.clean, plane.w, plane.h, pw, ph, &mut rng);
                    let clean: Vec<f32> = augment_plane(&placed, t, &mut rng).iter().map(|v| v / plane.scale).collect();
                    let lines = line_mask(ph, *acceleration, *centre, &mut rng);
                    let (k0, x0) = measure(&clean, pw, ph, &lines);
                    x0s.extend(x0);
                    k0s.extend(k0);
                    masks.extend(mask_plane(pw, &lines));
                    targets.extend(clean.iter().copied().chain(std::iter::repeat_n(0.0, pw * ph)));
                }
                let t4 = |v: Vec<f32>, c: usize| Tensor::<B, 4>::from_data(TensorData::new(v, [t.batch, c, ph, pw]), &device);
                let (x0, k0, mask, target) = (t4(x0s, 2), t4(k0s, 2), t4(masks, 1), t4(targets, 2));
                stepper.step_split(t.batch, 1.0, |m: &EnhanceNet<B>, r, d| {
                    let out = m.forward(part(&x0, &r, d), Some((part(&k0, &r, d), part(&mask, &r, d))));
                    Ok::<_, EnhanceError>((out - part(&target, &r, d)).powi_scalar(2).mean())
                })?;
            }
            return Ok(());
        }
        for _ in 0..t.iterations {
            let (mut inputs, mut targets) =
                (Vec::with_capacity(t.batch * t.patch * t.patch), Vec::with_capacity(t.batch * t.patch * t.patch));
            for _ in 0..t.batch {
                let plane = &self.data.train[rng.random_range(0..self.data.train.len())];
                let (i, o) = plane.sample(t.patch, &mut rng);
                inputs.extend(i);
                targets.extend(o);
            }
            let shape = [t.batch, 1, t.patch, t.patch];
            let x = Tensor::<B, 4>::from_data(TensorData::new(inputs, shape), &device);
            let y = Tensor::<B, 4>::from_data(TensorData::new(targets, shape), &device);
            stepper.step_split(t.batch, 1.0, |m: &EnhanceNet<B>, r, d| {
                Ok::<_, EnhanceError>((m.forward(part(&x, &r, d), None) - part(&y, &r, d)).powi_scalar(2).mean())
            })?;
        }
        Ok(())
    }

    fn validate(
        &mut self,
        model: &EnhanceNet<B::InnerBackend>,
        _epoch: usize,
        device: &B::Device,
    ) -> Result<Option<Validation>, EnhanceError> {
        let (psnr, ssim) = score_cases(model, &self.recipe.model, self.data, self.recipe.eval_window(), device);
        Ok(Some(Validation::new().metric("psnr", psnr).metric("ssim", ssim).score(psnr)))
    }
}

/// A training plane of a CRNN as `train.gamma` and `train.noise` ask (in that order), borrowed when neither is
/// set.
fn augment_plane<'a>(clean: &'a [f32], t: &TrainSection, rng: &mut ChaCha8Rng) -> std::borrow::Cow<'a, [f32]> {
    let mut plane = std::borrow::Cow::Borrowed(clean);
    if let Some([lo, hi]) = t.gamma {
        let g = rng.random_range(lo.ln()..=hi.ln()).exp() as f32;
        plane = std::borrow::Cow::Owned(plane.iter().map(|&v| v.max(0.0).powf(g)).collect());
    }
    if let Some(n) = t.noise {
        let sigma = rng.random_range(0.0..=n) as f32;
        plane = std::borrow::Cow::Owned(
            plane.iter().map(|&v| if v != 0.0 { v + sigma * rng.sample::<f32, _>(rand_distr::StandardNormal) } else { v }).collect(),
        );
    }
    plane
}

/// The run information of a recipe.
pub fn run_info(recipe: &EnhanceRecipe) -> Result<RunInfo, EnhanceError> {
    let axes = data::plane_axes(recipe)?;
    Ok(RunInfo::new(
        "enhancement",
        EnhanceInfo {
            model: recipe.model.clone(),
            intensity: recipe.data.intensity.clone(),
            window: recipe.eval_window(),
            degradation: recipe.degrade.clone(),
            plane: [axes.u, axes.v],
            adapt: recipe.adapt.clone(),
        },
    ))
}

/// Trains `recipe` into `run` (resuming a run of the same recipe), then evaluates the best model on the test
/// cases and writes `metrics.json`. `on_epoch` sees each epoch's log record.
pub fn train<AB: AutodiffBackend>(
    recipe: &EnhanceRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<TrainOutcome, EnhanceError> {
    train_dyn::<AB>(recipe, run, device, options, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    recipe: &EnhanceRecipe,
    run: &RunDir,
    device: &AB::Device,
    options: &RunOptions,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<TrainOutcome, EnhanceError> {
    recipe.validate()?;
    engine::prepare(run, &recipe.to_toml()?, &resume_rules(recipe))?;
    let data = data::prepare(recipe)?;
    if data.val.is_empty() || data.test.is_empty() {
        return Err(EnhanceError::Input("the validation and test sets both need at least one case".into()));
    }
    // Single frames of other sizes are placed in planes of the largest; the frames of a series are not.
    if recipe.model.arch == Arch::Crnn
        && data.train.iter().any(|p| !p.frames.is_empty())
        && data.train.iter().any(|p| (p.w, p.h) != (data.train[0].w, data.train[0].h))
    {
        return Err(EnhanceError::Input(
            "the CRNN trains on batches of whole series: every training series needs the same in-plane size".into(),
        ));
    }
    let info = run_info(recipe)?;
    run.write_info(&info).map_err(|e| EnhanceError::Internal(e.to_string()))?;
    let mut task = EnhanceTask { recipe, data: &data };
    let config = options.config(recipe.seed, recipe.train.early_stopping_patience);
    let optimiser = AdamConfig::new().with_epsilon(1e-8).init::<AB, EnhanceNet<AB>>();
    let outcome = engine::train(run, &mut task, optimiser, &config, device, on_epoch)?;
    let test = if outcome.complete {
        let m = evaluate::evaluate_prepared::<AB::InnerBackend>(run, recipe, &info, &data, vesalius_eval::EvalSet::Test, device)?;
        Some(m)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crnn_planes_are_augmented_as_the_recipe_asks() {
        let (w, h) = (16, 12);
        let plane: Vec<f32> = (0..w * h).map(|i| if i % 5 == 0 { 0.0 } else { (i % 7) as f32 / 7.0 }).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut t = TrainSection::default();
        assert!(matches!(augment_plane(&plane, &t, &mut rng), std::borrow::Cow::Borrowed(p) if p == plane.as_slice()));
        t.gamma = Some([2.0, 2.0]);
        let squared = augment_plane(&plane, &t, &mut rng);
        assert!(squared.iter().zip(&plane).all(|(a, b)| (a - b * b).abs() < 1e-6));
        t.gamma = None;
        t.noise = Some(0.1);
        for _ in 0..3 {
            let noisy = augment_plane(&plane, &t, &mut rng);
            let diffs: Vec<f32> = noisy.iter().zip(&plane).filter(|(_, b)| **b != 0.0).map(|(a, b)| a - b).collect();
            // Zeros (a masked background) stay zero; elsewhere noise of a standard deviation at most 0.1.
            assert!(noisy.iter().zip(&plane).all(|(a, b)| *b != 0.0 || *a == 0.0));
            let sd = (diffs.iter().map(|d| d * d).sum::<f32>() / diffs.len() as f32).sqrt();
            assert!(diffs.iter().any(|d| *d != 0.0) && sd < 0.13, "{sd}");
        }
    }
}
