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

/// A Python virtual environment `name` under the cache with `packages` installed by pip, made on
/// first use; `None` (after a message) where python3 or pip is missing. `check` is the import
/// statement that proves it is ready.
pub fn python_venv(name: &str, packages: &[&str], check: &str) -> Option<PathBuf> {
    use std::process::Command;
    let venv = cache_dir().join(name);
    let python = venv.join("bin/python");
    let ready = |p: &PathBuf| Command::new(p).args(["-c", check]).output().is_ok_and(|o| o.status.success());
    if ready(&python) {
        return Some(python);
    }
    eprintln!("creating {} with {} (pip) ...", venv.display(), packages.join(", "));
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
    if made && ready(&python) {
        Some(python)
    } else {
        eprintln!("python3 with pip is not available: the Python side is skipped");
        None
    }
}
