//! Patient-level k-fold cross-validation splits, plain or stratified, written to and read from `splits.json`
//! (nnU-Net's `splits_final.json` form: a list of `{"train": [...], "val": [...]}` holding case ids).
//!
//! ```
//! use vesalius_data::folds::kfold;
//! use vesalius_data::msd::Case;
//! let case = |id: &str, patient: &str| Case { id: id.into(), patient: patient.into(), images: vec![], label: None, stratum: None };
//! let cases = vec![case("a1", "A"), case("a2", "A"), case("b", "B"), case("c", "C"), case("d", "D")];
//! let folds = kfold(&cases, 2, 0).unwrap();
//! assert_eq!(folds.len(), 2);
//! for f in &folds {
//!     // the two scans of patient A are never on both sides
//!     assert_eq!(f.val.contains(&"a1".to_string()), f.val.contains(&"a2".to_string()));
//! }
//! ```
use crate::msd::Case;
use crate::{DataError, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One fold: case ids to train on and to validate on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// Training case ids.
    pub train: Vec<String>,
    /// Validation case ids.
    pub val: Vec<String>,
}

/// Patients with their cases, sorted by patient id (so input order does not matter).
fn patients(cases: &[Case]) -> BTreeMap<&str, Vec<&Case>> {
    let mut m: BTreeMap<&str, Vec<&Case>> = BTreeMap::new();
    for c in cases {
        m.entry(c.patient.as_str()).or_default().push(c);
    }
    m
}

fn folds_from(assignment: &BTreeMap<&str, usize>, cases: &[Case], k: usize) -> Vec<Fold> {
    (0..k)
        .map(|f| {
            let mut train = Vec::new();
            let mut val = Vec::new();
            for c in cases {
                if assignment[c.patient.as_str()] == f { val.push(c.id.clone()) } else { train.push(c.id.clone()) }
            }
            train.sort();
            val.sort();
            Fold { train, val }
        })
        .collect()
}

fn check(cases: &[Case], k: usize) -> Result<()> {
    let n = patients(cases).len();
    if k < 2 || k > n {
        return Err(DataError::Invalid(format!("{k} folds need between 2 and {n} (the number of patients)")));
    }
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(DataError::Invalid(format!("case id '{}' appears twice", w[0])));
    }
    Ok(())
}

/// `k` folds at patient level: patients shuffled by a ChaCha8 generator seeded with `seed`, then dealt to the fold
/// with the fewest cases so far (largest patients first), so fold sizes stay even.
pub fn kfold(cases: &[Case], k: usize, seed: u64) -> Result<Vec<Fold>> {
    check(cases, k)?;
    let by_patient = patients(cases);
    let mut order: Vec<(&str, usize)> = by_patient.iter().map(|(p, c)| (*p, c.len())).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order.sort_by_key(|(_, n)| std::cmp::Reverse(*n)); // stable: shuffled order within equal sizes
    let mut load = vec![0usize; k];
    let mut assignment = BTreeMap::new();
    for (p, n) in order {
        let f = (0..k).min_by_key(|&f| (load[f], f)).expect("k ≥ 2");
        load[f] += n;
        assignment.insert(p, f);
    }
    Ok(folds_from(&assignment, cases, k))
}

/// `k` patient-level folds stratified by each case's `stratum` (a patient takes the stratum of most of its
/// cases): within each stratum, patients are shuffled and dealt round-robin, continuing from where the previous
/// stratum stopped, so every fold gets its share of every stratum.
pub fn stratified_kfold(cases: &[Case], k: usize, seed: u64) -> Result<Vec<Fold>> {
    check(cases, k)?;
    let by_patient = patients(cases);
    let mut strata: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (p, cs) in &by_patient {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in cs {
            let s = c.stratum.as_deref().ok_or_else(|| DataError::Invalid(format!("case '{}' has no stratum", c.id)))?;
            *counts.entry(s).or_default() += 1;
        }
        let s = counts.iter().max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s))).map(|(s, _)| s.to_string()).expect("one case at least");
        strata.entry(s).or_default().push(p);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut assignment = BTreeMap::new();
    let mut next = 0usize;
    for (_, mut ps) in strata {
        ps.shuffle(&mut rng);
        for p in ps {
            assignment.insert(p, next % k);
            next += 1;
        }
    }
    Ok(folds_from(&assignment, cases, k))
}

/// Writes folds to `path` atomically.
pub fn write_splits(path: &Path, folds: &[Fold]) -> Result<()> {
    let text = serde_json::to_string_pretty(folds).map_err(|e| DataError::Invalid(e.to_string()))?;
    vesalius_io::write_atomic(path, text.as_bytes())
}

/// Reads folds from `path`; every fold must have training and validation cases and no case on both sides.
pub fn read_splits(path: &Path) -> Result<Vec<Fold>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let folds: Vec<Fold> = serde_json::from_str(&text).map_err(|e| DataError::format(path, e.to_string()))?;
    for (i, f) in folds.iter().enumerate() {
        if f.train.is_empty() || f.val.is_empty() {
            return Err(DataError::format(path, format!("fold {i} has an empty side")));
        }
        if let Some(c) = f.val.iter().find(|c| f.train.contains(c)) {
            return Err(DataError::format(path, format!("fold {i} has case '{c}' in both train and val")));
        }
    }
    Ok(folds)
}
