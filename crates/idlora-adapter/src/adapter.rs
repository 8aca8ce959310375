//! [`Adapter`]: the one adapter an [`crate::AdaptedLinear`] carries, dispatching to its method's
//! [`Method`] implementation (`crate::methods`). Nothing method-specific lives here.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::index_sets::IndexSets;
use crate::method::{MethodConfig, MethodKind};
use crate::methods::{Dora, HydraLora, IdLora, Lora, Method, MoeLora, Update};
use crate::peft::{ConfigFields, HostTensor, LayerTensors};

/// The adapter attached to an [`crate::AdaptedLinear`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Adapter {
    /// LoRA.
    Lora(Lora),
    /// DoRA.
    Dora(Dora),
    /// HydraLoRA.
    HydraLora(HydraLora),
    /// MoELoRA.
    MoeLora(MoeLora),
    /// ID-LoRA.
    IdLora(IdLora),
}

/// Calls `$call` on the method inside an `Adapter` value.
macro_rules! dispatch {
    ($adapter:expr, $m:ident => $call:expr) => {
        match $adapter {
            Adapter::Lora($m) => $call,
            Adapter::Dora($m) => $call,
            Adapter::HydraLora($m) => $call,
            Adapter::MoeLora($m) => $call,
            Adapter::IdLora($m) => $call,
        }
    };
}

/// Calls `$call` with `$M` bound to the method type of a `MethodKind` (`None` for full
/// fine-tuning).
macro_rules! by_kind {
    ($kind:expr, $M:ident => $call:expr) => {
        match $kind {
            MethodKind::Full => None,
            MethodKind::Lora => {
                type $M = Lora;
                Some($call)
            }
            MethodKind::Dora => {
                type $M = Dora;
                Some($call)
            }
            MethodKind::HydraLora => {
                type $M = HydraLora;
                Some($call)
            }
            MethodKind::MoeLora => {
                type $M = MoeLora;
                Some($call)
            }
            MethodKind::IdLora => {
                type $M = IdLora;
                Some($call)
            }
        }
    };
}

impl Adapter {
    /// A fresh adapter of `cfg.kind` for `base` (`None` for full fine-tuning).
    pub fn init(
        name: &str,
        base: &Linear,
        cfg: &MethodConfig,
        sets: Option<&IndexSets>,
    ) -> Result<Option<Self>> {
        Ok(match cfg.kind {
            MethodKind::Full => None,
            MethodKind::Lora => Some(Adapter::Lora(Lora::init(name, base, cfg, sets)?)),
            MethodKind::Dora => Some(Adapter::Dora(Dora::init(name, base, cfg, sets)?)),
            MethodKind::HydraLora => Some(Adapter::HydraLora(HydraLora::init(name, base, cfg, sets)?)),
            MethodKind::MoeLora => Some(Adapter::MoeLora(MoeLora::init(name, base, cfg, sets)?)),
            MethodKind::IdLora => Some(Adapter::IdLora(IdLora::init(name, base, cfg, sets)?)),
        })
    }

    /// The method this adapter implements.
    pub fn kind(&self) -> MethodKind {
        fn kind_of<M: Method>(_: &M) -> MethodKind {
            M::KIND
        }
        dispatch!(self, m => kind_of(m))
    }

    /// Trainable parameters of `cfg` on a `d_in -> d_out` layer (`None` for full fine-tuning).
    pub(crate) fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Option<Result<usize>> {
        by_kind!(cfg.kind, M => M::params(cfg, d_in, d_out))
    }

    /// `peft_type` of a method's files.
    pub(crate) fn peft_type(kind: MethodKind) -> &'static str {
        by_kind!(kind, M => M::PEFT_TYPE).unwrap_or("FULL")
    }

    /// Writes the method-specific config keys.
    pub(crate) fn write_config(cfg: &MethodConfig, map: &mut serde_json::Map<String, serde_json::Value>) {
        by_kind!(cfg.kind, M => M::write_config(cfg, map));
    }

    /// Reads the method-specific config keys.
    pub(crate) fn read_config(fields: &mut ConfigFields<'_>, cfg: &mut MethodConfig) -> Result<()> {
        by_kind!(cfg.kind, M => M::read_config(fields, cfg)).unwrap_or(Ok(()))
    }

    pub(crate) fn update(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> Update {
        dispatch!(self, m => m.update(base, x, y0))
    }

    /// The router of routed methods.
    pub fn router(&self) -> Option<&Param<Tensor<2>>> {
        dispatch!(self, m => m.router())
    }

    pub(crate) fn merge(&mut self, name: &str, w0: Tensor<2>) -> Result<Tensor<2>> {
        dispatch!(self, m => m.merge(name, w0))
    }

    pub(crate) fn unmerge(&mut self, name: &str, merged: Tensor<2>) -> Result<Tensor<2>> {
        dispatch!(self, m => m.unmerge(name, merged))
    }

    /// This adapter's tensors by PEFT key suffix.
    pub fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        dispatch!(self, m => m.export(name))
    }

    pub(crate) fn import(&mut self, tensors: &LayerTensors<'_>) -> Result<()> {
        dispatch!(self, m => m.import(tensors))
    }
}
