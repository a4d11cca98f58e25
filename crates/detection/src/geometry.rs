//! Where a finding is: centres and boxes in world millimetres, in the LPS frame, with the one conversion to and
//! from voxel indices through an image's affine.
//!
//! Every point and box of this crate is in **world LPS millimetres** (x grows to the patient's left, y to the
//! posterior, z to the head): the frame of DICOM, ITK, SimpleITK and the LUNA16 CSV files. Images carry RAS+
//! affines (NIfTI's frame), so [`Geometry`] negates x and y on the way; files in RAS are read and written with
//! [`Frame::Ras`]. A 2D picture (PNG, TIFF) is placed as ITK places it, so its LPS coordinates are its
//! `(column, row)` pixel positions.
//!
//! ```
//! use vesalius_detection::geometry::{Frame, Geometry};
//! // A CT grid: 0.7 mm pixels, 2.5 mm slices, stored as NIfTI (RAS+) from an LPS scanner frame.
//! let affine = [[-0.7, 0.0, 0.0, 180.0], [0.0, -0.7, 0.0, 170.0], [0.0, 0.0, 2.5, -300.0], [0.0, 0.0, 0.0, 1.0]];
//! let g = Geometry::new(&affine, 3).unwrap();
//! let lps = g.to_world([10.0, 20.0, 4.0]);
//! assert_eq!(lps, [-180.0 + 7.0, -170.0 + 14.0, -290.0]);
//! let back = g.to_voxel(lps);
//! assert!((back[0] - 10.0).abs() < 1e-9 && (back[2] - 4.0).abs() < 1e-9);
//! assert_eq!(Frame::Ras.from_lps(lps), [180.0 - 7.0, 170.0 - 14.0, -290.0]);
//! ```
use serde::{Deserialize, Serialize};
use vesalius_eval::detection::Aabb;
use vesalius_io::{Affine, Image};

use crate::DetectError;

/// The world frame of coordinates in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Frame {
    /// Left-posterior-superior: DICOM, ITK, LUNA16.
    #[default]
    Lps,
    /// Right-anterior-superior: NIfTI, nibabel, MONAI's RAS affines.
    Ras,
}

impl Frame {
    /// Parses `LPS` or `RAS` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().as_str() {
            "LPS" => Some(Frame::Lps),
            "RAS" => Some(Frame::Ras),
            _ => None,
        }
    }

    /// The point given in this frame, in LPS.
    pub fn to_lps(self, p: [f64; 3]) -> [f64; 3] {
        match self {
            Frame::Lps => p,
            Frame::Ras => [-p[0], -p[1], p[2]],
        }
    }

    /// The LPS point in this frame.
    pub fn from_lps(self, p: [f64; 3]) -> [f64; 3] {
        // The conversion is its own inverse.
        self.to_lps(p)
    }
}

/// The voxel ↔ world (LPS) map of one image grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    affine: Affine,
    inverse: [[f64; 3]; 3],
    ndim: usize,
    spacing: [f64; 3],
}

impl Geometry {
    /// The map of an image with RAS+ `affine` and `ndim` spatial axes. Errors when the affine is singular.
    pub fn new(affine: &Affine, ndim: usize) -> Result<Self, DetectError> {
        let m = [0, 1, 2].map(|r| [affine[r][0], affine[r][1], affine[r][2]]);
        let inverse = vesalius_io::geometry::mat3_inv(&m).ok_or_else(|| DetectError::Input("the image affine is singular".into()))?;
        let spacing = [0, 1, 2].map(|c| (0..3).map(|r| affine[r][c] * affine[r][c]).sum::<f64>().sqrt());
        Ok(Self { affine: *affine, inverse, ndim, spacing })
    }

    /// The map of `image`'s grid.
    pub fn of(image: &Image) -> Result<Self, DetectError> {
        Self::new(image.affine(), image.ndim())
    }

    /// The RAS+ affine of the grid.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// Spatial axes of the grid (2 or 3).
    pub fn ndim(&self) -> usize {
        self.ndim
    }

    /// Voxel size along each axis in millimetres.
    pub fn spacing(&self) -> [f64; 3] {
        self.spacing
    }

    /// World LPS position of a (fractional) voxel index; the third index of a 2D grid is 0.
    pub fn to_world(&self, idx: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        let ras = [0, 1, 2].map(|r| a[r][0] * idx[0] + a[r][1] * idx[1] + a[r][2] * idx[2] + a[r][3]);
        Frame::Ras.to_lps(ras)
    }

    /// Fractional voxel index of a world LPS position.
    pub fn to_voxel(&self, lps: [f64; 3]) -> [f64; 3] {
        let ras = Frame::Ras.from_lps(lps);
        let d = [0, 1, 2].map(|r| ras[r] - self.affine[r][3]);
        let mut idx = [0, 1, 2].map(|r| self.inverse[r][0] * d[0] + self.inverse[r][1] * d[1] + self.inverse[r][2] * d[2]);
        if self.ndim == 2 {
            idx[2] = 0.0;
        }
        idx
    }

    /// The world box covering voxel boxes `[lo, hi]` (inclusive voxel indices, so the box reaches half a voxel
    /// beyond the outer centres); for an oblique grid, the axis-aligned box around the eight world corners.
    pub fn voxel_box_to_world(&self, lo: [f64; 3], hi: [f64; 3]) -> Aabb {
        let half = if self.ndim == 2 { [0.5, 0.5, 0.0] } else { [0.5; 3] };
        let mut wlo = [f64::INFINITY; 3];
        let mut whi = [f64::NEG_INFINITY; 3];
        for corner in 0..8 {
            let idx = [0, 1, 2].map(|a| if corner & (1 << a) == 0 { lo[a] - half[a] } else { hi[a] + half[a] });
            let w = self.to_world(idx);
            for a in 0..3 {
                wlo[a] = wlo[a].min(w[a]);
                whi[a] = whi[a].max(w[a]);
            }
        }
        if self.ndim == 2 {
            // A 2D box has unit depth at its plane.
            wlo[2] = 0.0;
            whi[2] = 1.0;
        }
        Aabb { lo: wlo, hi: whi }
    }

    /// The fractional voxel box covering a world box (axis-aligned around its eight corners).
    pub fn world_box_to_voxel(&self, b: &Aabb) -> ([f64; 3], [f64; 3]) {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for corner in 0..8 {
            let w = [0, 1, 2].map(|a| if corner & (1 << a) == 0 { b.lo[a] } else { b.hi[a] });
            let v = self.to_voxel(w);
            for a in 0..3 {
                lo[a] = lo[a].min(v[a]);
                hi[a] = hi[a].max(v[a]);
            }
        }
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oblique_round_trip() {
        // 30° about z, anisotropic spacing, arbitrary origin.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let affine = [[0.8 * c, -0.8 * s, 0.0, -12.5], [0.8 * s, 0.8 * c, 0.0, 40.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]];
        let g = Geometry::new(&affine, 3).unwrap();
        for idx in [[0.0, 0.0, 0.0], [10.5, -3.0, 2.25], [511.0, 511.0, 99.0]] {
            let back = g.to_voxel(g.to_world(idx));
            for a in 0..3 {
                assert!((back[a] - idx[a]).abs() < 1e-9, "{idx:?} -> {back:?}");
            }
        }
        assert!((g.spacing()[0] - 0.8).abs() < 1e-12 && (g.spacing()[2] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn singular_affine_is_an_error() {
        let mut a = vesalius_io::IDENTITY;
        a[2][2] = 0.0;
        assert!(Geometry::new(&a, 3).is_err());
    }

    #[test]
    fn voxel_boxes_reach_half_a_voxel_out() {
        let a = [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let g = Geometry::new(&a, 3).unwrap();
        let b = g.voxel_box_to_world([1.0, 1.0, 1.0], [2.0, 2.0, 1.0]);
        // RAS x in [1, 5] → LPS x in [-5, -1].
        assert_eq!(b.lo, [-5.0, -5.0, 2.5]);
        assert_eq!(b.hi, [-1.0, -1.0, 7.5]);
        let (lo, hi) = g.world_box_to_voxel(&b);
        assert_eq!((lo, hi), ([0.5, 0.5, 0.5], [2.5, 2.5, 1.5]));
    }
}
