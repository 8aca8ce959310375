//! Gradient checkpointing by layer recomputation (`train.gradient_checkpointing = true`).
//!
//! A training step normally keeps every decoder layer's activations from the forward pass until
//! the backward pass reaches that layer: at SmolLM2's size and 1024 tokens, 2.1 GB against a
//! 0.5 GB model. Here the forward pass keeps only each layer's input (`[tokens, hidden]`), and
//! the backward pass runs segment by segment from the top:
//!
//! 1. forward through every layer with nothing tracked (a `no_grad` view of the layer: same
//!    weights, dropout still on), keeping each layer's input;
//! 2. the head (final norm, logits, cross-entropy) on the last layer's output as a fresh leaf;
//!    its backward gives the head's gradients and the gradient `g` at that output;
//! 3. for each layer from the top, the layer again on its kept input as a leaf, and the backward
//!    of `sum(y * g)`, whose gradient is `g` at the output `y`: the layer's parameter gradients,
//!    and the gradient at its input, which is the next segment's `g`;
//! 4. for full fine-tuning, the embedding lookup the same way (its table may also be the tied
//!    head, whose gradients add).
//!
//! The peak then holds the inputs of all layers, one layer's activations and the head's, and the
//! gradients; the price is one more forward pass of the decoder layers (about a third more
//! compute). Dropout draws each layer's masks from [`layer_seed`] in both passes, so the
//! recomputed layer is the same function as the first: the gradients are those of
//! [`seeded_nll_sum`]'s backward (the same arithmetic, grouped by
//! layer), which the tests check.
//!
//! This is the per-layer scheme of transformers' `gradient_checkpointing_enable`, built from
//! burn's public API (no custom backward); it works on every backend. burn's own `Balanced`
//! strategy, which recomputes element-wise operations inside one graph, is the other choice
//! (`"operations"`), see [`crate::config::GradientCheckpointing`].
//!
//! ```
//! use burn::tensor::Device;
//! use idlora_models::{ForwardInput, ModelConfig, load};
//! use idlora_train::batch::Batch;
//! use idlora_train::recompute::recomputed_grads;
//!
//! let json = r#"{"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
//!     "num_attention_heads": 2, "vocab_size": 50}"#;
//! let config = ModelConfig::from_hf_json(json, "config.json")?;
//! // Full fine-tuning: every weight is trainable.
//! let model = load::random(config, 7, &Device::flex().autodiff())?;
//! let batch = Batch {
//!     input: ForwardInput::single(&[1, 2, 3, 4]),
//!     positions: vec![1, 2],
//!     targets: vec![3, 4],
//!     real_tokens: 4,
//! };
//! let (grads, nll) = recomputed_grads(&model, &batch, 1, 2.0)?;
//! assert!(grads.get::<2>(model.embed_tokens.id).is_some());
//! assert!(nll > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use idlora_models::CausalLm;

use crate::batch::Batch;
use crate::config::GradientCheckpointing;
use crate::error::{Result, TrainError};
use crate::loss::{head_nll_sum, layer_seed, scalar, seeded_nll_sum};

/// One micro-batch's gradients of `nll / scale` and its summed negative log-likelihood `nll`,
/// as `checkpointing` says: by layer recomputation ([`recomputed_grads`]) for
/// [`GradientCheckpointing::Layers`], else the ordinary backward of
/// [`seeded_nll_sum`] (burn's Balanced strategy, `Operations`, lives in the model's device).
/// Each layer's dropout is seeded by [`layer_seed`]`(seed, layer)` either way, so the choice
/// changes memory and time, not the gradients.
pub fn batch_grads(
    model: &CausalLm,
    batch: &Batch,
    seed: u64,
    scale: f64,
    checkpointing: GradientCheckpointing,
) -> Result<(GradientsParams, f64)> {
    if checkpointing == GradientCheckpointing::Layers {
        return recomputed_grads(model, batch, seed, scale);
    }
    let nll = seeded_nll_sum(model, batch, seed)?;
    let value = scalar(nll.clone().detach(), "loss")?;
    Ok((GradientsParams::from_grads(nll.div_scalar(scale).backward(), model), value))
}

/// The gradients of `nll / scale` for `batch` on `model` (an autodiff model), by layer
/// recomputation, with each layer's dropout seeded by [`layer_seed`]`(seed, layer)`, and the
/// summed negative log-likelihood `nll` itself.
///
/// The gradients equal those of [`seeded_nll_sum`]`(model, batch, seed) / scale`.
pub fn recomputed_grads(
    model: &CausalLm,
    batch: &Batch,
    seed: u64,
    scale: f64,
) -> Result<(GradientsParams, f64)> {
    let device = model.device();
    if !device.is_autodiff() {
        return Err(TrainError::Tensor {
            name: "gradient checkpointing".into(),
            message: "the model is not on an autodiff device".into(),
        });
    }
    let (embedded, inputs) = model.embed(&batch.input, 0)?;

    // 1. Forward with nothing tracked, keeping each layer's input (detached: no graph).
    let mut kept: Vec<Tensor<3>> = Vec::with_capacity(model.layers.len());
    let mut h = embedded.clone().detach();
    for (i, layer) in model.layers.iter().enumerate() {
        kept.push(h.clone());
        device.seed(layer_seed(seed, i));
        h = layer.clone().no_grad().forward(h, &inputs, i, None);
    }

    // 2. The head, from the top layer's output as a leaf.
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let top = h.require_grad();
    let nll = head_nll_sum(model, model.norm.forward(top.clone()), batch);
    let nll_value = scalar(nll.clone().detach(), "loss")?;
    let mut grads = nll.div_scalar(scale).backward();
    let mut g = top.grad_remove(&mut grads).ok_or_else(|| missing("the last layer's output"))?;
    acc.accumulate(model, GradientsParams::from_module(&mut grads, model));
    drop(grads);

    // 3. Each layer again, from the top: the gradient at its output is `g`.
    for (i, layer) in model.layers.iter().enumerate().rev() {
        let x = kept.pop().ok_or_else(|| missing("a layer's input"))?.require_grad();
        device.seed(layer_seed(seed, i));
        let y = layer.forward(x.clone(), &inputs, i, None);
        let mut grads = (y * g).sum().backward();
        g = x.grad_remove(&mut grads).ok_or_else(|| missing("a layer's input"))?;
        acc.accumulate(model, GradientsParams::from_module(&mut grads, layer));
    }

    // 4. The embedding lookup, where its table trains (full fine-tuning).
    if embedded.is_tracked() {
        let mut grads = (embedded * g).sum().backward();
        acc.accumulate(model, GradientsParams::from_module(&mut grads, model));
    }
    Ok((acc.grads(), nll_value))
}

fn missing(what: &str) -> TrainError {
    TrainError::Tensor { name: "gradient checkpointing".into(), message: format!("no gradient at {what}") }
}
