//! DoRA (Liu et al. 2024): LoRA plus a per-output-row magnitude,
//! `y = m / ||W0 + s B A||_row * (W0 x + s B A x)`.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;

use super::lora::Lora;
use super::{Method, Update, base_weight_f32, host, invalid};
use crate::dropout;
use crate::error::Result;
use crate::index_sets::IndexSets;
use crate::method::{MethodConfig, MethodKind};
use crate::peft::{HostTensor, LayerTensors};

/// DoRA, with the norm detached from the graph as the DoRA paper (section 4.3) and PEFT do.
#[derive(Module, Debug)]
pub struct Dora {
    /// The low-rank part.
    pub lora: Lora,
    /// Magnitude `m`, `[d_out]`, initialised to the row norms of `W0`.
    pub magnitude: Param<Tensor<1>>,
    /// While merged: the per-row factor `m / ||W0 + s B A||` used, kept to unmerge exactly.
    pub merged_factor: Option<Tensor<1>>,
}

impl Dora {
    /// Per-output-row norms of `W0 + s A B` (`[1, d_out]`), detached.
    fn weight_norm(&self, w0: Tensor<2>) -> Tensor<2> {
        let w = w0 + self.lora.delta_weight().detach();
        w.powi_scalar(2).sum_dim(0).sqrt().detach()
    }
}

fn without_bias(base: &Linear, y0: Tensor<2>) -> Tensor<2> {
    match &base.bias {
        Some(b) => {
            let d_out = b.dims()[0];
            y0 - b.val().reshape([1, d_out])
        }
        None => y0,
    }
}

impl Method for Dora {
    const KIND: MethodKind = MethodKind::Dora;
    // PEFT's own type: DoRA is LoRA with `use_dora`.
    const PEFT_TYPE: &'static str = "LORA";

    fn init(_name: &str, base: &Linear, cfg: &MethodConfig, _sets: Option<&IndexSets>) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        let w0 = base_weight_f32(base);
        let norms = w0.clone().powi_scalar(2).sum_dim(0).sqrt().reshape([d_out]).detach();
        Ok(Dora {
            lora: Lora::fresh(d_in, d_out, cfg, &w0.device()),
            magnitude: Param::from_tensor(norms),
            merged_factor: None,
        })
    }

    fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
        Ok(cfg.r * (d_in + d_out) + d_out)
    }

    fn update(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> Update {
        let l = &self.lora;
        let w0 = base_weight_f32(base);
        let [_, d_out] = w0.dims();
        let scale = self.magnitude.val().reshape([1, d_out]) / self.weight_norm(w0.clone());
        let active = dropout::is_active(&l.dropout, &x.device());
        let xd = dropout::apply(&l.dropout, x);
        // The base part without bias: reuse y0 unless dropout changed the input.
        let base_part = if active { xd.clone().matmul(w0) } else { without_bias(base, y0) };
        let lora = xd.matmul(l.a.val()).mul_scalar(l.scale).matmul(l.b.val());
        Update::Dense((scale.clone() - 1.0) * base_part + scale * lora)
    }

    fn merge(&mut self, _name: &str, w0: Tensor<2>) -> Result<Tensor<2>> {
        let [_, d_out] = w0.dims();
        let factor = self.magnitude.val().reshape([1, d_out]) / self.weight_norm(w0.clone());
        self.merged_factor = Some(factor.clone().reshape([d_out]).detach());
        Ok((w0 + self.lora.delta_weight()) * factor)
    }

    fn unmerge(&mut self, name: &str, merged: Tensor<2>) -> Result<Tensor<2>> {
        let [_, d_out] = merged.dims();
        let factor = self
            .merged_factor
            .take()
            .ok_or_else(|| invalid(name, "merged DoRA layer lost its merge factor".into()))?;
        Ok(merged / factor.reshape([1, d_out]) - self.lora.delta_weight())
    }

    fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        let mut out = self.lora.export_ab(name)?;
        let m = self.magnitude.val();
        let n = m.dims()[0];
        let (_, data) = host(m.reshape([1, n]), name)?;
        out.push(("lora_magnitude_vector".into(), HostTensor::F32 { shape: vec![n], data }));
        Ok(out)
    }

    fn import(&mut self, t: &LayerTensors<'_>) -> Result<()> {
        self.lora.import_ab(t)?;
        let n = self.magnitude.dims()[0];
        self.magnitude = t.vector("lora_magnitude_vector", n)?;
        Ok(())
    }
}
