//! Active learning's shared parts: how uncertain a model is about an image, and the order in which images are
//! offered to an annotator. Every task that pre-labels images (segmentation, classification) ranks its pool with
//! these scores, so that the methods mean the same thing everywhere (the strategies of MONAI Label's active
//! learning):
//! * [`Method::Entropy`]: the entropy of the class probabilities divided by `ln(classes)` (0 certain, 1 uniform),
//!   averaged over voxels or labels;
//! * [`Method::Tta`]: the variance of the class probabilities over test-time mirrorings;
//! * [`Method::McDropout`]: the same variance over forward passes with dropout active (Gal and Ghahramani 2016);
//! * [`Method::Random`]: a seeded random order, the baseline every strategy is measured against.
//!
//! ```
//! use std::path::PathBuf;
//! use vesalius_train::label::{Method, Ranked, entropy_score, rank, variance_score};
//! // Two voxels, two classes, `[class][voxel]`: one certain voxel and one coin toss.
//! let p = [1.0, 0.5, 0.0, 0.5];
//! assert!((entropy_score(&p, 2) - 0.5).abs() < 1e-6);
//! // Two samples that agree on the first voxel and disagree completely on the second.
//! let a = vec![1.0, 1.0, 0.0, 0.0];
//! let b = vec![1.0, 0.0, 0.0, 1.0];
//! assert!((variance_score(&[a, b]) - 0.125).abs() < 1e-6);
//! assert_eq!("mc-dropout".parse::<Method>().unwrap(), Method::McDropout);
//! let order = rank(vec![
//!     Ranked { path: PathBuf::from("a.png"), score: 0.1 },
//!     Ranked { path: PathBuf::from("b.png"), score: 0.7 },
//! ]);
//! assert_eq!(order[0].path, PathBuf::from("b.png"));
//! ```
use std::path::PathBuf;
use std::str::FromStr;

/// How an image's uncertainty is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Mean normalised entropy of the class probabilities.
    Entropy,
    /// Mean variance of the class probabilities over test-time mirrorings.
    Tta,
    /// Mean variance of the class probabilities over Monte-Carlo dropout passes.
    McDropout,
    /// A seeded random score (the baseline).
    Random,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "entropy" => Ok(Method::Entropy),
            "tta" => Ok(Method::Tta),
            "mc-dropout" => Ok(Method::McDropout),
            "random" => Ok(Method::Random),
            other => Err(format!("unknown uncertainty method `{other}` (entropy, tta, mc-dropout, random)")),
        }
    }
}

/// Mean over voxels of the class entropy divided by `ln(classes)`, for probabilities laid out `[class][voxel]`.
pub fn entropy_score(p: &[f32], classes: usize) -> f64 {
    if classes < 2 || p.is_empty() {
        return 0.0;
    }
    let n = p.len() / classes;
    let norm = (classes as f64).ln();
    let mut sum = 0.0;
    for v in 0..n {
        let mut h = 0.0;
        for c in 0..classes {
            let q = p[c * n + v] as f64;
            if q > 0.0 {
                h -= q * q.ln();
            }
        }
        sum += h / norm;
    }
    sum / n.max(1) as f64
}

/// Mean over voxels and classes of the variance (population) of the probabilities across `samples`, each laid
/// out `[class][voxel]` (any layout: every element counts once).
pub fn variance_score(samples: &[Vec<f32>]) -> f64 {
    let Some(first) = samples.first() else { return 0.0 };
    let t = samples.len() as f64;
    let mut sum = 0.0;
    for i in 0..first.len() {
        let mean = samples.iter().map(|s| s[i] as f64).sum::<f64>() / t;
        sum += samples.iter().map(|s| (s[i] as f64 - mean).powi(2)).sum::<f64>() / t;
    }
    sum / first.len().max(1) as f64
}

/// A uniform number in [0, 1) from a seed and a name (the random baseline's score).
pub fn random_score(seed: u64, name: &str) -> f64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// An image of the pool with its score.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// The image file.
    pub path: PathBuf,
    /// Its uncertainty (higher first).
    pub score: f64,
}

/// Sorts by score, highest first; ties by path.
pub fn rank(mut items: Vec<Ranked>) -> Vec<Ranked> {
    items.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.path.cmp(&b.path)));
    items
}
