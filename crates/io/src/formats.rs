//! Reading images from files: NIfTI (see [`crate::nifti`]), PNG/JPEG/TIFF through `image`.
//!
//! [`load`] picks the reader from the file name. Sizes declared in headers are checked against the bytes the file
//! can hold before any voxel buffer is allocated.
use std::fs::File;
use std::path::Path;

use crate::image::Affine;
use crate::{DataError, Image, Result};

/// File formats recognised by [`load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// NIfTI-1, uncompressed.
    Nifti,
    /// NIfTI-1, gzip-compressed.
    NiftiGz,
    /// A `.hdr`/`.img` pair (NIfTI or Analyze 7.5), possibly gzipped.
    NiftiPair,
    /// MetaImage (`.mha`, or `.mhd` with a raw file).
    MetaImage,
    /// DICOM: a file, or a folder holding a series.
    Dicom,
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
        if path.is_dir() {
            return Some(Format::Dicom);
        }
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        Some(if name.ends_with(".dcm") || name.ends_with(".dicom") || has_dicom_magic(path) {
            Format::Dicom
        } else if name.ends_with(".nii.gz") {
            Format::NiftiGz
        } else if name.ends_with(".nii") {
            Format::Nifti
        } else if [".hdr", ".img", ".hdr.gz", ".img.gz"].iter().any(|e| name.ends_with(e)) {
            Format::NiftiPair
        } else if name.ends_with(".mha") || name.ends_with(".mhd") {
            Format::MetaImage
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
            Format::NiftiPair => "nifti-pair",
            Format::MetaImage => "metaimage",
            Format::Dicom => "dicom",
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Tiff => "tiff",
        }
    }
}

/// Largest expansion ratio of DEFLATE (gzip, zlib, zip): compressed data cannot hold more than this many bytes per
/// stored byte, which bounds what a header may declare before anything is allocated.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// Where ITK places the pixels of a 2D file: unit spacing, origin 0, identity direction in LPS — in RAS+ terms.
pub const ITK_2D_AFFINE: Affine = [[-1., 0., 0., 0.], [0., -1., 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]];

/// Whether the file has DICOM's `DICM` code after its 128-byte preamble.
fn has_dicom_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 132];
    File::open(path).and_then(|mut f| f.read_exact(&mut buf)).is_ok() && &buf[128..] == b"DICM"
}

/// Reads any supported image file, or a DICOM series folder.
pub fn load(path: impl AsRef<Path>) -> Result<Image> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(DataError::format(path, "no such file or folder"));
    }
    match Format::from_path(path) {
        Some(Format::Nifti | Format::NiftiGz | Format::NiftiPair) => load_nifti(path),
        Some(Format::MetaImage) => crate::metaimage::load(path),
        Some(Format::Dicom) if path.is_dir() => crate::dicom::load_series(path, None).map(|(img, _)| img),
        Some(Format::Dicom) => crate::dicom::load_file(path),
        Some(Format::Tiff) => load_tiff(path),
        Some(_) => load_2d(path),
        None => Err(DataError::format(
            path,
            "unknown image format (expected DICOM, .nii, .nii.gz, .hdr/.img, .mha, .mhd, .png, .jpg, .jpeg, .tif or .tiff)",
        )),
    }
}

/// Reads a NIfTI-1/NIfTI-2 file or an Analyze/NIfTI `.hdr`/`.img` pair (see [`crate::nifti`]).
pub fn load_nifti(path: &Path) -> Result<Image> {
    crate::nifti::load(path)
}

/// The most bytes a decoder may allocate for a compressed file of `len` bytes: what DEFLATE can expand that many
/// bytes to ([`MAX_DEFLATE_RATIO`]) plus 1 MiB, and never more than 1 GiB. A header declaring larger pixels than its
/// file can hold is refused before anything is allocated for them.
pub fn decode_budget(len: u64) -> u64 {
    len.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1 << 20).min(1 << 30)
}

/// Reads a TIFF file: one page is a 2D image, several pages of one size are a 3D stack (pages along the third
/// axis). Grey (8/16/32-bit integer or float) and RGB pages; an RGB file with equal channels reads as grey.
pub fn load_tiff(path: &Path) -> Result<Image> {
    use tiff::ColorType;
    use tiff::decoder::{Decoder, DecodingResult};
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let budget = decode_budget(file.metadata().map_err(|e| DataError::io(path, e))?.len());
    let fail = |e: tiff::TiffError| DataError::format(path, format!("cannot decode TIFF: {e}"));
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size = budget as usize;
    limits.intermediate_buffer_size = budget as usize;
    let mut dec = Decoder::new(std::io::BufReader::new(file)).map_err(fail)?.with_limits(limits);
    let (w, h) = dec.dimensions().map_err(fail)?;
    let (w, h) = (w as usize, h as usize);
    if (w as u64).saturating_mul(h as u64) > budget {
        return Err(DataError::format(path, format!("a {w}×{h} page cannot come from a file of this size")));
    }
    let channels = match dec.colortype().map_err(fail)? {
        ColorType::Gray(_) => 1,
        ColorType::RGB(_) => 3,
        ColorType::RGBA(_) => 4,
        other => return Err(DataError::format(path, format!("unsupported TIFF colour type {other:?}"))),
    };
    let mut pages: Vec<Vec<f32>> = Vec::new();
    let mut dtype: &str;
    loop {
        if dec.dimensions().map_err(fail)? != (w as u32, h as u32) {
            return Err(DataError::format(path, format!("page {} differs in size from the first page", pages.len() + 1)));
        }
        let (values, t): (Vec<f32>, &str) = match dec.read_image().map_err(fail)? {
            DecodingResult::U8(v) => (v.into_iter().map(f32::from).collect(), "uint8"),
            DecodingResult::U16(v) => (v.into_iter().map(f32::from).collect(), "uint16"),
            DecodingResult::I8(v) => (v.into_iter().map(f32::from).collect(), "int8"),
            DecodingResult::I16(v) => (v.into_iter().map(f32::from).collect(), "int16"),
            DecodingResult::U32(v) => (v.into_iter().map(|x| x as f32).collect(), "uint32"),
            DecodingResult::I32(v) => (v.into_iter().map(|x| x as f32).collect(), "int32"),
            DecodingResult::F32(v) => (v, "float32"),
            DecodingResult::F64(v) => (v.into_iter().map(|x| x as f32).collect(), "float64"),
            _ => return Err(DataError::format(path, "unsupported TIFF sample format")),
        };
        if values.len() != w * h * channels {
            return Err(DataError::format(
                path,
                format!("page {} holds {} values, expected {}", pages.len() + 1, values.len(), w * h * channels),
            ));
        }
        dtype = t;
        pages.push(values);
        if !dec.more_images() {
            break;
        }
        dec.next_image().map_err(fail)?;
    }
    let n_pages = pages.len();
    let plane = w * h;
    let keep = channels.min(3);
    let mut data = vec![0f32; keep * plane * n_pages];
    for (z, page) in pages.iter().enumerate() {
        for p in 0..plane {
            for c in 0..keep {
                data[(c * n_pages + z) * plane + p] = page[p * channels + c];
            }
        }
    }
    let (data, keep) = if keep == 3 && is_grey(&data, plane * n_pages) { (data[..plane * n_pages].to_vec(), 1) } else { (data, keep) };
    let shape = if n_pages > 1 { vec![w, h, n_pages] } else { vec![w, h] };
    Image::new(data, shape, keep, ITK_2D_AFFINE, dtype).map_err(|e| DataError::format(path, e.to_string()))
}

/// Writes a 2D image (one grey or three RGB channels) as PNG or TIFF, 8-bit when every value is an integer in
/// 0–255 and the source type is 8-bit, else 16-bit (values rounded and clamped to 0–65535). Atomic.
pub fn save_2d(path: &Path, img: &Image) -> Result<()> {
    let (w, h) = match img.shape() {
        [w, h] | [w, h, 1] => (*w, *h),
        s => return Err(DataError::format(path, format!("a {}-D image of shape {s:?} cannot be written as a 2D file", s.len()))),
    };
    let fmt = match Format::from_path(path) {
        Some(Format::Png) => image::ImageFormat::Png,
        Some(Format::Tiff) => image::ImageFormat::Tiff,
        _ => return Err(DataError::format(path, "2D output must be .png, .tif or .tiff")),
    };
    let eight = img.dtype() == "uint8" && img.data().iter().all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0);
    let n = w * h;
    let interleave =
        |c: usize| -> Vec<f32> { (0..n).flat_map(|p| (0..c).map(move |k| (p, k))).map(|(p, k)| img.data()[k * n + p]).collect() };
    let dynimg = match (img.channels(), eight) {
        (1, true) => image::DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(w as u32, h as u32, img.data().iter().map(|&v| v as u8).collect())
                .ok_or_else(|| DataError::Invalid("buffer size".into()))?,
        ),
        (1, false) => image::DynamicImage::ImageLuma16(
            image::ImageBuffer::from_raw(w as u32, h as u32, img.data().iter().map(|&v| v.round().clamp(0.0, 65535.0) as u16).collect())
                .ok_or_else(|| DataError::Invalid("buffer size".into()))?,
        ),
        (3, true) => image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(w as u32, h as u32, interleave(3).into_iter().map(|v| v as u8).collect())
                .ok_or_else(|| DataError::Invalid("buffer size".into()))?,
        ),
        (3, false) => image::DynamicImage::ImageRgb16(
            image::ImageBuffer::from_raw(
                w as u32,
                h as u32,
                interleave(3).into_iter().map(|v| v.round().clamp(0.0, 65535.0) as u16).collect(),
            )
            .ok_or_else(|| DataError::Invalid("buffer size".into()))?,
        ),
        (c, _) => return Err(DataError::format(path, format!("{c} channels cannot be written as a 2D file"))),
    };
    let mut bytes = std::io::Cursor::new(Vec::new());
    dynimg.write_to(&mut bytes, fmt).map_err(|e| DataError::format(path, format!("cannot encode: {e}")))?;
    write_atomic(path, &bytes.into_inner())
}

/// Reads a PNG, JPEG or TIFF image: 8- or 16-bit grey (one channel) or RGB/RGBA (three channels, alpha dropped).
/// Palette or RGB images whose channels are all equal are read as grey.
///
/// Values keep their stored range (0–255 or 0–65535). The affine places pixel `(column, row)` as ITK does (unit
/// spacing, origin 0, identity direction in LPS), expressed in RAS+.
pub fn load_2d(path: &Path) -> Result<Image> {
    let reader =
        image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    let len = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?.len();
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(decode_budget(len));
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
    Image::new(data, vec![w, h], channels, ITK_2D_AFFINE, dtype).map_err(|e| DataError::format(path, e.to_string()))
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
    std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per process and per call, so threads writing the same file never share a temp file.
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp{}-{serial}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::write(path, e));
    }
    Ok(())
}
