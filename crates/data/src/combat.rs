//! ComBat harmonisation of tabular features across sites (Johnson, Li and Rabinovic 2007; Fortin et al. 2017 for
//! imaging features), as neuroCombat computes it without covariates: each feature is standardised by its grand mean
//! and pooled variance, site effects on location (γ) and scale (δ²) are estimated per feature and shrunk towards
//! their site-wide priors by empirical Bayes (normal prior for γ, inverse-gamma for δ², iterated to convergence),
//! and removed.
//!
//! ```
//! use vesalius_data::combat::combat;
//! // Two sites; the second adds 5 to the feature.
//! let rows: Vec<Vec<f64>> = (0..40).map(|i| vec![(i % 7) as f64 + if i % 2 == 1 { 5.0 } else { 0.0 }]).collect();
//! let sites: Vec<usize> = (0..40).map(|i| i % 2).collect();
//! let fit = combat(&rows, &sites).unwrap();
//! let mean = |s: usize| fit.adjusted.iter().zip(&sites).filter(|(_, b)| **b == s).map(|(r, _)| r[0]).sum::<f64>() / 20.0;
//! assert!((mean(0) - mean(1)).abs() < 0.5);
//! ```
use crate::{DataError, Result};

/// Site effects and the harmonised rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Combat {
    /// The rows (samples) with site effects removed, features in the input's order.
    pub adjusted: Vec<Vec<f64>>,
    /// Shrunk location effect per site and feature (in pooled standard deviations).
    pub gamma: Vec<Vec<f64>>,
    /// Shrunk scale effect per site and feature (a variance ratio).
    pub delta2: Vec<Vec<f64>>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn var(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)
}

/// Harmonises `rows` (one per sample, the same number of features each) whose site is `sites[i]` (0-based
/// indices; every site needs at least two samples and the features some spread).
pub fn combat(rows: &[Vec<f64>], sites: &[usize]) -> Result<Combat> {
    let n = rows.len();
    let p = rows.first().map_or(0, Vec::len);
    if n != sites.len() || n < 3 || p == 0 || rows.iter().any(|r| r.len() != p || r.iter().any(|v| !v.is_finite())) {
        return Err(DataError::Invalid("ComBat needs one site per row, at least three rows and finite features of one length".into()));
    }
    let n_sites = sites.iter().max().map_or(0, |m| m + 1);
    let members: Vec<Vec<usize>> = (0..n_sites).map(|s| (0..n).filter(|&i| sites[i] == s).collect()).collect();
    if members.iter().any(|m| m.len() < 2) || n_sites < 2 {
        return Err(DataError::Invalid("ComBat needs at least two sites with two samples each (site indices 0..k without gaps)".into()));
    }
    // Grand mean (sites weighted by size, as the regression on site indicators gives) and pooled variance.
    let mut z = vec![vec![0.0; p]; n];
    let (mut alpha, mut sigma) = (vec![0.0; p], vec![0.0; p]);
    for g in 0..p {
        let site_means: Vec<f64> = members.iter().map(|m| mean(&m.iter().map(|&i| rows[i][g]).collect::<Vec<_>>())).collect();
        alpha[g] = members.iter().zip(&site_means).map(|(m, sm)| m.len() as f64 * sm).sum::<f64>() / n as f64;
        let pooled = (0..n).map(|i| (rows[i][g] - site_means[sites[i]]).powi(2)).sum::<f64>() / n as f64;
        if !(pooled > 0.0) {
            return Err(DataError::Invalid(format!("feature {g} does not vary within sites; ComBat cannot scale it")));
        }
        sigma[g] = pooled.sqrt();
        for i in 0..n {
            z[i][g] = (rows[i][g] - alpha[g]) / sigma[g];
        }
    }
    // Per-site estimates and empirical-Bayes shrinkage.
    let mut gamma = vec![vec![0.0; p]; n_sites];
    let mut delta2 = vec![vec![1.0; p]; n_sites];
    for (s, m) in members.iter().enumerate() {
        let ni = m.len() as f64;
        let g_hat: Vec<f64> = (0..p).map(|g| mean(&m.iter().map(|&i| z[i][g]).collect::<Vec<_>>())).collect();
        let d_hat: Vec<f64> = (0..p).map(|g| var(&m.iter().map(|&i| z[i][g]).collect::<Vec<_>>())).collect();
        let g_bar = mean(&g_hat);
        let t2 = if p > 1 { var(&g_hat) } else { 1.0 };
        let (dm, ds2) = (mean(&d_hat), if p > 1 { var(&d_hat) } else { 0.0 });
        // Inverse-gamma prior by the method of moments; without spread across features, no shrinkage of δ².
        let (a, b) = if ds2 > 0.0 { ((2.0 * ds2 + dm * dm) / ds2, (dm * ds2 + dm.powi(3)) / ds2) } else { (f64::INFINITY, 0.0) };
        for g in 0..p {
            let (mut gs, mut ds) = (g_hat[g], d_hat[g].max(f64::MIN_POSITIVE));
            for _ in 0..1000 {
                let g_new = if t2 > 0.0 { (ni * t2 * g_hat[g] + ds * g_bar) / (ni * t2 + ds) } else { g_bar };
                let ss: f64 = m.iter().map(|&i| (z[i][g] - g_new).powi(2)).sum();
                let d_new = if a.is_finite() { (b + 0.5 * ss) / (ni / 2.0 + a - 1.0) } else { ss / (ni - 1.0) };
                let change = ((g_new - gs).abs() / gs.abs().max(1e-12)).max((d_new - ds).abs() / ds.abs().max(1e-12));
                gs = g_new;
                ds = d_new.max(f64::MIN_POSITIVE);
                if change < 1e-6 {
                    break;
                }
            }
            gamma[s][g] = gs;
            delta2[s][g] = ds;
        }
    }
    let adjusted = (0..n)
        .map(|i| (0..p).map(|g| sigma[g] * (z[i][g] - gamma[sites[i]][g]) / delta2[sites[i]][g].sqrt() + alpha[g]).collect())
        .collect();
    Ok(Combat { adjusted, gamma, delta2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Three sites measuring the same population of 8 features (as ComBat models them: effects in units of each
    /// feature's spread); site 1 adds three standard deviations, site 2 scales the spread 2.5 times.
    fn sites() -> (Vec<Vec<f64>>, Vec<usize>, Vec<Vec<f64>>) {
        let mut rng = crate::transforms::rng(11);
        let (mut rows, mut site, mut truth) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..180 {
            let s = i % 3;
            let t: Vec<f64> = (0..8).map(|g| 10.0 * g as f64 + crate::transforms::normal(&mut rng) * (1.0 + g as f64 * 0.2)).collect();
            let observed = t
                .iter()
                .enumerate()
                .map(|(g, v)| match s {
                    1 => v + 3.0 * (1.0 + g as f64 * 0.2),
                    2 => 10.0 * g as f64 + (v - 10.0 * g as f64) * 2.5 - 1.0,
                    _ => *v,
                } + rng.random::<f64>() * 1e-9)
                .collect();
            rows.push(observed);
            site.push(s);
            truth.push(t);
        }
        (rows, site, truth)
    }

    fn site_stats(rows: &[Vec<f64>], sites: &[usize], s: usize, g: usize) -> (f64, f64) {
        let v: Vec<f64> = rows.iter().zip(sites).filter(|(_, b)| **b == s).map(|(r, _)| r[g]).collect();
        (mean(&v), var(&v).sqrt())
    }

    #[test]
    fn injected_site_shifts_and_scales_are_removed() {
        let (rows, site, _) = sites();
        let fit = combat(&rows, &site).unwrap();
        for g in 0..8 {
            let before: Vec<(f64, f64)> = (0..3).map(|s| site_stats(&rows, &site, s, g)).collect();
            let after: Vec<(f64, f64)> = (0..3).map(|s| site_stats(&fit.adjusted, &site, s, g)).collect();
            let spread = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
                v.iter().map(f).fold(f64::MIN, f64::max) - v.iter().map(f).fold(f64::MAX, f64::min)
            };
            // Before: site means 3 or more apart, standard deviations 2.5× apart.
            assert!(spread(&before, |x| x.0) > 2.5 && spread(&before, |x| x.1) > 1.0, "feature {g}: {before:?}");
            // After: the site means at most 15 % as far apart as before and within three standard errors of a site
            // mean (sd/√60: the empirical-Bayes shrinkage keeps part of each site's sampling error), standard
            // deviations within 20 % of each other, as three estimates from 60 samples are (2.5× apart before).
            let sd = after.iter().map(|x| x.1).sum::<f64>() / 3.0;
            let se = sd / 60f64.sqrt();
            assert!(
                spread(&after, |x| x.0) < 0.15 * spread(&before, |x| x.0) && spread(&after, |x| x.0) < 3.0 * se,
                "feature {g}: {after:?}"
            );
            assert!(spread(&after, |x| x.1) < 0.2 * sd, "feature {g}: {after:?}");
        }
        // Shrunk site effects have the injected signs: site 1 shifted up, site 2 spread out.
        assert!(fit.gamma[1].iter().zip(&fit.gamma[0]).all(|(a, b)| a > b));
        assert!(fit.delta2[2].iter().zip(&fit.delta2[0]).all(|(a, b)| a > b));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(combat(&[vec![1.0], vec![2.0], vec![3.0]], &[0, 0, 0]).is_err());
        assert!(combat(&[vec![1.0], vec![2.0], vec![3.0], vec![4.0]], &[0, 0, 1, 1, 1]).is_err());
        assert!(combat(&[vec![1.0], vec![1.0], vec![3.0], vec![3.0]], &[0, 0, 1, 1]).is_err());
    }
}
