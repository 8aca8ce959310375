//! The decoder: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP, tied or untied
//! head, one file per block, each with its own `forward`. Every projection is an
//! [`AdaptedLinear`](idlora_adapter::AdaptedLinear), so adapters attach without changing the model.

mod attention;
mod cache;
mod layer;
mod mlp;
mod norm;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};

pub use attention::{Attention, AttentionInputs};
pub use cache::KvCache;
pub use layer::DecoderLayer;
pub use mlp::Mlp;
pub use norm::RmsNorm;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layout::Target;
use crate::rope;

/// What one forward pass sees: a batch of token rows, their positions, and optionally which keys
/// are padding.
#[derive(Clone, Debug)]
pub struct ForwardInput {
    /// Token ids, row-major `[batch, seq]`.
    pub tokens: Vec<u32>,
    /// Batch size.
    pub batch: usize,
    /// Sequence length of this step.
    pub seq: usize,
    /// RoPE positions of each token `[batch, seq]`; `None` means `cache.len() + 0..seq` for every row.
    pub positions: Option<Vec<usize>>,
    /// Per row, which keys (`cache.len() + seq` of them) are padding and must not be attended to
    /// (left-padded batches). `None`: no padding.
    pub key_padding: Option<Vec<bool>>,
}

impl ForwardInput {
    /// One row of tokens.
    pub fn single(tokens: &[u32]) -> Self {
        ForwardInput {
            tokens: tokens.to_vec(),
            batch: 1,
            seq: tokens.len(),
            positions: None,
            key_padding: None,
        }
    }
}

/// A LLaMA / Mistral causal language model.
#[derive(Module, Debug)]
pub struct CausalLm {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final norm.
    pub norm: RmsNorm,
    /// Untied head `[hidden, vocab]` (input-major); `None` when tied to the embedding.
    pub lm_head: Option<Param<Tensor<2>>>,
    /// The configuration.
    #[module(skip)]
    pub config: ModelConfig,
    /// RoPE inverse frequencies.
    #[module(skip)]
    pub inv_freq: Vec<f64>,
}

impl CausalLm {
    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// Hidden states after the final norm, `[batch, seq, hidden]`.
    pub fn hidden(&self, input: &ForwardInput, mut cache: Option<&mut KvCache>) -> Result<Tensor<3>> {
        let past = cache.as_ref().map_or(0, |kv| kv.len());
        let (mut h, inputs) = self.embed(input, past)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h, &inputs, i, cache.as_deref_mut());
        }
        if let Some(kv) = cache {
            kv.set_len(past + input.seq);
        }
        Ok(self.norm.forward(h))
    }

    /// [`hidden`](Self::hidden) without a cache, handing every projection's input (`[batch,
    /// seq, d_in]`) to `seen` with its layer: for analyses of what the adapters see, such as the
    /// router weights of `idlora_eval::router`.
    pub fn hidden_seen(
        &self,
        input: &ForwardInput,
        seen: &mut dyn FnMut(usize, Target, &Tensor<3>),
    ) -> Result<Tensor<3>> {
        let (mut h, inputs) = self.embed(input, 0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward_seen(h, &inputs, i, &mut |t, x| seen(i, t, x));
        }
        Ok(self.norm.forward(h))
    }

    /// The checked input's embeddings `[batch, seq, hidden]` (f32) and what attention needs, for
    /// a step after `past` cached positions: the first piece of [`hidden`](Self::hidden), for
    /// callers that run the decoder layers themselves (gradient checkpointing by layer
    /// recomputation in `idlora-train`).
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use idlora_models::{ForwardInput, ModelConfig, load};
    ///
    /// let json = r#"{"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
    ///     "num_attention_heads": 2, "vocab_size": 50}"#;
    /// let model = load::random(ModelConfig::from_hf_json(json, "config.json")?, 7, &Device::flex())?;
    /// let input = ForwardInput::single(&[1, 2, 3]);
    /// let (mut h, inputs) = model.embed(&input, 0)?;
    /// for (i, layer) in model.layers.iter().enumerate() {
    ///     h = layer.forward(h, &inputs, i, None);
    /// }
    /// let by_pieces = model.norm.forward(h).into_data();
    /// let whole = model.hidden(&input, None)?.into_data();
    /// assert_eq!(by_pieces, whole);
    /// # Ok::<(), idlora_models::ModelError>(())
    /// ```
    pub fn embed(&self, input: &ForwardInput, past: usize) -> Result<(Tensor<3>, AttentionInputs)> {
        let c = &self.config;
        let (b, s) = (input.batch, input.seq);
        if input.tokens.len() != b * s || s == 0 {
            return Err(ModelError::Input(format!(
                "{} token ids for a batch of {b} x {s} (sequence must be non-empty)",
                input.tokens.len()
            )));
        }
        if let Some(&bad) = input.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
        let total = past + s;
        let device = self.device();
        let positions: Vec<usize> = match &input.positions {
            Some(p) if p.len() == b * s => p.clone(),
            Some(p) => return Err(ModelError::Input(format!("{} positions for {b} x {s} tokens", p.len()))),
            None => (0..b).flat_map(|_| past..total).collect(),
        };
        let (cos, sin) = rope::tables(&self.inv_freq, &positions, &device);
        let cos = cos.reshape([b, 1, s, c.head_dim]);
        let sin = sin.reshape([b, 1, s, c.head_dim]);
        let mask = self.mask(input, past, &device)?;
        // burn-flex's own attention reads grouped key/value heads as they are; burn's generic
        // attention (under autodiff, and on the other backends) multiplies head by head and needs
        // them repeated to the query heads first, a copy of the whole cache per layer and step.
        let grouped_kv = device == Device::flex() && !device.is_autodiff();
        let inputs = AttentionInputs { cos, sin, mask, grouped_kv };

        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(input.tokens.iter().map(|&t| t as i32).collect(), [b * s]),
            &device,
        );
        // Activations are f32 whatever the base is stored in (a no-op for an f32 embedding).
        let h = self.embed_tokens.val().select(0, ids).cast(FloatDType::F32).reshape([b, s, c.hidden_size]);
        Ok((h, inputs))
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(&self, input: &ForwardInput, cache: Option<&mut KvCache>) -> Result<Tensor<3>> {
        let h = self.hidden(input, cache)?;
        Ok(self.logits(h))
    }

    /// Logits of the last position of each row only, `[batch, vocab]`: what generation needs. The
    /// head (a `vocab x hidden` product, a fifth of SmolLM2's work on a 128-token prompt) runs on
    /// one position per row instead of all of them, as transformers' `logits_to_keep=1` does.
    pub fn last_logits(&self, input: &ForwardInput, cache: Option<&mut KvCache>) -> Result<Tensor<2>> {
        let h = self.hidden(input, cache)?;
        let [b, s, d] = h.dims();
        let logits = self.logits(h.slice([0..b, s - 1..s, 0..d]));
        let v = logits.dims()[2];
        Ok(logits.reshape([b, v]))
    }

    /// The head applied to hidden states.
    pub fn logits(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, s, d] = h.dims();
        let h2 = h.reshape([b * s, d]);
        // `product::matmul`: a decoding step's few rows spread the head's weights over the
        // threads (burn's matmul reads them on one core); more rows are burn's matmul.
        let out = match &self.lm_head {
            Some(w) => idlora_kernels::product::matmul(h2, w.val()),
            // Tied: h E^T, the embedding read through a transposed view (gemm takes any strides).
            // The output is row-major `[tokens, vocab]` as the loss and the callers read it; the
            // other order, `(E h^T)^T`, made every later reshape copy the whole transposed block
            // (at 1024 tokens: 200 MB, and 1.73 s against 1.44 s for the head's forward and
            // backward).
            None => idlora_kernels::product::matmul(h2, self.embed_tokens.val().transpose()),
        };
        let v = out.dims()[1];
        out.reshape([b, s, v])
    }

    /// The attention mask, built once per forward and only when causality alone does not describe
    /// it (a sliding window that some query exceeds, or padding). `true` = masked.
    fn mask(&self, input: &ForwardInput, past: usize, device: &Device) -> Result<Option<Tensor<4, Bool>>> {
        let (b, s) = (input.batch, input.seq);
        let total = past + s;
        let window = self.config.sliding_window.filter(|&w| total > w);
        if window.is_none() && input.key_padding.is_none() {
            return Ok(None);
        }
        if let Some(p) = &input.key_padding
            && p.len() != b * total
        {
            return Err(ModelError::Input(format!(
                "key padding has {} entries, expected {b} x {total}",
                p.len()
            )));
        }
        // Key j of a row sits at cache slot j. The query at slot `past + i` may see keys
        // j <= past + i within the window. With left padding, slots and positions differ by the
        // same pad count for query and key, so the slot distance is the position distance.
        let mut mask = vec![false; b * s * total];
        for r in 0..b {
            for i in 0..s {
                let q_slot = past + i;
                for j in 0..total {
                    let padded = input.key_padding.as_ref().is_some_and(|p| p[r * total + j]);
                    let future = j > q_slot;
                    let outside = window.is_some_and(|w| j + w <= q_slot);
                    mask[(r * s + i) * total + j] = padded || future || outside;
                }
            }
        }
        let heads = self.config.num_heads;
        let m = Tensor::<4, Bool>::from_data(TensorData::new(mask, [b, 1, s, total]), device);
        Ok(Some(m.expand([b, heads, s, total])))
    }
}

/// A bias-free or biased `Linear` from an input-major weight.
pub(crate) fn linear(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Linear {
    Linear { weight: Param::from_tensor(weight), bias: bias.map(Param::from_tensor) }
}
