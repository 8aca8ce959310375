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

/// Now as `YYYYMMDD-HHMMSS` (UTC), for run folder names (`{time}` in `train.output_dir`).
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
