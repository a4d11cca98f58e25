//! Detection data: images with their findings, the held-out bands and tiles, lesion insertion, and training patches
//! with their heatmap and size targets under augmentation that moves the findings with the image.
//!
//! A [`Scan`] is one evaluation unit (an image, a band of an image, or a tile of a band) in its own grid, with the
//! findings whose centre lies in it. Training images keep their whole grid and the bands to avoid; a training patch
//! never touches a held-out voxel.
//!
//! ```
//! use vesalius_detection::data::{render_targets, Target};
//! // One finding of diameter 12 voxels at (10, 6) of a 24×16 patch: the heatmap peaks at exactly 1 there.
//! let t = render_targets([24, 16, 1], &[Target { centre: [10.0, 6.0, 0.0], sigma: [2.0, 2.0, 1.0], log_diameter: 12f32.ln(), half: [6.0, 6.0, 0.5] }]);
//! assert_eq!(t.heat[10 + 24 * 6], 1.0);
//! assert!(t.heat[13 + 24 * 6] < 0.4);
//! assert_eq!(t.size_mask.iter().filter(|&&m| m > 0.0).count(), 1);
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vesalius_data::lesions::{LesionSpec, dynamic_series, insert_lesions};
use vesalius_io::Image;

use crate::DetectError;
use crate::annotations::{Detection, read_luna_csv};
use crate::geometry::{Frame, Geometry};
use crate::instances::{findings_from_instances, findings_from_mask};
use crate::recipe::{Band, DetRecipe, ImageEntry, InsertSection, Intensity};

/// One evaluation unit or training image: normalised intensities on a grid with its findings.
#[derive(Clone, Debug)]
pub struct Scan {
    /// The scan id (LUNA16's `seriesuid`).
    pub id: String,
    /// Normalised intensities, first axis fastest, channels (frames of a dynamic series) slowest.
    pub data: Vec<f32>,
    /// Channels: 1, or the frames of a dynamic series.
    pub channels: usize,
    /// `[nx, ny, nz]` (`nz = 1` in 2D).
    pub shape: [usize; 3],
    /// Spatial axes (2 or 3).
    pub ndim: usize,
    /// The voxel ↔ world map of the grid.
    pub geometry: Geometry,
    /// Findings in world LPS millimetres.
    pub findings: Vec<Detection>,
}

impl Scan {
    /// The scan as an image (normalised intensities).
    pub fn image(&self) -> Result<Image, DetectError> {
        Ok(Image::new(self.data.clone(), self.shape[..self.ndim].to_vec(), self.channels, *self.geometry.affine(), "float32")?)
    }

    /// Voxels per channel.
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// The mean over channels (the time-mean of a dynamic series).
    pub fn mean_channel(&self) -> Vec<f32> {
        let n = self.voxels();
        (0..n).map(|v| (0..self.channels).map(|c| self.data[c * n + v]).sum::<f32>() / self.channels as f32).collect()
    }

    /// The findings as heatmap targets in voxel units.
    pub fn targets(&self) -> Vec<Target> {
        let g = &self.geometry;
        let sp = g.spacing();
        self.findings
            .iter()
            .map(|f| {
                let c = g.to_voxel(f.centre);
                let d = if f.diameter_mm > 0.0 { f.diameter_mm } else { 10.0 };
                let sigma = std::array::from_fn(|a| if a < self.ndim { (d / sp[a] / 6.0).max(0.7) } else { 1.0 });
                let half = match &f.bbox {
                    Some(b) => {
                        let (lo, hi) = g.world_box_to_voxel(b);
                        std::array::from_fn(|a| if a < self.ndim { 0.5 * (hi[a] - lo[a]) } else { 0.5 })
                    }
                    None => std::array::from_fn(|a| if a < self.ndim { d / sp[a] / 2.0 } else { 0.5 }),
                };
                Target { centre: c, sigma, log_diameter: d.ln() as f32, half }
            })
            .collect()
    }
}

/// A finding in a patch's voxel frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Centre, voxel index.
    pub centre: [f64; 3],
    /// Gaussian standard deviation per axis, voxels.
    pub sigma: [f64; 3],
    /// Natural log of the diameter in millimetres.
    pub log_diameter: f32,
    /// Half the extent of its box per axis, voxels.
    pub half: [f64; 3],
}

/// Heatmap and size targets of a patch.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets {
    /// Gaussian heatmap, 1 exactly at each centre voxel.
    pub heat: Vec<f32>,
    /// Log-diameter at centre voxels.
    pub size: Vec<f32>,
    /// 1 at centre voxels.
    pub size_mask: Vec<f32>,
}

/// Renders targets on a `shape` grid: the maximum of the findings' Gaussians, and the log-diameter at each centre
/// voxel (the rounded centre, when inside).
pub fn render_targets(shape: [usize; 3], targets: &[Target]) -> Targets {
    let n = shape.iter().product();
    let mut heat = vec![0f32; n];
    let mut size = vec![0f32; n];
    let mut size_mask = vec![0f32; n];
    for t in targets {
        let lo: [usize; 3] = std::array::from_fn(|a| (t.centre[a] - 3.0 * t.sigma[a]).floor().max(0.0) as usize);
        let hi: [i64; 3] = std::array::from_fn(|a| ((t.centre[a] + 3.0 * t.sigma[a]).ceil() as i64).min(shape[a] as i64 - 1));
        let peak: [i64; 3] = std::array::from_fn(|a| t.centre[a].round() as i64);
        if hi.iter().any(|&h| h < 0) {
            continue;
        }
        for z in lo[2]..=hi[2] as usize {
            for y in lo[1]..=hi[1] as usize {
                for x in lo[0]..=hi[0] as usize {
                    let idx = [x, y, z];
                    let lin = x + shape[0] * (y + shape[1] * z);
                    let v = if (0..3).all(|a| idx[a] as i64 == peak[a]) {
                        1.0
                    } else {
                        let e: f64 = (0..3).map(|a| ((idx[a] as f64 - t.centre[a]) / t.sigma[a]).powi(2)).sum();
                        (-0.5 * e).exp().min(0.999)
                    };
                    heat[lin] = heat[lin].max(v as f32);
                }
            }
        }
        if (0..3).all(|a| peak[a] >= 0 && peak[a] < shape[a] as i64) {
            let lin = peak[0] as usize + shape[0] * (peak[1] as usize + shape[1] * peak[2] as usize);
            size[lin] = t.log_diameter;
            size_mask[lin] = 1.0;
        }
    }
    Targets { heat, size, size_mask }
}

/// A training image: its scan (whole grid), the bands it must not touch, and where lesions may go.
#[derive(Clone, Debug)]
pub struct TrainImage {
    /// The image and its own findings (outside the bands).
    pub scan: Scan,
    /// Held-out bands.
    pub bands: Vec<Band>,
    /// Where inserted lesions may be centred.
    pub region: Option<Vec<bool>>,
    /// Whether lesions are inserted into it.
    pub insert: bool,
}

/// Whether a patch at `start` of `size` stays clear of every band.
pub fn clear_of(bands: &[Band], start: [usize; 3], size: [usize; 3]) -> bool {
    bands.iter().all(|b| start[b.axis] >= b.end || start[b.axis] + size[b.axis] <= b.start)
}

/// The data of a recipe.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Training images.
    pub train: Vec<TrainImage>,
    /// Validation scans (model selection).
    pub val: Vec<Scan>,
    /// Test scans.
    pub test: Vec<Scan>,
}

/// Maps intensities as the recipe says.
pub fn normalise(spec: &Intensity, data: &[f32]) -> Vec<f32> {
    let (lo, hi) = match spec {
        Intensity::Range([lo, hi]) => (*lo, *hi),
        Intensity::Scheme(_) => {
            let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
            let hi = if v.is_empty() {
                1.0
            } else {
                let k = ((v.len() - 1) as f64 * 0.995).round() as usize;
                *v.select_nth_unstable_by(k, f32::total_cmp).1
            };
            (0.0, if hi > 0.0 { hi } else { 1.0 })
        }
    };
    let s = 1.0 / (hi - lo);
    data.iter().map(|v| if v.is_finite() { (v - lo) * s } else { 0.0 }).collect()
}

fn load_one(path: &std::path::Path, what: &str) -> Result<Image, DetectError> {
    let img = vesalius_io::load(path).map_err(|e| DetectError::Input(format!("{what} {}: {e}", path.display())))?;
    if img.channels() != 1 {
        return Err(DetectError::Input(format!("{}: detection images have one channel, this has {}", path.display(), img.channels())));
    }
    if img.ndim() < 2 {
        return Err(DetectError::Input(format!("{}: detection needs a 2D or 3D image", path.display())));
    }
    Ok(img)
}

/// Largest grid (voxels) an image may be resampled to.
pub const MAX_RESAMPLED_VOXELS: f64 = 268_435_456.0;

/// The image of an entry with its findings (world LPS) and lesion region, resampled to `spacing` when given (the
/// findings are read on the image's own grid first).
pub fn load_entry(entry: &ImageEntry, spacing: Option<&[f64]>) -> Result<(Image, Vec<Detection>, Option<Vec<bool>>), DetectError> {
    let img = load_one(&entry.image, "image")?;
    let id = entry.name();
    let same_grid = |other: &Image, path: &std::path::Path| -> Result<(), DetectError> {
        if other.shape() != img.shape() {
            return Err(DetectError::Input(format!(
                "{}: shape {:?} differs from its image's {:?} ({})",
                path.display(),
                other.shape(),
                img.shape(),
                entry.image.display()
            )));
        }
        Ok(())
    };
    let findings = if let Some(p) = &entry.instances {
        let m = load_one(p, "instances")?;
        same_grid(&m, p)?;
        // Findings take the image's geometry (the label file may lack one, as PNG masks do).
        let m = Image::new(m.data().to_vec(), m.shape().to_vec(), 1, *img.affine(), "float32")?;
        findings_from_instances(&m, &id).map_err(|e| DetectError::Input(format!("{}: {e}", p.display())))?
    } else if let Some(p) = &entry.mask {
        let m = load_one(p, "mask")?;
        same_grid(&m, p)?;
        let m = Image::new(m.data().to_vec(), m.shape().to_vec(), 1, *img.affine(), "float32")?;
        findings_from_mask(&m, &id)?
    } else if let Some(p) = &entry.annotations {
        read_luna_csv(p, Frame::Lps)?.into_iter().filter(|d| d.scan == id).collect()
    } else {
        Vec::new()
    };
    let region = match &entry.region {
        Some(p) => {
            let m = load_one(p, "region")?;
            same_grid(&m, p)?;
            Some(Image::new(m.data().to_vec(), m.shape().to_vec(), 1, *img.affine(), "float32")?)
        }
        None => None,
    };
    let (img, region) = match spacing {
        Some(sp) => {
            // The new grid's size is checked before anything is allocated for it.
            let old = img.spacing();
            let voxels = img.shape().iter().zip(&old).zip(sp).map(|((&n, &o), &s)| (n as f64 * o / s).ceil()).product::<f64>();
            if voxels > MAX_RESAMPLED_VOXELS {
                return Err(DetectError::Input(format!(
                    "{}: resampling to {sp:?} mm would make {voxels:.0} voxels (at most {MAX_RESAMPLED_VOXELS:.0})",
                    entry.image.display()
                )));
            }
            let out = vesalius_io::geometry::resample(&img, sp, vesalius_io::geometry::Interp::Linear)?;
            let region = match region {
                Some(r) => Some(vesalius_io::geometry::resample_onto(&r, out.shape(), out.affine(), true)?),
                None => None,
            };
            (out, region)
        }
        None => (img, region),
    };
    Ok((img, findings, region.map(|r| r.data().iter().map(|&v| v > 0.5).collect())))
}

fn scan_of(id: &str, img: &Image, spec: &Intensity, findings: Vec<Detection>) -> Result<Scan, DetectError> {
    let geometry = Geometry::of(img)?;
    let s = img.shape();
    Ok(Scan {
        id: id.to_string(),
        data: normalise(spec, img.data()),
        channels: img.channels(),
        shape: [s[0], s[1], s.get(2).copied().unwrap_or(1)],
        ndim: img.ndim(),
        geometry,
        findings,
    })
}

/// Crops `img` to `start..start+size` and keeps the findings whose centre lies inside.
fn crop_scan(
    id: String,
    img: &Image,
    findings: &[Detection],
    start: [usize; 3],
    size: [usize; 3],
    spec: &Intensity,
) -> Result<Scan, DetectError> {
    let nd = img.ndim();
    let g = Geometry::of(img)?;
    let st: Vec<i64> = start[..nd].iter().map(|&v| v as i64).collect();
    let crop = vesalius_io::geometry::crop_or_pad(img, &st, &size[..nd], 0.0)?;
    let inside: Vec<Detection> = findings
        .iter()
        .filter(|f| {
            let v = g.to_voxel(f.centre);
            (0..nd).all(|a| v[a].round() >= start[a] as f64 && v[a].round() < (start[a] + size[a]) as f64)
        })
        .map(|f| Detection { scan: id.clone(), ..f.clone() })
        .collect();
    // Normalise with the whole image's statistics, as training saw it.
    let mut scan = scan_of(&id, &crop, spec, inside)?;
    let whole = normalise(spec, img.data());
    let s = crop.shape();
    let full = img.shape();
    let (fx, fy) = (full[0], full[1]);
    let (nf, nc) = (img.voxels(), crop.voxels());
    for c in 0..img.channels() {
        for z in 0..s.get(2).copied().unwrap_or(1) {
            for y in 0..s[1] {
                for x in 0..s[0] {
                    let src = (x + start[0]) + fx * ((y + start[1]) + fy * (z + start[2]));
                    scan.data[c * nc + x + s[0] * (y + s[1] * z)] = whole[c * nf + src];
                }
            }
        }
    }
    Ok(scan)
}

/// The scans of a band of `img`, cut into tiles of `tile` voxels along the other in-plane axis (0: one scan).
fn band_scans(
    id: &str,
    img: &Image,
    findings: &[Detection],
    band: Band,
    tile: usize,
    spec: &Intensity,
    tag: &str,
) -> Result<Vec<Scan>, DetectError> {
    let s = img.shape();
    let shape = [s[0], s[1], s.get(2).copied().unwrap_or(1)];
    if band.end > shape[band.axis] {
        return Err(DetectError::Input(format!(
            "{tag} band {}..{} beyond axis {} of {id} ({} voxels)",
            band.start, band.end, band.axis, shape[band.axis]
        )));
    }
    let other = if band.axis == 0 { 1 } else { 0 };
    let step = if tile == 0 { shape[other] } else { tile.min(shape[other]) };
    let mut out = Vec::new();
    let mut k = 0;
    while k < shape[other] {
        let mut start = [0usize; 3];
        let mut size = shape;
        start[band.axis] = band.start;
        size[band.axis] = band.end - band.start;
        start[other] = k;
        size[other] = step.min(shape[other] - k);
        let name = if tile == 0 { format!("{id}:{tag}") } else { format!("{id}:{tag}:{}", out.len()) };
        out.push(crop_scan(name, img, findings, start, size, spec)?);
        k += step;
    }
    Ok(out)
}

/// The lesion spec of an `[insert]` section with `count` lesions.
pub fn lesion_spec(i: &InsertSection, count: usize) -> LesionSpec {
    LesionSpec { count, diameter_mm: i.diameter_mm, contrast: i.contrast, elongation: i.elongation }
}

/// Inserts lesions into `img` (seeded) and returns the new image with the lesions as findings of `id`.
pub fn with_lesions(
    img: &Image,
    region: Option<&[bool]>,
    spec: &LesionSpec,
    seed: u64,
    id: &str,
) -> Result<(Image, Vec<Detection>), DetectError> {
    let (out, lesions) = insert_lesions(img, region, spec, seed).map_err(|e| DetectError::Input(format!("{id}: {e}")))?;
    let g = Geometry::of(img)?;
    let f = lesions.iter().map(|l| Detection::finding(id, g.to_world(l.centre), l.diameter_mm)).collect();
    Ok((out, f))
}

/// Lesions as the recipe makes them: inserted into the image, or a dynamic series whose wash-in lesions are the
/// findings (the time-mean image for networks that do not read frames).
fn lesions_for(
    recipe: &DetRecipe,
    img: &Image,
    region: Option<&[bool]>,
    spec: &LesionSpec,
    seed: u64,
    id: &str,
) -> Result<(Image, Vec<Detection>), DetectError> {
    let Some(dy) = &recipe.dynamic else {
        return with_lesions(img, region, spec, seed, id);
    };
    let (series, wash_in, _) =
        dynamic_series(img, region, spec, dy.distractors, dy.frames, seed).map_err(|e| DetectError::Input(format!("{id}: {e}")))?;
    let g = Geometry::of(img)?;
    let found = wash_in.iter().map(|l| Detection::finding(id, g.to_world(l.centre), l.diameter_mm)).collect();
    if recipe.model.arch == crate::recipe::Arch::Crnn {
        return Ok((series, found));
    }
    let n = series.voxels();
    let mean: Vec<f32> =
        (0..n).map(|v| (0..series.channels()).map(|c| series.data()[c * n + v]).sum::<f32>() / series.channels() as f32).collect();
    Ok((Image::new(mean, series.shape().to_vec(), 1, *series.affine(), "float32")?, found))
}

/// Loads every image of a recipe and makes the training images, validation scans and test scans.
pub fn prepare(recipe: &DetRecipe) -> Result<Prepared, DetectError> {
    let d = &recipe.data;
    let spec = &d.intensity;
    let nd = recipe.dims();
    let bands: Vec<Band> = [d.val_band, d.test_band].into_iter().flatten().collect();
    let mut train = Vec::new();
    let mut val = Vec::new();
    let mut test = Vec::new();
    let spacing = d.spacing.as_deref();
    let eval_lesions = |img: Image,
                        findings: Vec<Detection>,
                        region: Option<Vec<bool>>,
                        e: &ImageEntry,
                        salt: u64|
     -> Result<(Image, Vec<Detection>), DetectError> {
        let id = &e.name();
        match &recipe.insert {
            Some(ins) if e.count.unwrap_or(ins.eval_count) > 0 && e.insert => {
                let seed = vesalius_io::mix(recipe.seed ^ vesalius_io::mix(salt));
                let count = e.count.unwrap_or(ins.eval_count);
                let (out, mut inserted) = lesions_for(recipe, &img, region.as_deref(), &lesion_spec(ins, count), seed, id)?;
                inserted.extend(findings);
                Ok((out, inserted))
            }
            _ => Ok((img, findings)),
        }
    };
    for (i, e) in d.images.iter().enumerate() {
        let (img, findings, region) = load_entry(e, spacing)?;
        if img.ndim() != nd {
            return Err(DetectError::Input(format!("{}: a {}D image for a {nd}D detector", e.image.display(), img.ndim())));
        }
        let id = e.name();
        let g = Geometry::of(&img)?;
        // Band scans: lesions inserted for evaluation are drawn once, on the whole image, and kept where they fall.
        if !bands.is_empty() {
            let (eimg, efind) = eval_lesions(img.clone(), findings.clone(), region.clone(), e, 1000 + i as u64)?;
            if let Some(b) = d.val_band {
                val.extend(band_scans(&id, &eimg, &efind, b, d.test_tile, spec, "val")?);
            }
            if let Some(b) = d.test_band {
                test.extend(band_scans(&id, &eimg, &efind, b, d.test_tile, spec, "test")?);
            }
        }
        // Training keeps findings whose centre is outside every band.
        let own: Vec<Detection> = findings
            .into_iter()
            .filter(|f| {
                let v = g.to_voxel(f.centre);
                bands.iter().all(|b| {
                    let c = v[b.axis].round();
                    c < b.start as f64 || c >= b.end as f64
                })
            })
            .collect();
        let scan = scan_of(&id, &img, spec, own)?;
        let patch: Vec<usize> = recipe.train.patch.clone();
        if (0..nd).any(|a| scan.shape[a] < patch[a]) {
            return Err(DetectError::Input(format!("{}: shape {:?} is smaller than the patch {patch:?}", e.image.display(), img.shape())));
        }
        train.push(TrainImage { scan, bands: bands.clone(), region, insert: e.insert });
    }
    for (set, entries, salt) in [(&mut val, &d.val, 2000u64), (&mut test, &d.test, 3000u64)] {
        for (i, e) in entries.iter().enumerate() {
            let (img, findings, region) = load_entry(e, spacing)?;
            if img.ndim() != nd {
                return Err(DetectError::Input(format!("{}: a {}D image for a {nd}D detector", e.image.display(), img.ndim())));
            }
            let id = e.name();
            let (img, findings) = eval_lesions(img, findings, region, e, salt + i as u64)?;
            let findings = findings.into_iter().map(|f| Detection { scan: id.clone(), ..f }).collect();
            set.push(scan_of(&id, &img, spec, findings)?);
        }
    }
    if val.is_empty() || test.is_empty() {
        return Err(DetectError::Input("the validation and test sets both need at least one scan".into()));
    }
    Ok(Prepared { train, val, test })
}

/// How a patch is augmented: mirrored axes and, for equal in-plane sizes, a transposition of the first two axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Augment {
    /// Mirror along each axis.
    pub flip: [bool; 3],
    /// Swap axes 0 and 1 (after flipping).
    pub transpose: bool,
}

impl Augment {
    /// A random augmentation of a patch of `size` in `nd` dimensions.
    pub fn draw(rng: &mut ChaCha8Rng, size: [usize; 3], nd: usize) -> Self {
        let flip = std::array::from_fn(|a| a < nd && rng.random_bool(0.5));
        let transpose = size[0] == size[1] && rng.random_bool(0.5);
        Self { flip, transpose }
    }

    /// Where voxel `idx` of the source patch goes.
    pub fn point(&self, p: [f64; 3], size: [usize; 3]) -> [f64; 3] {
        let mut q = std::array::from_fn(|a| if self.flip[a] { (size[a] - 1) as f64 - p[a] } else { p[a] });
        if self.transpose {
            q.swap(0, 1);
        }
        q
    }

    /// The augmented copy of a patch of several channels (each `size` voxels, one after the other).
    pub fn channels(&self, v: &[f32], size: [usize; 3]) -> Vec<f32> {
        let n: usize = size.iter().product();
        v.chunks(n.max(1)).flat_map(|c| self.values(c, size)).collect()
    }

    /// The augmented copy of a patch's values.
    pub fn values(&self, v: &[f32], size: [usize; 3]) -> Vec<f32> {
        let mut out = vec![0f32; v.len()];
        let out_size = if self.transpose { [size[1], size[0], size[2]] } else { size };
        for z in 0..size[2] {
            for y in 0..size[1] {
                for x in 0..size[0] {
                    let q = self.point([x as f64, y as f64, z as f64], size).map(|c| c as usize);
                    out[q[0] + out_size[0] * (q[1] + out_size[1] * q[2])] = v[x + size[0] * (y + size[1] * z)];
                }
            }
        }
        out
    }

    /// The augmented target.
    pub fn target(&self, t: &Target, size: [usize; 3]) -> Target {
        let (mut sigma, mut half) = (t.sigma, t.half);
        if self.transpose {
            sigma.swap(0, 1);
            half.swap(0, 1);
        }
        Target { centre: self.point(t.centre, size), sigma, log_diameter: t.log_diameter, half }
    }
}

/// Intensity augmentation of a patch: scale `1 ± jitter`, shift `± jitter / 2`, Gaussian noise of standard deviation
/// up to `jitter / 4`, all drawn from `rng` (nothing when `jitter` is 0).
pub fn jitter_intensity(values: &mut [f32], jitter: f64, rng: &mut ChaCha8Rng) {
    if jitter <= 0.0 {
        return;
    }
    use rand_distr::{Distribution, StandardNormal};
    let scale = 1.0 + rng.random_range(-jitter..=jitter);
    let shift = rng.random_range(-jitter / 2.0..=jitter / 2.0);
    let sigma = rng.random_range(0.0..=jitter / 4.0);
    for v in values.iter_mut() {
        let z: f64 = StandardNormal.sample(rng);
        *v = (*v as f64 * scale + shift + sigma * z) as f32;
    }
}

/// Cuts a patch of `size` at `start` out of a scan: its values and the targets of the findings (moved into the
/// patch frame).
pub fn cut(scan: &Scan, targets: &[Target], start: [usize; 3], size: [usize; 3]) -> (Vec<f32>, Vec<Target>) {
    let mut v = Vec::with_capacity(size.iter().product::<usize>() * scan.channels);
    let s = scan.shape;
    let n = scan.voxels();
    for c in 0..scan.channels {
        for z in 0..size[2] {
            for y in 0..size[1] {
                let row = c * n + start[0] + s[0] * ((y + start[1]) + s[1] * (z + start[2]));
                v.extend_from_slice(&scan.data[row..row + size[0]]);
            }
        }
    }
    let t = targets
        .iter()
        .filter(|t| {
            (0..3)
                .all(|a| t.centre[a] + 3.0 * t.sigma[a] >= start[a] as f64 && t.centre[a] - 3.0 * t.sigma[a] < (start[a] + size[a]) as f64)
        })
        .map(|t| Target { centre: std::array::from_fn(|a| t.centre[a] - start[a] as f64), ..*t })
        .collect();
    (v, t)
}

/// A random start for a patch of `size` in an image of `shape` that avoids `bands`: centred near `around` (voxels,
/// with a random offset within the patch) when given. `None` after 100 tries.
pub fn patch_start(
    shape: [usize; 3],
    bands: &[Band],
    size: [usize; 3],
    around: Option<[f64; 3]>,
    rng: &mut ChaCha8Rng,
) -> Option<[usize; 3]> {
    let s = shape;
    for _ in 0..100 {
        let start: [usize; 3] = std::array::from_fn(|a| {
            let max = s[a] - size[a];
            match around {
                Some(c) => {
                    let off = rng.random_range(0.15..0.85) * size[a] as f64;
                    ((c[a] - off).round().max(0.0) as usize).min(max)
                }
                None => rng.random_range(0..=max),
            }
        });
        if clear_of(bands, start, size) {
            return Some(start);
        }
    }
    None
}

/// The seed of a training image's lesion draw in an epoch.
pub fn insertion_seed(seed: u64, epoch: usize, image: usize) -> u64 {
    vesalius_io::mix(seed ^ vesalius_io::mix(((epoch as u64) << 20) ^ image as u64 ^ 0x1e51))
}

/// A training image with a fresh lesion draw (its own findings kept).
pub fn training_draw(img: &TrainImage, recipe: &DetRecipe, ins: &InsertSection, seed: u64) -> Result<Scan, DetectError> {
    let image = img.scan.image()?;
    // Lesions go where training patches can reach: centres outside the bands by at least the largest radius.
    let region = if img.bands.is_empty() {
        img.region.clone()
    } else {
        let [nx, ny, _] = img.scan.shape;
        let sp = img.scan.geometry.spacing();
        let n = img.scan.voxels();
        let inside = |v: usize| {
            let idx = [v % nx, v / nx % ny, v / (nx * ny)];
            img.bands.iter().all(|b| {
                let margin = (ins.diameter_mm[1] / 2.0 / sp[b.axis]).ceil() as usize;
                idx[b.axis] + margin < b.start || idx[b.axis] >= b.end + margin
            })
        };
        let median = {
            let mut v: Vec<f32> = img.scan.data[..n].to_vec();
            let k = v.len() / 2;
            *v.select_nth_unstable_by(k, f32::total_cmp).1
        };
        Some((0..n).map(|v| inside(v) && img.region.as_ref().map_or(img.scan.data[v] > median, |r| r[v])).collect::<Vec<bool>>())
    };
    let (out, mut found) = lesions_for(recipe, &image, region.as_deref(), &lesion_spec(ins, ins.count), seed, &img.scan.id)?;
    // The bands stay free of inserted training lesions: drop those centred in a band (their pixels are never cut).
    let g = &img.scan.geometry;
    found.retain(|f| {
        let v = g.to_voxel(f.centre);
        img.bands.iter().all(|b| {
            let c = v[b.axis].round();
            c < b.start as f64 || c >= b.end as f64
        })
    });
    found.extend(img.scan.findings.iter().cloned());
    Ok(Scan { channels: out.channels(), data: out.into_data(), findings: found, ..img.scan.clone() })
}

/// A seeded generator for a training epoch.
pub fn epoch_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentation_moves_findings_with_the_image() {
        // A bright voxel at a finding's centre must stay under the heatmap's peak after any augmentation.
        let size = [8, 8, 3];
        let mut v = vec![0f32; 8 * 8 * 3];
        let c = [2.0, 5.0, 1.0];
        v[2 + 8 * (5 + 8)] = 1.0;
        let t = Target { centre: c, sigma: [1.0; 3], log_diameter: 1.0, half: [1.0; 3] };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let aug = Augment::draw(&mut rng, size, 3);
            seen.insert(aug);
            let img = aug.values(&v, size);
            let heat = render_targets(size, &[aug.target(&t, size)]).heat;
            let bright = img.iter().position(|&x| x == 1.0).unwrap();
            let peak = heat.iter().position(|&x| x == 1.0).unwrap();
            assert_eq!(bright, peak, "{aug:?}");
        }
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn patches_avoid_the_bands() {
        let bands = [Band { axis: 1, start: 30, end: 45 }];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let s = patch_start([100, 60, 1], &bands, [16, 16, 1], None, &mut rng).unwrap();
            assert!(s[1] + 16 <= 30 || s[1] >= 45, "{s:?}");
        }
        // Centred near a point next to the band: still clear of it.
        for _ in 0..50 {
            if let Some(s) = patch_start([100, 60, 1], &bands, [16, 16, 1], Some([50.0, 27.0, 0.0]), &mut rng) {
                assert!(s[1] + 16 <= 30);
            }
        }
    }
}
