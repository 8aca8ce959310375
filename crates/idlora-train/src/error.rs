//! Errors of configuration, data and training.

use std::path::PathBuf;

/// Everything that can go wrong before or during a run. Messages name the file, key, record or
/// step at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is missing, unknown or out of range.
    #[error("config `{key}`: {message}")]
    Config {
        /// Dotted key, such as `optim.lr` or `data.sources[1].path`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The configuration file does not parse.
    #[error("{path}: {message}")]
    ConfigFile {
        /// The file (or `--set` for overrides).
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A data source holds no usable record (after its malformed ones are set aside).
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
    /// A checkpoint is missing a piece or does not match the run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss is {value} at step {step}: training stopped; the last good checkpoint is {last_checkpoint} (lower the learning rate or enable gradient clipping)"
    )]
    NonFinite {
        /// The step.
        step: usize,
        /// The value seen.
        value: f64,
        /// The checkpoint to resume from (or "none").
        last_checkpoint: String,
    },
    /// A data file cannot be read.
    #[error(transparent)]
    Read(#[from] idlora_data::DataError),
    /// A result file cannot be written.
    #[error(transparent)]
    Write(#[from] idlora_data::WriteError),
    /// The model crate failed.
    #[error(transparent)]
    Model(#[from] idlora_models::ModelError),
    /// The adapter crate failed.
    #[error(transparent)]
    Adapter(#[from] idlora_adapter::AdapterError),
    /// A tensor could not be read back to the host.
    #[error("reading `{name}` back to the host: {message}")]
    Tensor {
        /// The tensor.
        name: String,
        /// The backend's message.
        message: String,
    },
}

/// Result with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

pub(crate) fn config_err(key: impl Into<String>, message: impl Into<String>) -> TrainError {
    TrainError::Config { key: key.into(), message: message.into() }
}
