//! Medical images with their geometry, for anyone who needs to read, write or reorient them — no deep-learning
//! framework involved.
//!
//! * [`Image`] holds voxel (or pixel) values together with the 4×4 affine that maps voxel indices to world
//!   coordinates (RAS+, millimetres, as nibabel reports it), plus the stored data type. Spacing, origin,
//!   direction and orientation codes are derived from the affine, so they can never disagree with it.
//! * [`load`] reads by extension (or folder, or DICOM's `DICM` code): [`nifti`] (NIfTI-1 and NIfTI-2, `.nii`,
//!   `.nii.gz`, `.hdr`/`.img`, every scalar type and RGB; also written), [`dicom`] (files and series, through
//!   dicom-rs), [`metaimage`] (`.mha`/`.mhd`), PNG/JPEG/TIFF; [`npz`] reads MedMNIST `.npz` archives without Python.
//! * [`deid`] de-identifies DICOM (PS3.15 Annex E basic profile); [`geometry`] flips, permutes, reorients, crops and
//!   resamples while keeping every voxel's world coordinate.
//! * [`write_atomic`] is the one way files are written (temporary file, `fsync`, rename).
//!
//! Every reader checks sizes declared in a header against the bytes actually present before allocating, and
//! every error names the file and the problem.
//!
//! ```
//! use vesalius_io::{self as io, Image};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("ramp.png");
//! let pixels: Vec<u8> = (0..12).map(|v| v * 20).collect();
//! image::GrayImage::from_raw(4, 3, pixels).unwrap().save(&path).unwrap();
//!
//! let img: Image = io::load(&path).unwrap();
//! assert_eq!(img.shape(), &[4, 3]); // (columns, rows): the first axis varies fastest
//! assert_eq!(img.get(&[1, 2]), 20.0 * 9.0);
//! assert_eq!(img.orientation(), "LP");  // PNG pixels as ITK places them, reported in RAS+ terms
//! ```

pub mod deid;
pub mod dicom;
mod error;
pub mod figure;
pub mod formats;
pub mod geometry;
mod image;
pub mod metaimage;
pub mod nifti;
pub mod npz;

pub use error::{DataError, Result};
pub use formats::*;
pub use image::{Affine, IDENTITY, Image, orientation_codes};

/// SplitMix64 finaliser: decorrelates seeds derived from (seed, epoch, index) and hashes UIDs.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The absolute folder that holds `path` (the folder relative paths in a recipe or manifest are read against): a
/// bare file name lies in the current folder.
///
/// ```
/// let here = std::env::current_dir().unwrap();
/// assert_eq!(vesalius_io::folder_of(std::path::Path::new("recipe.toml")), here);
/// assert_eq!(vesalius_io::folder_of(std::path::Path::new("/data/r.toml")), std::path::PathBuf::from("/data"));
/// ```
pub fn folder_of(path: &std::path::Path) -> std::path::PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}
