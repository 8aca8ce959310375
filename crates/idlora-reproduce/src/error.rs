//! Errors of running a grid.

use std::path::PathBuf;

/// Why a grid (or one of its cells) could not run. Messages name the cell, file or setting. The
/// wrapped library errors are boxed: they are large, and errors are rare.
#[derive(Debug, thiserror::Error)]
pub enum ReproduceError {
    /// A bad experiment, scale or option.
    #[error("{0}")]
    Setting(String),
    /// The paths file is unreadable or malformed.
    #[error("{path}: {message}")]
    PathsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A paper-scale cell needs a model or data path the paths file does not give.
    #[error("{cell}: needs `{key}` in the paths file (--paths): {what}")]
    MissingPath {
        /// The cell.
        cell: String,
        /// The key, e.g. `data.codealpaca`.
        key: String,
        /// What to supply.
        what: String,
    },
    /// A cell's training was interrupted and `--resume` was not given.
    #[error(
        "{cell}: an interrupted training run is in {dir}: rerun with --resume to continue it (or delete the folder)"
    )]
    Interrupted {
        /// The cell.
        cell: String,
        /// Its training folder.
        dir: PathBuf,
    },
    /// Training failed.
    #[error("{cell}: training: {source}")]
    Train {
        /// The cell.
        cell: String,
        /// The error.
        #[source]
        source: Box<idlora_train::TrainError>,
    },
    /// Loading the trained model failed.
    #[error("{cell}: {source}")]
    Model {
        /// The cell.
        cell: String,
        /// The error.
        #[source]
        source: Box<idlora_models::ModelError>,
    },
    /// Evaluation failed.
    #[error("{cell}: evaluation: {source}")]
    Eval {
        /// The cell.
        cell: String,
        /// The error.
        #[source]
        source: Box<idlora_eval::EvalError>,
    },
    /// Fetching a packaged asset failed.
    #[error(transparent)]
    Asset(#[from] idlora_assets::AssetError),
    /// Writing a result file failed.
    #[error(transparent)]
    Write(#[from] idlora_data::WriteError),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`ReproduceError`].
pub type Result<T, E = ReproduceError> = std::result::Result<T, E>;
