//! The decoder: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP, tied or untied
//! head. Every projection is an [`AdaptedLinear`], so adapters attach without changing the model.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use idlora_adapter::AdaptedLinear;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::rope;
use idlora_kernels::swiglu::swiglu;

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * w`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Scale `[hidden]`.
    pub weight: Param<Tensor<1>>,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    /// Applies the norm over the last dimension.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let d = self.weight.dims()[0];
        let rms = x.clone().powi_scalar(2).mean_dim(2).add_scalar(self.eps).sqrt();
        x / rms * self.weight.val().reshape([1, 1, d])
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    /// `q_proj`
    pub q_proj: AdaptedLinear,
    /// `k_proj`
    pub k_proj: AdaptedLinear,
    /// `v_proj`
    pub v_proj: AdaptedLinear,
    /// `o_proj`
    pub o_proj: AdaptedLinear,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `gate_proj`
    pub gate_proj: AdaptedLinear,
    /// `up_proj`
    pub up_proj: AdaptedLinear,
    /// `down_proj`
    pub down_proj: AdaptedLinear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward(swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)))
    }
}

/// One decoder layer (pre-norm attention and MLP with residuals).
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// `input_layernorm`
    pub input_layernorm: RmsNorm,
    /// `self_attn`
    pub self_attn: Attention,
    /// `post_attention_layernorm`
    pub post_attention_layernorm: RmsNorm,
    /// `mlp`
    pub mlp: Mlp,
}

/// Keys and values of the tokens seen so far, per layer (`[b, kv_heads, t, head_dim]`).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached so far (per row).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Keeps only the rows in `keep` (batch indices), for dropping finished sequences.
    pub fn retain_rows(&mut self, keep: &Tensor<1, Int>) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, keep.clone());
            *v = v.clone().select(0, keep.clone());
        }
    }
}

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
        let past = cache.as_ref().map_or(0, |kv| kv.len());
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

        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(input.tokens.iter().map(|&t| t as i32).collect(), [b * s]),
            &device,
        );
        let mut h = self.embed_tokens.val().select(0, ids).reshape([b, s, c.hidden_size]);
        for (i, layer) in self.layers.iter().enumerate() {
            let attn_in = layer.input_layernorm.forward(h.clone());
            let a = self.attend(
                &layer.self_attn,
                attn_in,
                (&cos, &sin),
                mask.clone(),
                grouped_kv,
                i,
                cache.as_deref_mut(),
            );
            h = h + a;
            let m = layer.mlp.forward(layer.post_attention_layernorm.forward(h.clone()));
            h = h + m;
        }
        if let Some(kv) = cache {
            kv.len = total;
        }
        Ok(self.norm.forward(h))
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

    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        mask: Option<Tensor<4, Bool>>,
        grouped_kv: bool,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        let q = attn.q_proj.forward(x.clone()).reshape([b, s, h, d]).swap_dims(1, 2);
        let k = attn.k_proj.forward(x.clone()).reshape([b, s, kvh, d]).swap_dims(1, 2);
        let v = attn.v_proj.forward(x).reshape([b, s, kvh, d]).swap_dims(1, 2);
        let q = rope::apply(q, cos.clone(), sin.clone());
        let k = rope::apply(k, cos.clone(), sin.clone());
        let (k, v) = match cache {
            Some(kv) => kv.append(layer, k, v),
            None => (k, v),
        };
        // Causal attention without a mask (training batches, prompts) on the CPU backend: the
        // fused operation of `crate::attention`, grouped heads read as they are. `None` elsewhere.
        let is_causal = mask.is_none() && s > 1;
        let fused = if is_causal { idlora_kernels::causal_attention::causal(&q, &k, &v) } else { None };
        let out = fused.unwrap_or_else(|| {
            let t = k.dims()[2];
            let groups = h / kvh;
            let (k, v) = if groups > 1 && !grouped_kv {
                let expand = |x: Tensor<4>| {
                    x.reshape([b, kvh, 1, t, d]).expand([b, kvh, groups, t, d]).reshape([b, h, t, d])
                };
                (expand(k), expand(v))
            } else {
                (k, v)
            };
            let options = AttentionModuleOptions { scale: None, softcap: None, is_causal };
            attention(q, k, v, mask, None, options)
        });
        attn.o_proj.forward(out.swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

/// A bias-free or biased `Linear` from an input-major weight.
pub(crate) fn linear(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Linear {
    Linear { weight: Param::from_tensor(weight), bias: bias.map(Param::from_tensor) }
}
