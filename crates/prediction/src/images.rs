//! Survival from images (`task = "survival"` with `[data] kind = "images"`): a manifest CSV lists one image per
//! row (column `data.image`, a path relative to the manifest's folder) beside the time, event and id columns.
//! Any network of the architectures crate (`[model] backbone`: `lenet5`, `alexnet`, `vgg11`, `resnet18`, …, or
//! `sae`, the encoder of a stacked auto-encoder pre-trained greedily on the training images) reads the image — one
//! grey channel scaled by its stored type's range, resized to `size`² — and outputs the log-risk of a Cox model.
//! It trains on the shared engine with the Cox partial likelihood (Breslow ties) over the risk set of each
//! minibatch (as DeepSurv does for images), the epoch with the best validation Harrell's C kept; Breslow's
//! baseline hazard on the training patients then gives survival curves, and the run is scored like a table run.
use std::path::Path;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use vesalius_nets::{Arch, Classifier, ClassifierConfig};
use vesalius_train::engine::{self, RunOptions};
use vesalius_train::{EpochRecord, RunDir, Stepper, Task, Validation};

use crate::PredError;
use crate::deepsurv::{Sorted, cox_loss};
use crate::recipe::SurvivalRecipe;
use crate::table::RawTable;

/// Images scored per network call at inference.
const CHUNK: usize = 128;

/// The pixels of each row's image (`column`, relative to `base`), `size`² grey values in `[0, 1]`, row-major.
pub fn read_pixels(table: &RawTable, column: &str, base: &Path, size: usize) -> Result<Vec<Vec<f64>>, PredError> {
    let all: Vec<usize> = (0..table.rows.len()).collect();
    read_pixels_at(table, column, base, size, &all)
}

/// [`read_pixels`] for the rows `idx` only.
pub fn read_pixels_at(table: &RawTable, column: &str, base: &Path, size: usize, idx: &[usize]) -> Result<Vec<Vec<f64>>, PredError> {
    let c = table.column(column)?;
    idx.iter()
        .map(|&r| {
            let row = table.rows.get(r).ok_or_else(|| PredError::Internal(format!("{}: no row {}", table.source, r + 2)))?;
            let cell = row[c].trim();
            if cell.is_empty() {
                return Err(PredError::Input(format!("{}: row {} has no image in column \"{column}\"", table.source, r + 2)));
            }
            let path = base.join(cell);
            let img = vesalius_io::load(&path).map_err(|e| PredError::Input(format!("{} (row {}): {e}", table.source, r + 2)))?;
            let px = vesalius_data::source::prepare_2d(&img, 1, size, &path)?;
            Ok(px.into_iter().map(f64::from).collect())
        })
        .collect()
}

/// Log-risks of images given as pixel rows.
pub fn log_risk<B: Backend>(net: &Classifier<B>, rows: &[Vec<f64>], size: usize, device: &B::Device) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(CHUNK) {
        let flat: Vec<f32> = chunk.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [chunk.len(), 1, size, size]), device);
        out.extend(net.forward(x).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(f64::from));
    }
    out
}

/// The network of an image survival recipe (one input channel, one output).
pub fn network<B: Backend>(recipe: &SurvivalRecipe, device: &B::Device) -> Result<Classifier<B>, PredError> {
    let arch = recipe.model.backbone.ok_or_else(|| PredError::Input("[model] backbone is needed for image data".into()))?;
    ClassifierConfig::new(arch, 1, 1, recipe.model.image_size())
        .init(device)
        .map_err(|e| PredError::Input(format!("[model] backbone: {e}")))
}

/// Loads an image survival run's best network.
pub fn load<B: Backend>(run: &Path, recipe: &SurvivalRecipe, device: &B::Device) -> Result<Classifier<B>, PredError> {
    Ok(engine::load_module(network::<B>(recipe, device)?, &RunDir::new(run).best_model(), device)?)
}

type Rows<'a> = (&'a [Vec<f64>], &'a [f64], &'a [bool]);

struct ImageSurvivalTask<'a, B: AutodiffBackend> {
    recipe: &'a SurvivalRecipe,
    pretrained: Option<vesalius_nets::Autoencoder<B>>,
    train: Rows<'a>,
    val: Rows<'a>,
}

impl<B: AutodiffBackend> Task<B> for ImageSurvivalTask<'_, B> {
    type Model = Classifier<B>;
    type Error = PredError;

    fn init_model(&mut self, device: &B::Device) -> Result<Classifier<B>, PredError> {
        network::<B>(self.recipe, device)?
            .with_pretrained(self.pretrained.as_ref())
            .map_err(|e| PredError::Internal(format!("pre-trained encoder: {e}")))
    }

    fn epochs(&self) -> usize {
        self.recipe.model.epochs
    }

    fn steps_in_epoch(&self, _epoch: usize, _steps_done: usize) -> usize {
        self.recipe.model.steps
    }

    fn lr(&self, _epoch: usize) -> f64 {
        self.recipe.model.lr
    }

    fn train_epoch<O: Optimizer<Classifier<B>, B>>(
        &mut self,
        epoch: usize,
        stepper: &mut Stepper<'_, B, Classifier<B>, O>,
    ) -> Result<(), PredError> {
        let device = stepper.device().clone();
        let (x, t, e) = self.train;
        let size = self.recipe.model.image_size();
        let batch = self.recipe.model.image_batch().min(t.len());
        let mut order: Vec<usize> = (0..t.len()).collect();
        for step in 0..self.recipe.model.steps {
            // Each step draws its own minibatch (seeded by epoch and step, so a resumed run draws the same).
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(engine::stream_seed(self.recipe.seed, epoch as u64, step as u64)));
            let pick = &order[..batch];
            let rows: Vec<Vec<f64>> = pick.iter().map(|&i| x[i].clone()).collect();
            let times: Vec<f64> = pick.iter().map(|&i| t[i]).collect();
            let events: Vec<bool> = pick.iter().map(|&i| e[i]).collect();
            let n_events = events.iter().filter(|&&v| v).count();
            if n_events == 0 {
                continue;
            }
            let sorted = Sorted::new(&rows, &times, &events);
            let xt = Tensor::<B, 4>::from_data(TensorData::new(sorted.x, [batch, 1, size, size]), &device);
            let ends = Tensor::<B, 1, Int>::from_data(TensorData::new(sorted.group_end, [batch]), &device);
            let ev = Tensor::<B, 1>::from_data(TensorData::new(sorted.events, [batch]), &device);
            let eta = stepper.model().forward(xt).reshape([batch]);
            stepper.step(cox_loss(eta, ends, ev, n_events as f64))?;
        }
        Ok(())
    }

    fn validate(
        &mut self,
        model: &Classifier<B::InnerBackend>,
        _epoch: usize,
        device: &B::Device,
    ) -> Result<Option<Validation>, PredError> {
        let (x, t, e) = self.val;
        let risk = log_risk(model, x, self.recipe.model.image_size(), device);
        let c = vesalius_eval::survival::harrell_c(t, e, &risk).map(|c| c.c).ok();
        Ok(Some(Validation::new().maybe("c_index", c).maybe_score(c)))
    }
}

/// Trains the image network on the training rows (pixels), selecting by Harrell's C on the validation rows;
/// returns the best network. `sae` is pre-trained greedily on the training images first (kept in the run's
/// `pretrain/` folder).
pub fn train<AB: AutodiffBackend>(
    run: &RunDir,
    recipe_toml: &str,
    recipe: &SurvivalRecipe,
    train: Rows<'_>,
    val: Rows<'_>,
    device: &AB::Device,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<Classifier<AB::InnerBackend>, PredError> {
    train_dyn::<AB>(run, recipe_toml, recipe, train, val, device, &mut on_epoch)
}

/// [`train`] behind one callback type: generated once per backend.
pub(crate) fn train_dyn<AB: AutodiffBackend>(
    run: &RunDir,
    recipe_toml: &str,
    recipe: &SurvivalRecipe,
    train: Rows<'_>,
    val: Rows<'_>,
    device: &AB::Device,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<Classifier<AB::InnerBackend>, PredError> {
    engine::prepare(run, recipe_toml, &crate::deepsurv::resume_rules())?;
    let m = &recipe.model;
    let size = m.image_size();
    let pretrained = if m.backbone == Some(Arch::Sae) {
        let rows =
            || -> Result<Vec<f32>, vesalius_train::TrainError> { Ok(train.0.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect()) };
        let config = vesalius_train::greedy::GreedyConfig {
            hidden: vesalius_nets::SAE_HIDDEN.to_vec(),
            epochs: m.epochs,
            fine_tune_epochs: m.epochs.div_ceil(2),
            batch: m.image_batch(),
            lr: m.lr,
            sigmoid_output: true,
            seed: recipe.seed,
            ..Default::default()
        };
        Some(vesalius_train::greedy::train_stacked_in_run::<AB>(run, rows, size * size, &config, device, true)?)
    } else {
        None
    };
    let mut task = ImageSurvivalTask { recipe, pretrained, train, val };
    let mut cfg = AdamConfig::new().with_epsilon(1e-8);
    if m.weight_decay > 0.0 {
        cfg = cfg.with_weight_decay(Some(WeightDecayConfig::new(m.weight_decay as f32)));
    }
    let config = RunOptions { quiet: true, ..Default::default() }.config(recipe.seed, m.early_stopping_patience);
    engine::train(run, &mut task, cfg.init::<AB, Classifier<AB>>(), &config, device, on_epoch)?;
    load::<AB::InnerBackend>(run.root(), recipe, device)
}
