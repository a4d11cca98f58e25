//! Comparing the recipe of an existing run with the one asked for.
//!
//! ```
//! use vesalius_train::recipe::changed_keys;
//! let old = "seed = 1\n[train]\nepochs = 10\nlr = 0.01\n";
//! let new = "seed = 1\n[train]\nepochs = 20\nlr = 0.01\nbatch = 4\n";
//! assert_eq!(changed_keys(old, new).unwrap(), vec!["train.batch".to_string(), "train.epochs".to_string()]);
//! ```
use std::collections::BTreeMap;

/// The dotted keys (`train.epochs`, `data.cases[2].image`) whose values differ between two TOML documents, in
/// sorted order; a key present in one only counts as differing.
pub fn changed_keys(old: &str, new: &str) -> Result<Vec<String>, String> {
    let parse = |t: &str| t.parse::<toml::Table>().map_err(|e| e.to_string());
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &toml::Value::Table(parse(old)?), &mut a);
    flatten("", &toml::Value::Table(parse(new)?), &mut b);
    let mut keys: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            out.insert(format!("{prefix}.len"), toml::Value::Integer(items.len() as i64));
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// What a task allows to change in the recipe of a run it resumes.
#[derive(Clone, Debug, Default)]
pub struct ResumeRules {
    /// Keys that may change freely (learning rates: a diverged run resumes with a smaller one).
    pub free: Vec<String>,
    /// Keys that set the length of training (`train.epochs`): allowed to change when `schedule_depends` is false.
    pub length: Vec<String>,
    /// Whether the learning-rate schedule depends on the length of training (poly, cosine, multistep over epochs).
    pub schedule_depends: bool,
}

impl ResumeRules {
    /// `Ok` when `new` may resume a run of `old`; otherwise the message that names the differing keys.
    pub fn check(&self, old: &str, new: &str) -> Result<(), String> {
        let keys = changed_keys(old, new).map_err(|e| format!("the stored recipe cannot be read: {e}"))?;
        let refused: Vec<&String> = keys.iter().filter(|k| !self.free.contains(k) && !self.length.contains(k)).collect();
        if !refused.is_empty() {
            let names: Vec<&str> = refused.iter().map(|k| k.as_str()).collect();
            return Err(format!(
                "the run folder holds a run of another recipe (differing keys: {}); choose another run folder or restore those values",
                names.join(", ")
            ));
        }
        let length: Vec<&str> = keys.iter().filter(|k| self.length.contains(k)).map(|k| k.as_str()).collect();
        if !length.is_empty() && self.schedule_depends {
            return Err(format!(
                "{} changed, but this recipe's learning-rate schedule depends on the length of training, so the epochs already run would not match; start a new run folder",
                length.join(", ")
            ));
        }
        Ok(())
    }
}

/// Learning-rate schedules, stepped once per epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// The rate times `gamma` at each milestone epoch (0-based epoch index at which the new rate starts).
    MultiStep {
        /// Epochs where the rate drops.
        milestones: Vec<usize>,
        /// Factor applied at each milestone.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` over all epochs.
    Cosine {
        /// Final rate.
        #[serde(default)]
        min_lr: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

impl Schedule {
    /// Whether the schedule's values make sense with the base rate `base`: a cosine's final rate in `[0, base]`,
    /// a multi-step's factor in `(0, 1]` and its milestones increasing; the problem, in words, when not.
    pub fn check(&self, base: f64) -> Result<(), String> {
        match self {
            Schedule::Constant => Ok(()),
            Schedule::MultiStep { milestones, gamma } => {
                if !(*gamma > 0.0 && *gamma <= 1.0) {
                    Err(format!("multistep gamma must lie in (0, 1], not {gamma}"))
                } else if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    Err(format!("multistep milestones must increase, not {milestones:?}"))
                } else {
                    Ok(())
                }
            }
            Schedule::Cosine { min_lr } if !(*min_lr >= 0.0 && *min_lr <= base) => {
                Err(format!("cosine min_lr must lie in [0, lr = {base}], not {min_lr}"))
            }
            Schedule::Cosine { .. } => Ok(()),
        }
    }

    /// Learning rate of (0-based) `epoch` out of `epochs`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::MultiStep { milestones, gamma } => base * gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32),
            Schedule::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let m = Schedule::MultiStep { milestones: vec![50, 75], gamma: 0.1 };
        assert_eq!(m.lr(1e-3, 0, 100), 1e-3);
        assert!((m.lr(1e-3, 50, 100) - 1e-4).abs() < 1e-15);
        assert!((m.lr(1e-3, 99, 100) - 1e-5).abs() < 1e-15);
        let c = Schedule::Cosine { min_lr: 0.0 };
        assert_eq!(c.lr(1.0, 0, 10), 1.0);
        assert!((c.lr(1.0, 5, 10) - 0.5).abs() < 1e-12);
        assert_eq!((c.check(1.0), m.check(1e-3), Schedule::Constant.check(1.0)), (Ok(()), Ok(()), Ok(())));
        assert!(Schedule::Cosine { min_lr: 2.0 }.check(1.0).unwrap_err().contains("min_lr"));
        assert!(Schedule::MultiStep { milestones: vec![5, 5], gamma: 0.1 }.check(1.0).unwrap_err().contains("increase"));
        assert!(Schedule::MultiStep { milestones: vec![5], gamma: f64::NAN }.check(1.0).unwrap_err().contains("gamma"));
    }
}
