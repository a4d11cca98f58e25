//! Explanations of a trained classifier's decision for one image: saliency, SmoothGrad, Grad-CAM, occlusion and
//! LIME (`vesalius-explain`), computed on the network's input grid and resampled to the image's own pixels.
//!
//! The explained score is the chosen class's logit for the gradient methods (its probability's ranking without
//! the softmax's saturation) and its probability for occlusion and LIME, which compare scores of perturbed copies.
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};
use vesalius_data::source::prepare_2d;
use vesalius_explain::{Input, upsample};
use vesalius_nets::Classifier;
use vesalius_nets::explain::{Link, Settings, explain_output, scores};

use crate::CadxError;
use crate::run::{ClassificationRun, RunDir, RunInfo};

pub use vesalius_explain::Method;

/// Settings of [`explain`]; `None` picks the method's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExplainOptions {
    /// The class explained (default: the predicted one).
    pub class: Option<usize>,
    /// Grad-CAM: the layer (default: the last convolutional one).
    pub layer: Option<usize>,
    /// SmoothGrad copies (default 25) or LIME samples (default 1000).
    pub samples: Option<usize>,
    /// Occlusion patch side in network pixels (default: an eighth of the input, at least 2).
    pub patch: Option<usize>,
    /// Occlusion stride in network pixels (default: half the patch).
    pub stride: Option<usize>,
    /// LIME superpixels (default 50).
    pub segments: Option<usize>,
    /// Seed of SmoothGrad's noise and LIME's masks.
    pub seed: u64,
}

/// An explanation on the image's own pixel grid.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The method.
    pub method: Method,
    /// The class explained, by index and name.
    pub class: usize,
    /// Its name.
    pub class_name: String,
    /// The model's probability of that class for the image.
    pub probability: f32,
    /// Grad-CAM: the layer used.
    pub layer: Option<usize>,
    /// LIME: the superpixels by decreasing absolute weight (segment, weight), and the surrogate's weighted R².
    pub lime_top: Option<Vec<(u32, f64)>>,
    /// LIME: the surrogate's weighted R².
    pub lime_r2: Option<f64>,
    /// The map, first image axis fastest (the image's layout).
    #[serde(skip)]
    pub map: Vec<f32>,
    /// LIME: each pixel's superpixel, first axis fastest.
    #[serde(skip)]
    pub segments: Option<Vec<u32>>,
}

/// The model's input for an image file, as training prepared it (channels, side), and the image.
pub fn input_of(info: &RunInfo, path: &Path) -> Result<(Input, vesalius_io::Image), CadxError> {
    let (c, s) = (info.model.in_channels, info.model.input_size);
    let img = vesalius_io::load(path)?;
    let pixels = prepare_2d(&img, c, s, path)?;
    let input = Input::new(pixels, c, vec![s, s]).map_err(CadxError::Internal)?;
    Ok((input, img))
}

fn probs<B: Backend>(model: &Classifier<B>, batch: &[Vec<f32>], c: usize, s: usize, multi: bool, device: &B::Device) -> Vec<Vec<f32>> {
    scores(model, batch, c, s, if multi { Link::Sigmoid } else { Link::Softmax }, device)
}

/// Explains `model`'s decision for one prepared input (`info` describes the model); the map is on the network's
/// `side × side` grid, row-major.
pub fn explain_input<AB: AutodiffBackend>(
    model: &Classifier<AB>,
    info: &RunInfo,
    x: &Input,
    method: Method,
    opts: &ExplainOptions,
    device: &AB::Device,
) -> Result<(Vec<f32>, Explanation), CadxError> {
    let (c, s, multi) = (info.model.in_channels, info.model.input_size, info.multi_label);
    let p0 = probs(&model.valid(), std::slice::from_ref(&x.data), c, s, multi, device).remove(0);
    let class = match opts.class {
        Some(k) if k < p0.len() => k,
        Some(k) => return Err(CadxError::Input(format!("class {k} does not exist: the model has {} outputs", p0.len()))),
        None => p0.iter().enumerate().fold(0, |b, (i, &v)| if v > p0[b] { i } else { b }),
    };
    let settings = Settings {
        layer: opts.layer,
        samples: opts.samples,
        patch: opts.patch,
        stride: opts.stride,
        segments: opts.segments,
        seed: opts.seed,
    };
    let link = if multi { Link::Sigmoid } else { Link::Softmax };
    let (map, d) = explain_output(model, x, class, link, method, &settings, device)
        .map_err(|m| CadxError::Input(format!("{:?}: {m}", info.model.arch)))?;
    let e = Explanation {
        method,
        class,
        class_name: info.classes.get(class).cloned().unwrap_or_else(|| class.to_string()),
        probability: p0[class],
        layer: d.layer,
        lime_top: d.lime_top,
        lime_r2: d.lime_r2,
        map: Vec::new(),
        segments: d.segments,
    };
    Ok((map, e))
}

/// Explains a run's best model on an image file; the map (and LIME's segments) are resampled to the image's
/// pixels.
pub fn explain<AB: AutodiffBackend>(
    run: &Path,
    image: &Path,
    method: Method,
    opts: &ExplainOptions,
    device: &AB::Device,
) -> Result<(Explanation, vesalius_io::Image), CadxError> {
    let dir = RunDir::new(run);
    let info = dir.read_classifier_info()?;
    let model = dir.load_best::<AB>(&info, device)?;
    let (x, img) = input_of(&info, image)?;
    let (map, mut e) = explain_input(&model, &info, &x, method, opts, device)?;
    let s = info.model.input_size;
    let (w, h) = (img.shape()[0], img.shape().get(1).copied().unwrap_or(1));
    // row-major (h, w) with w fastest is the image's own layout (first axis fastest)
    e.map = upsample(&map, &[s, s], &[h, w]);
    e.segments = e.segments.take().map(|seg| {
        (0..h * w)
            .map(|i| {
                let (y, xx) = (i / w, i % w);
                let (sy, sx) = (((y as f32 + 0.5) * s as f32 / h as f32) as usize, ((xx as f32 + 0.5) * s as f32 / w as f32) as usize);
                seg[sy.min(s - 1) * s + sx.min(s - 1)]
            })
            .collect()
    });
    Ok((e, img))
}
