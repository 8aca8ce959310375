//! Grouped-query self-attention with RoPE, an optional mask and the KV cache.

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};
use idlora_adapter::AdaptedLinear;

use super::cache::KvCache;
use crate::rope;

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

/// What every layer's attention shares in one forward pass: the RoPE tables of the positions, the
/// mask (`None`: causal alone describes it) and whether grouped key/value heads may be read as they
/// are.
pub struct AttentionInputs {
    /// `cos` of the RoPE angles, `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// `sin` of the RoPE angles, `[batch, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
    /// `true` = masked, `[batch, heads, seq, keys]`.
    pub mask: Option<Tensor<4, Bool>>,
    /// burn-flex's own attention reads grouped key/value heads as they are; burn's generic
    /// attention (under autodiff, and on the other backends) needs them repeated to the query
    /// heads first.
    pub grouped_kv: bool,
}

impl Attention {
    /// Self-attention of `x` `[batch, seq, hidden]`; with a cache, this step's keys and values are
    /// appended to layer `layer`'s and attention sees all of them.
    pub fn forward(
        &self,
        x: Tensor<3>,
        inputs: &AttentionInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.o_proj.forward(self.context(x, inputs, layer, cache))
    }

    /// The attention output before `o_proj`, `[batch, seq, heads * head_dim]`: what `o_proj`
    /// reads.
    pub fn context(
        &self,
        x: Tensor<3>,
        inputs: &AttentionInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self.q_proj.forward(x.clone()).reshape([b, s, h, d]).swap_dims(1, 2);
        let k = self.k_proj.forward(x.clone()).reshape([b, s, kvh, d]).swap_dims(1, 2);
        let v = self.v_proj.forward(x).reshape([b, s, kvh, d]).swap_dims(1, 2);
        let q = rope::apply(q, inputs.cos.clone(), inputs.sin.clone());
        let k = rope::apply(k, inputs.cos.clone(), inputs.sin.clone());
        let (k, v) = match cache {
            Some(kv) => kv.append(layer, k, v),
            None => (k, v),
        };
        let mask = inputs.mask.clone();
        // Causal attention without a mask (training batches, prompts) on the CPU backend: the
        // fused operation of `idlora_kernels::causal_attention`, grouped heads read as they are. `None` elsewhere.
        let is_causal = mask.is_none() && s > 1;
        let fused = if is_causal { idlora_kernels::causal_attention::causal(&q, &k, &v) } else { None };
        let out = fused.unwrap_or_else(|| {
            let t = k.dims()[2];
            let groups = h / kvh;
            let (k, v) = if groups > 1 && !inputs.grouped_kv {
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
        out.swap_dims(1, 2).reshape([b, s, h * d])
    }
}
