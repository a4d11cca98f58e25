//! The `vesalius` command-line interface, as a library so that its commands can be tested in-process.
//!
//! Commands: `train`, `tune`, `evaluate`, `predict`, `info`, `bench`, and more (see `vesalius --help`). Exit codes: 0 on success, 2 for bad input or usage
//! (with a one-line `error: …` on standard error naming the file and the problem), 1 for internal failures.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let png = dir.path().join("x.png");
//! image::GrayImage::new(5, 4).save(&png).unwrap();
//! let json = vesalius::commands::info_json(&png, None).unwrap();
//! assert_eq!(json["shape"], serde_json::json!([5, 4]));
//! ```

pub mod backend;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod detect;
pub mod enhance;
pub mod explain;
pub mod export;
pub mod label;
pub mod radiomics;
pub mod regression;
pub mod response;
pub mod retrieval;
pub mod samples;
pub mod survival;
pub mod tabular;
pub mod tune;
pub mod volumes;

/// A command failure, mapped to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input or usage: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Internal failure: exit code 1.
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Internal(_) => 1,
        }
    }
}

impl From<vesalius_cadx::CadxError> for CliError {
    fn from(e: vesalius_cadx::CadxError) -> Self {
        match e {
            vesalius_cadx::CadxError::Internal(m) => CliError::Internal(m),
            vesalius_cadx::CadxError::Data(d @ vesalius_data::DataError::Write { .. }) => CliError::Internal(d.to_string()),
            other => CliError::Usage(other.to_string()),
        }
    }
}

impl From<vesalius_segmentation::SegError> for CliError {
    fn from(e: vesalius_segmentation::SegError) -> Self {
        match e {
            vesalius_segmentation::SegError::Internal(m) => CliError::Internal(m),
            vesalius_segmentation::SegError::Input(m) => CliError::Usage(m),
        }
    }
}

impl From<vesalius_data::DataError> for CliError {
    fn from(e: vesalius_data::DataError) -> Self {
        match e {
            // An output that cannot be written is the machine's failure, not bad input.
            vesalius_data::DataError::Write { .. } => CliError::Internal(e.to_string()),
            other => CliError::Usage(other.to_string()),
        }
    }
}

impl From<vesalius_registration::RegError> for CliError {
    fn from(e: vesalius_registration::RegError) -> Self {
        match e {
            vesalius_registration::RegError::Internal(m) => CliError::Internal(m),
            vesalius_registration::RegError::Input(m) => CliError::Usage(m),
        }
    }
}
