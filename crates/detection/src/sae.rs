//! The stacked sparse auto-encoder detector (after Xu et al., IEEE TMI 2016, nuclei in histopathology): square
//! patches centred near a finding's centre are objects, patches centred away from every centre are background; a
//! stacked sparse auto-encoder is trained greedily, layer by layer, on training patches, its encoder is fine-tuned
//! with a softmax head on the engine, and the classifier is scanned over the image at a stride: peaks of the
//! object probability on the scanning grid are the marks (diameter: the training findings' median).
//!
//! ```
//! use vesalius_detection::sae::patch_at;
//! // A 4×4 patch centred at (1, 1) of a 3×3 image: the outside is 0.
//! let data: Vec<f32> = (1..=9).map(|v| v as f32).collect();
//! let mut p = Vec::new();
//! patch_at(&data, [3, 3], [1, 1], 4, &mut p);
//! assert_eq!(p, [0., 0., 0., 0., 0., 1., 2., 3., 0., 4., 5., 6., 0., 7., 8., 9.]);
//! ```
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vesalius_nets::{Autoencoder, SaeClassifier};
use vesalius_train::RunDir;
use vesalius_train::greedy::{GreedyConfig, Sparsity, train_stacked_in_run};

use crate::DetectError;
use crate::annotations::Detection;
use crate::data::{Augment, Scan, Target, clear_of};
use crate::infer::{DetectOptions, Scanning, peaks, suppress};
use crate::recipe::{Band, DetRecipe};

/// Appends the `k × k` patch of a `[w, h]` plane whose top-left is `centre − k/2` (0 outside the plane).
pub fn patch_at(data: &[f32], shape: [usize; 2], centre: [i64; 2], k: usize, out: &mut Vec<f32>) {
    let half = (k / 2) as i64;
    for y in 0..k as i64 {
        let sy = centre[1] - half + y;
        for x in 0..k as i64 {
            let sx = centre[0] - half + x;
            let inside = sx >= 0 && sy >= 0 && (sx as usize) < shape[0] && (sy as usize) < shape[1];
            out.push(if inside { data[sx as usize + shape[0] * sy as usize] } else { 0.0 });
        }
    }
}

/// Whether the patch around `centre` stays clear of the held-out bands.
fn clear(bands: &[Band], centre: [i64; 2], k: usize) -> bool {
    let half = (k / 2) as i64;
    let start = [(centre[0] - half).max(0) as usize, (centre[1] - half).max(0) as usize, 0];
    let size = [k, k, 1];
    clear_of(bands, start, size)
}

/// Draws one training patch of `scan` and its label (1: centred on a finding, 0: background), or `None` when no
/// position fits after 100 tries. `hard` are background centres to prefer when `use_hard`.
#[allow(clippy::too_many_arguments)]
pub fn draw(
    scan: &Scan,
    targets: &[Target],
    bands: &[Band],
    k: usize,
    positive: bool,
    hard: &[[f64; 3]],
    use_hard: bool,
    rng: &mut ChaCha8Rng,
) -> Option<(Vec<f32>, usize)> {
    let [w, h, _] = scan.shape;
    for attempt in 0..100 {
        // Hard negatives near a band may not fit: every other attempt draws anywhere.
        let use_hard = use_hard && attempt % 2 == 0;
        let (c, label) = if positive && !targets.is_empty() {
            let t = &targets[rng.random_range(0..targets.len())];
            let j = (t.sigma[0] * 6.0 / 8.0).max(1.0);
            ([(t.centre[0] + rng.random_range(-j..=j)).round() as i64, (t.centre[1] + rng.random_range(-j..=j)).round() as i64], 1)
        } else if use_hard && !hard.is_empty() {
            let p = hard[rng.random_range(0..hard.len())];
            ([p[0].round() as i64, p[1].round() as i64], 0)
        } else {
            ([rng.random_range(0..w) as i64, rng.random_range(0..h) as i64], 0)
        };
        if label == 0 {
            // Background: farther than a third of the diameter from every centre.
            let near = targets.iter().any(|t| {
                let r = t.sigma[0] * 6.0 / 3.0;
                (t.centre[0] - c[0] as f64).powi(2) + (t.centre[1] - c[1] as f64).powi(2) < r * r
            });
            if near {
                continue;
            }
        }
        if !clear(bands, c, k) {
            continue;
        }
        let mut p = Vec::with_capacity(k * k);
        patch_at(&scan.data, [w, h], c, k, &mut p);
        let aug = Augment::draw(rng, [k, k, 1], 2);
        return Some((aug.values(&p, [k, k, 1]), label));
    }
    None
}

/// Greedy layer-wise pre-training of the stacked sparse auto-encoder on `samples` training patches (half centred on
/// findings), kept as `pretrain/autoencoder.mpk` with its losses in `pretrain/log.jsonl`; a resumed run reads it back.
pub fn pretrain<B: AutodiffBackend>(
    recipe: &DetRecipe,
    scans: &[(Scan, Vec<Band>)],
    run: &RunDir,
    device: &B::Device,
    quiet: bool,
) -> Result<Autoencoder<B>, DetectError> {
    let a = &recipe.model.sae;
    let k = a.patch;
    let dim = k * k;
    let config = GreedyConfig {
        hidden: a.hidden.clone(),
        epochs: a.pretrain_epochs,
        fine_tune_epochs: a.pretrain_epochs / 2,
        batch: 64,
        lr: 1e-3,
        corruption: 0.0,
        sparsity: Some(Sparsity { rho: a.sparsity[0], beta: a.sparsity[1] }),
        sigmoid_output: false,
        seed: recipe.seed,
    };
    let rows = || {
        let mut rng = crate::data::epoch_rng(vesalius_io::mix(recipe.seed ^ 0x5ae));
        let targets: Vec<Vec<Target>> = scans.iter().map(|(s, _)| s.targets()).collect();
        let mut rows = Vec::with_capacity(a.samples * dim);
        let (mut n, mut tries) = (0, 0);
        while n < a.samples {
            tries += 1;
            if tries > 10 * a.samples {
                return Err(vesalius_train::TrainError::Input(format!(
                    "only {n} of {} pre-training patches fit outside the held-out bands",
                    a.samples
                )));
            }
            let i = rng.random_range(0..scans.len());
            if let Some((p, _)) = draw(&scans[i].0, &targets[i], &scans[i].1, k, n % 2 == 0, &[], false, &mut rng) {
                rows.extend(p);
                n += 1;
            }
        }
        Ok(rows)
    };
    let ae = train_stacked_in_run::<B>(run, rows, dim, &config, device, quiet)?;
    Ok(ae)
}

/// The object probability of the classifier on the scanning grid of a 2D scan (every `stride` pixels from
/// `stride / 2`): `(probabilities, grid shape, first position)`.
pub fn scan_map<B: Backend>(
    net: &SaeClassifier<B>,
    scan: &Scan,
    k: usize,
    stride: usize,
    device: &B::Device,
) -> (Vec<f32>, [usize; 2], usize) {
    let [w, h, _] = scan.shape;
    let first = stride / 2;
    // A scan narrower than half a stride still gets one scanning position.
    let gw = w.saturating_sub(first).div_ceil(stride).max(1);
    let gh = h.saturating_sub(first).div_ceil(stride).max(1);
    let centres: Vec<[i64; 2]> =
        (0..gh).flat_map(|y| (0..gw).map(move |x| [(first + x * stride) as i64, (first + y * stride) as i64])).collect();
    let mut prob = Vec::with_capacity(centres.len());
    for chunk in centres.chunks(1024) {
        let mut v = Vec::with_capacity(chunk.len() * k * k);
        for &c in chunk {
            patch_at(&scan.data, [w, h], c, k, &mut v);
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(v, [chunk.len(), 1, k, k]), device);
        let p = softmax(net.forward(x), 1);
        let n = chunk.len();
        let p1: Vec<f32> = p.slice([0..n, 1..2]).into_data().convert::<f32>().to_vec().unwrap_or_default();
        prob.extend(p1);
    }
    (prob, [gw, gh], first)
}

/// The marks of the scanned classifier on a 2D scan: peaks of the grid map, in world LPS millimetres, with
/// `diameter_mm`, suppressed and capped.
pub fn detect<B: Backend>(
    net: &SaeClassifier<B>,
    scan: &Scan,
    a: &Scanning,
    options: &DetectOptions,
    device: &B::Device,
) -> Vec<Detection> {
    let diameter_mm = a.diameter_mm;
    let (prob, [gw, gh], first) = scan_map(net, scan, a.patch, a.stride, device);
    let marks = peaks(&prob, [gw, gh, 1], options.min_probability)
        .into_iter()
        .map(|(lin, p)| {
            let idx = [(first + (lin % gw) * a.stride) as f64, (first + (lin / gw) * a.stride) as f64, 0.0];
            Detection::mark(&scan.id, scan.geometry.to_world(idx), diameter_mm, p as f64)
        })
        .collect();
    suppress(marks, options.max_marks, options.min_diameter_mm)
}
