//! The adapter crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when building, merging, saving or loading an adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A method's settings do not fit the layer it is applied to (rank, `k`, `p`, index sets...).
    #[error("layer `{layer}`: {message}")]
    InvalidConfig {
        /// Module path of the layer (or `<unnamed>`).
        layer: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A setting is invalid on its own (before any layer is seen).
    #[error("invalid {setting}: {message}")]
    InvalidSetting {
        /// Name of the setting.
        setting: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The method cannot be merged into the base weight.
    #[error("{method} cannot be merged into the base weight: {reason}")]
    NotMergeable {
        /// Method name.
        method: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or has a wrong field.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A safetensors file is truncated or corrupt.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The adapter file is for another method.
    #[error("{path}: peft_type is `{found}`; this loader reads {expected}")]
    WrongPeftType {
        /// The config file.
        path: PathBuf,
        /// What the file says.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// A tensor the adapter needs is not in the file.
    #[error("{path}: missing tensor `{key}`")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: String,
    },
    /// A tensor has the wrong shape or type.
    #[error("{path}: tensor `{key}` {message}")]
    BadTensor {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// Expected versus found.
        message: String,
    },
    /// A tensor in the file is not used by any adapted layer.
    #[error("{path}: tensor `{key}` does not belong to any adapted layer")]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, AdapterError>;

impl From<idlora_data::WriteError> for AdapterError {
    fn from(e: idlora_data::WriteError) -> Self {
        AdapterError::Io { path: e.path, source: e.source }
    }
}
