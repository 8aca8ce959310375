//! RMSNorm.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

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
