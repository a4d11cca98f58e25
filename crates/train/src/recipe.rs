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
