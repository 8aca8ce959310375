use std::path::PathBuf;

/// Everything that can go wrong while reading a weight file.
///
/// Every variant names the file, and where one is involved, the tensor or metadata key at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file or folder could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a safetensors file, a GGUF file, nor a folder holding safetensors.
    #[error("{path}: not a weight file or model folder ({reason})")]
    UnknownFormat {
        /// The path at fault.
        path: PathBuf,
        /// What was looked for.
        reason: String,
    },
    /// The file's structure is broken: bad magic, truncated header, offsets past the end, ...
    #[error("{path}: corrupt file: {reason}")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, naming the tensor or key where there is one.
        reason: String,
    },
    /// A tensor was asked for that the file does not hold.
    #[error("{path}: no tensor named `{name}`")]
    MissingTensor {
        /// The file or folder searched.
        path: PathBuf,
        /// The tensor asked for.
        name: String,
    },
    /// The tensor exists but is stored in a type this crate cannot convert to f32.
    #[error("{path}: tensor `{name}` has type {dtype}, which cannot be read as f32")]
    UnsupportedType {
        /// The file at fault.
        path: PathBuf,
        /// The tensor at fault.
        name: String,
        /// The stored type.
        dtype: String,
    },
    /// The tensor does not have the shape the caller needs.
    #[error("{path}: tensor `{name}` has shape {shape:?}, expected {expected}")]
    Shape {
        /// The file at fault.
        path: PathBuf,
        /// The tensor at fault.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        /// The file at fault.
        path: PathBuf,
        /// The key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl WeightsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt { path: path.into(), reason: reason.into() }
    }
}

/// Result alias of this crate.
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;
