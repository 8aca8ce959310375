//! The SwiGLU MLP.

use burn::module::Module;
use burn::tensor::Tensor;
use idlora_adapter::AdaptedLinear;
use idlora_kernels::swiglu::swiglu;

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
    /// `down(silu(gate(x)) * up(x))` for `x` `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward(self.activation(x))
    }

    /// `silu(gate(x)) * up(x)`: what `down_proj` reads.
    pub fn activation(&self, x: Tensor<3>) -> Tensor<3> {
        swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x))
    }
}
