//! The training loss: mean cross-entropy over response tokens. Logits are computed only at the
//! positions that have a target, which skips the vocabulary projection for prompt tokens and
//! padding (on SmolLM2 the tied head is a fifth of the model's parameters). The cross-entropy itself is
//! [`idlora_kernels::cross_entropy`]'s, fused on burn's CPU backend.

use burn::tensor::{Int, Tensor, TensorData};
use idlora_kernels::cross_entropy::cross_entropy_sum;
use idlora_models::CausalLm;

use crate::batch::Batch;
use crate::error::{Result, TrainError};

/// The summed negative log-likelihood of the batch's targets (a one-element tensor, on the
/// model's device, differentiable when the model is). Dropout, where active, draws from the
/// device's generator as it stands.
pub fn nll_sum(model: &CausalLm, batch: &Batch) -> Result<Tensor<1>> {
    let h = model.hidden(&batch.input, None)?;
    Ok(head_nll_sum(model, h, batch))
}

/// [`nll_sum`] with each decoder layer's dropout drawn from its own seed,
/// [`layer_seed`]`(seed, layer)`: the training forward. A layer's masks then do not depend on the
/// layers before it, so that gradient checkpointing ([`crate::recompute`]) can run a layer again
/// in the backward pass and draw the same masks; with or without checkpointing a step computes
/// the same function.
pub fn seeded_nll_sum(model: &CausalLm, batch: &Batch, seed: u64) -> Result<Tensor<1>> {
    let (mut h, inputs) = model.embed(&batch.input, 0)?;
    let device = model.device();
    for (i, layer) in model.layers.iter().enumerate() {
        device.seed(layer_seed(seed, i));
        h = layer.forward(h, &inputs, i, None);
    }
    Ok(head_nll_sum(model, model.norm.forward(h), batch))
}

/// The summed negative log-likelihood of the batch's targets from the final norm's output `h`
/// (`[batch, seq, hidden]`): the head at the target positions and the cross-entropy.
pub(crate) fn head_nll_sum(model: &CausalLm, h: Tensor<3>, batch: &Batch) -> Tensor<1> {
    let [b, s, d] = h.dims();
    let device = h.device();
    let n = batch.positions.len();
    let pos = Tensor::<1, Int>::from_data(
        TensorData::new(batch.positions.iter().map(|&p| p as i32).collect::<Vec<_>>(), [n]),
        &device,
    );
    let picked = h.reshape([b * s, d]).select(0, pos).reshape([1, n, d]);
    let logits = model.logits(picked).reshape([n, model.config.vocab_size]);
    cross_entropy_sum(logits, &batch.targets)
}

/// The dropout seed of decoder layer `layer` in a forward pass seeded with `seed` (a SplitMix64
/// finaliser of the pair, so neighbouring layers and seeds get unrelated streams).
pub fn layer_seed(seed: u64, layer: usize) -> u64 {
    splitmix(seed ^ (layer as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// SplitMix64's finaliser: every input bit moves about half of the output bits.
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first value of a one-element tensor, read back to the host; `name` names it in the error.
pub(crate) fn scalar(t: Tensor<1>, name: &str) -> Result<f64> {
    let v = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| TrainError::Tensor { name: name.into(), message: format!("{e:?}") })?;
    Ok(v.first().copied().unwrap_or(f32::NAN) as f64)
}
