//! An image or volume together with its geometry.
use crate::{DataError, Result};

/// A 4×4 homogeneous matrix mapping voxel indices `(i, j, k, 1)` to world coordinates in millimetres (RAS+).
pub type Affine = [[f64; 4]; 4];

/// Voxel or pixel values with the geometry that places them in the world.
///
/// Values are stored as `f32` with the first spatial axis varying fastest (NIfTI's and ITK's order) and channels
/// slowest, so a 2D image of `shape = [w, h]` with `c` channels is exactly a row-major `[c, h, w]` tensor.
/// The affine always has 4×4 form: a 2D image uses its first two columns and an identity third axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    data: Vec<f32>,
    shape: Vec<usize>,
    channels: usize,
    affine: Affine,
    dtype: String,
}

/// The identity affine.
pub const IDENTITY: Affine = [[1., 0., 0., 0.], [0., 1., 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]];

impl Image {
    /// An image of `shape` (spatial, first axis fastest) with `channels` channels.
    ///
    /// `data.len()` must equal the product of `shape` times `channels`; `dtype` names the stored type of the
    /// source (`"uint8"`, `"int16"`, `"float32"`, …).
    pub fn new(data: Vec<f32>, shape: Vec<usize>, channels: usize, affine: Affine, dtype: &str) -> Result<Self> {
        if shape.is_empty() || shape.len() > 3 {
            return Err(DataError::Invalid(format!("an image has 1 to 3 spatial axes, not {}", shape.len())));
        }
        let n = shape.iter().try_fold(channels, |acc, &d| acc.checked_mul(d));
        if n != Some(data.len()) || channels == 0 {
            return Err(DataError::Invalid(format!("{} values do not fill shape {shape:?} with {channels} channel(s)", data.len())));
        }
        Ok(Self { data, shape, channels, affine, dtype: dtype.to_string() })
    }

    /// Spatial shape, first axis fastest.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of spatial axes (2 or 3 in practice).
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Channels (1 for grey, 3 for RGB, time points or modalities for 4D NIfTI).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of voxels in one channel.
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }

    /// All values, first axis fastest, channels slowest.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values of channel `c`.
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.voxels();
        &self.data[c * n..(c + 1) * n]
    }

    /// Consumes the image, returning its values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Voxel-to-world matrix (RAS+, millimetres).
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// Name of the stored data type of the source file.
    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// Linear index of a voxel (channel 0).
    fn index(&self, idx: &[usize]) -> usize {
        let mut stride = 1;
        let mut at = 0;
        for (i, (&x, &d)) in idx.iter().zip(&self.shape).enumerate() {
            assert!(x < d, "index {x} out of bounds {d} on axis {i}");
            at += x * stride;
            stride *= d;
        }
        at
    }

    /// Value at spatial index `idx` of channel 0. Panics when out of bounds.
    pub fn get(&self, idx: &[usize]) -> f32 {
        self.data[self.index(idx)]
    }

    /// Value at spatial index `idx` of channel `c`. Panics when out of bounds.
    pub fn get_c(&self, idx: &[usize], c: usize) -> f32 {
        self.data[c * self.voxels() + self.index(idx)]
    }

    /// Voxel size along each spatial axis: the length of the affine's corresponding column.
    pub fn spacing(&self) -> Vec<f64> {
        (0..self.ndim()).map(|a| column_norm(&self.affine, a)).collect()
    }

    /// World position of voxel `(0, 0, 0)`.
    pub fn origin(&self) -> [f64; 3] {
        [self.affine[0][3], self.affine[1][3], self.affine[2][3]]
    }

    /// Unit direction of each voxel axis in world space (columns of the affine, normalised).
    pub fn direction(&self) -> [[f64; 3]; 3] {
        let mut d = [[0.0; 3]; 3];
        for a in 0..3 {
            let n = column_norm(&self.affine, a);
            for (r, row) in d.iter_mut().enumerate() {
                row[a] = if n > 0.0 { self.affine[r][a] / n } else { 0.0 };
            }
        }
        d
    }

    /// World coordinate of a (possibly fractional) voxel index.
    pub fn world(&self, idx: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        let mut w = [0.0; 3];
        for (r, out) in w.iter_mut().enumerate() {
            *out = a[r][0] * idx[0] + a[r][1] * idx[1] + a[r][2] * idx[2] + a[r][3];
        }
        w
    }

    /// Axis codes (`"RAS"`, `"LPS"`, `"LP"` for a 2D image…) of the spatial axes, as nibabel's `aff2axcodes`.
    pub fn orientation(&self) -> String {
        orientation_codes(&self.affine)[..self.ndim()].iter().collect()
    }

    /// Replaces the stored data type name (after a conversion, for example).
    pub fn with_dtype(mut self, dtype: &str) -> Self {
        self.dtype = dtype.to_string();
        self
    }

    /// Minimum and maximum over all values (ignoring NaN); `(0, 0)` when there are none.
    pub fn min_max(&self) -> (f32, f32) {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &v in &self.data {
            if v < lo {
                lo = v;
            }
            if v > hi {
                hi = v;
            }
        }
        if lo > hi { (0.0, 0.0) } else { (lo, hi) }
    }
}

fn column_norm(a: &Affine, col: usize) -> f64 {
    (0..3).map(|r| a[r][col] * a[r][col]).sum::<f64>().sqrt()
}

/// For each voxel axis, the world axis it runs along and its sign, as a code letter: `R`/`L`, `A`/`P`, `S`/`I`.
///
/// The strongest remaining component of the normalised direction matrix is assigned first, so every voxel axis gets
/// a distinct world axis (nibabel's `io_orientation` for non-degenerate affines).
pub fn orientation_codes(affine: &Affine) -> [char; 3] {
    let mut m = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let n = column_norm(affine, c);
        for r in 0..3 {
            m[r][c] = if n > 0.0 { affine[r][c] / n } else { 0.0 };
        }
    }
    let mut codes = ['?'; 3];
    let mut used_rows = [false; 3];
    let mut used_cols = [false; 3];
    for _ in 0..3 {
        let mut best = (0usize, 0usize, -1.0f64);
        for r in 0..3 {
            for c in 0..3 {
                if !used_rows[r] && !used_cols[c] && m[r][c].abs() > best.2 {
                    best = (r, c, m[r][c].abs());
                }
            }
        }
        let (r, c, _) = best;
        used_rows[r] = true;
        used_cols[c] = true;
        let positive = m[r][c] >= 0.0;
        codes[c] = match (r, positive) {
            (0, true) => 'R',
            (0, false) => 'L',
            (1, true) => 'A',
            (1, false) => 'P',
            (_, true) => 'S',
            (_, false) => 'I',
        };
    }
    codes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_from_affine() {
        let a: Affine = [[-2., 0., 0., 10.], [0., 0., 3., -5.], [0., 1., 0., 7.], [0., 0., 0., 1.]];
        let img = Image::new(vec![0.0; 24], vec![2, 3, 4], 1, a, "float32").unwrap();
        assert_eq!(img.spacing(), vec![2.0, 1.0, 3.0]);
        assert_eq!(img.orientation(), "LSA");
        assert_eq!(img.origin(), [10.0, -5.0, 7.0]);
        assert_eq!(img.world([1.0, 2.0, 1.0]), [8.0, -2.0, 9.0]);
    }

    #[test]
    fn shape_must_match_values() {
        assert!(Image::new(vec![0.0; 5], vec![2, 3], 1, IDENTITY, "uint8").is_err());
        assert!(Image::new(vec![0.0; 12], vec![2, 3], 2, IDENTITY, "uint8").is_ok());
        assert!(Image::new(vec![], vec![usize::MAX, 3], 1, IDENTITY, "uint8").is_err());
    }

    #[test]
    fn first_axis_is_fastest_and_channels_slowest() {
        let img = Image::new((0..12).map(|v| v as f32).collect(), vec![3, 2], 2, IDENTITY, "uint8").unwrap();
        assert_eq!(img.get(&[2, 1]), 5.0);
        assert_eq!(img.get_c(&[1, 0], 1), 7.0);
        assert_eq!(img.channel(1), &[6., 7., 8., 9., 10., 11.]);
    }
}
