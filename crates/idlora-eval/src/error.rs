//! Errors of the benchmark runners.

use std::path::PathBuf;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A data file is missing, unreadable or has no usable item.
    #[error("{path}: {message}")]
    Data {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Settings(String),
    /// The model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] idlora_models::ModelError),
    /// Reading a data file failed.
    #[error(transparent)]
    Read(#[from] idlora_data::DataError),
    /// Writing a result file failed.
    #[error(transparent)]
    Write(#[from] idlora_data::WriteError),
    /// Reading tensors back from the device failed.
    #[error("reading results back from the device: {0}")]
    Backend(String),
    /// The sandbox could not run a program.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A file-system error.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

pub(crate) fn data_err(path: &std::path::Path, message: impl Into<String>) -> EvalError {
    EvalError::Data { path: path.to_path_buf(), message: message.into() }
}
