//! Metrics of continuous and ordinal predictions, as scikit-learn and SciPy compute them: mean absolute error,
//! root mean squared error, the coefficient of determination R² (`1 − SS_res / SS_tot` around the scored cases'
//! own mean, so a constant prediction of that mean scores 0 and worse predictions score below 0), Pearson's and
//! Spearman's correlations (average ranks for ties), the pinball (quantile) loss and the coverage of a prediction
//! interval; for ordinal levels the accuracy, the mean absolute error in levels and Cohen's quadratically weighted
//! kappa. [`regression_report`] and [`ordinal_report`] add percentile bootstrap intervals over patients.
//!
//! ```
//! use vesalius_eval::regression::{mae, r2, rmse};
//! let y = [1.0, 2.0, 3.0, 4.0];
//! let p = [1.0, 2.0, 3.0, 5.0];
//! assert_eq!(mae(&y, &p), 0.25);
//! assert_eq!(rmse(&y, &p), 0.5);
//! assert_eq!(r2(&y, &p), 0.8); // 1 − 1 / 5
//! ```
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::bootstrap::{Clusters, Estimate, cluster_percentile_ci};

fn pick(v: &[f64], idx: &[usize]) -> Vec<f64> {
    idx.iter().map(|&i| v[i]).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean absolute error.
pub fn mae(y: &[f64], p: &[f64]) -> f64 {
    mean(&y.iter().zip(p).map(|(a, b)| (a - b).abs()).collect::<Vec<_>>())
}

/// Root mean squared error.
pub fn rmse(y: &[f64], p: &[f64]) -> f64 {
    mean(&y.iter().zip(p).map(|(a, b)| (a - b).powi(2)).collect::<Vec<_>>()).sqrt()
}

/// The coefficient of determination around the mean of `y` (scikit-learn's `r2_score`; `NaN` when `y` is
/// constant).
pub fn r2(y: &[f64], p: &[f64]) -> f64 {
    let m = mean(y);
    let ss_tot: f64 = y.iter().map(|a| (a - m).powi(2)).sum();
    let ss_res: f64 = y.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum();
    if ss_tot == 0.0 { f64::NAN } else { 1.0 - ss_res / ss_tot }
}

/// Pearson's correlation (`NaN` when either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 { f64::NAN } else { cov / (va * vb).sqrt() }
}

/// Ranks starting at 1, ties given their average rank (SciPy's `rankdata`).
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson's on average ranks).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// The pinball loss of predicted `tau`-quantiles `q`: mean of `max(τ(y − q), (τ − 1)(y − q))`.
pub fn pinball(y: &[f64], q: &[f64], tau: f64) -> f64 {
    mean(&y.iter().zip(q).map(|(a, b)| (tau * (a - b)).max((tau - 1.0) * (a - b))).collect::<Vec<_>>())
}

/// The share of `y` inside `[lo, hi]`.
pub fn coverage(y: &[f64], lo: &[f64], hi: &[f64]) -> f64 {
    y.iter().zip(lo.iter().zip(hi)).filter(|(v, (l, h))| *l <= *v && *v <= *h).count() as f64 / y.len() as f64
}

/// Cohen's kappa of two ratings on levels `0..k` with quadratic weights `(i − j)² / (k − 1)²` (scikit-learn's
/// `cohen_kappa_score(weights="quadratic")`; `NaN` when the expected disagreement is zero).
pub fn quadratic_kappa(a: &[usize], b: &[usize], k: usize) -> f64 {
    if k == 0 || a.is_empty() {
        return f64::NAN;
    }
    let n = a.len() as f64;
    let mut observed = vec![vec![0.0; k]; k];
    for (&i, &j) in a.iter().zip(b) {
        observed[i.min(k - 1)][j.min(k - 1)] += 1.0;
    }
    let row: Vec<f64> = observed.iter().map(|r| r.iter().sum()).collect();
    let col: Vec<f64> = (0..k).map(|j| observed.iter().map(|r| r[j]).sum()).collect();
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = (i as f64 - j as f64).powi(2);
            num += w * observed[i][j];
            den += w * row[i] * col[j] / n;
        }
    }
    if den == 0.0 { f64::NAN } else { 1.0 - num / den }
}

/// The metrics of a continuous prediction with 95 % bootstrap intervals: keys `mae`, `rmse`, `r2`, `pearson`,
/// `spearman`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionReport {
    /// Cases scored.
    pub n: usize,
    /// Each metric with its interval.
    pub metrics: BTreeMap<String, Estimate>,
}

type Metric = fn(&[f64], &[f64]) -> f64;

const CONTINUOUS: [(&str, Metric); 5] = [("mae", mae), ("rmse", rmse), ("r2", r2), ("pearson", pearson), ("spearman", spearman)];

fn check(n: usize, m: usize) -> Result<(), EvalError> {
    if n == 0 {
        return Err(EvalError::Empty);
    }
    if n != m {
        return Err(EvalError::Shape(format!("{n} targets but {m} predictions")));
    }
    Ok(())
}

/// Scores predictions `p` of targets `y`; `clusters` says which cases belong to one patient (resampled together).
pub fn regression_report(y: &[f64], p: &[f64], clusters: &Clusters, resamples: usize, seed: u64) -> Result<RegressionReport, EvalError> {
    check(y.len(), p.len())?;
    let metrics = CONTINUOUS
        .iter()
        .map(|&(name, f)| {
            let e = cluster_percentile_ci(clusters, resamples, 0.95, seed, f(y, p), |idx| Some(f(&pick(y, idx), &pick(p, idx))));
            (name.to_string(), e)
        })
        .collect();
    Ok(RegressionReport { n: y.len(), metrics })
}

/// Adds the pinball loss of each predicted quantile (`pinball@τ`) and, with at least two quantiles, the coverage
/// of the interval between the outermost (`coverage@τlo-τhi`) to `report`. `q[j][i]` is quantile `taus[j]` of case
/// `i`.
pub fn add_quantiles(
    report: &mut RegressionReport,
    y: &[f64],
    taus: &[f64],
    q: &[Vec<f64>],
    clusters: &Clusters,
    resamples: usize,
    seed: u64,
) -> Result<(), EvalError> {
    for (tau, qj) in taus.iter().zip(q) {
        check(y.len(), qj.len())?;
        let e = cluster_percentile_ci(clusters, resamples, 0.95, seed, pinball(y, qj, *tau), |idx| {
            Some(pinball(&pick(y, idx), &pick(qj, idx), *tau))
        });
        report.metrics.insert(format!("pinball@{tau}"), e);
    }
    if let (Some(lo), Some(hi), true) = (q.first(), q.last(), q.len() >= 2) {
        let e = cluster_percentile_ci(clusters, resamples, 0.95, seed, coverage(y, lo, hi), |idx| {
            Some(coverage(&pick(y, idx), &pick(lo, idx), &pick(hi, idx)))
        });
        report.metrics.insert(format!("coverage@{}-{}", taus[0], taus[taus.len() - 1]), e);
    }
    Ok(())
}

/// Scores predicted levels `p` of ordinal targets `y` (levels `0..k`): keys `accuracy`, `mae` (in levels),
/// `quadratic_kappa` and `spearman`, with 95 % bootstrap intervals over `clusters`.
pub fn ordinal_report(
    y: &[usize],
    p: &[usize],
    k: usize,
    clusters: &Clusters,
    resamples: usize,
    seed: u64,
) -> Result<RegressionReport, EvalError> {
    check(y.len(), p.len())?;
    if k < 2 || y.iter().chain(p).any(|&v| v >= k) {
        return Err(EvalError::Shape(format!("ordinal levels must lie in 0..{k} with at least two levels")));
    }
    let acc = |y: &[usize], p: &[usize]| y.iter().zip(p).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
    let as_f = |v: &[usize]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (yf, pf) = (as_f(y), as_f(p));
    let pick_u = |v: &[usize], idx: &[usize]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
    let mut metrics = BTreeMap::new();
    metrics.insert(
        "accuracy".into(),
        cluster_percentile_ci(clusters, resamples, 0.95, seed, acc(y, p), |idx| Some(acc(&pick_u(y, idx), &pick_u(p, idx)))),
    );
    metrics.insert(
        "quadratic_kappa".into(),
        cluster_percentile_ci(clusters, resamples, 0.95, seed, quadratic_kappa(y, p, k), |idx| {
            Some(quadratic_kappa(&pick_u(y, idx), &pick_u(p, idx), k))
        }),
    );
    for (name, f) in [("mae", mae as Metric), ("spearman", spearman as Metric)] {
        let e = cluster_percentile_ci(clusters, resamples, 0.95, seed, f(&yf, &pf), |idx| Some(f(&pick(&yf, idx), &pick(&pf, idx))));
        metrics.insert(name.to_string(), e);
    }
    Ok(RegressionReport { n: y.len(), metrics })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Reference values: fixtures/regression/metrics_reference.py (scikit-learn 1.9.1, SciPy) on these arrays.
    const Y: [f64; 10] = [3.1, -0.5, 2.0, 7.0, 4.2, 4.2, 1.0, 0.0, 5.5, 2.0];
    const P: [f64; 10] = [2.5, 0.0, 2.0, 8.0, 3.9, 5.0, 1.0, 0.7, 4.0, 2.0];

    #[test]
    fn continuous_metrics_match_scikit_learn_and_scipy() {
        let r: serde_json::Value = serde_json::from_str(include_str!("../../../fixtures/regression/metrics_reference.json")).unwrap();
        let close = |a: f64, key: &str| {
            let b = r[key].as_f64().unwrap();
            assert!((a - b).abs() < 1e-12, "{key}: {a} vs {b}");
        };
        close(mae(&Y, &P), "mae");
        close(rmse(&Y, &P), "rmse");
        close(r2(&Y, &P), "r2");
        close(pearson(&Y, &P), "pearson");
        close(spearman(&Y, &P), "spearman");
        close(pinball(&Y, &P, 0.1), "pinball_0.1");
        close(pinball(&Y, &P, 0.9), "pinball_0.9");
        let a = [0usize, 1, 2, 2, 3, 4, 4, 1, 0, 3, 2, 2];
        let b = [0usize, 2, 2, 1, 3, 3, 4, 1, 1, 4, 2, 0];
        close(quadratic_kappa(&a, &b, 5), "qwk");
    }

    #[test]
    fn reports_carry_intervals_around_their_values() {
        let clusters = Clusters::cases(Y.len());
        let r = regression_report(&Y, &P, &clusters, 500, 1).unwrap();
        for (k, e) in &r.metrics {
            assert!(e.ci_low <= e.value && e.value <= e.ci_high, "{k}: {e:?}");
        }
        let mut r = r;
        let lo: Vec<f64> = P.iter().map(|p| p - 1.0).collect();
        let hi: Vec<f64> = P.iter().map(|p| p + 1.0).collect();
        add_quantiles(&mut r, &Y, &[0.1, 0.9], &[lo, hi], &clusters, 200, 1).unwrap();
        assert_eq!(r.metrics["coverage@0.1-0.9"].value, 0.9); // only 5.5 (predicted 4.0) lies outside ±1; 7 (8) is on the edge
        assert!(regression_report(&Y, &P[..3], &clusters, 10, 1).is_err());
        let o = ordinal_report(&[0, 1, 2, 2], &[0, 1, 2, 1], 3, &Clusters::cases(4), 200, 1).unwrap();
        assert_eq!(o.metrics["accuracy"].value, 0.75);
        assert_eq!(o.metrics["mae"].value, 0.25);
        assert!(ordinal_report(&[0, 3], &[0, 1], 3, &Clusters::cases(2), 10, 1).is_err());
    }

    #[test]
    fn perfect_and_constant_predictions() {
        assert_eq!(r2(&Y, &Y), 1.0);
        let m = Y.iter().sum::<f64>() / 10.0;
        assert!(r2(&Y, &[m; 10]).abs() < 1e-12);
        assert!(pearson(&Y, &[1.0; 10]).is_nan());
        assert_eq!(ranks(&[2.0, 1.0, 2.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(quadratic_kappa(&[0, 1, 2], &[0, 1, 2], 3), 1.0);
        assert!(quadratic_kappa(&[], &[], 3).is_nan() && quadratic_kappa(&[0], &[0], 0).is_nan());
    }
}
