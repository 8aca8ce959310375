//! The training loss: mean cross-entropy over response tokens. Logits are computed only at the
//! positions that have a target, which skips the vocabulary projection for prompt tokens and
//! padding (on SmolLM2 the tied head is a fifth of the model's parameters). The cross-entropy itself is
//! [`idlora_kernels::cross_entropy`]'s, fused on burn's CPU backend.

use burn::tensor::{Int, Tensor, TensorData};
use idlora_kernels::cross_entropy::cross_entropy_sum;
use idlora_models::CausalLm;

use crate::batch::Batch;
use crate::error::Result;

/// The summed negative log-likelihood of the batch's targets (a one-element tensor, on the
/// model's device, differentiable when the model is).
pub fn nll_sum(model: &CausalLm, batch: &Batch) -> Result<Tensor<1>> {
    let h = model.hidden(&batch.input, None)?;
    let [b, s, d] = h.dims();
    let device = h.device();
    let n = batch.positions.len();
    let pos = Tensor::<1, Int>::from_data(
        TensorData::new(batch.positions.iter().map(|&p| p as i32).collect::<Vec<_>>(), [n]),
        &device,
    );
    let picked = h.reshape([b * s, d]).select(0, pos).reshape([1, n, d]);
    let logits = model.logits(picked).reshape([n, model.config.vocab_size]);
    Ok(cross_entropy_sum(logits, &batch.targets))
}
