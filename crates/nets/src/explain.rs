//! Explanations of one output of any [`Classifier`] for one input — saliency, SmoothGrad, Grad-CAM, occlusion and
//! LIME from `vesalius-explain`, with the gradients and forward passes they need computed by burn. The task crates
//! say which output is explained and how a run prepares its input; the map is on the network's input grid.
//!
//! The gradient methods explain the raw output (a logit, or a regression value), free of a softmax's saturation;
//! occlusion and LIME compare the output after `link` (a probability, or the value itself) over perturbed copies.
use burn::module::AutodiffModule;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use vesalius_explain::{Input, LimeConfig, Method, gradcam, lime, occlusion, saliency, slic, smoothgrad};

use crate::Classifier;

/// How outputs become the scores occlusion and LIME compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Class probabilities (single-label classification).
    Softmax,
    /// Independent probabilities (multi-label classification).
    Sigmoid,
    /// The outputs themselves (regression).
    Identity,
}

/// Method settings; `None` picks the method's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
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

/// What a method reports besides its map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Details {
    /// Grad-CAM: the layer used.
    pub layer: Option<usize>,
    /// LIME: superpixels by decreasing absolute weight.
    pub lime_top: Option<Vec<(u32, f64)>>,
    /// LIME: the surrogate's weighted R².
    pub lime_r2: Option<f64>,
    /// LIME: each network pixel's superpixel.
    pub segments: Option<Vec<u32>>,
}

fn tensor<B: Backend>(batch: &[Vec<f32>], c: usize, s: usize, device: &B::Device) -> Tensor<B, 4> {
    let flat: Vec<f32> = batch.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [batch.len(), c, s, s]), device)
}

/// The outputs after `link` for a batch of `c × s × s` inputs, one row per input.
pub fn scores<B: Backend>(model: &Classifier<B>, batch: &[Vec<f32>], c: usize, s: usize, link: Link, device: &B::Device) -> Vec<Vec<f32>> {
    let y = model.forward(tensor::<B>(batch, c, s, device));
    let y = match link {
        Link::Softmax => softmax(y, 1),
        Link::Sigmoid => sigmoid(y),
        Link::Identity => y,
    };
    let [_, k] = y.dims();
    let v: Vec<f32> = y.into_data().convert::<f32>().to_vec().unwrap_or_default();
    v.chunks(k.max(1)).map(<[f32]>::to_vec).collect()
}

/// Explains output `output` of `model` for the square input `x` (`channels × side × side`); the map is row-major on
/// the `side × side` grid. Errors name a missing layer or output.
pub fn explain_output<AB: AutodiffBackend>(
    model: &Classifier<AB>,
    x: &Input,
    output: usize,
    link: Link,
    method: Method,
    opts: &Settings,
    device: &AB::Device,
) -> Result<(Vec<f32>, Details), String> {
    let (c, s) = (x.channels, x.shape.last().copied().unwrap_or(1));
    if x.shape.len() != 2 || x.shape[0] != s {
        return Err(format!("a square 2D input is needed, not {:?}", x.shape));
    }
    let inner = model.valid();
    let k = scores(&inner, std::slice::from_ref(&x.data), c, s, Link::Identity, device).first().map_or(0, Vec::len);
    if output >= k {
        return Err(format!("output {output} does not exist: the model has {k}"));
    }
    let mut score = |batch: &[Vec<f32>]| -> Vec<f32> {
        batch.chunks(32).flat_map(|b| scores(&inner, b, c, s, link, device).into_iter().map(|p| p[output])).collect()
    };
    let mut grad = |v: &[f32]| -> Vec<f32> {
        let xt = tensor::<AB>(&[v.to_vec()], c, s, device).require_grad();
        let y = model.forward(xt.clone());
        let grads = y.slice([0..1, output..output + 1]).sum().backward();
        xt.grad(&grads).map(|g| g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()).unwrap_or_else(|| vec![0.0; v.len()])
    };
    let mut d = Details::default();
    let map = match method {
        Method::Saliency => saliency(x, &mut grad),
        Method::SmoothGrad => smoothgrad(x, &mut grad, opts.samples.unwrap_or(25), 0.15, opts.seed),
        Method::GradCam => {
            let n = model.cam_layers();
            if n == 0 {
                return Err("the network has no convolutional layer for Grad-CAM".into());
            }
            let l = opts.layer.unwrap_or(n - 1);
            if l >= n {
                return Err(format!("layer {l} does not exist: the network has {n} (0 to {})", n - 1));
            }
            d.layer = Some(l);
            let a = model.forward_to(tensor::<AB>(std::slice::from_ref(&x.data), c, s, device), l).ok_or("no activation maps")?;
            let leaf = Tensor::<AB, 4>::from_inner(a.inner()).require_grad();
            let y = model.forward_from(leaf.clone(), l).ok_or("no outputs")?;
            let grads = y.slice([0..1, output..output + 1]).sum().backward();
            let [_, ch, fh, fw] = leaf.dims();
            let g = leaf.grad(&grads).map(|g| g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()).unwrap_or_default();
            let act = leaf.inner().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            if g.len() != act.len() {
                return Err("Grad-CAM gradients are missing".into());
            }
            gradcam(&act, &g, ch, &[fh, fw], &[s, s])
        }
        Method::Occlusion => {
            let p = opts.patch.unwrap_or((s / 8).max(2)).clamp(1, s);
            let fill: f32 = x.data.iter().sum::<f32>() / x.data.len() as f32;
            let stride = opts.stride.unwrap_or((p / 2).max(1)).clamp(1, s);
            occlusion(x, &mut score, &[p, p], &[stride, stride], fill, 64)
        }
        Method::Lime => {
            let seg = slic(x, opts.segments.unwrap_or(50), 0.1);
            let cfg = LimeConfig { samples: opts.samples.unwrap_or(1000), seed: opts.seed, ..LimeConfig::default() };
            let r = lime(x, &seg, &mut score, &cfg);
            d.lime_top = Some(r.top.clone());
            d.lime_r2 = Some(r.r2);
            d.segments = Some(seg);
            r.map
        }
    };
    Ok((map, d))
}
