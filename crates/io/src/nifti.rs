//! NIfTI-1 and NIfTI-2: `.nii`, `.nii.gz`, and `.hdr`/`.img` pairs (optionally gzipped), both byte orders, every
//! standard scalar type and RGB — read and written.
//!
//! The header is parsed and checked before any voxel buffer exists: dimensions must be positive, the data type
//! known, and the declared data must fit in what the file can hold (its size, or for gzip the bytes that
//! actually decompress: the buffer grows only as data arrives, up to the declared size). Intensities are scaled by
//! `scl_slope`/`scl_inter` and the affine is chosen as nibabel does.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::image::Affine;
use crate::{DataError, Image, Result};

/// NIfTI data types this module reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NiftiType {
    /// `uint8` (code 2).
    U8,
    /// `int8` (256).
    I8,
    /// `int16` (4).
    I16,
    /// `uint16` (512).
    U16,
    /// `int32` (8).
    I32,
    /// `uint32` (768).
    U32,
    /// `int64` (1024).
    I64,
    /// `uint64` (1280).
    U64,
    /// `float32` (16).
    F32,
    /// `float64` (64).
    F64,
    /// 3 × `uint8` per voxel (128).
    Rgb24,
    /// 4 × `uint8` per voxel (2304).
    Rgba32,
}

impl NiftiType {
    /// The type of a NIfTI datatype code.
    pub fn from_code(code: i16) -> Option<NiftiType> {
        Some(match code {
            2 => NiftiType::U8,
            256 => NiftiType::I8,
            4 => NiftiType::I16,
            512 => NiftiType::U16,
            8 => NiftiType::I32,
            768 => NiftiType::U32,
            1024 => NiftiType::I64,
            1280 => NiftiType::U64,
            16 => NiftiType::F32,
            64 => NiftiType::F64,
            128 => NiftiType::Rgb24,
            2304 => NiftiType::Rgba32,
            _ => return None,
        })
    }

    /// The datatype code.
    pub fn code(self) -> i16 {
        match self {
            NiftiType::U8 => 2,
            NiftiType::I8 => 256,
            NiftiType::I16 => 4,
            NiftiType::U16 => 512,
            NiftiType::I32 => 8,
            NiftiType::U32 => 768,
            NiftiType::I64 => 1024,
            NiftiType::U64 => 1280,
            NiftiType::F32 => 16,
            NiftiType::F64 => 64,
            NiftiType::Rgb24 => 128,
            NiftiType::Rgba32 => 2304,
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            NiftiType::U8 | NiftiType::I8 => 1,
            NiftiType::I16 | NiftiType::U16 => 2,
            NiftiType::I32 | NiftiType::U32 | NiftiType::F32 => 4,
            NiftiType::I64 | NiftiType::U64 | NiftiType::F64 => 8,
            NiftiType::Rgb24 => 3,
            NiftiType::Rgba32 => 4,
        }
    }

    /// numpy-style name.
    pub fn name(self) -> &'static str {
        match self {
            NiftiType::U8 => "uint8",
            NiftiType::I8 => "int8",
            NiftiType::I16 => "int16",
            NiftiType::U16 => "uint16",
            NiftiType::I32 => "int32",
            NiftiType::U32 => "uint32",
            NiftiType::I64 => "int64",
            NiftiType::U64 => "uint64",
            NiftiType::F32 => "float32",
            NiftiType::F64 => "float64",
            NiftiType::Rgb24 => "rgb24",
            NiftiType::Rgba32 => "rgba32",
        }
    }

    /// The type named `name` (as [`NiftiType::name`] gives).
    pub fn from_name(name: &str) -> Option<NiftiType> {
        [
            NiftiType::U8,
            NiftiType::I8,
            NiftiType::I16,
            NiftiType::U16,
            NiftiType::I32,
            NiftiType::U32,
            NiftiType::I64,
            NiftiType::U64,
            NiftiType::F32,
            NiftiType::F64,
            NiftiType::Rgb24,
            NiftiType::Rgba32,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }

    fn channels(self) -> usize {
        match self {
            NiftiType::Rgb24 => 3,
            NiftiType::Rgba32 => 4,
            _ => 1,
        }
    }
}

/// The fields of a NIfTI-1 or NIfTI-2 header that matter for reading and placing the image.
#[derive(Clone, Debug, PartialEq)]
pub struct NiftiHeader {
    /// 1 or 2.
    pub version: u8,
    /// Whether the file is big-endian.
    pub big_endian: bool,
    /// `dim[0..8]`.
    pub dim: [i64; 8],
    /// The data type code.
    pub datatype: i16,
    /// `pixdim[0..8]` (`pixdim[0]` is qfac).
    pub pixdim: [f64; 8],
    /// Byte offset of the voxel data (in the `.img` file for pairs, where it is normally 0).
    pub vox_offset: f64,
    /// Intensity scale.
    pub scl_slope: f64,
    /// Intensity offset.
    pub scl_inter: f64,
    /// qform code.
    pub qform_code: i32,
    /// sform code.
    pub sform_code: i32,
    /// Quaternion `b, c, d`.
    pub quatern: [f64; 3],
    /// qform offsets.
    pub qoffset: [f64; 3],
    /// sform rows.
    pub srow: [[f64; 4]; 3],
    /// Units of space and time.
    pub xyzt_units: i32,
    /// Intent code (3000–3099 mark CIFTI-2 files, which are not image volumes).
    pub intent_code: i32,
    /// Free-text description.
    pub descrip: String,
    /// Whether the magic says the data follow the header in the same file (`n+1`/`n+2`).
    pub single_file: bool,
}

const HEADER1: usize = 348;
const HEADER2: usize = 540;

struct Bytes<'a> {
    b: &'a [u8],
    be: bool,
}

impl Bytes<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[at..at + N]);
        if self.be {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.arr(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.arr(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.arr(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_le_bytes(self.arr(at)) as f64
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.arr(at))
    }
    fn text(&self, at: usize, len: usize) -> String {
        let s = &self.b[at..at + len];
        let end = s.iter().position(|&c| c == 0).unwrap_or(len);
        String::from_utf8_lossy(&s[..end]).into_owned()
    }
}

impl NiftiHeader {
    /// Parses a header from its first bytes (348 for NIfTI-1, 540 for NIfTI-2); Analyze 7.5 headers (no magic)
    /// parse as NIfTI-1 with zero qform/sform codes, as nibabel reads them.
    pub fn parse(bytes: &[u8]) -> std::result::Result<NiftiHeader, String> {
        if bytes.len() < 4 {
            return Err(if bytes.is_empty() { "empty file".into() } else { "file too short for a NIfTI header".into() });
        }
        let le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let (version, big_endian) = match (le, be) {
            (348, _) => (1, false),
            (_, 348) => (1, true),
            (540, _) => (2, false),
            (_, 540) => (2, true),
            _ => return Err(format!("not a NIfTI file (sizeof_hdr is {le}, expected 348 or 540)")),
        };
        let need = if version == 1 { HEADER1 } else { HEADER2 };
        if bytes.len() < need {
            return Err(format!("truncated NIfTI-{version} header ({} of {need} bytes)", bytes.len()));
        }
        let r = Bytes { b: bytes, be: big_endian };
        let mut h = NiftiHeader {
            version,
            big_endian,
            dim: [0; 8],
            datatype: 0,
            pixdim: [0.0; 8],
            vox_offset: 0.0,
            scl_slope: 0.0,
            scl_inter: 0.0,
            qform_code: 0,
            sform_code: 0,
            quatern: [0.0; 3],
            qoffset: [0.0; 3],
            srow: [[0.0; 4]; 3],
            xyzt_units: 0,
            intent_code: 0,
            descrip: String::new(),
            single_file: false,
        };
        if version == 1 {
            for i in 0..8 {
                h.dim[i] = r.i16(40 + 2 * i) as i64;
                h.pixdim[i] = r.f32(76 + 4 * i);
            }
            h.datatype = r.i16(70);
            h.intent_code = r.i16(68) as i32;
            h.vox_offset = r.f32(108);
            h.scl_slope = r.f32(112);
            h.scl_inter = r.f32(116);
            h.xyzt_units = bytes[123] as i32;
            h.descrip = r.text(148, 80);
            h.qform_code = r.i16(252) as i32;
            h.sform_code = r.i16(254) as i32;
            for i in 0..3 {
                h.quatern[i] = r.f32(256 + 4 * i);
                h.qoffset[i] = r.f32(268 + 4 * i);
                for j in 0..4 {
                    h.srow[i][j] = r.f32(280 + 16 * i + 4 * j);
                }
            }
            let magic = &bytes[344..348];
            h.single_file = magic == b"n+1\0";
            if magic != b"n+1\0" && magic != b"ni1\0" {
                // Analyze 7.5: no orientation codes.
                h.qform_code = 0;
                h.sform_code = 0;
            }
        } else {
            let magic = &bytes[4..12];
            if &magic[..3] != b"n+2" && &magic[..3] != b"ni2" {
                return Err("NIfTI-2 header with an invalid magic string".into());
            }
            h.single_file = &magic[..3] == b"n+2";
            h.datatype = r.i16(12);
            for i in 0..8 {
                h.dim[i] = r.i64(16 + 8 * i);
                h.pixdim[i] = r.f64(104 + 8 * i);
            }
            h.vox_offset = r.i64(168) as f64;
            h.scl_slope = r.f64(176);
            h.scl_inter = r.f64(184);
            h.descrip = r.text(240, 80);
            h.qform_code = r.i32(344);
            h.sform_code = r.i32(348);
            for i in 0..3 {
                h.quatern[i] = r.f64(352 + 8 * i);
                h.qoffset[i] = r.f64(376 + 8 * i);
                for j in 0..4 {
                    h.srow[i][j] = r.f64(400 + 32 * i + 8 * j);
                }
            }
            h.xyzt_units = r.i32(500);
            h.intent_code = r.i32(504);
        }
        h.check()?;
        Ok(h)
    }

    /// Checks dimensions, data type and offset.
    fn check(&self) -> std::result::Result<(), String> {
        if (3000..3100).contains(&self.intent_code) {
            return Err(format!("a CIFTI-2 file (intent code {}), not an image volume", self.intent_code));
        }
        let ndim = self.dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(format!("invalid number of dimensions dim[0] = {ndim}"));
        }
        let dims = &self.dim[1..=ndim as usize];
        if dims.iter().any(|&d| d <= 0) {
            return Err(format!("invalid dimensions {dims:?}: each must be at least 1"));
        }
        if NiftiType::from_code(self.datatype).is_none() {
            return Err(format!("unsupported datatype code {}", self.datatype));
        }
        if !(self.vox_offset >= 0.0 && self.vox_offset.is_finite()) {
            return Err(format!("invalid vox_offset {}", self.vox_offset));
        }
        if self.single_file && self.vox_offset < self.header_len() as f64 && self.vox_offset != 0.0 {
            return Err(format!("vox_offset {} lies inside the header", self.vox_offset));
        }
        Ok(())
    }

    fn header_len(&self) -> usize {
        if self.version == 1 { HEADER1 } else { HEADER2 }
    }

    /// Shape as nibabel reports it: `dim[1..=dim[0]]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dim[1..=self.dim[0] as usize].iter().map(|&d| d as usize).collect()
    }

    /// The data type.
    pub fn data_type(&self) -> NiftiType {
        NiftiType::from_code(self.datatype).unwrap_or(NiftiType::U8)
    }

    /// Bytes of voxel data the header declares, or `None` on overflow.
    pub fn data_bytes(&self) -> Option<u64> {
        self.shape().iter().try_fold(self.data_type().size() as u64, |a, &d| a.checked_mul(d as u64))
    }

    /// Where the voxel data start: `vox_offset`, or right after the header (and 4 extension bytes) when a
    /// single file declares 0.
    pub fn data_offset(&self) -> u64 {
        if self.single_file && self.vox_offset == 0.0 { self.header_len() as u64 + 4 } else { self.vox_offset as u64 }
    }

    /// `(slope, inter)` when scaling applies, as nibabel decides: a zero or non-finite slope means no scaling.
    pub fn scaling(&self) -> Option<(f64, f64)> {
        (self.scl_slope != 0.0 && self.scl_slope.is_finite())
            .then_some((self.scl_slope, if self.scl_inter.is_finite() { self.scl_inter } else { 0.0 }))
    }

    /// The voxel-to-world affine that nibabel reports: the sform when `sform_code > 0`, else the qform when
    /// `qform_code > 0`, else the voxel sizes with x flipped and the origin at the centre of the grid.
    pub fn affine(&self) -> Affine {
        let ndim = self.dim[0].clamp(1, 7) as usize;
        if self.sform_code > 0 {
            return [self.srow[0], self.srow[1], self.srow[2], [0., 0., 0., 1.]];
        }
        let mut zooms: Vec<f64> = (1..=3).map(|i| if i <= ndim { self.pixdim[i].abs() } else { 1.0 }).collect();
        if self.qform_code > 0 {
            let [b, c, d] = self.quatern;
            let w2 = 1.0 - (b * b + c * c + d * d);
            let a = if w2 < 0.0 { 0.0 } else { w2.sqrt() };
            let rot = [
                [a * a + b * b - c * c - d * d, 2. * b * c - 2. * a * d, 2. * b * d + 2. * a * c],
                [2. * b * c + 2. * a * d, a * a + c * c - b * b - d * d, 2. * c * d - 2. * a * b],
                [2. * b * d - 2. * a * c, 2. * c * d + 2. * a * b, a * a + d * d - c * c - b * b],
            ];
            if self.pixdim[0] < 0.0 {
                zooms[2] = -zooms[2];
            }
            let mut out = [[0.0; 4]; 4];
            for r in 0..3 {
                for c in 0..3 {
                    out[r][c] = rot[r][c] * zooms[c];
                }
                out[r][3] = self.qoffset[r];
            }
            out[3][3] = 1.0;
            return out;
        }
        let shape: Vec<f64> = (1..=3).map(|i| if i <= ndim { self.dim[i] as f64 } else { 1.0 }).collect();
        let z = [-zooms[0], zooms[1], zooms[2]];
        let mut out = [[0.0; 4]; 4];
        for a in 0..3 {
            out[a][a] = z[a];
            out[a][3] = -(shape[a] - 1.0) / 2.0 * z[a];
        }
        out[3][3] = 1.0;
        out
    }
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Lower-cased file name.
fn lower_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// The image file of a `.hdr` header: `.img` (or `.img.gz`) beside it, matching the header's case.
fn image_file_of(hdr: &Path) -> Option<PathBuf> {
    let name = hdr.file_name()?.to_string_lossy().into_owned();
    let lower = name.to_ascii_lowercase();
    let stem_len = if lower.ends_with(".hdr.gz") { name.len() - 7 } else { name.len() - 4 };
    let stem = &name[..stem_len];
    let upper = name[stem_len..].starts_with(".HDR");
    let candidates = if upper { [".IMG", ".IMG.GZ", ".img", ".img.gz"] } else { [".img", ".img.gz", ".IMG", ".IMG.GZ"] };
    candidates.iter().map(|ext| hdr.with_file_name(format!("{stem}{ext}"))).find(|p| p.is_file())
}

/// An opened (possibly gzipped) file with its size on disk.
fn open(path: &Path) -> Result<(Box<dyn Read>, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(path, "is a directory, not an image file"));
    }
    let f = BufReader::new(File::open(path).map_err(|e| DataError::io(path, e))?);
    let reader: Box<dyn Read> = if is_gz(path) { Box::new(flate2::read::MultiGzDecoder::new(f)) } else { Box::new(f) };
    Ok((reader, meta.len()))
}

/// Reads up to `limit` bytes, growing the buffer only as data arrive.
fn read_limited(r: &mut dyn Read, limit: u64, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(limit).read_to_end(&mut out).map_err(|e| DataError::format(path, format!("cannot read data: {e}")))?;
    Ok(out)
}

/// Reads a NIfTI header from `path` (`.nii`, `.nii.gz`, `.hdr`, `.hdr.gz`).
pub fn read_header(path: &Path) -> Result<NiftiHeader> {
    let (mut r, _) = open(path)?;
    let head = read_limited(&mut *r, HEADER2 as u64, path)?;
    NiftiHeader::parse(&head).map_err(|m| DataError::format(path, m))
}

/// Reads a NIfTI-1 or NIfTI-2 image, or an Analyze 7.5 `.hdr`/`.img` pair.
///
/// Up to three axes are spatial; a fourth (time or channels) becomes the image's channels, as does the fifth of a
/// vector image whose fourth axis is 1. RGB voxels become three channels.
pub fn load(path: &Path) -> Result<Image> {
    let name = lower_name(path);
    let pair = name.ends_with(".hdr") || name.ends_with(".hdr.gz") || name.ends_with(".img") || name.ends_with(".img.gz");
    let hdr_path = if name.ends_with(".img") || name.ends_with(".img.gz") {
        let stem_len = path.file_name().map_or(0, |n| n.len()) - if name.ends_with(".gz") { 7 } else { 4 };
        let stem = path.file_name().map(|n| n.to_string_lossy()[..stem_len].to_string()).unwrap_or_default();
        [".hdr", ".HDR", ".hdr.gz"]
            .iter()
            .map(|e| path.with_file_name(format!("{stem}{e}")))
            .find(|p| p.is_file())
            .ok_or_else(|| DataError::format(path, "image file without its .hdr header"))?
    } else {
        path.to_path_buf()
    };
    let (mut r, size) = open(&hdr_path)?;
    let head_len = HEADER2 as u64;
    let mut head = read_limited(&mut *r, head_len, &hdr_path)?;
    let header = NiftiHeader::parse(&head).map_err(|m| DataError::format(&hdr_path, m))?;
    let nbytes = header.data_bytes().ok_or_else(|| DataError::format(&hdr_path, "dimensions overflow"))?;
    let (data, data_path) = if pair || !header.single_file {
        let img = if pair { image_file_of(&hdr_path) } else { None };
        let img = img.ok_or_else(|| DataError::format(&hdr_path, "header without its .img data file"))?;
        let (mut ir, isize) = open(&img)?;
        let offset = header.vox_offset as u64;
        check_fits(&img, &header, offset, nbytes, isize, is_gz(&img))?;
        read_limited(&mut *ir, offset, &img)?;
        (read_limited(&mut *ir, nbytes, &img)?, img)
    } else {
        let offset = header.data_offset();
        check_fits(&hdr_path, &header, offset, nbytes, size, is_gz(&hdr_path))?;
        // The header bytes already read count towards the offset.
        let already = head.len() as u64;
        if offset >= already {
            read_limited(&mut *r, offset - already, &hdr_path)?;
            (read_limited(&mut *r, nbytes, &hdr_path)?, hdr_path.clone())
        } else {
            let mut rest = head.split_off(offset as usize);
            rest.extend(read_limited(&mut *r, nbytes - rest.len() as u64, &hdr_path)?);
            (rest, hdr_path.clone())
        }
    };
    if (data.len() as u64) < nbytes {
        return Err(DataError::format(
            &data_path,
            format!("truncated: the header declares {nbytes} bytes of voxel data, the file holds {}", data.len()),
        ));
    }
    decode(&header, &data, &data_path)
}

fn check_fits(path: &Path, h: &NiftiHeader, offset: u64, nbytes: u64, size: u64, gz: bool) -> Result<()> {
    let available = if gz { size.saturating_mul(crate::formats::MAX_DEFLATE_RATIO) } else { size };
    if offset.checked_add(nbytes).is_none_or(|end| end > available) {
        return Err(DataError::format(
            path,
            format!(
                "header declares {:?} voxels of {} ({nbytes} bytes at offset {offset}), but the file holds {size} bytes{}",
                h.shape(),
                h.data_type().name(),
                if gz { " compressed" } else { "" }
            ),
        ));
    }
    Ok(())
}

/// Higher dimensions (5–7) are folded into channels in file order.
fn decode(h: &NiftiHeader, data: &[u8], path: &Path) -> Result<Image> {
    let t = h.data_type();
    let shape = h.shape();
    let n: usize = shape.iter().product();
    let be = h.big_endian;
    macro_rules! conv {
        ($ty:ty, $n:expr) => {{
            data.chunks_exact($n)
                .take(n)
                .map(|c| {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    if be {
                        a.reverse();
                    }
                    <$ty>::from_le_bytes(a) as f64
                })
                .collect::<Vec<f64>>()
        }};
    }
    let (values, channels): (Vec<f32>, usize) = match t {
        NiftiType::Rgb24 | NiftiType::Rgba32 => {
            let k = t.channels();
            let mut out = vec![0f32; 3 * n];
            for (i, px) in data.chunks_exact(k).take(n).enumerate() {
                for c in 0..3 {
                    out[c * n + i] = px[c] as f32;
                }
            }
            (out, 3)
        }
        _ => {
            let raw: Vec<f64> = match t {
                NiftiType::U8 => data[..n].iter().map(|&v| v as f64).collect(),
                NiftiType::I8 => data[..n].iter().map(|&v| v as i8 as f64).collect(),
                NiftiType::I16 => conv!(i16, 2),
                NiftiType::U16 => conv!(u16, 2),
                NiftiType::I32 => conv!(i32, 4),
                NiftiType::U32 => conv!(u32, 4),
                NiftiType::I64 => conv!(i64, 8),
                NiftiType::U64 => conv!(u64, 8),
                NiftiType::F32 => conv!(f32, 4),
                NiftiType::F64 => conv!(f64, 8),
                NiftiType::Rgb24 | NiftiType::Rgba32 => unreachable!("handled above"),
            };
            let scaled = match h.scaling() {
                Some((s, i)) => raw.into_iter().map(|v| (v * s + i) as f32).collect(),
                None => raw.into_iter().map(|v| v as f32).collect(),
            };
            (scaled, 1)
        }
    };
    let (spatial, extra) = match shape.len() {
        1..=3 => (shape.clone(), 1),
        4 => (shape[..3].to_vec(), shape[3]),
        5 if shape[3] == 1 => (shape[..3].to_vec(), shape[4]),
        _ => (shape[..3].to_vec(), shape[3..].iter().product()),
    };
    Image::new(values, spatial, channels * extra, h.affine(), t.name()).map_err(|e| DataError::format(path, e.to_string()))
}

/// Quaternion `(b, c, d)`, offsets and qfac of an affine, as NIfTI's `mat44_to_quatern` computes them (the
/// rotation is taken from the normalised columns; shears are not representable in a qform and are dropped).
pub fn affine_to_quatern(a: &Affine) -> ([f64; 3], [f64; 3], [f64; 3], f64) {
    let mut zooms = [0.0; 3];
    let mut r = [[0.0; 3]; 3];
    for c in 0..3 {
        zooms[c] = (0..3).map(|i| a[i][c] * a[i][c]).sum::<f64>().sqrt();
        for i in 0..3 {
            r[i][c] = if zooms[c] > 0.0 {
                a[i][c] / zooms[c]
            } else if i == c {
                1.0
            } else {
                0.0
            };
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    let (r11, r12, r13, r21, r22, r23, r31, r32, r33) = (r[0][0], r[0][1], r[0][2], r[1][0], r[1][1], r[1][2], r[2][0], r[2][1], r[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let (mut qa, mut b, mut c, mut d);
    if trace > 0.5 {
        qa = 0.5 * trace.sqrt();
        b = 0.25 * (r32 - r23) / qa;
        c = 0.25 * (r13 - r31) / qa;
        d = 0.25 * (r21 - r12) / qa;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            qa = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            qa = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            qa = 0.25 * (r21 - r12) / d;
        }
        if qa < 0.0 {
            b = -b;
            c = -c;
            d = -d;
            qa = -qa;
        }
    }
    let _ = qa;
    ([b, c, d], [a[0][3], a[1][3], a[2][3]], zooms, qfac)
}

/// NIfTI header layout to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NiftiVersion {
    /// NIfTI-1: 348-byte header, 16-bit dimensions, 32-bit floats.
    V1,
    /// NIfTI-2: 540-byte header, 64-bit dimensions and double-precision geometry.
    V2,
}

/// Writes `image` as NIfTI-1, or NIfTI-2 when a dimension exceeds NIfTI-1's 32767; see [`save_version`].
pub fn save(path: &Path, image: &Image, dtype: NiftiType) -> Result<()> {
    let large = image.shape().iter().any(|&d| d > i16::MAX as usize) || image.channels() > i16::MAX as usize;
    save_version(path, image, dtype, if large { NiftiVersion::V2 } else { NiftiVersion::V1 })
}

/// Writes `image` atomically, storing values as `dtype`: a single file (`.nii`, or gzipped `.nii.gz`), or a
/// header/data pair (`.hdr` + `.img`, magic `ni1`/`ni2`, data at offset 0).
///
/// The affine goes into the sform (code 2, "aligned") and, as a rotation plus voxel sizes, into the qform (same
/// code), as nibabel writes new images. Channels become the fourth dimension (or RGB voxels for `Rgb24` with three
/// channels). Integer types round and saturate; `scl_slope = 1`, `scl_inter = 0`.
pub fn save_version(path: &Path, image: &Image, dtype: NiftiType, version: NiftiVersion) -> Result<()> {
    let spatial = image.shape();
    let rgb = matches!(dtype, NiftiType::Rgb24 | NiftiType::Rgba32);
    if rgb && image.channels() != 3 {
        return Err(DataError::format(path, format!("{} needs 3 channels, the image has {}", dtype.name(), image.channels())));
    }
    let mut dims: Vec<usize> = spatial.to_vec();
    if !rgb && image.channels() > 1 {
        while dims.len() < 3 {
            dims.push(1);
        }
        dims.push(image.channels());
    }
    if version == NiftiVersion::V1 && dims.iter().any(|&d| d > i16::MAX as usize) {
        return Err(DataError::format(path, "dimensions exceed NIfTI-1's 32767 limit (write NIfTI-2)"));
    }
    let name = path.to_string_lossy().to_ascii_lowercase();
    let pair = name.ends_with(".hdr");
    if name.ends_with(".img") || name.ends_with(".hdr.gz") || name.ends_with(".img.gz") {
        return Err(DataError::format(path, "write a pair by naming its .hdr file (uncompressed)"));
    }
    let header = match version {
        NiftiVersion::V1 => header_v1(image, &dims, dtype, pair),
        NiftiVersion::V2 => header_v2(image, &dims, dtype, pair),
    };
    let body = body_bytes(image, dtype);
    if pair {
        crate::formats::write_atomic(&path.with_extension("img"), &body)?;
        return crate::formats::write_atomic(path, &header);
    }
    let mut bytes = header;
    bytes.extend_from_slice(&body);
    let bytes = if is_gz(path) {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&bytes).map_err(|e| DataError::io(path, e))?;
        enc.finish().map_err(|e| DataError::io(path, e))?
    } else {
        bytes
    };
    crate::formats::write_atomic(path, &bytes)
}

fn put(h: &mut [u8], at: usize, b: &[u8]) {
    h[at..at + b.len()].copy_from_slice(b);
}

/// NIfTI-1 header plus the 4-byte extension flag for a single file (pairs: the 348-byte header alone).
fn header_v1(image: &Image, dims: &[usize], dtype: NiftiType, pair: bool) -> Vec<u8> {
    let mut h = vec![0u8; if pair { HEADER1 } else { HEADER1 + 4 }];
    put(&mut h, 0, &(HEADER1 as i32).to_le_bytes());
    h[38] = b'r';
    put(&mut h, 40, &(dims.len() as i16).to_le_bytes());
    for i in 0..7 {
        put(&mut h, 42 + 2 * i, &(dims.get(i).copied().unwrap_or(1) as i16).to_le_bytes());
    }
    put(&mut h, 70, &dtype.code().to_le_bytes());
    put(&mut h, 72, &((dtype.size() * 8) as i16).to_le_bytes());
    let (quatern, offset, zooms, qfac) = affine_to_quatern(image.affine());
    put(&mut h, 76, &(qfac as f32).to_le_bytes());
    for i in 0..7 {
        put(&mut h, 80 + 4 * i, &(if i < 3 { zooms[i] } else { 1.0 } as f32).to_le_bytes());
    }
    put(&mut h, 108, &(if pair { 0.0f32 } else { (HEADER1 + 4) as f32 }).to_le_bytes());
    put(&mut h, 112, &1f32.to_le_bytes());
    h[123] = 2 | 8; // millimetres, seconds
    put(&mut h, 148, b"vesalius");
    put(&mut h, 252, &2i16.to_le_bytes());
    put(&mut h, 254, &2i16.to_le_bytes());
    for i in 0..3 {
        put(&mut h, 256 + 4 * i, &(quatern[i] as f32).to_le_bytes());
        put(&mut h, 268 + 4 * i, &(offset[i] as f32).to_le_bytes());
        for j in 0..4 {
            put(&mut h, 280 + 16 * i + 4 * j, &(image.affine()[i][j] as f32).to_le_bytes());
        }
    }
    put(&mut h, 344, if pair { b"ni1\0" } else { b"n+1\0" });
    h
}

/// NIfTI-2 header (540 bytes, all geometry in f64) plus the extension flag for a single file.
fn header_v2(image: &Image, dims: &[usize], dtype: NiftiType, pair: bool) -> Vec<u8> {
    let mut h = vec![0u8; if pair { HEADER2 } else { HEADER2 + 4 }];
    put(&mut h, 0, &(HEADER2 as i32).to_le_bytes());
    put(&mut h, 4, if pair { b"ni2\0\r\n\x1a\n" } else { b"n+2\0\r\n\x1a\n" });
    put(&mut h, 12, &dtype.code().to_le_bytes());
    put(&mut h, 14, &((dtype.size() * 8) as i16).to_le_bytes());
    put(&mut h, 16, &(dims.len() as i64).to_le_bytes());
    for i in 0..7 {
        put(&mut h, 24 + 8 * i, &(dims.get(i).copied().unwrap_or(1) as i64).to_le_bytes());
    }
    let (quatern, offset, zooms, qfac) = affine_to_quatern(image.affine());
    put(&mut h, 104, &qfac.to_le_bytes());
    for i in 0..7 {
        put(&mut h, 112 + 8 * i, &(if i < 3 { zooms[i] } else { 1.0 }).to_le_bytes());
    }
    put(&mut h, 168, &(if pair { 0i64 } else { (HEADER2 + 4) as i64 }).to_le_bytes());
    put(&mut h, 176, &1f64.to_le_bytes());
    put(&mut h, 240, b"vesalius");
    put(&mut h, 344, &2i32.to_le_bytes());
    put(&mut h, 348, &2i32.to_le_bytes());
    for i in 0..3 {
        put(&mut h, 352 + 8 * i, &quatern[i].to_le_bytes());
        put(&mut h, 376 + 8 * i, &offset[i].to_le_bytes());
        for j in 0..4 {
            put(&mut h, 400 + 32 * i + 8 * j, &image.affine()[i][j].to_le_bytes());
        }
    }
    put(&mut h, 500, &(2i32 | 8).to_le_bytes());
    h
}

/// Voxel values stored as `dtype`, little-endian, first axis fastest, channels last (interleaved for RGB).
fn body_bytes(image: &Image, dtype: NiftiType) -> Vec<u8> {
    let rgb = matches!(dtype, NiftiType::Rgb24 | NiftiType::Rgba32);
    let n = image.voxels();
    let mut body = Vec::with_capacity(n * image.channels() * dtype.size());
    let data = image.data();
    if rgb {
        for i in 0..n {
            for c in 0..3 {
                body.push(data[c * n + i].round().clamp(0.0, 255.0) as u8);
            }
            if dtype == NiftiType::Rgba32 {
                body.push(255);
            }
        }
        return body;
    }
    for &v in data {
        let v = v as f64;
        match dtype {
            NiftiType::U8 => body.push(v.round().clamp(0.0, 255.0) as u8),
            NiftiType::I8 => body.push(v.round().clamp(-128.0, 127.0) as i8 as u8),
            NiftiType::I16 => body.extend((v.round().clamp(-32768.0, 32767.0) as i16).to_le_bytes()),
            NiftiType::U16 => body.extend((v.round().clamp(0.0, 65535.0) as u16).to_le_bytes()),
            NiftiType::I32 => body.extend((v.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32).to_le_bytes()),
            NiftiType::U32 => body.extend((v.round().clamp(0.0, u32::MAX as f64) as u32).to_le_bytes()),
            NiftiType::I64 => body.extend((v.round() as i64).to_le_bytes()),
            NiftiType::U64 => body.extend((v.round().max(0.0) as u64).to_le_bytes()),
            NiftiType::F32 => body.extend((v as f32).to_le_bytes()),
            NiftiType::F64 => body.extend(v.to_le_bytes()),
            NiftiType::Rgb24 | NiftiType::Rgba32 => {}
        }
    }
    body
}
