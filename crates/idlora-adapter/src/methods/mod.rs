//! One file per adapter method: its module, initialisation, forward update, merge (where it has
//! one), parameter count and PEFT tensors and config keys. Each implements [`Method`]; the
//! [`crate::Adapter`] enum only dispatches to them.
//!
//! Adding a method: a new file here implementing [`Method`], a `MethodKind` variant
//! (`crate::method`) and one variant plus one line per `dispatch!` in `crate::adapter`.

use burn::module::Param;
use burn::nn::{Initializer, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, FloatDType, Tensor};
use idlora_kernels::product;

use crate::error::{AdapterError, Result};
use crate::index_sets::IndexSets;
use crate::method::{MethodConfig, MethodKind};
use crate::peft::{ConfigFields, HostTensor, LayerTensors};

pub mod dora;
pub mod hydralora;
pub mod idlora;
pub mod lora;
pub mod moelora;

pub use dora::Dora;
pub use hydralora::HydraLora;
pub use idlora::IdLora;
pub use lora::Lora;
pub use moelora::MoeLora;

/// What every adapter method provides. Weights are input-major (`[d_in, d_out]`, as burn's
/// `Linear`); files are PEFT's out-major layout, converted by [`LayerTensors`] and [`out_major`].
pub trait Method: Sized {
    /// The method's kind.
    const KIND: MethodKind;
    /// `peft_type` in `adapter_config.json`.
    const PEFT_TYPE: &'static str;

    /// A fresh adapter for `base` (`name` is the module path, for errors), initialised so that the
    /// adapted layer equals the base. `sets` are ID-LoRA's index sets (`None` for the others).
    fn init(name: &str, base: &Linear, cfg: &MethodConfig, sets: Option<&IndexSets>) -> Result<Self>;

    /// Trainable parameters this method adds to a `d_in -> d_out` layer, from shapes alone.
    fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize>;

    /// The update `y - x W0 - b` for flattened input `x` `[n, d_in]`, given the base output
    /// `y0 = x W0 + b` `[n, d_out]`.
    fn update(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> Update;

    /// The router `W_g` (`[d_in, N]`) of routed methods.
    fn router(&self) -> Option<&Param<Tensor<2>>> {
        None
    }

    /// The base weight with the adapter folded in; the default: not mergeable (the update of a
    /// routed method depends on `x` through its router).
    fn merge(&mut self, _name: &str, _w0: Tensor<2>) -> Result<Tensor<2>> {
        Err(AdapterError::NotMergeable {
            method: Self::KIND.display_name(),
            reason: "its router makes the update depend on the input",
        })
    }

    /// The base weight before [`merge`](Self::merge), from the merged one.
    fn unmerge(&mut self, _name: &str, _merged: Tensor<2>) -> Result<Tensor<2>> {
        Err(AdapterError::NotMergeable { method: Self::KIND.display_name(), reason: "it was never merged" })
    }

    /// This adapter's tensors by PEFT key suffix (`lora_A.weight`, ...), out-major.
    fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>>;

    /// Replaces this adapter's tensors (built by [`init`](Self::init) with the file's settings)
    /// by the file's.
    fn import(&mut self, tensors: &LayerTensors<'_>) -> Result<()>;

    /// Method-specific keys written to `adapter_config.json`.
    fn write_config(_cfg: &MethodConfig, _map: &mut serde_json::Map<String, serde_json::Value>) {}

    /// Reads the method-specific keys of `adapter_config.json` into `cfg`.
    fn read_config(_fields: &mut ConfigFields<'_>, _cfg: &mut MethodConfig) -> Result<()> {
        Ok(())
    }
}

/// What an adapter adds to the base output: one product (all methods but DoRA), which the CPU
/// backend can accumulate in place (`idlora_kernels::product`), or a dense tensor.
// One is built per forward call and consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Update {
    /// `lhs rhs`, reshaped to `[n, d_out]`.
    Product {
        /// `[rows, inner]`.
        lhs: Tensor<2>,
        /// `[inner, cols]`; `rows * cols = n * d_out`.
        rhs: Tensor<2>,
    },
    /// `[n, d_out]`.
    Dense(Tensor<2>),
}

/// The base weight `W0` in f32, whatever precision the frozen base is stored in (a bf16 base is
/// cast here, at the adapter's boundary; an f32 one is returned as it is, no copy). Adapters
/// compute in f32.
pub(crate) fn base_weight_f32(base: &Linear) -> Tensor<2> {
    base.weight.val().cast(FloatDType::F32)
}

/// PEFT's (and `nn.Linear`'s) initialiser for `A` and for routers: Kaiming-uniform with
/// `a = sqrt(5)`, i.e. `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
///
/// Drawn here and now, by `device`'s generator. Not left as burn's lazy parameter
/// (`Initializer::init_with` defers the draw to the first use): a lazy parameter that is forked
/// or moved to another device before its first use is drawn *there*, by that device's generator,
/// so an adapter built on the CPU after `Device::seed` and then moved to a GPU would start from
/// other values than the same adapter kept on the CPU (found as wgpu training steps that
/// differed from the CPU's and between runs).
pub(crate) fn kaiming(shape: [usize; 2], fan_in: usize, fan_out: usize, device: &Device) -> Param<Tensor<2>> {
    let lazy = Initializer::KaimingUniform { gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false }.init_with(
        shape,
        Some(fan_in),
        Some(fan_out),
        device,
    );
    Param::from_tensor(lazy.val())
}

pub(crate) fn zeros(shape: [usize; 2], device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::zeros(shape, device))
}

/// A router `softmax(x W_g)`, `W_g` of shape `[d_in, n]`, no bias.
pub(crate) fn route(router: &Param<Tensor<2>>, x: Tensor<2>) -> Tensor<2> {
    softmax(product::matmul(x, router.val()), 1)
}

pub(crate) fn invalid(layer: &str, message: String) -> AdapterError {
    AdapterError::InvalidConfig { layer: layer.to_string(), message }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = data[i * cols + j];
        }
    }
    out
}

pub(crate) fn host(t: Tensor<2>, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let [rows, cols] = t.dims();
    let data = t.into_data().try_into_vec::<f32>().map_err(|e| AdapterError::BadTensor {
        path: "<memory>".into(),
        key: name.to_string(),
        message: format!("cannot be read back as f32: {e:?}"),
    })?;
    Ok((vec![rows, cols], data))
}

/// Module tensor `[rows_in, cols_out]` (input-major) to a file tensor `[cols_out, rows_in]`.
pub(crate) fn out_major(t: Tensor<2>, name: &str) -> Result<HostTensor> {
    let (shape, data) = host(t, name)?;
    Ok(HostTensor::F32 { shape: vec![shape[1], shape[0]], data: transpose(&data, shape[0], shape[1]) })
}
