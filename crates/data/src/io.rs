//! Reading images from files: NIfTI-1 through the `nifti` crate, PNG/JPEG/TIFF through `image`.
//!
//! [`load`] picks the reader from the file name. Sizes declared in headers are checked against the bytes the file
//! can hold before any voxel buffer is allocated.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use nifti::{NiftiHeader, NiftiObject, NiftiType, ReaderOptions};

use crate::image::Affine;
use crate::{DataError, Image, Result};

/// File formats recognised by [`load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// NIfTI-1, uncompressed.
    Nifti,
    /// NIfTI-1, gzip-compressed.
    NiftiGz,
    /// Portable Network Graphics.
    Png,
    /// JPEG.
    Jpeg,
    /// TIFF (first page).
    Tiff,
}

impl Format {
    /// The format a file name implies, from its extension (case-insensitive).
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        Some(if name.ends_with(".nii.gz") {
            Format::NiftiGz
        } else if name.ends_with(".nii") {
            Format::Nifti
        } else if name.ends_with(".png") {
            Format::Png
        } else if name.ends_with(".jpg") || name.ends_with(".jpeg") {
            Format::Jpeg
        } else if name.ends_with(".tif") || name.ends_with(".tiff") {
            Format::Tiff
        } else {
            return None;
        })
    }

    /// Short name, as `vesalius info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Nifti => "nifti",
            Format::NiftiGz => "nifti-gz",
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Tiff => "tiff",
        }
    }
}

/// Reads any supported image file.
pub fn load(path: impl AsRef<Path>) -> Result<Image> {
    let path = path.as_ref();
    match Format::from_path(path) {
        Some(Format::Nifti | Format::NiftiGz) => load_nifti(path),
        Some(_) => load_2d(path),
        None => Err(DataError::format(
            path,
            "unknown image format (expected .nii, .nii.gz, .png, .jpg, .jpeg, .tif or .tiff)",
        )),
    }
}

/// Largest expansion ratio that DEFLATE can reach; a gzip file cannot decompress to more than this many bytes per
/// compressed byte.
const MAX_DEFLATE_RATIO: u64 = 1032;

fn nifti_type_name(t: NiftiType) -> Option<(&'static str, u64)> {
    Some(match t {
        NiftiType::Uint8 => ("uint8", 1),
        NiftiType::Int8 => ("int8", 1),
        NiftiType::Int16 => ("int16", 2),
        NiftiType::Uint16 => ("uint16", 2),
        NiftiType::Int32 => ("int32", 4),
        NiftiType::Uint32 => ("uint32", 4),
        NiftiType::Int64 => ("int64", 8),
        NiftiType::Uint64 => ("uint64", 8),
        NiftiType::Float32 => ("float32", 4),
        NiftiType::Float64 => ("float64", 8),
        _ => return None,
    })
}

/// Reads a NIfTI-1 header only, checking that the file can hold the data it declares.
pub fn read_nifti_header(path: &Path) -> Result<NiftiHeader> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return Err(DataError::format(path, "is a directory, not a NIfTI file"));
    }
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| DataError::io(path, e))?;
    if got == 0 {
        return Err(DataError::format(path, "empty file"));
    }
    let gz = got >= 2 && magic[..2] == [0x1f, 0x8b];
    if !gz && got == 4 {
        let le = i32::from_le_bytes(magic);
        let be = i32::from_be_bytes(magic);
        if le == 540 || be == 540 {
            return Err(DataError::format(path, "NIfTI-2 files are not supported by this reader"));
        }
        if le != 348 && be != 348 {
            return Err(DataError::format(path, format!("not a NIfTI-1 file (sizeof_hdr is {le}, expected 348)")));
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| DataError::io(path, e))?;
    let header = NiftiHeader::from_file(path).map_err(|e| DataError::format(path, format!("invalid NIfTI header: {e}")))?;
    let ndim = header.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(DataError::format(path, format!("invalid number of dimensions dim[0] = {ndim}")));
    }
    let dims = &header.dim[1..=ndim];
    if dims.iter().any(|&d| d == 0 || d > i16::MAX as u16) {
        return Err(DataError::format(path, format!("invalid dimensions {dims:?}")));
    }
    let dtype = header.data_type().map_err(|_| DataError::format(path, format!("unknown datatype code {}", header.datatype)))?;
    let (_, size) = nifti_type_name(dtype)
        .ok_or_else(|| DataError::format(path, format!("datatype {dtype:?} is not supported")))?;
    let voxels = dims.iter().map(|&d| d as u64).product::<u64>();
    let need = voxels * size + header.vox_offset.max(0.0) as u64;
    let available = if gz { meta.len().saturating_mul(MAX_DEFLATE_RATIO) } else { meta.len() };
    if !(header.vox_offset >= 0.0) || need > available {
        return Err(DataError::format(
            path,
            format!(
                "header declares {voxels} voxels of {size} byte(s) at offset {}, but the file holds {} bytes",
                header.vox_offset,
                meta.len()
            ),
        ));
    }
    Ok(header)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The voxel-to-world affine that nibabel reports for a NIfTI-1 header: the sform when `sform_code > 0`, else the
/// qform (quaternion) when `qform_code > 0`, else a scaling by the voxel sizes with the x axis flipped and the
/// origin at the centre of the grid (nibabel's `get_base_affine`).
pub fn nifti_affine(h: &NiftiHeader) -> Affine {
    let ndim = (h.dim[0] as usize).clamp(1, 7);
    let shape: Vec<f64> = (1..=3).map(|i| if i <= ndim { h.dim[i] as f64 } else { 1.0 }).collect();
    if h.sform_code > 0 {
        let r = |row: [f32; 4]| row.map(f64::from);
        return [r(h.srow_x), r(h.srow_y), r(h.srow_z), [0., 0., 0., 1.]];
    }
    let mut zooms: Vec<f64> = (1..=3).map(|i| if i <= ndim { (h.pixdim[i] as f64).abs() } else { 1.0 }).collect();
    if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2 < 0.0 { 0.0 } else { w2.sqrt() };
        let rot = [
            [a * a + b * b - c * c - d * d, 2. * b * c - 2. * a * d, 2. * b * d + 2. * a * c],
            [2. * b * c + 2. * a * d, a * a + c * c - b * b - d * d, 2. * c * d - 2. * a * b],
            [2. * b * d - 2. * a * c, 2. * c * d + 2. * a * b, a * a + d * d - c * c - b * b],
        ];
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        zooms[2] *= qfac;
        let offset = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
        let mut out = [[0.0; 4]; 4];
        for r in 0..3 {
            for c in 0..3 {
                out[r][c] = rot[r][c] * zooms[c];
            }
            out[r][3] = offset[r];
        }
        out[3][3] = 1.0;
        return out;
    }
    let z = [-zooms[0], zooms[1], zooms[2]];
    let mut out = [[0.0; 4]; 4];
    for a in 0..3 {
        out[a][a] = z[a];
        out[a][3] = -(shape[a] - 1.0) / 2.0 * z[a];
    }
    out[3][3] = 1.0;
    out
}

/// Reads a NIfTI-1 file (`.nii` or `.nii.gz`) with intensity scaling applied as nibabel's `get_fdata()` does.
///
/// Up to three axes are spatial; a fourth (time, or channels) becomes the image's channels, as does the fifth of a
/// vector image whose fourth axis is 1.
pub fn load_nifti(path: &Path) -> Result<Image> {
    let header = read_nifti_header(path)?;
    let ndim = header.dim[0] as usize;
    let dims: Vec<usize> = header.dim[1..=ndim].iter().map(|&d| d as usize).collect();
    let dtype = header.data_type().ok().and_then(nifti_type_name).map(|(n, _)| n).unwrap_or("unknown");
    let (spatial, channels) = match ndim {
        1..=3 => (dims.clone(), 1),
        4 => (dims[..3].to_vec(), dims[3]),
        5 if dims[3] == 1 => (dims[..3].to_vec(), dims[4]),
        _ => return Err(DataError::format(path, format!("{ndim}-dimensional NIfTI images are not supported"))),
    };
    let affine = nifti_affine(&header);
    let obj = ReaderOptions::new().read_file(path).map_err(|e| DataError::format(path, format!("cannot read voxel data: {e}")))?;
    let volume = obj.into_volume();
    let array = nifti::IntoNdArray::into_ndarray::<f32>(volume)
        .map_err(|e| DataError::format(path, format!("cannot decode voxel data: {e}")))?;
    // The array is in Fortran order: its memory order is the file's, first axis fastest.
    let data = match array.as_slice_memory_order() {
        Some(s) if array.t().is_standard_layout() => s.to_vec(),
        _ => array.t().iter().copied().collect(),
    };
    Image::new(data, spatial, channels, affine, dtype).map_err(|e| DataError::format(path, e.to_string()))
}

/// Reads a PNG, JPEG or TIFF image: 8- or 16-bit grey (one channel) or RGB/RGBA (three channels, alpha dropped).
/// Palette or RGB images whose channels are all equal are read as grey.
///
/// Values keep their stored range (0–255 or 0–65535). The affine places pixel `(column, row)` as ITK does (unit
/// spacing, origin 0, identity direction in LPS), expressed in RAS+.
pub fn load_2d(path: &Path) -> Result<Image> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(1 << 30);
    let mut reader = reader;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    use image::DynamicImage as D;
    let (data, channels, dtype): (Vec<f32>, usize, &str) = match img {
        D::ImageLuma8(b) => (b.into_raw().into_iter().map(f32::from).collect(), 1, "uint8"),
        D::ImageLumaA8(_) => (img_to_luma8(img), 1, "uint8"),
        D::ImageLuma16(b) => (b.into_raw().into_iter().map(f32::from).collect(), 1, "uint16"),
        D::ImageLumaA16(_) => (img.to_luma16().into_raw().into_iter().map(f32::from).collect(), 1, "uint16"),
        D::ImageRgb16(_) | D::ImageRgba16(_) => (planar(&img.to_rgb16().into_raw(), w * h), 3, "uint16"),
        D::ImageRgb32F(_) | D::ImageRgba32F(_) => (planar(&img.to_rgb32f().into_raw(), w * h), 3, "float32"),
        other => (planar(&other.to_rgb8().into_raw(), w * h), 3, "uint8"),
    };
    // Palette and RGB files whose three channels are identical are grey images.
    let (data, channels) = if channels == 3 && is_grey(&data, w * h) { (data[..w * h].to_vec(), 1) } else { (data, channels) };
    let affine: Affine = [[-1., 0., 0., 0.], [0., -1., 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]];
    Image::new(data, vec![w, h], channels, affine, dtype).map_err(|e| DataError::format(path, e.to_string()))
}

fn img_to_luma8(img: image::DynamicImage) -> Vec<f32> {
    img.to_luma8().into_raw().into_iter().map(f32::from).collect()
}

fn is_grey(planar: &[f32], pixels: usize) -> bool {
    let (r, rest) = planar.split_at(pixels);
    let (g, b) = rest.split_at(pixels);
    r == g && r == b
}

/// Interleaved RGB to planar (channel slowest).
fn planar<T: Copy + Into<f64>>(rgb: &[T], pixels: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; 3 * pixels];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * pixels + p] = px[c].into() as f32;
        }
    }
    out
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder, flushed to disk, then renamed
/// over `path`. A reader sees the old content or the new, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    Ok(())
}
