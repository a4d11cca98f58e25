//! Evaluation of a learned-registration run on its test pairs (by default) or validation pairs: Dice of warped
//! labels before and after (and after the affine network), HD95, MSE, Jacobian folding, displacement error for
//! synthetic pairs, seconds per pair; means with 95 % bootstrap intervals over pairs; optionally registration by
//! optimisation on the same pairs for comparison.
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};
use vesalius_data::Image;
use vesalius_eval::EvalSet;
use vesalius_eval::bootstrap::{Estimate, percentile_ci};
use vesalius_nets::ops::{Padding, sample_linear, sample_nearest};
use vesalius_train::RunDir;

use crate::affine::identity;
use crate::metrics::{JacobianStats, jacobian_determinants, jacobian_stats, label_metrics};
use crate::{RegError, to_vec};

use crate::infer::LearnedRegistrar;
use crate::train::*;
/// One validation pair's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    /// The pair.
    pub name: String,
    /// Mean Dice over the non-background labels: before registration, after the affine network (if any), after
    /// the whole registration.
    pub dice_before: Option<f64>,
    /// After the affine stage.
    pub dice_affine: Option<f64>,
    /// After registration.
    pub dice_after: Option<f64>,
    /// Mean 95th-percentile Hausdorff distance over the labels after registration, mm.
    pub hd95_after: Option<f64>,
    /// Per label value: (Dice before, Dice after).
    pub dice_per_label: Vec<(i64, f64, f64)>,
    /// Mean squared intensity difference before and after.
    pub mse_before: f64,
    /// After registration.
    pub mse_after: f64,
    /// Jacobian determinant of the deformable field.
    pub jacobian: JacobianStats,
    /// For synthetic pairs: mean and maximum error of the recovered displacement, mm, inside the fixed labels (or
    /// where the fixed image is above 10 % of its range): without registration and with it.
    pub field_error_mm: Option<FieldError>,
    /// Seconds for the networks and the warp of this pair.
    pub seconds: f64,
}

/// Error of a recovered displacement against the truth, mm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldError {
    /// Mean |truth| (no registration).
    pub mean_before: f64,
    /// Maximum |truth|.
    pub max_before: f64,
    /// Mean |recovered − truth|.
    pub mean_after: f64,
    /// Maximum |recovered − truth|.
    pub max_after: f64,
}

/// A method's evaluation on the validation pairs: per pair, and means with 95 % bootstrap confidence intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodMetrics {
    /// Per pair.
    pub pairs: Vec<PairMetrics>,
    /// Means over pairs with their intervals, by name.
    pub mean: Vec<(String, Estimate)>,
}

impl MethodMetrics {
    /// The mean of a metric by name (`dice_after`, `folding_percent`, …).
    pub fn mean_of(&self, name: &str) -> Option<f64> {
        self.mean.iter().find(|(n, _)| n == name).map(|(_, e)| e.value)
    }
}

/// A run's evaluation on its test (`metrics.json`) or validation pairs (`metrics-val.json`): the trained networks,
/// and optionally registration by optimisation on the same pairs for comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// The pairs scored: `"test"` or `"validation"`.
    pub set: String,
    /// The run's networks.
    pub learned: MethodMetrics,
    /// Optimisation ([`crate::register`]) on the same pairs, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimisation: Option<MethodMetrics>,
}

/// Metrics of one pair registered by the map `coords` (`[3][d·h·w]`: where each voxel of the common grid reads
/// the moving image, in its voxels), whose deformable part is `field` and affine-only map `affine_coords`.
struct PairEval<'a> {
    pair: &'a PreparedPair,
    size: [usize; 3],
    spacing: [f64; 3],
    shape: [usize; 3],
    classes: usize,
    label_values: &'a [i64],
}

impl PairEval<'_> {
    #[allow(clippy::too_many_arguments)]
    fn metrics<B: Backend>(
        &self,
        coords: Vec<f32>,
        warped: &[f32],
        field: &[f32],
        affine_coords: Option<Vec<f32>>,
        seconds: f64,
        device: &B::Device,
    ) -> PairMetrics {
        let (p, size, classes) = (self.pair, self.size, self.classes);
        let n = size[0] * size[1] * size[2];
        let coords_t = |v: Vec<f32>| tensor5::<B>(v, 3, size, device);
        let mse = |a: &[f32]| a.iter().zip(&p.fixed).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
        let jacobian =
            jacobian_stats(&jacobian_determinants(&[field[..n].to_vec(), field[n..2 * n].to_vec(), field[2 * n..].to_vec()], size));
        let mut grid_affine = identity();
        for (a, s) in self.spacing.iter().enumerate() {
            grid_affine[a][a] = *s;
        }
        let as_image = |v: Vec<f32>| Image::new(v, self.shape.to_vec(), 1, grid_affine, "float32").expect("grid-sized");
        let (mut dice_before, mut dice_affine, mut dice_after, mut hd95_after, mut dice_per_label) = (None, None, None, None, Vec::new());
        if let (Some(ml), Some(fl)) = (&p.moving_labels, &p.fixed_labels) {
            let labels = tensor5::<B>(ml.clone(), 1, size, device);
            let after = to_vec(sample_nearest(labels.clone(), coords_t(coords.clone())));
            dice_before = Some(mean_dice(ml, fl, classes));
            dice_after = Some(mean_dice(&after, fl, classes));
            dice_affine = affine_coords.map(|c| mean_dice(&to_vec(sample_nearest(labels, coords_t(c))), fl, classes));
            let metrics = label_metrics(&as_image(after.clone()), &as_image(fl.clone()));
            let hd: Vec<f64> = metrics.iter().filter_map(|(_, m)| m.hd95).collect();
            hd95_after = (!hd.is_empty()).then(|| hd.iter().sum::<f64>() / hd.len() as f64);
            for (k, value) in self.label_values.iter().enumerate().skip(1) {
                dice_per_label.push((*value, crate::metrics::dice(ml, fl, k as f32), crate::metrics::dice(&after, fl, k as f32)));
            }
        }
        let field_error_mm = p.truth.as_ref().map(|truth| {
            let inside: Vec<usize> = match &p.fixed_labels {
                Some(fl) => (0..n).filter(|&i| fl[i] > 0.0).collect(),
                None => (0..n).filter(|&i| p.fixed[i] > 0.1).collect(),
            };
            let voxel = |i: usize| [(i / (size[1] * size[2])) as f32, ((i / size[2]) % size[1]) as f32, (i % size[2]) as f32];
            let length = |v: [f64; 3]| (0..3).map(|c| (v[c] * self.spacing[2 - c]).powi(2)).sum::<f64>().sqrt();
            let before: Vec<f64> = inside.iter().map(|&i| length([0, 1, 2].map(|c| truth[c * n + i] as f64))).collect();
            let after: Vec<f64> =
                inside.iter().map(|&i| length([0, 1, 2].map(|c| (coords[c * n + i] - voxel(i)[c] - truth[c * n + i]) as f64))).collect();
            let stats = |v: &[f64]| (v.iter().sum::<f64>() / v.len().max(1) as f64, v.iter().copied().fold(0.0, f64::max));
            let ((mean_before, max_before), (mean_after, max_after)) = (stats(&before), stats(&after));
            FieldError { mean_before, max_before, mean_after, max_after }
        });
        PairMetrics {
            name: p.name.clone(),
            dice_before,
            dice_affine,
            dice_after,
            hd95_after,
            dice_per_label,
            mse_before: mse(&p.moving),
            mse_after: mse(warped),
            jacobian,
            field_error_mm,
            seconds,
        }
    }
}

fn summarise(pairs: Vec<PairMetrics>) -> MethodMetrics {
    type Getter = fn(&PairMetrics) -> Option<f64>;
    let series: [(&str, Getter); 11] = [
        ("dice_before", |p| p.dice_before),
        ("dice_affine", |p| p.dice_affine),
        ("dice_after", |p| p.dice_after),
        ("dice_gain", |p| p.dice_after.zip(p.dice_affine.or(p.dice_before)).map(|(a, b)| a - b)),
        ("hd95_after_mm", |p| p.hd95_after),
        ("mse_before", |p| Some(p.mse_before)),
        ("mse_after", |p| Some(p.mse_after)),
        ("folding_percent", |p| Some(p.jacobian.folding_percent)),
        ("field_error_before_mm", |p| p.field_error_mm.as_ref().map(|e| e.mean_before)),
        ("field_error_after_mm", |p| p.field_error_mm.as_ref().map(|e| e.mean_after)),
        ("seconds_per_pair", |p| Some(p.seconds)),
    ];
    let mut mean = Vec::new();
    for (name, get) in series {
        let values: Vec<f64> = pairs.iter().filter_map(get).collect();
        if values.len() != pairs.len() || values.is_empty() {
            continue;
        }
        let value = values.iter().sum::<f64>() / values.len() as f64;
        let estimate =
            percentile_ci(values.len(), 1000, 0.95, 0, value, |idx| Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64));
        mean.push((name.to_string(), estimate));
    }
    MethodMetrics { pairs, mean }
}

/// Pairs of an evaluation that get a figure (`figures/<set>-<pair>.png`).
pub const MAX_FIGURES: usize = 12;

/// The middle slice (first grid axis) of a pair: fixed, moving and warped in the fixed image's grey range, a
/// checkerboard of fixed and warped, |fixed − moving| and |fixed − warped| on one heat scale, and the Jacobian
/// determinant (white at 1, red above, blue below, full colour at 0 and 2).
fn write_figure(
    run: &RunDir,
    name: &str,
    fixed: &[f32],
    moving: &[f32],
    warped: &[f32],
    field: &[f32],
    size: [usize; 3],
) -> Result<(), RegError> {
    use vesalius_io::figure::{Colour, Panel, checkerboard, compose, robust_range};
    let (n, plane) = (size[0] * size[1] * size[2], size[1] * size[2]);
    let k = size[0] / 2;
    let (w, h) = (size[2], size[1]);
    let cut = |v: &[f32]| -> Vec<f32> {
        let s = &v[k * plane..(k + 1) * plane];
        (0..h).rev().flat_map(|y| s[y * w..(y + 1) * w].to_vec()).collect()
    };
    let (f, m, wp) = (cut(fixed), cut(moving), cut(warped));
    let (lo, hi) = robust_range(fixed);
    let grey = Colour::Grey { lo, hi };
    let before: Vec<f32> = f.iter().zip(&m).map(|(a, b)| (a - b).abs()).collect();
    let after: Vec<f32> = f.iter().zip(&wp).map(|(a, b)| (a - b).abs()).collect();
    let max = before.iter().cloned().fold(0.0, f32::max).max(1e-6);
    let det = crate::metrics::jacobian_determinants(&[field[..n].to_vec(), field[n..2 * n].to_vec(), field[2 * n..].to_vec()], size);
    let det: Vec<f32> = det.iter().map(|&d| d as f32).collect();
    let panels = [
        Panel { data: f.clone(), w, h, colour: grey },
        Panel { data: m, w, h, colour: grey },
        Panel { data: wp.clone(), w, h, colour: grey },
        Panel { data: checkerboard(&f, &wp, w, h, 8), w, h, colour: grey },
        Panel { data: before, w, h, colour: Colour::Heat { max } },
        Panel { data: after, w, h, colour: Colour::Heat { max } },
        Panel { data: cut(&det), w, h, colour: Colour::Diverging { centre: 1.0, span: 1.0 } },
    ];
    let path = run.file(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RegError::Internal(format!("{}: {e}", dir.display())))?;
    }
    vesalius_io::save_2d(&path, &compose(&panels, 4)?)?;
    Ok(())
}

/// Evaluates a run's best networks on its test (or validation) pairs, on the common grid, and with `optimisation`
/// also registration by optimisation of the same pairs; writes `metrics.json` (or `metrics-val.json`).
pub fn evaluate<AB: AutodiffBackend>(
    run: &RunDir,
    device: &AB::Device,
    optimisation: Option<&crate::RegisterOptions>,
    set: EvalSet,
) -> Result<RunMetrics, RegError> {
    let registrar = LearnedRegistrar::<AB::InnerBackend>::load(run, device)?;
    let source = PairSource::open(registrar.recipe())?;
    let size = registrar.size();
    let (shape, spacing) = (registrar.recipe().data.shape, registrar.recipe().data.spacing);
    let mut grid_affine = identity();
    for (a, s) in spacing.iter().enumerate() {
        grid_affine[a][a] = *s;
    }
    let (mut learned, mut optimised) = (Vec::new(), Vec::new());
    let pairs = match set {
        EvalSet::Test => source.test::<AB::InnerBackend>(device),
        EvalSet::Validation => source.validation::<AB::InnerBackend>(device),
    };
    if pairs.is_empty() {
        return Err(RegError::Input(format!(
            "{}: this run holds out no test pairs ([train] test = N); score the validation pairs with --split val",
            run.root().display()
        )));
    }
    let bar = vesalius_train::progress::bar(pairs.len() as u64, &format!("evaluation ({})", set.name()), false);
    for p in pairs {
        bar.inc(1);
        let eval =
            PairEval { pair: &p, size, spacing, shape, classes: registrar.label_values().len(), label_values: registrar.label_values() };
        let started = Instant::now();
        let m = tensor5::<AB::InnerBackend>(p.moving.clone(), 1, size, device);
        let prediction = registrar.predict(m.clone(), tensor5(p.fixed.clone(), 1, size, device));
        let warped = to_vec(sample_linear(m, prediction.coords.clone(), Padding::Zeros));
        let seconds = started.elapsed().as_secs_f64();
        let affine_only = prediction.affine.as_ref().map(|a| to_vec(affine_coords(a.clone(), size)));
        let field = to_vec(prediction.field);
        if learned.len() < MAX_FIGURES {
            write_figure(run, &format!("figures/{}-{}.png", set.name(), p.name), &p.fixed, &p.moving, &warped, &field, size)?;
        }
        learned.push(eval.metrics::<AB::InnerBackend>(to_vec(prediction.coords), &warped, &field, affine_only, seconds, device));
        if let Some(options) = optimisation {
            let as_image = |v: &Vec<f32>| Image::new(v.clone(), shape.to_vec(), 1, grid_affine, "float32").expect("grid-sized");
            let started = Instant::now();
            let r = crate::register::<AB>(&as_image(&p.fixed), &as_image(&p.moving), options, device);
            let seconds = started.elapsed().as_secs_f64();
            optimised.push(eval.metrics::<AB::InnerBackend>(
                r.moving_voxel.concat(),
                &r.warped.data()[..r.warped.voxels()],
                &r.field_voxels.concat(),
                None,
                seconds,
                device,
            ));
        }
    }
    bar.finish_and_clear();
    let metrics =
        RunMetrics { set: set.name().into(), learned: summarise(learned), optimisation: optimisation.map(|_| summarise(optimised)) };
    run.write_json(set.file(), &metrics)?;
    Ok(metrics)
}
