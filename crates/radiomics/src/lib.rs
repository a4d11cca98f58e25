//! Radiomics: IBSI-conformant features of a region of interest, from an image and a mask, in 2D and 3D.
//!
//! The pipeline follows the IBSI reference manual (Zwanenburg et al., *Radiology* 2020): optional resampling to
//! a voxel size (image linear, mask linear then thresholded at 0.5), an optional re-segmentation range that
//! narrows the *intensity* mask while the *morphological* mask keeps its shape, discretisation by fixed bin width
//! or fixed bin number, then the feature families:
//!
//! * `stat_*` — intensity statistics on the raw values; `ih_*` — the intensity histogram of the discretised values;
//! * `morph_*` — shape from the marching-cubes mesh of the morphological mask (volume, area, sphericity,
//!   maximum diameters, principal axes…), or for a planar mask from its marching-squares contour;
//! * `cm_*` (GLCM), `rlm_*` (GLRLM): per direction (13 in 3D, 4 in 2D), features averaged over directions
//!   (IBSI's "3D, averaged" / "2D"); `szm_*` (GLSZM, 26- or 8-connected zones), `ngl_*` (NGLDM, pyradiomics'
//!   GLDM, coarseness 1 and α = 0) and `ngt_*` (NGTDM) over the whole volume.
//!
//! Where IBSI and pyradiomics differ the IBSI definition is followed, because IBSI's reference values are the
//! standard that radiomics studies report against: the kurtosis is the *excess* kurtosis (pyradiomics' minus 3),
//! fixed-bin-width discretisation starts at the ROI minimum (or the re-segmentation lower bound) where pyradiomics
//! aligns bin edges with zero ([`BinOrigin::Zero`] reproduces it), the principal-axis lengths use the covariance
//! normalised by N − 1, and maximum diameters are measured between mesh vertices. `docs/RADIOMICS.md` lists the
//! differences with what each one changes.
//!
//! ```
//! use vesalius_io::{Image, IDENTITY};
//! use vesalius_radiomics::{extract, Settings};
//! // a 4 × 4 × 4 cube of value 2 with a brighter half, inside an 8 × 8 × 8 image
//! let n = 8;
//! let mut img = vec![0f32; n * n * n];
//! let mut mask = vec![0f32; n * n * n];
//! for z in 2..6 { for y in 2..6 { for x in 2..6 {
//!     let i = x + n * (y + n * z);
//!     mask[i] = 1.0;
//!     img[i] = if x < 4 { 2.0 } else { 5.0 };
//! } } }
//! let image = Image::new(img, vec![n, n, n], 1, IDENTITY, "float32").unwrap();
//! let mask = Image::new(mask, vec![n, n, n], 1, IDENTITY, "uint8").unwrap();
//! let f = extract(&image, &mask, 1.0, &Settings { bin_width: Some(1.0), ..Settings::default() }).unwrap();
//! assert_eq!(f.get("morph_approx_vol"), Some(64.0));
//! assert_eq!(f.get("stat_mean"), Some(3.5));
//! assert_eq!(f.get("ih_max"), Some(4.0)); // levels 1 (value 2) and 4 (value 5)
//! ```

pub mod firstorder;
pub mod mesh;
pub mod shape;
pub mod texture;

use serde::{Deserialize, Serialize};
use vesalius_io::Image;
use vesalius_io::geometry::{Interp, resample};

/// Largest number of grey levels a discretisation may produce (texture matrices grow with its square).
pub const MAX_LEVELS: usize = 4096;
/// Largest number of voxels a resampled grid may have.
pub const MAX_RESAMPLED_VOXELS: usize = 1 << 28;

/// Why features could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum RadiomicsError {
    /// Image and mask do not describe the same grid.
    #[error("image and mask differ: {0}")]
    Geometry(String),
    /// The mask holds no voxel of the label (or the intensity mask is empty after re-segmentation).
    #[error("{0}")]
    EmptyRoi(String),
    /// A setting is out of range.
    #[error("invalid radiomics setting: {0}")]
    Settings(String),
    /// The image layer refused an operation (resampling).
    #[error(transparent)]
    Data(#[from] vesalius_io::DataError),
}

/// Where fixed-bin-width bins start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BinOrigin {
    /// IBSI: at the re-segmentation lower bound when there is one, else at the ROI's minimum.
    #[default]
    RoiMinimum,
    /// pyradiomics: bin edges at multiples of the width (bin 1 holds the ROI minimum).
    Zero,
}

/// Feature-extraction settings (the `--config` TOML of `vesalius radiomics`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Fixed bin width (IBSI FBS), in the image's units. Default 25 (pyradiomics' default) unless `bin_count` is set.
    pub bin_width: Option<f64>,
    /// Fixed bin number (IBSI FBN); excludes `bin_width`.
    pub bin_count: Option<usize>,
    /// Where fixed-width bins start.
    pub bin_origin: BinOrigin,
    /// Resample image and mask to this voxel size (mm, one per axis) before anything else.
    pub resample: Option<Vec<f64>>,
    /// Re-segmentation: only voxels with intensities in `[lo, hi]` enter intensity and texture features.
    pub resegment: Option<[f64; 2]>,
    /// Feature families to compute (`stat`, `ih`, `morph`, `cm`, `rlm`, `szm`, `ngl`, `ngt`); empty: all.
    pub families: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { bin_width: None, bin_count: None, bin_origin: BinOrigin::RoiMinimum, resample: None, resegment: None, families: vec![] }
    }
}

/// The feature families, in output order.
pub const FAMILIES: [&str; 8] = ["stat", "ih", "morph", "cm", "rlm", "szm", "ngl", "ngt"];

impl Settings {
    fn check(&self) -> Result<(), RadiomicsError> {
        let bad = |m: String| Err(RadiomicsError::Settings(m));
        if self.bin_width.is_some() && self.bin_count.is_some() {
            return bad("bin_width and bin_count exclude each other".into());
        }
        if let Some(w) = self.bin_width
            && !(w > 0.0 && w.is_finite())
        {
            return bad(format!("bin_width must be positive and finite, got {w}"));
        }
        if let Some(n) = self.bin_count
            && !(1..=MAX_LEVELS).contains(&n)
        {
            return bad(format!("bin_count must be in 1..={MAX_LEVELS}, got {n}"));
        }
        if let Some([lo, hi]) = self.resegment
            && !(lo <= hi && lo.is_finite() && hi.is_finite())
        {
            return bad(format!("resegment range [{lo}, {hi}] is not an ordered finite range"));
        }
        if let Some(s) = &self.resample
            && s.iter().any(|&v| !(v > 0.0 && v.is_finite()))
        {
            return bad(format!("resample spacing must be positive and finite, got {s:?}"));
        }
        for f in &self.families {
            if !FAMILIES.contains(&f.as_str()) {
                return bad(format!("unknown feature family {f:?} (known: {})", FAMILIES.join(", ")));
            }
        }
        Ok(())
    }

    fn wants(&self, family: &str) -> bool {
        self.families.is_empty() || self.families.iter().any(|f| f == family)
    }
}

/// A region of interest ready for feature computation: cropped to its bounding box with one voxel of margin
/// (so that every ROI voxel's 26 neighbours lie in the grid), first axis fastest.
#[derive(Clone, Debug)]
pub struct Roi {
    /// Grid shape (x, y, z); z is 1 for a planar image.
    pub shape: [usize; 3],
    /// Voxel size (mm).
    pub spacing: [f64; 3],
    /// Intensities.
    pub values: Vec<f64>,
    /// Morphological mask (shape features).
    pub morph: Vec<bool>,
    /// Intensity mask: the morphological mask after re-segmentation (intensity and texture features).
    pub intensity: Vec<bool>,
    /// Discretised grey level per voxel, 1..=`levels` inside the intensity mask, 0 elsewhere.
    pub grey: Vec<u32>,
    /// Number of grey levels Ng (the highest level).
    pub levels: usize,
    /// Whether the image is planar (2D features and in-plane texture directions).
    pub planar: bool,
}

impl Roi {
    /// Linear index of (x, y, z).
    pub fn lin(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.shape[0] * (y + self.shape[1] * z)
    }
    /// Signed linear offset of a neighbour step.
    pub fn offset(&self, d: [i64; 3]) -> i64 {
        d[0] + self.shape[0] as i64 * (d[1] + self.shape[1] as i64 * d[2])
    }
    /// The discretised levels of the intensity mask's voxels.
    pub fn grey_values(&self) -> Vec<u32> {
        self.grey.iter().copied().filter(|&g| g > 0).collect()
    }
    /// The intensities of the intensity mask's voxels.
    pub fn intensities(&self) -> Vec<f64> {
        self.values.iter().zip(&self.intensity).filter(|(_, m)| **m).map(|(v, _)| *v).collect()
    }
}

/// Named feature values in a fixed order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Features(pub Vec<(String, f64)>);

impl Features {
    /// The value of a feature by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
    pub(crate) fn push(&mut self, family: &str, name: &str, v: f64) {
        self.0.push((format!("{family}_{name}"), v));
    }
}

fn same_grid(image: &Image, mask: &Image) -> Result<(), RadiomicsError> {
    if image.shape() != mask.shape() {
        return Err(RadiomicsError::Geometry(format!("image shape {:?}, mask shape {:?}", image.shape(), mask.shape())));
    }
    let (a, b) = (image.affine(), mask.affine());
    let scale = image.spacing().iter().cloned().fold(1.0, f64::max);
    for r in 0..3 {
        for c in 0..4 {
            if (a[r][c] - b[r][c]).abs() > 1e-3 * scale.max(1.0) {
                return Err(RadiomicsError::Geometry(format!("affines differ at [{r}][{c}]: {} vs {}", a[r][c], b[r][c])));
            }
        }
    }
    if image.channels() != 1 || mask.channels() != 1 {
        return Err(RadiomicsError::Geometry(format!("one channel needed, got {} and {}", image.channels(), mask.channels())));
    }
    if image.ndim() > 3 {
        return Err(RadiomicsError::Geometry(format!("2D or 3D images only, got {} dimensions", image.ndim())));
    }
    Ok(())
}

/// Crops image and mask (`label` voxels) to the ROI, resamples, re-segments and discretises.
pub fn prepare(image: &Image, mask: &Image, label: f32, settings: &Settings) -> Result<Roi, RadiomicsError> {
    settings.check()?;
    same_grid(image, mask)?;
    let binary: Vec<f32> = mask.data().iter().map(|&v| if v == label { 1.0 } else { 0.0 }).collect();
    let mut bin = Image::new(binary, mask.shape().to_vec(), 1, *mask.affine(), "uint8")?;
    let mut img = image.clone();
    if let Some(spacing) = &settings.resample {
        if spacing.len() != img.ndim() {
            return Err(RadiomicsError::Settings(format!("resample needs {} spacings, got {}", img.ndim(), spacing.len())));
        }
        let old = img.spacing();
        let n: f64 = (0..img.ndim()).map(|a| (img.shape()[a] as f64 * old[a] / spacing[a]).round().max(1.0)).product();
        if n > MAX_RESAMPLED_VOXELS as f64 {
            return Err(RadiomicsError::Settings(format!("resampling to {spacing:?} mm gives {n} voxels (limit {MAX_RESAMPLED_VOXELS})")));
        }
        img = resample(&img, spacing, Interp::Linear)?;
        let m = resample(&bin, spacing, Interp::Linear)?;
        let thr: Vec<f32> = m.data().iter().map(|&v| if v >= 0.5 { 1.0 } else { 0.0 }).collect();
        bin = Image::new(thr, m.shape().to_vec(), 1, *m.affine(), "uint8")?;
    }
    let planar = img.ndim() == 2 || img.shape().get(2) == Some(&1);
    let full = [img.shape()[0], img.shape().get(1).copied().unwrap_or(1), img.shape().get(2).copied().unwrap_or(1)];
    let sp = img.spacing();
    let spacing = [sp[0], sp.get(1).copied().unwrap_or(1.0), if img.ndim() == 3 { sp[2] } else { 1.0 }];
    // bounding box
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    let mut count = 0usize;
    for z in 0..full[2] {
        for y in 0..full[1] {
            for x in 0..full[0] {
                if bin.data()[x + full[0] * (y + full[1] * z)] > 0.5 {
                    count += 1;
                    for (a, v) in [x, y, z].into_iter().enumerate() {
                        lo[a] = lo[a].min(v);
                        hi[a] = hi[a].max(v);
                    }
                }
            }
        }
    }
    if count == 0 {
        return Err(RadiomicsError::EmptyRoi(format!("the mask has no voxel of label {label}")));
    }
    let margin = [1usize, 1, if planar { 0 } else { 1 }];
    let shape: [usize; 3] = std::array::from_fn(|a| hi[a] - lo[a] + 1 + 2 * margin[a]);
    let n = shape.iter().product();
    let (mut values, mut morph) = (vec![0f64; n], vec![false; n]);
    for z in 0..shape[2] - 2 * margin[2] {
        for y in 0..shape[1] - 2 {
            for x in 0..shape[0] - 2 {
                let src = (lo[0] + x) + full[0] * ((lo[1] + y) + full[1] * (lo[2] + z));
                let dst = (x + 1) + shape[0] * ((y + 1) + shape[1] * (z + margin[2]));
                values[dst] = img.data()[src] as f64;
                morph[dst] = bin.data()[src] > 0.5;
            }
        }
    }
    let intensity: Vec<bool> = match settings.resegment {
        Some([a, b]) => morph.iter().zip(&values).map(|(&m, &v)| m && v >= a && v <= b).collect(),
        None => morph.clone(),
    };
    let inside: Vec<f64> = values.iter().zip(&intensity).filter(|(_, m)| **m).map(|(v, _)| *v).collect();
    if inside.is_empty() {
        return Err(RadiomicsError::EmptyRoi(format!("no voxel of label {label} lies in the re-segmentation range")));
    }
    if inside.iter().any(|v| !v.is_finite()) {
        return Err(RadiomicsError::EmptyRoi(format!("the ROI of label {label} holds non-finite intensities")));
    }
    let (min, max) = inside.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let level = |v: f64| -> f64 {
        if let Some(n) = settings.bin_count {
            if max > min { ((n as f64) * (v - min) / (max - min)).floor().min(n as f64 - 1.0) + 1.0 } else { 1.0 }
        } else {
            let w = settings.bin_width.unwrap_or(25.0);
            match settings.bin_origin {
                BinOrigin::RoiMinimum => {
                    let origin = settings.resegment.map(|r| r[0]).unwrap_or(min);
                    ((v - origin) / w).floor() + 1.0
                }
                BinOrigin::Zero => (v / w).floor() - (min / w).floor() + 1.0,
            }
        }
    };
    let top = level(max);
    if !(top >= 1.0 && top <= MAX_LEVELS as f64) {
        return Err(RadiomicsError::Settings(format!(
            "discretisation gives {top} grey levels for intensities {min}..{max} (limit {MAX_LEVELS}); use a wider bin width or a bin count"
        )));
    }
    let grey: Vec<u32> = values.iter().zip(&intensity).map(|(&v, &m)| if m { level(v) as u32 } else { 0 }).collect();
    let levels = grey.iter().copied().max().unwrap_or(1) as usize;
    Ok(Roi { shape, spacing, values, morph, intensity, grey, levels, planar })
}

/// Every requested feature of the ROI of `label` in `mask`.
pub fn extract(image: &Image, mask: &Image, label: f32, settings: &Settings) -> Result<Features, RadiomicsError> {
    let roi = prepare(image, mask, label, settings)?;
    Ok(features(&roi, settings))
}

/// Every requested feature of a prepared ROI.
pub fn features(roi: &Roi, settings: &Settings) -> Features {
    let mut out = Features::default();
    if settings.wants("stat") {
        firstorder::statistics(roi, &mut out);
    }
    if settings.wants("ih") {
        firstorder::histogram(roi, &mut out);
    }
    if settings.wants("morph") {
        shape::morphology(roi, &mut out);
    }
    if settings.wants("cm") {
        texture::glcm(roi, &mut out);
    }
    if settings.wants("rlm") {
        texture::glrlm(roi, &mut out);
    }
    if settings.wants("szm") {
        texture::glszm(roi, &mut out);
    }
    if settings.wants("ngl") {
        texture::ngldm(roi, &mut out);
    }
    if settings.wants("ngt") {
        texture::ngtdm(roi, &mut out);
    }
    out
}

/// The distinct non-zero labels of a mask, ascending.
pub fn labels(mask: &Image) -> Vec<f32> {
    let mut l: Vec<f32> = mask.data().iter().copied().filter(|&v| v != 0.0 && v.is_finite()).collect();
    l.sort_by(f32::total_cmp);
    l.dedup();
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesalius_io::IDENTITY;

    fn cube(n: usize, value: impl Fn(usize) -> f32) -> (Image, Image) {
        let img: Vec<f32> = (0..n * n * n).map(&value).collect();
        let mask: Vec<f32> = (0..n * n * n)
            .map(|i| {
                let (x, y, z) = (i % n, (i / n) % n, i / (n * n));
                if (1..n - 1).contains(&x) && (1..n - 1).contains(&y) && (1..n - 1).contains(&z) { 1.0 } else { 0.0 }
            })
            .collect();
        (Image::new(img, vec![n, n, n], 1, IDENTITY, "float32").unwrap(), Image::new(mask, vec![n, n, n], 1, IDENTITY, "uint8").unwrap())
    }

    #[test]
    fn bad_inputs_are_refused_with_a_reason() {
        let (img, mask) = cube(6, |i| i as f32);
        let err = |r: Result<Features, RadiomicsError>| r.unwrap_err().to_string();
        assert!(err(extract(&img, &mask, 7.0, &Settings::default())).contains("no voxel of label 7"));
        let tiny = Settings { bin_width: Some(1e-6), ..Settings::default() };
        assert!(err(extract(&img, &mask, 1.0, &tiny)).contains("grey levels"));
        let both = Settings { bin_width: Some(1.0), bin_count: Some(8), ..Settings::default() };
        assert!(err(extract(&img, &mask, 1.0, &both)).contains("exclude each other"));
        let fam = Settings { families: vec!["glcm".into()], ..Settings::default() };
        assert!(err(extract(&img, &mask, 1.0, &fam)).contains("unknown feature family"));
        let reseg = Settings { resegment: Some([1e6, 2e6]), ..Settings::default() };
        assert!(err(extract(&img, &mask, 1.0, &reseg)).contains("re-segmentation range"));
        let other = Image::new(vec![0.0; 5 * 6 * 6], vec![5, 6, 6], 1, IDENTITY, "uint8").unwrap();
        assert!(err(extract(&img, &other, 1.0, &Settings::default())).contains("shape"));
        let huge = Settings { resample: Some(vec![1e-4, 1e-4, 1e-4]), ..Settings::default() };
        assert!(err(extract(&img, &mask, 1.0, &huge)).contains("voxels"));
    }

    #[test]
    fn discretisation_follows_ibsi_or_pyradiomics() {
        // intensities 30..=39 in a 2-voxel-thick band: width 4 from the minimum (IBSI) vs from zero (pyradiomics)
        let (img, mask) = cube(5, |i| 30.0 + (i % 10) as f32);
        let ibsi = prepare(&img, &mask, 1.0, &Settings { bin_width: Some(4.0), ..Settings::default() }).unwrap();
        let zero =
            prepare(&img, &mask, 1.0, &Settings { bin_width: Some(4.0), bin_origin: BinOrigin::Zero, ..Settings::default() }).unwrap();
        let (lo, hi) = ibsi.intensities().iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let level = |roi: &Roi, v: f64| roi.grey[roi.values.iter().zip(&roi.intensity).position(|(x, m)| *m && *x == v).unwrap()];
        assert_eq!(level(&ibsi, lo), 1);
        assert_eq!(level(&ibsi, hi), ((hi - lo) / 4.0).floor() as u32 + 1);
        assert_eq!(level(&zero, hi), ((hi / 4.0).floor() - (lo / 4.0).floor()) as u32 + 1);
        let fbn = prepare(&img, &mask, 1.0, &Settings { bin_count: Some(3), ..Settings::default() }).unwrap();
        assert_eq!(fbn.levels, 3);
        assert_eq!(level(&fbn, hi), 3);
    }

    #[test]
    fn resampling_keeps_the_volume_and_the_intensities() {
        // a 6 × 6 × 6 mm cube of value 7 at 2 mm voxels, resampled to 1 mm
        let (img, mask) = cube(5, |_| 7.0);
        let mut affine = IDENTITY;
        for a in 0..3 {
            affine[a][a] = 2.0;
        }
        let img = Image::new(img.data().to_vec(), img.shape().to_vec(), 1, affine, "float32").unwrap();
        let mask = Image::new(mask.data().to_vec(), mask.shape().to_vec(), 1, affine, "uint8").unwrap();
        let at_2mm = extract(&img, &mask, 1.0, &Settings::default()).unwrap();
        let at_1mm = extract(&img, &mask, 1.0, &Settings { resample: Some(vec![1.0, 1.0, 1.0]), ..Settings::default() }).unwrap();
        assert_eq!(at_2mm.get("morph_approx_vol"), Some(216.0));
        // old voxel centres at 2, 4 and 6 mm, new ones every mm from 0: the interpolated mask is 1 at 2..6 mm, ½ on
        // the faces at 1 and 7 mm (kept: ≥ 0.5), ¼ and ⅛ on edges and corners (dropped): 5³ + 6 · 5² voxels
        assert_eq!(at_1mm.get("morph_approx_vol"), Some(275.0));
        assert_eq!((at_1mm.get("stat_mean"), at_1mm.get("stat_var")), (Some(7.0), Some(0.0)));
        let wrong = Settings { resample: Some(vec![1.0, 1.0]), ..Settings::default() };
        assert!(extract(&img, &mask, 1.0, &wrong).unwrap_err().to_string().contains("3 spacings"));
    }

    #[test]
    fn resegmentation_narrows_the_intensity_mask_only() {
        let (img, mask) = cube(6, |i| (i % 7) as f32);
        let s = Settings { resegment: Some([2.0, 4.0]), bin_width: Some(1.0), ..Settings::default() };
        let f = extract(&img, &mask, 1.0, &s).unwrap();
        assert_eq!(f.get("morph_approx_vol"), Some(64.0));
        assert!(f.get("stat_min").unwrap() >= 2.0 && f.get("stat_max").unwrap() <= 4.0);
        assert_eq!(f.get("ih_min"), Some(1.0), "bins start at the range's lower bound");
    }
}
