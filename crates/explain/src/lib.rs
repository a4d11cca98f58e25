//! Explanations of image models, independent of any framework: a model enters as a function from a batch of
//! inputs to the target's score (occlusion, LIME) or from an input to the gradient of that score (saliency,
//! SmoothGrad), and Grad-CAM takes a layer's activations and their gradients. Inputs are channel-planar and
//! row-major over their spatial axes (`[c][h][w]` or `[c][d][h][w]`, the last axis fastest, as burn's tensors);
//! every map has one value per spatial position of the input.
//!
//! * [`saliency`]: the largest absolute gradient over channels (Simonyan et al. 2014);
//! * [`smoothgrad`]: the gradient averaged over copies with Gaussian noise (Smilkov et al. 2017);
//! * [`gradcam`]: ReLU of the activation maps weighted by their mean gradients, up-sampled (Selvaraju et al. 2017);
//! * [`occlusion`]: the score's drop when a patch is replaced by a baseline, averaged over the patches covering
//!   each position (Zeiler and Fergus 2014); [`occlusion_coarse_to_fine`] refines only where the coarse drop is
//!   large, so a volume costs seconds;
//! * [`lime`]: superpixels ([`slic`], 2D or 3D) switched off at random, a ridge surrogate weighted by an
//!   exponential kernel on the cosine distance (Ribeiro et al. 2016, the `lime` package's image explainer).
//!
//! ```
//! use vesalius_explain::{Input, lime, LimeConfig, lime::Hide};
//! // a 2-channel 8 × 8 image whose model scores the mean of its left half
//! let x = Input::new(vec![1.0; 2 * 64], 2, vec![8, 8]).unwrap();
//! let mut score = |batch: &[Vec<f32>]| -> Vec<f32> {
//!     batch.iter().map(|v| (0..64).filter(|i| i % 8 < 4).map(|i| v[i]).sum::<f32>() / 32.0).collect()
//! };
//! let segments: Vec<u32> = (0..64).map(|i| if i % 8 < 4 { 0 } else { 1 }).collect();
//! let cfg = LimeConfig { samples: 200, hide: Hide::Value(0.0), ..LimeConfig::default() };
//! let r = lime(&x, &segments, &mut score, &cfg);
//! assert!(r.weights[0] > 0.8 && r.weights[1].abs() < 0.05);
//! assert_eq!(r.top[0].0, 0);
//! ```

pub mod lime;
mod slic;

pub use lime::{LimeConfig, LimeResult, lime};
pub use slic::slic;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// An explanation method, by the name the command line uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Absolute input gradient, largest over channels.
    Saliency,
    /// The gradient averaged over noisy copies.
    SmoothGrad,
    /// Class activation map of a layer weighted by its gradients.
    GradCam,
    /// Drop of the score when patches are hidden.
    Occlusion,
    /// Superpixel weights of a local linear surrogate.
    Lime,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "saliency" => Method::Saliency,
            "smoothgrad" => Method::SmoothGrad,
            "gradcam" => Method::GradCam,
            "occlusion" => Method::Occlusion,
            "lime" => Method::Lime,
            other => return Err(format!("unknown method {other:?} (saliency, smoothgrad, gradcam, occlusion, lime)")),
        })
    }
}

/// An input: channel-planar values over a row-major spatial grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// Values, `channels × Π shape`.
    pub data: Vec<f32>,
    /// Channels.
    pub channels: usize,
    /// Spatial shape, slowest axis first (`[h, w]` or `[d, h, w]`).
    pub shape: Vec<usize>,
}

impl Input {
    /// Checks the sizes.
    pub fn new(data: Vec<f32>, channels: usize, shape: Vec<usize>) -> Result<Self, String> {
        let n: usize = shape.iter().product();
        if shape.is_empty() || shape.len() > 3 || channels == 0 || n == 0 || data.len() != n * channels {
            return Err(format!("an input of {} values does not fit {channels} channels of {shape:?}", data.len()));
        }
        Ok(Self { data, channels, shape })
    }

    /// Spatial positions.
    pub fn positions(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Saliency: at each position the largest absolute gradient over channels.
pub fn saliency(x: &Input, grad: &mut dyn FnMut(&[f32]) -> Vec<f32>) -> Vec<f32> {
    channel_max_abs(&grad(&x.data), x.channels, x.positions())
}

fn channel_max_abs(g: &[f32], channels: usize, n: usize) -> Vec<f32> {
    (0..n).map(|p| (0..channels).map(|c| g[c * n + p].abs()).fold(0.0, f32::max)).collect()
}

/// SmoothGrad: the gradient averaged over `samples` copies of the input with Gaussian noise of standard deviation
/// `noise` × (max − min of the input), seeded; at each position the largest absolute mean over channels.
pub fn smoothgrad(x: &Input, grad: &mut dyn FnMut(&[f32]) -> Vec<f32>, samples: usize, noise: f32, seed: u64) -> Vec<f32> {
    let (lo, hi) = x.data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let sigma = (noise * (hi - lo)).max(1e-12);
    // a non-finite input range (NaN pixels) leaves the copies without noise rather than failing
    let normal = Normal::new(0.0f32, sigma).ok();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acc = vec![0f32; x.data.len()];
    let samples = samples.max(1);
    for _ in 0..samples {
        let noisy: Vec<f32> = x.data.iter().map(|&v| v + normal.map_or(0.0, |n| n.sample(&mut rng))).collect();
        for (a, g) in acc.iter_mut().zip(grad(&noisy)) {
            *a += g / samples as f32;
        }
    }
    channel_max_abs(&acc, x.channels, x.positions())
}

/// Multilinear resampling of a row-major map from `from` to `to` (same number of axes; sample centres aligned,
/// as `align_corners = false`).
pub fn upsample(map: &[f32], from: &[usize], to: &[usize]) -> Vec<f32> {
    let d = from.len();
    let n: usize = to.iter().product();
    let mut out = vec![0f32; n];
    let stride_from: Vec<usize> = (0..d).map(|a| from[a + 1..].iter().product()).collect();
    for (i, o) in out.iter_mut().enumerate() {
        let mut rem = i;
        let mut lo = vec![0usize; d];
        let mut frac = vec![0f32; d];
        for a in 0..d {
            let inner: usize = to[a + 1..].iter().product();
            let idx = rem / inner;
            rem %= inner;
            let p = ((idx as f32 + 0.5) * from[a] as f32 / to[a] as f32 - 0.5).clamp(0.0, (from[a] - 1) as f32);
            lo[a] = p.floor() as usize;
            frac[a] = p - lo[a] as f32;
        }
        let mut acc = 0.0;
        for corner in 0..(1usize << d) {
            let mut w = 1.0;
            let mut off = 0;
            for a in 0..d {
                let up = (corner >> a) & 1 == 1;
                let k = if up { (lo[a] + 1).min(from[a] - 1) } else { lo[a] };
                w *= if up { frac[a] } else { 1.0 - frac[a] };
                off += k * stride_from[a];
            }
            acc += w * map[off];
        }
        *o = acc;
    }
    out
}

/// Grad-CAM: `activations` and `gradients` of one layer (`k` maps over `fshape`, channel-planar), weights = the
/// gradients' spatial means, map = ReLU(Σ weightₖ · activationₖ) up-sampled to `out_shape`.
pub fn gradcam(activations: &[f32], gradients: &[f32], k: usize, fshape: &[usize], out_shape: &[usize]) -> Vec<f32> {
    let n: usize = fshape.iter().product();
    let mut cam = vec![0f32; n];
    for c in 0..k {
        let alpha = gradients[c * n..(c + 1) * n].iter().sum::<f32>() / n as f32;
        for (p, v) in cam.iter_mut().enumerate() {
            *v += alpha * activations[c * n + p];
        }
    }
    cam.iter_mut().for_each(|v| *v = v.max(0.0));
    if fshape.len() < out_shape.len() {
        let mut f = vec![1; out_shape.len() - fshape.len()];
        f.extend_from_slice(fshape);
        return upsample(&cam, &f, out_shape);
    }
    upsample(&cam, fshape, out_shape)
}

/// The positions of a patch at `start` (row-major, clipped to the grid).
fn patch_positions(shape: &[usize], start: &[usize], patch: &[usize]) -> Vec<usize> {
    let d = shape.len();
    let ext: Vec<usize> = (0..d).map(|a| patch[a].min(shape[a] - start[a])).collect();
    let count: usize = ext.iter().product();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let mut rem = i;
        let mut lin = 0;
        for a in 0..d {
            let inner: usize = ext[a + 1..].iter().product();
            let k = rem / inner;
            rem %= inner;
            lin = lin * shape[a] + start[a] + k;
        }
        out.push(lin);
    }
    out
}

fn starts(n: usize, patch: usize, stride: usize) -> Vec<usize> {
    let mut s: Vec<usize> = (0..).map(|k| k * stride).take_while(|&v| v + patch < n + stride && v < n).collect();
    if s.is_empty() {
        s.push(0);
    }
    s
}

/// Occlusion sensitivity with `patch` and `stride` per spatial axis: the score's drop when each patch (all
/// channels) is set to `baseline`, averaged at each position over the patches covering it. `batch` occluded
/// inputs are scored per call.
pub fn occlusion(
    x: &Input,
    score: &mut dyn FnMut(&[Vec<f32>]) -> Vec<f32>,
    patch: &[usize],
    stride: &[usize],
    baseline: f32,
    batch: usize,
) -> Vec<f32> {
    let all: Vec<Vec<usize>> = grid_starts(&x.shape, patch, stride);
    occlude_at(x, score, &all, patch, baseline, batch)
}

fn grid_starts(shape: &[usize], patch: &[usize], stride: &[usize]) -> Vec<Vec<usize>> {
    let per: Vec<Vec<usize>> = (0..shape.len()).map(|a| starts(shape[a], patch[a].max(1), stride[a].max(1))).collect();
    let mut all: Vec<Vec<usize>> = vec![vec![]];
    for p in &per {
        all = all.iter().flat_map(|pre| p.iter().map(move |&v| [pre.clone(), vec![v]].concat())).collect();
    }
    all
}

/// The drops of the patches at `starts`: (map of mean drops, count of patches per position).
fn occlude_sums(
    x: &Input,
    score: &mut dyn FnMut(&[Vec<f32>]) -> Vec<f32>,
    starts: &[Vec<usize>],
    patch: &[usize],
    baseline: f32,
    batch: usize,
) -> (Vec<f32>, Vec<f32>) {
    let n = x.positions();
    let base = score(std::slice::from_ref(&x.data))[0];
    let (mut sum, mut cnt) = (vec![0f32; n], vec![0f32; n]);
    for chunk in starts.chunks(batch.max(1)) {
        let pos: Vec<Vec<usize>> = chunk.iter().map(|s| patch_positions(&x.shape, s, patch)).collect();
        let inputs: Vec<Vec<f32>> = pos
            .iter()
            .map(|ps| {
                let mut v = x.data.clone();
                for c in 0..x.channels {
                    for &p in ps {
                        v[c * n + p] = baseline;
                    }
                }
                v
            })
            .collect();
        for (ps, s) in pos.iter().zip(score(&inputs)) {
            for &p in ps {
                sum[p] += base - s;
                cnt[p] += 1.0;
            }
        }
    }
    (sum, cnt)
}

fn occlude_at(
    x: &Input,
    score: &mut dyn FnMut(&[Vec<f32>]) -> Vec<f32>,
    starts: &[Vec<usize>],
    patch: &[usize],
    baseline: f32,
    batch: usize,
) -> Vec<f32> {
    let (sum, cnt) = occlude_sums(x, score, starts, patch, baseline, batch);
    sum.iter().zip(&cnt).map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 }).collect()
}

/// Occlusion in two passes: `patch` with half-patch strides everywhere, then patches half as large, with
/// half-patch strides, only inside the coarse patches whose drop is in the top `keep` share; positions the fine
/// pass covers take its value. Returns the map and the number of scored inputs.
pub fn occlusion_coarse_to_fine(
    x: &Input,
    score: &mut dyn FnMut(&[Vec<f32>]) -> Vec<f32>,
    patch: &[usize],
    baseline: f32,
    keep: f32,
    batch: usize,
) -> (Vec<f32>, usize) {
    let stride: Vec<usize> = patch.iter().map(|&p| (p / 2).max(1)).collect();
    let coarse_starts = grid_starts(&x.shape, patch, &stride);
    let coarse = occlude_at(x, score, &coarse_starts, patch, baseline, batch);
    // the coarse patches ranked by their mean drop
    let mut ranked: Vec<(f32, &Vec<usize>)> = coarse_starts
        .iter()
        .map(|s| {
            let ps = patch_positions(&x.shape, s, patch);
            (ps.iter().map(|&p| coarse[p]).sum::<f32>() / ps.len() as f32, s)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let take = ((ranked.len() as f32 * keep).ceil() as usize).clamp(1, ranked.len());
    let fine_patch: Vec<usize> = patch.iter().map(|&p| (p / 2).max(1)).collect();
    let fine_stride: Vec<usize> = fine_patch.iter().map(|&p| (p / 2).max(1)).collect();
    let mut fine_starts: Vec<Vec<usize>> = Vec::new();
    for (_, s) in ranked.iter().take(take) {
        let sub =
            grid_starts(&patch.iter().enumerate().map(|(a, &p)| p.min(x.shape[a] - s[a])).collect::<Vec<_>>(), &fine_patch, &fine_stride);
        for o in sub {
            let st: Vec<usize> = o.iter().zip(s.iter()).map(|(a, b)| a + b).collect();
            if !fine_starts.contains(&st) {
                fine_starts.push(st);
            }
        }
    }
    let (sum, cnt) = occlude_sums(x, score, &fine_starts, &fine_patch, baseline, batch);
    let map = coarse.iter().enumerate().map(|(p, &c)| if cnt[p] > 0.0 { sum[p] / cnt[p] } else { c }).collect();
    (map, 2 + coarse_starts.len() + fine_starts.len())
}

/// Spearman's rank correlation (ties share their mean rank).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    fn ranks(v: &[f32]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for k in i..=j {
                r[idx[k]] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 { 0.0 } else { cov / (va * vb).sqrt() }
}

/// The share of a non-negative map's mass inside `region`.
pub fn mass_inside(map: &[f32], region: &[bool]) -> f64 {
    let total: f64 = map.iter().map(|&v| v.max(0.0) as f64).sum();
    if total == 0.0 {
        return 0.0;
    }
    map.iter().zip(region).filter(|(_, r)| **r).map(|(&v, _)| v.max(0.0) as f64).sum::<f64>() / total
}
