//! Greedy layer-wise training of stacked auto-encoders (Bengio et al. 2007; Vincent et al. 2010): each hidden
//! layer is trained as an auto-encoder of its own on the codes of the layers below it, then the whole stack is
//! fine-tuned end to end on reconstruction. Denoising (masking noise: a seeded fraction of each input set to 0,
//! the clean input reconstructed) and sparsity (the KL penalty of [`vesalius_nets::kl_sparsity`]) apply at every
//! stage. Every epoch of every stage is reported as a [`GreedyRecord`] (`layer-1`, `layer-2`, …, `fine-tune`).
//!
//! The random streams (initialisation, batch order, masking) derive from the seed alone, so a run is repeatable.
//!
//! ```
//! use vesalius_train::greedy::{GreedyConfig, train_stacked};
//! type B = burn::backend::Autodiff<burn::backend::Flex>;
//! // 64 samples of 16 values that lie on a 2-dimensional curve.
//! let data: Vec<f32> = (0..64).flat_map(|i| (0..16).map(move |j| 0.5 + 0.4 * ((i as f32) * 0.1 + j as f32 * 0.4).sin())).collect();
//! let config = GreedyConfig { hidden: vec![8, 4], epochs: 30, fine_tune_epochs: 10, batch: 16, lr: 1e-2, ..Default::default() };
//! let mut losses = Vec::new();
//! let ae = train_stacked::<B>(&data, 16, &config, &Default::default(), |r| losses.push((r.stage.clone(), r.loss))).unwrap();
//! assert_eq!(ae.depth(), 2);
//! assert_eq!(losses.len(), 30 + 30 + 10);
//! let first = losses.iter().find(|(s, _)| s == "layer-1").unwrap().1;
//! let last = losses.iter().filter(|(s, _)| s == "layer-1").last().unwrap().1;
//! assert!(last < first);
//! ```
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vesalius_nets::{Autoencoder, AutoencoderLayer, kl_sparsity};

use crate::TrainError;
use crate::engine::stream_seed;

/// A sparsity target: mean code activation `rho`, penalty weight `beta`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sparsity {
    /// Target mean activation of each code unit.
    pub rho: f64,
    /// Weight of the KL penalty.
    pub beta: f64,
}

/// How to train a stacked auto-encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GreedyConfig {
    /// Hidden widths, input side first (the last is the code).
    pub hidden: Vec<usize>,
    /// Epochs per layer.
    pub epochs: usize,
    /// Epochs of end-to-end fine-tuning of the stack on reconstruction.
    pub fine_tune_epochs: usize,
    /// Samples per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Fraction of inputs masked to zero (denoising auto-encoder); 0 for none.
    pub corruption: f64,
    /// KL sparsity penalty.
    pub sparsity: Option<Sparsity>,
    /// Sigmoid on the input layer's reconstruction (inputs in [0, 1]); linear otherwise.
    pub sigmoid_output: bool,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        Self {
            hidden: vec![256, 64],
            epochs: 10,
            fine_tune_epochs: 5,
            batch: 64,
            lr: 1e-3,
            corruption: 0.0,
            sparsity: None,
            sigmoid_output: true,
            seed: 0,
        }
    }
}

/// One epoch of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GreedyRecord {
    /// `layer-1`, `layer-2`, …, or `fine-tune`.
    pub stage: String,
    /// 1-based epoch within the stage.
    pub epoch: usize,
    /// Mean loss (reconstruction MSE plus the sparsity penalty) over the epoch's batches.
    pub loss: f64,
}

fn batch_tensor<B: Backend>(rows: &[f32], idx: &[usize], dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut v = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        v.extend_from_slice(&rows[i * dim..(i + 1) * dim]);
    }
    Tensor::from_data(TensorData::new(v, [idx.len(), dim]), device)
}

/// The masked copy of a batch (masking noise), drawn from `rng`.
fn corrupt<B: Backend>(x: &Tensor<B, 2>, fraction: f64, rng: &mut ChaCha8Rng, device: &B::Device) -> Tensor<B, 2> {
    if fraction <= 0.0 {
        return x.clone();
    }
    let [n, d] = x.dims();
    let mask: Vec<f32> = (0..n * d).map(|_| if rng.random::<f64>() < fraction { 0.0 } else { 1.0 }).collect();
    x.clone() * Tensor::from_data(TensorData::new(mask, [n, d]), device)
}

/// Runs `epochs` epochs of `step` over shuffled batches of `rows`, reporting each epoch's mean loss.
fn epochs_of<B: AutodiffBackend, M: AutodiffModule<B>>(
    mut module: M,
    rows: &[f32],
    dim: usize,
    stage: &str,
    stage_id: u64,
    config: &GreedyConfig,
    device: &B::Device,
    on_epoch: &mut impl FnMut(&GreedyRecord),
    forward: impl Fn(&M, Tensor<B, 2>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>),
) -> Result<M, TrainError> {
    let n = rows.len() / dim;
    let mut optim = AdamConfig::new().init::<B, M>();
    for epoch in 0..config.epochs_for(stage) {
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(config.seed, stage_id * 100_000 + epoch as u64, 2));
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let (mut total, mut count) = (0.0, 0usize);
        for idx in order.chunks(config.batch.max(1)) {
            let x = batch_tensor::<B>(rows, idx, dim, device);
            let noisy = corrupt(&x, config.corruption, &mut rng, device);
            let (recon, code) = forward(&module, noisy);
            let mut loss = (recon - x).powi_scalar(2).mean();
            if let (Some(s), Some(code)) = (config.sparsity, code) {
                loss = loss + kl_sparsity(code, s.rho) * s.beta;
            }
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                return Err(TrainError::Input(format!(
                    "auto-encoder training diverged in {stage}, epoch {} (loss {value}): lower the learning rate",
                    epoch + 1
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &module);
            module = optim.step(config.lr, module, grads);
            total += value * idx.len() as f64;
            count += idx.len();
        }
        on_epoch(&GreedyRecord { stage: stage.to_string(), epoch: epoch + 1, loss: total / count.max(1) as f64 });
    }
    Ok(module)
}

impl GreedyConfig {
    fn epochs_for(&self, stage: &str) -> usize {
        if stage == "fine-tune" { self.fine_tune_epochs } else { self.epochs }
    }

    /// Checks the numbers.
    pub fn validate(&self, dim: usize, rows: usize) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Input(format!("stacked auto-encoder: {m}")));
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return bad("at least one hidden layer of at least one unit");
        }
        if dim == 0 || rows == 0 {
            return bad("no training data");
        }
        if self.batch == 0 || !(self.lr > 0.0 && self.lr.is_finite()) || !(0.0..1.0).contains(&self.corruption) {
            return bad("batch ≥ 1, lr > 0 and corruption in [0, 1) are required");
        }
        if let Some(s) = self.sparsity
            && !(s.rho > 0.0 && s.rho < 1.0 && s.beta >= 0.0)
        {
            return bad("sparsity needs 0 < rho < 1 and beta ≥ 0");
        }
        Ok(())
    }
}

/// [`train_stacked`] kept in a run folder: the auto-encoder as `pretrain/autoencoder.mpk` and every stage's losses
/// in `pretrain/log.jsonl` (each written atomically, the model last); a run that resumes reads the model back
/// instead of training again. `rows` is called only when training is needed. Progress lines go to standard error
/// unless `quiet`.
pub fn train_stacked_in_run<B: AutodiffBackend>(
    run: &crate::run::RunDir,
    rows: impl FnOnce() -> Result<Vec<f32>, TrainError>,
    dim: usize,
    config: &GreedyConfig,
    device: &B::Device,
    quiet: bool,
) -> Result<Autoencoder<B>, TrainError> {
    let model_path = run.file("pretrain/autoencoder.mpk");
    if model_path.is_file() {
        let template =
            vesalius_nets::AutoencoderConfig::new(dim, config.hidden.clone()).with_sigmoid_output(config.sigmoid_output).init::<B>(device);
        return crate::engine::load_module(template, &model_path, device);
    }
    let data = rows()?;
    let mut lines = String::new();
    let ae = train_stacked::<B>(&data, dim, config, device, |r| {
        lines.push_str(&serde_json::to_string(r).unwrap_or_default());
        lines.push('\n');
        if !quiet {
            eprintln!("pre-training {:<10} epoch {:>3}  reconstruction loss {:.5}", r.stage, r.epoch, r.loss);
        }
    })?;
    let dir = run.file("pretrain");
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::Internal(format!("{}: {e}", dir.display())))?;
    vesalius_io::write_atomic(&run.file("pretrain/log.jsonl"), lines.as_bytes()).map_err(|e| TrainError::Internal(e.to_string()))?;
    crate::engine::save_module(&ae, &model_path)?;
    Ok(ae)
}

/// Trains a stacked auto-encoder on `data` (rows of `dim` values) greedily, layer by layer, then fine-tunes it end
/// to end; `on_epoch` sees every epoch of every stage.
pub fn train_stacked<B: AutodiffBackend>(
    data: &[f32],
    dim: usize,
    config: &GreedyConfig,
    device: &B::Device,
    mut on_epoch: impl FnMut(&GreedyRecord),
) -> Result<Autoencoder<B>, TrainError> {
    if dim == 0 || !data.len().is_multiple_of(dim) {
        return Err(TrainError::Input(format!("stacked auto-encoder: {} values are not rows of {dim}", data.len())));
    }
    config.validate(dim, data.len() / dim)?;
    B::seed(device, config.seed);
    let mut layers = Vec::with_capacity(config.hidden.len());
    let mut inputs = data.to_vec();
    let mut width = dim;
    for (i, &h) in config.hidden.iter().enumerate() {
        let layer = AutoencoderLayer::<B>::new(width, h, i > 0, i == 0 && config.sigmoid_output, device);
        let stage = format!("layer-{}", i + 1);
        let layer = epochs_of(layer, &inputs, width, &stage, i as u64 + 1, config, device, &mut on_epoch, |m, x| {
            let code = m.encode(x);
            (m.decode(code.clone()), Some(code))
        })?;
        // The codes of the whole set are the next layer's inputs.
        let inner = layer.valid();
        let n = inputs.len() / width;
        let mut codes = Vec::with_capacity(n * h);
        for chunk in (0..n).collect::<Vec<_>>().chunks(1024) {
            let x = batch_tensor::<B::InnerBackend>(&inputs, chunk, width, device);
            codes.extend(inner.encode(x).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
        }
        inputs = codes;
        width = h;
        layers.push(layer);
    }
    let stack = Autoencoder::from_layers(layers, config.sigmoid_output);
    epochs_of(stack, data, dim, "fine-tune", 0, config, device, &mut on_epoch, |m, x| {
        let code = m.encode(x);
        (m.decode(code.clone()), Some(code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::Autodiff<burn::backend::Flex>;

    /// burn's random generator is process-wide: training tests take turns.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Samples of a 3-parameter family in 32 dimensions, values in (0, 1).
    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                let (a, b, c) = ((i % 7) as f32 / 7.0, (i % 5) as f32 / 5.0, (i % 3) as f32 / 3.0);
                (0..32).map(move |j| 0.5 + 0.15 * ((a * 6.0 + j as f32 * 0.3).sin() + (b * 4.0 - j as f32 * 0.2).cos() + c - 0.5))
            })
            .collect()
    }

    #[test]
    fn every_stage_lowers_its_loss_and_the_stack_reconstructs() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let x = data(210);
        let config = GreedyConfig { hidden: vec![16, 6], epochs: 40, fine_tune_epochs: 60, batch: 30, lr: 5e-3, ..Default::default() };
        let mut log = Vec::new();
        let ae = train_stacked::<B>(&x, 32, &config, &Default::default(), |r| log.push(r.clone())).unwrap();
        for stage in ["layer-1", "layer-2", "fine-tune"] {
            let losses: Vec<f64> = log.iter().filter(|r| r.stage == stage).map(|r| r.loss).collect();
            assert!(losses.last().unwrap() < &(0.5 * losses[0]), "{stage}: {losses:?}");
        }
        // The 6-unit code keeps most of the data's variance (0.024).
        let t = Tensor::<burn::backend::Flex, 2>::from_data(TensorData::new(x.clone(), [210, 32]), &Default::default());
        let mse: f32 = (ae.valid().forward(t.clone()) - t).powi_scalar(2).mean().into_scalar();
        assert!(mse < 0.1 * 0.024, "reconstruction MSE {mse}");
    }

    #[test]
    fn the_sparsity_penalty_lowers_the_mean_code_activation() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let x = data(140);
        let run = |sparsity| {
            let config = GreedyConfig {
                hidden: vec![24],
                epochs: 30,
                fine_tune_epochs: 0,
                batch: 20,
                lr: 5e-3,
                sparsity,
                seed: 4,
                ..Default::default()
            };
            let ae = train_stacked::<B>(&x, 32, &config, &Default::default(), |_| {}).unwrap();
            let t = Tensor::<burn::backend::Flex, 2>::from_data(TensorData::new(x.clone(), [140, 32]), &Default::default());
            let mean: f32 = ae.valid().encode(t).mean().into_scalar();
            mean
        };
        let (plain, sparse) = (run(None), run(Some(Sparsity { rho: 0.05, beta: 1.0 })));
        assert!(sparse < 0.5 * plain && sparse < 0.15, "mean activation {plain} without, {sparse} with the KL penalty");
    }

    #[test]
    fn training_is_repeatable_and_bad_settings_are_named() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let x = data(60);
        let config = GreedyConfig { hidden: vec![8], epochs: 3, fine_tune_epochs: 1, batch: 16, corruption: 0.3, ..Default::default() };
        let run = || {
            let mut log = Vec::new();
            train_stacked::<B>(&x, 32, &config, &Default::default(), |r| log.push(r.loss)).unwrap();
            log
        };
        assert_eq!(run(), run());
        let e = train_stacked::<B>(&x, 32, &GreedyConfig { corruption: 1.5, ..config.clone() }, &Default::default(), |_| {}).unwrap_err();
        assert!(e.to_string().contains("corruption"), "{e}");
        let e = train_stacked::<B>(&x[..33], 32, &config, &Default::default(), |_| {}).unwrap_err();
        assert!(e.to_string().contains("not rows of 32"), "{e}");
    }
}
