//! Morphological features (`morph_*`, IBSI 3.1) from the marching-cubes mesh of the morphological mask, or, for a
//! planar ROI, from its marching-squares contour (pyradiomics' `shape2D` set).
use crate::mesh::{contour, surface};
use crate::{Features, Roi};
use std::f64::consts::PI;

/// Eigenvalues of a symmetric 3 × 3 matrix, descending (cyclic Jacobi rotations).
pub fn eigenvalues_sym3(m: [[f64; 3]; 3]) -> [f64; 3] {
    let mut a = m;
    for _ in 0..64 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        if off < 1e-30 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            let mut b = a;
            for k in 0..3 {
                b[k][p] = c * a[k][p] - s * a[k][q];
                b[k][q] = s * a[k][p] + c * a[k][q];
            }
            let mut r = b;
            for k in 0..3 {
                r[p][k] = c * b[p][k] - s * b[q][k];
                r[q][k] = s * b[p][k] + c * b[q][k];
            }
            a = r;
        }
    }
    let mut e = [a[0][0], a[1][1], a[2][2]];
    e.sort_by(|x, y| y.total_cmp(x));
    e
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Largest distance between two points (mm). Points that cannot belong to a longer pair than a first estimate
/// (their distance to the centroid plus the largest such distance falls short of it) are left out before the
/// exhaustive search among the rest.
pub fn max_diameter<const D: usize>(points: &[[f64; D]]) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let mut c = [0.0; D];
    for p in points {
        for a in 0..D {
            c[a] += p[a] / points.len() as f64;
        }
    }
    let r: Vec<f64> = points.iter().map(|p| dist2(p, &c).sqrt()).collect();
    let rmax = r.iter().cloned().fold(0.0, f64::max);
    // first estimate: farthest from the centroid, then farthest from that, twice
    let mut a = r.iter().enumerate().fold(0, |b, (i, &v)| if v > r[b] { i } else { b });
    let mut best = 0.0f64;
    for _ in 0..3 {
        let (far, d) = points.iter().enumerate().fold((a, 0.0), |(bi, bd), (i, p)| {
            let d = dist2(p, &points[a]);
            if d > bd { (i, d) } else { (bi, bd) }
        });
        best = best.max(d.sqrt());
        a = far;
    }
    let cand: Vec<&[f64; D]> = points.iter().zip(&r).filter(|(_, ri)| **ri + rmax >= best - 1e-9).map(|(p, _)| p).collect();
    let mut best2 = best * best;
    for i in 0..cand.len() {
        for j in i + 1..cand.len() {
            best2 = best2.max(dist2(cand[i], cand[j]));
        }
    }
    best2.sqrt()
}

/// Principal-axis variances of points (covariance normalised by N − 1, as IBSI's reference values use), descending.
fn pca(points: &[[f64; 3]]) -> [f64; 3] {
    let n = points.len() as f64;
    let mut mu = [0.0; 3];
    for p in points {
        for a in 0..3 {
            mu[a] += p[a] / n;
        }
    }
    let mut cov = [[0.0; 3]; 3];
    for p in points {
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += (p[i] - mu[i]) * (p[j] - mu[j]) / (n - 1.0).max(1.0);
            }
        }
    }
    eigenvalues_sym3(cov)
}

fn centre_shift(roi: &Roi, pos: impl Fn(usize) -> [f64; 3]) -> f64 {
    let (mut g, mut ng) = ([0.0; 3], 0.0);
    let (mut w, mut nw) = ([0.0; 3], 0.0);
    for i in 0..roi.morph.len() {
        let p = pos(i);
        if roi.morph[i] {
            ng += 1.0;
            for a in 0..3 {
                g[a] += p[a];
            }
        }
        if roi.intensity[i] {
            nw += roi.values[i];
            for a in 0..3 {
                w[a] += roi.values[i] * p[a];
            }
        }
    }
    if nw == 0.0 {
        return f64::NAN;
    }
    (0..3).map(|a| (g[a] / ng - w[a] / nw).powi(2)).sum::<f64>().sqrt()
}

/// `morph_*`. In 3D: mesh volume `vol`, voxel-counting volume `approx_vol`, `area`, surface-to-volume ratio `av`,
/// compactness 1 and 2, spherical disproportion, sphericity, asphericity, centre-of-mass shift `com`, maximum 3D
/// diameter `diam` and the largest in-plane diameters `diam_xy`, `diam_xz`, `diam_yz` (pyradiomics' slice, column
/// and row diameters), principal-axis lengths (4·√λ), elongation, flatness, volume and area density of the
/// axis-aligned bounding box, and integrated intensity. For a planar ROI: contour `area`, pixel-counting
/// `approx_area`, `perimeter`, perimeter-to-area ratio `pa`, sphericity (2√(πA)/P), spherical disproportion,
/// `com`, `diam`, principal-axis lengths and elongation, integrated intensity.
pub fn morphology(roi: &Roi, out: &mut Features) {
    let [nx, ny, _] = roi.shape;
    let sp = roi.spacing;
    let pos = |i: usize| [(i % nx) as f64 * sp[0], ((i / nx) % ny) as f64 * sp[1], (i / (nx * ny)) as f64 * sp[2]];
    let centres: Vec<[f64; 3]> = (0..roi.morph.len()).filter(|&i| roi.morph[i]).map(pos).collect();
    let voxel = sp[0] * sp[1] * if roi.planar { 1.0 } else { sp[2] };
    let mean_int = roi.intensities().iter().sum::<f64>() / roi.intensity.iter().filter(|&&m| m).count() as f64;
    let lam = pca(&centres);
    let axis = |l: f64| 4.0 * l.max(0.0).sqrt();
    let m = "morph";
    if roi.planar {
        let c = contour(&roi.morph, roi.shape, sp);
        let (a, p) = (c.area(), c.perimeter());
        out.push(m, "area", a);
        out.push(m, "approx_area", centres.len() as f64 * voxel);
        out.push(m, "perimeter", p);
        out.push(m, "pa", p / a);
        out.push(m, "sphericity", 2.0 * (PI * a).sqrt() / p);
        out.push(m, "sph_dispr", p / (2.0 * (PI * a).sqrt()));
        out.push(m, "com", centre_shift(roi, pos));
        out.push(m, "diam", max_diameter(&c.vertices));
        out.push(m, "pca_major", axis(lam[0]));
        out.push(m, "pca_minor", axis(lam[1]));
        out.push(m, "pca_elongation", if lam[0] > 0.0 { (lam[1] / lam[0]).sqrt() } else { 0.0 });
        out.push(m, "integ_int", mean_int * a);
        return;
    }
    let mesh = surface(&roi.morph, roi.shape, sp);
    let (v, a) = (mesh.volume(), mesh.area());
    out.push(m, "vol", v);
    out.push(m, "approx_vol", centres.len() as f64 * voxel);
    out.push(m, "area", a);
    out.push(m, "av", a / v);
    out.push(m, "comp_1", v / (PI.sqrt() * a.powf(1.5)));
    out.push(m, "comp_2", 36.0 * PI * v * v / a.powi(3));
    out.push(m, "sph_dispr", a / (36.0 * PI * v * v).cbrt());
    out.push(m, "sphericity", (36.0 * PI * v * v).cbrt() / a);
    out.push(m, "asphericity", (a.powi(3) / (36.0 * PI * v * v)).cbrt() - 1.0);
    out.push(m, "com", centre_shift(roi, pos));
    out.push(m, "diam", max_diameter(&mesh.vertices));
    for (name, fixed, keep) in [("diam_xy", 2, [0, 1]), ("diam_xz", 1, [0, 2]), ("diam_yz", 0, [1, 2])] {
        let mut groups: std::collections::BTreeMap<i64, Vec<[f64; 2]>> = Default::default();
        for p in &mesh.vertices {
            groups.entry((2.0 * p[fixed] / sp[fixed]).round() as i64).or_default().push([p[keep[0]], p[keep[1]]]);
        }
        out.push(m, name, groups.values().map(|g| max_diameter(g)).fold(0.0, f64::max));
    }
    out.push(m, "pca_major", axis(lam[0]));
    out.push(m, "pca_minor", axis(lam[1]));
    out.push(m, "pca_least", axis(lam[2]));
    out.push(m, "pca_elongation", if lam[0] > 0.0 { (lam[1] / lam[0]).sqrt() } else { 0.0 });
    out.push(m, "pca_flatness", if lam[0] > 0.0 { (lam[2] / lam[0]).sqrt() } else { 0.0 });
    let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for p in &mesh.vertices {
        for k in 0..3 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let e: Vec<f64> = (0..3).map(|k| hi[k] - lo[k]).collect();
    out.push(m, "v_dens_aabb", v / (e[0] * e[1] * e[2]));
    out.push(m, "a_dens_aabb", a / (2.0 * (e[0] * e[1] + e[1] * e[2] + e[0] * e[2])));
    out.push(m, "integ_int", mean_int * v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenvalues_of_a_rotated_diagonal_matrix() {
        // R diag(9, 4, 1) Rᵀ with R a rotation about z by 30°
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let m =
            [[9.0 * c * c + 4.0 * s * s, (9.0 - 4.0) * c * s, 0.0], [(9.0 - 4.0) * c * s, 9.0 * s * s + 4.0 * c * c, 0.0], [0.0, 0.0, 1.0]];
        let e = eigenvalues_sym3(m);
        for (got, want) in e.iter().zip([9.0, 4.0, 1.0]) {
            assert!((got - want).abs() < 1e-9, "{e:?}");
        }
    }

    #[test]
    fn diameter_of_points_on_a_circle_matches_brute_force() {
        let pts: Vec<[f64; 2]> = (0..200)
            .map(|k| {
                let t = k as f64 * 0.1;
                [3.0 * t.cos() + 0.01 * k as f64, 2.0 * t.sin()]
            })
            .collect();
        let mut brute = 0.0f64;
        for a in &pts {
            for b in &pts {
                brute = brute.max(dist2(a, b).sqrt());
            }
        }
        assert!((max_diameter(&pts) - brute).abs() < 1e-12);
    }
}
