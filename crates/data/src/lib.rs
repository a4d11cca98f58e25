//! Medical images with their geometry, and the datasets built from them.
//!
//! * [`Image`] holds voxel (or pixel) values together with the 4×4 affine that maps voxel indices to world
//!   coordinates (RAS+, millimetres, as nibabel reports it), plus the stored data type. Spacing, origin,
//!   direction and orientation codes are derived from the affine, so they can never disagree with it.
//! * [`io`] reads NIfTI-1 and NIfTI-2 ([`nifti`]: `.nii`, `.nii.gz`, `.hdr`/`.img`, both byte orders, every
//!   scalar type and RGB; also written) and PNG/JPEG/TIFF (8- and 16-bit grey, RGB) through `image`; [`npz`] reads MedMNIST `.npz` archives without Python.
//! * [`source`] lists labelled samples from a CSV manifest, a folder of class sub-folders or a MedMNIST archive;
//!   [`split`] assigns them to train/validation/test at patient level.
//! * [`dataset`] turns samples into a burn [`Dataset`](burn::data::dataset::Dataset) of fixed-size tensors, and
//!   [`batch`] into batches with seeded shuffling and seeded 2D augmentation ([`augment`]).
//!
//! Every reader checks sizes declared in a header against the bytes actually present before allocating, and
//! every error names the file and the problem.
//!
//! ```
//! use vesalius_data::{Image, io};
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

pub mod augment;
pub mod batch;
pub mod cache;
pub mod dataset;
mod error;
mod image;
pub mod deid;
pub mod dicom;
pub mod folds;
pub mod geometry;
pub mod harmonise;
pub mod io;
pub mod loader;
pub mod metaimage;
pub mod msd;
pub mod nifti;
pub mod npz;
pub mod patch;
pub mod sliding;
pub mod source;
pub mod split;
pub mod transforms;

pub use error::{DataError, Result};
pub use image::{orientation_codes, Affine, Image, IDENTITY};
