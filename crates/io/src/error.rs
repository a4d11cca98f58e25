//! Errors of the data layer.
use std::path::{Path, PathBuf};

/// Result of the data layer.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// A failure to read or interpret input data. The message names the file (when there is one) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but its content is not valid for its format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An output could not be written: a failure of the machine (disk full, permissions), not of the input.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A problem not tied to one file (an empty dataset, an inconsistent manifest…).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// A format error for `path`.
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        DataError::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A write failure for `path`.
    pub fn write(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Write { path: path.as_ref().to_path_buf(), source }
    }

    /// An I/O error for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io { path: path.as_ref().to_path_buf(), source }
    }
}
