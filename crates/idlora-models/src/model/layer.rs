//! One decoder layer: pre-norm attention and MLP, each with a residual.

use burn::module::Module;
use burn::tensor::Tensor;

use super::attention::{Attention, AttentionInputs};
use super::cache::KvCache;
use super::mlp::Mlp;
use super::norm::RmsNorm;

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

impl DecoderLayer {
    /// `h + attn(norm(h))`, then `+ mlp(norm(.))`, for `h` `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        h: Tensor<3>,
        inputs: &AttentionInputs,
        layer: usize,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let a = self.self_attn.forward(self.input_layernorm.forward(h.clone()), inputs, layer, cache);
        let h = h + a;
        let m = self.mlp.forward(self.post_attention_layernorm.forward(h.clone()));
        h + m
    }
}
