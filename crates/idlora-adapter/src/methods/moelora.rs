//! MoELoRA: `N` experts `(A_j, B_j)` and a router, `y = W0 x + s sum_j w_j(x) B_j A_j x`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::Tensor;
use idlora_kernels::product;

use super::{Method, Update, kaiming, out_major, route, zeros};
use crate::dropout;
use crate::error::Result;
use crate::index_sets::IndexSets;
use crate::method::{MethodConfig, MethodKind};
use crate::peft::{ConfigFields, HostTensor, LayerTensors};

/// MoELoRA: `y = W0 x + s sum_j w_j(x) B_j A_j x`, `N` experts.
#[derive(Module, Debug)]
pub struct MoeLora {
    /// Experts' `A_j` side by side: columns `j r .. (j + 1) r` (`[d_in, N r]`).
    pub a: Param<Tensor<2>>,
    /// Experts' `B_j` stacked: rows `j r .. (j + 1) r` (`[N r, d_out]`), zeros.
    pub b: Param<Tensor<2>>,
    /// Router `[d_in, N]`.
    pub router: Param<Tensor<2>>,
    /// Dropout on the adapter's input.
    pub dropout: Dropout,
    /// `alpha / r`.
    pub scale: f64,
    /// Number of experts `N`.
    pub experts: usize,
}

impl Method for MoeLora {
    const KIND: MethodKind = MethodKind::MoeLora;
    const PEFT_TYPE: &'static str = "MOELORA";

    fn init(_name: &str, base: &Linear, cfg: &MethodConfig, _sets: Option<&IndexSets>) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        let device = base.weight.val().device();
        let n = cfg.experts;
        // Each expert's A_j is initialised as its own d_in x r LoRA A would be.
        let a = Tensor::cat((0..n).map(|_| kaiming([d_in, cfg.r], d_in, cfg.r, &device).val()).collect(), 1)
            .detach();
        Ok(MoeLora {
            a: Param::from_tensor(a),
            b: zeros([n * cfg.r, d_out], &device),
            router: kaiming([d_in, n], d_in, n, &device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scale: cfg.scale(),
            experts: n,
        })
    }

    fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
        let (r, n) = (cfg.r, cfg.experts);
        Ok(n * r * (d_in + d_out) + n * d_in)
    }

    fn update(&self, _base: &Linear, x: Tensor<2>, _y0: Tensor<2>) -> Update {
        let [n, _] = x.dims();
        let nr = self.a.dims()[1];
        let r = nr / self.experts;
        let w = route(&self.router, x.clone());
        let a = product::matmul(dropout::apply(&self.dropout, x), self.a.val());
        let u = a.reshape([n, self.experts, r]) * w.reshape([n, self.experts, 1]).mul_scalar(self.scale);
        Update::Product { lhs: u.reshape([n, nr]), rhs: self.b.val() }
    }

    fn router(&self) -> Option<&Param<Tensor<2>>> {
        Some(&self.router)
    }

    fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        let mut out = Vec::new();
        for (j, a) in self.a.val().chunk(self.experts, 1).into_iter().enumerate() {
            out.push((format!("lora_A.{j}.weight"), out_major(a, name)?));
        }
        for (j, b) in self.b.val().chunk(self.experts, 0).into_iter().enumerate() {
            out.push((format!("lora_B.{j}.weight"), out_major(b, name)?));
        }
        out.push(("lora_route.weight".into(), out_major(self.router.val(), name)?));
        Ok(out)
    }

    fn import(&mut self, t: &LayerTensors<'_>) -> Result<()> {
        let [d_in, nr] = self.a.dims();
        let r = nr / self.experts;
        let d_out = self.b.dims()[1];
        self.a = t.stacked("lora_A", self.experts, r, d_in, 1)?;
        self.b = t.stacked("lora_B", self.experts, d_out, r, 0)?;
        self.router = t.param("lora_route.weight", self.experts, d_in)?;
        Ok(())
    }

    fn write_config(cfg: &MethodConfig, map: &mut serde_json::Map<String, serde_json::Value>) {
        map.insert("num_experts".into(), cfg.experts.into());
    }

    fn read_config(fields: &mut ConfigFields<'_>, cfg: &mut MethodConfig) -> Result<()> {
        cfg.experts = fields.usize("num_experts", None)?;
        Ok(())
    }
}
