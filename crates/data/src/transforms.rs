//! Transforms of an image and its label map, kept in step, in 2D and 3D; random versions drawn from a seeded
//! generator; pipelines that a recipe describes in TOML.
//!
//! Intensity transforms change the image only. Spatial transforms move the label map with the image: linear
//! interpolation for the image, nearest for the labels. Transforms that change the voxel grid (flip, rot90, crop
//! and pad, resize, resample) update the affine so every voxel keeps its world coordinate; the affine and elastic
//! augmentations move the content inside the same grid, as MONAI's `RandAffine` and `Rand3DElastic` do.
//!
//! Every random draw comes from a [`ChaCha8Rng`] in `f64` arithmetic, so a seed gives the same output on any
//! machine.
//!
//! ```
//! use vesalius_data::transforms::{Pipeline, Subject};
//! use vesalius_data::{Image, IDENTITY};
//!
//! let pipeline = Pipeline::from_toml(r#"
//!     [[transforms]]
//!     type = "z_score"
//!     [[transforms]]
//!     type = "rand_flip"
//!     prob = 0.5
//!     axes = [0, 1]
//! "#).unwrap();
//! let image = Image::new((0..16).map(|v| v as f32).collect(), vec![4, 4], 1, IDENTITY, "float32").unwrap();
//! let a = pipeline.apply_seeded(Subject::new(image.clone()), 7).unwrap();
//! let b = pipeline.apply_seeded(Subject::new(image), 7).unwrap();
//! assert_eq!(a.image, b.image); // same seed, same output
//! let mean: f32 = a.image.data().iter().sum::<f32>() / 16.0;
//! assert!(mean.abs() < 1e-5);
//! ```
use crate::harmonise::{self, Quality};
use crate::{DataError, Image, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vesalius_io::Affine;
use vesalius_io::geometry::{self, Interp, Outside, Sampler, compose, for_each_index, mat3_inv, strides};
pub use vesalius_io::geometry::{resample_onto, resample_to_grid};

/// An image with its optional label map on the same grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    /// The image (any number of channels).
    pub image: Image,
    /// The label map (one channel of integer class values stored as `f32`), on the image's grid.
    pub label: Option<Image>,
}

impl Subject {
    /// A subject without labels.
    pub fn new(image: Image) -> Self {
        Self { image, label: None }
    }

    /// A subject with a label map; the grids must agree.
    pub fn with_label(image: Image, label: Image) -> Result<Self> {
        if label.shape() != image.shape() {
            return Err(DataError::Invalid(format!("label shape {:?} differs from image shape {:?}", label.shape(), image.shape())));
        }
        Ok(Self { image, label: Some(label) })
    }

    fn map_spatial(self, mut f: impl FnMut(&Image, bool) -> Result<Image>) -> Result<Self> {
        let image = f(&self.image, false)?;
        let label = self.label.as_ref().map(|l| f(l, true)).transpose()?;
        Ok(Self { image, label })
    }
}

/// Where [`Transform::ZScore`] takes its mean and standard deviation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormMask {
    /// Every voxel.
    #[default]
    All,
    /// Voxels that are not zero (nnU-Net's `use_mask_for_norm` for skull-stripped MR); others are set to zero.
    Nonzero,
    /// Voxels whose label is above zero.
    Label,
}

/// Parameters of an affine augmentation about the image centre, in the image's millimetre frame.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AffineParams {
    /// Rotation in degrees: one angle in 2D (in the plane of axes 0 and 1), three in 3D (about axes 0, 1, 2,
    /// applied in that order).
    pub rotate: Vec<f64>,
    /// Scale per axis (1 = none); empty for none.
    pub scale: Vec<f64>,
    /// Shear factors: one in 2D (axis 0 by axis 1), three in 3D (0 by 1, 0 by 2, 1 by 2).
    pub shear: Vec<f64>,
    /// Translation per axis in millimetres.
    pub translate: Vec<f64>,
}

/// One transform of a [`Pipeline`]. In TOML, `type = "snake_case_name"` with the fields below.
///
/// Ranges are `[low, high]`, drawn uniformly; `prob` is the probability that a random transform is applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// Zero mean, unit standard deviation per channel, over the voxels chosen by `mask`.
    ZScore {
        /// Which voxels give the statistics.
        #[serde(default)]
        mask: NormMask,
    },
    /// Linear rescaling of each channel's range to `[min, max]`.
    MinMax {
        /// Output minimum.
        #[serde(default)]
        min: f32,
        /// Output maximum.
        #[serde(default = "one")]
        max: f32,
    },
    /// Clips each channel to its `lower`–`upper` percentiles (0–100).
    ClipPercentiles {
        /// Lower percentile.
        lower: f64,
        /// Upper percentile.
        upper: f64,
    },
    /// Clips every value to `[min, max]`.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `(x − mean)/std` with fixed statistics (nnU-Net's CT normalisation uses the dataset's foreground values).
    Normalize {
        /// Subtracted.
        mean: f64,
        /// Divisor (positive).
        std: f64,
    },
    /// CT window: `[level − width/2, level + width/2]` in HU mapped to `[0, 1]`, values outside clipped.
    Window {
        /// Window centre (HU).
        level: f32,
        /// Window width (HU).
        width: f32,
    },
    /// Gamma on each channel's range: `((x − min)/(max − min))^γ · (max − min) + min` (MONAI `AdjustContrast`).
    Gamma {
        /// The exponent.
        gamma: f64,
    },
    /// Contrast and brightness: `x · scale + shift`.
    ScaleShift {
        /// Multiplier.
        scale: f64,
        /// Offset.
        shift: f64,
    },
    /// Gaussian blur with `sigma` voxels (one value for every axis, or one per axis), mirror boundary.
    GaussianBlur {
        /// Standard deviation in voxels.
        sigma: Vec<f64>,
    },
    /// Mirrors along each listed voxel axis.
    Flip {
        /// Axes to flip.
        axes: Vec<usize>,
    },
    /// `k` quarter turns in the plane of `axes`, from the first axis towards the second (numpy's `rot90`).
    Rot90 {
        /// Quarter turns (any integer).
        k: i32,
        /// The plane.
        #[serde(default = "plane01")]
        axes: [usize; 2],
    },
    /// Reorients to axis codes (`"RAS"`, `"LPS"`, …) by permuting and flipping axes, no resampling.
    Reorient {
        /// Target axis codes, one letter per spatial axis.
        codes: String,
    },
    /// Affine augmentation about the centre; linear for images, nearest for labels, zeros outside.
    Affine(AffineParams),
    /// Centre crop or pad (with zeros) to `shape`.
    CropPad {
        /// Output shape.
        shape: Vec<usize>,
    },
    /// Crops to the bounding box of the label's foreground (or the image's non-zero voxels when there is no
    /// label), plus `margin` voxels.
    CropForeground {
        /// Voxels kept around the box.
        #[serde(default)]
        margin: usize,
    },
    /// Resizes to `shape` (linear for images, nearest for labels), the affine scaled to keep the field of view.
    Resize {
        /// Output shape.
        shape: Vec<usize>,
    },
    /// Resamples to voxel sizes `spacing` in millimetres.
    Resample {
        /// Target spacing per axis.
        spacing: Vec<f64>,
    },
    /// Degrades the image to a lower quality (harmonisation); see [`crate::harmonise`].
    Degrade(Quality),
    /// Maps intensities onto learnt standard histogram landmarks (Nyúl and Udupa); see [`crate::standardise`].
    HistogramStandardise(crate::standardise::HistogramStandard),
    /// Pads the grid and labels a head around the organ with generation labels (for synthesis when the images
    /// show the organ only); see [`crate::head`].
    HeadLayers(crate::head::HeadLayers),
    /// Every label value at or above `label` becomes 0: generation labels become background again once the image
    /// has been drawn from them.
    BackgroundFrom {
        /// The first value turned into background.
        label: u32,
    },
    /// Flips each listed axis independently with probability `prob`.
    RandFlip {
        /// Probability per axis.
        prob: f64,
        /// Axes that may flip.
        axes: Vec<usize>,
    },
    /// With probability `prob`, 1 to 3 quarter turns in the plane `axes`.
    RandRot90 {
        /// Probability.
        prob: f64,
        /// The plane.
        #[serde(default = "plane01")]
        axes: [usize; 2],
    },
    /// With probability `prob`, an affine with each angle in `±rotate` degrees, each scale in `1 ± scale`, each
    /// shear in `±shear` and each translation in `±translate` mm.
    RandAffine {
        /// Probability.
        prob: f64,
        /// Maximum angle per rotation (one in 2D, three in 3D; one value is used for all).
        #[serde(default)]
        rotate: Vec<f64>,
        /// Maximum relative scale change.
        #[serde(default)]
        scale: f64,
        /// Maximum shear.
        #[serde(default)]
        shear: f64,
        /// Maximum translation per axis in mm (one value is used for all).
        #[serde(default)]
        translate: Vec<f64>,
    },
    /// With probability `prob`, an elastic deformation: normal offsets of standard deviation `magnitude` voxels
    /// on control points every `spacing` voxels, interpolated linearly to every voxel.
    RandElastic {
        /// Probability.
        prob: f64,
        /// Control-point spacing in voxels.
        spacing: f64,
        /// Standard deviation of the control-point offsets in voxels.
        magnitude: f64,
    },
    /// A random crop of `shape` (padded with zeros where the image is smaller).
    RandCrop {
        /// Output shape.
        shape: Vec<usize>,
    },
    /// With probability `prob`, additive Gaussian noise with a standard deviation drawn in `std`.
    RandGaussianNoise {
        /// Probability.
        prob: f64,
        /// Range of the noise's standard deviation.
        std: [f64; 2],
    },
    /// With probability `prob`, Gaussian blur with sigma drawn in `sigma` voxels.
    RandGaussianBlur {
        /// Probability.
        prob: f64,
        /// Range of sigma in voxels.
        sigma: [f64; 2],
    },
    /// With probability `prob`, a smooth multiplicative bias field `exp(Σ c·Pᵢ(x)Pⱼ(y)Pₖ(z))` of Legendre
    /// polynomials up to `degree`, each coefficient in `±coeff` (MONAI `RandBiasField`).
    RandBiasField {
        /// Probability.
        prob: f64,
        /// Highest total degree.
        #[serde(default = "three")]
        degree: usize,
        /// Coefficient range.
        coeff: f64,
    },
    /// With probability `prob`, [`Transform::Gamma`] with γ drawn in `gamma`.
    RandGamma {
        /// Probability.
        prob: f64,
        /// Range of γ.
        gamma: [f64; 2],
    },
    /// With probability `prob`, [`Transform::ScaleShift`] with scale and shift drawn in their ranges.
    RandScaleShift {
        /// Probability.
        prob: f64,
        /// Range of the multiplier.
        scale: [f64; 2],
        /// Range of the offset.
        shift: [f64; 2],
    },
    /// With probability `prob`, each channel's contrast scaled about its mean by a factor drawn in `factor` (one
    /// draw for all channels): `(v − mean) · f + mean`.
    RandContrast {
        /// Probability.
        prob: f64,
        /// Range of the factor.
        factor: [f64; 2],
    },
    /// With probability `prob`, a new image drawn from the label map (SynthSeg/SynthStrip-style domain
    /// randomisation): every generation class gets its own Gaussian intensity, mean drawn in `mean` and standard
    /// deviation in `std` (units of a [0, 1] range), the same draw for every channel; the result is then scaled to
    /// the mean and standard deviation the image had, so it stays in the pipeline's intensity space. Generation classes
    /// are the label values, each split into `split` classes by quantiles of the current image's intensities inside
    /// it — so the background around an organ, which the label map leaves as one class, gets the structure its
    /// intensities show (air, fluid, bone and soft tissue around a brain). The label map is unchanged; follow with
    /// `rand_affine`, `rand_elastic`, `rand_bias_field`, `rand_degrade`, `rand_gaussian_noise` and `rand_gamma` for
    /// the rest of the generative model.
    SynthesiseFromLabels {
        /// Probability.
        prob: f64,
        /// Range of the class means.
        #[serde(default = "unit_range")]
        mean: [f64; 2],
        /// Range of the class standard deviations.
        #[serde(default = "default_synth_std")]
        std: [f64; 2],
        /// Intensity classes per label value.
        #[serde(default = "one_usize")]
        split: usize,
        /// Label values whose voxels keep their intensities: only the other classes are drawn, with means and
        /// standard deviations in units of the kept voxels' 1st–99th percentile range (so a real organ is shown
        /// among random surroundings), and the image is not rescaled.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keep: Vec<u32>,
    },
    /// With probability `prob`, [`Transform::Degrade`] to one of `qualities` chosen uniformly.
    RandDegrade {
        /// Probability.
        prob: f64,
        /// Candidate target qualities.
        qualities: Vec<Quality>,
    },
}

fn one() -> f32 {
    1.0
}
fn three() -> usize {
    3
}
fn plane01() -> [usize; 2] {
    [0, 1]
}

/// An ordered list of transforms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Applied first to last.
    #[serde(default)]
    pub transforms: Vec<Transform>,
}

/// The generator every random transform draws from.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A standard normal draw (Box–Muller on two uniform draws).
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn uniform(rng: &mut impl Rng, r: [f64; 2]) -> f64 {
    if r[1] > r[0] { r[0] + (r[1] - r[0]) * rng.random::<f64>() } else { r[0] }
}

fn unit_range() -> [f64; 2] {
    [0.0, 1.0]
}

fn default_synth_std() -> [f64; 2] {
    [0.0, 0.1]
}

fn one_usize() -> usize {
    1
}

/// Generation classes of a label map: each label value split into `split` classes by quantiles of `image`
/// (its first channel) inside it. Returns a class index per voxel and the number of classes.
pub fn generation_classes(image: &Image, label: &Image, split: usize) -> (Vec<usize>, usize) {
    let split = split.max(1);
    let intensities = image.channel(0);
    let mut values: Vec<i64> =
        label.data().iter().map(|v| v.round() as i64).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    values.sort();
    let mut class = vec![0usize; label.voxels()];
    for (li, &lv) in values.iter().enumerate() {
        let members: Vec<usize> = (0..label.voxels()).filter(|&i| label.data()[i].round() as i64 == lv).collect();
        let mut sorted: Vec<f32> = members.iter().map(|&i| intensities[i]).collect();
        sorted.sort_by(f32::total_cmp);
        let bounds: Vec<f32> = (1..split).map(|k| sorted[(k * sorted.len() / split).min(sorted.len() - 1)]).collect();
        for &i in &members {
            class[i] = li * split + bounds.partition_point(|&b| b <= intensities[i]).min(split - 1);
        }
    }
    (class, values.len() * split)
}

fn coin(rng: &mut impl Rng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

impl Pipeline {
    /// Whether it has no transforms.
    pub fn is_empty(&self) -> bool {
        self.transforms.is_empty()
    }

    /// Reads a pipeline from TOML (`[[transforms]]` tables).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| DataError::Invalid(format!("transform pipeline: {e}")))
    }

    /// Applies every transform in order.
    pub fn apply(&self, mut subject: Subject, rng: &mut impl Rng) -> Result<Subject> {
        for t in &self.transforms {
            subject = t.apply(subject, rng)?;
        }
        Ok(subject)
    }

    /// Applies the pipeline with a fresh generator seeded by `seed`.
    pub fn apply_seeded(&self, subject: Subject, seed: u64) -> Result<Subject> {
        self.apply(subject, &mut rng(seed))
    }
}

impl Transform {
    /// Applies the transform, drawing from `rng` when it is random.
    pub fn apply(&self, s: Subject, rng: &mut impl Rng) -> Result<Subject> {
        match self {
            Transform::ZScore { mask } => {
                let label = s.label.clone();
                intensity(s, |img| z_score(img, *mask, label.as_ref()))
            }
            Transform::MinMax { min, max } => intensity(s, |img| Ok(min_max(img, *min, *max))),
            Transform::ClipPercentiles { lower, upper } => intensity(s, |img| clip_percentiles(img, *lower, *upper)),
            Transform::Window { level, width } => intensity(s, |img| window(img, *level, *width)),
            Transform::Clip { min, max } => intensity(s, |img| {
                Ok(map_channels(img, |src, dst| {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v.clamp(*min, *max);
                    }
                }))
            }),
            Transform::Normalize { mean, std } => {
                if !(*std > 0.0) {
                    return Err(DataError::Invalid(format!("normalisation needs a positive std, got {std}")));
                }
                intensity(s, |img| Ok(scale_shift(img, 1.0 / std, -mean / std)))
            }
            Transform::Gamma { gamma } => intensity(s, |img| Ok(gamma_contrast(img, *gamma))),
            Transform::ScaleShift { scale, shift } => intensity(s, |img| Ok(scale_shift(img, *scale, *shift))),
            Transform::GaussianBlur { sigma } => intensity(s, |img| gaussian_blur(img, sigma)),
            Transform::Flip { axes } => s.map_spatial(|img, _| {
                let mut out = img.clone();
                for &a in axes {
                    out = geometry::flip(&out, a)?;
                }
                Ok(out)
            }),
            Transform::Rot90 { k, axes } => s.map_spatial(|img, _| rot90(img, *k, *axes)),
            Transform::Reorient { codes } => s.map_spatial(|img, _| geometry::reorient(img, codes)),
            Transform::Affine(p) => {
                let m = augmentation_matrix(&s.image, p)?;
                s.map_spatial(|img, is_label| resample_index_map(img, &m, is_label))
            }
            Transform::CropPad { shape } => {
                let start = centre_start(s.image.shape(), shape)?;
                s.map_spatial(|img, _| geometry::crop_or_pad(img, &start, shape, 0.0))
            }
            Transform::CropForeground { margin } => {
                let (lo, hi) = foreground_box(&s)?;
                let nd = s.image.ndim();
                let start: Vec<i64> = (0..nd).map(|a| lo[a] as i64 - *margin as i64).collect();
                let shape: Vec<usize> = (0..nd).map(|a| hi[a] - lo[a] + 1 + 2 * margin).collect();
                s.map_spatial(|img, _| geometry::crop_or_pad(img, &start, &shape, 0.0))
            }
            Transform::Resize { shape } => s.map_spatial(|img, is_label| resize(img, shape, is_label)),
            Transform::Resample { spacing } => {
                s.map_spatial(|img, is_label| geometry::resample(img, spacing, if is_label { Interp::Nearest } else { Interp::Linear }))
            }
            Transform::Degrade(q) => intensity(s, |img| harmonise::degrade(img, q, &mut *rng)),
            Transform::HistogramStandardise(h) => intensity(s, |img| h.apply(img)),
            Transform::HeadLayers(p) => crate::head::head_layers(s, p),
            Transform::BackgroundFrom { label } => {
                let Some(l) = s.label else { return Ok(s) };
                let cut = *label as f32;
                let values = l.data().iter().map(|&v| if v.round() >= cut { 0.0 } else { v }).collect();
                Ok(Subject { image: s.image, label: Some(with_values(&l, values)) })
            }
            Transform::RandFlip { prob, axes } => {
                let chosen: Vec<usize> = axes.iter().copied().filter(|_| coin(rng, *prob)).collect();
                Transform::Flip { axes: chosen }.apply(s, rng)
            }
            Transform::RandRot90 { prob, axes } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let k = rng.random_range(1..=3);
                Transform::Rot90 { k, axes: *axes }.apply(s, rng)
            }
            Transform::RandAffine { prob, rotate, scale, shear, translate } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let nd = s.image.ndim();
                let n_rot = if nd == 3 { 3 } else { 1 };
                let n_shear = if nd == 3 { 3 } else { 1 };
                let pick = |v: &Vec<f64>, i: usize| v.get(i).or(v.first()).copied().unwrap_or(0.0);
                let p = AffineParams {
                    rotate: (0..n_rot).map(|i| uniform(rng, [-pick(rotate, i), pick(rotate, i)])).collect(),
                    scale: (0..nd).map(|_| 1.0 + uniform(rng, [-scale, *scale])).collect(),
                    shear: (0..n_shear).map(|_| uniform(rng, [-shear, *shear])).collect(),
                    translate: (0..nd).map(|i| uniform(rng, [-pick(translate, i), pick(translate, i)])).collect(),
                };
                Transform::Affine(p).apply(s, rng)
            }
            Transform::RandElastic { prob, spacing, magnitude } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let field = elastic_field(s.image.shape(), *spacing, *magnitude, rng)?;
                s.map_spatial(|img, is_label| resample_displaced(img, &field, is_label))
            }
            Transform::RandCrop { shape } => {
                let nd = s.image.ndim();
                if shape.len() != nd {
                    return Err(DataError::Invalid(format!("crop shape {shape:?} needs {nd} axes")));
                }
                let start: Vec<i64> = (0..nd)
                    .map(|a| {
                        let room = s.image.shape()[a] as i64 - shape[a] as i64;
                        if room > 0 { rng.random_range(0..=room) } else { room / 2 }
                    })
                    .collect();
                s.map_spatial(|img, _| geometry::crop_or_pad(img, &start, shape, 0.0))
            }
            Transform::RandGaussianNoise { prob, std } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let sd = uniform(rng, *std);
                intensity(s, |img| Ok(add_noise(img, sd, &mut *rng)))
            }
            Transform::RandGaussianBlur { prob, sigma } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let sg = uniform(rng, *sigma);
                Transform::GaussianBlur { sigma: vec![sg] }.apply(s, rng)
            }
            Transform::RandBiasField { prob, degree, coeff } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let nd = s.image.ndim();
                let terms = legendre_terms(nd, *degree);
                let coeffs: Vec<f64> = terms.iter().map(|_| uniform(rng, [-coeff, *coeff])).collect();
                intensity(s, |img| Ok(bias_field(img, &terms, &coeffs)))
            }
            Transform::RandGamma { prob, gamma } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let g = uniform(rng, *gamma);
                intensity(s, |img| Ok(gamma_contrast(img, g)))
            }
            Transform::RandScaleShift { prob, scale, shift } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let (a, b) = (uniform(rng, *scale), uniform(rng, *shift));
                intensity(s, |img| Ok(scale_shift(img, a, b)))
            }
            Transform::RandContrast { prob, factor } => {
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let f = uniform(rng, *factor);
                intensity(s, |img| Ok(contrast(img, f)))
            }
            Transform::SynthesiseFromLabels { prob, mean, std, split, keep } => {
                if !(1..=64).contains(split) {
                    return Err(DataError::Invalid(format!("synthesise_from_labels: split must lie in 1..=64, not {split}")));
                }
                if !coin(rng, *prob) {
                    return Ok(s);
                }
                let Some(label) = s.label.as_ref() else {
                    return Err(DataError::Invalid("synthesise_from_labels needs a label map".into()));
                };
                let (class, n) = generation_classes(&s.image, label, *split);
                let draws: Vec<(f64, f64)> = (0..n).map(|_| (uniform(rng, *mean), uniform(rng, *std))).collect();
                let voxels = s.image.voxels();
                let noise: Vec<f64> = (0..voxels).map(|_| normal(rng)).collect();
                let drawn: Vec<f64> = (0..voxels).map(|i| draws[class[i]].0 + draws[class[i]].1 * noise[i]).collect();
                if !keep.is_empty() {
                    let kept: Vec<bool> = label.data().iter().map(|&v| keep.contains(&(v.round().max(0.0) as u32))).collect();
                    let mut values: Vec<f32> = s.image.channel(0).iter().zip(&kept).filter(|(_, k)| **k).map(|(&v, _)| v).collect();
                    if values.is_empty() {
                        return Ok(s);
                    }
                    values.sort_by(f32::total_cmp);
                    let q = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize] as f64;
                    let (lo, hi) = (q(0.01), q(0.99));
                    let span = if hi > lo { hi - lo } else { 1.0 };
                    let n = s.image.voxels();
                    let mut data = s.image.data().to_vec();
                    for c in 0..s.image.channels() {
                        for i in (0..n).filter(|&i| !kept[i]) {
                            data[c * n + i] = (lo + span * drawn[i]) as f32;
                        }
                    }
                    return Ok(Subject { image: with_values(&s.image, data), label: s.label });
                }
                // Into the intensity space the image was in (its mean and standard deviation), so that a pipeline that
                // normalised before augmenting sees synthetic images on the scale of real ones.
                let stats = |v: &mut dyn Iterator<Item = f64>| {
                    let (n, s1, s2) = v.fold((0.0, 0.0, 0.0), |(n, a, b), x| (n + 1.0, a + x, b + x * x));
                    let m = s1 / n;
                    (m, (s2 / n - m * m).max(0.0).sqrt())
                };
                let (m0, s0) = stats(&mut s.image.channel(0).iter().map(|&v| v as f64));
                let (m1, s1) = stats(&mut drawn.iter().copied());
                let scale = if s1 > 0.0 && s0 > 0.0 { s0 / s1 } else { 1.0 };
                let values: Vec<f32> = drawn.iter().map(|v| ((v - m1) * scale + m0) as f32).collect();
                let data: Vec<f32> = (0..s.image.channels()).flat_map(|_| values.iter().copied()).collect();
                let image = Image::new(data, s.image.shape().to_vec(), s.image.channels(), *s.image.affine(), "float32")?;
                Ok(Subject { image, label: s.label })
            }
            Transform::RandDegrade { prob, qualities } => {
                if qualities.is_empty() || !coin(rng, *prob) {
                    return Ok(s);
                }
                let q = qualities[rng.random_range(0..qualities.len())].clone();
                Transform::Degrade(q).apply(s, rng)
            }
        }
    }
}

fn intensity(mut s: Subject, f: impl FnOnce(&Image) -> Result<Image>) -> Result<Subject> {
    s.image = f(&s.image)?;
    Ok(s)
}

/// Rebuilds `img` with new values (same grid).
fn with_values(img: &Image, data: Vec<f32>) -> Image {
    Image::new(data, img.shape().to_vec(), img.channels(), *img.affine(), img.dtype()).expect("same size")
}

fn map_channels(img: &Image, mut f: impl FnMut(&[f32], &mut [f32])) -> Image {
    let n = img.voxels();
    let mut out = vec![0f32; img.data().len()];
    for c in 0..img.channels() {
        f(img.channel(c), &mut out[c * n..(c + 1) * n]);
    }
    with_values(img, out)
}

/// Z-score normalisation per channel.
pub fn z_score(img: &Image, mask: NormMask, label: Option<&Image>) -> Result<Image> {
    let selected: Option<Vec<bool>> = match mask {
        NormMask::All => None,
        NormMask::Nonzero => Some((0..img.voxels()).map(|i| (0..img.channels()).any(|c| img.channel(c)[i] != 0.0)).collect()),
        NormMask::Label => {
            let l = label.ok_or_else(|| DataError::Invalid("z-score inside the label needs a label map".into()))?;
            Some(l.channel(0).iter().map(|&v| v > 0.0).collect())
        }
    };
    Ok(map_channels(img, |src, dst| {
        let (mut n, mut sum, mut sq) = (0usize, 0f64, 0f64);
        for (i, &v) in src.iter().enumerate() {
            if selected.as_ref().is_none_or(|m| m[i]) {
                n += 1;
                sum += v as f64;
                sq += (v as f64) * (v as f64);
            }
        }
        let mean = if n > 0 { sum / n as f64 } else { 0.0 };
        let sd = if n > 0 { (sq / n as f64 - mean * mean).max(0.0).sqrt() } else { 1.0 };
        let sd = sd.max(1e-8);
        for (i, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            *d = match &selected {
                Some(m) if mask == NormMask::Nonzero && !m[i] => 0.0,
                _ => ((v as f64 - mean) / sd) as f32,
            };
        }
    }))
}

/// Rescales each channel linearly to `[lo, hi]` (a constant channel becomes `lo`).
pub fn min_max(img: &Image, lo: f32, hi: f32) -> Image {
    map_channels(img, |src, dst| {
        let (mn, mx) = src.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let range = (mx - mn) as f64;
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = if range > 0.0 { (lo as f64 + (v - mn) as f64 / range * (hi - lo) as f64) as f32 } else { lo };
        }
    })
}

/// The `q`-th percentile (0–100) of `values`, linear between order statistics (numpy's default).
pub fn percentile(values: &[f32], q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f32> = values.to_vec();
    let pos = q.clamp(0.0, 100.0) / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (_, &mut a, _) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let b = if hi == lo {
        a
    } else {
        let (_, &mut b, _) = v.select_nth_unstable_by(hi, f32::total_cmp);
        b
    };
    (a as f64 + (b as f64 - a as f64) * (pos - lo as f64)) as f32
}

/// Clips each channel to its `lower`–`upper` percentiles.
pub fn clip_percentiles(img: &Image, lower: f64, upper: f64) -> Result<Image> {
    if !(0.0..=100.0).contains(&lower) || !(0.0..=100.0).contains(&upper) || lower > upper {
        return Err(DataError::Invalid(format!("percentiles must satisfy 0 ≤ {lower} ≤ {upper} ≤ 100")));
    }
    Ok(map_channels(img, |src, dst| {
        let (a, b) = (percentile(src, lower), percentile(src, upper));
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v.clamp(a, b);
        }
    }))
}

/// CT window/level to `[0, 1]`.
pub fn window(img: &Image, level: f32, width: f32) -> Result<Image> {
    if !(width > 0.0) {
        return Err(DataError::Invalid(format!("window width must be positive, got {width}")));
    }
    let lo = level - width / 2.0;
    Ok(map_channels(img, |src, dst| {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = ((v - lo) / width).clamp(0.0, 1.0);
        }
    }))
}

/// Gamma on each channel's own range.
pub fn gamma_contrast(img: &Image, gamma: f64) -> Image {
    map_channels(img, |src, dst| {
        let (mn, mx) = src.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let range = (mx - mn) as f64;
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = if range > 0.0 { (((v - mn) as f64 / range).powf(gamma) * range + mn as f64) as f32 } else { v };
        }
    })
}

/// `x · scale + shift`.
pub fn scale_shift(img: &Image, scale: f64, shift: f64) -> Image {
    map_channels(img, |src, dst| {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v as f64 * scale + shift) as f32;
        }
    })
}

/// Each channel's values scaled by `factor` about the channel's mean.
pub fn contrast(img: &Image, factor: f64) -> Image {
    map_channels(img, |src, dst| {
        let mean = src.iter().map(|&v| v as f64).sum::<f64>() / src.len().max(1) as f64;
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = ((v as f64 - mean) * factor + mean) as f32;
        }
    })
}

/// Adds `N(0, sd²)` noise.
pub fn add_noise(img: &Image, sd: f64, rng: &mut impl Rng) -> Image {
    map_channels(img, |src, dst| {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v as f64 + sd * normal(rng)) as f32;
        }
    })
}

/// Normalised Gaussian kernel of standard deviation `sigma`, radius `⌈4σ⌉` (scipy's `truncate = 4`).
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let r = (4.0 * sigma).ceil().max(0.0) as i64;
    let w: Vec<f64> = (-r..=r).map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Convolves every line along `axis` of one channel with `kernel` (odd length, centred), mirror boundary
/// (scipy's `reflect`: the edge sample repeated).
pub(crate) fn convolve_axis(data: &mut [f32], shape: &[usize], axis: usize, kernel: &[f64]) {
    let n = shape[axis];
    if kernel.len() <= 1 || n == 0 {
        return;
    }
    let st = strides(shape)[axis];
    let r = (kernel.len() / 2) as i64;
    let reflect = |i: i64| -> usize {
        let period = 2 * n as i64;
        let mut i = i.rem_euclid(period);
        if i >= n as i64 {
            i = period - 1 - i;
        }
        i as usize
    };
    let mut line = vec![0f64; n];
    let mut out = vec![0f64; n];
    for_each_index(shape, |lin, idx| {
        if idx[axis] != 0 {
            return;
        }
        for (k, l) in line.iter_mut().enumerate() {
            *l = data[lin + k * st] as f64;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = kernel.iter().enumerate().map(|(t, w)| w * line[reflect(i as i64 + t as i64 - r)]).sum();
        }
        for (k, o) in out.iter().enumerate() {
            data[lin + k * st] = *o as f32;
        }
    });
}

/// Gaussian blur with `sigma` voxels (one value for all axes or one per axis).
pub fn gaussian_blur(img: &Image, sigma: &[f64]) -> Result<Image> {
    let nd = img.ndim();
    if sigma.is_empty() || (sigma.len() != 1 && sigma.len() != nd) || sigma.iter().any(|s| !(*s >= 0.0)) {
        return Err(DataError::Invalid(format!("blur needs 1 or {nd} non-negative sigmas, got {sigma:?}")));
    }
    let shape = img.shape().to_vec();
    Ok(map_channels(img, |src, dst| {
        dst.copy_from_slice(src);
        for a in 0..nd {
            let s = if sigma.len() == 1 { sigma[0] } else { sigma[a] };
            if s > 0.0 {
                convolve_axis(dst, &shape, a, &gaussian_kernel(s));
            }
        }
    }))
}

/// `k` quarter turns in the plane `axes` (numpy's `rot90`), the affine updated.
pub fn rot90(img: &Image, k: i32, axes: [usize; 2]) -> Result<Image> {
    let nd = img.ndim();
    let [a, b] = axes;
    if a >= nd || b >= nd || a == b {
        return Err(DataError::Invalid(format!("rot90 plane {axes:?} is not two distinct axes of {nd}")));
    }
    let mut order: Vec<usize> = (0..nd).collect();
    order.swap(a, b);
    match k.rem_euclid(4) {
        0 => Ok(img.clone()),
        1 => geometry::permute(&geometry::flip(img, b)?, &order),
        2 => geometry::flip(&geometry::flip(img, a)?, b),
        _ => geometry::flip(&geometry::permute(img, &order)?, b),
    }
}

fn centre_start(shape: &[usize], target: &[usize]) -> Result<Vec<i64>> {
    if target.len() != shape.len() || target.contains(&0) {
        return Err(DataError::Invalid(format!("target shape {target:?} needs {} positive sizes", shape.len())));
    }
    Ok(shape.iter().zip(target).map(|(&s, &t)| (s as i64 - t as i64).div_euclid(2)).collect())
}

/// Inclusive bounding box of the label's foreground, or of the image's non-zero voxels.
fn foreground_box(s: &Subject) -> Result<(Vec<usize>, Vec<usize>)> {
    let shape = s.image.shape().to_vec();
    let nd = shape.len();
    let mut lo = shape.clone();
    let mut hi = vec![0usize; nd];
    let mut any = false;
    let is_fg = |i: usize| match &s.label {
        Some(l) => l.data()[i] > 0.0,
        None => (0..s.image.channels()).any(|c| s.image.channel(c)[i] != 0.0),
    };
    for_each_index(&shape, |lin, idx| {
        if is_fg(lin) {
            any = true;
            for a in 0..nd {
                lo[a] = lo[a].min(idx[a]);
                hi[a] = hi[a].max(idx[a]);
            }
        }
    });
    if !any {
        return Err(DataError::Invalid("no foreground to crop to".into()));
    }
    Ok((lo, hi))
}

/// Resizes to `shape`; output voxel `i` samples input position `(i + ½)·old/new − ½` (align-corners false).
pub fn resize(img: &Image, shape: &[usize], nearest: bool) -> Result<Image> {
    let nd = img.ndim();
    if shape.len() != nd || shape.contains(&0) {
        return Err(DataError::Invalid(format!("resize needs {nd} positive sizes, got {shape:?}")));
    }
    let mut m = geometry::identity();
    for a in 0..nd {
        let f = img.shape()[a] as f64 / shape[a] as f64;
        m[a][a] = f;
        m[a][3] = 0.5 * f - 0.5;
    }
    resample_to_grid(img, shape, &m, nearest, compose(img.affine(), &m))
}

/// Samples the image on its own grid through the index map `m` (output voxel → input position).
fn resample_index_map(img: &Image, m: &Affine, nearest: bool) -> Result<Image> {
    resample_to_grid(img, img.shape(), m, nearest, *img.affine())
}

fn mat3_mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut o = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            o[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    o
}

/// The index map (output voxel → input position) of an affine augmentation about the image centre.
///
/// The content moves by `x ↦ R·S·H·(x − c) + c + t` in millimetres (spacing-scaled voxel axes); the output voxel
/// `p` therefore reads the input at the inverse of that map.
fn augmentation_matrix(img: &Image, p: &AffineParams) -> Result<Affine> {
    let nd = img.ndim();
    let sp = img.spacing();
    let mut spacing = [1.0; 3];
    spacing[..nd].copy_from_slice(&sp);
    let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let rot = |axis: usize, deg: f64| {
        let (s, c) = deg.to_radians().sin_cos();
        let (i, j) = ((axis + 1) % 3, (axis + 2) % 3);
        let mut m = id;
        m[i][i] = c;
        m[i][j] = -s;
        m[j][i] = s;
        m[j][j] = c;
        m
    };
    let mut r = id;
    if nd == 2 {
        if let Some(&a) = p.rotate.first() {
            r = rot(2, a);
        }
        if p.rotate.len() > 1 {
            return Err(DataError::Invalid("a 2D rotation takes one angle".into()));
        }
    } else {
        if p.rotate.len() > 3 {
            return Err(DataError::Invalid("a 3D rotation takes up to three angles".into()));
        }
        for (axis, &a) in p.rotate.iter().enumerate() {
            r = mat3_mul(&rot(axis, a), &r);
        }
    }
    let mut sc = id;
    for (a, &s) in p.scale.iter().enumerate().take(nd) {
        if !(s > 0.0) {
            return Err(DataError::Invalid(format!("scale factors must be positive, got {s}")));
        }
        sc[a][a] = s;
    }
    let mut sh = id;
    let slots = [(0, 1), (0, 2), (1, 2)];
    for (k, &v) in p.shear.iter().enumerate().take(if nd == 2 { 1 } else { 3 }) {
        sh[slots[k].0][slots[k].1] = v;
    }
    let a = mat3_mul(&mat3_mul(&r, &sc), &sh);
    let ai = mat3_inv(&a).ok_or_else(|| DataError::Invalid("affine augmentation is singular".into()))?;
    let mut centre = [0.0; 3];
    let mut t = [0.0; 3];
    for ax in 0..nd {
        centre[ax] = (img.shape()[ax] as f64 - 1.0) / 2.0;
        t[ax] = p.translate.get(ax).copied().unwrap_or(0.0);
    }
    // input_vox = D⁻¹·(A⁻¹·(D·(p − c) − t)) + c with D = diag(spacing).
    let mut m = geometry::identity();
    for rr in 0..3 {
        for cc in 0..3 {
            m[rr][cc] = ai[rr][cc] * spacing[cc] / spacing[rr];
        }
        let mut off = centre[rr];
        for cc in 0..3 {
            off -= ai[rr][cc] * (spacing[cc] * centre[cc] + t[cc]) / spacing[rr];
        }
        m[rr][3] = off;
    }
    if nd == 2 {
        for rr in 0..4 {
            m[rr][2] = if rr == 2 { 1.0 } else { 0.0 };
            m[2][rr] = if rr == 2 { 1.0 } else { 0.0 };
        }
    }
    Ok(m)
}

/// A displacement in voxels for every voxel (`[axis][voxel]`).
struct Field {
    d: Vec<Vec<f32>>,
}

/// A smooth random displacement: normal offsets on a coarse control grid, linearly interpolated.
fn elastic_field(shape: &[usize], spacing: f64, magnitude: f64, rng: &mut impl Rng) -> Result<Field> {
    if !(spacing >= 1.0) || !(magnitude >= 0.0) {
        return Err(DataError::Invalid(format!("elastic spacing ≥ 1 and magnitude ≥ 0 required, got {spacing}, {magnitude}")));
    }
    let nd = shape.len();
    let coarse: Vec<usize> = shape.iter().map(|&n| ((n as f64 - 1.0) / spacing).ceil() as usize + 1).collect();
    let n_coarse: usize = coarse.iter().product();
    let grid = Image::new(vec![0.0; n_coarse], coarse.clone(), 1, crate::IDENTITY, "float32")?;
    let sampler = Sampler::new(&grid, Outside::Zero);
    let n: usize = shape.iter().product();
    let mut d = Vec::with_capacity(nd);
    for _ in 0..nd {
        let values: Vec<f32> = (0..n_coarse).map(|_| (normal(rng) * magnitude) as f32).collect();
        let mut out = vec![0f32; n];
        for_each_index(shape, |lin, idx| {
            let mut p = [0f64; 3];
            for a in 0..nd {
                p[a] = idx[a] as f64 / spacing;
            }
            out[lin] = sampler.linear(&values, &p);
        });
        d.push(out);
    }
    Ok(Field { d })
}

/// Samples the image at `voxel + displacement`.
fn resample_displaced(img: &Image, field: &Field, nearest: bool) -> Result<Image> {
    let nd = img.ndim();
    let n = img.voxels();
    let shape = img.shape().to_vec();
    let sampler = Sampler::new(img, Outside::Zero);
    let mut data = vec![0f32; n * img.channels()];
    for c in 0..img.channels() {
        let src = img.channel(c);
        let dst = &mut data[c * n..(c + 1) * n];
        for_each_index(&shape, |lin, idx| {
            let mut p = [0f64; 3];
            for a in 0..nd {
                p[a] = idx[a] as f64 + field.d[a][lin] as f64;
            }
            dst[lin] = if nearest { sampler.nearest(src, &p) } else { sampler.linear(src, &p) };
        });
    }
    Image::new(data, shape, img.channels(), *img.affine(), img.dtype())
}

/// Exponents `(i, j, k)` of the Legendre products of total degree 1…`degree` (the constant is left out: a
/// bias field of mean gain 1).
fn legendre_terms(nd: usize, degree: usize) -> Vec<[usize; 3]> {
    let mut t = Vec::new();
    for i in 0..=degree {
        for j in 0..=degree {
            for k in 0..=degree {
                let total = i + j + k;
                if total == 0 || total > degree || (nd < 3 && k > 0) || (nd < 2 && j > 0) {
                    continue;
                }
                t.push([i, j, k]);
            }
        }
    }
    t
}

fn legendre(n: usize, x: f64) -> f64 {
    let (mut p0, mut p1) = (1.0, x);
    if n == 0 {
        return p0;
    }
    for k in 1..n {
        let p2 = ((2 * k + 1) as f64 * x * p1 - k as f64 * p0) / (k + 1) as f64;
        p0 = p1;
        p1 = p2;
    }
    p1
}

/// Multiplies by `exp(Σ c·Pᵢ(x)Pⱼ(y)Pₖ(z))` with coordinates scaled to `[−1, 1]` along each axis.
fn bias_field(img: &Image, terms: &[[usize; 3]], coeffs: &[f64]) -> Image {
    let shape = img.shape().to_vec();
    let nd = shape.len();
    let n = img.voxels();
    let mut gain = vec![0f64; n];
    for_each_index(&shape, |lin, idx| {
        let mut x = [0f64; 3];
        for a in 0..nd {
            x[a] = if shape[a] > 1 { 2.0 * idx[a] as f64 / (shape[a] - 1) as f64 - 1.0 } else { 0.0 };
        }
        let s: f64 = terms.iter().zip(coeffs).map(|(t, c)| c * legendre(t[0], x[0]) * legendre(t[1], x[1]) * legendre(t[2], x[2])).sum();
        gain[lin] = s.exp();
    });
    map_channels(img, |src, dst| {
        for ((d, &v), g) in dst.iter_mut().zip(src).zip(&gain) {
            *d = (v as f64 * g) as f32;
        }
    })
}
