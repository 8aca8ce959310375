//! ID-LoRA (METHOD.md): frozen bases `A_i = W0[S_i, :]` that are never materialised
//! (`A_i x = (W0 x)[S_i]`, a gather from the base output), a router over the `k` clusters and
//! one shared `B`, with rank boosting (Eq. 4) or the sum form (Eq. 3).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;

use super::{Method, Update, base_weight_f32, invalid, kaiming, out_major, route, zeros};
use crate::dropout;
use crate::error::{AdapterError, Result};
use crate::index_sets::IndexSets;
use crate::method::{BasisPath, DropoutSite, MethodConfig, MethodKind};
use crate::peft::{ConfigFields, HostTensor, LayerTensors};

/// ID-LoRA: frozen bases gathered from the base output, a router over the `k` clusters, and one
/// shared `B`.
#[derive(Module, Debug)]
pub struct IdLora {
    /// Shared `B`: `[k r / p, d_out / p]` with rank boosting, `[r, d_out]` without; zeros.
    pub b: Param<Tensor<2>>,
    /// Router `[d_in, k]`.
    pub router: Param<Tensor<2>>,
    /// `S_1 .. S_k` flattened (`[k r]`, cluster-major): output columns of the base layer.
    pub indices: Tensor<1, Int>,
    /// Dropout (see [`DropoutSite`]).
    pub dropout: Dropout,
    /// `alpha / r`.
    pub scale: f64,
    /// Clusters `k`.
    pub k: usize,
    /// Rows per cluster `r`.
    pub r: usize,
    /// Rank-boosting parts `p` (1 without rank boosting).
    pub p: usize,
    /// Rank boosting (Eq. 4) or the sum form (Eq. 3).
    pub rank_boost: bool,
    /// Where dropout goes.
    #[module(skip)]
    pub dropout_site: DropoutSite,
    /// Gather (default) or explicit bases.
    #[module(skip)]
    pub basis: BasisPath,
    /// The index sets as given, for saving.
    #[module(skip)]
    pub sets: IndexSets,
}

/// Shape `[d_out / p, k r / p]` of ID-LoRA's shared `B` (PEFT orientation: out x in), checking
/// that `p` divides both `d_out` and `k r`. Without rank boosting: `[d_out, r]`.
pub fn b_shape(method: &MethodConfig, d_out: usize, layer: &str) -> Result<(usize, usize)> {
    if !method.rank_boost {
        return Ok((d_out, method.r));
    }
    let p = method.parts();
    let kr = method.k * method.r;
    if !d_out.is_multiple_of(p) || !kr.is_multiple_of(p) {
        return Err(invalid(
            layer,
            format!(
                "rank boosting with p = {p} needs p to divide d_out = {d_out} and k * r = {kr} (k = {}, r = {})",
                method.k, method.r
            ),
        ));
    }
    Ok((d_out / p, kr / p))
}

impl IdLora {
    /// The gathered bases `u = [A_1 x; ...; A_k x]`, `[n, k r]`.
    fn bases(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> Tensor<2> {
        let input_dropout =
            self.dropout_site == DropoutSite::Input && dropout::is_active(&self.dropout, &x.device());
        if self.basis == BasisPath::Explicit || input_dropout {
            // A = W0[S, :] in PEFT layout, i.e. the columns S of our [d_in, d_out] weight.
            let a = base_weight_f32(base).select(1, self.indices.clone());
            return dropout::apply(&self.dropout, x).matmul(a);
        }
        let u = y0.select(1, self.indices.clone());
        match &base.bias {
            Some(b) => {
                let kr = self.k * self.r;
                u - b.val().select(0, self.indices.clone()).reshape([1, kr])
            }
            None => u,
        }
    }
}

impl Method for IdLora {
    const KIND: MethodKind = MethodKind::IdLora;
    const PEFT_TYPE: &'static str = "IDLORA";

    fn init(name: &str, base: &Linear, cfg: &MethodConfig, sets: Option<&IndexSets>) -> Result<Self> {
        let sets = sets.ok_or_else(|| {
            invalid(name, "ID-LoRA needs index sets (run idlora-cluster on the base weight)".into())
        })?;
        let [d_in, d_out] = base.weight.dims();
        let device = base.weight.val().device();
        let k = sets.k();
        if k != cfg.k || sets.rank() != cfg.r {
            return Err(invalid(
                name,
                format!(
                    "index sets are {k} x {} but the settings ask for k = {} and r = {}",
                    sets.rank(),
                    cfg.k,
                    cfg.r
                ),
            ));
        }
        for (i, set) in sets.sets().iter().enumerate() {
            if let Some(&bad) = set.iter().find(|&&row| row as usize >= d_out) {
                return Err(invalid(
                    name,
                    format!("index set {i} names row {bad}, but the layer has {d_out} rows"),
                ));
            }
        }
        let (b_out, b_in) = b_shape(cfg, d_out, name)?;
        let indices = Tensor::<1, Int>::from_data(TensorData::new(sets.to_i32(), [k * cfg.r]), &device);
        Ok(IdLora {
            b: zeros([b_in, b_out], &device),
            router: kaiming([d_in, k], d_in, k, &device),
            indices,
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scale: cfg.scale(),
            k,
            r: cfg.r,
            p: cfg.parts(),
            rank_boost: cfg.rank_boost,
            dropout_site: cfg.dropout_site,
            basis: cfg.basis,
            sets: sets.clone(),
        })
    }

    fn params(cfg: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
        let (rows, cols) = b_shape(cfg, d_out, "<unnamed>")?;
        Ok(rows * cols + cfg.k * d_in)
    }

    /// The update as one product `lhs rhs`, whose `[rows, cols]` result is the `[n, d_out]` update
    /// laid out row-major (with rank boosting, `n p` rows of `d_out / p`).
    fn update(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> Update {
        let [n, _] = x.dims();
        let (k, r) = (self.k, self.r);
        // Inference on the CPU backend: router, gather and scale in one pass per token. (No
        // dropout is active there: it needs autodiff.)
        #[cfg(feature = "flex")]
        if self.basis == BasisPath::Gather {
            use idlora_kernels::product;
            let indices = self.sets.to_i32();
            let spec = product::IdLoraLhs {
                indices: &indices,
                k,
                r,
                scale: self.scale as f32,
                sum_form: !self.rank_boost,
            };
            let bias = base.bias.as_ref().map(|b| b.val().reshape([1, b.dims()[0]]));
            if let Some(lhs) = product::idlora_lhs(&x, &y0, &self.router.val(), bias, &spec) {
                let lhs = if self.rank_boost { lhs.reshape([n * self.p, self.b.dims()[0]]) } else { lhs };
                return Update::Product { lhs, rhs: self.b.val() };
            }
        }
        let w = route(&self.router, x.clone());
        let mut u = self.bases(base, x, y0);
        if self.dropout_site == DropoutSite::Gathered {
            u = dropout::apply(&self.dropout, u);
        }
        // Router weight and scale in one `[n, k]` factor, applied to the small `u`.
        let u = u.reshape([n, k, r]) * w.mul_scalar(self.scale).reshape([n, k, 1]);
        let lhs = if self.rank_boost {
            // [B u_1; ...; B u_p]: the p parts of u are rows of one product with the shared B.
            u.reshape([n * self.p, self.b.dims()[0]])
        } else {
            u.sum_dim(1).reshape([n, r])
        };
        Update::Product { lhs, rhs: self.b.val() }
    }

    fn router(&self) -> Option<&Param<Tensor<2>>> {
        Some(&self.router)
    }

    fn export(&self, name: &str) -> Result<Vec<(String, HostTensor)>> {
        Ok(vec![
            ("lora_B.weight".into(), out_major(self.b.val(), name)?),
            ("lora_route.weight".into(), out_major(self.router.val(), name)?),
            ("bases".into(), HostTensor::I32 { shape: vec![self.k, self.r], data: self.sets.to_i32() }),
        ])
    }

    fn import(&mut self, t: &LayerTensors<'_>) -> Result<()> {
        // The index sets were read before `init` (they shape the layer): see `index_sets`.
        let [b_in, b_out] = self.b.dims();
        let d_in = self.router.dims()[0];
        self.b = t.param("lora_B.weight", b_out, b_in)?;
        self.router = t.param("lora_route.weight", self.k, d_in)?;
        Ok(())
    }

    fn write_config(cfg: &MethodConfig, map: &mut serde_json::Map<String, Value>) {
        map.insert("k".into(), cfg.k.into());
        map.insert("rank_boost".into(), cfg.rank_boost.into());
        map.insert("p".into(), cfg.parts().into());
        map.insert("dropout_site".into(), serde_json::to_value(cfg.dropout_site).unwrap_or(Value::Null));
    }

    fn read_config(fields: &mut ConfigFields<'_>, cfg: &mut MethodConfig) -> Result<()> {
        cfg.k = fields.usize("k", None)?;
        cfg.rank_boost = fields.bool("rank_boost", true)?;
        cfg.p = Some(fields.usize("p", Some(cfg.k))?);
        cfg.dropout_site = match fields.take("dropout_site") {
            None | Some(Value::Null) => DropoutSite::Gathered,
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                fields.error(format!("field `dropout_site`: expected \"gathered\" or \"input\", found {v}"))
            })?,
        };
        cfg.basis = BasisPath::Gather;
        Ok(())
    }
}

/// Reads a layer's index sets (`bases`, int32 `[k, r]`) from its file tensors.
pub(crate) fn index_sets(t: &LayerTensors<'_>, d_out: usize) -> Result<IndexSets> {
    let (shape, data) = t.i32("bases")?;
    if shape.len() != 2 {
        return Err(t.bad("bases", format!("has shape {shape:?}, expected [k, r] int32")));
    }
    IndexSets::from_i32(data, shape[0], shape[1], d_out).map_err(|e| match e {
        AdapterError::InvalidSetting { message, .. } => t.bad("bases", message),
        other => other,
    })
}
