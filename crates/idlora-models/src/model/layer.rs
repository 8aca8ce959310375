//! One decoder layer: pre-norm attention and MLP, each with a residual.

use burn::module::Module;
use burn::tensor::Tensor;

use super::attention::{Attention, AttentionInputs};
use super::cache::KvCache;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use crate::layout::Target;

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

    /// [`forward`](Self::forward) without a cache, handing each projection's input to `seen`
    /// (`q`, `k` and `v` read the same tensor, and so do `gate` and `up`). A separate path so that
    /// the hot one holds no extra references to its activations.
    pub fn forward_seen(
        &self,
        h: Tensor<3>,
        inputs: &AttentionInputs,
        layer: usize,
        seen: &mut dyn FnMut(Target, &Tensor<3>),
    ) -> Tensor<3> {
        let x = self.input_layernorm.forward(h.clone());
        for t in [Target::Q, Target::K, Target::V] {
            seen(t, &x);
        }
        let c = self.self_attn.context(x, inputs, layer, None);
        seen(Target::O, &c);
        let h = h + self.self_attn.o_proj.forward(c);
        let x = self.post_attention_layernorm.forward(h.clone());
        seen(Target::Gate, &x);
        seen(Target::Up, &x);
        let a = self.mlp.activation(x);
        seen(Target::Down, &a);
        h + self.mlp.down_proj.forward(a)
    }
}
