//! Patient-level assignment of samples to train, validation and test.
use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::source::{Sample, Split};
use crate::{DataError, Result};

/// Shares of patients for validation and test (the rest train) when the source fixes no split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFractions {
    /// Share of patients for validation.
    pub val: f64,
    /// Share of patients for test.
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        Self { val: 0.15, test: 0.15 }
    }
}

/// The grouping key of a sample: its patient id, or its own id when it has none.
fn group_of(s: &Sample) -> &str {
    s.patient.as_deref().unwrap_or(&s.id)
}

/// Gives every sample without a split one, so that all samples of a patient share a split.
///
/// Patients that already have a split (from the source) keep it, and their other samples follow. The remaining
/// patients are shuffled by ChaCha8 seeded with `seed` (after sorting, so input order does not matter) and cut by
/// `fractions`. Returns an error naming the patient when the source put one patient in two splits.
pub fn assign(samples: &mut [Sample], fractions: SplitFractions, seed: u64) -> Result<()> {
    if !(0.0..1.0).contains(&(fractions.val + fractions.test)) || fractions.val < 0.0 || fractions.test < 0.0 {
        return Err(DataError::Invalid(format!("split fractions {fractions:?} must be ≥ 0 and sum below 1")));
    }
    let mut fixed: BTreeMap<String, Split> = BTreeMap::new();
    for s in samples.iter() {
        if let Some(split) = s.split
            && let Some(prev) = fixed.insert(group_of(s).to_string(), split)
            && prev != split
        {
            return Err(DataError::Invalid(format!(
                "patient '{}' appears in both the {} and the {} split",
                group_of(s),
                prev.name(),
                split.name()
            )));
        }
    }
    let free: BTreeSet<String> = samples.iter().map(|s| group_of(s).to_string()).filter(|g| !fixed.contains_key(g)).collect();
    let mut free: Vec<String> = free.into_iter().collect();
    free.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = free.len();
    let n_test = (fractions.test * n as f64).round() as usize;
    let n_val = (fractions.val * n as f64).round() as usize;
    let mut chosen: BTreeMap<String, Split> = fixed;
    for (i, g) in free.into_iter().enumerate() {
        let split = if i < n_test {
            Split::Test
        } else if i < n_test + n_val {
            Split::Val
        } else {
            Split::Train
        };
        chosen.insert(g, split);
    }
    for s in samples.iter_mut() {
        s.split = chosen.get(group_of(s)).copied();
    }
    Ok(())
}

/// Number of samples in each split.
pub fn counts(samples: &[Sample]) -> BTreeMap<Split, usize> {
    let mut c = BTreeMap::new();
    for s in samples {
        if let Some(split) = s.split {
            *c.entry(split).or_insert(0) += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Label, Pixels};

    fn sample(id: usize, patient: Option<usize>, split: Option<Split>) -> Sample {
        Sample {
            id: format!("img{id}"),
            patient: patient.map(|p| format!("p{p}")),
            split,
            label: Label::Class(id % 2),
            pixels: Pixels::U8(vec![0]),
        }
    }

    #[test]
    fn no_patient_in_two_splits() {
        let mut s: Vec<Sample> = (0..300).map(|i| sample(i, Some(i % 40), None)).collect();
        assign(&mut s, SplitFractions::default(), 3).unwrap();
        let mut of: BTreeMap<String, Split> = BTreeMap::new();
        for x in &s {
            let prev = of.insert(x.patient.clone().unwrap(), x.split.unwrap());
            assert!(prev.is_none() || prev == x.split, "patient split apart");
        }
        let per_split = of.values().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(*s).or_insert(0) += 1;
            m
        });
        assert_eq!(per_split[&Split::Test], 6);
        assert_eq!(per_split[&Split::Val], 6);
        assert_eq!(per_split[&Split::Train], 28);
    }

    #[test]
    fn same_seed_same_split_regardless_of_order() {
        let mut a: Vec<Sample> = (0..50).map(|i| sample(i, Some(i / 2), None)).collect();
        let mut b: Vec<Sample> = a.iter().rev().cloned().collect();
        assign(&mut a, SplitFractions::default(), 9).unwrap();
        assign(&mut b, SplitFractions::default(), 9).unwrap();
        for x in &a {
            let y = b.iter().find(|y| y.id == x.id).unwrap();
            assert_eq!(x.split, y.split);
        }
    }

    #[test]
    fn fixed_splits_are_kept_and_propagate_to_the_patient() {
        let mut s = vec![sample(0, Some(1), Some(Split::Test)), sample(1, Some(1), None), sample(2, Some(2), None)];
        assign(&mut s, SplitFractions { val: 0.0, test: 0.0 }, 0).unwrap();
        assert_eq!(s[1].split, Some(Split::Test));
        assert_eq!(s[2].split, Some(Split::Train));
    }

    #[test]
    fn conflicting_fixed_splits_are_an_error() {
        let mut s = vec![sample(0, Some(1), Some(Split::Test)), sample(1, Some(1), Some(Split::Train))];
        let e = assign(&mut s, SplitFractions::default(), 0).unwrap_err().to_string();
        assert!(e.contains("patient 'p1'"), "{e}");
    }
}
