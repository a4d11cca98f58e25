//! Overlap and surface metrics of label maps, in physical units: Dice, IoU, volume difference, the 95th
//! percentile Hausdorff distance and the average symmetric surface distance (as MONAI computes them: surface
//! voxels are foreground voxels with a background 6-neighbour or on the image border; distances are exact Euclidean
//! distances in millimetres from each surface voxel of one map to the nearest surface voxel of the other).
//!
//! Empty maps are defined, not NaN: with both prediction and reference empty the overlap is perfect (Dice 1,
//! distances 0); with exactly one empty, Dice is 0 and the distances are `None` (infinitely far).
//!
//! Volumes are flat slices, first axis fastest (as Vesalius images store them), with `shape` and
//! `spacing` in the same axis order; 2D maps use a third axis of length 1.
use serde::Serialize;

/// Metrics of one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Dice coefficient.
    pub dice: f64,
    /// Intersection over union.
    pub iou: f64,
    /// 95th-percentile symmetric Hausdorff distance, mm (`None` when exactly one map is empty).
    pub hd95: Option<f64>,
    /// Average symmetric surface distance, mm (`None` when exactly one map is empty).
    pub assd: Option<f64>,
    /// Predicted minus reference volume, mm³.
    pub volume_difference: f64,
    /// Reference volume, mm³.
    pub reference_volume: f64,
}

/// Dice overlap of two masks given voxel by voxel (1 when both are empty): the one Dice every task uses.
pub fn dice_of(a: impl IntoIterator<Item = bool>, b: impl IntoIterator<Item = bool>) -> f64 {
    let (mut inter, mut na, mut nb) = (0usize, 0usize, 0usize);
    for (x, y) in a.into_iter().zip(b) {
        inter += (x && y) as usize;
        na += x as usize;
        nb += y as usize;
    }
    if na + nb == 0 { 1.0 } else { 2.0 * inter as f64 / (na + nb) as f64 }
}

/// Dice overlap of the voxels equal to `label` in two label maps (1 when both lack it).
///
/// ```
/// use vesalius_eval::segmentation::dice;
/// assert_eq!(dice(&[1.0, 1.0, 0.0, 2.0], &[1.0, 0.0, 0.0, 2.0], 1.0), 2.0 / 3.0);
/// assert_eq!(dice(&[0.0, 0.0], &[0.0, 0.0], 1.0), 1.0);
/// ```
pub fn dice(a: &[f32], b: &[f32], label: f32) -> f64 {
    dice_of(a.iter().map(|&v| v == label), b.iter().map(|&v| v == label))
}

/// Dice, IoU, surface distances and volume difference of the voxels equal to `label` in `pred` and `reference`.
///
/// # Panics
/// If the slices do not hold `shape` voxels.
pub fn class_metrics(pred: &[f32], reference: &[f32], label: f32, shape: [usize; 3], spacing: [f64; 3]) -> ClassMetrics {
    let n: usize = shape.iter().product();
    assert!(pred.len() == n && reference.len() == n, "label maps must hold {n} voxels");
    let a: Vec<bool> = pred.iter().map(|&v| v == label).collect();
    let b: Vec<bool> = reference.iter().map(|&v| v == label).collect();
    let (na, nb) = (a.iter().filter(|&&x| x).count(), b.iter().filter(|&&x| x).count());
    let inter = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
    let voxel = spacing.iter().product::<f64>();
    let (dice, iou) =
        if na + nb == 0 { (1.0, 1.0) } else { (2.0 * inter as f64 / (na + nb) as f64, inter as f64 / (na + nb - inter) as f64) };
    let (hd95, assd) = match (na, nb) {
        (0, 0) => (Some(0.0), Some(0.0)),
        (0, _) | (_, 0) => (None, None),
        _ => {
            let (sa, sb) = (surface(&a, shape), surface(&b, shape));
            let (da, db) = (distance_map(&sb, shape, spacing), distance_map(&sa, shape, spacing));
            let mut ab: Vec<f64> = (0..n).filter(|&i| sa[i]).map(|i| da[i]).collect();
            let mut ba: Vec<f64> = (0..n).filter(|&i| sb[i]).map(|i| db[i]).collect();
            let assd = (ab.iter().sum::<f64>() + ba.iter().sum::<f64>()) / (ab.len() + ba.len()) as f64;
            (Some(percentile(&mut ab, 95.0).max(percentile(&mut ba, 95.0))), Some(assd))
        }
    };
    ClassMetrics { dice, iou, hd95, assd, volume_difference: (na as f64 - nb as f64) * voxel, reference_volume: nb as f64 * voxel }
}

/// Linear-interpolated percentile (numpy's default method).
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = (v.len() - 1) as f64 * q / 100.0;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Foreground voxels with a background 6-neighbour or on the border.
fn surface(mask: &[bool], [x, y, z]: [usize; 3]) -> Vec<bool> {
    let at = |i: usize, j: usize, k: usize| mask[(k * y + j) * x + i];
    let mut out = vec![false; mask.len()];
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                if !at(i, j, k) {
                    continue;
                }
                let edge = |p: usize, len: usize| len > 1 && (p == 0 || p + 1 == len);
                let background = (i > 0 && !at(i - 1, j, k))
                    || (i + 1 < x && !at(i + 1, j, k))
                    || (j > 0 && !at(i, j - 1, k))
                    || (j + 1 < y && !at(i, j + 1, k))
                    || (k > 0 && !at(i, j, k - 1))
                    || (k + 1 < z && !at(i, j, k + 1));
                out[(k * y + j) * x + i] = background || edge(i, x) || edge(j, y) || edge(k, z);
            }
        }
    }
    out
}

pub use vesalius_io::geometry::distance_map;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_matches_brute_force() {
        let shape = [7, 5, 4];
        let spacing = [0.5, 1.0, 2.5];
        let features: Vec<bool> = (0..140).map(|i| i % 17 == 3 || i == 99).collect();
        let d = distance_map(&features, shape, spacing);
        let coord = |i: usize| [(i % 7) as f64 * 0.5, ((i / 7) % 5) as f64, (i / 35) as f64 * 2.5];
        for i in 0..140 {
            let want = (0..140)
                .filter(|&j| features[j])
                .map(|j| {
                    let (a, b) = (coord(i), coord(j));
                    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((d[i] - want).abs() < 1e-9, "{i}: {} vs {want}", d[i]);
        }
    }

    #[test]
    fn two_offset_cubes_by_hand() {
        // 4×4×4 cubes in a 12³ grid, the prediction shifted by 2 voxels along x, spacing 1.5 mm along x.
        let shape = [12, 12, 12];
        let cube = |dx: usize| -> Vec<f32> {
            (0..1728)
                .map(|i| {
                    let (x, y, z) = (i % 12, (i / 12) % 12, i / 144);
                    f32::from((3 + dx..7 + dx).contains(&x) && (3..7).contains(&y) && (3..7).contains(&z))
                })
                .collect()
        };
        let m = class_metrics(&cube(2), &cube(0), 1.0, shape, [1.5, 1.0, 1.0]);
        // Overlap: 2 of 4 columns → Dice 0.5, IoU 1/3; equal volumes.
        assert!((m.dice - 0.5).abs() < 1e-12 && (m.iou - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.volume_difference, 0.0);
        assert_eq!(m.reference_volume, 64.0 * 1.5);
        // The farthest surface voxels are 2 voxels (3 mm) apart along x: HD95 = 3 mm.
        assert!((m.hd95.unwrap() - 3.0).abs() < 1e-9, "{:?}", m.hd95);
        assert!(m.assd.unwrap() > 0.0 && m.assd.unwrap() <= 3.0);
        // Identical maps: distances 0, Dice 1.
        let same = class_metrics(&cube(0), &cube(0), 1.0, shape, [1.0; 3]);
        assert_eq!((same.dice, same.hd95, same.assd), (1.0, Some(0.0), Some(0.0)));
    }

    #[test]
    fn two_ellipsoids_as_monai_computes_them() {
        // Reference values from MONAI's method (edges = mask ^ binary_erosion(mask); scipy's
        // distance_transform_edt with sampling; 95th percentile of each direction, maximum; mean of all distances):
        //   x, y, z = meshgrid(arange(20) ×3, indexing="ij"); spacing (1, 1.5, 2) mm
        //   A: ((x−9)·1)² + ((y−10)·1.5)² + ((z−9)·2)² ≤ 36;  B: ((x−11)·1)² + ((y−9)·1.5)² + ((z−10)·2)² ≤ 49
        //   → HD95 4.123105625617661, ASSD 1.767871611285159, Dice 0.595360824742268
        let shape = [20, 20, 20];
        let ball = |cx: f64, cy: f64, cz: f64, r2: f64| -> Vec<f32> {
            (0..8000)
                .map(|i| {
                    let (x, y, z) = ((i % 20) as f64, ((i / 20) % 20) as f64, (i / 400) as f64);
                    f32::from(((x - cx) * 1.0).powi(2) + ((y - cy) * 1.5).powi(2) + ((z - cz) * 2.0).powi(2) <= r2)
                })
                .collect()
        };
        let m = class_metrics(&ball(9.0, 10.0, 9.0, 36.0), &ball(11.0, 9.0, 10.0, 49.0), 1.0, shape, [1.0, 1.5, 2.0]);
        assert!((m.hd95.unwrap() - 4.123105625617661).abs() < 1e-9, "{:?}", m.hd95);
        assert!((m.assd.unwrap() - 1.767871611285159).abs() < 1e-9, "{:?}", m.assd);
        assert!((m.dice - 0.595360824742268).abs() < 1e-12);
    }

    #[test]
    fn empty_maps_are_defined() {
        let empty = vec![0.0f32; 27];
        let mut one = empty.clone();
        one[13] = 1.0;
        let both = class_metrics(&empty, &empty, 1.0, [3, 3, 3], [1.0; 3]);
        assert_eq!((both.dice, both.iou, both.hd95, both.assd), (1.0, 1.0, Some(0.0), Some(0.0)));
        let missed = class_metrics(&empty, &one, 1.0, [3, 3, 3], [1.0; 3]);
        assert_eq!((missed.dice, missed.hd95, missed.assd, missed.volume_difference), (0.0, None, None, -1.0));
        let spurious = class_metrics(&one, &empty, 1.0, [3, 3, 3], [1.0; 3]);
        assert_eq!((spurious.dice, spurious.hd95), (0.0, None));
    }
}
