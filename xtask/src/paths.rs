//! Where the runner keeps fetched assets and outputs.

use std::path::PathBuf;

/// The repository root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `$IDLORA_CACHE`, else `.cache/idlora` in the repository (git-ignored).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("IDLORA_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/idlora"))
}

/// `runs/` in the repository: default outputs.
pub fn runs_dir() -> PathBuf {
    repo_root().join("runs")
}
