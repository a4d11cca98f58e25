//! Intensity statistics (`stat_*`, IBSI 3.3, on the raw intensities of the intensity mask) and intensity-histogram
//! features (`ih_*`, IBSI 3.4, on the discretised grey levels).
use crate::{Features, Roi};

/// Percentile `q` (0–100) of sorted values with linear interpolation between order statistics (NumPy's default,
/// which pyradiomics uses).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() { f64::NAN } else { vesalius_eval::bootstrap::quantile_sorted(sorted, q / 100.0) }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// The statistics shared by both families, pushed under `family`.
fn moments(family: &str, x: &mut [f64], out: &mut Features) {
    x.sort_by(f64::total_cmp);
    let n = x.len() as f64;
    let mu = mean(x);
    let m = |k: i32| x.iter().map(|v| (v - mu).powi(k)).sum::<f64>() / n;
    let (m2, m3, m4) = (m(2), m(3), m(4));
    let (p10, p25, p50, p75, p90) =
        (percentile(x, 10.0), percentile(x, 25.0), percentile(x, 50.0), percentile(x, 75.0), percentile(x, 90.0));
    let robust: Vec<f64> = x.iter().copied().filter(|&v| v >= p10 && v <= p90).collect();
    let rmu = mean(&robust);
    out.push(family, "mean", mu);
    out.push(family, "var", m2);
    out.push(family, "skew", if m2 > 0.0 { m3 / m2.powf(1.5) } else { 0.0 });
    out.push(family, "kurt", if m2 > 0.0 { m4 / (m2 * m2) - 3.0 } else { 0.0 });
    out.push(family, "median", p50);
    out.push(family, "min", x[0]);
    out.push(family, "p10", p10);
    out.push(family, "p90", p90);
    out.push(family, "max", x[x.len() - 1]);
    out.push(family, "iqr", p75 - p25);
    out.push(family, "range", x[x.len() - 1] - x[0]);
    out.push(family, "mad", x.iter().map(|v| (v - mu).abs()).sum::<f64>() / n);
    out.push(family, "rmad", robust.iter().map(|v| (v - rmu).abs()).sum::<f64>() / robust.len() as f64);
    out.push(family, "medad", x.iter().map(|v| (v - p50).abs()).sum::<f64>() / n);
    out.push(family, "cov", if mu != 0.0 { m2.sqrt() / mu } else { f64::NAN });
    out.push(family, "qcod", if p75 + p25 != 0.0 { (p75 - p25) / (p75 + p25) } else { f64::NAN });
}

/// `stat_*`: mean, variance, skewness, excess kurtosis, median, minimum, 10th/90th percentiles, maximum,
/// interquartile range, range, mean / robust mean / median absolute deviation, coefficient of variation, quartile
/// coefficient of dispersion, energy and root mean square.
pub fn statistics(roi: &Roi, out: &mut Features) {
    let mut x = roi.intensities();
    let energy: f64 = x.iter().map(|v| v * v).sum();
    let n = x.len() as f64;
    moments("stat", &mut x, out);
    out.push("stat", "energy", energy);
    out.push("stat", "rms", (energy / n).sqrt());
}

/// `ih_*`: the statistics of the grey levels, plus mode, entropy (bits), uniformity and the histogram's largest
/// and smallest gradients with the levels where they occur.
pub fn histogram(roi: &Roi, out: &mut Features) {
    let g = roi.grey_values();
    let ng = roi.levels;
    let mut h = vec![0f64; ng + 1];
    for &v in &g {
        h[v as usize] += 1.0;
    }
    let n = g.len() as f64;
    let mut x: Vec<f64> = g.iter().map(|&v| v as f64).collect();
    moments("ih", &mut x, out);
    let mode = (1..=ng).fold(1, |best, i| if h[i] > h[best] { i } else { best });
    out.push("ih", "mode", mode as f64);
    let p: Vec<f64> = h.iter().map(|c| c / n).collect();
    out.push("ih", "entropy", -p.iter().filter(|&&v| v > 0.0).map(|v| v * v.log2()).sum::<f64>());
    out.push("ih", "uniformity", p.iter().map(|v| v * v).sum());
    let grad = |i: usize| -> f64 {
        if ng == 1 {
            0.0
        } else if i == 1 {
            h[2] - h[1]
        } else if i == ng {
            h[ng] - h[ng - 1]
        } else {
            (h[i + 1] - h[i - 1]) / 2.0
        }
    };
    let (mut gmax, mut imax, mut gmin, mut imin) = (f64::NEG_INFINITY, 1, f64::INFINITY, 1);
    for i in 1..=ng {
        let d = grad(i);
        if d > gmax {
            (gmax, imax) = (d, i);
        }
        if d < gmin {
            (gmin, imin) = (d, i);
        }
    }
    out.push("ih", "max_grad", gmax);
    out.push("ih", "max_grad_g", imax as f64);
    out.push("ih", "min_grad", gmin);
    out.push("ih", "min_grad_g", imin as f64);
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&x, 0.0), 1.0);
        assert_eq!(percentile(&x, 100.0), 4.0);
        assert!((percentile(&x, 10.0) - 1.3).abs() < 1e-12);
        assert!((percentile(&x, 75.0) - 3.25).abs() < 1e-12);
    }
}
