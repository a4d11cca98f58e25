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
        } else if [".hdr", ".img", ".hdr.gz", ".img.gz"].iter().any(|e| name.ends_with(e)) {
            Format::NiftiPair
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
        Some(Format::Nifti | Format::NiftiGz | Format::NiftiPair) => load_nifti(path),
        Some(_) => load_2d(path),
        None => Err(DataError::format(
            path,
            "unknown image format (expected .nii, .nii.gz, .hdr/.img, .png, .jpg, .jpeg, .tif or .tiff)",
        )),
    }
}

/// Reads a NIfTI-1/NIfTI-2 file or an Analyze/NIfTI `.hdr`/`.img` pair (see [`crate::nifti`]).
pub fn load_nifti(path: &Path) -> Result<Image> {
    crate::nifti::load(path)
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
