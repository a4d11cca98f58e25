//! Cox proportional hazards: `h(t | x) = h₀(t) · exp(xᵀβ)`.
//!
//! The coefficients maximise the partial log-likelihood with Efron's or Breslow's handling of tied event times,
//! minus a ridge penalty `½ λ ‖β‖²` (scikit-survival's `alpha`; lifelines scales its `penalizer` differently),
//! by Newton–Raphson with step halving from β = 0. The penalty keeps collinear or separating columns from stopping
//! convergence. The baseline cumulative hazard is Breslow's estimator (as lifelines reports it), so
//! `S(t | x) = exp(−H₀(t) · exp(xᵀβ))`. Higher risk `xᵀβ` means an earlier event.
//!
//! ```
//! use vesalius_prediction::cox::{CoxConfig, Ties, fit};
//! // One feature that doubles the hazard per unit: events come earlier for larger x.
//! let x: Vec<Vec<f64>> = (0..40).map(|i| vec![(i % 4) as f64]).collect();
//! let time: Vec<f64> = (0..40).map(|i| 10.0 / (1.0 + (i % 4) as f64) + (i / 4) as f64 * 0.1).collect();
//! let event = vec![true; 40];
//! let model = fit(&x, &time, &event, &CoxConfig { ties: Ties::Efron, l2: 0.0 }).unwrap();
//! assert!(model.coefficients[0] > 0.5);
//! assert!(model.risk(&[3.0]) > model.risk(&[0.0]));
//! assert!(model.survival(&[0.0], 5.0) > model.survival(&[3.0], 5.0));
//! ```
use serde::{Deserialize, Serialize};

use crate::PredError;

/// How tied event times enter the partial likelihood.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ties {
    /// Efron's approximation (lifelines' and R's default).
    #[default]
    Efron,
    /// Breslow's approximation.
    Breslow,
}

/// Fitting settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoxConfig {
    /// Tie handling.
    pub ties: Ties,
    /// Ridge penalty λ of `½ λ ‖β‖²`.
    pub l2: f64,
}

/// A fitted Cox model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoxModel {
    /// β.
    pub coefficients: Vec<f64>,
    /// The penalised partial log-likelihood at β.
    pub log_likelihood: f64,
    /// Newton iterations used.
    pub iterations: usize,
    /// Distinct event times.
    pub baseline_times: Vec<f64>,
    /// Breslow's cumulative baseline hazard `H₀` at each of them (for `xᵀβ = 0`).
    pub baseline_hazard: Vec<f64>,
}

impl CoxModel {
    /// The linear predictor `xᵀβ` (the risk score).
    pub fn risk(&self, x: &[f64]) -> f64 {
        x.iter().zip(&self.coefficients).map(|(a, b)| a * b).sum()
    }

    /// `H₀(t)`, a right-continuous step function.
    pub fn cumulative_baseline(&self, t: f64) -> f64 {
        match self.baseline_times.partition_point(|&s| s <= t) {
            0 => 0.0,
            i => self.baseline_hazard[i - 1],
        }
    }

    /// `S(t | x)`.
    pub fn survival(&self, x: &[f64], t: f64) -> f64 {
        (-self.cumulative_baseline(t) * self.risk(x).exp()).exp()
    }
}

/// Value, gradient and Hessian of the penalised partial log-likelihood at `beta` (rows sorted by time).
fn objective(
    x: &[Vec<f64>],
    time: &[f64],
    event: &[bool],
    order: &[usize],
    beta: &[f64],
    config: &CoxConfig,
) -> (f64, Vec<f64>, Vec<Vec<f64>>) {
    let p = beta.len();
    let eta: Vec<f64> = x.iter().map(|r| r.iter().zip(beta).map(|(a, b)| a * b).sum()).collect();
    let mut ll = 0.0;
    let mut grad = vec![0.0; p];
    let mut hess = vec![vec![0.0; p]; p];
    // Risk-set sums, accumulated from the latest time backwards.
    let (mut s0, mut s1, mut s2) = (0.0, vec![0.0; p], vec![vec![0.0; p]; p]);
    let mut k = order.len();
    while k > 0 {
        let t = time[order[k - 1]];
        let mut start = k;
        while start > 0 && time[order[start - 1]] == t {
            start -= 1;
        }
        // Tie sums over the events at t.
        let (mut d, mut t0, mut t1, mut t2) = (0usize, 0.0, vec![0.0; p], vec![vec![0.0; p]; p]);
        for &i in &order[start..k] {
            let w = eta[i].exp();
            s0 += w;
            for a in 0..p {
                s1[a] += w * x[i][a];
                for b in 0..p {
                    s2[a][b] += w * x[i][a] * x[i][b];
                }
            }
            if event[i] {
                d += 1;
                t0 += w;
                ll += eta[i];
                for a in 0..p {
                    t1[a] += w * x[i][a];
                    grad[a] += x[i][a];
                    for b in 0..p {
                        t2[a][b] += w * x[i][a] * x[i][b];
                    }
                }
            }
        }
        for l in 0..d {
            let f = match config.ties {
                Ties::Efron => l as f64 / d as f64,
                Ties::Breslow => 0.0,
            };
            let phi = s0 - f * t0;
            ll -= phi.ln();
            let a_vec: Vec<f64> = (0..p).map(|a| s1[a] - f * t1[a]).collect();
            for a in 0..p {
                grad[a] -= a_vec[a] / phi;
                for b in 0..p {
                    hess[a][b] -= (s2[a][b] - f * t2[a][b]) / phi - a_vec[a] * a_vec[b] / (phi * phi);
                }
            }
        }
        k = start;
    }
    for a in 0..p {
        ll -= 0.5 * config.l2 * beta[a] * beta[a];
        grad[a] -= config.l2 * beta[a];
        hess[a][a] -= config.l2;
    }
    (ll, grad, hess)
}

/// Solves `m · v = rhs` for a symmetric positive-definite `m` (Cholesky); `None` when it is not.
fn solve_spd(m: &[Vec<f64>], rhs: &[f64]) -> Option<Vec<f64>> {
    let n = rhs.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = m[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            if i == j {
                if !(s > 0.0) {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (rhs[i] - (0..i).map(|k| l[i][k] * y[k]).sum::<f64>()) / l[i][i];
    }
    let mut v = vec![0.0; n];
    for i in (0..n).rev() {
        v[i] = (y[i] - (i + 1..n).map(|k| l[k][i] * v[k]).sum::<f64>()) / l[i][i];
    }
    Some(v)
}

/// Fits a Cox model to rows `x` (one per subject), survival times and event flags.
pub fn fit(x: &[Vec<f64>], time: &[f64], event: &[bool], config: &CoxConfig) -> Result<CoxModel, PredError> {
    let n = x.len();
    if n == 0 || time.len() != n || event.len() != n {
        return Err(PredError::Input(format!("{n} rows, {} times, {} event flags", time.len(), event.len())));
    }
    let p = x[0].len();
    if x.iter().any(|r| r.len() != p || r.iter().any(|v| !v.is_finite())) || time.iter().any(|t| !t.is_finite()) {
        return Err(PredError::Input("every row needs the same number of finite features, and every time must be finite".into()));
    }
    if !event.iter().any(|&e| e) {
        return Err(PredError::Input("no event: the partial likelihood is flat".into()));
    }
    if !(config.l2 >= 0.0) {
        return Err(PredError::Input(format!("the ridge penalty must be ≥ 0, not {}", config.l2)));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let mut beta = vec![0.0; p];
    let (mut ll, mut grad, mut hess) = objective(x, time, event, &order, &beta, config);
    let mut iterations = 0;
    for it in 1..=100 {
        iterations = it;
        let neg: Vec<Vec<f64>> = hess.iter().map(|r| r.iter().map(|v| -v).collect()).collect();
        let step = solve_spd(&neg, &grad).ok_or_else(|| {
            PredError::Input("the partial likelihood's Hessian is singular (collinear or constant features): add an L2 penalty".into())
        })?;
        let mut scale = 1.0;
        let mut accepted = false;
        for _ in 0..30 {
            let trial: Vec<f64> = beta.iter().zip(&step).map(|(b, s)| b + scale * s).collect();
            let (tl, tg, th) = objective(x, time, event, &order, &trial, config);
            if tl.is_finite() && tl >= ll - 1e-12 {
                let change = (tl - ll).abs();
                beta = trial;
                (ll, grad, hess) = (tl, tg, th);
                accepted = true;
                if change < 1e-10 && step.iter().map(|s| s.abs()).fold(0.0, f64::max) * scale < 1e-8 {
                    return Ok(finish(x, time, event, &order, beta, ll, iterations));
                }
                break;
            }
            scale *= 0.5;
        }
        if !accepted || grad.iter().map(|g| g.abs()).fold(0.0, f64::max) < 1e-9 {
            return Ok(finish(x, time, event, &order, beta, ll, iterations));
        }
    }
    Err(PredError::Input(format!("the Cox model did not converge in {iterations} Newton iterations (separated data?): add an L2 penalty")))
}

/// The model with Breslow's baseline hazard.
fn finish(x: &[Vec<f64>], time: &[f64], event: &[bool], _order: &[usize], beta: Vec<f64>, ll: f64, iterations: usize) -> CoxModel {
    let risk: Vec<f64> = x.iter().map(|r| r.iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>()).collect();
    let (times, hazard) = breslow_baseline(&risk, time, event);
    CoxModel { coefficients: beta, log_likelihood: ll, iterations, baseline_times: times, baseline_hazard: hazard }
}

/// Breslow's estimator of the cumulative baseline hazard for log-risks `risk`: at each distinct event time,
/// `H₀ += d / Σ_{at risk} e^{risk}`. Returns the event times and `H₀` after each.
pub fn breslow_baseline(risk: &[f64], time: &[f64], event: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let mut order: Vec<usize> = (0..time.len()).collect();
    order.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let w: Vec<f64> = risk.iter().map(|r| r.exp()).collect();
    let mut at_risk: f64 = w.iter().sum();
    let (mut times, mut hazard) = (Vec::new(), Vec::new());
    let mut h = 0.0;
    let mut k = 0;
    while k < order.len() {
        let t = time[order[k]];
        let (mut d, mut leaving) = (0usize, 0.0);
        while k < order.len() && time[order[k]] == t {
            d += event[order[k]] as usize;
            leaving += w[order[k]];
            k += 1;
        }
        if d > 0 {
            h += d as f64 / at_risk;
            times.push(t);
            hazard.push(h);
        }
        at_risk -= leaving;
    }
    (times, hazard)
}
