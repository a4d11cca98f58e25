//! Training pairs and evaluation cases made from a recipe: each clean image is degraded by the recipe's model
//! (fresh seeded realisations for training, validation and test), brought back onto the clean grid where the
//! model changes it (linear interpolation: the network refines that), normalised, and cut into 2D planes.
//!
//! Held-out bands never give a training patch: a patch lies wholly outside every band, so no clean pixel of a
//! validation or test band is ever a training target.
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vesalius_io::Image;

use crate::EnhanceError;
use crate::baselines::bspline_upsample;
use crate::degrade::Degradation;
use crate::recipe::{Band, EnhanceRecipe, ImageEntry, IntensityScheme, IntensitySpec};

/// Planes of a volume: the two in-plane voxel axes (the first varies fastest in a plane) and the third axis
/// that numbers the planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneAxes {
    /// In-plane axis that varies fastest (the plane's width).
    pub u: usize,
    /// The other in-plane axis (the plane's height).
    pub v: usize,
    /// The axis across planes.
    pub across: usize,
}

impl PlaneAxes {
    /// Axes `[u, v]` of a 3-axis volume.
    pub fn new(u: usize, v: usize) -> Result<Self, EnhanceError> {
        if u > 2 || v > 2 || u == v {
            return Err(EnhanceError::Input(format!("plane axes must be two different axes of 0, 1, 2 (got [{u}, {v}])")));
        }
        Ok(Self { u, v, across: 3 - u - v })
    }
}

/// `[w, h, d]` of an image's spatial shape, padded with 1s.
pub fn dims3(shape: &[usize]) -> [usize; 3] {
    [shape[0], shape.get(1).copied().unwrap_or(1), shape.get(2).copied().unwrap_or(1)]
}

/// Plane `k` (along `axes.across`) of `data` of `shape`, as a `w × h` array (`w` along `axes.u`).
pub fn extract_plane(data: &[f32], shape: [usize; 3], axes: PlaneAxes, k: usize) -> (usize, usize, Vec<f32>) {
    let strides = [1, shape[0], shape[0] * shape[1]];
    let (w, h) = (shape[axes.u], shape[axes.v]);
    let mut out = Vec::with_capacity(w * h);
    for j in 0..h {
        for i in 0..w {
            out.push(data[i * strides[axes.u] + j * strides[axes.v] + k * strides[axes.across]]);
        }
    }
    (w, h, out)
}

/// Writes plane `k` back into `data` (the inverse of [`extract_plane`]).
pub fn insert_plane(data: &mut [f32], shape: [usize; 3], axes: PlaneAxes, k: usize, plane: &[f32]) {
    let strides = [1, shape[0], shape[0] * shape[1]];
    let w = shape[axes.u];
    for (idx, &v) in plane.iter().enumerate() {
        let (i, j) = (idx % w, idx / w);
        data[i * strides[axes.u] + j * strides[axes.v] + k * strides[axes.across]] = v;
    }
}

/// Maps intensities into [0, 1] for the network and back.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Intensity {
    /// Value mapped to 0.
    pub low: f32,
    /// Value mapped to 1.
    pub high: f32,
}

impl Intensity {
    /// The mapping of `spec` for an image whose values are `data`.
    pub fn of(spec: &IntensitySpec, data: &[f32]) -> Self {
        match spec {
            IntensitySpec::Range([low, high]) => Self { low: *low, high: *high },
            IntensitySpec::Scheme(IntensityScheme::Percentile) => {
                let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
                let high = if v.is_empty() {
                    1.0
                } else {
                    let k = ((v.len() - 1) as f64 * 0.995).round() as usize;
                    *v.select_nth_unstable_by(k, f32::total_cmp).1
                };
                Self { low: 0.0, high: if high > 0.0 { high } else { 1.0 } }
            }
        }
    }

    /// `(x − low) / (high − low)`.
    pub fn normalise(&self, x: &[f32]) -> Vec<f32> {
        let s = 1.0 / (self.high - self.low);
        x.iter().map(|v| (v - self.low) * s).collect()
    }
    /// The inverse of [`Intensity::normalise`].
    pub fn restore(&self, x: &[f32]) -> Vec<f32> {
        let s = self.high - self.low;
        x.iter().map(|v| v * s + self.low).collect()
    }
}

/// A training plane: the clean target, its degraded realisations (normalised), and where patches may start.
#[derive(Clone, Debug)]
pub struct TrainPlane {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Clean target.
    pub clean: Vec<f32>,
    /// Degraded realisations on the clean grid.
    pub degraded: Vec<Vec<f32>>,
    /// Held-out ranges along the plane's width.
    pub blocked_u: Vec<Band>,
    /// Held-out ranges along its height.
    pub blocked_v: Vec<Band>,
    /// Every frame's clean plane of a dynamic series (the temporal CRNN trains on whole series); empty for still
    /// images.
    pub frames: Vec<Vec<f32>>,
    /// The reconstruction network sees this plane divided by `scale` ([`kspace_scale`] of its image; 1 for other
    /// models).
    pub scale: f32,
}

impl TrainPlane {
    /// Patch origins along one side: every start whose `patch`-long run avoids `blocked`.
    fn starts(n: usize, patch: usize, blocked: &[Band]) -> Vec<usize> {
        if n < patch {
            return Vec::new();
        }
        (0..=n - patch).filter(|&s| blocked.iter().all(|b| !b.overlaps(s, patch))).collect()
    }

    /// Whether a `patch × patch` patch fits anywhere.
    pub fn fits(&self, patch: usize) -> bool {
        !Self::starts(self.w, patch, &self.blocked_u).is_empty() && !Self::starts(self.h, patch, &self.blocked_v).is_empty()
    }

    /// A random (input, target) patch, with a random flip of each axis and (square patches) transposition.
    pub fn sample(&self, patch: usize, rng: &mut ChaCha8Rng) -> (Vec<f32>, Vec<f32>) {
        let xs = Self::starts(self.w, patch, &self.blocked_u);
        let ys = Self::starts(self.h, patch, &self.blocked_v);
        let (x0, y0) = (xs[rng.random_range(0..xs.len())], ys[rng.random_range(0..ys.len())]);
        let r = rng.random_range(0..self.degraded.len());
        let (fx, fy, tr) = (rng.random::<bool>(), rng.random::<bool>(), rng.random::<bool>());
        let mut input = Vec::with_capacity(patch * patch);
        let mut target = Vec::with_capacity(patch * patch);
        for j in 0..patch {
            for i in 0..patch {
                let (a, b) = if tr { (j, i) } else { (i, j) };
                let x = x0 + if fx { patch - 1 - a } else { a };
                let y = y0 + if fy { patch - 1 - b } else { b };
                input.push(self.degraded[r][x + self.w * y]);
                target.push(self.clean[x + self.w * y]);
            }
        }
        (input, target)
    }
}

/// A scored case: a whole degraded plane (the network sees all of it) and the rectangle that is scored.
#[derive(Clone, Debug)]
pub struct EvalCase {
    /// `image[:plane k]#realisation`.
    pub id: String,
    /// Patient identifier (cases of one patient are resampled together).
    pub patient: String,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Clean reference (normalised).
    pub clean: Vec<f32>,
    /// Degraded input (normalised, on the clean grid).
    pub degraded: Vec<f32>,
    /// Scored rectangle `[x0, x1) × [y0, y1)`.
    pub rect: [usize; 4],
    /// The case's intensity mapping.
    pub intensity: Intensity,
    /// Classic baselines computed on the whole volume (normalised): linear interpolation for super-resolution.
    pub baselines: Vec<(String, Vec<f32>)>,
    /// The measured k-space lines (k-space models; planes are then whole axial slices).
    pub lines: Option<Vec<bool>>,
    /// The dynamic series this case is a frame of (reconstructed together), if any.
    pub series: Option<crate::series::SeriesRef>,
    /// The whole degraded volume this plane is cut from (whole validation and test images of recipes with
    /// `[adapt]`, which adapt to it).
    pub volume: Option<VolumeRef>,
    /// The reconstruction network sees this plane's measurements divided by `scale` and its output is multiplied
    /// by it ([`kspace_scale`] of its image; 1 for other models).
    pub scale: f32,
}

/// The degraded volume a case's plane is cut from, as adaptation needs it.
#[derive(Clone, Debug)]
pub struct VolumeRef {
    /// Identifies the volume among the cases (the planes of one realisation share it).
    pub key: usize,
    /// Which plane (along the recipe's `across` axis) this case is.
    pub plane: usize,
    /// The volume.
    pub source: std::sync::Arc<VolumeSource>,
}

/// A degraded volume as adaptation sees it, normalised: for thick-slice models the network's input on the fine
/// grid and the coarse image it was interpolated from; for k-space models each plane's measurements.
#[derive(Debug)]
pub struct VolumeSource {
    /// The input on the fine grid (k-space models: the zero-filled magnitude).
    pub input: Vec<f32>,
    /// Its shape.
    pub shape: [usize; 3],
    /// The coarse (thick-slice) image; empty for k-space models.
    pub coarse: Vec<f32>,
    /// Its shape.
    pub coarse_shape: [usize; 3],
    /// The planes (along the recipe's `across` axis) that are scored.
    pub planes: std::ops::Range<usize>,
    /// Every plane's measured k-space, in the order of the planes (k-space models; empty otherwise), divided by
    /// `scale`: in the units the network works in.
    pub measured: Vec<Measured>,
    /// The network's outputs on `measured` times `scale` are in the normalised units of `input`.
    pub scale: f32,
}

/// One plane's Cartesian measurements: its k-space on the measured lines (packed `[re…, im…]`, zero elsewhere) and
/// which lines were measured.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The measured k-space (`2·w·h` values).
    pub k0: Vec<f32>,
    /// The measured phase-encoding lines (`h`).
    pub lines: Vec<bool>,
}

/// Normalised intensity below which a scored rectangle holds no signal (5 % of the range or of the 99.5th
/// percentile).
pub const SIGNAL_FLOOR: f32 = 0.05;

impl EvalCase {
    /// Whether the scored rectangle of the reference reaches [`SIGNAL_FLOOR`] anywhere.
    pub fn has_signal(&self) -> bool {
        self.crop(&self.clean).0.iter().any(|&v| v >= SIGNAL_FLOOR)
    }

    /// The scored rectangle of a `w × h` plane, its shape `[x1 − x0, y1 − y0]`.
    pub fn crop(&self, plane: &[f32]) -> (Vec<f32>, [usize; 2]) {
        let [x0, x1, y0, y1] = self.rect;
        let out = (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).map(|(x, y)| plane[x + self.w * y]).collect();
        (out, [x1 - x0, y1 - y0])
    }
}

/// Everything a run trains and scores on.
pub struct Prepared {
    /// Training planes.
    pub train: Vec<TrainPlane>,
    /// Validation cases.
    pub val: Vec<EvalCase>,
    /// Test cases.
    pub test: Vec<EvalCase>,
    /// Whether metrics are taken in normalised units (per-image schemes) rather than the images' own.
    pub normalised_metrics: bool,
}

impl Prepared {
    /// Values of a case's plane in the units metrics are taken in.
    pub fn metric_units(&self, case: &EvalCase, plane: &[f32]) -> Vec<f32> {
        if self.normalised_metrics { plane.to_vec() } else { case.intensity.restore(plane) }
    }
}

/// Which set a degradation realisation is drawn for (each has its own random streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Train = 1,
    Val = 2,
    Test = 3,
}

pub(crate) fn realisation_seed(seed: u64, role: Role, image: usize, r: usize) -> u64 {
    vesalius_io::mix(seed ^ vesalius_io::mix((role as u64) << 40 ^ (image as u64) << 16 ^ r as u64))
}

/// Loads a recipe image, reoriented and resampled as the recipe asks.
pub fn load_recipe_image(recipe: &EnhanceRecipe, path: &std::path::Path) -> Result<Image, EnhanceError> {
    let img = load_image(path)?;
    shape_as_recipe(recipe, img, path)
}

/// Reorients (`data.orientation`) and resamples (`data.spacing`) a loaded image.
fn shape_as_recipe(recipe: &EnhanceRecipe, img: Image, path: &std::path::Path) -> Result<Image, EnhanceError> {
    let at = |e: vesalius_io::DataError| EnhanceError::Input(format!("{}: {e}", path.display()));
    let img = match &recipe.data.orientation {
        Some(o) => vesalius_io::geometry::reorient(&img, o).map_err(at)?,
        None => img,
    };
    match &recipe.data.spacing {
        Some(spacing) => respace(&img, spacing).map_err(at),
        None => Ok(img),
    }
}

/// `img` resampled to voxel sizes `spacing` (mm): each axis smoothed by the Gaussian whose FWHM makes up the
/// difference to the larger voxel (`σ² = (new² − old²) / 8 ln 2`), then sampled linearly. Images already at
/// `spacing` come back unchanged.
pub fn respace(img: &Image, spacing: &[f64]) -> Result<Image, vesalius_io::DataError> {
    let old = img.spacing();
    if spacing.len() != old.len() {
        return Err(vesalius_io::DataError::Invalid(format!(
            "data.spacing gives {} voxel sizes for an image of {} axes",
            spacing.len(),
            old.len()
        )));
    }
    if old.iter().zip(spacing).all(|(a, b)| (a - b).abs() <= 1e-6 * b) {
        return Ok(img.clone());
    }
    let sigma: Vec<f64> =
        old.iter().zip(spacing).map(|(&o, &n)| ((n * n - o * o).max(0.0) / (8.0 * std::f64::consts::LN_2)).sqrt() / o).collect();
    let n = img.voxels();
    let smoothed: Vec<f32> = (0..img.channels())
        .flat_map(|c| crate::filters::gaussian_filter(&img.data()[c * n..(c + 1) * n], img.shape(), &sigma, 4.0))
        .collect();
    let smoothed = Image::new(smoothed, img.shape().to_vec(), img.channels(), *img.affine(), img.dtype())?;
    vesalius_io::geometry::resample(&smoothed, spacing, vesalius_io::geometry::Interp::Linear)
}

/// A `w × h` plane at a random position in a zero plane of `pw × ph` (`≥ w × h`); the plane itself, borrowed, when
/// the sizes are equal (no draw is made then).
pub fn place<'a>(plane: &'a [f32], w: usize, h: usize, pw: usize, ph: usize, rng: &mut ChaCha8Rng) -> std::borrow::Cow<'a, [f32]> {
    if (w, h) == (pw, ph) || w > pw || h > ph {
        return std::borrow::Cow::Borrowed(plane);
    }
    let (ox, oy) = (rng.random_range(0..=pw - w), rng.random_range(0..=ph - h));
    let mut out = vec![0.0; pw * ph];
    for y in 0..h {
        out[(oy + y) * pw + ox..(oy + y) * pw + ox + w].copy_from_slice(&plane[y * w..(y + 1) * w]);
    }
    std::borrow::Cow::Owned(out)
}

/// Loads a recipe image that may be a dynamic series (frames along a fourth axis, as the image's channels),
/// reoriented and resampled as the recipe asks.
pub fn load_series(recipe: &EnhanceRecipe, path: &std::path::Path) -> Result<Image, EnhanceError> {
    let img = vesalius_io::load(path)?;
    shape_as_recipe(recipe, img, path)
}

/// Cubic B-spline interpolation of a coarse image onto the grid whose blocks (of the model's coarsening) are its
/// voxels; `None` for models that keep the grid.
pub fn bspline_fine(model: &Degradation, coarse: &Image) -> Option<(Vec<f32>, Vec<usize>)> {
    let axes = coarsening(model);
    if axes.is_empty() {
        return None;
    }
    let (mut data, mut shape) = (coarse.data().to_vec(), coarse.shape().to_vec());
    for (axis, factor) in axes {
        if axis < shape.len() {
            (data, shape) = bspline_upsample(&data, &shape, axis, factor);
        }
    }
    Some((data, shape))
}

/// Loads an image file or DICOM series folder.
pub fn load_image(path: &std::path::Path) -> Result<Image, EnhanceError> {
    let img = vesalius_io::load(path)?;
    // Grey images stored as RGB (equal channels) are grey.
    if img.channels() == 3 && img.channel(0) == img.channel(1) && img.channel(0) == img.channel(2) {
        return Ok(Image::new(img.channel(0).to_vec(), img.shape().to_vec(), 1, *img.affine(), img.dtype())?);
    }
    if img.channels() != 1 {
        return Err(EnhanceError::Input(format!(
            "{}: enhancement takes one-channel images (this one has {})",
            path.display(),
            img.channels()
        )));
    }
    Ok(img)
}

/// One degraded realisation of a clean image.
pub struct Realisation {
    /// The degraded image as the network sees it, on the clean grid.
    pub input: Image,
    /// Whole-volume baselines of this realisation (name, values on the clean grid).
    pub baselines: Vec<(String, Vec<f32>)>,
    /// The measured k-space lines (k-space models).
    pub lines: Option<Vec<bool>>,
    /// The degraded image on its own grid, where the model coarsens it.
    pub coarse: Option<Image>,
}

/// The degraded realisation of `clean` as the network sees it, on the clean grid, with the whole-volume baselines
/// of that realisation. Where the model coarsens the grid, the network's input is the coarse image's cubic
/// B-spline interpolation onto the fine grid, and linear interpolation is kept as a baseline (`linear`).
pub fn degrade_on_grid(model: &Degradation, clean: &Image, seed: u64) -> Result<Realisation, EnhanceError> {
    let degraded = model.apply(clean, seed)?;
    let d = degraded.image;
    let lines = degraded.mask.map(|m| {
        let w = m.shape()[0];
        let h = m.shape().get(1).copied().unwrap_or(1);
        (0..h).map(|y| m.data()[w * y] > 0.5).collect()
    });
    let Some((spline, covered)) = bspline_fine(model, &d) else {
        return Ok(Realisation { input: d, baselines: Vec::new(), lines, coarse: None });
    };
    let linear = vesalius_io::geometry::resample_onto(&d, clean.shape(), clean.affine(), false)?;
    // The fine grid of the coarse image covers only whole blocks: voxels beyond them repeat the last one.
    let input = Image::new(fit_to(&spline, &covered, clean.shape()), clean.shape().to_vec(), 1, *clean.affine(), "float32")?;
    Ok(Realisation { input, baselines: vec![("linear".to_string(), linear.into_data())], lines, coarse: Some(d) })
}

/// The network input for a clean image: a degraded realisation, or the entry's registered `input` image.
fn realise(
    recipe: &EnhanceRecipe,
    model: Option<&Degradation>,
    entry: &ImageEntry,
    clean: &Image,
    seed: u64,
) -> Result<Realisation, EnhanceError> {
    match (model, &entry.input) {
        (Some(model), _) => degrade_on_grid(model, clean, seed),
        (None, Some(path)) => {
            let input = load_recipe_image(recipe, path)?;
            if input.shape() != clean.shape() {
                return Err(EnhanceError::Input(format!(
                    "{}: shape {:?} differs from its target's {:?} (translation needs registered images on one grid)",
                    path.display(),
                    input.shape(),
                    clean.shape()
                )));
            }
            // Each contrast has its own scale: the input is mapped by its own intensity, the clean image by its own.
            let from = Intensity::of(&recipe.data.intensity, input.data());
            let to = Intensity::of(&recipe.data.intensity, clean.data());
            let values = to.restore(&from.normalise(input.data()));
            Ok(Realisation {
                input: Image::new(values, clean.shape().to_vec(), 1, *clean.affine(), "float32")?,
                baselines: Vec::new(),
                lines: None,
                coarse: None,
            })
        }
        (None, None) => Err(EnhanceError::Input(format!("{}: no degradation and no input image", entry.image.display()))),
    }
}

/// The volume adaptation needs of a realisation (recipes with `[adapt]` whose model coarsens the grid), numbered
/// `key`; `input` is the realisation's normalised input, `clean` the normalised reference and `scale` the k-space
/// network's ([`kspace_scale`]).
#[allow(clippy::too_many_arguments)] // one realisation: its clean and degraded volumes, their planes and scaling
fn volume_source(
    recipe: &EnhanceRecipe,
    real: &Realisation,
    clean: &[f32],
    input: &[f32],
    intensity: &Intensity,
    scale: f32,
    axes: PlaneAxes,
    planes: std::ops::Range<usize>,
    key: &mut usize,
) -> Option<(usize, std::sync::Arc<VolumeSource>)> {
    recipe.adapt.as_ref()?;
    let shape = dims3(real.input.shape());
    let (coarse, coarse_shape, measured) = match (&real.coarse, &real.lines) {
        (Some(coarse), _) => (intensity.normalise(coarse.data()), dims3(coarse.shape()), Vec::new()),
        // The scanner's measurements of each plane: the clean plane's k-space on the measured lines.
        (None, Some(lines)) => {
            let measured = (0..shape[axes.across])
                .map(|k| {
                    let (w, h, plane) = extract_plane(clean, shape, axes, k);
                    let plane: Vec<f32> = plane.iter().map(|v| v / scale).collect();
                    Measured { k0: crate::kspace::measure(&plane, w, h, lines).0, lines: lines.clone() }
                })
                .collect();
            (Vec::new(), [0; 3], measured)
        }
        (None, None) => return None,
    };
    *key += 1;
    let source = VolumeSource { input: input.to_vec(), shape, coarse, coarse_shape, planes, measured, scale };
    Some((*key, std::sync::Arc::new(source)))
}

/// The axes and factors by which a model coarsens the grid.
pub fn coarsening(model: &Degradation) -> Vec<(usize, usize)> {
    match *model {
        Degradation::ThickSlice { factor, axis } => vec![(axis, factor)],
        Degradation::Downsample { factor } => vec![(0, factor), (1, factor)],
        _ => Vec::new(),
    }
}

/// `data` of `shape` placed in an array of `target` shape from the origin (extra voxels edge-replicated).
fn fit_to(data: &[f32], shape: &[usize], target: &[usize]) -> Vec<f32> {
    let s = dims3(shape);
    let mut out = vec![0.0f32; target.iter().product()];
    vesalius_io::geometry::for_each_index(target, |i, idx| {
        let at = |a: usize| idx.get(a).copied().unwrap_or(0).min(s[a] - 1);
        out[i] = data[at(0) + s[0] * (at(1) + s[1] * at(2))];
    });
    out
}

/// The plane axes of the recipe (default `[0, 1]`).
pub fn plane_axes(recipe: &EnhanceRecipe) -> Result<PlaneAxes, EnhanceError> {
    let [u, v] = recipe.data.plane.unwrap_or([0, 1]);
    PlaneAxes::new(u, v)
}

/// The scale a k-space recipe's network works in, relative to an image's normalised units: with per-image
/// (percentile) intensities, the [`crate::kspace::calibration_scale`] of the planes of `volumes` (the frames of one
/// image, normalised), so that the network's inputs are scaled by what the measurements hold rather than by the
/// reference, as in prediction; 1 for fixed intensity ranges (the same fixed scale in prediction) and other models.
pub fn kspace_scale(recipe: &EnhanceRecipe, volumes: &[&[f32]], shape: [usize; 3], axes: PlaneAxes) -> f32 {
    match (&recipe.degrade, &recipe.data.intensity) {
        (Some(Degradation::Kspace { centre, .. }), IntensitySpec::Scheme(_)) => {
            let (w, h) = (shape[axes.u], shape[axes.v]);
            let planes = volumes.iter().flat_map(|v| {
                (0..shape[axes.across]).map(move |k| {
                    extract_plane(v, shape, axes, k).2.into_iter().map(|x| rustfft::num_complex::Complex32::new(x, 0.0)).collect()
                })
            });
            crate::kspace::calibration_scale(planes, w, h, *centre)
        }
        _ => 1.0,
    }
}

/// Degrades, normalises and cuts the recipe's images into training planes and validation/test cases.
pub fn prepare(recipe: &EnhanceRecipe) -> Result<Prepared, EnhanceError> {
    if let Some(first) = recipe.data.images.first()
        && crate::series::is_series_recipe(recipe)
        && load_series(recipe, &first.image)?.channels() > 1
    {
        return crate::series::prepare(recipe);
    }
    let d = &recipe.data;
    let axes = plane_axes(recipe)?;
    let model = recipe.degrade.as_ref();
    let patch = recipe.train.patch;
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    let mut volumes = 0usize;
    let bands: Vec<(Band, Role)> =
        [(d.val_band, Role::Val), (d.test_band, Role::Test)].into_iter().filter_map(|(b, r)| b.map(|b| (b, r))).collect();
    for (idx, entry) in d.images.iter().enumerate() {
        let clean = load_recipe_image(recipe, &entry.image)?;
        let shape = dims3(clean.shape());
        for (band, _) in &bands {
            if band.end > shape[band.axis] {
                return Err(EnhanceError::Input(format!(
                    "{}: a held-out band ends at {} on axis {}, beyond the image's {} voxels",
                    entry.image.display(),
                    band.end,
                    band.axis,
                    shape[band.axis]
                )));
            }
        }
        let intensity = Intensity::of(&d.intensity, clean.data());
        let mut realisations = Vec::with_capacity(d.train_realisations);
        for r in 0..d.train_realisations {
            let real = realise(recipe, model, entry, &clean, realisation_seed(recipe.seed, Role::Train, idx, r))?;
            realisations.push(intensity.normalise(real.input.data()));
        }
        let clean_n = intensity.normalise(clean.data());
        let scale = kspace_scale(recipe, &[&clean_n], shape, axes);
        for k in 0..shape[axes.across] {
            if bands.iter().any(|(b, _)| b.axis == axes.across && b.contains(k)) {
                continue;
            }
            let (w, h, c) = extract_plane(&clean_n, shape, axes, k);
            let degraded = realisations.iter().map(|r| extract_plane(r, shape, axes, k).2).collect();
            let blocked = |axis: usize| bands.iter().filter(|(b, _)| b.axis == axis).map(|(b, _)| *b).collect::<Vec<_>>();
            let plane =
                TrainPlane { w, h, clean: c, degraded, blocked_u: blocked(axes.u), blocked_v: blocked(axes.v), frames: Vec::new(), scale };
            if plane.fits(patch) {
                train.push(plane);
            }
        }
        for &(band, role) in &bands {
            let cases = if role == Role::Val { &mut val } else { &mut test };
            for r in 0..d.realisations(role == Role::Val) {
                let real = realise(recipe, model, entry, &clean, realisation_seed(recipe.seed, role, idx, r))?;
                let deg = intensity.normalise(real.input.data());
                let baselines: Vec<(String, Vec<f32>)> = real.baselines.into_iter().map(|(n, b)| (n, intensity.normalise(&b))).collect();
                for k in 0..shape[axes.across] {
                    if band.axis == axes.across && !band.contains(k) {
                        continue;
                    }
                    let (w, h, c) = extract_plane(&clean_n, shape, axes, k);
                    let mut rect = [0, w, 0, h];
                    if band.axis == axes.u {
                        rect[0..2].copy_from_slice(&[band.start, band.end]);
                    } else if band.axis == axes.v {
                        rect[2..4].copy_from_slice(&[band.start, band.end]);
                    }
                    let plane_id = if shape[axes.across] > 1 { format!(":{k}") } else { String::new() };
                    cases.push(EvalCase {
                        id: format!("{}{plane_id}#{r}", entry.name()),
                        patient: entry.patient_id(),
                        w,
                        h,
                        clean: c,
                        degraded: extract_plane(&deg, shape, axes, k).2,
                        rect,
                        intensity,
                        baselines: baselines.iter().map(|(n, b)| (n.clone(), extract_plane(b, shape, axes, k).2)).collect(),
                        lines: real.lines.clone(),
                        series: None,
                        // The bands of a training image are not adapted to: its own fine data trained the network.
                        volume: None,
                        scale,
                    });
                }
            }
        }
    }
    if train.is_empty() {
        return Err(EnhanceError::Input(format!(
            "no {patch}×{patch} training patch fits outside the held-out bands: use a smaller train.patch"
        )));
    }
    for (entries, role) in [(&d.val, Role::Val), (&d.test, Role::Test)] {
        let cases = if role == Role::Val { &mut val } else { &mut test };
        for (idx, entry) in entries.iter().enumerate() {
            cases.extend(whole_image_cases(recipe, entry, idx + 1_000, role, axes, &mut volumes)?);
        }
    }
    // Planes without signal (air, the background beyond the head) have no meaningful PSNR: they are not scored.
    val.retain(EvalCase::has_signal);
    test.retain(EvalCase::has_signal);
    let normalised_metrics = matches!(d.intensity, IntensitySpec::Scheme(_));
    Ok(Prepared { train, val, test, normalised_metrics })
}

pub(crate) fn role_seed(seed: u64, role: Role) -> u64 {
    realisation_seed(seed, role, usize::MAX >> 8, 0)
}

/// Cases of a whole image: every plane of every realisation is scored in full.
fn whole_image_cases(
    recipe: &EnhanceRecipe,
    entry: &ImageEntry,
    idx: usize,
    role: Role,
    axes: PlaneAxes,
    volumes: &mut usize,
) -> Result<Vec<EvalCase>, EnhanceError> {
    let seed = role_seed(recipe.seed, role);
    let clean = load_recipe_image(recipe, &entry.image)?;
    let shape = dims3(clean.shape());
    let intensity = Intensity::of(&recipe.data.intensity, clean.data());
    let clean_n = intensity.normalise(clean.data());
    let scale = kspace_scale(recipe, &[&clean_n], shape, axes);
    let mut out = Vec::new();
    for r in 0..recipe.data.realisations(role == Role::Val) {
        let s = vesalius_io::mix(seed ^ ((idx as u64) << 16) ^ r as u64);
        let real = realise(recipe, recipe.degrade.as_ref(), entry, &clean, s)?;
        let deg = intensity.normalise(real.input.data());
        let source = volume_source(recipe, &real, &clean_n, &deg, &intensity, scale, axes, 0..shape[axes.across], volumes);
        let lines = real.lines.clone();
        let baselines: Vec<(String, Vec<f32>)> = real.baselines.into_iter().map(|(n, b)| (n, intensity.normalise(&b))).collect();
        for k in 0..shape[axes.across] {
            let (w, h, c) = extract_plane(&clean_n, shape, axes, k);
            let plane_id = if shape[axes.across] > 1 { format!(":{k}") } else { String::new() };
            out.push(EvalCase {
                id: format!("{}{plane_id}#{r}", entry.name()),
                patient: entry.patient_id(),
                w,
                h,
                clean: c,
                degraded: extract_plane(&deg, shape, axes, k).2,
                rect: [0, w, 0, h],
                intensity,
                baselines: baselines.iter().map(|(n, b)| (n.clone(), extract_plane(b, shape, axes, k).2)).collect(),
                lines: lines.clone(),
                series: None,
                volume: source.as_ref().map(|(key, source)| VolumeRef { key: *key, plane: k, source: source.clone() }),
                scale,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_round_trip_on_every_axis_pair() {
        let shape = [3, 4, 5];
        let data: Vec<f32> = (0..60).map(|v| v as f32).collect();
        for (u, v) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
            let axes = PlaneAxes::new(u, v).unwrap();
            let mut back = vec![0.0; 60];
            for k in 0..shape[axes.across] {
                let (w, h, p) = extract_plane(&data, shape, axes, k);
                assert_eq!((w, h), (shape[u], shape[v]));
                insert_plane(&mut back, shape, axes, k, &p);
            }
            assert_eq!(back, data);
        }
        // Plane 1 across axis 1 of (u = 0, v = 2): x fastest, then z.
        let (_, _, p) = extract_plane(&data, shape, PlaneAxes::new(0, 2).unwrap(), 1);
        assert_eq!(&p[..4], &[3.0, 4.0, 5.0, 15.0]);
    }

    #[test]
    fn respacing_keeps_images_at_the_spacing_and_linear_ramps_linear() {
        let mut affine = vesalius_io::IDENTITY;
        affine[2][2] = 2.0;
        let ramp: Vec<f32> = (0..24 * 20 * 10).map(|i| (i % 24) as f32 + 10.0 * (i / (24 * 20)) as f32).collect();
        let img = Image::new(ramp, vec![24, 20, 10], 1, affine, "float32").unwrap();
        assert_eq!(respace(&img, &[1.0, 1.0, 2.0]).unwrap(), img);
        let out = respace(&img, &[2.0, 1.0, 4.0]).unwrap();
        assert_eq!(out.shape(), &[12, 20, 5]);
        assert_eq!(out.spacing(), vec![2.0, 1.0, 4.0]);
        // Away from the edges (where smoothing meets the border) a ramp stays the ramp at each new voxel's centre.
        for (i, j, k) in [(4, 10, 2), (6, 3, 2), (5, 15, 2)] {
            let v = out.get(&[i, j, k]);
            let (x, z) = (2.0 * i as f32, 2.0 * k as f32); // old voxel coordinates of the new centre
            assert!((v - (x + 10.0 * z)).abs() < 0.05, "({i}, {j}, {k}): {v} vs {}", x + 10.0 * z);
        }
        assert!(respace(&img, &[1.0, 1.0]).is_err());
    }

    #[test]
    fn planes_are_placed_in_larger_ones() {
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
        // Placing a 3 × 2 plane in a 5 × 4 one keeps its rows together, wherever it goes; at its own size it is the
        // plane itself.
        let small = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        for _ in 0..4 {
            let placed = place(&small, 3, 2, 5, 4, &mut rng);
            let at = placed.iter().position(|v| *v == 1.0).unwrap();
            assert_eq!([placed[at], placed[at + 1], placed[at + 2], placed[at + 5], placed[at + 6], placed[at + 7]], small);
            assert_eq!((placed.len(), placed.iter().sum::<f32>()), (20, 21.0));
        }
        assert!(matches!(place(&small, 3, 2, 3, 2, &mut rng), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn patches_avoid_held_out_bands() {
        let (w, h) = (20, 30);
        let plane = TrainPlane {
            w,
            h,
            clean: (0..w * h).map(|i| (i / w) as f32).collect(), // the row index
            degraded: vec![vec![0.0; w * h]],
            blocked_u: vec![],
            blocked_v: vec![Band { axis: 1, start: 12, end: 20 }],
            frames: Vec::new(),
            scale: 1.0,
        };
        let mut rng = rand::SeedableRng::seed_from_u64(1);
        for _ in 0..200 {
            let (_, target) = plane.sample(8, &mut rng);
            assert!(target.iter().all(|&row| !(12.0..20.0).contains(&row)), "a patch reached a held-out row");
        }
        assert!(!plane.fits(13)); // rows 0..12 and 20..30 hold no 13-row patch
    }
}
