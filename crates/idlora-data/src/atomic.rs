//! Atomic file writes: the bytes go to a hidden temporary file in the target's folder, are synced
//! to disk, and the file is renamed over the target. A crash or Ctrl-C leaves either the old file
//! or the new one, never half of either; a leftover `.NAME.partial` is harmless and overwritten by
//! the next write.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("results/summary.json");
//! idlora_data::write_atomic(&path, b"{}")?;
//! assert_eq!(std::fs::read(&path)?, b"{}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

/// A file-system error, naming the path at fault.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    /// The file or folder at fault.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError { path: path.to_path_buf(), source }
}

/// The temporary file a write to `path` goes through: `.NAME.partial` beside it, hidden, so that
/// folder listings (checkpoint scans, `ls`) do not show it as a result.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent(path).join(format!(".{name}.partial"))
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically, creating its folder when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |file| std::io::Write::write_all(file, bytes).map_err(at(&partial_path(path))))
}

/// Writes `path` atomically with `fill`, which writes the content into the open temporary file
/// (for content streamed from elsewhere, such as an archive member). An error of `fill` leaves
/// `path` as it was.
pub fn write_atomic_with<E: From<WriteError>>(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let dir = parent(path);
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let tmp = partial_path(path);
    let mut file = File::create(&tmp).map_err(at(&tmp))?;
    fill(&mut file)?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_keeps_the_old_one_when_filling_fails() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a/b.txt");
        write_atomic(&path, b"first").expect("write");
        write_atomic(&path, b"second").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let failed: Result<(), WriteError> = write_atomic_with(&path, |f| {
            std::io::Write::write_all(f, b"half").expect("half");
            Err(WriteError { path: path.clone(), source: std::io::Error::other("stream broke") })
        });
        assert!(failed.expect_err("fill failed").to_string().contains("stream broke"));
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        assert_eq!(partial_path(&path), dir.path().join("a/.b.txt.partial"));
        assert_eq!(partial_path(Path::new("x.json")), Path::new("./.x.json.partial"));
    }

    #[test]
    fn unwritable_targets_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        // A folder cannot be created below a plain file.
        let e = write_atomic(&file.join("inner.txt"), b"y").expect_err("below a file");
        assert!(e.to_string().contains("plain"), "{e}");
    }
}
