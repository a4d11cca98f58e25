//! Survival (time-to-event) evaluation, with scikit-survival's conventions (values checked against it):
//!
//! * **Higher risk = earlier event.** A risk score is concordant with a pair when the subject who had the event
//!   first has the higher score.
//! * [`harrell_c`]: comparable pairs are an event at `tᵢ` and any subject whose time is later, or censored at the
//!   same time; tied risks (within 1e-8) count one half.
//! * [`uno_c`]: the same pairs weighted by `1 / Ĝ(tᵢ)²` for events before the truncation time `τ`, where `Ĝ` is the
//!   Kaplan–Meier estimate of the censoring distribution on the training data ([`CensoringDistribution`]).
//! * [`brier_scores`] and [`integrated_brier`]: inverse-probability-of-censoring weighted Brier scores of predicted
//!   survival probabilities at given times, and their trapezoidal mean.
//! * [`cumulative_dynamic_auc`]: cumulative cases (event by `t`) against dynamic controls (still at risk after
//!   `t`), cases weighted by `1 / Ĝ(tᵢ)`; its mean weights each time by the drop of the Kaplan–Meier curve.
//! * [`calibration`]: predicted survival at a time against the Kaplan–Meier survival of groups of subjects binned by
//!   their prediction.
//! * Evaluation times must lie inside the test data's follow-up (`[min time, max time)`), and the censoring
//!   survival must not reach zero where a weight needs it: otherwise a [`SurvivalError`] says so.
//!
//! ```
//! use vesalius_eval::survival::{harrell_c, KaplanMeier};
//! let time = [1.0, 2.0, 3.0, 4.0];
//! let event = [true, true, false, true];
//! let km = KaplanMeier::fit(&time, &event);
//! assert_eq!(km.at(2.5), 0.5);                      // (1 − 1/4)(1 − 1/3)
//! let risk = [4.0, 3.0, 2.0, 1.0];                   // earlier events have higher risk: perfectly concordant
//! assert_eq!(harrell_c(&time, &event, &risk).unwrap().c, 1.0);
//! ```

/// A failure of a survival metric on its inputs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SurvivalError {
    /// Inputs of different lengths, no data, or non-finite values.
    #[error("{0}")]
    Invalid(String),
    /// An evaluation time outside the data's follow-up.
    #[error("evaluation time {time} lies outside the follow-up of the data [{min}, {max}): choose times inside it")]
    OutsideFollowUp {
        /// The time asked for.
        time: f64,
        /// Smallest observed time.
        min: f64,
        /// Largest observed time.
        max: f64,
    },
    /// The censoring survival reaches zero where a weight needs it.
    #[error("the censoring survival function is zero at time {0}: inverse-probability weights are undefined there (truncate earlier)")]
    ZeroCensoringSurvival(f64),
    /// No comparable pair.
    #[error("no comparable pair: the concordance index is undefined")]
    NoComparablePairs,
}

fn check(time: &[f64], event: &[bool], other: usize) -> Result<(), SurvivalError> {
    if time.is_empty() {
        return Err(SurvivalError::Invalid("no subjects".into()));
    }
    if time.len() != event.len() || time.len() != other {
        return Err(SurvivalError::Invalid(format!("{} times, {} event flags and {other} scores", time.len(), event.len())));
    }
    if time.iter().any(|t| !t.is_finite()) {
        return Err(SurvivalError::Invalid("times must be finite".into()));
    }
    Ok(())
}

/// Distinct times in increasing order with, at each, the subjects at risk, events and censorings.
fn counts(time: &[f64], event: &[bool]) -> Vec<(f64, usize, usize, usize)> {
    let mut order: Vec<usize> = (0..time.len()).collect();
    order.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let mut out = Vec::new();
    let mut at_risk = time.len();
    let mut k = 0;
    while k < order.len() {
        let t = time[order[k]];
        let (mut d, mut c) = (0, 0);
        while k < order.len() && time[order[k]] == t {
            if event[order[k]] {
                d += 1
            } else {
                c += 1
            }
            k += 1;
        }
        out.push((t, at_risk, d, c));
        at_risk -= d + c;
    }
    out
}

/// A right-continuous step function `S(t)`: 1 before the first step.
#[derive(Clone, Debug, PartialEq)]
pub struct KaplanMeier {
    /// Distinct observed times.
    pub times: Vec<f64>,
    /// The estimate just after each time.
    pub survival: Vec<f64>,
}

impl KaplanMeier {
    /// The Kaplan–Meier estimate of the event-free probability.
    pub fn fit(time: &[f64], event: &[bool]) -> Self {
        let mut s = 1.0;
        let mut out = Self { times: Vec::new(), survival: Vec::new() };
        for (t, n, d, _) in counts(time, event) {
            if d > 0 {
                s *= 1.0 - d as f64 / n as f64;
            }
            out.times.push(t);
            out.survival.push(s);
        }
        out
    }

    /// `S(t)`: the estimate at the last step at or before `t`.
    pub fn at(&self, t: f64) -> f64 {
        match self.times.partition_point(|&x| x <= t) {
            0 => 1.0,
            i => self.survival[i - 1],
        }
    }
}

/// The two-group log-rank test of `group` against the rest: (χ², p-value with one degree of freedom).
pub fn log_rank(time: &[f64], event: &[bool], group: &[bool]) -> (f64, f64) {
    let mut times: Vec<f64> = time.iter().zip(event).filter(|(_, e)| **e).map(|(t, _)| *t).collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let (mut o_e, mut var) = (0.0, 0.0);
    for &t in &times {
        let (mut n, mut n1, mut d, mut d1) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..time.len() {
            if time[i] >= t {
                n += 1.0;
                if group[i] {
                    n1 += 1.0;
                }
            }
            if time[i] == t && event[i] {
                d += 1.0;
                if group[i] {
                    d1 += 1.0;
                }
            }
        }
        if n > 1.0 {
            o_e += d1 - d * n1 / n;
            var += d * (n1 / n) * (1.0 - n1 / n) * (n - d) / (n - 1.0);
        }
    }
    let chi2 = if var > 0.0 { o_e * o_e / var } else { 0.0 };
    (chi2, erfc((chi2 / 2.0).sqrt()))
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The Kaplan–Meier estimate `Ĝ` of the censoring distribution (censorings as events, subjects with an event at
/// the same time removed from the risk set first), as scikit-survival's `CensoringDistributionEstimator`.
#[derive(Clone, Debug, PartialEq)]
pub struct CensoringDistribution {
    km: KaplanMeier,
}

impl CensoringDistribution {
    /// Fits `Ĝ` on training data.
    pub fn fit(time: &[f64], event: &[bool]) -> Self {
        let mut g = 1.0;
        let mut km = KaplanMeier { times: Vec::new(), survival: Vec::new() };
        for (t, n, d, c) in counts(time, event) {
            let at_risk = n - d;
            if c > 0 && at_risk > 0 {
                g *= 1.0 - c as f64 / at_risk as f64;
            }
            km.times.push(t);
            km.survival.push(g);
        }
        Self { km }
    }

    /// `Ĝ(t)`.
    pub fn at(&self, t: f64) -> f64 {
        self.km.at(t)
    }

    fn weight(&self, t: f64) -> Result<f64, SurvivalError> {
        let g = self.at(t);
        if g <= 0.0 {
            return Err(SurvivalError::ZeroCensoringSurvival(t));
        }
        Ok(1.0 / g)
    }
}

/// A concordance index with its pair counts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Concordance {
    /// The index.
    pub c: f64,
    /// Concordant pairs.
    pub concordant: usize,
    /// Discordant pairs.
    pub discordant: usize,
    /// Comparable pairs with tied risk.
    pub tied_risk: usize,
    /// Comparable pairs with tied time (an event and a censoring at the same time).
    pub tied_time: usize,
}

const TIED_TOL: f64 = 1e-8;

fn concordance(time: &[f64], event: &[bool], risk: &[f64], weights: &[f64]) -> Result<Concordance, SurvivalError> {
    let mut order: Vec<usize> = (0..time.len()).collect();
    order.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let n = order.len();
    let (mut num, mut den) = (0.0, 0.0);
    let mut out = Concordance { c: f64::NAN, concordant: 0, discordant: 0, tied_risk: 0, tied_time: 0 };
    let mut i = 0;
    while i < n {
        let t = time[order[i]];
        let mut end = i + 1;
        while end < n && time[order[end]] == t {
            end += 1;
        }
        let censored_here: Vec<usize> = (i..end).filter(|&k| !event[order[k]]).map(|k| order[k]).collect();
        for k in i..end {
            let a = order[k];
            if !event[a] {
                continue;
            }
            out.tied_time += censored_here.len();
            let w = weights[a];
            let mut tally = |b: usize| {
                if (risk[b] - risk[a]).abs() <= TIED_TOL {
                    out.tied_risk += 1;
                    num += 0.5 * w;
                } else if risk[b] < risk[a] {
                    out.concordant += 1;
                    num += w;
                } else {
                    out.discordant += 1;
                }
                den += w;
            };
            for &b in &censored_here {
                tally(b);
            }
            for &b in &order[end..] {
                tally(b);
            }
        }
        i = end;
    }
    if den <= 0.0 {
        return Err(SurvivalError::NoComparablePairs);
    }
    out.c = num / den;
    Ok(out)
}

/// Harrell's concordance index of risk scores (higher risk = earlier event).
pub fn harrell_c(time: &[f64], event: &[bool], risk: &[f64]) -> Result<Concordance, SurvivalError> {
    check(time, event, risk.len())?;
    concordance(time, event, risk, &vec![1.0; time.len()])
}

/// Uno's concordance index truncated at `tau`, with the censoring distribution `censoring` (fitted on the training
/// data).
pub fn uno_c(
    time: &[f64],
    event: &[bool],
    risk: &[f64],
    censoring: &CensoringDistribution,
    tau: f64,
) -> Result<Concordance, SurvivalError> {
    check(time, event, risk.len())?;
    let weights = (0..time.len())
        .map(|i| if event[i] && time[i] < tau { censoring.weight(time[i]).map(|w| w * w) } else { Ok(0.0) })
        .collect::<Result<Vec<f64>, _>>()?;
    concordance(time, event, risk, &weights)
}

fn check_times(time: &[f64], times: &[f64]) -> Result<(), SurvivalError> {
    let min = time.iter().copied().fold(f64::INFINITY, f64::min);
    let max = time.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if times.is_empty() {
        return Err(SurvivalError::Invalid("no evaluation time".into()));
    }
    for &t in times {
        if !(t >= min && t < max) {
            return Err(SurvivalError::OutsideFollowUp { time: t, min, max });
        }
    }
    Ok(())
}

/// IPCW Brier scores at `times` of predicted survival probabilities `survival[i][k]` (subject `i`, time `k`).
pub fn brier_scores(
    time: &[f64],
    event: &[bool],
    survival: &[Vec<f64>],
    times: &[f64],
    censoring: &CensoringDistribution,
) -> Result<Vec<f64>, SurvivalError> {
    check(time, event, survival.len())?;
    check_times(time, times)?;
    if survival.iter().any(|s| s.len() != times.len()) {
        return Err(SurvivalError::Invalid(format!("every subject needs {} survival probabilities", times.len())));
    }
    let g_at = |t: f64| {
        let g = censoring.at(t);
        if g > 0.0 { g } else { f64::INFINITY }
    };
    Ok(times
        .iter()
        .enumerate()
        .map(|(k, &t)| {
            let gt = g_at(t);
            (0..time.len())
                .map(|i| {
                    let s = survival[i][k];
                    if time[i] <= t && event[i] {
                        s * s / g_at(time[i])
                    } else if time[i] > t {
                        (1.0 - s) * (1.0 - s) / gt
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
                / time.len() as f64
        })
        .collect())
}

/// The integrated Brier score: the trapezoidal integral of [`brier_scores`] over `times`, divided by their span.
pub fn integrated_brier(
    time: &[f64],
    event: &[bool],
    survival: &[Vec<f64>],
    times: &[f64],
    censoring: &CensoringDistribution,
) -> Result<f64, SurvivalError> {
    if times.len() < 2 {
        return Err(SurvivalError::Invalid("the integrated Brier score needs at least two times".into()));
    }
    let b = brier_scores(time, event, survival, times, censoring)?;
    let area: f64 = (1..times.len()).map(|k| 0.5 * (b[k] + b[k - 1]) * (times[k] - times[k - 1])).sum();
    Ok(area / (times[times.len() - 1] - times[0]))
}

/// Cumulative/dynamic AUC of risk scores at each of `times`, and its mean weighted by the Kaplan–Meier drop.
pub fn cumulative_dynamic_auc(
    time: &[f64],
    event: &[bool],
    risk: &[f64],
    times: &[f64],
    censoring: &CensoringDistribution,
) -> Result<(Vec<f64>, f64), SurvivalError> {
    check(time, event, risk.len())?;
    check_times(time, times)?;
    let weights = (0..time.len()).map(|i| if event[i] { censoring.weight(time[i]) } else { Ok(0.0) }).collect::<Result<Vec<f64>, _>>()?;
    let mut order: Vec<usize> = (0..time.len()).collect();
    order.sort_by(|&a, &b| risk[b].total_cmp(&risk[a]));
    let mut scores = Vec::with_capacity(times.len());
    for &t in times {
        let (mut tp, mut fp) = (0.0, 0.0);
        let (mut tps, mut fps) = (vec![0.0], vec![0.0]);
        for (pos, &i) in order.iter().enumerate() {
            if time[i] <= t && event[i] {
                tp += weights[i];
            } else if time[i] > t {
                fp += 1.0;
            }
            // One point per distinct risk: the last of a tied run.
            let last_of_run = pos + 1 == order.len() || (risk[order[pos + 1]] - risk[i]).abs() > TIED_TOL;
            if last_of_run {
                tps.push(tp);
                fps.push(fp);
            }
        }
        let (tp_total, fp_total) = (tp, fp);
        if tp_total <= 0.0 || fp_total <= 0.0 {
            return Err(SurvivalError::Invalid(format!("no cases or no controls at time {t}")));
        }
        let auc: f64 = (1..tps.len()).map(|k| 0.5 * (tps[k] + tps[k - 1]) / tp_total * (fps[k] - fps[k - 1]) / fp_total).sum();
        scores.push(auc);
    }
    let mean = if times.len() == 1 {
        scores[0]
    } else {
        let km = KaplanMeier::fit(time, event);
        let s: Vec<f64> = times.iter().map(|&t| km.at(t)).collect();
        let mut prev = 1.0;
        let mut integral = 0.0;
        for (k, &sk) in s.iter().enumerate() {
            integral += scores[k] * (prev - sk);
            prev = sk;
        }
        integral / (1.0 - s[s.len() - 1])
    };
    Ok((scores, mean))
}

/// One group of a calibration table: subjects binned by predicted survival at a time.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CalibrationBin {
    /// Subjects in the group.
    pub subjects: usize,
    /// Mean predicted survival at the time.
    pub predicted: f64,
    /// Observed survival at the time: the group's Kaplan–Meier estimate.
    pub observed: f64,
}

/// Calibration at time `t`: subjects sorted by predicted survival `predicted` and cut into `groups` groups of
/// (nearly) equal size; each group's mean prediction beside its Kaplan–Meier survival at `t`.
pub fn calibration(time: &[f64], event: &[bool], predicted: &[f64], t: f64, groups: usize) -> Result<Vec<CalibrationBin>, SurvivalError> {
    check(time, event, predicted.len())?;
    check_times(time, &[t])?;
    if groups == 0 || groups > time.len() {
        return Err(SurvivalError::Invalid(format!("{groups} calibration groups for {} subjects", time.len())));
    }
    let mut order: Vec<usize> = (0..time.len()).collect();
    order.sort_by(|&a, &b| predicted[a].total_cmp(&predicted[b]));
    Ok((0..groups)
        .map(|g| {
            let members = &order[g * order.len() / groups..(g + 1) * order.len() / groups];
            let (t_g, e_g): (Vec<f64>, Vec<bool>) = members.iter().map(|&i| (time[i], event[i])).unzip();
            CalibrationBin {
                subjects: members.len(),
                predicted: members.iter().map(|&i| predicted[i]).sum::<f64>() / members.len() as f64,
                observed: KaplanMeier::fit(&t_g, &e_g).at(t),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {

    #[test]
    fn log_rank_matches_lifelines() {
        // lifelines' logrank_test on these groups: χ² = 5.347772, p = 0.0207488
        let time = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let event = [true, true, false, true, true, true, false, true];
        let group = [true, true, true, true, false, false, false, false];
        let (chi2, p) = log_rank(&time, &event, &group);
        assert!((chi2 - 5.347_772).abs() < 1e-5 && (p - 0.020_748_8).abs() < 1e-5, "{chi2} {p}");
        assert!((erfc(0.5) - 0.479_500_122).abs() < 1e-7);
    }

    use super::*;

    #[test]
    fn calibration_of_the_true_survival_matches_its_kaplan_meier() {
        // Two groups with known survival at t = 1: everyone in the first dies before 1, nobody in the second.
        let time = [0.5, 0.6, 0.7, 0.8, 2.0, 2.5, 3.0, 3.5];
        let event = [true; 8];
        let predicted = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let bins = calibration(&time, &event, &predicted, 1.0, 2).unwrap();
        assert_eq!(
            bins,
            vec![
                CalibrationBin { subjects: 4, predicted: 0.0, observed: 0.0 },
                CalibrationBin { subjects: 4, predicted: 1.0, observed: 1.0 }
            ]
        );
        assert!(calibration(&time, &event, &predicted, 1.0, 9).is_err());
    }

    #[test]
    fn evaluation_times_outside_follow_up_and_zero_censoring_survival_are_named() {
        let time = [1.0, 2.0, 3.0];
        let event = [true, false, true];
        let g = CensoringDistribution::fit(&time, &event);
        let surv = vec![vec![0.5]; 3];
        assert_eq!(
            brier_scores(&time, &event, &surv, &[5.0], &g).unwrap_err(),
            SurvivalError::OutsideFollowUp { time: 5.0, min: 1.0, max: 3.0 }
        );
        // Everyone censored at 2 after the event at 1: Ĝ drops to 0 at 2, and the event at 3 needs it.
        let (time, event) = ([1.0, 2.0, 3.0], [true, false, true]);
        let g0 = CensoringDistribution { km: KaplanMeier { times: vec![1.0, 2.0, 3.0], survival: vec![1.0, 0.0, 0.0] } };
        assert_eq!(uno_c(&time, &event, &[3.0, 2.0, 1.0], &g0, 10.0).unwrap_err(), SurvivalError::ZeroCensoringSurvival(3.0));
        assert!(harrell_c(&[1.0], &[false], &[0.0]).is_err());
    }
}
