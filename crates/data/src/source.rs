//! Where labelled samples come from: a CSV manifest, a folder of class sub-folders, a MedMNIST archive, or 2D
//! patches cut from a labelled volume.
//!
//! Every source yields [`Samples`]: fixed-size, channel-planar pixel arrays with their labels, optional patient
//! ids and optional preassigned splits, plus the class names.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{DataError, Image, Result};
use vesalius_io::{self as io, npz};

/// Ground truth of one sample.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Label {
    /// Index of the one true class.
    Class(usize),
    /// One 0/1 flag per label.
    Multi(Vec<u8>),
}

/// Subsets of a dataset; a patient belongs to exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used to fit the model.
    Train,
    /// Used to select the model (best epoch, early stopping).
    Val,
    /// Never seen in training or selection; used only for the final report.
    Test,
}

impl Split {
    /// Parses `train`, `val`/`valid`/`validation` or `test`.
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" => Some(Split::Val),
            "test" | "testing" => Some(Split::Test),
            _ => None,
        }
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Pixel values of one sample, channel-planar `[c, size, size]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 8-bit values; divided by 255 when batched.
    U8(Vec<u8>),
    /// Values already scaled to about `[0, 1]`.
    F32(Vec<f32>),
}

impl Pixels {
    /// Values as `f32` in about `[0, 1]`.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Pixels::U8(v) => v.iter().map(|&b| b as f32 / 255.0).collect(),
            Pixels::F32(v) => v.clone(),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The most classes (or labels, for multi-label tasks) a source may declare. Label values are checked against it
/// before anything is sized from them.
pub use vesalius_io::npz::MAX_CLASSES;

/// One labelled image.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// A name for reports: the file path, or `archive:split:index`, or the patch position.
    pub id: String,
    /// Patient the image belongs to, when known; splits never separate a patient's images.
    pub patient: Option<String>,
    /// Split fixed by the source (manifest column, MedMNIST array, slab), if any.
    pub split: Option<Split>,
    /// Ground truth.
    pub label: Label,
    /// Pixels, `[channels, size, size]`.
    pub pixels: Pixels,
}

/// A loaded source: samples of one shape and the names of their classes or labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// All samples.
    pub samples: Vec<Sample>,
    /// Class names (single-label) or label names (multi-label), in index order.
    pub classes: Vec<String>,
    /// Whether each sample carries several 0/1 labels.
    pub multi_label: bool,
    /// Channels of every sample.
    pub channels: usize,
    /// Side of every (square) sample.
    pub size: usize,
}

impl Samples {
    /// Samples assigned to `split`.
    pub fn of_split(&self, split: Split) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.split == Some(split))
    }
}

/// Patches cut from a labelled volume, for tissue classification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePatchesConfig {
    /// The intensity volume (NIfTI).
    pub image: PathBuf,
    /// Label volume on the same grid: class of each voxel.
    pub labels: PathBuf,
    /// Optional mask on the same grid: voxels outside it are class 0 and labels inside are shifted by one.
    #[serde(default)]
    pub mask: Option<PathBuf>,
    /// Class names, in index order.
    pub classes: Vec<String>,
    /// Patch side in voxels; a patch's class is the class of its centre voxel.
    pub patch: usize,
    /// Slices (along the third voxel axis) of each split, as half-open ranges `[start, end)`.
    pub slabs: BTreeMap<Split, [usize; 2]>,
    /// Patches drawn per class and per slice range, for train; validation and test take a third of it unless
    /// `eval_per_class` is set.
    pub per_class: usize,
    /// Patches per class for validation and test (a small labelled training set evaluated on enough patches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_per_class: Option<usize>,
    /// Seed of the patch positions.
    #[serde(default)]
    pub seed: u64,
}

/// The configuration of a source, as written in a recipe's `[data]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// CSV with a header and columns `path,label[,patient_id][,split]`; paths relative to the CSV's folder.
    /// Multi-label rows list their labels separated by `;`.
    Csv {
        /// The manifest.
        path: PathBuf,
        /// Whether labels are `;`-separated sets rather than one class.
        #[serde(default)]
        multi_label: bool,
    },
    /// `path/<class>/*.png…`, or `path/{train,val,test}/<class>/…` to fix the splits.
    Folder {
        /// The root folder.
        path: PathBuf,
    },
    /// A MedMNIST `.npz` archive with its train/val/test arrays.
    Medmnist {
        /// The archive.
        path: PathBuf,
    },
    /// 2D patches from a labelled volume.
    VolumePatches(VolumePatchesConfig),
}

impl SourceConfig {
    /// Resolves relative paths against `base` (the recipe's folder).
    pub fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match self {
            SourceConfig::Csv { path, .. } | SourceConfig::Folder { path } | SourceConfig::Medmnist { path } => fix(path),
            SourceConfig::VolumePatches(v) => {
                fix(&mut v.image);
                fix(&mut v.labels);
                if let Some(m) = &mut v.mask {
                    fix(m);
                }
            }
        }
    }
}

/// Loads a source into memory; 2D files are converted to `channels` channels and resized to `size`².
pub fn load(config: &SourceConfig, channels: usize, size: usize) -> Result<Samples> {
    match config {
        SourceConfig::Csv { path, multi_label } => load_csv(path, *multi_label, channels, size),
        SourceConfig::Folder { path } => load_folder(path, channels, size),
        SourceConfig::Medmnist { path } => load_medmnist(path),
        SourceConfig::VolumePatches(v) => load_volume_patches(v),
    }
}

/// Converts a 2D image to `channels` channels (grey replicated, RGB averaged) and `size`² pixels (bilinear, half-pixel
/// centres), with values scaled to `[0, 1]` by the stored type's range (min–max for floating-point images).
pub fn prepare_2d(img: &Image, channels: usize, size: usize, path: &Path) -> Result<Vec<f32>> {
    let shape = img.shape();
    let (w, h) = match shape {
        [w, h] => (*w, *h),
        [w, h, 1] => (*w, *h),
        _ => return Err(DataError::format(path, format!("expected a 2D image, found shape {shape:?}"))),
    };
    if w == 0 || h == 0 || size == 0 {
        return Err(DataError::format(path, format!("empty image ({w}×{h}) or output size {size}")));
    }
    let (lo, hi) = match img.dtype() {
        "uint8" => (0.0, 255.0),
        "uint16" => (0.0, stored_range_u16(img.min_max().1)),
        _ => img.min_max(),
    };
    let scale = if hi > lo { 1.0 / (hi - lo) } else { 1.0 };
    let src: Vec<Vec<f32>> = match (img.channels(), channels) {
        (a, b) if a == b => (0..a).map(|c| img.channel(c).to_vec()).collect(),
        (1, n) => vec![img.channel(0).to_vec(); n],
        (3, 1) => vec![(0..img.voxels()).map(|i| (img.channel(0)[i] + img.channel(1)[i] + img.channel(2)[i]) / 3.0).collect()],
        (a, b) => return Err(DataError::format(path, format!("cannot convert {a} channels to {b}"))),
    };
    let mut out = Vec::with_capacity(channels * size * size);
    for plane in &src {
        for y in 0..size {
            let fy = ((y as f32 + 0.5) * h as f32 / size as f32 - 0.5).clamp(0.0, (h - 1) as f32);
            let y0 = fy.floor() as usize;
            let y1 = (y0 + 1).min(h - 1);
            let ty = fy - y0 as f32;
            for x in 0..size {
                let fx = ((x as f32 + 0.5) * w as f32 / size as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                let x0 = fx.floor() as usize;
                let x1 = (x0 + 1).min(w - 1);
                let tx = fx - x0 as f32;
                let v = (1.0 - ty) * ((1.0 - tx) * plane[y0 * w + x0] + tx * plane[y0 * w + x1])
                    + ty * ((1.0 - tx) * plane[y1 * w + x0] + tx * plane[y1 * w + x1]);
                out.push((v - lo) * scale);
            }
        }
    }
    Ok(out)
}

/// The full-scale value of a 16-bit image whose largest value is `max`: `2^b − 1` for the smallest usual stored
/// bit depth `b` of 8, 10, 12, 14 or 16 that holds it. 12-bit CT, MR and CR images kept in 16-bit files (PNG, TIFF,
/// DICOM) then span [0, 1] like 8-bit ones instead of [0, 0.06], and every 12-bit image of a data set is scaled
/// alike (whatever its own maximum, as long as it is above 1023).
pub fn stored_range_u16(max: f32) -> f32 {
    let bits = [8u32, 10, 12, 14, 16].into_iter().find(|&b| max <= ((1u32 << b) - 1) as f32).unwrap_or(16);
    ((1u32 << bits) - 1) as f32
}

/// Class names and indices: numeric order when every name is an integer, else sorted names.
fn index_classes(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut set: Vec<String> = names.collect();
    set.sort();
    set.dedup();
    if set.iter().all(|s| s.parse::<i64>().is_ok()) {
        set.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    }
    set
}

/// One row of a manifest as written: the image path (relative to the manifest's folder, or absolute), the label
/// (`;`-separated for label sets), and the `patient_id` and `split` columns (empty when absent).
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestRow {
    /// The image path.
    pub path: String,
    /// The label.
    pub label: String,
    /// The patient, or empty.
    pub patient: String,
    /// The split name, or empty.
    pub split: String,
}

/// The rows of a manifest (`path,label[,patient_id][,split]`, any column order, header names case-insensitive);
/// errors name the file and the row.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestRow>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| DataError::format(path, format!("cannot read CSV: {e}")))?;
    let headers = reader.headers().map_err(|e| DataError::format(path, format!("cannot read CSV header: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let path_col = col("path").ok_or_else(|| DataError::format(path, "CSV header has no 'path' column"))?;
    let label_col = col("label").ok_or_else(|| DataError::format(path, "CSV header has no 'label' column"))?;
    let (patient_col, split_col) = (col("patient_id"), col("split"));
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| DataError::format(path, format!("row {}: {e}", i + 2)))?;
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_string();
        rows.push(ManifestRow { path: get(Some(path_col)), label: get(Some(label_col)), patient: get(patient_col), split: get(split_col) });
    }
    Ok(rows)
}

/// A value as a CSV field: quoted (with inner quotes doubled) when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn load_csv(path: &Path, multi_label: bool, channels: usize, size: usize) -> Result<Samples> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (i, row) in read_manifest(path)?.into_iter().enumerate() {
        let split = match row.split.as_str() {
            "" => None,
            s => Some(Split::parse(s).ok_or_else(|| DataError::format(path, format!("row {}: unknown split '{s}'", i + 2)))?),
        };
        if row.path.is_empty() {
            return Err(DataError::format(path, format!("row {}: empty path", i + 2)));
        }
        rows.push((row.path, row.label, Some(row.patient).filter(|p| !p.is_empty()), split));
    }
    if rows.is_empty() {
        return Err(DataError::format(path, "manifest lists no images"));
    }
    let split_names = |l: &str| l.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>();
    let classes = if multi_label {
        index_classes(rows.iter().flat_map(|r| split_names(&r.1)))
    } else {
        index_classes(rows.iter().map(|r| r.1.clone()))
    };
    if classes.len() > MAX_CLASSES {
        return Err(DataError::format(
            path,
            format!("the manifest names {} distinct labels; at most {MAX_CLASSES} are supported", classes.len()),
        ));
    }
    if let Some((i, _)) = rows.iter().enumerate().find(|(_, r)| !multi_label && r.1.is_empty()) {
        return Err(DataError::format(path, format!("row {}: empty label", i + 2)));
    }
    let mut samples = Vec::with_capacity(rows.len());
    for (file, label, patient, split) in rows {
        let file_path = base.join(&file);
        let img = io::load(&file_path)?;
        let pixels = prepare_2d(&img, channels, size, &file_path)?;
        let label = if multi_label {
            let names = split_names(&label);
            Label::Multi(classes.iter().map(|c| u8::from(names.contains(c))).collect())
        } else {
            Label::Class(classes.iter().position(|c| *c == label).expect("class indexed"))
        };
        samples.push(Sample { id: file, patient, split, label, pixels: Pixels::F32(pixels) });
    }
    Ok(Samples { samples, classes, multi_label, channels, size })
}

fn is_image_file(p: &Path) -> bool {
    io::Format::from_path(p).is_some_and(|f| f != io::Format::NiftiPair || p.to_string_lossy().to_ascii_lowercase().contains(".hdr"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    v.sort();
    Ok(v)
}

fn load_folder(root: &Path, channels: usize, size: usize) -> Result<Samples> {
    let top = sorted_entries(root)?;
    let split_dirs: Vec<(Split, PathBuf)> =
        top.iter().filter(|p| p.is_dir()).filter_map(|p| Split::parse(&p.file_name()?.to_string_lossy()).map(|s| (s, p.clone()))).collect();
    let roots: Vec<(Option<Split>, PathBuf)> =
        if split_dirs.is_empty() { vec![(None, root.to_path_buf())] } else { split_dirs.into_iter().map(|(s, p)| (Some(s), p)).collect() };
    let mut listed = Vec::new();
    for (split, dir) in &roots {
        for class_dir in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
            let class = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for file in sorted_entries(&class_dir)?.into_iter().filter(|p| p.is_file() && is_image_file(p)) {
                listed.push((*split, class.clone(), file));
            }
        }
    }
    if listed.is_empty() {
        return Err(DataError::format(root, "no images found in class sub-folders"));
    }
    let classes = index_classes(listed.iter().map(|l| l.1.clone()));
    let mut samples = Vec::with_capacity(listed.len());
    for (split, class, file) in listed {
        let img = io::load(&file)?;
        let pixels = prepare_2d(&img, channels, size, &file)?;
        let id = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().into_owned();
        let label = Label::Class(classes.iter().position(|c| *c == class).expect("class indexed"));
        samples.push(Sample { id, patient: None, split, label, pixels: Pixels::F32(pixels) });
    }
    Ok(Samples { samples, classes, multi_label: false, channels, size })
}

fn load_medmnist(path: &Path) -> Result<Samples> {
    let mut samples = Vec::new();
    let mut shape = None;
    let mut max_class = 0usize;
    for split in [Split::Train, Split::Val, Split::Test] {
        let part = npz::read_medmnist(path, split.name())?;
        let this = (part.channels, part.size, part.labels_per_image);
        if *shape.get_or_insert(this) != this {
            return Err(DataError::format(path, format!("{} arrays differ in shape from train", split.name())));
        }
        let per = part.channels * part.size * part.size;
        for i in 0..part.n {
            let labels = &part.labels[i * part.labels_per_image..(i + 1) * part.labels_per_image];
            let label = if part.labels_per_image == 1 {
                max_class = max_class.max(labels[0] as usize);
                Label::Class(labels[0] as usize)
            } else {
                Label::Multi(labels.iter().map(|&v| u8::from(v != 0)).collect())
            };
            samples.push(Sample {
                id: format!("{}:{}:{i}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), split.name()),
                patient: None,
                split: Some(split),
                label,
                pixels: Pixels::U8(part.images[i * per..(i + 1) * per].to_vec()),
            });
        }
    }
    let (channels, size, labels_per_image) = shape.expect("three splits read");
    let multi_label = labels_per_image > 1;
    let n_classes = if multi_label { labels_per_image } else { (max_class + 1).max(2) };
    let classes = (0..n_classes).map(|c| c.to_string()).collect();
    Ok(Samples { samples, classes, multi_label, channels, size })
}

fn load_volume_patches(cfg: &VolumePatchesConfig) -> Result<Samples> {
    let image = io::load(&cfg.image)?;
    let labels = io::load(&cfg.labels)?;
    let mask = cfg.mask.as_ref().map(io::load).transpose()?;
    if image.ndim() != 3 || labels.shape() != image.shape() || mask.as_ref().is_some_and(|m| m.shape() != image.shape()) {
        return Err(DataError::format(&cfg.labels, format!("label/mask grid differs from the image grid {:?}", image.shape())));
    }
    let [nx, ny, nz] = [image.shape()[0], image.shape()[1], image.shape()[2]];
    let p = cfg.patch;
    if p == 0 || p > nx || p > ny {
        return Err(DataError::Invalid(format!("patch size {p} does not fit slices of {nx}×{ny}")));
    }
    let k = cfg.classes.len();
    let class_at = |i: usize| -> Option<usize> {
        let l = labels.data()[i].round() as i64;
        let c = match &mask {
            Some(m) if m.data()[i] <= 0.0 => 0,
            Some(_) => l + 1,
            None => l,
        };
        usize::try_from(c).ok().filter(|&c| c < k)
    };
    let (lo, hi) = image.min_max();
    let scale = if hi > lo { 1.0 / (hi - lo) } else { 1.0 };
    let half = p / 2;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let ranges: Vec<[usize; 2]> = cfg.slabs.values().copied().collect();
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let gap = if a[1] <= b[0] { b[0] - a[1] } else { a[0].saturating_sub(b[1]) };
            if gap < p {
                return Err(DataError::Invalid(format!(
                    "slabs {a:?} and {b:?} are {gap} slices apart; they must be at least the patch size ({p}) apart"
                )));
            }
        }
    }
    let mut samples = Vec::new();
    for (&split, &[z0, z1]) in &cfg.slabs {
        if z0 >= z1 || z1 > nz {
            return Err(DataError::Invalid(format!("slab {:?} [{z0}, {z1}) is outside 0..{nz}", split.name())));
        }
        // Every candidate centre in the slab whose patch lies inside the slice, grouped by class.
        let mut by_class: Vec<Vec<[usize; 3]>> = vec![Vec::new(); k];
        for z in z0..z1 {
            for y in half..=ny - (p - half) {
                for x in half..=nx - (p - half) {
                    if let Some(c) = class_at(x + nx * (y + ny * z)) {
                        by_class[c].push([x, y, z]);
                    }
                }
            }
        }
        let want = if split == Split::Train { cfg.per_class } else { cfg.eval_per_class.unwrap_or(cfg.per_class.div_ceil(3)) };
        for (c, centres) in by_class.iter_mut().enumerate() {
            centres.shuffle(&mut rng);
            for &[x, y, z] in centres.iter().take(want) {
                let mut pix = Vec::with_capacity(p * p);
                for yy in y - half..y - half + p {
                    for xx in x - half..x - half + p {
                        pix.push((image.data()[xx + nx * (yy + ny * z)] - lo) * scale);
                    }
                }
                samples.push(Sample {
                    id: format!("x{x}_y{y}_z{z}"),
                    patient: Some(format!("slab-{}", split.name())),
                    split: Some(split),
                    label: Label::Class(c),
                    pixels: Pixels::F32(pix),
                });
            }
        }
    }
    Ok(Samples { samples, classes: cfg.classes.clone(), multi_label: false, channels: 1, size: p })
}
