//! Picking a burn device at run time: `auto`, `cpu`, `wgpu`, `vulkan`, `cuda` or `cuda:N`.
//!
//! The CPU backend (burn's `flex`) is always built; `wgpu`, `vulkan` (wgpu pinned to Vulkan, with
//! burn's SPIR-V compiler) and `cuda` are cargo features of this crate (xtask forwards its own
//! features of the same names). A backend that was not built, or that finds no hardware, is an
//! error naming the choice; `auto` tries CUDA, then Vulkan and then wgpu on a real (discrete or
//! integrated) GPU, then the CPU, and says which one it took and why.
//!
//! ```
//! use idlora_models::device::{DeviceChoice, pick};
//! let choice: DeviceChoice = "cpu".parse()?;
//! let picked = pick(choice)?;
//! assert!(picked.description.starts_with("CPU"));
//! assert!("gpu".parse::<DeviceChoice>().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};

/// What a user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA, then a real GPU through wgpu, then the CPU.
    #[default]
    Auto,
    /// burn's `flex` CPU backend.
    Cpu,
    /// wgpu's default adapter (Vulkan, Metal or DX12; may be a software renderer).
    Wgpu,
    /// wgpu pinned to Vulkan, kernels compiled to SPIR-V (feature `vulkan`).
    Vulkan,
    /// CUDA device `N`.
    Cuda(usize),
}

/// Why no device could be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The text is none of the accepted forms.
    #[error("device `{0}`: expected auto, cpu, wgpu, vulkan, cuda or cuda:N")]
    Parse(String),
    /// The backend was not compiled in.
    #[error("device `{choice}`: this build has no {backend} backend; {how}")]
    NotBuilt {
        /// What was asked for.
        choice: String,
        /// The backend's name.
        backend: &'static str,
        /// How to build it.
        how: &'static str,
    },
    /// The backend is built but the device did not answer (no driver, no adapter, wrong result).
    #[error("{description} is not available: {reason}")]
    Unavailable {
        /// The device tried.
        description: String,
        /// What the backend said.
        reason: String,
    },
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "wgpu" => DeviceChoice::Wgpu,
            "vulkan" => DeviceChoice::Vulkan,
            "cuda" => DeviceChoice::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceChoice::Cuda(n),
                _ => return Err(DeviceError::Parse(s.to_string())),
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
            DeviceChoice::Vulkan => f.write_str("vulkan"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

// Written and read as the same strings a command line takes, so a config's `train.device` and
// `--device` accept exactly the same values.
impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A device that answered a probe, and how to describe it.
#[derive(Clone, Debug)]
pub struct Picked {
    /// The burn device (inference; call `.autodiff()` to train on it).
    pub device: Device,
    /// What it is, for the user.
    pub description: String,
}

/// Runs a tiny product on `device`, turning a backend's panic (no adapter, no driver) into an
/// error: backends report a missing GPU by panicking at first use.
fn probe(device: Device, description: String) -> Result<Picked, DeviceError> {
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
        Ok(_) => Err(DeviceError::Unavailable {
            description,
            reason: "a 2x2 test product gave a wrong answer".into(),
        }),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the backend panicked".into());
            let reason = msg.lines().next().unwrap_or_default().to_string();
            Err(DeviceError::Unavailable { description, reason })
        }
    }
}

fn cpu() -> Result<Picked, DeviceError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    probe(Device::flex(), format!("CPU (burn flex, {threads} threads)"))
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Picked, DeviceError> {
    // burn-cuda reports a missing driver or GPU by a panic deep in its runtime thread
    // ("RecvError"): say what that usually means.
    probe(Device::cuda(n), format!("CUDA device {n}")).map_err(|e| match e {
        DeviceError::Unavailable { description, reason } => DeviceError::Unavailable {
            description,
            reason: format!("{reason} (no NVIDIA GPU or driver answered: check `nvidia-smi`)"),
        },
        other => other,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Picked, DeviceError> {
    Err(DeviceError::NotBuilt {
        choice: DeviceChoice::Cuda(n).to_string(),
        backend: "CUDA",
        how: "rebuild with `--features cuda` (`cargo run -p xtask --features cuda -- ...`)",
    })
}

/// A wgpu device made by `make` (`Device::wgpu`, or `Device::vulkan` pinned to Vulkan): the
/// default adapter, or with `real_gpu_only` a discrete GPU, then an integrated one (never a
/// software renderer).
#[cfg(feature = "wgpu")]
fn wgpu_adapter(
    make: fn(burn::tensor::DeviceKind) -> Device,
    label: &str,
    real_gpu_only: bool,
) -> Result<Picked, DeviceError> {
    use burn::tensor::DeviceKind;
    if !real_gpu_only {
        return probe(make(DeviceKind::DefaultDevice), format!("{label} default adapter"));
    }
    probe(make(DeviceKind::DiscreteGpu(0)), format!("{label} discrete GPU 0"))
        .or_else(|_| probe(make(DeviceKind::IntegratedGpu(0)), format!("{label} integrated GPU 0")))
}

#[cfg(feature = "wgpu")]
fn wgpu(real_gpu_only: bool) -> Result<Picked, DeviceError> {
    wgpu_adapter(Device::wgpu, "wgpu", real_gpu_only)
}

#[cfg(feature = "vulkan")]
fn vulkan(real_gpu_only: bool) -> Result<Picked, DeviceError> {
    wgpu_adapter(Device::vulkan, "Vulkan (SPIR-V)", real_gpu_only)
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(_: bool) -> Result<Picked, DeviceError> {
    Err(DeviceError::NotBuilt {
        choice: "vulkan".into(),
        backend: "Vulkan (SPIR-V)",
        how: "rebuild with `--features vulkan` (`cargo run -p xtask --features vulkan -- ...`)",
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: bool) -> Result<Picked, DeviceError> {
    Err(DeviceError::NotBuilt {
        choice: "wgpu".into(),
        backend: "wgpu",
        how: "rebuild with `--features wgpu` (`cargo run -p xtask --features wgpu -- ...`)",
    })
}

/// Resolves the choice to a working device, checked with a tiny product. `auto` falls back to
/// the CPU, which is always built, and its description says what was tried first.
pub fn pick(choice: DeviceChoice) -> Result<Picked, DeviceError> {
    match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Wgpu => wgpu(false),
        DeviceChoice::Vulkan => vulkan(false),
        DeviceChoice::Cuda(n) => cuda(n),
        DeviceChoice::Auto => {
            let mut tried = Vec::new();
            let mut none_built = true;
            // Each is tried only if the one before failed (a probe initialises its runtime).
            let attempts: [&dyn Fn() -> Result<Picked, DeviceError>; 3] =
                [&|| cuda(0), &|| vulkan(true), &|| wgpu(true)];
            for attempt in attempts.iter().map(|f| f()) {
                match attempt {
                    Ok(p) => return Ok(p),
                    Err(e) => {
                        none_built &= matches!(e, DeviceError::NotBuilt { .. });
                        tried.push(e.to_string());
                    }
                }
            }
            let mut p = cpu()?;
            p.description = if none_built {
                // The usual surprise on a GPU machine: say it in one line, with the fix.
                format!(
                    "{} (auto: this build has no GPU backend; rebuild with `--features cuda`, \
                     `--features vulkan` or `--features wgpu` to train on a GPU)",
                    p.description
                )
            } else {
                format!("{} (auto: no GPU; {})", p.description, tried.join("; "))
            };
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
        for good in ["auto", "cpu", "wgpu", "vulkan", "cuda:2"] {
            assert_eq!(good.parse::<DeviceChoice>().map(|c| c.to_string()).ok().as_deref(), Some(good));
        }
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let err = bad.parse::<DeviceChoice>().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(bad) && err.contains("cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpu_and_auto_work_and_missing_backends_are_errors() {
        assert!(pick(DeviceChoice::Cpu).is_ok());
        // CI has no GPU: auto must still give a device (the CPU there).
        let auto = pick(DeviceChoice::Auto).map(|p| p.description).unwrap_or_default();
        assert!(auto.starts_with("CPU"), "{auto}");
        #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
        assert!(auto.contains("this build has no GPU backend") && auto.contains("--features cuda"), "{auto}");
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
        #[cfg(not(feature = "vulkan"))]
        {
            let err = pick(DeviceChoice::Vulkan).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("no Vulkan (SPIR-V) backend") && err.contains("--features vulkan"), "{err}");
        }
    }
}
