//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong configuring, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config value is missing, malformed or unsupported.
    #[error("{source_name}: `{key}`: {message}")]
    Config {
        /// The config file (or GGUF file) the value comes from.
        source_name: String,
        /// The key at fault.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// Reading weights failed.
    #[error(transparent)]
    Weights(#[from] idlora_weights::WeightsError),
    /// A tensor has the wrong shape for the config.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor the model needs is missing.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// The checkpoint holds a tensor the architecture does not use.
    #[error("{path}: unexpected tensor `{name}` (not part of a {arch} model with this config)")]
    ExtraTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Architecture name.
        arch: String,
    },
    /// An adapter could not be built or loaded.
    #[error(transparent)]
    Adapter(#[from] idlora_adapter::AdapterError),
    /// Clustering for ID-LoRA failed (the error names the matrix).
    #[error(transparent)]
    Cluster(#[from] idlora_cluster::many::ManyError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No usable compute device.
    #[cfg(feature = "flex")]
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A setting (targets, ...) has a value that is not accepted.
    #[error("`{setting}`: {message}")]
    Setting {
        /// The setting at fault.
        setting: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// Bad input to a forward pass or to generation.
    #[error("{0}")]
    Input(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
