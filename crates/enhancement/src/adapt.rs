//! Self-supervised adaptation to the image being super-resolved, after SMORE (Zhao et al. 2021): a thick-slice
//! image is fine in its other two axes, so degrading one of those by the same thick-slice model and learning to
//! restore it gives training pairs from the image itself. A copy of the trained network is fine-tuned on them,
//! then enhances the planes that contain the thick axis — in the recipe's planes and, with `orthogonal`, in the
//! other such planes too, the two results averaged.
//!
//! An under-sampled k-space image holds its own pairs too, after SSDU (Yaman et al. 2020) in its zero-shot form
//! (Yaman et al. 2022): [`adapt_kspace`] splits each plane's measured lines at random into the network's input and
//! a held-out part, and fine-tunes the CRNN to predict the held-out lines in k-space.
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
use crate::data::{EvalCase, Measured, PlaneAxes, TrainPlane, extract_plane};
use crate::model::{EnhanceNet, enhance_plane, reconstruct_plane};
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
                scale: 1.0,
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

/// Lines of a plane's measurements that always stay in the network's input during [`adapt_kspace`]: the run of
/// measured lines around the lowest frequency (line 0, wrapping to `h − 1`), the fully sampled centre.
pub fn protected_lines(lines: &[bool]) -> Vec<bool> {
    let h = lines.len();
    let mut keep = vec![false; h];
    for y in (0..h).take_while(|&y| lines[y]) {
        keep[y] = true;
    }
    for y in (1..h).rev().take_while(|&y| lines[y]) {
        keep[y] = true;
    }
    keep
}

/// Splits measured `lines` at random: returns `(input, held_out)`, the held-out lines `round(holdout · measured)`
/// of those outside the fully sampled centre ([`protected_lines`]), at most all of them.
pub fn split_lines(lines: &[bool], holdout: f64, rng: &mut ChaCha8Rng) -> (Vec<bool>, Vec<bool>) {
    use rand::seq::SliceRandom;
    let protected = protected_lines(lines);
    let mut free: Vec<usize> = (0..lines.len()).filter(|&y| lines[y] && !protected[y]).collect();
    free.shuffle(rng);
    let measured = lines.iter().filter(|&&l| l).count();
    let n = ((holdout * measured as f64).round() as usize).min(free.len());
    let mut held = vec![false; lines.len()];
    for &y in &free[..n] {
        held[y] = true;
    }
    let input = lines.iter().zip(&held).map(|(&l, &h)| l && !h).collect();
    (input, held)
}

/// The zero-filled complex image (packed `[re…, im…]`) of measured k-space `k0` kept on `lines` only.
fn zero_filled(k0: &[f32], lines: &[bool], w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    use rustfft::num_complex::Complex32;
    let n = w * h;
    let on = |i: usize| lines[i / w];
    let mut k: Vec<Complex32> = (0..n).map(|i| if on(i) { Complex32::new(k0[i], k0[n + i]) } else { Complex32::default() }).collect();
    let kept = crate::kspace::pack(&k);
    crate::fft::ifft2(&mut k, w, h);
    (crate::kspace::pack(&k), kept)
}

/// One batch of planes for [`held_out_loss`]: each plane's measurements, the lines its input keeps and the lines
/// scored.
struct Split<'a> {
    measured: &'a Measured,
    input: Vec<bool>,
    held: Vec<bool>,
}

/// The CRNN's reconstructions of `splits` from their input lines, scored in k-space on their held-out lines:
/// the squared error over the held-out measurements' energy, per plane, averaged.
fn held_out_loss<B: Backend>(net: &EnhanceNet<B>, splits: &[Split], [w, h]: [usize; 2], device: &B::Device) -> Tensor<B, 1> {
    let n = splits.len();
    let (mut x0, mut k_in, mut m_in, mut k_all, mut m_out, mut norms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::with_capacity(n));
    for s in splits {
        let (x, k) = zero_filled(&s.measured.k0, &s.input, w, h);
        x0.extend(x);
        k_in.extend(k);
        m_in.extend(crate::kspace::mask_plane(w, &s.input));
        let k0 = &s.measured.k0;
        k_all.extend_from_slice(k0);
        let out = crate::kspace::mask_plane(w, &s.held);
        let energy: f64 = (0..w * h).map(|i| out[i] as f64 * ((k0[i] as f64).powi(2) + (k0[w * h + i] as f64).powi(2))).sum();
        norms.push(energy.max(1e-12) as f32);
        m_out.extend(out);
    }
    let t = |v: Vec<f32>, c: usize| Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, h, w]), device);
    let (mask_out, k_all) = (t(m_out, 1), t(k_all, 2));
    let x = net.forward(t(x0, 2), Some((t(k_in, 2), t(m_in, 1))));
    let (kr, ki) = vesalius_nets::dft2(x.clone().slice([0..n, 0..1, 0..h, 0..w]), x.slice([0..n, 1..2, 0..h, 0..w]), false);
    let dr = kr - k_all.clone().slice([0..n, 0..1, 0..h, 0..w]);
    let di = ki - k_all.slice([0..n, 1..2, 0..h, 0..w]);
    let err = ((dr.powi_scalar(2) + di.powi_scalar(2)) * mask_out).sum_dim(3).sum_dim(2);
    let norms = Tensor::<B, 4>::from_data(TensorData::new(norms, [n, 1, 1, 1]), device);
    (err / norms).mean()
}

/// Planes of the image whose self-validation loss [`adapt_kspace`] tracks.
const VALIDATION_PLANES: usize = 8;
/// How many times over the steps [`adapt_kspace`] checks its self-validation loss.
const VALIDATION_CHECKS: usize = 10;

/// Fine-tunes a CRNN on an under-sampled image's own measurements (`planes`, each `w × h`), after zero-shot
/// SSDU (Yaman et al. 2022).
///
/// - A fixed share `section.validation` of each plane's measured lines outside the fully sampled centre is set
///   aside once ([`split_lines`]) for self-validation.
/// - Every step draws `section.batch` planes and splits each one's remaining lines again, at random: the network
///   reconstructs from one part and is scored in k-space on the other (`section.holdout` of them; squared error over
///   the held-out measurements' energy, per plane). Adam, with a half-cosine learning rate.
/// - Ten times over the steps, and before the first, the network reconstructs up to eight planes from all but their
///   validation lines and is scored on those; the weights with the lowest validation loss are returned (the network
///   as given, when no step improves on it), as zero-shot SSDU stops early.
///
/// Planes with under a tenth of the strongest plane's energy (air beyond the head) are not drawn.
pub fn adapt_kspace<B: Backend>(
    net: EnhanceNet<Autodiff<B>>,
    planes: &[Measured],
    dims: [usize; 2],
    section: &AdaptSection,
    device: &B::Device,
) -> Result<EnhanceNet<B>, EnhanceError> {
    let [w, h] = dims;
    let energy = |m: &Measured| m.k0.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
    let strongest = planes.iter().map(energy).fold(0.0, f64::max);
    let drawn: Vec<&Measured> = planes.iter().filter(|m| strongest > 0.0 && energy(m) >= 0.1 * strongest).collect();
    if drawn.is_empty() {
        return Err(EnhanceError::Input("adaptation: the image's measured k-space holds no signal".into()));
    }
    if drawn.iter().any(|m| m.k0.len() != 2 * w * h || m.lines.len() != h) {
        return Err(EnhanceError::Internal(format!("adaptation: measurements do not match the {w}×{h} planes")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(section.seed);
    // Self-validation: each plane's validation lines, set aside once.
    let aside: Vec<(Vec<bool>, Vec<bool>)> = drawn.iter().map(|m| split_lines(&m.lines, section.validation, &mut rng)).collect();
    let stride = drawn.len().div_ceil(VALIDATION_PLANES);
    let validation: Vec<Split> = (0..drawn.len())
        .step_by(stride)
        .map(|i| Split { measured: drawn[i], input: aside[i].0.clone(), held: aside[i].1.clone() })
        .collect();
    let validate = |net: &EnhanceNet<Autodiff<B>>| -> f64 {
        let loss = held_out_loss(&net.valid(), &validation, dims, device);
        loss.into_data().convert::<f64>().to_vec::<f64>().ok().and_then(|v| v.first().copied()).unwrap_or(f64::INFINITY)
    };
    // The share of the remaining lines held out, so that `holdout` of all measured lines are.
    let holdout = (section.holdout / (1.0 - section.validation)).min(0.95);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init::<Autodiff<B>, EnhanceNet<Autodiff<B>>>();
    let every = section.steps.div_ceil(VALIDATION_CHECKS).max(1);
    let mut best = (validate(&net), net.clone());
    let mut net = net;
    for step in 0..section.steps {
        let lr = section.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / section.steps as f64).cos());
        let batch: Vec<Split> = (0..section.batch)
            .map(|_| {
                let i = rng.random_range(0..drawn.len());
                let (input, held) = split_lines(&aside[i].0, holdout, &mut rng);
                Split { measured: drawn[i], input, held }
            })
            .collect();
        let loss = held_out_loss(&net, &batch, dims, device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(lr, net, grads);
        if (step + 1) % every == 0 || step + 1 == section.steps {
            let loss = validate(&net);
            if loss < best.0 {
                best = (loss, net.clone());
            }
        }
    }
    Ok(best.1.valid())
}

/// Reconstructs planes from their measurements with `net` (the magnitude of each, normalised; mirrored views
/// averaged when `spec.flips`).
pub fn reconstruct_measured<B: Backend>(
    net: &EnhanceNet<B>,
    spec: &ModelSection,
    planes: &[Measured],
    [w, h]: [usize; 2],
    device: &B::Device,
) -> Vec<Vec<f32>> {
    planes
        .iter()
        .map(|m| {
            let (x0, k0) = zero_filled(&m.k0, &m.lines, w, h);
            reconstruct_plane(net, &x0, &k0, &m.lines, w, h, spec.flips, device)
        })
        .collect()
}

/// The other plane that contains the thick axis: `[other, thick]` for planes `axes` that contain it (`None`
/// when they do not).
pub fn orthogonal_axes(axes: PlaneAxes, thick: usize) -> Option<PlaneAxes> {
    if axes.u != thick && axes.v != thick {
        return None;
    }
    Some(PlaneAxes { u: axes.across, v: thick, across: if axes.u == thick { axes.v } else { axes.u } })
}

/// Which views of an image are enhanced and averaged ([`enhance_planes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Views {
    /// Also the other planes that contain the thick axis (the two orientations averaged).
    pub orthogonal: bool,
    /// Every plane under its eight flips and transpositions ([`dihedral_mean`]).
    pub flips: bool,
}

impl AdaptSection {
    /// The views its `orthogonal` and `flips` ask for.
    pub fn views(&self) -> Views {
        Views { orthogonal: self.orthogonal, flips: self.flips }
    }
}

/// The mean of `f` over the eight flips and transpositions of a `w × h` plane, each output mapped back to the
/// plane's own orientation (test-time augmentation under the symmetries that adaptation draws its patches with).
/// `f` takes a view and its width and height and returns an image of that size.
pub fn dihedral_mean(plane: &[f32], w: usize, h: usize, f: impl Fn(&[f32], usize, usize) -> Vec<f32>) -> Vec<f32> {
    let mut sum = vec![0.0f32; w * h];
    for t in 0..8 {
        let (flip_x, flip_y, transpose) = (t & 1 != 0, t & 2 != 0, t & 4 != 0);
        let (vw, vh) = if transpose { (h, w) } else { (w, h) };
        // Plane pixel (x, y) sits at `at(x, y)` of the view.
        let at = |x: usize, y: usize| {
            let (x, y) = (if flip_x { w - 1 - x } else { x }, if flip_y { h - 1 - y } else { y });
            if transpose { y + vw * x } else { x + vw * y }
        };
        let mut view = vec![0.0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                view[at(x, y)] = plane[x + w * y];
            }
        }
        let out = f(&view, vw, vh);
        for y in 0..h {
            for x in 0..w {
                sum[x + w * y] += out[at(x, y)];
            }
        }
    }
    sum.iter().map(|v| v / 8.0).collect()
}

/// Enhances the planes `planes` (along `axes.across`) of a (normalised, fine-grid) volume in `axes`; with
/// `views.orthogonal`, also through the other planes that contain the `thick` axis — each cropped to those planes
/// and a margin of [`MARGIN`] voxels — and returns the mean of the two, one `w × h` plane per index of `planes`.
/// With `views.flips`, each plane's output is itself the mean over its eight flips and transpositions.
#[allow(clippy::too_many_arguments)] // one volume: its data, shape and planes, the network and its device
pub fn enhance_planes<B: Backend>(
    net: &EnhanceNet<B>,
    spec: &ModelSection,
    volume: &[f32],
    shape: [usize; 3],
    axes: PlaneAxes,
    thick: usize,
    views: Views,
    planes: std::ops::Range<usize>,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let one = |plane: &[f32], w: usize, h: usize| {
        let run = |view: &[f32], vw: usize, vh: usize| enhance_plane(net, spec, view, vw, vh, device);
        if views.flips { dihedral_mean(plane, w, h, run) } else { run(plane, w, h) }
    };
    let mut out: Vec<Vec<f32>> = planes
        .clone()
        .map(|k| {
            let (w, h, plane) = extract_plane(volume, shape, axes, k);
            one(&plane, w, h)
        })
        .collect();
    let Some(other) = views.orthogonal.then(|| orthogonal_axes(axes, thick)).flatten() else {
        return out;
    };
    // The other planes' width runs along `axes.across`: only the columns of `planes` (and a margin) are needed.
    let lo = planes.start.saturating_sub(MARGIN);
    let hi = (planes.end + MARGIN).min(shape[axes.across]);
    let (w, h) = (shape[axes.u], shape[axes.v]);
    for j in 0..shape[other.across] {
        let (ow, oh, plane) = extract_plane(volume, shape, other, j);
        let crop: Vec<f32> = (0..oh).flat_map(|y| plane[y * ow + lo..y * ow + hi].to_vec()).collect();
        let enhanced = one(&crop, hi - lo, oh);
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
    /// The thick-slice model's axis and factor (`None`: k-space reconstruction).
    thick: Option<(usize, usize)>,
    last: Option<(usize, Vec<Vec<f32>>)>,
}

impl<B: Backend> AdaptedOutputs<B> {
    /// The outputs of a trained network `base` adapted as `section` says, in planes `axes`: for a model that
    /// thickens axis `thick.0` by `thick.1`, or (`thick` `None`) for k-space reconstruction.
    pub fn new(
        base: EnhanceNet<Autodiff<B>>,
        section: AdaptSection,
        spec: ModelSection,
        axes: PlaneAxes,
        thick: Option<(usize, usize)>,
    ) -> Self {
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
            let out = match self.thick {
                Some((axis, factor)) => {
                    let pairs = own_pairs(&s.coarse, s.coarse_shape, axis, factor, self.section.patch);
                    let net = adapt(self.base.clone(), &pairs, &self.section, device)?;
                    enhance_planes(&net, &self.spec, &s.input, s.shape, self.axes, axis, self.section.views(), s.planes.clone(), device)
                }
                None => {
                    let dims = [s.shape[self.axes.u], s.shape[self.axes.v]];
                    let net = adapt_kspace(self.base.clone(), &s.measured, dims, &self.section, device)?;
                    reconstruct_measured(&net, &self.spec, &s.measured[s.planes.clone()], dims, device)
                        .into_iter()
                        .map(|plane| plane.into_iter().map(|v| v * s.scale).collect())
                        .collect()
                }
            };
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

    #[test]
    fn flip_means_map_every_view_back_to_the_plane() {
        let (w, h) = (5, 3);
        let plane: Vec<f32> = (0..w * h).map(|i| (i * i % 11) as f32).collect();
        // An operation that commutes with every flip and transposition gives the plane itself back.
        assert_eq!(dihedral_mean(&plane, w, h, |v, _, _| v.to_vec()), plane);
        // Half the views are transposed: a view's width averages to (w + h) / 2.
        let widths = dihedral_mean(&plane, w, h, |_, vw, vh| vec![vw as f32; vw * vh]);
        assert!(widths.iter().all(|&v| v == 4.0));
        // Mirroring each view's rows mirrors the plane along x in the four untransposed views and along y in the
        // four transposed ones.
        let mirror = |v: &[f32], vw: usize, vh: usize| -> Vec<f32> { (0..vw * vh).map(|i| v[(vw - 1 - i % vw) + vw * (i / vw)]).collect() };
        let mean = dihedral_mean(&plane, w, h, mirror);
        for y in 0..h {
            for x in 0..w {
                let expected = 0.5 * (plane[(w - 1 - x) + w * y] + plane[x + w * (h - 1 - y)]);
                assert_eq!(mean[x + w * y], expected, "({x}, {y})");
            }
        }
    }

    #[test]
    fn line_splits_keep_the_centre_and_hold_out_the_stated_share() {
        let h = 40;
        // Measured: the centre run 0..3 and 37..40 (wrapping), and every fourth line elsewhere.
        let lines: Vec<bool> = (0..h).map(|y| !(3..37).contains(&y) || y % 4 == 2).collect();
        let protected = protected_lines(&lines);
        assert_eq!((0..h).filter(|&y| protected[y]).collect::<Vec<_>>(), [0, 1, 2, 37, 38, 39]);
        let measured = lines.iter().filter(|&&l| l).count(); // 6 + 8
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut held_ever = vec![false; h];
        for _ in 0..50 {
            let (input, held) = split_lines(&lines, 0.4, &mut rng);
            assert_eq!(held.iter().filter(|&&l| l).count(), (0.4 * measured as f64).round() as usize);
            for y in 0..h {
                assert_eq!(input[y] || held[y], lines[y], "line {y}: the two parts make up the measured lines");
                assert!(!held[y] || (!input[y] && !protected[y]), "line {y}");
                held_ever[y] |= held[y];
            }
        }
        // Every measured line outside the centre is held out some time.
        assert!((0..h).all(|y| held_ever[y] == (lines[y] && !protected[y])));
        // Fewer free lines than the share asks for: all of them.
        let (_, held) = split_lines(&lines, 0.99, &mut rng);
        assert_eq!(held.iter().filter(|&&l| l).count(), 8);
    }

    type B = burn::backend::Flex;

    #[test]
    fn planes_average_both_orientations_and_crops_keep_the_scored_planes_exact() {
        let _rng = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let device = Default::default();
        let spec = ModelSection { features: 4, kernel: 3, ..Default::default() };
        let net = crate::model::build::<B>(&spec, &device);
        let shape = [20, 64, 24];
        let volume: Vec<f32> = (0..20 * 64 * 24).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
        let coronal = PlaneAxes::new(0, 2).unwrap();
        let both = Views { orthogonal: true, flips: false };
        let full = enhance_planes(&net, &spec, &volume, shape, coronal, 2, both, 0..64, &device);
        assert_eq!((full.len(), full[0].len()), (64, 20 * 24));
        // Pixel (x 3, z 7) of coronal plane y 30: the mean of the coronal and the sagittal network outputs there.
        let (w, h, plane) = extract_plane(&volume, shape, coronal, 30);
        let a = enhance_plane(&net, &spec, &plane, w, h, &device)[3 + 20 * 7];
        let sagittal = PlaneAxes::new(1, 2).unwrap();
        let (w, h, plane) = extract_plane(&volume, shape, sagittal, 3);
        let b = enhance_plane(&net, &spec, &plane, w, h, &device)[30 + 64 * 7];
        assert!((full[30][3 + 20 * 7] - 0.5 * (a + b)).abs() < 1e-6);
        // Scoring planes 30..33 crops the sagittal planes to 6..57, beyond the network's reach of 10 voxels.
        let some = enhance_planes(&net, &spec, &volume, shape, coronal, 2, both, 30..33, &device);
        for (n, k) in (30..33).enumerate() {
            let worst = some[n].iter().zip(&full[k]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "plane {k}: {worst}");
        }
        // Without the other orientation, the planes are the network's plain outputs.
        let plain = enhance_planes(&net, &spec, &volume, shape, coronal, 2, Views::default(), 30..31, &device);
        assert_eq!(plain[0][3 + 20 * 7], a);
        // With flips, each plane's output is the mean over its flips and transpositions.
        let flips = Views { orthogonal: false, flips: true };
        let flipped = enhance_planes(&net, &spec, &volume, shape, coronal, 2, flips, 30..31, &device);
        let (w, h, plane) = extract_plane(&volume, shape, coronal, 30);
        assert_eq!(flipped[0], dihedral_mean(&plane, w, h, |v, vw, vh| enhance_plane(&net, &spec, v, vw, vh, &device)));
        assert_ne!(flipped[0], plain[0]);
    }

    #[test]
    fn adaptation_lowers_the_error_on_the_images_own_pairs() {
        let _rng = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn adaptation_to_measured_lines_reconstructs_better_than_zero_filling() {
        let _rng = crate::BURN_RNG.lock().unwrap_or_else(|e| e.into_inner());
        // Disks of several sizes in 32 × 32 planes, sampled at every third line beside a 4-line centre: the CRNN,
        // untrained, learns from the planes' own measured lines alone.
        let device = Default::default();
        let (w, h) = (32, 32);
        let spec = ModelSection { arch: crate::recipe::Arch::Crnn, features: 8, iterations: 3, layers: 2, ..Default::default() };
        let lines: Vec<bool> = (0..h).map(|y| y < 2 || y >= h - 2 || y % 3 == 0).collect();
        let planes: Vec<Vec<f32>> = (0..6)
            .map(|k| {
                (0..w * h)
                    .map(|i| {
                        let (x, y) = ((i % w) as f32, (i / w) as f32);
                        let (cx, cy, r) = (10.0 + 2.0 * k as f32, 14.0 + k as f32, 4.0 + k as f32);
                        let inside = (x - cx).powi(2) + (y - cy).powi(2) < r * r;
                        let small = (x - 24.0).powi(2) + (y - 8.0).powi(2) < 6.0;
                        0.2 + 0.6 * inside as u8 as f32 + 0.4 * small as u8 as f32
                    })
                    .collect()
            })
            .collect();
        let measured: Vec<Measured> =
            planes.iter().map(|p| Measured { k0: crate::kspace::measure(p, w, h, &lines).0, lines: lines.clone() }).collect();
        let error = |recon: &[Vec<f32>]| -> f64 {
            recon.iter().zip(&planes).map(|(r, p)| r.iter().zip(p).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()).sum()
        };
        let zero_filled: Vec<Vec<f32>> =
            planes.iter().map(|p| crate::kspace::magnitude(&crate::kspace::measure(p, w, h, &lines).1)).collect();
        let input = error(&zero_filled);
        <B as Backend>::seed(&device, 0);
        let section = AdaptSection { steps: 300, lr: 2e-3, batch: 4, ..Default::default() };
        let net = adapt_kspace::<B>(crate::model::build::<Autodiff<B>>(&spec, &device), &measured, [w, h], &section, &device).unwrap();
        let adapted = error(&reconstruct_measured(&net, &spec, &measured, [w, h], &device));
        eprintln!("adapted: {:.3} of zero filling's error", adapted / input);
        // Measured: 0.54 of zero filling's error (0.29 and 0.70 with initialisation seeds 1 and 2).
        assert!(adapted < 0.8 * input, "adapted {adapted} vs zero-filled {input}");
        // Air alone holds nothing to learn from.
        let air = vec![Measured { k0: vec![0.0; 2 * w * h], lines }];
        assert!(adapt_kspace::<B>(crate::model::build::<Autodiff<B>>(&spec, &device), &air, [w, h], &section, &device).is_err());
    }
}
