//! Stain normalisation of H&E images: the colours of a source image mapped onto those of a target image.
//!
//! * [`reinhard`] — Reinhard et al. (2001) in CIE L\*a\*b\* (as most implementations, e.g. StainTools, use it rather
//!   than the paper's lαβ): each channel's mean and standard deviation set to the target's. It matches the first
//!   two moments by construction.
//! * [`macenko`] — Macenko et al. (2009): optical density `OD = −ln((I + 1) / 240)`; pixels with any OD below 0.15
//!   dropped; the plane of the two largest eigenvectors of the OD covariance; the extreme angles (1st and 99th
//!   percentiles) in that plane as the haematoxylin and eosin vectors; concentrations by least squares, scaled so
//!   their 99th percentiles equal the target's, recomposed with the target's stain vectors.
//! * [`sae_normalise`] — after Janowczyk et al. (2017, StaNoSA): a sparse auto-encoder learns features of 3×3 colour
//!   neighbourhoods of both images (trained greedily, [`vesalius_train::greedy`]); k-means on the target's codes
//!   finds tissue classes; every pixel of both images is assigned to its nearest class; within each class each L\*a\*b\*
//!   channel of the source is matched to the target's distribution quantile by quantile.
//!
//! [`colour_distance`] compares colour statistics: the mean absolute difference of the L\*a\*b\* channel means and
//! standard deviations, and the mean 1-Wasserstein distance between the channels' distributions.
//!
//! ```
//! use vesalius_enhancement::stain::{lab_to_rgb, rgb_to_lab};
//! let lab = rgb_to_lab([200.0, 120.0, 180.0]);
//! let back = lab_to_rgb(lab);
//! assert!((back[0] - 200.0).abs() < 0.01 && (back[1] - 120.0).abs() < 0.01 && (back[2] - 180.0).abs() < 0.01);
//! assert!((rgb_to_lab([255.0, 255.0, 255.0])[0] - 100.0).abs() < 0.01); // white is L* = 100
//! ```
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vesalius_io::Image;
use vesalius_train::greedy::{GreedyConfig, GreedyRecord, Sparsity, train_stacked};

use crate::EnhanceError;

fn srgb_to_linear(c: f64) -> f64 {
    if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
}

fn linear_to_srgb(c: f64) -> f64 {
    if c <= 0.0031308 { 12.92 * c } else { 1.055 * c.powf(1.0 / 2.4) - 0.055 }
}

const WHITE: [f64; 3] = [0.95047, 1.0, 1.08883];

fn f_lab(t: f64) -> f64 {
    if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 }
}

fn f_lab_inv(t: f64) -> f64 {
    if t.powi(3) > 216.0 / 24389.0 { t.powi(3) } else { (116.0 * t - 16.0) * 27.0 / 24389.0 }
}

/// sRGB (0–255) → CIE L\*a\*b\* (D65).
pub fn rgb_to_lab(rgb: [f32; 3]) -> [f32; 3] {
    let [r, g, b] = rgb.map(|c| srgb_to_linear(c as f64 / 255.0));
    let x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / WHITE[0];
    let y = (0.2126729 * r + 0.7151522 * g + 0.0721750 * b) / WHITE[1];
    let z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / WHITE[2];
    let (fx, fy, fz) = (f_lab(x), f_lab(y), f_lab(z));
    [(116.0 * fy - 16.0) as f32, (500.0 * (fx - fy)) as f32, (200.0 * (fy - fz)) as f32]
}

/// CIE L\*a\*b\* (D65) → sRGB (0–255, not clipped).
pub fn lab_to_rgb(lab: [f32; 3]) -> [f32; 3] {
    let fy = (lab[0] as f64 + 16.0) / 116.0;
    let fx = fy + lab[1] as f64 / 500.0;
    let fz = fy - lab[2] as f64 / 200.0;
    let (x, y, z) = (f_lab_inv(fx) * WHITE[0], f_lab_inv(fy) * WHITE[1], f_lab_inv(fz) * WHITE[2]);
    let r = 3.2404542 * x - 1.5371385 * y - 0.4985314 * z;
    let g = -0.9692660 * x + 1.8760108 * y + 0.0415560 * z;
    let b = 0.0556434 * x - 0.2040259 * y + 1.0572252 * z;
    [r, g, b].map(|c| (linear_to_srgb(c) * 255.0) as f32)
}

/// The pixels of an RGB image (three channels) as `[r, g, b]`.
pub fn pixels(img: &Image) -> Result<Vec<[f32; 3]>, EnhanceError> {
    if img.channels() != 3 {
        return Err(EnhanceError::Input(format!("stain normalisation takes RGB images, not {} channel(s)", img.channels())));
    }
    let (r, g, b) = (img.channel(0), img.channel(1), img.channel(2));
    Ok((0..r.len()).map(|i| [r[i], g[i], b[i]]).collect())
}

/// An 8-bit RGB image of `pixels` on `like`'s grid (values rounded and clipped to 0–255).
pub fn from_pixels(pixels: &[[f32; 3]], like: &Image) -> Result<Image, EnhanceError> {
    let mut data = Vec::with_capacity(pixels.len() * 3);
    for c in 0..3 {
        data.extend(pixels.iter().map(|p| p[c].round().clamp(0.0, 255.0)));
    }
    Ok(Image::new(data, like.shape().to_vec(), 3, *like.affine(), "uint8")?)
}

fn lab_pixels(img: &Image) -> Result<Vec<[f32; 3]>, EnhanceError> {
    Ok(pixels(img)?.into_iter().map(rgb_to_lab).collect())
}

fn mean_std(values: impl Iterator<Item = f32> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let m = values.clone().map(|v| v as f64).sum::<f64>() / n;
    let var = values.map(|v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Reinhard's normalisation of `source` to `target` in CIE L\*a\*b\*.
pub fn reinhard(source: &Image, target: &Image) -> Result<Image, EnhanceError> {
    let (s, t) = (lab_pixels(source)?, lab_pixels(target)?);
    let mut out = s.clone();
    for c in 0..3 {
        let (ms, ss) = mean_std(s.iter().map(|p| p[c]));
        let (mt, st) = mean_std(t.iter().map(|p| p[c]));
        let k = if ss > 0.0 { st / ss } else { 1.0 };
        out.iter_mut().for_each(|p| p[c] = ((p[c] as f64 - ms) * k + mt) as f32);
    }
    from_pixels(&out.into_iter().map(lab_to_rgb).collect::<Vec<_>>(), source)
}

/// Eigenvalues (ascending) and eigenvectors (columns) of a symmetric 3×3 matrix, by Jacobi rotations.
pub fn symmetric_eigen3(m: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = m;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..100 {
        let (mut p, mut q, mut big) = (0, 1, 0.0);
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            if a[i][j].abs() > big {
                (p, q, big) = (i, j, a[i][j].abs());
            }
        }
        if big < 1e-15 {
            break;
        }
        let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
        let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
        let t = if theta == 0.0 { 1.0 } else { t };
        let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
        for k in 0..3 {
            let (akp, akq) = (a[k][p], a[k][q]);
            a[k][p] = c * akp - s * akq;
            a[k][q] = s * akp + c * akq;
        }
        for k in 0..3 {
            let (apk, aqk) = (a[p][k], a[q][k]);
            a[p][k] = c * apk - s * aqk;
            a[q][k] = s * apk + c * aqk;
        }
        for k in 0..3 {
            let (vkp, vkq) = (v[k][p], v[k][q]);
            v[k][p] = c * vkp - s * vkq;
            v[k][q] = s * vkp + c * vkq;
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[i][i].total_cmp(&a[j][j]));
    let values = order.map(|i| a[i][i]);
    let mut vectors = [[0.0; 3]; 3];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..3 {
            vectors[k][col] = v[k][i];
        }
    }
    (values, vectors)
}

/// Macenko's light intensity and thresholds.
const IO: f64 = 240.0;
const BETA: f64 = 0.15;
const ALPHA: f64 = 1.0;

/// The `p`-th percentile (NumPy's linear interpolation) of `values`, sorted in place.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() { f64::NAN } else { vesalius_eval::bootstrap::quantile_sorted(values, p / 100.0) }
}

/// The stain vectors (haematoxylin, eosin; unit OD vectors) and per-pixel concentrations of an H&E image, as
/// Macenko et al. estimate them.
pub fn macenko_stains(img: &Image) -> Result<([[f64; 3]; 2], Vec<[f64; 2]>), EnhanceError> {
    let od: Vec<[f64; 3]> = pixels(img)?.iter().map(|p| p.map(|c| -(((c as f64) + 1.0) / IO).ln())).collect();
    let tissue: Vec<[f64; 3]> = od.iter().filter(|p| p.iter().all(|&v| v >= BETA)).copied().collect();
    if tissue.len() < 10 {
        return Err(EnhanceError::Input("too few stained pixels (optical density ≥ 0.15) to estimate stain vectors".into()));
    }
    let n = tissue.len() as f64;
    let mean: [f64; 3] = std::array::from_fn(|c| tissue.iter().map(|p| p[c]).sum::<f64>() / n);
    let mut cov = [[0.0; 3]; 3];
    for p in &tissue {
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += (p[i] - mean[i]) * (p[j] - mean[j]) / (n - 1.0);
            }
        }
    }
    let (_, vecs) = symmetric_eigen3(cov);
    let e1 = [vecs[0][1], vecs[1][1], vecs[2][1]];
    let e2 = [vecs[0][2], vecs[1][2], vecs[2][2]];
    let dot = |a: &[f64; 3], b: &[f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let mut phi: Vec<f64> = tissue.iter().map(|p| dot(p, &e2).atan2(dot(p, &e1))).collect();
    let min_phi = percentile(&mut phi, ALPHA);
    let max_phi = percentile(&mut phi, 100.0 - ALPHA);
    let along = |a: f64| -> [f64; 3] {
        let v: [f64; 3] = std::array::from_fn(|k| e1[k] * a.cos() + e2[k] * a.sin());
        // Stain vectors have positive optical density.
        if v.iter().sum::<f64>() < 0.0 { v.map(|x| -x) } else { v }
    };
    let (v_min, v_max) = (along(min_phi), along(max_phi));
    // Haematoxylin absorbs more red: the vector with the larger first (red) component.
    let he = if v_min[0] > v_max[0] { [v_min, v_max] } else { [v_max, v_min] };
    // Least squares OD ≈ C · HE per pixel: the 2×2 normal equations.
    let (a11, a12, a22) = (dot(&he[0], &he[0]), dot(&he[0], &he[1]), dot(&he[1], &he[1]));
    let det = a11 * a22 - a12 * a12;
    if det.abs() < 1e-12 {
        return Err(EnhanceError::Input("the two stain vectors are parallel: the image does not look like H&E".into()));
    }
    let conc = od
        .iter()
        .map(|p| {
            let (b1, b2) = (dot(&he[0], p), dot(&he[1], p));
            [(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det]
        })
        .collect();
    Ok((he, conc))
}

/// Macenko's normalisation of `source` to `target`.
pub fn macenko(source: &Image, target: &Image) -> Result<Image, EnhanceError> {
    let (_, conc) = macenko_stains(source)?;
    let (he_t, conc_t) = macenko_stains(target)?;
    let max = |c: &[[f64; 2]], k: usize| percentile(&mut c.iter().map(|x| x[k]).collect::<Vec<_>>(), 99.0);
    let scale = [max(&conc_t, 0) / max(&conc, 0), max(&conc_t, 1) / max(&conc, 1)];
    let out: Vec<[f32; 3]> = conc
        .iter()
        .map(|c| std::array::from_fn(|k| (IO * (-(he_t[0][k] * c[0] * scale[0] + he_t[1][k] * c[1] * scale[1])).exp()) as f32))
        .collect();
    from_pixels(&out, source)
}

/// Colour statistics of an image against a target's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColourDistance {
    /// Mean over L\*, a\*, b\* of the absolute difference of channel means.
    pub mean: f64,
    /// Mean over the channels of the absolute difference of channel standard deviations.
    pub std: f64,
    /// Mean over the channels of the 1-Wasserstein distance between the channel distributions.
    pub wasserstein: f64,
}

/// The 1-Wasserstein distance between two samples (integral of the quantile-function difference).
pub fn wasserstein1(a: &[f32], b: &[f32]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    let q = |s: &[f32], t: f64| s[((t * s.len() as f64) as usize).min(s.len() - 1)] as f64;
    let steps = 2000;
    (0..steps).map(|i| (q(&a, (i as f64 + 0.5) / steps as f64) - q(&b, (i as f64 + 0.5) / steps as f64)).abs()).sum::<f64>() / steps as f64
}

/// How far `img`'s colour statistics lie from `target`'s, in CIE L\*a\*b\*.
pub fn colour_distance(img: &Image, target: &Image) -> Result<ColourDistance, EnhanceError> {
    let (a, b) = (lab_pixels(img)?, lab_pixels(target)?);
    let mut d = ColourDistance { mean: 0.0, std: 0.0, wasserstein: 0.0 };
    for c in 0..3 {
        let (ca, cb): (Vec<f32>, Vec<f32>) = (a.iter().map(|p| p[c]).collect(), b.iter().map(|p| p[c]).collect());
        let ((ma, sa), (mb, sb)) = (mean_std(ca.iter().copied()), mean_std(cb.iter().copied()));
        d.mean += (ma - mb).abs() / 3.0;
        d.std += (sa - sb).abs() / 3.0;
        d.wasserstein += wasserstein1(&ca, &cb) / 3.0;
    }
    Ok(d)
}

/// Settings of the sparse-auto-encoder normalisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeSettings {
    /// Tissue classes (k-means clusters).
    #[serde(default = "default_clusters")]
    pub clusters: usize,
    /// Code units of the auto-encoder.
    #[serde(default = "default_code")]
    pub code: usize,
    /// Training epochs of the auto-encoder (its one layer, then as many for fine-tuning of nothing else).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Neighbourhoods sampled from each image to train on.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Target mean activation and weight of the sparsity penalty.
    #[serde(default = "default_sparsity")]
    pub sparsity: Sparsity,
}

impl SaeSettings {
    /// Checks the sizes before anything is allocated from them.
    pub fn validate(&self) -> Result<(), EnhanceError> {
        if !(1..=64).contains(&self.clusters) || !(1..=1024).contains(&self.code) || !(1..=1_000_000).contains(&self.samples) {
            return Err(EnhanceError::Input(format!(
                "sae: clusters must lie in 1..=64, code in 1..=1024 and samples in 1..=1000000 (got {}, {}, {})",
                self.clusters, self.code, self.samples
            )));
        }
        Ok(())
    }
}

fn default_clusters() -> usize {
    4
}
fn default_code() -> usize {
    16
}
fn default_epochs() -> usize {
    20
}
fn default_samples() -> usize {
    4000
}
fn default_sparsity() -> Sparsity {
    Sparsity { rho: 0.05, beta: 0.5 }
}

impl Default for SaeSettings {
    fn default() -> Self {
        Self {
            clusters: default_clusters(),
            code: default_code(),
            epochs: default_epochs(),
            samples: default_samples(),
            sparsity: default_sparsity(),
        }
    }
}

/// 3×3 colour neighbourhoods (27 values in [0, 1], edges repeated) of every pixel.
fn neighbourhoods(img: &Image) -> Result<Vec<f32>, EnhanceError> {
    let p = pixels(img)?;
    let (w, h) = (img.shape()[0], img.shape().get(1).copied().unwrap_or(1));
    let mut out = Vec::with_capacity(p.len() * 27);
    for y in 0..h {
        for x in 0..w {
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                    let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                    out.extend(p[xx + w * yy].map(|c| c / 255.0));
                }
            }
        }
    }
    Ok(out)
}

fn nearest(code: &[f32], centroids: &[Vec<f32>]) -> usize {
    let d = |c: &Vec<f32>| code.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
    (0..centroids.len()).min_by(|&i, &j| d(&centroids[i]).total_cmp(&d(&centroids[j]))).unwrap_or(0)
}

/// Seeded k-means (k-means++ initialisation, Lloyd iterations) of rows of `dim` values.
pub fn kmeans(rows: &[f32], dim: usize, k: usize, seed: u64) -> Vec<Vec<f32>> {
    let n = rows.len() / dim;
    let row = |i: usize| &rows[i * dim..(i + 1) * dim];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centroids = vec![row(rng.random_range(0..n)).to_vec()];
    while centroids.len() < k.min(n) {
        let d: Vec<f64> = (0..n)
            .map(|i| {
                centroids
                    .iter()
                    .map(|c| row(i).iter().zip(c).map(|(a, b)| ((a - b) * (a - b)) as f64).sum::<f64>())
                    .fold(f64::MAX, f64::min)
            })
            .collect();
        let total: f64 = d.iter().sum();
        let mut pick = rng.random::<f64>() * total;
        let mut chosen = n - 1;
        for (i, &di) in d.iter().enumerate() {
            if pick < di {
                chosen = i;
                break;
            }
            pick -= di;
        }
        centroids.push(row(chosen).to_vec());
    }
    for _ in 0..50 {
        let mut sums = vec![vec![0.0f64; dim]; centroids.len()];
        let mut counts = vec![0usize; centroids.len()];
        for i in 0..n {
            let c = nearest(row(i), &centroids);
            counts[c] += 1;
            sums[c].iter_mut().zip(row(i)).for_each(|(s, v)| *s += *v as f64);
        }
        let mut moved = false;
        for (c, centroid) in centroids.iter_mut().enumerate() {
            if counts[c] > 0 {
                let next: Vec<f32> = sums[c].iter().map(|s| (s / counts[c] as f64) as f32).collect();
                moved |= next != *centroid;
                *centroid = next;
            }
        }
        if !moved {
            break;
        }
    }
    centroids
}

/// Maps each value of `source` to the target's value at the same quantile.
fn match_quantiles(source: &[f32], target: &[f32]) -> Vec<f32> {
    if source.is_empty() || target.is_empty() {
        return source.to_vec();
    }
    let mut t = target.to_vec();
    t.sort_by(f32::total_cmp);
    let mut order: Vec<usize> = (0..source.len()).collect();
    order.sort_by(|&i, &j| source[i].total_cmp(&source[j]));
    let mut out = vec![0.0f32; source.len()];
    let n = source.len();
    for (rank, &i) in order.iter().enumerate() {
        let q = if n > 1 { rank as f64 / (n - 1) as f64 } else { 0.5 };
        let x = q * (t.len() - 1) as f64;
        let (lo, f) = (x.floor() as usize, (x - x.floor()) as f32);
        out[i] = t[lo] * (1.0 - f) + t[(lo + 1).min(t.len() - 1)] * f;
    }
    out
}

/// What the sparse-auto-encoder normalisation learnt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeReport {
    /// The auto-encoder's training losses, epoch by epoch.
    pub log: Vec<GreedyRecord>,
    /// Share of the target's pixels in each tissue class.
    pub target_classes: Vec<f64>,
}

/// Normalises every source to `target` with a sparse auto-encoder's tissue classes (see the module's notes).
pub fn sae_normalise<B: AutodiffBackend>(
    sources: &[Image],
    target: &Image,
    settings: &SaeSettings,
    seed: u64,
    device: &B::Device,
) -> Result<(Vec<Image>, SaeReport), EnhanceError> {
    settings.validate()?;
    let dim = 27;
    let target_rows = neighbourhoods(target)?;
    let source_rows: Vec<Vec<f32>> = sources.iter().map(neighbourhoods).collect::<Result<_, _>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::new();
    for rows in std::iter::once(&target_rows).chain(&source_rows) {
        let n = rows.len() / dim;
        for _ in 0..settings.samples.min(n) {
            let i = rng.random_range(0..n);
            train.extend_from_slice(&rows[i * dim..(i + 1) * dim]);
        }
    }
    let config = GreedyConfig {
        hidden: vec![settings.code],
        epochs: settings.epochs,
        fine_tune_epochs: 0,
        batch: 128,
        lr: 3e-3,
        corruption: 0.0,
        sparsity: Some(settings.sparsity),
        sigmoid_output: true,
        seed,
    };
    let mut log = Vec::new();
    let ae = train_stacked::<B>(&train, dim, &config, device, |r| log.push(r.clone())).map_err(|e| EnhanceError::Input(e.to_string()))?;
    let ae = ae.valid();
    let encode = |rows: &[f32]| -> Vec<f32> {
        let n = rows.len() / dim;
        let mut codes = Vec::with_capacity(n * settings.code);
        for start in (0..n).step_by(8192) {
            let end = (start + 8192).min(n);
            let x =
                Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(rows[start * dim..end * dim].to_vec(), [end - start, dim]), device);
            codes.extend(ae.encode(x).into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
        }
        codes
    };
    let target_codes = encode(&target_rows);
    let n_t = target_codes.len() / settings.code;
    // k-means on a seeded subsample of the target's codes.
    let mut sample = Vec::new();
    for _ in 0..n_t.min(20_000) {
        let i = rng.random_range(0..n_t);
        sample.extend_from_slice(&target_codes[i * settings.code..(i + 1) * settings.code]);
    }
    let centroids = kmeans(&sample, settings.code, settings.clusters, seed ^ 0x5eed);
    let classes = |codes: &[f32]| -> Vec<usize> { codes.chunks(settings.code).map(|c| nearest(c, &centroids)).collect() };
    let target_class = classes(&target_codes);
    let target_lab = lab_pixels(target)?;
    let mut target_classes = vec![0.0; centroids.len()];
    target_class.iter().for_each(|&c| target_classes[c] += 1.0 / n_t as f64);
    let mut outputs = Vec::with_capacity(sources.len());
    for (source, rows) in sources.iter().zip(&source_rows) {
        let class = classes(&encode(rows));
        let lab = lab_pixels(source)?;
        let mut out = lab.clone();
        for k in 0..centroids.len() {
            let idx: Vec<usize> = (0..lab.len()).filter(|&i| class[i] == k).collect();
            let tgt: Vec<usize> = (0..target_lab.len()).filter(|&i| target_class[i] == k).collect();
            // A class the target lacks is matched to the whole target.
            let tgt: Vec<usize> = if tgt.is_empty() { (0..target_lab.len()).collect() } else { tgt };
            for c in 0..3 {
                let s: Vec<f32> = idx.iter().map(|&i| lab[i][c]).collect();
                let t: Vec<f32> = tgt.iter().map(|&i| target_lab[i][c]).collect();
                for (&i, v) in idx.iter().zip(match_quantiles(&s, &t)) {
                    out[i][c] = v;
                }
            }
        }
        outputs.push(from_pixels(&out.into_iter().map(lab_to_rgb).collect::<Vec<_>>(), source)?);
    }
    Ok((outputs, SaeReport { log, target_classes }))
}

/// A stain-normalisation recipe (`task = "stain-normalisation"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StainRecipe {
    /// Always `"stain-normalisation"`.
    pub task: String,
    /// Seed of the auto-encoder's training and the k-means.
    #[serde(default)]
    pub seed: u64,
    /// The image whose colours the sources take on.
    pub target: std::path::PathBuf,
    /// The images to normalise.
    pub sources: Vec<std::path::PathBuf>,
    /// The sparse-auto-encoder method's settings.
    #[serde(default)]
    pub sae: SaeSettings,
}

impl StainRecipe {
    /// Reads a recipe file (paths relative to its folder).
    pub fn from_file(path: &std::path::Path) -> Result<Self, EnhanceError> {
        let text = std::fs::read_to_string(path).map_err(|e| EnhanceError::Input(format!("{}: {e}", path.display())))?;
        let mut r: StainRecipe =
            toml::from_str(&text).map_err(|e| EnhanceError::Input(format!("{}: invalid recipe: {e}", path.display())))?;
        let base = vesalius_io::folder_of(path);
        let fix = |p: &mut std::path::PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut r.target);
        r.sources.iter_mut().for_each(fix);
        if r.task != "stain-normalisation" {
            return Err(EnhanceError::Input(format!("{}: task must be \"stain-normalisation\"", path.display())));
        }
        if r.sources.is_empty() {
            return Err(EnhanceError::Input(format!("{}: no source image", path.display())));
        }
        Ok(r)
    }
}

/// `metrics.json` of a stain-normalisation run: for each source, each method's colour distance to the target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StainReport {
    /// Source file name → method (`none`, `reinhard`, `macenko`, `sae`) → distance.
    pub sources: std::collections::BTreeMap<String, std::collections::BTreeMap<String, ColourDistance>>,
    /// The auto-encoder's training and the target's tissue classes.
    pub sae: SaeReport,
}

fn load_rgb(path: &std::path::Path) -> Result<Image, EnhanceError> {
    let img = vesalius_io::load(path)?;
    if img.channels() != 3 {
        return Err(EnhanceError::Input(format!(
            "{}: stain normalisation takes RGB images, not {} channel(s)",
            path.display(),
            img.channels()
        )));
    }
    Ok(img)
}

/// Runs a stain-normalisation recipe into `out`: `<source>_reinhard.png`, `<source>_macenko.png`,
/// `<source>_sae.png`, `recipe.toml` and `metrics.json`.
pub fn run<B: AutodiffBackend>(recipe: &StainRecipe, out: &std::path::Path, device: &B::Device) -> Result<StainReport, EnhanceError> {
    std::fs::create_dir_all(out).map_err(|e| EnhanceError::Internal(format!("{}: {e}", out.display())))?;
    let text = toml::to_string(recipe).map_err(|e| EnhanceError::Internal(e.to_string()))?;
    vesalius_io::write_atomic(&out.join("recipe.toml"), text.as_bytes()).map_err(|e| EnhanceError::Internal(e.to_string()))?;
    let target = load_rgb(&recipe.target)?;
    let sources: Vec<Image> = recipe.sources.iter().map(|p| load_rgb(p)).collect::<Result<_, _>>()?;
    let (sae_out, sae) = sae_normalise::<B>(&sources, &target, &recipe.sae, recipe.seed, device)?;
    let mut report = StainReport { sources: Default::default(), sae };
    for ((path, source), sae_img) in recipe.sources.iter().zip(&sources).zip(sae_out) {
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "source".into());
        let mut methods = std::collections::BTreeMap::new();
        methods.insert("none".to_string(), colour_distance(source, &target)?);
        let reinhard_img = reinhard(source, &target)?;
        let macenko_img = macenko(source, &target).map_err(|e| EnhanceError::Input(format!("{}: {e}", path.display())))?;
        for (name, img) in [("reinhard", reinhard_img), ("macenko", macenko_img), ("sae", sae_img)] {
            methods.insert(name.to_string(), colour_distance(&img, &target)?);
            vesalius_io::save_2d(&out.join(format!("{stem}_{name}.png")), &img)?;
        }
        report.sources.insert(path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(), methods);
    }
    vesalius_train::run::write_json(&out.join("metrics.json"), &report).map_err(|e| EnhanceError::Internal(e.to_string()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesalius_io::IDENTITY;

    /// An H&E-like image from known stain vectors and concentrations.
    fn synthetic(he: [[f64; 3]; 2], scale: [f64; 2], n: usize) -> Image {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let px: Vec<[f32; 3]> = (0..n * n)
            .map(|_| {
                let (h, e) = (rng.random::<f64>() * 1.5 * scale[0], rng.random::<f64>() * 1.2 * scale[1]);
                std::array::from_fn(|k| (IO * (-(he[0][k] * h + he[1][k] * e)).exp() - 1.0).clamp(0.0, 255.0) as f32)
            })
            .collect();
        let like = Image::new(vec![0.0; n * n * 3], vec![n, n], 3, IDENTITY, "uint8").unwrap();
        from_pixels(&px, &like).unwrap()
    }

    fn unit(v: [f64; 3]) -> [f64; 3] {
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        v.map(|x| x / n)
    }

    const H: [f64; 3] = [0.65, 0.70, 0.29];
    const E: [f64; 3] = [0.07, 0.99, 0.11];

    #[test]
    fn macenko_recovers_known_stain_vectors() {
        let img = synthetic([unit(H), unit(E)], [1.0, 1.0], 64);
        let (he, _) = macenko_stains(&img).unwrap();
        for (est, truth) in he.iter().zip([unit(H), unit(E)]) {
            let cos = est.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>();
            assert!(cos > 0.99, "estimated {est:?} vs {truth:?} (cos {cos})");
        }
    }

    #[test]
    fn eigen_decomposition_of_a_symmetric_matrix() {
        let m = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 1.0]];
        let (vals, vecs) = symmetric_eigen3(m);
        for c in 0..3 {
            for r in 0..3 {
                let mv: f64 = (0..3).map(|k| m[r][k] * vecs[k][c]).sum();
                assert!((mv - vals[c] * vecs[r][c]).abs() < 1e-9);
            }
        }
        assert!(vals[0] <= vals[1] && vals[1] <= vals[2]);
    }

    #[test]
    fn reinhard_matches_the_targets_lab_moments_and_quantile_matching_the_distribution() {
        let source = synthetic([unit(H), unit(E)], [1.0, 0.5], 48);
        let target = synthetic([unit(E), unit(H)], [0.7, 1.0], 48);
        let before = colour_distance(&source, &target).unwrap();
        let after = colour_distance(&reinhard(&source, &target).unwrap(), &target).unwrap();
        assert!(after.mean < 0.1 * before.mean && after.std < 0.2 * before.std.max(0.5), "{before:?} → {after:?}");
        let m = match_quantiles(&[3.0, 1.0, 2.0], &[10.0, 30.0, 20.0]);
        assert_eq!(m, vec![30.0, 10.0, 20.0]);
        assert!((wasserstein1(&[0.0, 1.0], &[1.0, 2.0]) - 1.0).abs() < 1e-9);
    }
}
