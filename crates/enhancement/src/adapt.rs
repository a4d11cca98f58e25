//! Self-supervised adaptation to the image being super-resolved, after SMORE (Zhao et al. 2021): a thick-slice
//! image is fine in its other two axes, so degrading one of those by the same thick-slice model and learning to
//! restore it gives training pairs from the image itself. A copy of the trained network is fine-tuned on them,
//! then enhances the planes that contain the thick axis — in the recipe's planes and, with `orthogonal`, in the
//! other such planes too, the two results averaged.
//!
//! Only the degraded input is used: no reference of the image is ever seen.
//!
//! ```
//! use vesalius_enhancement::adapt::own_pairs;
//! // A 64 × 40 × 4 volume, thick along axis 2 by 4: 4 planes across it, each degraded along both of its axes.
//! let coarse: Vec<f32> = (0..64 * 40 * 4).map(|i| ((i % 64) as f32 / 8.0).sin()).collect();
//! let pairs = own_pairs(&coarse, [64, 40, 4], 2, 4, 32);
//! assert_eq!(pairs.len(), 8);
//! assert_eq!((pairs[0].w, pairs[0].h), (64, 40));
//! assert_ne!(pairs[0].degraded[0], pairs[0].clean); // the input is the blurred plane, the target the plane
//! ```
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::EnhanceError;
use crate::baselines::bspline_upsample;
use crate::data::{EvalCase, PlaneAxes, TrainPlane, extract_plane};
use crate::model::{EnhanceNet, enhance_plane};
use crate::recipe::{AdaptSection, ModelSection};

/// The mean of each `factor` consecutive samples along `axis` (0 or 1) of a `[w, h]` plane, interpolated back
/// onto the plane's grid by cubic B-splines (the thick-slice model and the network's input, within the plane).
/// `None` when the axis holds fewer than two blocks.
pub fn thick_and_back(plane: &[f32], dims: [usize; 2], axis: usize, factor: usize) -> Option<Vec<f32>> {
    let n = dims[axis];
    let m = n / factor;
    if m < 2 {
        return None;
    }
    let mut cdims = dims;
    cdims[axis] = m;
    let mut coarse = vec![0.0f32; cdims[0] * cdims[1]];
    for j in 0..dims[1] {
        for i in 0..dims[0] {
            let (ci, cj) = if axis == 0 { (i / factor, j) } else { (i, j / factor) };
            if ci < cdims[0] && cj < cdims[1] {
                coarse[ci + cdims[0] * cj] += plane[i + dims[0] * j] / factor as f32;
            }
        }
    }
    let (fine, fdims) = bspline_upsample(&coarse, &cdims, axis, factor);
    // Samples beyond the last whole block repeat the last interpolated one.
    let mut out = Vec::with_capacity(dims[0] * dims[1]);
    for j in 0..dims[1] {
        for i in 0..dims[0] {
            out.push(fine[i.min(fdims[0] - 1) + fdims[0] * j.min(fdims[1] - 1)]);
        }
    }
    Some(out)
}

/// Training pairs from a thick-slice image itself: every plane across the thick `axis` of the (normalised)
/// `coarse` volume, degraded along each of its two axes in turn by `factor` (input) against itself (target).
/// Planes in which no `patch × patch` patch fits are left out.
pub fn own_pairs(coarse: &[f32], shape: [usize; 3], axis: usize, factor: usize, patch: usize) -> Vec<TrainPlane> {
    let (a, b) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let axes = PlaneAxes { u: a, v: b, across: axis };
    let mut out = Vec::new();
    for k in 0..shape[axis] {
        let (w, h, plane) = extract_plane(coarse, shape, axes, k);
        for along in 0..2 {
            let Some(input) = thick_and_back(&plane, [w, h], along, factor) else {
                continue;
            };
            let pair = TrainPlane {
                w,
                h,
                clean: plane.clone(),
                degraded: vec![input],
                blocked_u: Vec::new(),
                blocked_v: Vec::new(),
                frames: Vec::new(),
            };
            if pair.fits(patch) {
                out.push(pair);
            }
        }
    }
    out
}

/// Fine-tunes `net` on `pairs` for `section.steps` Adam steps (MSE, the learning rate decayed by a half cosine,
/// seeded patches with random flips and transpositions) and returns it for inference.
pub fn adapt<B: Backend>(
    net: EnhanceNet<Autodiff<B>>,
    pairs: &[TrainPlane],
    section: &AdaptSection,
    device: &B::Device,
) -> Result<EnhanceNet<B>, EnhanceError> {
    if pairs.is_empty() {
        return Err(EnhanceError::Input(format!(
            "adaptation: no {0}×{0} patch fits in the image's planes across its thick axis (use a smaller adapt.patch)",
            section.patch
        )));
    }
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<Autodiff<B>, EnhanceNet<Autodiff<B>>>();
    let mut rng = ChaCha8Rng::seed_from_u64(section.seed);
    let (batch, patch) = (section.batch, section.patch);
    let mut net = net;
    for step in 0..section.steps {
        let lr = section.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / section.steps as f64).cos());
        let (mut inputs, mut targets) = (Vec::with_capacity(batch * patch * patch), Vec::with_capacity(batch * patch * patch));
        for _ in 0..batch {
            let (i, o) = pairs[rng.random_range(0..pairs.len())].sample(patch, &mut rng);
            inputs.extend(i);
            targets.extend(o);
        }
        let x = Tensor::<Autodiff<B>, 4>::from_data(TensorData::new(inputs, [batch, 1, patch, patch]), device);
        let y = Tensor::<Autodiff<B>, 4>::from_data(TensorData::new(targets, [batch, 1, patch, patch]), device);
        let loss = (net.forward(x, None) - y).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(lr, net, grads);
    }
    Ok(net.valid())
}

/// The other plane that contains the thick axis: `[other, thick]` for planes `axes` that contain it (`None`
/// when they do not).
pub fn orthogonal_axes(axes: PlaneAxes, thick: usize) -> Option<PlaneAxes> {
    if axes.u != thick && axes.v != thick {
        return None;
    }
    Some(PlaneAxes { u: axes.across, v: thick, across: if axes.u == thick { axes.v } else { axes.u } })
}

/// Enhances the planes `planes` (along `axes.across`) of a (normalised, fine-grid) volume in `axes`; with
/// `orthogonal`, also through the other planes that contain the `thick` axis — each cropped to those planes and a
/// margin of [`MARGIN`] voxels — and returns the mean of the two, one `w × h` plane per index of `planes`.
#[allow(clippy::too_many_arguments)] // one volume: its data, shape and planes, the network and its device
pub fn enhance_planes<B: Backend>(
    net: &EnhanceNet<B>,
    spec: &ModelSection,
    volume: &[f32],
    shape: [usize; 3],
    axes: PlaneAxes,
    thick: usize,
    orthogonal: bool,
    planes: std::ops::Range<usize>,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = planes
        .clone()
        .map(|k| {
            let (w, h, plane) = extract_plane(volume, shape, axes, k);
            enhance_plane(net, spec, &plane, w, h, device)
        })
        .collect();
    let Some(other) = orthogonal.then(|| orthogonal_axes(axes, thick)).flatten() else {
        return out;
    };
    // The other planes' width runs along `axes.across`: only the columns of `planes` (and a margin) are needed.
    let lo = planes.start.saturating_sub(MARGIN);
    let hi = (planes.end + MARGIN).min(shape[axes.across]);
    let (w, h) = (shape[axes.u], shape[axes.v]);
    for j in 0..shape[other.across] {
        let (ow, oh, plane) = extract_plane(volume, shape, other, j);
        let crop: Vec<f32> = (0..oh).flat_map(|y| plane[y * ow + lo..y * ow + hi].to_vec()).collect();
        let enhanced = enhance_plane(net, spec, &crop, hi - lo, oh, device);
        for (n, k) in planes.clone().enumerate() {
            for y in 0..oh {
                // Pixel (j, y) of primary plane k: `j` along the primary's other in-plane axis, `y` along the thick one.
                let (i, t) = if axes.u == thick { (y, j) } else { (j, y) };
                let at = i + w * t;
                out[n][at] = 0.5 * (out[n][at] + enhanced[y * (hi - lo) + k - lo]);
            }
        }
    }
    debug_assert!(out.iter().all(|p| p.len() == w * h));
    out
}

/// Voxels beyond the scored planes that the other planes keep for context (more than RED-CNN's receptive radius
/// of 20 at kernel 5).
pub const MARGIN: usize = 24;

/// Adapts to each case's volume and enhances it whole, once per volume (the planes of one volume are consecutive
/// cases), for evaluation.
pub struct AdaptedOutputs<B: Backend> {
    base: EnhanceNet<Autodiff<B>>,
    section: AdaptSection,
    spec: ModelSection,
    axes: PlaneAxes,
    thick: (usize, usize),
    last: Option<(usize, Vec<Vec<f32>>)>,
}

impl<B: Backend> AdaptedOutputs<B> {
    /// The outputs of a trained network `base` adapted as `section` says, for a model that thickens `thick.0` by
    /// `thick.1`, in planes `axes`.
    pub fn new(base: EnhanceNet<Autodiff<B>>, section: AdaptSection, spec: ModelSection, axes: PlaneAxes, thick: (usize, usize)) -> Self {
        Self { base, section, spec, axes, thick, last: None }
    }

    /// The adapted network's output on the case's plane (normalised); `None` for a case without a volume to adapt
    /// to (a held-out band of an image the network trained on).
    pub fn of(&mut self, c: &EvalCase, device: &B::Device) -> Result<Option<Vec<f32>>, EnhanceError> {
        let Some(v) = &c.volume else {
            return Ok(None);
        };
        if self.last.as_ref().is_none_or(|(key, _)| *key != v.key) {
            let s = &v.source;
            let (axis, factor) = self.thick;
            let pairs = own_pairs(&s.coarse, s.coarse_shape, axis, factor, self.section.patch);
            let net = adapt(self.base.clone(), &pairs, &self.section, device)?;
            let out =
                enhance_planes(&net, &self.spec, &s.input, s.shape, self.axes, axis, self.section.orthogonal, s.planes.clone(), device);
            self.last = Some((v.key, out));
        }
        let planes = &v.source.planes;
        match self.last.as_ref().and_then(|(_, out)| out.get(v.plane.wrapping_sub(planes.start))) {
            Some(plane) if planes.contains(&v.plane) => Ok(Some(plane.clone())),
            _ => Err(EnhanceError::Internal(format!("case {}: plane {} outside the volume's scored planes {planes:?}", c.id, v.plane))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thick_and_back_keeps_smooth_profiles_and_blurs_edges() {
        // A quadratic profile along axis 0 is interpolated back closely away from the borders; a step is blurred.
        let (w, h) = (64, 3);
        let smooth: Vec<f32> = (0..w * h).map(|i| ((i % w) as f32 - 32.0).powi(2) / 1024.0).collect();
        let back = thick_and_back(&smooth, [w, h], 0, 4).unwrap();
        for i in 24..40 {
            // Cubic splines reproduce a quadratic away from the borders; the block means exceed it by the
            // within-block variance, (4² − 1)/12 / 1024.
            let shift = 15.0 / 12.0 / 1024.0;
            assert!((back[i] - smooth[i] - shift).abs() < 1e-3, "{i}: {} vs {}", back[i], smooth[i] + shift);
        }
        let step: Vec<f32> = (0..w * h).map(|i| if i % w < 30 { 0.0 } else { 1.0 }).collect();
        let back = thick_and_back(&step, [w, h], 0, 4).unwrap();
        assert!(back[29] > 0.05 && back[30] < 0.95, "the edge is blurred: {} {}", back[29], back[30]);
        // Along axis 1 the transposed plane gives the transposed result.
        let transposed: Vec<f32> = (0..w * h).map(|i| smooth[(i / h) + w * (i % h)]).collect();
        let back_t = thick_and_back(&transposed, [h, w], 1, 4).unwrap();
        let back = thick_and_back(&smooth, [w, h], 0, 4).unwrap();
        assert!((0..w * h).all(|i| back_t[i] == back[(i / h) + w * (i % h)]));
        assert!(thick_and_back(&vec![0.0; w * 7], [w, 7], 1, 4).is_none()); // fewer than two blocks
    }

    #[test]
    fn pairs_come_from_planes_across_the_thick_axis() {
        let shape = [40, 36, 5];
        let coarse: Vec<f32> = (0..40 * 36 * 5).map(|i| (i % 40) as f32 + (i / 1440) as f32 * 100.0).collect();
        let pairs = own_pairs(&coarse, shape, 2, 4, 32);
        assert_eq!(pairs.len(), 10);
        // Plane k's target is slice k of the volume.
        for (n, p) in pairs.iter().enumerate() {
            assert_eq!(p.clean[0], (n / 2) as f32 * 100.0);
        }
        // The second pair of each plane is degraded along its rows' axis: a ramp along axis 0 is unchanged there.
        assert_eq!(pairs[1].degraded[0], pairs[1].clean);
        assert!(own_pairs(&coarse, shape, 2, 4, 37).is_empty()); // 36 rows hold no 37-pixel patch
    }

    #[test]
    fn orthogonal_planes_share_the_thick_axis() {
        let coronal = PlaneAxes::new(0, 2).unwrap();
        assert_eq!(orthogonal_axes(coronal, 2), Some(PlaneAxes { u: 1, v: 2, across: 0 }));
        assert_eq!(orthogonal_axes(PlaneAxes::new(2, 1).unwrap(), 2), Some(PlaneAxes { u: 0, v: 2, across: 1 }));
        assert_eq!(orthogonal_axes(PlaneAxes::new(0, 1).unwrap(), 2), None);
    }

    type B = burn::backend::Flex;

    #[test]
    fn planes_average_both_orientations_and_crops_keep_the_scored_planes_exact() {
        let device = Default::default();
        let spec = ModelSection { features: 4, kernel: 3, ..Default::default() };
        let net = crate::model::build::<B>(&spec, &device);
        let shape = [20, 64, 24];
        let volume: Vec<f32> = (0..20 * 64 * 24).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
        let coronal = PlaneAxes::new(0, 2).unwrap();
        let full = enhance_planes(&net, &spec, &volume, shape, coronal, 2, true, 0..64, &device);
        assert_eq!((full.len(), full[0].len()), (64, 20 * 24));
        // Pixel (x 3, z 7) of coronal plane y 30: the mean of the coronal and the sagittal network outputs there.
        let (w, h, plane) = extract_plane(&volume, shape, coronal, 30);
        let a = enhance_plane(&net, &spec, &plane, w, h, &device)[3 + 20 * 7];
        let sagittal = PlaneAxes::new(1, 2).unwrap();
        let (w, h, plane) = extract_plane(&volume, shape, sagittal, 3);
        let b = enhance_plane(&net, &spec, &plane, w, h, &device)[30 + 64 * 7];
        assert!((full[30][3 + 20 * 7] - 0.5 * (a + b)).abs() < 1e-6);
        // Scoring planes 30..33 crops the sagittal planes to 6..57, beyond the network's reach of 10 voxels.
        let some = enhance_planes(&net, &spec, &volume, shape, coronal, 2, true, 30..33, &device);
        for (n, k) in (30..33).enumerate() {
            let worst = some[n].iter().zip(&full[k]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "plane {k}: {worst}");
        }
        // Without the other orientation, the planes are the network's plain outputs.
        let plain = enhance_planes(&net, &spec, &volume, shape, coronal, 2, false, 30..31, &device);
        assert_eq!(plain[0][3 + 20 * 7], a);
    }

    #[test]
    fn adaptation_lowers_the_error_on_the_images_own_pairs() {
        let device = Default::default();
        let spec = ModelSection { features: 16, kernel: 3, ..Default::default() };
        // Bright squares on a dark ground: the network learns to sharpen the edges the block mean blurs.
        let shape = [48, 48, 3];
        let coarse: Vec<f32> = (0..48 * 48 * 3)
            .map(|i| {
                let (x, y, z) = (i % 48, (i / 48) % 48, i / 2304);
                if (x + z) % 12 < 5 && (y + 2 * z) % 10 < 6 { 0.8 } else { 0.2 }
            })
            .collect();
        let pairs = own_pairs(&coarse, shape, 2, 4, 24);
        let error = |net: &EnhanceNet<B>| -> f64 {
            pairs
                .iter()
                .map(|p| {
                    let out = enhance_plane(net, &spec, &p.degraded[0], p.w, p.h, &device);
                    out.iter().zip(&p.clean).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
                })
                .sum()
        };
        let section = AdaptSection { steps: 400, lr: 1e-3, batch: 4, patch: 24, ..Default::default() };
        let tuned = adapt::<B>(crate::model::build::<Autodiff<B>>(&spec, &device), &pairs, &section, &device).unwrap();
        let input_error: f64 =
            pairs.iter().map(|p| p.degraded[0].iter().zip(&p.clean).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()).sum();
        let adapted = error(&tuned);
        // Measured: 0.53 of the input's error.
        assert!(adapted < 0.65 * input_error, "adapted {adapted} vs the interpolated input's {input_error}");
        let section = AdaptSection { patch: 49, ..section };
        assert!(adapt::<B>(crate::model::build::<Autodiff<B>>(&spec, &device), &[], &section, &device).is_err());
    }
}
