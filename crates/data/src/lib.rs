//! The data pipeline on top of [`vesalius_io`]: what turns image files into training batches.
//!
//! * [`source`] lists labelled samples from a CSV manifest, a folder of class sub-folders, a MedMNIST archive or
//!   patches of a labelled volume; [`split`] assigns them to train/validation/test at patient level; [`folds`]
//!   makes patient-level k-folds; [`msd`] reads MSD / nnU-Net data set folders.
//! * [`transforms`] holds the intensity and spatial transforms and their seeded random versions; [`harmonise`]
//!   degrades images to a common quality; [`augment`] is the 2D augmentation of classification batches.
//! * [`patch`] samples patches, [`loader`] cuts and augments them on worker threads, [`cache`] keeps preprocessed
//!   volumes on disk and in memory.
//! * [`dataset`] and [`batch`] turn samples into burn datasets and batches with seeded shuffling.
//!
//! Same seed, same batches, same patches, same augmentation on any machine and with any number of threads.
//!
//! ```
//! use vesalius_data::transforms::{Pipeline, Subject, Transform};
//! use vesalius_io::{Image, IDENTITY};
//! let image = Image::new((0..64).map(|v| v as f32).collect(), vec![4, 4, 4], 1, IDENTITY, "float32").unwrap();
//! let pipeline = Pipeline { transforms: vec![Transform::RandFlip { prob: 1.0, axes: vec![0] }] };
//! let out = pipeline.apply_seeded(Subject { image, label: None }, 7).unwrap();
//! assert_eq!(out.image.get(&[0, 0, 0]), 3.0); // flipped along the first axis
//! ```

pub mod augment;
pub mod batch;
pub mod cache;
pub mod combat;
pub mod dataset;
pub mod folds;
pub mod harmonise;
pub mod head;
pub mod lesions;
pub mod loader;
pub mod msd;
pub mod patch;
pub mod response;
pub mod source;
pub mod split;
pub mod standardise;
pub mod table;
pub mod transforms;

pub use vesalius_io::{Affine, DataError, IDENTITY, Image, Result, orientation_codes};
