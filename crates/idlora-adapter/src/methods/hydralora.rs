//! HydraLoRA: one shared `A`, `N` heads `B_j` and a router, `y = W0 x + s sum_j w_j(x) B_j A x`.

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

/// HydraLoRA: `y = W0 x + s sum_j w_j(x) B_j A x`, one shared `A` and `N` heads.
#[derive(Module, Debug)]
pub struct HydraLora {
    /// Shared `A`, `[d_in, r]`.
    pub a: Param<Tensor<2>>,
    /// Heads stacked: rows `j r .. (j + 1) r` are head `j`'s `B_j` (`[N r, d_out]`), zeros.
    pub b: Param<Tensor<2>>,
    /// Router `[d_in, N]`.
    pub router: Param<Tensor<2>>,
    /// Dropout on the adapter's input.
    pub dropout: Dropout,
    /// `alpha / r`.
    pub scale: f64,
    /// Number of heads `N`.
    pub heads: usize,
}

impl Method for HydraLora {
    const KIND: MethodKind = MethodKind::HydraLora;
    const PEFT_TYPE: &'static str = "HYDRALORA";

    fn init(_name: &str, base: &Linear, cfg: &MethodConfig, _sets: Option<&IndexSets>) -> Result<Self> {
        let [d_in, d_out] = base.weight.dims();
        let device = base.weight.val().device();
        let n = cfg.experts;
        Ok(HydraLora {
            a: kaiming([d_in, cfg.r], d_in, cfg.r, &device),
            b: zeros([n * cfg.r, d_out], &device),
            router: kaiming([d_in, n], d_in, n, &device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scale: cfg.scale(),
            heads: n,
        })
    }

    fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
        let (r, n) = (cfg.r, cfg.experts);
        Ok(r * d_in + n * r * d_out + n * d_in)
    }

    fn update(&self, _base: &Linear, x: Tensor<2>, _y0: Tensor<2>) -> Update {
        let [n, _] = x.dims();
        let r = self.a.dims()[1];
        let w = route(&self.router, x.clone());
        let a = product::matmul(dropout::apply(&self.dropout, x), self.a.val());
        // u = w (outer) A x, flattened head-major: then one product with the stacked heads.
        let u = w.reshape([n, self.heads, 1]).mul_scalar(self.scale) * a.reshape([n, 1, r]);
        Update::Product { lhs: u.reshape([n, self.heads * r]), rhs: self.b.val() }
    }

    fn router(&self) -> Option<&Param<Tensor<2>>> {
        Some(&self.router)
    }

    fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        let mut out = vec![("lora_A.weight".into(), out_major(self.a.val(), name)?)];
        for (j, b) in self.b.val().chunk(self.heads, 0).into_iter().enumerate() {
            out.push((format!("lora_B.{j}.weight"), out_major(b, name)?));
        }
        out.push(("lora_route.weight".into(), out_major(self.router.val(), name)?));
        Ok(out)
    }

    fn import(&mut self, t: &LayerTensors<'_>) -> Result<()> {
        let [d_in, r] = self.a.dims();
        let d_out = self.b.dims()[1];
        self.a = t.param("lora_A.weight", r, d_in)?;
        self.b = t.stacked("lora_B", self.heads, d_out, r, 0)?;
        self.router = t.param("lora_route.weight", self.heads, d_in)?;
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
