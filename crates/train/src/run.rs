//! A run folder: where training writes its recipe, run information, checkpoint sets, log and metrics, every file
//! atomically (temporary file, `fsync`, rename) except the log, which is appended to and cut back to the length
//! the last checkpoint recorded.
//!
//! ```
//! use vesalius_train::run::RunDir;
//! let dir = tempfile::tempdir().unwrap();
//! let run = RunDir::new(dir.path().join("run"));
//! run.write_json("run.json", &serde_json::json!({ "classes": 3 })).unwrap();
//! let info: serde_json::Value = run.read_json("run.json").unwrap();
//! assert_eq!(info["classes"], 3);
//! let after_one = run.append_log_line("{\"epoch\":1}").unwrap();
//! run.append_log_line("{\"epoch\":2}").unwrap();
//! run.truncate_log(after_one).unwrap(); // back to the length a checkpoint recorded
//! assert_eq!(std::fs::read_to_string(run.log()).unwrap(), "{\"epoch\":1}\n");
//! ```
use std::io::Write;
use std::path::{Path, PathBuf};

use vesalius_io::write_atomic;
use vesalius_io::{DataError, Result};

/// The files of a run folder. Every task writes the same layout:
///
/// ```text
/// RUN/
///   recipe.toml                 the resolved recipe
///   run.json                    what inference needs besides the weights (task-specific)
///   log.jsonl                   one line per epoch (see `engine::EpochRecord`)
///   model.mpk                   the best model by the validation score
///   checkpoints/state.json      names the last complete checkpoint set (atomic rename)
///   checkpoints/epoch-NNNN/     model.mpk, optim.mpk, state.json of that epoch
///   metrics.json                evaluation (which split it scored is named inside)
/// ```
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run at `root` (created when first written to).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A file of the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// `checkpoints/NAME`.
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.root.join("checkpoints").join(name)
    }
    /// `recipe.toml`.
    pub fn recipe(&self) -> PathBuf {
        self.file("recipe.toml")
    }
    /// `log.jsonl`.
    pub fn log(&self) -> PathBuf {
        self.file("log.jsonl")
    }
    /// `model.mpk`, the best model.
    pub fn best_model(&self) -> PathBuf {
        self.file("model.mpk")
    }
    /// `metrics.json`.
    pub fn metrics(&self) -> PathBuf {
        self.file("metrics.json")
    }
    /// `checkpoints/state.json`, which names the last complete checkpoint set.
    pub fn state(&self) -> PathBuf {
        self.checkpoint("state.json")
    }
    /// A sub-run in a folder of this run (a stage of a multi-stage task, such as registration's affine network).
    pub fn stage(&self, name: &str) -> RunDir {
        RunDir::new(self.root.join(name))
    }
    /// Reads and parses a JSON file of the run; the error names the file.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        read_json(&self.file(name))
    }
    /// Writes pretty JSON atomically.
    pub fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<()> {
        write_json(&self.file(name), value)
    }
    /// Appends one line to `log.jsonl` (created if missing), flushed to disk; returns the file's length after it.
    /// A process killed while appending may leave part of a line: [`RunDir::truncate_log`] to the length the last
    /// checkpoint recorded removes it on resumption.
    pub fn append_log_line(&self, line: &str) -> Result<u64> {
        let path = self.log();
        std::fs::create_dir_all(&self.root).map_err(|e| DataError::io(&self.root, e))?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| DataError::io(&path, e))?;
        f.write_all(format!("{line}\n").as_bytes()).map_err(|e| DataError::io(&path, e))?;
        f.sync_all().map_err(|e| DataError::io(&path, e))?;
        Ok(f.metadata().map_err(|e| DataError::io(&path, e))?.len())
    }
    /// Cuts `log.jsonl` back to `len` bytes (no file and `len` 0 is fine); a log shorter than `len` is an error,
    /// since a checkpoint never names lines that were not written.
    pub fn truncate_log(&self, len: u64) -> Result<()> {
        let path = self.log();
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => {
                let have = f.metadata().map_err(|e| DataError::io(&path, e))?.len();
                if have < len {
                    return Err(DataError::format(&path, format!("the log holds {have} bytes but the checkpoint names {len}")));
                }
                f.set_len(len).map_err(|e| DataError::io(&path, e))?;
                f.sync_all().map_err(|e| DataError::io(&path, e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && len == 0 => Ok(()),
            Err(e) => Err(DataError::io(&path, e)),
        }
    }
}

/// `run.json`: what a trained run needs besides its weights, the same type for every task — the task's name and
/// its own details (network configuration, class names, label values), reachable through `Deref`.
///
/// ```
/// use vesalius_train::run::{RunDir, RunInfo};
/// #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Labels { label_values: Vec<i64> }
/// let dir = tempfile::tempdir().unwrap();
/// let run = RunDir::new(dir.path());
/// run.write_info(&RunInfo::new("registration", Labels { label_values: vec![0, 2, 3] })).unwrap();
/// let info: RunInfo<Labels> = run.read_info().unwrap();
/// assert_eq!((info.task.as_str(), info.label_values.len()), ("registration", 3));
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo<T> {
    /// `classification`, `segmentation`, `registration`, …
    #[serde(default)]
    pub task: String,
    /// The task's own details (flattened into the same JSON object).
    #[serde(flatten)]
    pub details: T,
}

impl<T> RunInfo<T> {
    /// The run information of `task`.
    pub fn new(task: &str, details: T) -> Self {
        Self { task: task.to_string(), details }
    }
}

impl<T> std::ops::Deref for RunInfo<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.details
    }
}

impl RunDir {
    /// The records of `log.jsonl`, in order (empty when there is no log yet).
    pub fn read_log(&self) -> Result<Vec<crate::engine::EpochRecord>> {
        let path = self.log();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DataError::io(&path, e)),
        };
        text.lines()
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| DataError::format(&path, format!("line {}: {e}", i + 1))))
            .collect()
    }
    /// `run.json`.
    pub fn info_file(&self) -> PathBuf {
        self.file("run.json")
    }
    /// Writes `run.json` atomically.
    pub fn write_info<T: serde::Serialize>(&self, info: &RunInfo<T>) -> Result<()> {
        self.write_json("run.json", info)
    }
    /// Reads `run.json`; the error names the file.
    pub fn read_info<T: serde::de::DeserializeOwned>(&self) -> Result<RunInfo<T>> {
        self.read_json("run.json")
    }
}

/// Reads and parses a JSON file; the error names the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::format(path, e.to_string()))
}

/// Writes pretty JSON (with a final newline) atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| DataError::format(path, e.to_string()))?;
    write_atomic(path, format!("{text}\n").as_bytes())
}

/// The `task` a run folder's stored recipe names (`recipe.toml`), if any.
pub fn recipe_task(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("recipe.toml")).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table.get("task").and_then(|v| v.as_str()).map(str::to_string)
}
