//! Evaluation of a run on its test cases (by default) or its validation cases, in each case's original grid: per
//! class Dice, IoU, HD95 and ASSD in millimetres, volume difference; per-case values and means with 95 %
//! percentile-bootstrap confidence intervals (1,000 resamples of patients when cases name their patients, of cases
//! otherwise), written to `metrics.json` (test) or `metrics-val.json` (validation), which say which set they
//! scored.
//!
//! Surface distances of a case where a structure is missed (or predicted where the reference has none) are
//! undefined; the means count such cases with the image diagonal in millimetres as their distance (the largest
//! distance inside the image) instead of dropping them, and report how many there were.
use crate::infer::Predictor;
use crate::train::split;
use crate::{RunDir, SegError};
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use vesalius_eval::bootstrap::{Clusters, Estimate, cluster_percentile_ci};
use vesalius_eval::segmentation::{ClassMetrics, class_metrics};

/// Bootstrap resamples.
pub const RESAMPLES: usize = 1000;

pub use vesalius_eval::EvalSet;

/// One case's metrics per foreground class (by name).
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Case id.
    pub id: String,
    /// Patient id.
    pub patient: String,
    /// Metrics per class name (surface distances `null` where one of the two maps is empty).
    pub classes: BTreeMap<String, ClassMetrics>,
}

/// `metrics.json`.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsFile {
    /// The set scored: `"test"` or `"validation"`.
    pub set: String,
    /// What the bootstrap resampled: `"patients"` or `"cases"`.
    pub bootstrap_unit: String,
    /// Cases evaluated.
    pub cases: Vec<CaseResult>,
    /// Per class name, per metric: mean over cases with its 95 % interval. Surface distances count a case with a
    /// missed or spurious structure at the image diagonal (see `missing_surface`).
    pub mean: BTreeMap<String, BTreeMap<String, Estimate>>,
    /// Per class name: cases where exactly one of prediction and reference was empty (surface distance taken as
    /// the image diagonal in the means).
    pub missing_surface: BTreeMap<String, usize>,
    /// Confidence level.
    pub level: f64,
    /// What the run's refinement stage changed, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refinement: Option<RefinementEffect>,
    /// The recipe's unlabelled images (test evaluations only): what was segmented, without metrics.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unlabelled: Vec<UnlabelledCase>,
}

/// An image without a reference, segmented by the run; its picture is `figures/unlabelled-<id>.png`.
#[derive(Clone, Debug, Serialize)]
pub struct UnlabelledCase {
    /// Identifier.
    pub id: String,
    /// The image's voxel size, mm.
    pub spacing: Vec<f64>,
    /// Segmented volume per class name, millilitres.
    pub volume_ml: BTreeMap<String, f64>,
}

/// The refinement stage's effect on the cases scored: the U-Net's own segmentations (same sliding-window pass,
/// without the refinement) against the refined ones.
#[derive(Clone, Debug, Serialize)]
pub struct RefinementEffect {
    /// The refinement (`"crf_rnn"`).
    pub kind: String,
    /// Per class name: mean Dice of the U-Net alone, with its interval.
    pub unrefined_dice: BTreeMap<String, Estimate>,
    /// Per class name: mean over cases of Dice refined − Dice unrefined, with its interval (paired bootstrap).
    pub dice_change: BTreeMap<String, Estimate>,
    /// Per case id, per class name: the U-Net's own Dice.
    pub unrefined_cases: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Cases of an evaluation that get an overlay figure (`figures/<set>-<case>.png`).
pub const MAX_FIGURES: usize = 12;

/// Fill colours of predicted classes 1, 2, 3, … in overlays (red, blue, yellow, magenta, cyan, orange; then again).
pub const CLASS_COLOURS: [[f32; 3]; 6] =
    [[230.0, 30.0, 30.0], [40.0, 90.0, 240.0], [230.0, 200.0, 30.0], [200.0, 40.0, 200.0], [30.0, 200.0, 200.0], [240.0, 130.0, 20.0]];

/// Three orthogonal slices through the reference's centre of mass (without a reference, the prediction's; the image
/// centre when that is empty too): the image in grey (1st–99th percentile), the prediction filled by class (red for
/// class 1, see [`CLASS_COLOURS`]) and the
/// reference outlined in green, side by side (axial with anterior up, coronal and sagittal with superior up, the
/// volume first turned to RAS order; the patient's right on the right) as one RGB picture with square
/// pixels in millimetres (the finest voxel spacing, or finer so that the largest extent spans at least 256 pixels). A
/// 2D image gives its one plane.
pub fn triplanar_overlay(
    image: &vesalius_io::Image,
    prediction: &vesalius_io::Image,
    reference: Option<&vesalius_io::Image>,
) -> Result<vesalius_io::Image, SegError> {
    let empty;
    let reference = match reference {
        Some(r) => r,
        None => {
            empty = vesalius_io::Image::new(vec![0.0; prediction.voxels()], prediction.shape().to_vec(), 1, *prediction.affine(), "uint8")?;
            &empty
        }
    };
    // In RAS order, so that the planes are axial, coronal and sagittal whatever the storage order.
    let ras = |img: &vesalius_io::Image| -> Result<vesalius_io::Image, SegError> {
        Ok(if img.ndim() == 3 { vesalius_io::geometry::reorient(img, "RAS")? } else { img.clone() })
    };
    let (image, prediction, reference) = (&ras(image)?, &ras(prediction)?, &ras(reference)?);
    let centred_on = if reference.data().iter().any(|&v| v > 0.0) { reference } else { prediction };
    let sh = image.shape();
    let (nx, ny, nz) = (sh[0], sh.get(1).copied().unwrap_or(1), sh.get(2).copied().unwrap_or(1));
    let grey = image.channel(0);
    let mut sorted: Vec<f32> = grey.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let q = |p: f64| sorted.get(((sorted.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0.0);
    let (lo, hi) = (q(0.01), q(0.99));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let at = |x: usize, y: usize, z: usize| x + nx * (y + ny * z);
    let (mut c, mut n) = ([0f64; 3], 0f64);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if centred_on.data()[at(x, y, z)] > 0.0 {
                    c[0] += x as f64;
                    c[1] += y as f64;
                    c[2] += z as f64;
                    n += 1.0;
                }
            }
        }
    }
    let centre: [usize; 3] =
        if n > 0.0 { [(c[0] / n) as usize, (c[1] / n) as usize, (c[2] / n) as usize] } else { [nx / 2, ny / 2, nz / 2] };
    // Planes as (width, height, mm per voxel along u and v, voxel of (u, v)) with v counted from the top.
    let sp = image.spacing();
    let mm = |a: usize| sp.get(a).copied().unwrap_or(1.0);
    type Plane<'a> = (usize, usize, f64, f64, Box<dyn Fn(usize, usize) -> usize + 'a>);
    let mut planes: Vec<Plane> = vec![(nx, ny, mm(0), mm(1), Box::new(move |u, v| at(u, ny - 1 - v, centre[2])))];
    if nz > 1 {
        planes.push((nx, nz, mm(0), mm(2), Box::new(move |u, v| at(u, centre[1], nz - 1 - v))));
        planes.push((ny, nz, mm(1), mm(2), Box::new(move |u, v| at(centre[0], u, nz - 1 - v))));
    }
    // Square pixels of the finest spacing, finer still when the largest extent would span fewer than 256 pixels.
    let extent = planes.iter().map(|p| (p.0 as f64 * p.2).max(p.1 as f64 * p.3)).fold(0.0, f64::max);
    let finest = planes.iter().map(|p| p.2.min(p.3)).fold(f64::INFINITY, f64::min);
    let pixel = finest.min(extent / 256.0).max(extent / 2048.0);
    let size = |n: usize, s: f64| ((n as f64 * s / pixel).round() as usize).max(1);
    let gap = 4;
    let width: usize = planes.iter().map(|p| size(p.0, p.2)).sum::<usize>() + gap * (planes.len() - 1);
    let height = planes.iter().map(|p| size(p.1, p.3)).max().unwrap_or(1);
    let mut rgb = vec![255f32; 3 * width * height];
    let mut left = 0;
    for (w, h, su, sv, voxel) in &planes {
        let inside = |u: i64, v: i64| {
            u >= 0 && v >= 0 && (u as usize) < *w && (v as usize) < *h && reference.data()[voxel(u as usize, v as usize)] > 0.0
        };
        let (pw, ph) = (size(*w, *su), size(*h, *sv));
        for y in 0..ph {
            for x in 0..pw {
                let u = ((x as f64 + 0.5) * pixel / su) as usize;
                let v = ((y as f64 + 0.5) * pixel / sv) as usize;
                let (u, v) = (u.min(w - 1), v.min(h - 1));
                let i = voxel(u, v);
                let g = ((grey[i] - lo) / span).clamp(0.0, 1.0) * 255.0;
                let mut px = [g, g, g];
                let class = prediction.data()[i].round();
                if class > 0.0 {
                    let c = CLASS_COLOURS[(class as usize - 1) % CLASS_COLOURS.len()];
                    px = [0.6 * g + 0.4 * c[0], 0.6 * g + 0.4 * c[1], 0.6 * g + 0.4 * c[2]];
                }
                let (ui, vi) = (u as i64, v as i64);
                if inside(ui, vi) && !(inside(ui - 1, vi) && inside(ui + 1, vi) && inside(ui, vi - 1) && inside(ui, vi + 1)) {
                    px = [40.0, 220.0, 60.0];
                }
                let o = (left + x) + width * y;
                for k in 0..3 {
                    rgb[k * width * height + o] = px[k].round();
                }
            }
        }
        left += pw + gap;
    }
    Ok(vesalius_io::Image::new(rgb, vec![width, height], 3, vesalius_io::IDENTITY, "uint8")?)
}

/// Writes `figures/<name>.png` in the run.
fn save_figure(run: &RunDir, name: &str, figure: &vesalius_io::Image) -> Result<(), SegError> {
    let path = run.file(&format!("figures/{name}.png"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SegError::Internal(format!("{}: {e}", dir.display())))?;
    }
    Ok(vesalius_io::save_2d(&path, figure)?)
}

fn mean_ci(values: &[f64], clusters: &Clusters, seed: u64) -> Estimate {
    let value = values.iter().sum::<f64>() / values.len().max(1) as f64;
    cluster_percentile_ci(clusters, RESAMPLES, 0.95, seed, value, |idx| {
        Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64)
    })
}

/// Length of the image's diagonal in millimetres.
pub fn diagonal_mm(shape: [usize; 3], spacing: [f64; 3]) -> f64 {
    (0..3).map(|a| (shape[a] as f64 * spacing[a]).powi(2)).sum::<f64>().sqrt()
}

/// Predicts every case of `set` with the run's best model and scores it against its labels.
pub fn evaluate<B: Backend>(run: &RunDir, device: &B::Device, flip_tta: bool, set: EvalSet) -> Result<MetricsFile, SegError> {
    let predictor = Predictor::<B>::load(run, device)?;
    let split = split(&predictor.recipe, run)?;
    let sources = match set {
        EvalSet::Test => &split.test,
        EvalSet::Validation => &split.val,
    };
    let pictures_only = set == EvalSet::Test && !predictor.recipe.data.unlabelled.is_empty();
    if sources.is_empty() && !pictures_only {
        return Err(SegError::Input(format!(
            "{}: this run has no labelled {} cases (a test set comes from imagesTs/ with labelsTs/, [data] test, test_share or test_slab); score the validation set with --split val",
            run.root().display(),
            set.name()
        )));
    }
    let bar = vesalius_train::progress::bar(sources.len() as u64, &format!("evaluation ({})", set.name()), false);
    let mut cases = Vec::new();
    let mut diagonals = Vec::new();
    let mut unrefined_cases: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for source in sources {
        let subject = source.load()?;
        let reference = subject.label.as_ref().ok_or_else(|| SegError::Input(format!("case '{}' has no labels", source.id())))?;
        let (seg, plain) = predictor.predict_both(&subject.image, false, flip_tta, true)?;
        if cases.len() < MAX_FIGURES {
            let figure = triplanar_overlay(&subject.image, &seg.labels, Some(reference))?;
            save_figure(run, &format!("{}-{}", set.name(), source.id()), &figure)?;
        }
        let mut shape = [1usize; 3];
        shape[..subject.image.ndim()].copy_from_slice(subject.image.shape());
        let mut spacing = [1.0f64; 3];
        spacing[..subject.image.ndim()].copy_from_slice(&subject.image.spacing());
        let mut classes = BTreeMap::new();
        for (&value, name) in split.labels.iter().filter(|(v, _)| **v > 0) {
            classes.insert(name.clone(), class_metrics(seg.labels.data(), reference.data(), value as f32, shape, spacing));
            if let Some(p) = &plain {
                let dice = class_metrics(p.labels.data(), reference.data(), value as f32, shape, spacing).dice;
                unrefined_cases.entry(source.id().to_string()).or_default().insert(name.clone(), dice);
            }
        }
        cases.push(CaseResult { id: source.id().to_string(), patient: source.patient().to_string(), classes });
        diagonals.push(diagonal_mm(shape, spacing));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let patients: Vec<Option<&str>> = cases.iter().map(|c| Some(c.patient.as_str())).collect();
    let clusters = Clusters::from_ids(&patients);
    let mut mean = BTreeMap::new();
    let mut missing_surface = BTreeMap::new();
    // Without labelled cases (a run that only pictures its unlabelled images) there is nothing to average.
    for (&value, name) in split.labels.iter().filter(|(v, _)| **v > 0 && !cases.is_empty()) {
        let get = |f: &dyn Fn(&ClassMetrics) -> f64| -> Vec<f64> { cases.iter().map(|c| f(&c.classes[name])).collect() };
        let or_diagonal = |f: &dyn Fn(&ClassMetrics) -> Option<f64>| -> Vec<f64> {
            cases.iter().zip(&diagonals).map(|(c, d)| f(&c.classes[name]).unwrap_or(*d)).collect()
        };
        let mut m = BTreeMap::new();
        let seed = value as u64;
        m.insert("dice".to_string(), mean_ci(&get(&|c| c.dice), &clusters, seed));
        m.insert("iou".to_string(), mean_ci(&get(&|c| c.iou), &clusters, seed));
        m.insert("hd95_mm".to_string(), mean_ci(&or_diagonal(&|c| c.hd95), &clusters, seed));
        m.insert("assd_mm".to_string(), mean_ci(&or_diagonal(&|c| c.assd), &clusters, seed));
        m.insert("volume_difference_mm3".to_string(), mean_ci(&get(&|c| c.volume_difference), &clusters, seed));
        mean.insert(name.clone(), m);
        missing_surface.insert(name.clone(), cases.iter().filter(|c| c.classes[name].hd95.is_none()).count());
    }
    let refinement = (predictor.refines() && !cases.is_empty()).then(|| {
        let mut unrefined_dice = BTreeMap::new();
        let mut dice_change = BTreeMap::new();
        for (&value, name) in split.labels.iter().filter(|(v, _)| **v > 0) {
            let plain: Vec<f64> =
                cases.iter().map(|c| unrefined_cases.get(&c.id).and_then(|m| m.get(name)).copied().unwrap_or(f64::NAN)).collect();
            let change: Vec<f64> = cases.iter().zip(&plain).map(|(c, p)| c.classes[name].dice - p).collect();
            unrefined_dice.insert(name.clone(), mean_ci(&plain, &clusters, value as u64));
            dice_change.insert(name.clone(), mean_ci(&change, &clusters, value as u64));
        }
        RefinementEffect { kind: "crf_rnn".into(), unrefined_dice, dice_change, unrefined_cases }
    });
    let mut unlabelled = Vec::new();
    if set == EvalSet::Test {
        for entry in &predictor.recipe.data.unlabelled {
            let id = entry.name();
            let case =
                vesalius_data::msd::Case { id: id.clone(), patient: id.clone(), images: entry.image.clone(), label: None, stratum: None };
            let image = vesalius_data::loader::load_case(&case, &vesalius_data::transforms::Pipeline::default())?.image;
            let seg = predictor.predict(&image, false, flip_tta)?;
            save_figure(run, &format!("unlabelled-{id}"), &triplanar_overlay(&image, &seg.labels, None)?)?;
            let voxel_ml = image.spacing().iter().product::<f64>() / 1000.0;
            let volume_ml = split
                .labels
                .iter()
                .filter(|(v, _)| **v > 0)
                .map(|(&v, name)| (name.clone(), seg.labels.data().iter().filter(|&&l| l == v as f32).count() as f64 * voxel_ml))
                .collect();
            unlabelled.push(UnlabelledCase { id, spacing: image.spacing(), volume_ml });
        }
    }
    let metrics = MetricsFile {
        unlabelled,
        set: set.name().into(),
        bootstrap_unit: clusters.unit().into(),
        cases,
        mean,
        missing_surface,
        level: 0.95,
        refinement,
    };
    run.write_json(set.file(), &metrics)?;
    Ok(metrics)
}
