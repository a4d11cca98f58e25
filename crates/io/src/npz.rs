//! NumPy `.npy` arrays and `.npz` archives, as MedMNIST distributes its datasets.
//!
//! A MedMNIST archive holds `train_images`, `train_labels`, `val_images`, `val_labels`, `test_images` and
//! `test_labels`. Images are `uint8` of shape `(N, S, S)` (grey) or `(N, S, S, 3)` (RGB) with `S` in 28, 64, 128
//! or 224; labels are integers of shape `(N, 1)` (one class) or `(N, L)` (multi-label 0/1 flags, as ChestMNIST).
//! Every declared shape is checked against the bytes of the entry before anything is allocated.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::{DataError, Result};

/// The most classes (or labels, for multi-label archives) a label array may declare; label values are checked
/// against it before anything is sized from them.
pub const MAX_CLASSES: usize = 1000;

/// Element types of the arrays this reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `|u1`
    U8,
    /// `<i8` or `<u8` (little-endian 64-bit integers)
    I64,
    /// `<i4`
    I32,
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        Some(match descr {
            "|u1" | "<u1" | "u1" | "|b1" => Dtype::U8,
            "<i8" | "<u8" => Dtype::I64,
            "<i4" | "<u4" => Dtype::I32,
            "<f4" => Dtype::F32,
            "<f8" => Dtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }
}

/// A decoded array: its shape (C order) and raw little-endian element bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Shape, slowest axis first.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: Dtype,
    /// Raw element bytes in C order.
    pub bytes: Vec<u8>,
}

impl NpyArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` (C order) as `f64`.
    pub fn get_f64(&self, i: usize) -> f64 {
        let s = self.dtype.size();
        let b = &self.bytes[i * s..(i + 1) * s];
        match self.dtype {
            Dtype::U8 => b[0] as f64,
            Dtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            Dtype::I64 => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64,
            Dtype::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Parses one `.npy` stream of `len` bytes (`what` names it in errors).
pub fn read_npy(mut r: impl Read, len: u64, what: &str) -> std::result::Result<NpyArray, String> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| format!("{what}: truncated .npy header ({e})"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(format!("{what}: not a .npy array (bad magic)"));
    }
    let header_len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| format!("{what}: truncated .npy header ({e})"))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| format!("{what}: truncated .npy header ({e})"))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!("{what}: unsupported .npy version {v}")),
    };
    let prefix = 8 + if magic[6] == 1 { 2 } else { 4 };
    if header_len as u64 + prefix as u64 > len || header_len > 1 << 20 {
        return Err(format!("{what}: .npy header length {header_len} exceeds the entry"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(|e| format!("{what}: truncated .npy header ({e})"))?;
    let header = String::from_utf8_lossy(&header);
    let descr = dict_value(&header, "descr").ok_or_else(|| format!("{what}: .npy header has no 'descr'"))?;
    let descr = quoted(descr).ok_or_else(|| format!("{what}: malformed 'descr' in .npy header"))?;
    let dtype = Dtype::parse(descr).ok_or_else(|| format!("{what}: unsupported element type '{descr}'"))?;
    if dict_value(&header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(format!("{what}: Fortran-ordered arrays are not supported"));
    }
    let shape_txt = dict_value(&header, "shape").ok_or_else(|| format!("{what}: .npy header has no 'shape'"))?;
    let inner = shape_txt.trim().trim_start_matches('(');
    let inner = &inner[..inner.find(')').ok_or_else(|| format!("{what}: malformed shape"))?];
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("{what}: malformed shape '{shape_txt}'")))
        .collect::<std::result::Result<_, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("{what}: shape overflows"))?;
    let nbytes = count.checked_mul(dtype.size()).ok_or_else(|| format!("{what}: shape overflows"))?;
    let available = len.saturating_sub((prefix + header_len) as u64);
    if nbytes as u64 > available {
        return Err(format!("{what}: shape {shape:?} needs {nbytes} bytes but the entry holds {available}"));
    }
    let mut bytes = vec![0u8; nbytes];
    r.read_exact(&mut bytes).map_err(|e| format!("{what}: truncated array data ({e})"))?;
    Ok(NpyArray { shape, dtype, bytes })
}

/// Value text of `key` in a Python dict literal such as `{'descr': '|u1', 'shape': (3, 28, 28), }`.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}':");
    let pat2 = format!("\"{key}\":");
    let at = dict.find(&pat1).map(|i| i + pat1.len()).or_else(|| dict.find(&pat2).map(|i| i + pat2.len()))?;
    Some(dict[at..].trim_start())
}

/// The text between the quotes that open `s`.
fn quoted(s: &str) -> Option<&str> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &s[1..];
    Some(&rest[..rest.find(q)?])
}

/// Reads the arrays named in `names` from an `.npz` archive (missing names are an error).
pub fn read_npz(path: &Path, names: &[&str]) -> Result<Vec<NpyArray>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut zip =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| DataError::format(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let entry_name = format!("{name}.npy");
        let entry = zip.by_name(&entry_name).map_err(|_| DataError::format(path, format!("archive has no array '{name}'")))?;
        let declared = entry.size();
        // Stored entries cannot exceed the file; deflated ones cannot exceed DEFLATE's maximum ratio.
        if declared > file_len.saturating_mul(crate::formats::MAX_DEFLATE_RATIO) {
            return Err(DataError::format(path, format!("array '{name}' declares an impossible size {declared}")));
        }
        let limited = entry.take(declared);
        out.push(read_npy(limited, declared, name).map_err(|m| DataError::format(path, m))?);
    }
    Ok(out)
}

/// One split of a MedMNIST archive.
#[derive(Clone, Debug, PartialEq)]
pub struct MedMnistSplit {
    /// Pixels of all images, each image channel-planar (`[c, h, w]`), values 0–255.
    pub images: Vec<u8>,
    /// Labels: `labels_per_image` integers per image.
    pub labels: Vec<i64>,
    /// Number of images.
    pub n: usize,
    /// Image side.
    pub size: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// 1 for single-label tasks, the number of labels for multi-label tasks.
    pub labels_per_image: usize,
}

/// Reads split `split` (`"train"`, `"val"` or `"test"`) of a MedMNIST `.npz` archive.
pub fn read_medmnist(path: &Path, split: &str) -> Result<MedMnistSplit> {
    let images_name = format!("{split}_images");
    let labels_name = format!("{split}_labels");
    let mut arrays = read_npz(path, &[&images_name, &labels_name])?;
    let labels = arrays.pop().expect("two arrays read");
    let images = arrays.pop().expect("two arrays read");
    if images.dtype != Dtype::U8 {
        return Err(DataError::format(path, format!("{images_name} must be uint8")));
    }
    let (n, h, w, channels) = match images.shape[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, 3] => (n, h, w, 3),
        _ => return Err(DataError::format(path, format!("{images_name} has shape {:?}, expected (N, S, S[, 3])", images.shape))),
    };
    if h != w || h == 0 {
        return Err(DataError::format(path, format!("{images_name} images are {h}×{w}, expected square")));
    }
    let labels_per_image = match labels.shape[..] {
        [m] if m == n => 1,
        [m, l] if m == n && l >= 1 => l,
        _ => {
            return Err(DataError::format(path, format!("{labels_name} has shape {:?}, expected ({n}, L)", labels.shape)));
        }
    };
    if matches!(labels.dtype, Dtype::F32 | Dtype::F64) {
        return Err(DataError::format(path, format!("{labels_name} must hold integers")));
    }
    if labels_per_image > MAX_CLASSES {
        return Err(DataError::format(
            path,
            format!("{labels_name} has {labels_per_image} labels per image; at most {} are supported", MAX_CLASSES),
        ));
    }
    let label_values: Vec<i64> = (0..labels.len()).map(|i| labels.get_f64(i) as i64).collect();
    // Checked before anything is sized from them: a class index sets the number of classes.
    for (i, &v) in label_values.iter().enumerate() {
        let bad = if labels_per_image == 1 { !(0..MAX_CLASSES as i64).contains(&v) } else { v != 0 && v != 1 };
        if bad {
            let expected = if labels_per_image == 1 { format!("a class index in 0..{}", MAX_CLASSES) } else { "a 0/1 flag".to_string() };
            return Err(DataError::format(path, format!("{labels_name}[{}] is {v}, expected {expected}", i / labels_per_image)));
        }
    }
    // HWC → CHW per image.
    let pixels = h * w;
    let data = if channels == 1 {
        images.bytes
    } else {
        let mut out = vec![0u8; images.bytes.len()];
        for (img, src) in out.chunks_exact_mut(3 * pixels).zip(images.bytes.chunks_exact(3 * pixels)) {
            for p in 0..pixels {
                for c in 0..3 {
                    img[c * pixels + p] = src[3 * p + c];
                }
            }
        }
        out
    };
    Ok(MedMnistSplit { images: data, labels: label_values, n, size: h, channels, labels_per_image })
}

/// Writes an `.npy` array (C order, little-endian) — used to build MedMNIST-layout files for tests and tools.
pub fn write_npy(mut w: impl std::io::Write, shape: &[usize], descr: &str, bytes: &[u8]) -> std::io::Result<()> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    w.write_all(bytes)
}

/// Writes a MedMNIST-layout `.npz` archive from `(name, shape, descr, bytes)` arrays.
pub fn write_npz(path: &Path, arrays: &[(&str, Vec<usize>, &str, Vec<u8>)]) -> Result<()> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, shape, descr, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), options).map_err(|e| DataError::format(path, e.to_string()))?;
        write_npy(&mut zip, shape, descr, bytes).map_err(|e| DataError::io(path, e))?;
    }
    let bytes = zip.finish().map_err(|e| DataError::format(path, e.to_string()))?.into_inner();
    // Atomically: a reader never sees half an archive.
    crate::formats::write_atomic(path, &bytes)
}
