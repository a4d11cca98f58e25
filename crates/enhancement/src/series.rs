//! Dynamic series for reconstruction: images whose fourth axis holds frames (an fMRI or cine acquisition; stored
//! as the image's channels). Each frame of a plane is measured with its **own** random Cartesian line mask (k-t
//! sampling, as in Qin et al. 2019), so the frames together cover more of k-space than any one of them; the
//! temporal CRNN reconstructs a plane's frames together, and every frame is scored as its own case.
//!
//! ```
//! use vesalius_enhancement::series::frame_lines;
//! let lines = frame_lines(64, 3, 4.0, 0.08, 7);
//! assert_eq!(lines.len(), 3);
//! assert!(lines.iter().all(|l| l[0]));      // the lowest frequency is always measured
//! assert_ne!(lines[0], lines[1]);           // each frame has its own mask
//! assert_eq!(lines, frame_lines(64, 3, 4.0, 0.08, 7)); // seeded
//! ```
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::EnhanceError;
use crate::data::{EvalCase, Intensity, Prepared, Role, TrainPlane, dims3, extract_plane, load_series, realisation_seed, role_seed};
use crate::degrade::{Degradation, line_mask};
use crate::kspace::{magnitude, measure};
use crate::recipe::{Arch, EnhanceRecipe, ImageEntry, IntensitySpec};

/// The series a case is a frame of.
#[derive(Clone, Debug)]
pub struct SeriesRef {
    /// Identifies the series among the cases (the frames of one series share it).
    pub key: usize,
    /// Which frame this case is.
    pub frame: usize,
    /// Every frame's clean plane (normalised).
    pub clean: Arc<Vec<Vec<f32>>>,
    /// Every frame's measured lines.
    pub lines: Arc<Vec<Vec<bool>>>,
}

/// Whether a recipe reconstructs k-space with a CRNN (the only networks that take dynamic series).
pub fn is_series_recipe(recipe: &EnhanceRecipe) -> bool {
    recipe.model.arch == Arch::Crnn && matches!(recipe.degrade, Some(Degradation::Kspace { .. }))
}

/// Seeded line masks of `frames` frames of `h` phase-encoding lines, one per frame.
pub fn frame_lines(h: usize, frames: usize, acceleration: f64, centre: f64, seed: u64) -> Vec<Vec<bool>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..frames).map(|_| line_mask(h, acceleration, centre, &mut rng)).collect()
}

/// Every frame of one image, normalised by one intensity mapping of the whole series.
struct Frames {
    shape: [usize; 3],
    frames: Vec<Vec<f32>>,
    intensity: Intensity,
    /// The network's scale over all frames ([`crate::data::kspace_scale`]).
    scale: f32,
}

fn frames_of(recipe: &EnhanceRecipe, entry: &ImageEntry) -> Result<Frames, EnhanceError> {
    let img = load_series(recipe, &entry.image)?;
    let intensity = Intensity::of(&recipe.data.intensity, img.data());
    let frames: Vec<Vec<f32>> = (0..img.channels()).map(|c| intensity.normalise(img.channel(c))).collect();
    let shape = dims3(img.shape());
    let scale = crate::data::kspace_scale(recipe, &frames.iter().map(Vec::as_slice).collect::<Vec<_>>(), shape, axes());
    Ok(Frames { shape, frames, intensity, scale })
}

/// Planes are axial (`[0, 1]`) for k-space models: the lines run along the first axis.
fn axes() -> crate::data::PlaneAxes {
    crate::data::PlaneAxes { u: 0, v: 1, across: 2 }
}

/// The scored cases of planes `ks` of a series, one per frame and realisation; `key` numbers the series.
#[allow(clippy::too_many_arguments)] // one image's frames, where and how they are measured
fn cases_of(
    entry: &ImageEntry,
    f: &Frames,
    ks: impl Iterator<Item = usize> + Clone,
    realisations: usize,
    seed: u64,
    model: (f64, f64),
    key: &mut usize,
) -> Vec<EvalCase> {
    let mut out = Vec::new();
    let [w, h, d] = f.shape;
    for r in 0..realisations {
        for k in ks.clone() {
            let clean: Vec<Vec<f32>> = f.frames.iter().map(|fr| extract_plane(fr, f.shape, axes(), k).2).collect();
            let s = vesalius_io::mix(seed ^ ((k as u64) << 20) ^ r as u64);
            let lines = frame_lines(h, clean.len(), model.0, model.1, s);
            let (clean, lines) = (Arc::new(clean), Arc::new(lines));
            let plane_id = if d > 1 { format!(":{k}") } else { String::new() };
            for (t, (c, l)) in clean.iter().zip(lines.iter()).enumerate() {
                let (_, x0) = measure(c, w, h, l);
                out.push(EvalCase {
                    id: format!("{}{plane_id}/t{t}#{r}", entry.name()),
                    patient: entry.patient_id(),
                    w,
                    h,
                    clean: c.clone(),
                    degraded: magnitude(&x0),
                    rect: [0, w, 0, h],
                    intensity: f.intensity,
                    baselines: Vec::new(),
                    lines: Some(l.clone()),
                    series: Some(SeriesRef { key: *key, frame: t, clean: clean.clone(), lines: lines.clone() }),
                    volume: None,
                    scale: f.scale,
                });
            }
            *key += 1;
        }
    }
    out
}

/// Training series and scored frames of a recipe whose images are dynamic series: held-out bands are whole planes
/// (axis 2); every realisation draws new masks, one per frame.
pub fn prepare(recipe: &EnhanceRecipe) -> Result<Prepared, EnhanceError> {
    let d = &recipe.data;
    let Some(Degradation::Kspace { acceleration, centre }) = recipe.degrade else {
        return Err(EnhanceError::Input("dynamic series are reconstructed from k-space: the recipe needs a kspace model".into()));
    };
    let model = (acceleration, centre);
    if let Some(b) = [d.val_band, d.test_band].into_iter().flatten().find(|b| b.axis != 2) {
        return Err(EnhanceError::Input(format!(
            "dynamic series hold out whole planes (bands on axis 2, not {}): the network reconstructs whole planes",
            b.axis
        )));
    }
    let (mut train, mut val, mut test, mut key) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    let mut frames_in_training = None;
    for (idx, entry) in d.images.iter().enumerate() {
        let f = frames_of(recipe, entry)?;
        let [w, h, depth] = f.shape;
        if *frames_in_training.get_or_insert(f.frames.len()) != f.frames.len() {
            return Err(EnhanceError::Input(format!(
                "{}: {} frames, other training series have {} (training batches whole series)",
                entry.image.display(),
                f.frames.len(),
                frames_in_training.unwrap_or_default()
            )));
        }
        for band in [d.val_band, d.test_band].into_iter().flatten() {
            if band.end > f.shape[band.axis] {
                return Err(EnhanceError::Input(format!(
                    "{}: a held-out band ends at {} on axis {}, beyond the image's {} voxels",
                    entry.image.display(),
                    band.end,
                    band.axis,
                    f.shape[band.axis]
                )));
            }
        }
        let held_planes = |k: usize| [d.val_band, d.test_band].into_iter().flatten().any(|b| b.axis == 2 && b.contains(k));
        for k in (0..depth).filter(|&k| !held_planes(k)) {
            let frames: Vec<Vec<f32>> = f.frames.iter().map(|fr| extract_plane(fr, f.shape, axes(), k).2).collect();
            train.push(TrainPlane {
                w,
                h,
                clean: frames[0].clone(),
                degraded: Vec::new(),
                blocked_u: Vec::new(),
                blocked_v: Vec::new(),
                frames,
                scale: f.scale,
            });
        }
        for (band, role) in [(d.val_band, Role::Val), (d.test_band, Role::Test)] {
            let Some(band) = band else { continue };
            let cases = if role == Role::Val { &mut val } else { &mut test };
            let seed = realisation_seed(recipe.seed, role, idx, 0);
            cases.extend(cases_of(entry, &f, band.start..band.end, d.realisations(role == Role::Val), seed, model, &mut key));
        }
    }
    if train.is_empty() {
        return Err(EnhanceError::Input("every plane of the training series is held out".into()));
    }
    for (entries, role) in [(&d.val, Role::Val), (&d.test, Role::Test)] {
        let cases = if role == Role::Val { &mut val } else { &mut test };
        for (idx, entry) in entries.iter().enumerate() {
            let f = frames_of(recipe, entry)?;
            let seed = vesalius_io::mix(role_seed(recipe.seed, role) ^ ((idx as u64 + 1_000) << 16));
            cases.extend(cases_of(entry, &f, 0..f.shape[2], d.realisations(role == Role::Val), seed, model, &mut key));
        }
    }
    val.retain(EvalCase::has_signal);
    test.retain(EvalCase::has_signal);
    Ok(Prepared { train, val, test, normalised_metrics: matches!(d.intensity, IntensitySpec::Scheme(_)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_a_series_get_different_masks_with_the_same_centre() {
        let lines = frame_lines(96, 4, 4.0, 0.08, 3);
        let centre = |l: &Vec<bool>| (0..4).chain(92..96).all(|y| l[y]);
        assert!(lines.iter().all(centre));
        for a in 0..4 {
            for b in a + 1..4 {
                assert_ne!(lines[a], lines[b]);
            }
        }
        // Together the frames measure more lines than any one of them.
        let any = (0..96).filter(|&y| lines.iter().any(|l| l[y])).count();
        let most = lines.iter().map(|l| l.iter().filter(|&&m| m).count()).max().unwrap_or(0);
        assert!(any > most + 10, "{any} vs {most}");
    }
}
