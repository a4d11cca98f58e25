//! Texture matrices and their features: GLCM (`cm_*`, IBSI 3.6), GLRLM (`rlm_*`, 3.7), GLSZM (`szm_*`, 3.8),
//! NGTDM (`ngt_*`, 3.10) and NGLDM (`ngl_*`, 3.11; pyradiomics' GLDM).
//!
//! GLCM and GLRLM are built per direction (13 in 3D, the 4 in-plane ones for a planar ROI), at distance 1, the
//! GLCM symmetric; features are computed per direction and averaged over the directions that hold at least one
//! pair or run (IBSI's "averaged" aggregation, pyradiomics' default). Zones, neighbourhoods and dependences use
//! the 26 (3D) or 8 (planar) neighbours, counting only voxels of the intensity mask. Entropies are in bits.
use crate::{Features, Roi};
use std::collections::BTreeMap;

/// The 13 unique directions of a 26-neighbourhood (one of each opposite pair).
pub const DIRECTIONS: [[i64; 3]; 13] = [
    [1, 0, 0],
    [0, 1, 0],
    [1, 1, 0],
    [1, -1, 0],
    [0, 0, 1],
    [1, 0, 1],
    [1, 0, -1],
    [0, 1, 1],
    [0, 1, -1],
    [1, 1, 1],
    [1, 1, -1],
    [1, -1, 1],
    [1, -1, -1],
];

fn directions(roi: &Roi) -> Vec<[i64; 3]> {
    DIRECTIONS.iter().copied().filter(|d| !roi.planar || d[2] == 0).collect()
}

fn neighbours(roi: &Roi) -> Vec<i64> {
    let mut out = Vec::new();
    for dz in -1i64..=1 {
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                if (dx, dy, dz) != (0, 0, 0) && !(roi.planar && dz != 0) {
                    out.push(roi.offset([dx, dy, dz]));
                }
            }
        }
    }
    out
}

fn entropy(p: impl Iterator<Item = f64>) -> f64 {
    -p.filter(|&v| v > 0.0).map(|v| v * v.log2()).sum::<f64>()
}

/// GLCM feature names, in output order.
pub const CM: [&str; 25] = [
    "joint_max",
    "joint_avg",
    "joint_var",
    "joint_entr",
    "diff_avg",
    "diff_var",
    "diff_entr",
    "sum_avg",
    "sum_var",
    "sum_entr",
    "energy",
    "contrast",
    "dissimilarity",
    "inv_diff",
    "inv_diff_norm",
    "inv_diff_mom",
    "inv_diff_mom_norm",
    "inv_var",
    "corr",
    "auto_corr",
    "clust_tend",
    "clust_shade",
    "clust_prom",
    "info_corr_1",
    "info_corr_2",
];

/// GLCM features of a normalised matrix `p` (`ng` × `ng`, row-major, level i at index i − 1).
pub fn glcm_features(p: &[f64], ng: usize) -> [f64; 25] {
    let at = |i: usize, j: usize| p[(i - 1) * ng + (j - 1)];
    let (mut px, mut py) = (vec![0.0; ng + 1], vec![0.0; ng + 1]);
    let (mut pdiff, mut psum) = (vec![0.0; ng], vec![0.0; 2 * ng + 1]);
    let mut f = [0.0; 25];
    for i in 1..=ng {
        for j in 1..=ng {
            let v = at(i, j);
            px[i] += v;
            py[j] += v;
            pdiff[i.abs_diff(j)] += v;
            psum[i + j] += v;
        }
    }
    let mux: f64 = (1..=ng).map(|i| i as f64 * px[i]).sum();
    let muy: f64 = (1..=ng).map(|j| j as f64 * py[j]).sum();
    let sx = (1..=ng).map(|i| (i as f64 - mux).powi(2) * px[i]).sum::<f64>().sqrt();
    let sy = (1..=ng).map(|j| (j as f64 - muy).powi(2) * py[j]).sum::<f64>().sqrt();
    let (ngf, mut hxy, mut hxy1, mut hxy2) = (ng as f64, 0.0, 0.0, 0.0);
    let mut joint_max = 0.0f64;
    let (mut ijp, mut var, mut energy, mut contrast, mut dis) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut id, mut idn, mut idm, mut idmn) = (0.0, 0.0, 0.0, 0.0);
    let (mut tend, mut shade, mut prom) = (0.0, 0.0, 0.0);
    for i in 1..=ng {
        for j in 1..=ng {
            let v = at(i, j);
            let (fi, fj) = (i as f64, j as f64);
            let d = (fi - fj).abs();
            if v > 0.0 {
                hxy -= v * v.log2();
                hxy1 -= v * (px[i] * py[j]).log2();
            }
            if px[i] > 0.0 && py[j] > 0.0 {
                hxy2 -= px[i] * py[j] * (px[i] * py[j]).log2();
            }
            joint_max = joint_max.max(v);
            ijp += fi * fj * v;
            var += (fi - mux).powi(2) * v;
            energy += v * v;
            contrast += d * d * v;
            dis += d * v;
            id += v / (1.0 + d);
            idn += v / (1.0 + d / ngf);
            idm += v / (1.0 + d * d);
            idmn += v / (1.0 + d * d / (ngf * ngf));
            let c = fi + fj - mux - muy;
            tend += c * c * v;
            shade += c.powi(3) * v;
            prom += c.powi(4) * v;
        }
    }
    let diff_avg: f64 = (0..ng).map(|k| k as f64 * pdiff[k]).sum();
    let sum_avg: f64 = (2..=2 * ng).map(|k| k as f64 * psum[k]).sum();
    let hx = entropy(px.iter().copied());
    let hy = entropy(py.iter().copied());
    f[0] = joint_max;
    f[1] = mux;
    f[2] = var;
    f[3] = hxy;
    f[4] = diff_avg;
    f[5] = (0..ng).map(|k| (k as f64 - diff_avg).powi(2) * pdiff[k]).sum();
    f[6] = entropy(pdiff.iter().copied());
    f[7] = sum_avg;
    f[8] = (2..=2 * ng).map(|k| (k as f64 - sum_avg).powi(2) * psum[k]).sum();
    f[9] = entropy(psum.iter().copied());
    f[10] = energy;
    f[11] = contrast;
    f[12] = dis;
    f[13] = id;
    f[14] = idn;
    f[15] = idm;
    f[16] = idmn;
    f[17] = (1..ng).map(|k| pdiff[k] / (k * k) as f64).sum();
    f[18] = if sx * sy > 0.0 { (ijp - mux * muy) / (sx * sy) } else { 1.0 };
    f[19] = ijp;
    f[20] = tend;
    f[21] = shade;
    f[22] = prom;
    let hmax = hx.max(hy);
    f[23] = if hmax > 0.0 { (hxy - hxy1) / hmax } else { 0.0 };
    f[24] = (1.0 - (-2.0 * (hxy2 - hxy)).exp()).max(0.0).sqrt();
    f
}

fn push_average<const N: usize>(out: &mut Features, family: &str, names: &[&str; N], per_direction: &[[f64; N]]) {
    for (k, name) in names.iter().enumerate() {
        let v =
            if per_direction.is_empty() { f64::NAN } else { per_direction.iter().map(|f| f[k]).sum::<f64>() / per_direction.len() as f64 };
        out.push(family, name, v);
    }
}

/// `cm_*`: the 25 IBSI GLCM features, averaged over directions.
pub fn glcm(roi: &Roi, out: &mut Features) {
    let ng = roi.levels;
    let mut per = Vec::new();
    for d in directions(roi) {
        let off = roi.offset(d);
        let mut m = vec![0.0; ng * ng];
        let mut total = 0.0;
        for v in 0..roi.grey.len() {
            let i = roi.grey[v] as usize;
            if i == 0 {
                continue;
            }
            let w = (v as i64 + off) as usize;
            let j = roi.grey[w] as usize;
            if j == 0 {
                continue;
            }
            m[(i - 1) * ng + (j - 1)] += 1.0;
            m[(j - 1) * ng + (i - 1)] += 1.0;
            total += 2.0;
        }
        if total > 0.0 {
            m.iter_mut().for_each(|x| *x /= total);
            per.push(glcm_features(&m, ng));
        }
    }
    push_average(out, "cm", &CM, &per);
}

/// Feature names of run-length-like matrices (GLRLM runs, GLSZM zones, NGLDM dependences), in output order.
pub const RLM: [&str; 16] = [
    "sre",
    "lre",
    "lgre",
    "hgre",
    "srlge",
    "srhge",
    "lrlge",
    "lrhge",
    "glnu",
    "glnu_norm",
    "rlnu",
    "rlnu_norm",
    "r_perc",
    "gl_var",
    "rl_var",
    "rl_entr",
];
/// GLSZM feature names.
pub const SZM: [&str; 16] = [
    "sze",
    "lze",
    "lgze",
    "hgze",
    "szlge",
    "szhge",
    "lzlge",
    "lzhge",
    "glnu",
    "glnu_norm",
    "zsnu",
    "zsnu_norm",
    "z_perc",
    "gl_var",
    "zs_var",
    "zs_entr",
];
/// NGLDM feature names.
pub const NGL: [&str; 17] = [
    "lde",
    "hde",
    "lgce",
    "hgce",
    "ldlge",
    "ldhge",
    "hdlge",
    "hdhge",
    "glnu",
    "glnu_norm",
    "dcnu",
    "dcnu_norm",
    "dc_perc",
    "gl_var",
    "dc_var",
    "dc_entr",
    "dc_energy",
];

/// The features shared by run-length, size-zone and dependence matrices: `m[(i, j)]` counts grey level `i` with
/// run length / zone size / dependence `j`; `nv` is the number of voxels. The 17th value is the energy Σ p².
pub fn run_features(m: &BTreeMap<(u32, u32), f64>, nv: f64) -> [f64; 17] {
    let ns: f64 = m.values().sum();
    let mut f = [0.0; 17];
    if ns == 0.0 {
        return [f64::NAN; 17];
    }
    let (mut ri, mut rj): (BTreeMap<u32, f64>, BTreeMap<u32, f64>) = Default::default();
    let (mut mu_i, mut mu_j) = (0.0, 0.0);
    for (&(i, j), &c) in m {
        let (fi, fj) = (i as f64, j as f64);
        *ri.entry(i).or_default() += c;
        *rj.entry(j).or_default() += c;
        f[0] += c / (fj * fj);
        f[1] += c * fj * fj;
        f[2] += c / (fi * fi);
        f[3] += c * fi * fi;
        f[4] += c / (fi * fi * fj * fj);
        f[5] += c * fi * fi / (fj * fj);
        f[6] += c * fj * fj / (fi * fi);
        f[7] += c * fi * fi * fj * fj;
        mu_i += fi * c / ns;
        mu_j += fj * c / ns;
    }
    for k in 0..8 {
        f[k] /= ns;
    }
    let gl: f64 = ri.values().map(|c| c * c).sum();
    let rl: f64 = rj.values().map(|c| c * c).sum();
    f[8] = gl / ns;
    f[9] = gl / (ns * ns);
    f[10] = rl / ns;
    f[11] = rl / (ns * ns);
    f[12] = ns / nv;
    for (&(i, j), &c) in m {
        let p = c / ns;
        f[13] += (i as f64 - mu_i).powi(2) * p;
        f[14] += (j as f64 - mu_j).powi(2) * p;
        f[16] += p * p;
    }
    f[15] = entropy(m.values().map(|c| c / ns));
    f
}

/// `rlm_*`: the 16 IBSI GLRLM features, averaged over directions.
pub fn glrlm(roi: &Roi, out: &mut Features) {
    let nv = roi.grey.iter().filter(|&&g| g > 0).count() as f64;
    let mut per = Vec::new();
    for d in directions(roi) {
        let off = roi.offset(d);
        let mut m: BTreeMap<(u32, u32), f64> = BTreeMap::new();
        for v in 0..roi.grey.len() {
            let g = roi.grey[v];
            if g == 0 || roi.grey[(v as i64 - off) as usize] == g {
                continue;
            }
            let mut len = 1u32;
            let mut w = v as i64 + off;
            while roi.grey[w as usize] == g {
                len += 1;
                w += off;
            }
            *m.entry((g, len)).or_default() += 1.0;
        }
        if !m.is_empty() {
            let f = run_features(&m, nv);
            per.push(std::array::from_fn::<f64, 16, _>(|k| f[k]));
        }
    }
    push_average(out, "rlm", &RLM, &per);
}

/// `szm_*`: the 16 IBSI GLSZM features; zones are 26-connected (8 for a planar ROI).
pub fn glszm(roi: &Roi, out: &mut Features) {
    let nb = neighbours(roi);
    let mut seen = vec![false; roi.grey.len()];
    let mut m: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    let mut stack = Vec::new();
    let mut nv = 0.0;
    for v in 0..roi.grey.len() {
        let g = roi.grey[v];
        if g == 0 || seen[v] {
            continue;
        }
        seen[v] = true;
        stack.push(v);
        let mut size = 0u32;
        while let Some(u) = stack.pop() {
            size += 1;
            for &o in &nb {
                let w = (u as i64 + o) as usize;
                if !seen[w] && roi.grey[w] == g {
                    seen[w] = true;
                    stack.push(w);
                }
            }
        }
        nv += size as f64;
        *m.entry((g, size)).or_default() += 1.0;
    }
    let f = run_features(&m, nv);
    for (k, name) in SZM.iter().enumerate() {
        out.push("szm", name, f[k]);
    }
}

/// `ngl_*`: the 17 IBSI NGLDM features at coarseness 1 and α = 0 (dependence = 1 + the neighbours of equal grey level).
pub fn ngldm(roi: &Roi, out: &mut Features) {
    let nb = neighbours(roi);
    let mut m: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    let mut nv = 0.0;
    for v in 0..roi.grey.len() {
        let g = roi.grey[v];
        if g == 0 {
            continue;
        }
        let dep = 1 + nb.iter().filter(|&&o| roi.grey[(v as i64 + o) as usize] == g).count() as u32;
        *m.entry((g, dep)).or_default() += 1.0;
        nv += 1.0;
    }
    let f = run_features(&m, nv);
    for (k, name) in NGL.iter().enumerate() {
        out.push("ngl", name, f[k]);
    }
}

/// `ngt_*`: coarseness, contrast, busyness, complexity and strength; voxels without any neighbour in the intensity
/// mask are left out.
pub fn ngtdm(roi: &Roi, out: &mut Features) {
    let nb = neighbours(roi);
    let ng = roi.levels;
    let (mut s, mut n) = (vec![0.0; ng + 1], vec![0.0; ng + 1]);
    for v in 0..roi.grey.len() {
        let g = roi.grey[v];
        if g == 0 {
            continue;
        }
        let (mut sum, mut cnt) = (0.0, 0.0);
        for &o in &nb {
            let h = roi.grey[(v as i64 + o) as usize];
            if h > 0 {
                sum += h as f64;
                cnt += 1.0;
            }
        }
        if cnt > 0.0 {
            s[g as usize] += (g as f64 - sum / cnt).abs();
            n[g as usize] += 1.0;
        }
    }
    let nvc: f64 = n.iter().sum();
    let lv: Vec<usize> = (1..=ng).filter(|&i| n[i] > 0.0).collect();
    let p: Vec<f64> = n.iter().map(|c| if nvc > 0.0 { c / nvc } else { 0.0 }).collect();
    let ngp = lv.len() as f64;
    let ps: f64 = lv.iter().map(|&i| p[i] * s[i]).sum();
    let ssum: f64 = lv.iter().map(|&i| s[i]).sum();
    let (mut c2, mut busy_den, mut complexity, mut strength) = (0.0, 0.0, 0.0, 0.0);
    for &i in &lv {
        for &j in &lv {
            let d = i as f64 - j as f64;
            c2 += p[i] * p[j] * d * d;
            busy_den += (i as f64 * p[i] - j as f64 * p[j]).abs();
            complexity += d.abs() * (p[i] * s[i] + p[j] * s[j]) / (p[i] + p[j]);
            strength += (p[i] + p[j]) * d * d;
        }
    }
    let valid = nvc > 0.0;
    out.push(
        "ngt",
        "coarseness",
        if !valid {
            f64::NAN
        } else if ps > 0.0 {
            1.0 / ps
        } else {
            1e6
        },
    );
    out.push("ngt", "contrast", if ngp > 1.0 { c2 / (ngp * (ngp - 1.0)) * ssum / nvc } else { 0.0 });
    out.push("ngt", "busyness", if busy_den > 0.0 { ps / busy_den } else { 0.0 });
    out.push("ngt", "complexity", if valid { complexity / nvc } else { f64::NAN });
    out.push("ngt", "strength", if ssum > 0.0 { strength / ssum } else { 0.0 });
}
