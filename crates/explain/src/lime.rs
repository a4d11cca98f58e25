//! LIME for images (Ribeiro et al. 2016): which superpixels the model's score depends on, from a weighted linear
//! surrogate fitted to the scores of randomly masked copies.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::Input;

/// What a switched-off segment is filled with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Hide {
    /// Each channel's mean over the whole input.
    ImageMean,
    /// A fixed value.
    Value(f32),
}

/// LIME settings; the defaults are the `lime` package's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimeConfig {
    /// Perturbed samples (the first is the unperturbed input).
    pub samples: usize,
    /// Width of the kernel `√exp(−d² / width²)` on the cosine distance d to the unperturbed input.
    pub kernel_width: f64,
    /// The surrogate's ridge penalty.
    pub ridge: f64,
    /// Seed of the masks.
    pub seed: u64,
    /// Fill of switched-off segments.
    pub hide: Hide,
    /// Inputs scored per call.
    pub batch: usize,
}

impl Default for LimeConfig {
    fn default() -> Self {
        Self { samples: 1000, kernel_width: 0.25, ridge: 1.0, seed: 0, hide: Hide::ImageMean, batch: 32 }
    }
}

/// The surrogate and what it says.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimeResult {
    /// One weight per segment.
    pub weights: Vec<f64>,
    /// The surrogate's intercept.
    pub intercept: f64,
    /// Its weighted R² on the samples.
    pub r2: f64,
    /// Segments by decreasing absolute weight: (segment, weight).
    pub top: Vec<(u32, f64)>,
    /// Each position's segment weight.
    pub map: Vec<f32>,
}

/// Solves the symmetric positive-definite system `a · x = b` (Cholesky); `a` is `n × n` row-major.
fn solve_spd(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.max(1e-12).sqrt() } else { s / l[j * n + j] };
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

/// Explains the score of `x` over `segments` (one label per position, 0..S).
pub fn lime(x: &Input, segments: &[u32], score: &mut dyn FnMut(&[Vec<f32>]) -> Vec<f32>, cfg: &LimeConfig) -> LimeResult {
    let n = x.positions();
    let s = segments.iter().copied().max().map_or(0, |m| m as usize + 1);
    let fill: Vec<f32> = (0..x.channels)
        .map(|c| match cfg.hide {
            Hide::ImageMean => x.data[c * n..(c + 1) * n].iter().sum::<f32>() / n as f32,
            Hide::Value(v) => v,
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let samples = cfg.samples.max(2);
    let z: Vec<Vec<bool>> = (0..samples).map(|i| (0..s).map(|_| i == 0 || rng.random::<bool>()).collect()).collect();
    let mut y = Vec::with_capacity(samples);
    for chunk in z.chunks(cfg.batch.max(1)) {
        let inputs: Vec<Vec<f32>> = chunk
            .iter()
            .map(|on| {
                let mut v = x.data.clone();
                for c in 0..x.channels {
                    for p in 0..n {
                        if !on[segments[p] as usize] {
                            v[c * n + p] = fill[c];
                        }
                    }
                }
                v
            })
            .collect();
        y.extend(score(&inputs).into_iter().map(f64::from));
    }
    let pi: Vec<f64> = z
        .iter()
        .map(|on| {
            let k = on.iter().filter(|&&b| b).count() as f64;
            let d = if k == 0.0 { 1.0 } else { 1.0 - k / (k.sqrt() * (s as f64).sqrt()) };
            (-(d * d) / (cfg.kernel_width * cfg.kernel_width)).exp().sqrt()
        })
        .collect();
    // weighted ridge with an unpenalised intercept, on centred data
    let wsum: f64 = pi.iter().sum();
    let zbar: Vec<f64> = (0..s).map(|j| z.iter().zip(&pi).map(|(r, w)| w * f64::from(u8::from(r[j]))).sum::<f64>() / wsum).collect();
    let ybar: f64 = y.iter().zip(&pi).map(|(v, w)| v * w).sum::<f64>() / wsum;
    let mut a = vec![0.0; s * s];
    let mut b = vec![0.0; s];
    for ((r, &w), &yi) in z.iter().zip(&pi).zip(&y) {
        let zc: Vec<f64> = (0..s).map(|j| f64::from(u8::from(r[j])) - zbar[j]).collect();
        for i in 0..s {
            b[i] += w * zc[i] * (yi - ybar);
            for j in 0..=i {
                a[i * s + j] += w * zc[i] * zc[j];
            }
        }
    }
    for i in 0..s {
        for j in 0..i {
            a[j * s + i] = a[i * s + j];
        }
        a[i * s + i] += cfg.ridge;
    }
    let weights = solve_spd(&a, &b, s);
    let intercept = ybar - weights.iter().zip(&zbar).map(|(w, m)| w * m).sum::<f64>();
    let pred: Vec<f64> = z.iter().map(|r| intercept + (0..s).filter(|&j| r[j]).map(|j| weights[j]).sum::<f64>()).collect();
    let ss_res: f64 = y.iter().zip(&pred).zip(&pi).map(|((yi, pi_), w)| w * (yi - pi_).powi(2)).sum();
    let ss_tot: f64 = y.iter().zip(&pi).map(|(yi, w)| w * (yi - ybar).powi(2)).sum();
    let mut top: Vec<(u32, f64)> = weights.iter().enumerate().map(|(j, &w)| (j as u32, w)).collect();
    top.sort_by(|p, q| q.1.abs().total_cmp(&p.1.abs()));
    let map = segments.iter().map(|&l| weights[l as usize] as f32).collect();
    LimeResult { weights, intercept, r2: if ss_tot > 0.0 { 1.0 - ss_res / ss_tot } else { 1.0 }, top, map }
}
