//! Learning-curve extrapolation (Domhan, Springenberg and Hutter 2015): an ensemble of parametric curve models fitted
//! to a trial's validation scores, and the probability that the trial's best score over its remaining epochs beats a
//! target (the engine keeps a run's best epoch, so a curve that peaks and falls is judged by its peak).
//!
//! Each model is fitted by least squares (Nelder–Mead from several starting points); its residual standard deviation
//! σ is the fit's root mean square error corrected for the parameters (`SSE / (n − p)`). Models are weighted by their
//! Bayesian information criterion, `w ∝ exp(−BIC / 2)`. The uncertainty of the extrapolation comes from a residual
//! bootstrap (the fitted curve plus resampled residuals, refitted), in place of the MCMC sampling of the original
//! method. The probability that the final score exceeds `target` is the weighted mean over models and bootstrap
//! refits of `Φ((m − target) / σ)`, `m` the largest value of the refitted curve over the remaining epochs.
//!
//! ```
//! use vesalius_train::tune::curve::{Extrapolation, fit_all};
//! // A saturating curve y = 0.9 − 0.5 x^−0.7 observed for 12 epochs of 50.
//! let ys: Vec<(f64, f64)> = (1..=12).map(|x| (x as f64, 0.9 - 0.5 * (x as f64).powf(-0.7))).collect();
//! let e = Extrapolation::new(&ys, 12, 50, 7);
//! let at_end = 0.9 - 0.5 * 50f64.powf(-0.7);
//! assert!((e.mean() - at_end).abs() < 0.02);
//! assert!(e.probability_above(0.95) < 0.05); // cannot reach 0.95
//! assert!(e.probability_above(0.80) > 0.95); // surely beats 0.80
//! assert!(!fit_all(&ys).is_empty());
//! ```

/// A parametric learning-curve model `y = f(x; θ)` of the epoch `x ≥ 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// `c − a x^{−α}`.
    Pow3,
    /// `a ln x + b`.
    LogLinear,
    /// `c − a / ln(x + 1)`.
    Ilog2,
    /// `c − e^{−a x + b}`.
    Exp3,
    /// Janoschek: `α − (α − β) e^{−κ x^δ}`.
    Janoschek,
    /// Weibull: `α − (α − β) e^{−(κ x)^δ}`.
    Weibull,
    /// Morgan–Mercer–Flodin: `α − (α − β) / (1 + (κ x)^δ)`.
    Mmf,
    /// Vapour pressure: `exp(a + b / x + c ln x)`.
    VapourPressure,
}

/// Every model of the ensemble.
pub const MODELS: [Model; 8] =
    [Model::Pow3, Model::LogLinear, Model::Ilog2, Model::Exp3, Model::Janoschek, Model::Weibull, Model::Mmf, Model::VapourPressure];

impl Model {
    /// Number of parameters.
    pub fn parameters(self) -> usize {
        match self {
            Model::LogLinear => 2,
            Model::Pow3 | Model::Ilog2 | Model::Exp3 | Model::VapourPressure => 3,
            Model::Janoschek | Model::Weibull | Model::Mmf => 4,
        }
    }

    /// The model's name.
    pub fn name(self) -> &'static str {
        match self {
            Model::Pow3 => "pow3",
            Model::LogLinear => "log_linear",
            Model::Ilog2 => "ilog2",
            Model::Exp3 => "exp3",
            Model::Janoschek => "janoschek",
            Model::Weibull => "weibull",
            Model::Mmf => "mmf",
            Model::VapourPressure => "vapour_pressure",
        }
    }

    /// `f(x; θ)`. Rates and exponents enter through their absolute value, so every parameter vector is valid.
    pub fn eval(self, p: &[f64], x: f64) -> f64 {
        match self {
            Model::Pow3 => p[0] - p[1] * x.powf(-p[2].abs()),
            Model::LogLinear => p[0] * x.ln() + p[1],
            Model::Ilog2 => p[0] - p[1] / (x + 1.0).ln(),
            Model::Exp3 => p[0] - (-p[1].abs() * x + p[2]).exp(),
            Model::Janoschek => p[0] - (p[0] - p[1]) * (-p[2].abs() * x.powf(p[3].abs())).exp(),
            Model::Weibull => p[0] - (p[0] - p[1]) * (-(p[2].abs() * x).powf(p[3].abs())).exp(),
            Model::Mmf => p[0] - (p[0] - p[1]) / (1.0 + (p[2].abs() * x).powf(p[3].abs())),
            Model::VapourPressure => (p[0] + p[1] / x + p[2] * x.ln()).exp(),
        }
    }

    /// Starting points for the fit, from the first and last observations `y0`, `y1` and their range.
    fn starts(self, y0: f64, y1: f64) -> Vec<Vec<f64>> {
        let span = (y1 - y0).abs().max(1e-3);
        let top = y1.max(y0) + span * 0.5;
        match self {
            Model::Pow3 => vec![vec![top, top - y0, 0.5], vec![y1, span, 1.0], vec![top + span, 2.0 * span, 0.2]],
            Model::LogLinear => vec![vec![span, y0], vec![0.0, y1]],
            Model::Ilog2 => vec![vec![top, span], vec![y1, 0.1 * span]],
            Model::Exp3 => vec![vec![top, 0.3, (top - y0).abs().max(1e-6).ln()], vec![y1, 0.05, span.ln()]],
            Model::Janoschek | Model::Weibull => {
                vec![vec![top, y0, 0.3, 1.0], vec![y1, y0 - span, 0.1, 0.5], vec![top + span, y0, 0.5, 1.5]]
            }
            Model::Mmf => vec![vec![top, y0, 0.3, 1.0], vec![y1, y0 - span, 0.1, 2.0]],
            Model::VapourPressure => {
                let l = y1.abs().max(1e-6).ln();
                vec![vec![l, -0.1, 0.0], vec![l, -1.0, 0.01]]
            }
        }
    }
}

/// A fitted model.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// The model.
    pub model: Model,
    /// Its parameters.
    pub params: Vec<f64>,
    /// Sum of squared residuals.
    pub sse: f64,
    /// Residual standard deviation, `√(SSE / (n − p))`.
    pub sigma: f64,
    /// Bayesian information criterion, `n ln(SSE / n) + p ln n`.
    pub bic: f64,
}

/// Minimises `f` by Nelder–Mead from `start` (`iterations` steps at most).
pub fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, start: &[f64], iterations: usize) -> (Vec<f64>, f64) {
    let n = start.len();
    let mut simplex: Vec<Vec<f64>> = vec![start.to_vec()];
    for i in 0..n {
        let mut p = start.to_vec();
        p[i] += if p[i].abs() > 1e-8 { 0.1 * p[i] } else { 0.05 };
        simplex.push(p);
    }
    let mut values: Vec<f64> = simplex.iter().map(|p| f(p)).map(|v| if v.is_finite() { v } else { f64::INFINITY }).collect();
    for _ in 0..iterations {
        let mut order: Vec<usize> = (0..=n).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        simplex = order.iter().map(|&i| simplex[i].clone()).collect();
        values = order.iter().map(|&i| values[i]).collect();
        if (values[n] - values[0]).abs() <= 1e-14 * (1.0 + values[0].abs()) {
            break;
        }
        let centroid: Vec<f64> = (0..n).map(|j| simplex[..n].iter().map(|p| p[j]).sum::<f64>() / n as f64).collect();
        let along = |t: f64| -> Vec<f64> { (0..n).map(|j| centroid[j] + t * (simplex[n][j] - centroid[j])).collect() };
        let value = |p: &[f64]| {
            let v = f(p);
            if v.is_finite() { v } else { f64::INFINITY }
        };
        let reflected = along(-1.0);
        let fr = value(&reflected);
        if fr < values[0] {
            let expanded = along(-2.0);
            let fe = value(&expanded);
            if fe < fr {
                simplex[n] = expanded;
                values[n] = fe;
            } else {
                simplex[n] = reflected;
                values[n] = fr;
            }
        } else if fr < values[n - 1] {
            simplex[n] = reflected;
            values[n] = fr;
        } else {
            let contracted = if fr < values[n] { along(-0.5) } else { along(0.5) };
            let fc = value(&contracted);
            if fc < values[n].min(fr) {
                simplex[n] = contracted;
                values[n] = fc;
            } else {
                // Shrink towards the best point.
                for i in 1..=n {
                    simplex[i] = (0..n).map(|j| simplex[0][j] + 0.5 * (simplex[i][j] - simplex[0][j])).collect();
                    values[i] = value(&simplex[i]);
                }
            }
        }
    }
    let best = (0..=n).min_by(|&a, &b| values[a].total_cmp(&values[b])).unwrap_or(0);
    (simplex[best].clone(), values[best])
}

/// Fits `model` to points `(epoch, score)`; `None` when there are no more points than parameters or no finite fit.
pub fn fit(model: Model, points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len();
    let p = model.parameters();
    if n <= p {
        return None;
    }
    let sse = |q: &[f64]| -> f64 { points.iter().map(|(x, y)| (model.eval(q, *x) - y).powi(2)).sum() };
    let (y0, y1) = (points[0].1, points[n - 1].1);
    let (params, best) = model
        .starts(y0, y1)
        .iter()
        .map(|s| {
            // Two restarts from the first optimum escape a collapsed simplex.
            let (a, _) = nelder_mead(&sse, s, 2000);
            nelder_mead(&sse, &a, 2000)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    if !best.is_finite() {
        return None;
    }
    let nf = n as f64;
    let sigma = (best / (n - p) as f64).sqrt().max(1e-6);
    let bic = nf * (best / nf).max(1e-300).ln() + p as f64 * nf.ln();
    Some(Fit { model, params, sse: best, sigma, bic })
}

/// Every model that fits the points.
pub fn fit_all(points: &[(f64, f64)]) -> Vec<Fit> {
    MODELS.iter().filter_map(|&m| fit(m, points)).collect()
}

/// Points `(epoch, score)` of scores listed per epoch from epoch 1 (`None`: no validation that epoch).
pub fn points(scores: &[Option<f64>]) -> Vec<(f64, f64)> {
    scores.iter().enumerate().filter_map(|(i, s)| s.filter(|v| v.is_finite()).map(|v| ((i + 1) as f64, v))).collect()
}

/// Standard normal distribution function (Abramowitz and Stegun 7.1.26 through erf; error below 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// Predictions of a curve's largest value over its remaining epochs: per model, its weight, residual σ and the
/// bootstrap refits' predictions.
#[derive(Clone, Debug)]
pub struct Extrapolation {
    /// `(model, weight, σ, predicted largest values over the remaining epochs)`.
    pub members: Vec<(Model, f64, f64, Vec<f64>)>,
}

/// Bootstrap refits per model.
pub const BOOTSTRAP: usize = 16;

impl Extrapolation {
    /// Fits the ensemble to points `(epoch, score)` observed up to epoch `seen` and extrapolates over epochs
    /// `seen + 1 ..= last`, resampling residuals with `seed`.
    pub fn new(points: &[(f64, f64)], seen: usize, last: usize, seed: u64) -> Self {
        let fits = fit_all(points);
        let best_bic = fits.iter().map(|f| f.bic).fold(f64::INFINITY, f64::min);
        let mut members = Vec::new();
        let mut state = seed ^ 0xC0FF_EE00;
        let ahead: Vec<f64> = ((seen + 1).min(last)..=last).map(|e| e as f64).collect();
        let peak = |m: Model, p: &[f64]| ahead.iter().map(|&x| m.eval(p, x)).fold(f64::NEG_INFINITY, f64::max);
        for f in &fits {
            let fitted: Vec<f64> = points.iter().map(|(x, _)| f.model.eval(&f.params, *x)).collect();
            let residuals: Vec<f64> = points.iter().zip(&fitted).map(|((_, y), m)| y - m).collect();
            let mut preds = vec![peak(f.model, &f.params)];
            for _ in 0..BOOTSTRAP {
                let resampled: Vec<(f64, f64)> = points
                    .iter()
                    .zip(&fitted)
                    .map(|((x, _), m)| {
                        state = vesalius_io::mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
                        (*x, m + residuals[(state % residuals.len() as u64) as usize])
                    })
                    .collect();
                if let Some(r) = fit(f.model, &resampled) {
                    preds.push(peak(r.model, &r.params));
                }
            }
            preds.retain(|p| p.is_finite());
            if !preds.is_empty() {
                members.push((f.model, (-(f.bic - best_bic) / 2.0).exp(), f.sigma, preds));
            }
        }
        let total: f64 = members.iter().map(|m| m.1).sum();
        for m in &mut members {
            m.1 /= total.max(f64::MIN_POSITIVE);
        }
        Self { members }
    }

    /// Whether any model fitted.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The ensemble's mean prediction of the largest value ahead.
    pub fn mean(&self) -> f64 {
        self.members.iter().map(|(_, w, _, p)| w * p.iter().sum::<f64>() / p.len() as f64).sum()
    }

    /// Probability that a score ahead exceeds `target` (1 when no model fits: nothing is known).
    pub fn probability_above(&self, target: f64) -> f64 {
        if self.members.is_empty() {
            return 1.0;
        }
        self.members.iter().map(|(_, w, s, p)| w * p.iter().map(|v| normal_cdf((v - target) / s)).sum::<f64>() / p.len() as f64).sum()
    }
}
