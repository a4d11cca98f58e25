//! Evaluation of registrations: Jacobian determinants and folding, Dice of warped labels, target registration
//! error on landmarks, and the error of a recovered displacement against a known one.
use serde::{Deserialize, Serialize};
use vesalius_data::Image;
use vesalius_eval::segmentation::{ClassMetrics, class_metrics};

/// Statistics of the Jacobian determinant of `x ↦ x + u(x)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JacobianStats {
    /// Mean determinant.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Smallest determinant.
    pub min: f64,
    /// Largest determinant.
    pub max: f64,
    /// Percentage of voxels where the determinant is ≤ 0 (folding).
    pub folding_percent: f64,
}

/// Jacobian determinants of a displacement field in voxels, `field[c][(z·h + y)·w + x]` with components (depth,
/// height, width), by central differences (one-sided at the borders). A depth-1 field gives the 2×2 in-plane
/// determinant.
pub fn jacobian_determinants(field: &[Vec<f32>; 3], size: [usize; 3]) -> Vec<f64> {
    let [d, h, w] = size;
    let at = |c: usize, z: usize, y: usize, x: usize| field[c][(z * h + y) * w + x] as f64;
    let deriv = |c: usize, axis: usize, p: [usize; 3]| -> f64 {
        let len = [d, h, w][axis];
        if len < 2 {
            return 0.0;
        }
        let (lo, hi) = (p[axis].saturating_sub(1), (p[axis] + 1).min(len - 1));
        let mut a = p;
        let mut b = p;
        a[axis] = lo;
        b[axis] = hi;
        (at(c, b[0], b[1], b[2]) - at(c, a[0], a[1], a[2])) / (hi - lo) as f64
    };
    let slice = |z: usize, out: &mut [f64]| {
        for y in 0..h {
            for x in 0..w {
                let p = [z, y, x];
                let j = |r: usize, c: usize| if r == c { 1.0 } else { 0.0 } + deriv(r, c, p);
                out[y * w + x] = if d == 1 {
                    j(1, 1) * j(2, 2) - j(1, 2) * j(2, 1)
                } else {
                    j(0, 0) * (j(1, 1) * j(2, 2) - j(1, 2) * j(2, 1)) - j(0, 1) * (j(1, 0) * j(2, 2) - j(1, 2) * j(2, 0))
                        + j(0, 2) * (j(1, 0) * j(2, 1) - j(1, 1) * j(2, 0))
                };
            }
        }
    };
    let mut out = vec![0.0; d * h * w];
    if h * w == 0 {
        return out;
    }
    // Slices in parallel, each thread a contiguous run of them.
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(d).max(1);
    let per = d.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, block) in out.chunks_mut(per * h * w).enumerate() {
            let slice = &slice;
            s.spawn(move || {
                for (k, plane) in block.chunks_mut(h * w).enumerate() {
                    slice(t * per + k, plane);
                }
            });
        }
    });
    out
}

/// Summary of [`jacobian_determinants`].
pub fn jacobian_stats(dets: &[f64]) -> JacobianStats {
    let n = dets.len().max(1) as f64;
    let mean = dets.iter().sum::<f64>() / n;
    let std = (dets.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
    JacobianStats {
        mean,
        std,
        min: dets.iter().copied().fold(f64::INFINITY, f64::min),
        max: dets.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        folding_percent: 100.0 * dets.iter().filter(|&&d| d <= 0.0).count() as f64 / n,
    }
}

pub use vesalius_eval::segmentation::dice;

/// Mean and maximum Euclidean distance between corresponding points (e.g. landmarks mapped by a registration and
/// their targets, or recovered and true displacements at each voxel).
pub fn point_errors(a: &[[f64; 3]], b: &[[f64; 3]]) -> (f64, f64) {
    let dists: Vec<f64> =
        a.iter().zip(b).map(|(p, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()).collect();
    let n = dists.len().max(1) as f64;
    (dists.iter().sum::<f64>() / n, dists.iter().copied().fold(0.0, f64::max))
}

/// Metrics of every non-zero label of `reference` (a label map on the fixed grid) against `moved` (labels carried
/// to the same grid), in millimetres from the reference's spacing.
pub fn label_metrics(moved: &Image, reference: &Image) -> Vec<(i64, ClassMetrics)> {
    let s = reference.shape();
    let shape = [s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1)];
    let sp = reference.spacing();
    let spacing = [sp[0], sp.get(1).copied().unwrap_or(1.0), sp.get(2).copied().unwrap_or(1.0)];
    let n = reference.voxels();
    let mut labels: Vec<i64> = reference.data()[..n].iter().map(|&v| v.round() as i64).filter(|&v| v != 0).collect();
    labels.sort_unstable();
    labels.dedup();
    labels.into_iter().map(|l| (l, class_metrics(&moved.data()[..n], &reference.data()[..n], l as f32, shape, spacing))).collect()
}

/// Landmark pairs from a CSV file with a header and columns `fixed_x, fixed_y, fixed_z, moving_x, moving_y,
/// moving_z` (world millimetres, RAS+): each fixed landmark and where the same anatomy lies in the moving image.
pub fn read_landmarks(path: &std::path::Path) -> Result<Vec<([f64; 3], [f64; 3])>, String> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("{}: row {}: {e}", path.display(), row + 2))?;
        let v: Vec<f64> = record
            .iter()
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: row {}: {e}", path.display(), row + 2))?;
        if v.len() != 6 || v.iter().any(|x| !x.is_finite()) {
            return Err(format!("{}: row {}: six finite numbers expected", path.display(), row + 2));
        }
        out.push(([v[0], v[1], v[2]], [v[3], v[4], v[5]]));
    }
    if out.is_empty() {
        return Err(format!("{}: no landmarks", path.display()));
    }
    Ok(out)
}

/// Where a world point of the fixed image lands in the moving image's world: the point plus the displacement
/// field (`[3][d·h·w]` world mm on the fixed grid) interpolated trilinearly at it (the nearest edge value outside).
pub fn map_point(point: [f64; 3], displacement: &[Vec<f32>; 3], grid: &crate::Grid) -> [f64; 3] {
    let inv = crate::mat_inv(&grid.to_world);
    let v = [0, 1, 2].map(|r| inv[r][0] * point[0] + inv[r][1] * point[1] + inv[r][2] * point[2] + inv[r][3]);
    let [d, h, w] = grid.size;
    let clamp = |x: f64, len: usize| x.clamp(0.0, (len - 1) as f64);
    let (z, y, x) = (clamp(v[0], d), clamp(v[1], h), clamp(v[2], w));
    let (z0, y0, x0) = (z.floor() as usize, y.floor() as usize, x.floor() as usize);
    let (z1, y1, x1) = ((z0 + 1).min(d - 1), (y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (tz, ty, tx) = (z - z0 as f64, y - y0 as f64, x - x0 as f64);
    let at = |c: usize, a: usize, b: usize, e: usize| displacement[c][(a * h + b) * w + e] as f64;
    [0, 1, 2].map(|c| {
        let lerp = |a: f64, b: f64, t: f64| a + (b - a) * t;
        let plane = |a: usize| lerp(lerp(at(c, a, y0, x0), at(c, a, y0, x1), tx), lerp(at(c, a, y1, x0), at(c, a, y1, x1), tx), ty);
        point[c] + lerp(plane(z0), plane(z1), tz)
    })
}

/// Target registration error (mean and maximum, mm) of landmark pairs before registration (`|moving − fixed|`) and
/// after (`|map(fixed) − moving|`).
pub fn target_registration_error(
    pairs: &[([f64; 3], [f64; 3])],
    displacement: &[Vec<f32>; 3],
    grid: &crate::Grid,
) -> ((f64, f64), (f64, f64)) {
    let fixed: Vec<[f64; 3]> = pairs.iter().map(|p| p.0).collect();
    let moving: Vec<[f64; 3]> = pairs.iter().map(|p| p.1).collect();
    let mapped: Vec<[f64; 3]> = fixed.iter().map(|&p| map_point(p, displacement, grid)).collect();
    (point_errors(&fixed, &moving), point_errors(&mapped, &moving))
}
