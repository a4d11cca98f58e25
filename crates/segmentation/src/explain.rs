//! Explanations of a segmentation run's output for a region: which voxels of the input the mean probability (or,
//! for the gradient methods, the mean logit) of a class over a region of interest depends on. The region is the
//! voxels the run segments as the class (or a mask given with the image); the explanation is computed on one
//! network patch centred on the region, in the plan's grid, and resampled to the image's grid (zero outside the
//! patch). Methods are those of `vesalius-explain`: saliency, SmoothGrad, Grad-CAM at the last decoder level,
//! coarse-to-fine occlusion and LIME over SLIC supervoxels.
use crate::network::{SegNet, SegNetwork};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use vesalius_data::transforms::{Subject, resample_onto};
use vesalius_explain::{Input, LimeConfig, Method, gradcam, lime, occlusion_coarse_to_fine, saliency, slic, smoothgrad};
use vesalius_io::Image;

use crate::plan::Plans;
use crate::recipe::SegRecipe;
use crate::train::sliding_predict;
use crate::{RunDir, SegError};

/// Settings of [`explain`]; `None` picks the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SegExplainOptions {
    /// The class explained (default 1, the first foreground class).
    pub class: Option<usize>,
    /// SmoothGrad copies (default 8) or LIME samples (default 200).
    pub samples: Option<usize>,
    /// LIME supervoxels (default 50).
    pub segments: Option<usize>,
    /// Seed of SmoothGrad's noise and LIME's masks.
    pub seed: u64,
}

/// An explanation on the image's grid.
#[derive(Clone, Debug, Serialize)]
pub struct SegExplanation {
    /// The method.
    pub method: Method,
    /// The class explained.
    pub class: usize,
    /// Voxels of the region of interest inside the explained patch (plan grid).
    pub roi_voxels: usize,
    /// The model's mean probability of the class over the region.
    pub probability: f32,
    /// The patch explained: origin and shape on the plan grid (x, y, z).
    pub patch: ([usize; 3], [usize; 3]),
    /// LIME: supervoxels by decreasing absolute weight.
    pub lime_top: Option<Vec<(u32, f64)>>,
    /// LIME: the surrogate's weighted R².
    pub lime_r2: Option<f64>,
    /// Number of model evaluations of occlusion.
    pub evaluations: Option<usize>,
    /// The map on the image's grid.
    #[serde(skip)]
    pub map: Option<Image>,
}

fn pad3(v: &[usize]) -> [usize; 3] {
    let mut o = [1usize; 3];
    o[..v.len().min(3)].copy_from_slice(&v[..v.len().min(3)]);
    o
}

/// Explains `model` (trained with `plans`, `recipe`) on `image` for the region `roi` (a mask on the image's grid;
/// `None`: where the model predicts the class).
pub fn explain_image<AB: AutodiffBackend>(
    model: &SegNet<AB>,
    plans: &Plans,
    recipe: &SegRecipe,
    image: &Image,
    roi: Option<&Image>,
    method: Method,
    opts: &SegExplainOptions,
    device: &AB::Device,
) -> Result<SegExplanation, SegError> {
    if image.channels() != plans.channels {
        return Err(SegError::Input(format!("the model takes {} channel(s), the image has {}", plans.channels, image.channels())));
    }
    let class = opts.class.unwrap_or(1);
    if class >= plans.classes {
        return Err(SegError::Input(format!("class {class} does not exist: the model has {} classes", plans.classes)));
    }
    let inner = model.valid();
    let pre = plans.preprocess().apply_seeded(Subject::new(image.clone()), 0)?.image;
    let shape = pad3(pre.shape());
    let n: usize = shape.iter().product();
    let region: Vec<bool> = match roi {
        Some(mask) => {
            let on = resample_onto(mask, pre.shape(), pre.affine(), true)?;
            on.data().iter().map(|&v| v > 0.0).collect()
        }
        None => {
            let pred = sliding_predict(&inner, &pre, plans, recipe, false, device)?;
            pred.labels.iter().map(|&l| l as usize == class).collect()
        }
    };
    let count = region.iter().filter(|&&r| r).count();
    if count == 0 {
        return Err(SegError::Input(format!("no voxel of class {class} is segmented in this image: give a region (--mask)")));
    }
    // the patch: the plan's patch size, centred on the region's centroid, inside the grid
    let mut centre = [0f64; 3];
    for (i, _) in region.iter().enumerate().filter(|(_, r)| **r) {
        let c = [i % shape[0], (i / shape[0]) % shape[1], i / (shape[0] * shape[1])];
        for a in 0..3 {
            centre[a] += c[a] as f64 / count as f64;
        }
    }
    let size: [usize; 3] = std::array::from_fn(|a| pad3(&plans.patch)[a].min(shape[a]));
    let origin: [usize; 3] =
        std::array::from_fn(|a| ((centre[a] - size[a] as f64 / 2.0).round().max(0.0) as usize).min(shape[a] - size[a]));
    let m: usize = size.iter().product();
    let c = plans.channels;
    let mut data = vec![0f32; c * m];
    let mut inside = vec![false; m];
    for z in 0..size[2] {
        for y in 0..size[1] {
            for x in 0..size[0] {
                let src = (origin[0] + x) + shape[0] * ((origin[1] + y) + shape[1] * (origin[2] + z));
                let dst = x + size[0] * (y + size[1] * z);
                for ch in 0..c {
                    data[ch * m + dst] = pre.data()[ch * n + src];
                }
                inside[dst] = region[src];
            }
        }
    }
    let roi_voxels = inside.iter().filter(|&&r| r).count();
    let x = Input::new(data, c, vec![size[2], size[1], size[0]]).map_err(SegError::Internal)?;
    let dims = [size[2], size[1], size[0]];
    let weights: Vec<f32> = inside.iter().map(|&r| if r { 1.0 / roi_voxels as f32 } else { 0.0 }).collect();
    let w_inner = Tensor::<AB::InnerBackend, 1>::from_data(TensorData::new(weights.clone(), [m]), device);
    // the mean class probability over the region, for a batch of inputs in one forward pass
    let w_row = w_inner.reshape([1, m]);
    let mut score = |batch: &[Vec<f32>]| -> Vec<f32> {
        let b = batch.len();
        let flat: Vec<f32> = batch.iter().flatten().copied().collect();
        let t = Tensor::<AB::InnerBackend, 5>::from_data(TensorData::new(flat, [b, c, dims[0], dims[1], dims[2]]), device);
        let p = burn::tensor::activation::softmax(inner.logits(t), 1).slice([0..b, class..class + 1]).reshape([b, m]);
        (p * w_row.clone()).sum_dim(1).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()
    };
    let w_ad = Tensor::<AB, 1>::from_data(TensorData::new(weights, [m]), device);
    let mut grad = |v: &[f32]| -> Vec<f32> {
        let t = Tensor::<AB, 5>::from_data(TensorData::new(v.to_vec(), [1, c, dims[0], dims[1], dims[2]]), device).require_grad();
        let logit = model.logits(t.clone()).slice([0..1, class..class + 1]).reshape([m]);
        let grads = (logit * w_ad.clone()).sum().backward();
        t.grad(&grads).map(|g| g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()).unwrap_or_else(|| vec![0.0; v.len()])
    };
    let (mut lime_top, mut lime_r2, mut evaluations) = (None, None, None);
    let local = match method {
        Method::Saliency => saliency(&x, &mut grad),
        Method::SmoothGrad => smoothgrad(&x, &mut grad, opts.samples.unwrap_or(8), 0.15, opts.seed),
        Method::GradCam => {
            let t = Tensor::<AB, 5>::from_data(TensorData::new(x.data.clone(), [1, c, dims[0], dims[1], dims[2]]), device);
            let h = model.features(t);
            let leaf = Tensor::<AB, 5>::from_inner(h.inner()).require_grad();
            let logit = model.head(leaf.clone()).slice([0..1, class..class + 1]).reshape([m]);
            let grads = (logit * w_ad.clone()).sum().backward();
            let [_, k, fz, fy, fx] = leaf.dims();
            let g = leaf.grad(&grads).map(|g| g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()).unwrap_or_default();
            let act = leaf.inner().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            if g.len() != act.len() {
                return Err(SegError::Internal("Grad-CAM gradients are missing".into()));
            }
            gradcam(&act, &g, k, &[fz, fy, fx], &dims)
        }
        Method::Occlusion => {
            let p: Vec<usize> = dims.iter().map(|&d| (d / 4).max(2)).collect();
            let (map, evals) = occlusion_coarse_to_fine(&x, &mut score, &p, 0.0, 0.25, 8);
            evaluations = Some(evals);
            map
        }
        Method::Lime => {
            let seg = slic(&x, opts.segments.unwrap_or(50), 0.1);
            let cfg = LimeConfig { samples: opts.samples.unwrap_or(200), seed: opts.seed, batch: 8, ..LimeConfig::default() };
            let r = lime(&x, &seg, &mut score, &cfg);
            lime_top = Some(r.top.clone());
            lime_r2 = Some(r.r2);
            r.map
        }
    };
    let probability = score(std::slice::from_ref(&x.data))[0];
    // back into the plan grid (zero outside the patch), then onto the image's grid
    let mut full = vec![0f32; n];
    for z in 0..size[2] {
        for y in 0..size[1] {
            for xx in 0..size[0] {
                full[(origin[0] + xx) + shape[0] * ((origin[1] + y) + shape[1] * (origin[2] + z))] =
                    local[xx + size[0] * (y + size[1] * z)];
            }
        }
    }
    let on_plan = Image::new(full, pre.shape().to_vec(), 1, *pre.affine(), "float32")?;
    let map = resample_onto(&on_plan, image.shape(), image.affine(), false)?;
    Ok(SegExplanation { method, class, roi_voxels, probability, patch: (origin, size), lime_top, lime_r2, evaluations, map: Some(map) })
}

/// Explains a run's best model on the image at `image` (with its sibling channel files), for the region in `roi`
/// or where the model segments the class.
pub fn explain<AB: AutodiffBackend>(
    run: &RunDir,
    image: &std::path::Path,
    roi: Option<&std::path::Path>,
    method: Method,
    opts: &SegExplainOptions,
    device: &AB::Device,
) -> Result<(SegExplanation, Image), SegError> {
    let predictor = crate::infer::Predictor::<AB>::load(run, device)?;
    let img = predictor.read_case(image)?;
    let mask = roi.map(|p| vesalius_io::load(p).map_err(SegError::from)).transpose()?;
    let e = explain_image(predictor.model(), &predictor.plans, &predictor.recipe, &img, mask.as_ref(), method, opts, device)?;
    Ok((e, img))
}

/// A randomly initialised U-Net of a run's plan (for the model-randomisation check), seeded.
pub fn random_model<B: Backend>(plans: &Plans, seed: u64, device: &B::Device) -> SegNet<B> {
    B::seed(device, seed);
    SegNet::UNet(plans.unet().init::<B>(device))
}
