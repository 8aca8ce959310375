//! Exact trainable-parameter accounting per `d_in -> d_out` layer, without building any layer.
//! Whole-model counts (the paper's Table 6) are `idlora_models::ModelConfig::trainable_params`,
//! which knows the model's layer shapes.

use crate::adapter::Adapter;
use crate::error::Result;
use crate::method::MethodConfig;

/// Trainable parameters `method` adds to one `d_in -> d_out` linear layer (for full fine-tuning:
/// the layer's own weight). Errors when ID-LoRA's `p` does not divide `d_out` and `k r`.
///
/// ```
/// use idlora_adapter::{MethodConfig, MethodKind, params::layer_params};
/// // LoRA r = 8 on a 4096 x 4096 projection: 8 * (4096 + 4096).
/// assert_eq!(layer_params(&MethodConfig::new(MethodKind::Lora, 8), 4096, 4096).unwrap(), 65_536);
/// // ID-LoRA k = p = 4, r = 8: d_out k r / p^2 + k d_in.
/// assert_eq!(layer_params(&MethodConfig::new(MethodKind::IdLora, 8), 4096, 4096).unwrap(), 24_576);
/// ```
pub fn layer_params(method: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
    method.validate()?;
    Adapter::params(method, d_in, d_out).unwrap_or(Ok(d_in * d_out))
}

/// Shape `[d_out / p, k r / p]` of ID-LoRA's shared `B` (PEFT orientation: out x in), checking
/// that `p` divides both `d_out` and `k r`. Without rank boosting: `[d_out, r]`.
pub fn idlora_b_shape(method: &MethodConfig, d_out: usize, layer: &str) -> Result<(usize, usize)> {
    crate::methods::idlora::b_shape(method, d_out, layer)
}
