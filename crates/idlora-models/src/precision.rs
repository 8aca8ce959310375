//! The precision the frozen base is stored and multiplied in: `f32`, `bf16` or `f16`.
//!
//! A LLaMA-3-8B base is 32 GB in f32 and 16 GB in bf16. [`CausalLm::with_base_precision`] casts
//! the frozen weights (token embedding, head, every projection's weight) and nothing else: norms,
//! biases, adapters, routers, the optimizer state and the loss stay f32. Activations stay f32
//! between blocks; each base product casts its input to the weight's dtype and its output back
//! (`idlora_kernels::product::matmul`), so the base's arithmetic is that dtype's while every
//! adapter computes in f32 from the same base output (ID-LoRA's gathered bases included).
//!
//! ```
//! use idlora_models::precision::Precision;
//! let p: Precision = "bf16".parse()?;
//! assert_eq!(p.to_string(), "bf16");
//! assert_eq!(p.bytes(), 2);
//! assert!("fp8".parse::<Precision>().is_err());
//! # Ok::<(), String>(())
//! ```

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::tensor::{FloatDType, Tensor};

use crate::error::{ModelError, Result};
use crate::model::CausalLm;

/// A storage precision for the frozen base. Written `f32`, `bf16` or `f16`, in configs and on the
/// command line alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (what checkpoints are read into).
    #[default]
    F32,
    /// bfloat16: f32's range, 8 bits of mantissa.
    Bf16,
    /// IEEE half: 11 bits of mantissa, range up to 65504.
    F16,
}

impl Precision {
    /// Every precision, as written in configs.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// burn's dtype for it.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::F16 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.to_string() == s)
            .ok_or_else(|| format!("precision `{s}`: expected f32, bf16 or f16"))
    }
}

/// `param` stored in `dtype`, frozen (a cast tensor is no leaf of the graph: it cannot train).
fn frozen_cast<const D: usize>(param: Param<Tensor<D>>, dtype: FloatDType) -> Param<Tensor<D>> {
    param.map(|t| t.detach().cast(dtype)).set_require_grad(false)
}

impl CausalLm {
    /// The precision the token embedding is stored in (that of the whole frozen base).
    pub fn base_precision(&self) -> Precision {
        let dtype = self.embed_tokens.val().dtype();
        Precision::ALL.into_iter().find(|p| burn::tensor::DType::from(p.dtype()) == dtype).unwrap_or_default()
    }

    /// Stores the frozen base in `precision`: the token embedding, the head and every
    /// projection's weight are cast and frozen; norms, biases and adapters are left in f32.
    /// A model already in `precision` is returned as it is. Training the base itself (full fine-tuning) needs f32
    /// weights, so a projection without adapter is frozen too: apply adapters afterwards, or to
    /// a model that already has them.
    pub fn with_base_precision(mut self, precision: Precision) -> Result<Self> {
        // Loaded in this precision already (`load_as`), or asked for f32 of an f32 model.
        if precision == self.base_precision() {
            return Ok(self);
        }
        let dtype = precision.dtype();
        self.embed_tokens = frozen_cast(self.embed_tokens, dtype);
        self.lm_head = self.lm_head.map(|p| frozen_cast(p, dtype));
        for (_, proj) in self.projections_mut() {
            if proj.merged {
                return Err(ModelError::Setting {
                    setting: "precision",
                    message: format!(
                        "`{}` has its adapter merged: unmerge before changing the base's precision",
                        proj.name
                    ),
                });
            }
            proj.base.weight = frozen_cast(proj.base.weight.clone(), dtype);
        }
        Ok(self)
    }
}
