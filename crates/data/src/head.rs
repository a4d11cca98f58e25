//! Generation labels around an organ, for synthesis-based training when the training images show the organ only.
//!
//! Label-map-driven synthesis (SynthSeg, SynthStrip) needs a label for every structure an image may show. A
//! skull-stripped template such as the MNI152 T1 has a brain and nothing around it, so a model trained on it learns
//! that whatever is not dark is brain, and on a real head it takes in the scalp. [`head_layers`] gives such a label
//! map a head: the grid grows by a margin (and further on the inferior side), and the voxels outside the organ get
//! generation labels from their distance to it, as the layers of a head lie around a brain:
//!
//! | value | structure | where |
//! |---|---|---|
//! | `first` | fluid inside the organ | unlabelled voxels the organ encloses (ventricles around tissue labels) |
//! | `first + 1` | fluid | within `fluid` mm of the organ |
//! | `first + 2` | bone | the next `bone` mm |
//! | `first + 3` | scalp | the next `scalp` mm, and a `scalp`-mm skin over the tissue below |
//! | `first + 4 …` | face and neck tissue | below the organ, down to `neck` mm under its lowest voxel, split into `tissues` classes by a smooth random field of `blob`-mm features |
//! | 0 | air | everything else |
//!
//! The task's labels are kept. [`crate::transforms::Transform::SynthesiseFromLabels`] then draws every class's
//! intensity at random, the spatial and degradation transforms do the rest, and
//! [`crate::transforms::Transform::BackgroundFrom`] turns the generation labels back into background before the
//! loss sees them. The layers follow the organ's outline; their thicknesses vary after the random deformation, and
//! neighbouring layers often draw similar intensities, so the apparent thickness of each varies from sample to sample.
//!
//! ```
//! use vesalius_data::head::{HeadLayers, head_layers};
//! use vesalius_data::transforms::Subject;
//! use vesalius_data::{Image, IDENTITY};
//! // A 40 mm ball of "brain" in a 64 mm cube of 2 mm voxels.
//! let n = 32;
//! let mut label = vec![0f32; n * n * n];
//! for (i, v) in label.iter_mut().enumerate() {
//!     let (x, y, z) = ((i % n) as f64 - 15.5, (i / n % n) as f64 - 15.5, (i / (n * n)) as f64 - 15.5);
//!     if (x * x + y * y + z * z).sqrt() * 2.0 < 20.0 { *v = 1.0; }
//! }
//! let mut affine = IDENTITY;
//! for a in 0..3 { affine[a][a] = 2.0; }
//! let image = Image::new(label.clone(), vec![n, n, n], 1, affine, "float32").unwrap();
//! let label = Image::new(label, vec![n, n, n], 1, affine, "uint8").unwrap();
//! let out = head_layers(Subject::with_label(image, label).unwrap(), &HeadLayers::default()).unwrap();
//! let labels = out.label.unwrap();
//! assert!(labels.shape()[2] > n); // room for the layers and the neck
//! let count = |v: f32| labels.data().iter().filter(|&&l| l == v).count();
//! assert!(count(1.0) > 0 && count(3.0) > 0 && count(4.0) > 0 && count(5.0) > 0); // brain, fluid, bone, scalp
//! ```
use crate::transforms::Subject;
use crate::{DataError, Image, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
pub use vesalius_io::geometry::fill_holes;
use vesalius_io::geometry::{self, distance_map};

/// Settings of [`head_layers`]; lengths in millimetres.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadLayers {
    /// Margin added on every side of the grid.
    pub pad: f64,
    /// Thickness of the fluid layer against the organ.
    pub fluid: f64,
    /// Thickness of the bone layer.
    pub bone: f64,
    /// Thickness of the scalp layer.
    pub scalp: f64,
    /// How far the head goes on below the organ's lowest voxel (face and neck); the grid grows to hold it.
    pub neck: f64,
    /// Classes the tissue below the organ is split into.
    pub tissues: usize,
    /// Feature size of the random field that splits that tissue.
    pub blob: f64,
    /// First generation label; it must exceed every label of the task.
    pub first: u32,
    /// Seed of the random field.
    pub seed: u64,
}

impl Default for HeadLayers {
    fn default() -> Self {
        Self { pad: 24.0, fluid: 3.0, bone: 7.0, scalp: 6.0, neck: 48.0, tissues: 3, blob: 16.0, first: 2, seed: 0 }
    }
}

impl HeadLayers {
    fn check(&self) -> Result<()> {
        let lengths = [("pad", self.pad), ("fluid", self.fluid), ("bone", self.bone), ("scalp", self.scalp), ("neck", self.neck)];
        if let Some((name, v)) = lengths.iter().find(|(_, v)| !(v.is_finite() && (0.0..=500.0).contains(v))) {
            return Err(DataError::Invalid(format!("head_layers: {name} must lie in 0..=500 mm, not {v}")));
        }
        if !(1..=16).contains(&self.tissues) {
            return Err(DataError::Invalid(format!("head_layers: tissues must lie in 1..=16, not {}", self.tissues)));
        }
        if !(self.blob.is_finite() && self.blob > 0.0) {
            return Err(DataError::Invalid(format!("head_layers: blob must be a positive length, not {}", self.blob)));
        }
        if self.first == 0 || self.first as usize + 4 + self.tissues > 255 {
            return Err(DataError::Invalid(format!("head_layers: first must lie in 1..={}, not {}", 251 - self.tissues, self.first)));
        }
        Ok(())
    }
}

/// The voxel axis closest to the world's superior direction, and whether indices grow upwards along it.
fn superior_axis(image: &Image) -> (usize, bool) {
    let a = image.affine();
    let axis = (0..3).max_by(|&i, &j| a[2][i].abs().total_cmp(&a[2][j].abs())).unwrap_or(2);
    (axis, a[2][axis] >= 0.0)
}

/// A smooth random field in [0, 1): uniform values on a lattice of `blob`-mm cells, trilinearly interpolated.
fn smooth_field(shape: [usize; 3], spacing: [f64; 3], blob: f64, seed: u64) -> Vec<f64> {
    let cells: Vec<usize> = (0..3).map(|a| (shape[a] as f64 * spacing[a] / blob).ceil() as usize + 2).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lattice: Vec<f64> = (0..cells.iter().product::<usize>()).map(|_| rng.random::<f64>()).collect();
    let at = |i: usize, j: usize, k: usize| lattice[(k * cells[1] + j) * cells[0] + i];
    let mut out = Vec::with_capacity(shape.iter().product());
    for z in 0..shape[2] {
        for y in 0..shape[1] {
            for x in 0..shape[0] {
                let p = [x as f64 * spacing[0] / blob, y as f64 * spacing[1] / blob, z as f64 * spacing[2] / blob];
                let (i, j, k) = (p[0] as usize, p[1] as usize, p[2] as usize);
                let (u, v, w) = (p[0] - i as f64, p[1] - j as f64, p[2] - k as f64);
                let mut s = 0.0;
                for (dk, wk) in [(0, 1.0 - w), (1, w)] {
                    for (dj, wj) in [(0, 1.0 - v), (1, v)] {
                        for (di, wi) in [(0, 1.0 - u), (1, u)] {
                            s += wi * wj * wk * at(i + di, j + dj, k + dk);
                        }
                    }
                }
                out.push(s);
            }
        }
    }
    out
}

/// Pads `subject` and labels the head around its organ (every voxel whose label is above zero) as the module
/// describes. The image is padded with its minimum; 2D subjects and subjects without labels are refused, as is a
/// label map with a value at or above `first`.
pub fn head_layers(subject: Subject, p: &HeadLayers) -> Result<Subject> {
    p.check()?;
    let label = subject.label.as_ref().ok_or_else(|| DataError::Invalid("head_layers needs a label map".into()))?;
    if subject.image.ndim() != 3 {
        return Err(DataError::Invalid(format!("head_layers needs a 3D image, not {}D", subject.image.ndim())));
    }
    if let Some(v) = label.data().iter().find(|&&v| v.round() >= p.first as f32) {
        return Err(DataError::Invalid(format!("head_layers: label value {v} is not below first = {}", p.first)));
    }
    // Grow the grid: `pad` on every side, `neck` more below.
    let spacing = subject.image.spacing();
    let (up, rising) = superior_axis(&subject.image);
    let old = subject.image.shape().to_vec();
    let mut start = vec![0i64; 3];
    let mut shape = vec![0usize; 3];
    for a in 0..3 {
        let pad = (p.pad / spacing[a]).ceil() as i64;
        let (mut lo, mut hi) = (pad, pad);
        if a == up {
            let extra = (p.neck / spacing[a]).ceil() as i64;
            if rising { lo += extra } else { hi += extra }
        }
        start[a] = -lo;
        shape[a] = (old[a] as i64 + lo + hi) as usize;
    }
    let voxels: usize = shape.iter().product();
    let lattice: f64 = (0..3).map(|a| (shape[a] as f64 * spacing[a] / p.blob).ceil() + 2.0).product();
    if voxels > 1 << 28 || !(lattice <= (1u64 << 28) as f64) {
        return Err(DataError::Invalid(format!(
            "head_layers: the padded grid {shape:?} (spacing {spacing:?} mm, blob {} mm) is too large",
            p.blob
        )));
    }
    let fill = subject.image.data().iter().copied().fold(f32::INFINITY, f32::min);
    let image = geometry::crop_or_pad(&subject.image, &start, &shape, if fill.is_finite() { fill } else { 0.0 })?;
    let label = geometry::crop_or_pad(label, &start, &shape, 0.0)?;
    let dims = [shape[0], shape[1], shape[2]];
    let spacing = [spacing[0], spacing[1], spacing[2]];

    let organ: Vec<bool> = label.data().iter().map(|&v| v.round() > 0.0).collect();
    let filled = fill_holes(&organ, dims);
    let d = distance_map(&filled, dims, spacing);
    let (f, b, s) = (p.fluid, p.fluid + p.bone, p.fluid + p.bone + p.scalp);

    // Below the organ: in every column along the superior axis that holds organ, the voxels under its lowest organ
    // voxel, down to `neck` mm below the organ's lowest voxel overall.
    let stride = geometry::strides(&shape);
    let height = |v: usize| {
        let i = v / stride[up] % dims[up];
        if rising { i as i64 } else { (dims[up] - 1 - i) as i64 }
    };
    let column = |v: usize| v - (v / stride[up] % dims[up]) * stride[up];
    let mut lowest: std::collections::HashMap<usize, i64> = std::collections::HashMap::new();
    for v in (0..voxels).filter(|&v| filled[v]) {
        let e = lowest.entry(column(v)).or_insert(i64::MAX);
        *e = (*e).min(height(v));
    }
    let bottom = lowest.values().copied().min().unwrap_or(0);
    let floor = bottom - (p.neck / spacing[up]).round() as i64;
    let below: Vec<bool> =
        (0..voxels).map(|v| !filled[v] && lowest.get(&column(v)).is_some_and(|&l| height(v) < l && height(v) >= floor)).collect();
    let skin = distance_map(&below, dims, spacing);
    let field = smooth_field(dims, spacing, p.blob, p.seed);
    let mut tissue: Vec<f64> = (0..voxels).filter(|&v| below[v] && d[v] > s).map(|v| field[v]).collect();
    tissue.sort_by(f64::total_cmp);
    let bounds: Vec<f64> = (1..p.tissues).map(|k| tissue.get(k * tissue.len() / p.tissues).copied().unwrap_or(0.5)).collect();

    let first = p.first as f32;
    let data: Vec<f32> = (0..voxels)
        .map(|v| {
            let l = label.data()[v];
            if organ[v] {
                l
            } else if filled[v] {
                first
            } else if d[v] <= f {
                first + 1.0
            } else if d[v] <= b {
                first + 2.0
            } else if d[v] <= s {
                first + 3.0
            } else if below[v] {
                first + 4.0 + bounds.partition_point(|&q| q <= field[v]) as f32
            } else if skin[v] <= p.scalp && skin[v] > 0.0 {
                first + 3.0
            } else {
                0.0
            }
        })
        .collect();
    let label = Image::new(data, shape.clone(), 1, *label.affine(), "uint8")?;
    Subject::with_label(image, label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IDENTITY;

    fn ball(n: usize, radius_vox: f64, spacing: f64, hollow: bool) -> Subject {
        let c = (n as f64 - 1.0) / 2.0;
        let label: Vec<f32> = (0..n * n * n)
            .map(|i| {
                let (x, y, z) = ((i % n) as f64 - c, (i / n % n) as f64 - c, (i / (n * n)) as f64 - c);
                let r = (x * x + y * y + z * z).sqrt();
                if r < radius_vox && !(hollow && r < radius_vox / 3.0) { 1.0 } else { 0.0 }
            })
            .collect();
        let mut affine = IDENTITY;
        for a in 0..3 {
            affine[a][a] = spacing;
        }
        let image = Image::new(label.iter().map(|v| v * 100.0).collect(), vec![n; 3], 1, affine, "float32").unwrap();
        Subject::with_label(image, Image::new(label, vec![n; 3], 1, affine, "uint8").unwrap()).unwrap()
    }

    #[test]
    fn layers_lie_at_their_distances_and_the_world_frame_is_kept() {
        let s = ball(24, 8.0, 2.0, true);
        let p = HeadLayers { pad: 20.0, fluid: 2.0, bone: 6.0, scalp: 4.0, neck: 30.0, ..HeadLayers::default() };
        let out = head_layers(s.clone(), &p).unwrap();
        let (img, lab) = (&out.image, out.label.as_ref().unwrap());
        // 10 voxels on each side, 15 more below (the superior axis is the third, rising).
        assert_eq!(img.shape(), &[44, 44, 59]);
        // Voxel (10, 10, 25) of the new grid is voxel (0, 0, 0) of the old one: the same world point.
        let world = |m: &vesalius_io::Affine, i: [f64; 3]| -> Vec<f64> {
            (0..3).map(|r| (0..3).map(|c| m[r][c] * i[c]).sum::<f64>() + m[r][3]).collect()
        };
        assert_eq!(world(img.affine(), [10.0, 10.0, 25.0]), world(s.image.affine(), [0.0, 0.0, 0.0]));
        assert_eq!(img.get(&[22, 22, 37]), s.image.get(&[12, 12, 12]));
        assert_eq!(img.get(&[0, 0, 0]), 0.0); // padded with the minimum
        // Along +x from the centre: brain, then 1 voxel of fluid (2 mm), 3 of bone (6 mm), 2 of scalp (4 mm), air.
        let row: Vec<f32> = (0..44).map(|x| lab.get(&[x, 22, 37])).collect();
        let from = 30; // the first voxel outside the ball
        assert_eq!(row[from - 1], 1.0);
        assert_eq!(&row[from..from + 7], &[3.0, 4.0, 4.0, 4.0, 5.0, 5.0, 0.0]);
        // The cavity in the middle is enclosed fluid.
        assert_eq!(lab.get(&[22, 22, 37]), 2.0);
        // Down the central column: air, a 4 mm skin, the tissue classes (6, 7, 8) down to 30 mm below the ball's
        // lowest voxel (z = 29), the shells, the ball, the shells, air.
        let column: Vec<f32> = (0..59).map(|z| lab.get(&[22, 22, z])).collect();
        assert!(column[..12].iter().all(|&v| v == 0.0), "{column:?}");
        assert_eq!(&column[12..14], &[5.0, 5.0]);
        assert!(column[14..23].iter().all(|&v| v >= 6.0), "{column:?}");
        assert_eq!(&column[23..29], &[5.0, 5.0, 4.0, 4.0, 4.0, 3.0]);
        assert_eq!(column[29], 1.0);
        assert!(column[51..].iter().all(|&v| v == 0.0), "{column:?}");
    }

    #[test]
    fn tissue_below_is_split_into_equal_classes_by_a_seeded_field() {
        let p = HeadLayers { tissues: 4, ..HeadLayers::default() };
        let a = head_layers(ball(24, 8.0, 2.0, false), &p).unwrap();
        let b = head_layers(ball(24, 8.0, 2.0, false), &p).unwrap();
        assert_eq!(a, b);
        let lab = a.label.unwrap();
        let counts: Vec<usize> = (6..10).map(|c| lab.data().iter().filter(|&&v| v == c as f32).count()).collect();
        let total: usize = counts.iter().sum();
        assert!(total > 400, "{counts:?}");
        for c in &counts {
            assert!((*c as f64 / total as f64 - 0.25).abs() < 0.05, "{counts:?}");
        }
        let other = head_layers(ball(24, 8.0, 2.0, false), &HeadLayers { seed: 1, ..p }).unwrap();
        assert_ne!(other.label.unwrap(), lab);
    }

    #[test]
    fn bad_settings_and_labels_are_refused() {
        let s = ball(8, 2.0, 2.0, false);
        let err = |p: HeadLayers| head_layers(s.clone(), &p).unwrap_err().to_string();
        assert!(err(HeadLayers { first: 1, ..HeadLayers::default() }).contains("not below first = 1"));
        assert!(err(HeadLayers { tissues: 0, ..HeadLayers::default() }).contains("tissues"));
        assert!(err(HeadLayers { bone: -1.0, ..HeadLayers::default() }).contains("bone"));
        assert!(err(HeadLayers { blob: 0.0, ..HeadLayers::default() }).contains("blob"));
        assert!(err(HeadLayers { blob: 1e-9, ..HeadLayers::default() }).contains("too large"));
        let unlabelled = Subject::new(s.image.clone());
        assert!(head_layers(unlabelled, &HeadLayers::default()).unwrap_err().to_string().contains("label map"));
    }

    #[test]
    fn enclosed_holes_are_filled_and_open_ones_kept() {
        // A 5³ box with a closed cavity, then the same box with a tunnel to the border.
        let n = 7;
        let mut m = vec![false; n * n * n];
        for z in 1..6 {
            for y in 1..6 {
                for x in 1..6 {
                    m[(z * n + y) * n + x] = !(x == 3 && y == 3 && z == 3);
                }
            }
        }
        let f = fill_holes(&m, [n, n, n]);
        assert!(f[(3 * n + 3) * n + 3]);
        for x in 3..6 {
            m[(3 * n + 3) * n + x] = false;
        }
        let f = fill_holes(&m, [n, n, n]);
        assert!(!f[(3 * n + 3) * n + 3]);
    }
}
