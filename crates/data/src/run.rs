//! A run folder: where training writes its recipe, plan, checkpoints, logs and metrics, every file atomically.
//!
//! ```
//! use vesalius_data::run::RunDir;
//! let dir = std::env::temp_dir().join(format!("vesalius-run-doc-{}", std::process::id()));
//! let run = RunDir::new(&dir);
//! run.write_json("state.json", &serde_json::json!({ "step": 3 })).unwrap();
//! let state: serde_json::Value = run.read_json("state.json").unwrap();
//! assert_eq!(state["step"], 3);
//! run.append_line("log.jsonl", "{\"step\":1}").unwrap();
//! run.append_line("log.jsonl", "{\"step\":2}").unwrap();
//! assert_eq!(std::fs::read_to_string(run.file("log.jsonl")).unwrap().lines().count(), 2);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
use std::path::{Path, PathBuf};

use crate::io::write_atomic;
use crate::{DataError, Result};

/// Paths inside a run folder and its JSON and byte files.
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
    /// Reads and parses a JSON file of the run; the error names the file.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        read_json(&self.file(name))
    }
    /// Writes pretty JSON atomically.
    pub fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<()> {
        write_json(&self.file(name), value)
    }
    /// Appends one line to a log file of the run (created if missing); the file is rewritten atomically, so an
    /// interruption leaves it with or without the line, never with part of it.
    pub fn append_line(&self, name: &str, line: &str) -> Result<()> {
        let path = self.file(name);
        let mut text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(DataError::io(&path, e)),
        };
        text.push_str(line);
        text.push('\n');
        write_atomic(&path, text.as_bytes())
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
