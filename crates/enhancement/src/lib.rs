//! Image enhancement: denoising, super-resolution, reconstruction and synthesis.
//!
//! * [`degrade`] — seeded degradation models (low-dose CT through a sinogram, thick slices, in-plane
//!   down-sampling, under-sampled Cartesian k-space, Gaussian and Rician noise) that make training pairs and
//!   test inputs.
//! * [`metrics`] — PSNR, SSIM (2D and 3D, scikit-image's Gaussian-window definition), RMSE, MAE, NMSE.
//! * [`filters`] and [`baselines`] — the classic methods every evaluation reports beside the network.
//! * [`fft`] — 2D Fourier transforms of images.
//! * [`adapt`] — self-supervised adaptation of a super-resolution network to the thick image it enhances.
//! * [`series`] — dynamic series (frames along a fourth axis) for the temporal reconstruction network.
//!
//! ```
//! use vesalius_enhancement::{degrade::Degradation, metrics::psnr};
//! use vesalius_io::{Image, IDENTITY};
//! let clean = Image::new((0..1024).map(|i| (i % 32) as f32).collect(), vec![32, 32], 1, IDENTITY, "float32").unwrap();
//! let noisy = Degradation::Gaussian { sigma: 1.0 }.apply(&clean, 42).unwrap().image;
//! let db = psnr(noisy.data(), clean.data(), 31.0);
//! assert!((db - 20.0 * 31.0f64.log10()).abs() < 0.3); // σ = 1 noise on a range of 31
//! ```
pub mod adapt;
pub mod baselines;
#[cfg(all(feature = "flex", debug_assertions))]
#[doc(hidden)]
pub mod cpu_instances;
pub mod data;
pub mod degrade;
pub mod evaluate;
pub mod fft;
pub mod filters;
pub mod infer;
pub mod kspace;
pub mod metrics;
pub mod model;
pub mod recipe;
pub mod series;
pub mod stain;
pub mod train;

/// Serialises the unit tests that draw weights from burn's process-wide generator, so that a seeded test
/// draws the same weights however the test threads interleave.
#[cfg(test)]
pub(crate) static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Errors of the enhancement task.
#[derive(Debug, thiserror::Error)]
pub enum EnhanceError {
    /// Bad input: a file, a recipe, a parameter, a run folder.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself.
    #[error("{0}")]
    Internal(String),
}

impl From<vesalius_io::DataError> for EnhanceError {
    fn from(e: vesalius_io::DataError) -> Self {
        match e {
            vesalius_io::DataError::Write { .. } => EnhanceError::Internal(e.to_string()),
            other => EnhanceError::Input(other.to_string()),
        }
    }
}

impl From<vesalius_train::TrainError> for EnhanceError {
    fn from(e: vesalius_train::TrainError) -> Self {
        match e {
            vesalius_train::TrainError::Input(m) => EnhanceError::Input(m),
            other => EnhanceError::Internal(other.to_string()),
        }
    }
}
