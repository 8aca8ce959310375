//! Errors of reading data files.

use std::path::PathBuf;

/// A data file that cannot be read or holds no usable record. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file's content is not what it should be.
    #[error("{path}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
