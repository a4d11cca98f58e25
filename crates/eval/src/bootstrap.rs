//! Percentile bootstrap confidence intervals over cases, or over patients (a cluster bootstrap) when cases carry
//! patient ids: several images of one patient are not independent, and resampling them one by one gives
//! intervals that are too narrow.
//!
//! ```
//! use vesalius_eval::bootstrap::{cluster_percentile_ci, Clusters};
//! // Six images of three patients; the metric is the mean of the per-image values.
//! let values = [0.9, 0.9, 0.5, 0.5, 0.7, 0.7];
//! let clusters = Clusters::from_ids(&[Some("a"), Some("a"), Some("b"), Some("b"), Some("c"), Some("c")]);
//! assert_eq!((clusters.len(), clusters.unit()), (3, "patients"));
//! let mean = |idx: &[usize]| Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64);
//! let e = cluster_percentile_ci(&clusters, 1000, 0.95, 7, 0.7, mean);
//! assert!(e.ci_low >= 0.5 && e.ci_high <= 0.9 && e.ci_low < 0.7 && 0.7 < e.ci_high);
//! ```
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A point estimate with its confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The metric on all cases.
    pub value: f64,
    /// Lower bound of the interval (`NaN` when no resample defined the metric).
    pub ci_low: f64,
    /// Upper bound of the interval.
    pub ci_high: f64,
    /// Resamples on which the metric was defined (e.g. AUC needs both classes present).
    pub resamples: usize,
}

/// The percentile interval at `level` (e.g. 0.95) of `metric` over `n_resamples` resamples of `n` cases.
///
/// `metric` receives the indices of one resample (with repetitions) and returns `None` when the metric is
/// undefined on it; such resamples are left out. The generator is ChaCha8 seeded with `seed`, so the interval is
/// the same on every machine.
pub fn percentile_ci<F>(n: usize, n_resamples: usize, level: f64, seed: u64, value: f64, metric: F) -> Estimate
where
    F: FnMut(&[usize]) -> Option<f64>,
{
    cluster_percentile_ci(&Clusters::cases(n), n_resamples, level, seed, value, metric)
}

/// Calls `f` with the case indices of each of `n_resamples` resamples (with replacement) of `n` cases, drawn by
/// ChaCha8 seeded with `seed`.
pub fn for_each_resample(n: usize, n_resamples: usize, seed: u64, mut f: impl FnMut(&[usize])) {
    if n == 0 {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    for _ in 0..n_resamples {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n);
        }
        f(&idx);
    }
}

/// Which cases belong together in a bootstrap: cases of one patient are drawn (or not) together.
#[derive(Clone, Debug, PartialEq)]
pub struct Clusters {
    members: Vec<Vec<usize>>,
    by_patient: bool,
    one_patient: bool,
}

impl Clusters {
    /// Every case on its own (the ordinary bootstrap over cases).
    pub fn cases(n: usize) -> Self {
        Self { members: (0..n).map(|i| vec![i]).collect(), by_patient: false, one_patient: false }
    }

    /// Cases grouped by patient id, in order of first appearance; a case without an id is a patient of its own.
    /// When no case has an id this is [`Clusters::cases`]. When every case belongs to one patient, patients cannot
    /// be resampled: the cases are, and [`Clusters::unit`] says the interval covers only the variation within that
    /// patient.
    pub fn from_ids<S: AsRef<str>>(ids: &[Option<S>]) -> Self {
        if ids.iter().all(Option::is_none) {
            return Self::cases(ids.len());
        }
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match id {
                Some(id) => {
                    let k = *index.entry(id.as_ref()).or_insert_with(|| {
                        members.push(Vec::new());
                        members.len() - 1
                    });
                    members[k].push(i);
                }
                None => members.push(vec![i]),
            }
        }
        if members.len() < 2 {
            return Self { one_patient: true, ..Self::cases(ids.len()) };
        }
        Self { members, by_patient: true, one_patient: false }
    }

    /// Number of units resampled.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is no unit.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of cases over all units.
    pub fn cases_covered(&self) -> usize {
        self.members.iter().map(Vec::len).sum()
    }

    /// `"patients"` or `"cases"`: what the bootstrap resamples, for reports.
    pub fn unit(&self) -> &'static str {
        match (self.by_patient, self.one_patient) {
            (true, _) => "patients",
            (false, true) => "cases of one patient",
            (false, false) => "cases",
        }
    }
}

/// Calls `f` with the case indices of each of `n_resamples` resamples of the clusters (drawn with replacement,
/// every case of a drawn cluster included). With one case per cluster this is exactly [`for_each_resample`].
pub fn for_each_cluster_resample(clusters: &Clusters, n_resamples: usize, seed: u64, mut f: impl FnMut(&[usize])) {
    let n = clusters.len();
    if n == 0 {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = Vec::new();
    for _ in 0..n_resamples {
        idx.clear();
        for _ in 0..n {
            idx.extend_from_slice(&clusters.members[rng.random_range(0..n)]);
        }
        f(&idx);
    }
}

/// [`percentile_ci`] over resamples of clusters (patients) instead of cases.
pub fn cluster_percentile_ci<F>(clusters: &Clusters, n_resamples: usize, level: f64, seed: u64, value: f64, mut metric: F) -> Estimate
where
    F: FnMut(&[usize]) -> Option<f64>,
{
    let mut values = Vec::with_capacity(n_resamples);
    for_each_cluster_resample(clusters, n_resamples, seed, |idx| {
        if let Some(v) = metric(idx).filter(|v| v.is_finite()) {
            values.push(v);
        }
    });
    let (ci_low, ci_high) = percentile_bounds(&mut values, level);
    Estimate { value, ci_low, ci_high, resamples: values.len() }
}

/// Lower and upper percentiles (linear interpolation, as numpy's default) of `values` at `level`.
pub fn percentile_bounds(values: &mut [f64], level: f64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let alpha = (1.0 - level) / 2.0;
    (quantile_sorted(values, alpha), quantile_sorted(values, 1.0 - alpha))
}

/// Quantile `q` in `[0, 1]` of sorted values, interpolated linearly between order statistics.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        assert_eq!(quantile_sorted(&v, 0.025), 1.1);
        assert!((quantile_sorted(&v, 0.975) - 4.9).abs() < 1e-12);
    }

    #[test]
    fn interval_of_a_mean_covers_it_and_narrows_with_n() {
        let data: Vec<f64> = (0..400).map(|i| (i % 2) as f64).collect();
        let mean = |idx: &[usize]| Some(idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64);
        let e = percentile_ci(400, 1000, 0.95, 1, 0.5, mean);
        assert!(e.ci_low < 0.5 && 0.5 < e.ci_high, "{e:?}");
        // Binomial standard error sqrt(0.25/400) = 0.025: the 95 % interval is about ±0.049.
        assert!((e.ci_high - e.ci_low - 0.098).abs() < 0.02, "{e:?}");
        let small: Vec<f64> = (0..40).map(|i| (i % 2) as f64).collect();
        let e2 = percentile_ci(40, 1000, 0.95, 1, 0.5, |idx| Some(idx.iter().map(|&i| small[i]).sum::<f64>() / 40.0));
        assert!(e2.ci_high - e2.ci_low > 2.5 * (e.ci_high - e.ci_low));
    }

    #[test]
    fn singleton_clusters_are_the_case_bootstrap_and_patients_widen_the_interval() {
        let data: Vec<f64> = (0..60).map(|i| ((i / 3) % 2) as f64).collect();
        let mean = |idx: &[usize]| Some(idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64);
        // The case bootstrap computed directly with `for_each_resample`.
        let mut direct = Vec::new();
        for_each_resample(60, 500, 3, |idx| direct.extend(mean(idx)));
        let (lo, hi) = percentile_bounds(&mut direct, 0.95);
        let cases = cluster_percentile_ci(&Clusters::cases(60), 500, 0.95, 3, 0.5, mean);
        assert_eq!((cases.ci_low, cases.ci_high, cases.resamples), (lo, hi, 500));
        let none: Vec<Option<String>> = vec![None; 60];
        assert_eq!(Clusters::from_ids(&none), Clusters::cases(60));
        // One patient cannot be resampled: the cases are, and the unit says so.
        let one: Vec<Option<&str>> = vec![Some("p"); 60];
        let single = Clusters::from_ids(&one);
        assert_eq!((single.len(), single.unit()), (60, "cases of one patient"));
        assert_eq!(cluster_percentile_ci(&single, 500, 0.95, 3, 0.5, mean), cases);
        // Three images per patient with identical values: resampling patients sees 20 independent units, not 60.
        let ids: Vec<Option<String>> = (0..60).map(|i| Some(format!("p{}", i / 3))).collect();
        let patients = cluster_percentile_ci(&Clusters::from_ids(&ids), 500, 0.95, 3, 0.5, mean);
        let ratio = (patients.ci_high - patients.ci_low) / (cases.ci_high - cases.ci_low);
        assert!((1.4..2.2).contains(&ratio), "width ratio {ratio} (√3 expected)");
    }

    #[test]
    fn same_seed_same_interval_and_undefined_resamples_are_dropped() {
        let f = |idx: &[usize]| if idx[0].is_multiple_of(2) { None } else { Some(idx.len() as f64) };
        let a = percentile_ci(10, 100, 0.95, 5, 1.0, f);
        let b = percentile_ci(10, 100, 0.95, 5, 1.0, f);
        assert_eq!(a, b);
        assert!(a.resamples > 20 && a.resamples < 80);
    }
}
