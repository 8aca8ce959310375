//! The devices a run trains on, as its config's `train.device` and `train.extra_devices` say.
//!
//! A library caller gets the same choice as `cargo xtask train`: `auto` tries CUDA, then a real
//! GPU through wgpu, then the CPU; a named backend that is not built or has no device is an error
//! naming the key (never a panic).

use burn::tensor::{Device, GradientCheckpointingStrategy};
use idlora_models::pick;

use crate::config::{GradientCheckpointing, TrainConfig};
use crate::error::{Result, config_err};

/// The main device (autodiff) and the data-parallel replicas, with descriptions for the user.
#[derive(Clone, Debug)]
pub struct TrainDevices {
    /// Where the model lives and gradients are summed (an autodiff device).
    pub main: Device,
    /// What `main` is.
    pub main_description: String,
    /// Further autodiff devices, each taking a share of every step's micro-batches
    /// ([`crate::TrainOptions::replicas`]).
    pub replicas: Vec<Device>,
    /// What each replica is.
    pub replica_descriptions: Vec<String>,
}

/// Picks the devices `cfg.train` names.
///
/// ```
/// let mut cfg = idlora_train::TrainConfig::from_toml(
///     "[model]\npath = \"m\"\n[[data.sources]]\npath = \"d.json\"\n[train]\ndevice = \"cpu\"\n",
///     "run.toml",
///     &[],
/// )?;
/// let devices = idlora_train::devices::pick_devices(&cfg)?;
/// assert!(devices.main.is_autodiff() && devices.replicas.is_empty());
/// # Ok::<(), idlora_train::TrainError>(())
/// ```
pub fn pick_devices(cfg: &TrainConfig) -> Result<TrainDevices> {
    let main = pick(cfg.train.device).map_err(|e| config_err("train.device", e.to_string()))?;
    let mut replicas = Vec::new();
    let mut replica_descriptions = Vec::new();
    for (i, choice) in cfg.train.extra_devices.iter().enumerate() {
        let extra =
            pick(*choice).map_err(|e| config_err(format!("train.extra_devices[{i}]"), e.to_string()))?;
        replicas.push(training_device(cfg, extra.device));
        replica_descriptions.push(extra.description);
    }
    Ok(TrainDevices {
        main: training_device(cfg, main.device),
        main_description: main.description,
        replicas,
        replica_descriptions,
    })
}

/// `device` with autodiff, and burn's `Balanced` checkpointing strategy where
/// `train.gradient_checkpointing = "operations"` asks for it (layer recomputation, `true`, needs
/// nothing of the device). The model must be loaded on this device: burn refuses to mix tensors
/// of two strategies.
pub fn training_device(cfg: &TrainConfig, device: Device) -> Device {
    let device = device.autodiff();
    if cfg.train.gradient_checkpointing == GradientCheckpointing::Operations {
        device.gradient_checkpointing()
    } else {
        device
    }
}

/// Checks that a model on `device` can train as `cfg` says: autodiff, and the burn
/// checkpointing strategy that `train.gradient_checkpointing` asks for (what
/// [`training_device`] gives).
pub fn check_training_device(cfg: &TrainConfig, device: &Device) -> Result<()> {
    if !device.is_autodiff() {
        return Err(config_err("train.device", "training needs an autodiff device (Device::autodiff())"));
    }
    let balanced = device.gradient_checkpointing_strategy() == Some(GradientCheckpointingStrategy::Balanced);
    let wants = cfg.train.gradient_checkpointing == GradientCheckpointing::Operations;
    if wants != balanced {
        return Err(config_err(
            "train.gradient_checkpointing",
            format!(
                "is {} but the model's device has burn's Balanced strategy {}: load the model on \
                 `devices::training_device(cfg, device)` (what `devices::pick_devices` gives)",
                cfg.train.gradient_checkpointing,
                if balanced { "on" } else { "off" }
            ),
        ));
    }
    Ok(())
}
