//! LoRA (Hu et al. 2021): `y = W0 x + s B A x`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};
use idlora_kernels::product;

use super::{Method, Update, kaiming, out_major, zeros};
use crate::dropout;
use crate::error::Result;
use crate::index_sets::IndexSets;
use crate::method::{MethodConfig, MethodKind};
use crate::peft::{HostTensor, LayerTensors};

/// LoRA: `y = W0 x + s B A x`.
#[derive(Module, Debug)]
pub struct Lora {
    /// `A`, `[d_in, r]`, Kaiming-uniform.
    pub a: Param<Tensor<2>>,
    /// `B`, `[r, d_out]`, zeros.
    pub b: Param<Tensor<2>>,
    /// Dropout on the adapter's input.
    pub dropout: Dropout,
    /// `alpha / r` (or `alpha / sqrt(r)`).
    pub scale: f64,
}

impl Lora {
    /// `A` Kaiming-uniform, `B` zeros (PEFT's initialisation).
    pub(crate) fn fresh(d_in: usize, d_out: usize, cfg: &MethodConfig, device: &Device) -> Self {
        Lora {
            a: kaiming([d_in, cfg.r], d_in, cfg.r, device),
            b: zeros([cfg.r, d_out], device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scale: cfg.scale(),
        }
    }

    /// `s A B`, the dense update `[d_in, d_out]`.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    /// `A` and `B` by PEFT suffix (shared with DoRA).
    pub(crate) fn export_ab(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        Ok(vec![
            ("lora_A.weight".into(), out_major(self.a.val(), name)?),
            ("lora_B.weight".into(), out_major(self.b.val(), name)?),
        ])
    }

    /// Reads `A` and `B` (shared with DoRA).
    pub(crate) fn import_ab(&mut self, t: &LayerTensors<'_>) -> Result<()> {
        let [d_in, r] = self.a.dims();
        let d_out = self.b.dims()[1];
        self.a = t.param("lora_A.weight", r, d_in)?;
        self.b = t.param("lora_B.weight", d_out, r)?;
        Ok(())
    }
}

impl Method for Lora {
    const KIND: MethodKind = MethodKind::Lora;
    const PEFT_TYPE: &'static str = "LORA";

    fn init(_name: &str, base: &Linear, cfg: &MethodConfig, _sets: Option<&IndexSets>) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        Ok(Lora::fresh(d_in, d_out, cfg, &base.weight.val().device()))
    }

    fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
        Ok(cfg.r * (d_in + d_out))
    }

    fn update(&self, _base: &Linear, x: Tensor<2>, _y0: Tensor<2>) -> Update {
        // The scale goes on the small `[n, r]` intermediate, not on the `[n, d_out]` output.
        let lhs = product::matmul(dropout::apply(&self.dropout, x), self.a.val()).mul_scalar(self.scale);
        Update::Product { lhs, rhs: self.b.val() }
    }

    fn merge(&mut self, _name: &str, w0: Tensor<2>) -> Result<Tensor<2>> {
        Ok(w0 + self.delta_weight())
    }

    fn unmerge(&mut self, _name: &str, merged: Tensor<2>) -> Result<Tensor<2>> {
        Ok(merged - self.delta_weight())
    }

    fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        self.export_ab(name)
    }

    fn import(&mut self, t: &LayerTensors<'_>) -> Result<()> {
        self.import_ab(t)
    }
}
