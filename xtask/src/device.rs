//! `--device auto|cpu|wgpu|cuda[:N]`: picking a burn device at run time.
//!
//! Backends are cargo features of xtask: the CPU backend (burn's `flex`) is always built; `wgpu`
//! and `cuda` are opt-in (`cargo run -p xtask --features wgpu -- ...`). A backend that was not
//! built, or that finds no hardware, is an error naming the choice; `auto` tries CUDA, then wgpu
//! on a real (discrete or integrated) GPU, then the CPU, and says which one it took.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA, then a real GPU through wgpu, then the CPU.
    Auto,
    /// burn's `flex` CPU backend.
    Cpu,
    /// wgpu's default adapter (Vulkan, Metal or DX12; may be a software renderer).
    Wgpu,
    /// CUDA device `N`.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "wgpu" => DeviceChoice::Wgpu,
            "cuda" => DeviceChoice::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceChoice::Cuda(n),
                _ => bail!("--device `{s}`: expected auto, cpu, wgpu, cuda or cuda:N"),
            },
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Wgpu => f.write_str("wgpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device that answered a probe, and how to describe it.
pub struct Picked {
    /// The burn device.
    pub device: Device,
    /// What it is, for the user.
    pub description: String,
}

/// Runs a tiny computation on `device`, turning a backend's panic (no adapter, no driver) into
/// an error. Backends report a missing GPU by panicking at first use.
fn probe(device: Device, description: String) -> Result<Picked> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let dev = device.clone();
    let outcome = std::panic::catch_unwind(move || {
        let a = Tensor::<2>::ones([2, 2], &dev);
        a.clone().matmul(a).into_data().try_to_vec::<f32>().ok()
    });
    std::panic::set_hook(previous);
    match outcome {
        Ok(Some(v)) if v == [2.0; 4] => Ok(Picked { device, description }),
        Ok(_) => bail!("{description}: a 2x2 test product gave a wrong answer"),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the backend panicked".into());
            bail!("{description} is not available: {}", msg.lines().next().unwrap_or_default())
        }
    }
}

fn cpu() -> Result<Picked> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    probe(Device::flex(), format!("CPU (burn flex, {threads} threads)"))
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Picked> {
    probe(Device::cuda(n), format!("CUDA device {n}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Picked> {
    bail!(
        "--device cuda: this build has no CUDA backend; rebuild with `cargo run -p xtask \
         --features cuda -- ...` (needs internet the first time: burn-cuda downloads an LLVM bundle)"
    )
}

#[cfg(feature = "wgpu")]
fn wgpu(real_gpu_only: bool) -> Result<Picked> {
    use burn::tensor::DeviceKind;
    if !real_gpu_only {
        return probe(Device::wgpu(DeviceKind::DefaultDevice), "wgpu default adapter".into());
    }
    probe(Device::wgpu(DeviceKind::DiscreteGpu(0)), "wgpu discrete GPU 0".into())
        .or_else(|_| probe(Device::wgpu(DeviceKind::IntegratedGpu(0)), "wgpu integrated GPU 0".into()))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: bool) -> Result<Picked> {
    bail!(
        "--device wgpu: this build has no wgpu backend; rebuild with `cargo run -p xtask --features wgpu -- ...`"
    )
}

/// Resolves the choice to a working device, checked with a tiny product. `auto` falls back to the
/// CPU, which is always built.
pub fn pick(choice: DeviceChoice) -> Result<Picked> {
    match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Wgpu => wgpu(false),
        DeviceChoice::Cuda(n) => cuda(n),
        DeviceChoice::Auto => {
            let mut tried = Vec::new();
            for attempt in [cuda(0), wgpu(true)] {
                match attempt {
                    Ok(p) => return Ok(p),
                    Err(e) => tried.push(e.to_string()),
                }
            }
            let mut p = cpu()?;
            p.description = format!("{} (auto: no GPU; {})", p.description, tried.join("; "));
            Ok(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_others() {
        assert_eq!("auto".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Auto));
        assert_eq!("cuda:3".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Cuda(3)));
        assert_eq!("cuda".parse::<DeviceChoice>().ok(), Some(DeviceChoice::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let err = bad.parse::<DeviceChoice>().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(bad) && err.contains("cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_and_auto_work_and_missing_backends_are_errors() {
        assert!(pick(DeviceChoice::Cpu).is_ok());
        // CI has no GPU: auto must still give a device (the CPU there).
        assert!(pick(DeviceChoice::Auto).is_ok());
        #[cfg(not(feature = "cuda"))]
        {
            let err = pick(DeviceChoice::Cuda(0)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("no CUDA backend") && err.contains("--features cuda"), "{err}");
        }
        #[cfg(not(feature = "wgpu"))]
        {
            let err = pick(DeviceChoice::Wgpu).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("no wgpu backend"), "{err}");
        }
    }
}
