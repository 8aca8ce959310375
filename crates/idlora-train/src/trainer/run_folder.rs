//! Stage 1: the run folder. A new run needs a folder without checkpoints; a resumed one, one with.

use std::path::PathBuf;

use idlora_data::write_atomic;

use crate::checkpoint::{digest, list_checkpoints};
use crate::config::TrainConfig;
use crate::error::{Result, config_err, io};

/// Where the run writes, and where it resumes from.
pub(super) struct RunFolder {
    /// `train.output_dir`.
    pub dir: PathBuf,
    /// Digest of the configuration written there; a checkpoint made under another is refused.
    pub config_digest: String,
    /// The last checkpoint, when resuming.
    pub resume_from: Option<PathBuf>,
}

impl RunFolder {
    /// Creates (or reopens, with `resume`) `cfg.train.output_dir` and writes `config.toml`.
    pub(super) fn open(cfg: &TrainConfig, resume: bool) -> Result<Self> {
        let dir = cfg.output_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let text = cfg.to_toml();
        let existing = list_checkpoints(&dir)?;
        let resume_from = if resume {
            let (_, last) = existing.last().cloned().ok_or_else(|| {
                config_err("train.output_dir", format!("{} holds no checkpoint to resume", dir.display()))
            })?;
            Some(last)
        } else if !existing.is_empty() {
            return Err(config_err(
                "train.output_dir",
                format!(
                    "{} already holds a run's checkpoints: resume it (--resume) or choose another folder",
                    dir.display()
                ),
            ));
        } else {
            None
        };
        write_atomic(&dir.join("config.toml"), text.as_bytes())?;
        Ok(Self { config_digest: digest(&text), dir, resume_from })
    }
}
