//! Computer-aided detection (CADe): findings as points and boxes in world millimetres, their files, and detectors.
//!
//! * [`geometry`] — the one voxel ↔ world conversion (world LPS millimetres, through the image's RAS+ affine), and
//!   the LPS/RAS frames of files.
//! * [`annotations`] — LUNA16 CSV, MONAI-style box JSON and scan lists, read and written.
//! * [`instances`] — instance label maps and binary masks to findings (centre of mass, box, equivalent diameter).
//! * [`nms`] — non-maximum suppression by box overlap or centre distance, 2D and 3D.
//! * [`evaluate`] — LUNA16 FROC/CPM reports with bootstrap intervals over scans, for files or runs, the operating
//!   point (sensitivity, precision, F1) and PNG overlays of 2D detections.
//! * [`recipe`], [`data`], [`model`], [`train`], [`infer`] — the centre-point detector (a U-Net heatmap of centres
//!   with a diameter head, CenterNet's loss) trained on the shared engine from instance maps, masks, LUNA16 CSV or
//!   inserted lesions, with held-out bands cut into tiles, hard-negative mining and sliding-window inference.
//! * [`sae`] — the stacked sparse auto-encoder patch classifier scanned over 2D images (Xu et al. 2016).
//! * [`retina`] — anchors, matching, focal and box losses and decoding of the Retina U-Net box detector.
//!
//! The evaluation (FROC and CPM as LUNA16 computes them, average precision) is `vesalius_eval::detection`.
//!
//! ```
//! use vesalius_detection::annotations::Detection;
//! use vesalius_eval::detection::{froc, FrocOptions};
//! let truth = vec![Detection::finding("scan", [10.0, 20.0, 30.0], 8.0)];
//! let marks = vec![Detection::mark("scan", [11.0, 21.0, 30.0], 8.0, 0.8)];
//! let f: Vec<_> = truth.iter().map(Detection::to_finding).collect();
//! let m: Vec<_> = marks.iter().map(Detection::to_mark).collect();
//! let curve = froc(&["scan".to_string()], &f, &[], &m, &FrocOptions::default()).unwrap();
//! assert_eq!(curve.cpm(), 1.0);
//! ```
pub mod annotations;
#[cfg(all(feature = "flex", debug_assertions))]
#[doc(hidden)]
pub mod cpu_instances;
pub mod data;
pub mod evaluate;
pub mod geometry;
pub mod infer;
pub mod instances;
pub mod model;
pub mod nms;
pub mod recipe;
pub mod retina;
pub mod sae;
pub mod train;

/// Errors of the detection task.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Bad input: a file, a recipe, a parameter, a run folder.
    #[error("{0}")]
    Input(String),
    /// A failure of the program itself.
    #[error("{0}")]
    Internal(String),
}

impl From<vesalius_io::DataError> for DetectError {
    fn from(e: vesalius_io::DataError) -> Self {
        match e {
            vesalius_io::DataError::Write { .. } => DetectError::Internal(e.to_string()),
            other => DetectError::Input(other.to_string()),
        }
    }
}

impl From<vesalius_train::TrainError> for DetectError {
    fn from(e: vesalius_train::TrainError) -> Self {
        match e {
            vesalius_train::TrainError::Input(m) => DetectError::Input(m),
            other => DetectError::Internal(other.to_string()),
        }
    }
}

impl From<vesalius_eval::EvalError> for DetectError {
    fn from(e: vesalius_eval::EvalError) -> Self {
        DetectError::Input(e.to_string())
    }
}
