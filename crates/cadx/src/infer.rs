//! Inference: class probabilities for datasets and files, and evaluation reports.
use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use vesalius_data::batch::{BatchTargets, ClassificationBatch, ClassificationBatcher, SeededItem};
use vesalius_data::dataset::ClassificationDataset;
use vesalius_data::source::{Label, prepare_2d};
use vesalius_eval::classification::Targets;
use vesalius_nets::Classifier;

use crate::CadxError;
use crate::loss::{binary_cross_entropy, cross_entropy};
use crate::run::RunInfo;

/// Loss of one batch: cross-entropy for classes, binary cross-entropy for labels.
pub fn batch_loss<B: Backend>(logits: Tensor<B, 2>, targets: BatchTargets<B>, weights: Option<&[f32]>) -> Tensor<B, 1> {
    match targets {
        BatchTargets::Classes(t) => cross_entropy(logits, t, weights),
        BatchTargets::Multi(t) => binary_cross_entropy(logits, t, weights),
    }
}

/// Probabilities from logits: softmax over classes, or a sigmoid per label.
pub fn probabilities<B: Backend>(logits: Tensor<B, 2>, multi_label: bool) -> Tensor<B, 2> {
    if multi_label { sigmoid(logits) } else { softmax(logits, 1) }
}

/// Rows of a `[n, k]` tensor.
pub fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [_, k] = t.dims();
    let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap_or_default();
    v.chunks(k.max(1)).map(<[f32]>::to_vec).collect()
}

/// Probabilities for every item of `data` (in order) and the mean loss over them.
pub fn predict_dataset<B: Backend>(
    model: &Classifier<B>,
    data: &ClassificationDataset,
    multi_label: bool,
    batch_size: usize,
    device: &B::Device,
) -> (Vec<Vec<f32>>, f64) {
    let batcher = ClassificationBatcher { channels: data.channels, size: data.size, augment: None };
    let mut scores = Vec::with_capacity(data.len());
    let mut loss_sum = 0.0;
    let n = data.len();
    let bar = vesalius_train::progress::bar(n as u64, "inference", false);
    let mut start = 0;
    while start < n {
        let end = (start + batch_size).min(n);
        let items: Vec<SeededItem> = (start..end).filter_map(|i| data.get(i)).map(|item| SeededItem { item, seed: 0 }).collect();
        let batch: ClassificationBatch<B> = batcher.batch(items, device);
        let logits = model.forward(batch.images);
        let loss: f32 = batch_loss(logits.clone(), batch.targets, None).into_scalar().elem();
        loss_sum += loss as f64 * (end - start) as f64;
        scores.extend(rows(probabilities(logits, multi_label)));
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    (scores, if n > 0 { loss_sum / n as f64 } else { f64::NAN })
}

/// The targets of `data` in the evaluation crate's form.
pub fn targets_of(data: &ClassificationDataset) -> Targets {
    let labels: Vec<&Label> = data.labels().collect();
    match labels.first() {
        Some(Label::Multi(_)) => {
            Targets::Multi(labels.iter().map(|l| if let Label::Multi(f) = l { f.clone() } else { Vec::new() }).collect())
        }
        _ => Targets::Single(labels.iter().map(|l| if let Label::Class(c) = l { *c } else { 0 }).collect()),
    }
}

/// A batch of image files `[n, channels, size, size]`, converted and resized as in training.
pub fn files_batch<B: Backend>(info: &RunInfo, files: &[&Path], device: &B::Device) -> Result<Tensor<B, 4>, CadxError> {
    let (c, s) = (info.model.in_channels, info.model.input_size);
    let mut pixels = Vec::with_capacity(files.len() * c * s * s);
    for path in files {
        let img = vesalius_io::load(path)?;
        pixels.extend(prepare_2d(&img, c, s, path)?);
    }
    Ok(Tensor::<B, 4>::from_data(TensorData::new(pixels, [files.len(), c, s, s]), device))
}

/// Class probabilities for image files (PNG, JPEG, TIFF, 2D NIfTI), converted and resized as in training.
pub fn predict_files<B: Backend>(
    model: &Classifier<B>,
    info: &RunInfo,
    files: &[&Path],
    device: &B::Device,
) -> Result<Vec<Vec<f32>>, CadxError> {
    let mut out = Vec::with_capacity(files.len());
    let bar = vesalius_train::progress::bar(files.len() as u64, "prediction", false);
    for chunk in files.chunks(64) {
        let x = files_batch::<B>(info, chunk, device)?;
        out.extend(rows(probabilities(model.forward(x), info.multi_label)));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Embeddings of a batch of images `[n, c, s, s]`: the network's penultimate layer ([`Classifier::penultimate`]:
/// the fully connected features of LeNet-5, AlexNet and VGG, the globally averaged last maps of ResNet and
/// GoogLeNet, a stacked auto-encoder's code). The multi-layer perceptron is refused.
pub fn embed_batch<B: Backend>(model: &Classifier<B>, x: Tensor<B, 4>) -> Result<Vec<Vec<f32>>, CadxError> {
    let features = model
        .penultimate(x)
        .ok_or_else(|| CadxError::Input("a multi-layer perceptron has no penultimate features to take embeddings from".into()))?;
    Ok(rows(features))
}

/// Embeddings of image files (see [`embed_batch`]), converted and resized as in training, as features for classic
/// models (`vesalius embed`) or for retrieval (`vesalius index`).
pub fn embed_files<B: Backend>(
    model: &Classifier<B>,
    info: &RunInfo,
    files: &[&Path],
    device: &B::Device,
) -> Result<Vec<Vec<f32>>, CadxError> {
    let mut out = Vec::with_capacity(files.len());
    for chunk in files.chunks(64) {
        out.extend(embed_batch(model, files_batch::<B>(info, chunk, device)?)?);
    }
    Ok(out)
}
