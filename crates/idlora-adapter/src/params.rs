//! Exact trainable-parameter accounting per `d_in -> d_out` layer, without building any layer.
//! Whole-model counts (the paper's Table 6) are `idlora_models::ModelConfig::trainable_params`,
//! which knows the model's layer shapes.

use crate::error::{AdapterError, Result};
use crate::method::{MethodConfig, MethodKind};

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
    let r = method.r;
    let n = method.experts;
    Ok(match method.kind {
        MethodKind::Full => d_in * d_out,
        MethodKind::Lora => r * (d_in + d_out),
        MethodKind::Dora => r * (d_in + d_out) + d_out,
        MethodKind::HydraLora => r * d_in + n * r * d_out + n * d_in,
        MethodKind::MoeLora => n * r * (d_in + d_out) + n * d_in,
        MethodKind::IdLora => {
            let (rows, cols) = idlora_b_shape(method, d_out, "<unnamed>")?;
            rows * cols + method.k * d_in
        }
    })
}

/// Shape `[d_out / p, k r / p]` of ID-LoRA's shared `B` (PEFT orientation: out x in), checking
/// that `p` divides both `d_out` and `k r`. Without rank boosting: `[d_out, r]`.
pub fn idlora_b_shape(method: &MethodConfig, d_out: usize, layer: &str) -> Result<(usize, usize)> {
    if !method.rank_boost {
        return Ok((d_out, method.r));
    }
    let p = method.parts();
    let kr = method.k * method.r;
    if !d_out.is_multiple_of(p) || !kr.is_multiple_of(p) {
        return Err(AdapterError::InvalidConfig {
            layer: layer.to_string(),
            message: format!(
                "rank boosting with p = {p} needs p to divide d_out = {d_out} and k * r = {kr} (k = {}, r = {})",
                method.k, method.r
            ),
        });
    }
    Ok((d_out / p, kr / p))
}
