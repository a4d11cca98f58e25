//! Instance label maps and binary masks to findings: one finding per instance (or connected component), with its
//! centre of mass, its box and its equivalent diameter in world LPS millimetres.
//!
//! ```
//! use vesalius_detection::instances::findings_from_instances;
//! use vesalius_io::{Image, ITK_2D_AFFINE};
//! // Two instances on a 6×4 picture (placed as a PNG is): a 2×2 square (id 1) and a single pixel (id 7).
//! let mut v = vec![0.0f32; 24];
//! for i in [0, 1, 6, 7] { v[i] = 1.0; }
//! v[6 * 3 + 5] = 7.0;
//! let img = Image::new(v, vec![6, 4], 1, ITK_2D_AFFINE, "uint8").unwrap();
//! let f = findings_from_instances(&img, "img").unwrap();
//! assert_eq!(f.len(), 2);
//! assert_eq!(f[0].centre[..2], [0.5, 0.5]); // LPS of a picture = (column, row)
//! assert_eq!(f[1].centre[..2], [5.0, 3.0]);
//! assert!((f[0].diameter_mm - 2.0 * (4.0 / std::f64::consts::PI).sqrt()).abs() < 1e-12);
//! ```
use std::collections::BTreeMap;

use vesalius_io::Image;

use crate::DetectError;
use crate::annotations::Detection;
use crate::geometry::Geometry;

/// Largest instance id accepted (ids are stored as `f32`, exact up to 2^24).
pub const MAX_INSTANCE_ID: f32 = 16_777_216.0;

struct Acc {
    n: usize,
    sum: [f64; 3],
    lo: [usize; 3],
    hi: [usize; 3],
}

/// One finding per instance id (> 0) of an instance label map, in increasing id order. Errors on a value that is
/// not a whole number in `0..=2^24`.
pub fn findings_from_instances(labels: &Image, scan: &str) -> Result<Vec<Detection>, DetectError> {
    if labels.channels() != 1 {
        return Err(DetectError::Input(format!("an instance map has one channel, not {}", labels.channels())));
    }
    let shape = grid(labels);
    let mut acc: BTreeMap<u32, Acc> = BTreeMap::new();
    for (lin, &v) in labels.data().iter().enumerate() {
        if v == 0.0 {
            continue;
        }
        if !(v > 0.0 && v <= MAX_INSTANCE_ID && v.fract() == 0.0) {
            return Err(DetectError::Input(format!("instance id {v} at voxel {lin} is not a whole number in 0..=2^24")));
        }
        add(&mut acc, v as u32, lin, shape);
    }
    finish(labels, scan, acc)
}

/// One finding per 6-connected component of the voxels above 0.5 of a binary mask, in order of first voxel.
pub fn findings_from_mask(mask: &Image, scan: &str) -> Result<Vec<Detection>, DetectError> {
    if mask.channels() != 1 {
        return Err(DetectError::Input(format!("a mask has one channel, not {}", mask.channels())));
    }
    let shape = grid(mask);
    let data = mask.data();
    let (id, _) = vesalius_io::geometry::connected_components(shape, |v| data[v] > 0.5);
    let mut acc: BTreeMap<u32, Acc> = BTreeMap::new();
    for (lin, &c) in id.iter().enumerate() {
        if c != u32::MAX {
            add(&mut acc, c, lin, shape);
        }
    }
    finish(mask, scan, acc)
}

fn grid(img: &Image) -> [usize; 3] {
    let s = img.shape();
    [s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1)]
}

fn add(acc: &mut BTreeMap<u32, Acc>, key: u32, lin: usize, shape: [usize; 3]) {
    let idx = [lin % shape[0], lin / shape[0] % shape[1], lin / (shape[0] * shape[1])];
    let a = acc.entry(key).or_insert(Acc { n: 0, sum: [0.0; 3], lo: idx, hi: idx });
    a.n += 1;
    for k in 0..3 {
        a.sum[k] += idx[k] as f64;
        a.lo[k] = a.lo[k].min(idx[k]);
        a.hi[k] = a.hi[k].max(idx[k]);
    }
}

fn finish(img: &Image, scan: &str, acc: BTreeMap<u32, Acc>) -> Result<Vec<Detection>, DetectError> {
    let g = Geometry::of(img)?;
    let sp = g.spacing();
    let ndim = img.ndim().max(2);
    let voxel: f64 = sp[..ndim].iter().product();
    Ok(acc
        .into_values()
        .map(|a| {
            let centre_idx = a.sum.map(|s| s / a.n as f64);
            let size = a.n as f64 * voxel;
            let diameter_mm =
                if ndim == 3 { (6.0 * size / std::f64::consts::PI).cbrt() } else { 2.0 * (size / std::f64::consts::PI).sqrt() };
            let bbox = g.voxel_box_to_world(a.lo.map(|v| v as f64), a.hi.map(|v| v as f64));
            let centre = g.to_world(centre_idx);
            Detection { scan: scan.to_string(), centre, diameter_mm, bbox: Some(bbox), probability: None }
        })
        .collect())
}
