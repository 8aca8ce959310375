//! [`AdaptedLinear`]: a frozen base linear layer plus one adapter of any method.
//!
//! Layout: weights are stored the way burn's `Linear` stores them, input-major (`W0` is
//! `[d_in, d_out]`, `A` is `[d_in, r]`, `B` is `[r, d_out]`), so that every product is a plain
//! `x.matmul(W)`. Files use PEFT's out-major layout; `crate::peft` transposes at the boundary.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use idlora_cluster::select::IndexSets;

use crate::dropout;
use crate::error::{AdapterError, Result};
use crate::method::{BasisPath, DropoutSite, MethodConfig, MethodKind};
use crate::params::idlora_b_shape;
use idlora_kernels::product::{self, add_product};

/// PEFT's (and `nn.Linear`'s) initialiser for `A` and for routers: Kaiming-uniform with
/// `a = sqrt(5)`, i.e. `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
fn kaiming(shape: [usize; 2], fan_in: usize, fan_out: usize, device: &Device) -> Param<Tensor<2>> {
    Initializer::KaimingUniform { gain: 1.0 / 3.0f64.sqrt(), fan_out_only: false }.init_with(
        shape,
        Some(fan_in),
        Some(fan_out),
        device,
    )
}

fn zeros(shape: [usize; 2], device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::zeros(shape, device))
}

/// What an adapter adds to the base output: one product (all methods but DoRA), which the CPU
/// backend can accumulate in place (`crate::product`), or a dense tensor.
// One is built per forward call and consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Update {
    /// `lhs rhs`, reshaped to `[n, d_out]`.
    Product { lhs: Tensor<2>, rhs: Tensor<2> },
    /// `[n, d_out]`.
    Dense(Tensor<2>),
}

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
    fn new(d_in: usize, d_out: usize, cfg: &MethodConfig, device: &Device) -> Self {
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
}

/// DoRA: `y = m / ||W0 + s B A||_row * (W0 x + s B A x)`, with the norm detached from the graph
/// as the DoRA paper (section 4.3) and PEFT do.
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

/// A router `softmax(x W_g)`, `W_g` of shape `[d_in, n]`, no bias.
fn route(router: &Param<Tensor<2>>, x: Tensor<2>) -> Tensor<2> {
    softmax(product::matmul(x, router.val()), 1)
}

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

/// ID-LoRA: frozen bases `A_i = W0[S_i, :]` that are never materialised (`A_i x = (W0 x)[S_i]`),
/// a router over the `k` clusters, and one shared `B`.
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

/// The adapter attached to an [`AdaptedLinear`].
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Adapter {
    /// LoRA.
    Lora(Lora),
    /// DoRA.
    Dora(Dora),
    /// HydraLoRA.
    HydraLora(HydraLora),
    /// MoELoRA.
    MoeLora(MoeLora),
    /// ID-LoRA.
    IdLora(IdLora),
}

impl Adapter {
    /// The method this adapter implements.
    pub fn kind(&self) -> MethodKind {
        match self {
            Adapter::Lora(_) => MethodKind::Lora,
            Adapter::Dora(_) => MethodKind::Dora,
            Adapter::HydraLora(_) => MethodKind::HydraLora,
            Adapter::MoeLora(_) => MethodKind::MoeLora,
            Adapter::IdLora(_) => MethodKind::IdLora,
        }
    }
}

/// A linear layer `y = x W0 + b` whose base is frozen (unless the method is full fine-tuning) with
/// one adapter of any method on top.
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use idlora_adapter::{AdaptedLinear, MethodConfig, MethodKind};
/// use idlora_cluster::select::select_serial;
///
/// let device = Device::flex();
/// let base = LinearConfig::new(16, 8).with_bias(false).init(&device);
/// // ID-LoRA with k = 2 clusters of r = 2 rows of the 8 output rows (here: serial selection).
/// let mut cfg = MethodConfig::new(MethodKind::IdLora, 2);
/// cfg.k = 2;
/// let sets = select_serial(8, 2, 2).unwrap();
/// let layer = AdaptedLinear::new("demo", base, &cfg, Some(&sets)).unwrap();
/// let x = Tensor::<3>::ones([1, 5, 16], &device);
/// assert_eq!(layer.forward(x).dims(), [1, 5, 8]);
/// // Trainable: B is [d_out / p, k r / p] = [4, 2], router [16, 2].
/// assert_eq!(layer.trainable_params(), 4 * 2 + 16 * 2);
/// ```
#[derive(Module, Debug)]
pub struct AdaptedLinear {
    /// The base layer (weight `[d_in, d_out]`), frozen unless fine-tuned in full.
    pub base: Linear,
    /// The adapter; `None` for full fine-tuning.
    pub adapter: Option<Adapter>,
    /// Whether the adapter is currently merged into `base` (LoRA and DoRA only).
    pub merged: bool,
    /// Module path, for error messages and files.
    #[module(skip)]
    pub name: String,
}

fn invalid(layer: &str, message: String) -> AdapterError {
    AdapterError::InvalidConfig { layer: layer.to_string(), message }
}

impl AdaptedLinear {
    /// Wraps `base` (moved, not copied) with the adapter `cfg` describes. `bases` are ID-LoRA's
    /// index sets (from `idlora-cluster`), required for ID-LoRA and ignored otherwise. Every base
    /// parameter is frozen except under full fine-tuning. Errors name `name` when the settings do
    /// not fit the layer's shape.
    pub fn new(name: &str, base: Linear, cfg: &MethodConfig, bases: Option<&IndexSets>) -> Result<Self> {
        cfg.validate().map_err(|e| invalid(name, e.to_string()))?;
        let [d_in, d_out] = base.weight.dims();
        let device = base.weight.val().device();
        let adapter = match cfg.kind {
            MethodKind::Full => None,
            MethodKind::Lora => Some(Adapter::Lora(Lora::new(d_in, d_out, cfg, &device))),
            MethodKind::Dora => {
                let norms = base.weight.val().powi_scalar(2).sum_dim(0).sqrt().reshape([d_out]).detach();
                Some(Adapter::Dora(Dora {
                    lora: Lora::new(d_in, d_out, cfg, &device),
                    magnitude: Param::from_tensor(norms),
                    merged_factor: None,
                }))
            }
            MethodKind::HydraLora => {
                let n = cfg.experts;
                Some(Adapter::HydraLora(HydraLora {
                    a: kaiming([d_in, cfg.r], d_in, cfg.r, &device),
                    b: zeros([n * cfg.r, d_out], &device),
                    router: kaiming([d_in, n], d_in, n, &device),
                    dropout: DropoutConfig::new(cfg.dropout).init(),
                    scale: cfg.scale(),
                    heads: n,
                }))
            }
            MethodKind::MoeLora => {
                let n = cfg.experts;
                // Each expert's A_j is initialised as its own d_in x r LoRA A would be.
                let a = Tensor::cat(
                    (0..n).map(|_| kaiming([d_in, cfg.r], d_in, cfg.r, &device).val()).collect(),
                    1,
                )
                .detach();
                Some(Adapter::MoeLora(MoeLora {
                    a: Param::from_tensor(a),
                    b: zeros([n * cfg.r, d_out], &device),
                    router: kaiming([d_in, n], d_in, n, &device),
                    dropout: DropoutConfig::new(cfg.dropout).init(),
                    scale: cfg.scale(),
                    experts: n,
                }))
            }
            MethodKind::IdLora => {
                let sets = bases.ok_or_else(|| {
                    invalid(name, "ID-LoRA needs index sets (run idlora-cluster on the base weight)".into())
                })?;
                Some(Adapter::IdLora(IdLora::new(name, d_in, d_out, cfg, sets, &device)?))
            }
        };
        let base = if cfg.kind == MethodKind::Full { base } else { base.no_grad() };
        Ok(AdaptedLinear { base, adapter, merged: false, name: name.to_string() })
    }

    /// `(d_in, d_out)` of the base layer.
    pub fn shape(&self) -> (usize, usize) {
        let [d_in, d_out] = self.base.weight.dims();
        (d_in, d_out)
    }

    /// The method of this layer.
    pub fn kind(&self) -> MethodKind {
        self.adapter.as_ref().map_or(MethodKind::Full, Adapter::kind)
    }

    /// Number of trainable parameters: the adapter's, or the base layer's under full
    /// fine-tuning (the base is frozen otherwise).
    pub fn trainable_params(&self) -> usize {
        match &self.adapter {
            Some(adapter) => adapter.num_params(),
            None => self.base.num_params(),
        }
    }

    /// The router's weights `softmax(W_g x)` for `x` of shape `[n, d_in]` (`[n, k]` or `[n, N]`);
    /// `None` for methods without a router.
    pub fn router_weights(&self, x: Tensor<2>) -> Option<Tensor<2>> {
        match &self.adapter {
            Some(Adapter::HydraLora(h)) => Some(route(&h.router, x)),
            Some(Adapter::MoeLora(m)) => Some(route(&m.router, x)),
            Some(Adapter::IdLora(id)) => Some(route(&id.router, x)),
            _ => None,
        }
    }

    /// Applies the layer to `x` of shape `[..., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y0 = self.base_forward(x.clone());
        let adapter = match (&self.adapter, self.merged) {
            (Some(adapter), false) => adapter,
            _ => return y0,
        };
        let dims = y0.dims();
        let (d_in, d_out) = self.shape();
        let n = dims[..D - 1].iter().product::<usize>();
        let x2 = x.reshape([n, d_in]);
        let y2 = y0.clone().reshape([n, d_out]);
        let y = match self.update(adapter, x2, y2) {
            // `y2` is gone by now, so on the CPU backend the product lands in `y0`'s own buffer.
            Update::Product { lhs, rhs } => {
                let (rows, cols) = (lhs.dims()[0], rhs.dims()[1]);
                add_product(y0.reshape([rows, cols]), lhs, rhs)
            }
            Update::Dense(delta) => y0.reshape([n, d_out]) + delta,
        };
        y.reshape(dims)
    }

    /// `x W0 + b`, the product through [`product::matmul`] (on burn's CPU backend without
    /// autodiff: a few rows spread over the threads, more rows straight into their own buffer).
    fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut dims = x.dims();
        let n = dims[..D - 1].iter().product::<usize>();
        if x.device().is_autodiff() {
            return self.base.forward(x);
        }
        let (d_in, d_out) = self.shape();
        let y = product::matmul(x.reshape([n, d_in]), self.base.weight.val());
        let y = match &self.base.bias {
            Some(b) => y + b.val().reshape([1, d_out]),
            None => y,
        };
        dims[D - 1] = d_out;
        y.reshape(dims)
    }

    /// The update `y - W0 x - b` on flattened `[n, d_in]` input, given the base output
    /// `y0 = x W0 + b`.
    fn update(&self, adapter: &Adapter, x: Tensor<2>, y0: Tensor<2>) -> Update {
        let product = |lhs, rhs| Update::Product { lhs, rhs };
        match adapter {
            // The scale goes on the small `[n, r]` intermediate, not on the `[n, d_out]` output.
            Adapter::Lora(l) => product(
                product::matmul(dropout::apply(&l.dropout, x), l.a.val()).mul_scalar(l.scale),
                l.b.val(),
            ),
            Adapter::Dora(d) => {
                let l = &d.lora;
                let w0 = self.base.weight.val();
                let [_, d_out] = w0.dims();
                let scale = d.magnitude.val().reshape([1, d_out]) / d.weight_norm(w0.clone());
                let active = dropout::is_active(&l.dropout, &x.device());
                let xd = dropout::apply(&l.dropout, x);
                // The base part without bias: reuse y0 unless dropout changed the input.
                let base = if active { xd.clone().matmul(w0) } else { self.without_bias(y0) };
                let lora = xd.matmul(l.a.val()).mul_scalar(l.scale).matmul(l.b.val());
                Update::Dense((scale.clone() - 1.0) * base + scale * lora)
            }
            Adapter::HydraLora(h) => {
                let [n, _] = x.dims();
                let r = h.a.dims()[1];
                let w = route(&h.router, x.clone());
                let a = product::matmul(dropout::apply(&h.dropout, x), h.a.val());
                // u = w (outer) A x, flattened head-major: then one product with the stacked heads.
                let u = w.reshape([n, h.heads, 1]).mul_scalar(h.scale) * a.reshape([n, 1, r]);
                product(u.reshape([n, h.heads * r]), h.b.val())
            }
            Adapter::MoeLora(m) => {
                let [n, _] = x.dims();
                let nr = m.a.dims()[1];
                let r = nr / m.experts;
                let w = route(&m.router, x.clone());
                let a = product::matmul(dropout::apply(&m.dropout, x), m.a.val());
                let u = a.reshape([n, m.experts, r]) * w.reshape([n, m.experts, 1]).mul_scalar(m.scale);
                product(u.reshape([n, nr]), m.b.val())
            }
            Adapter::IdLora(id) => {
                let (lhs, rhs) = id.product(&self.base, x, y0);
                product(lhs, rhs)
            }
        }
    }

    fn without_bias(&self, y0: Tensor<2>) -> Tensor<2> {
        match &self.base.bias {
            Some(b) => {
                let d_out = b.dims()[0];
                y0 - b.val().reshape([1, d_out])
            }
            None => y0,
        }
    }

    /// Folds the adapter into the base weight (LoRA and DoRA). The routed methods depend on `x`
    /// through their router and cannot be merged: that is an error, and so is merging twice.
    pub fn merge(mut self) -> Result<Self> {
        if self.merged {
            return Err(invalid(&self.name, "the adapter is already merged".into()));
        }
        match self.adapter.take() {
            Some(Adapter::Lora(l)) => {
                let delta = l.delta_weight();
                self.base.weight = self.base.weight.map(|w| (w + delta).detach());
                self.adapter = Some(Adapter::Lora(l));
            }
            Some(Adapter::Dora(mut d)) => {
                let w0 = self.base.weight.val();
                let [_, d_out] = w0.dims();
                let factor = d.magnitude.val().reshape([1, d_out]) / d.weight_norm(w0);
                let delta = d.lora.delta_weight();
                self.base.weight = self.base.weight.map(|w| ((w + delta) * factor.clone()).detach());
                d.merged_factor = Some(factor.reshape([d_out]).detach());
                self.adapter = Some(Adapter::Dora(d));
            }
            other => {
                let kind = other.as_ref().map_or(MethodKind::Full, Adapter::kind);
                self.adapter = other;
                return Err(AdapterError::NotMergeable {
                    method: kind.display_name(),
                    reason: if kind == MethodKind::Full {
                        "there is no adapter"
                    } else {
                        "its router makes the update depend on the input"
                    },
                });
            }
        }
        self.merged = true;
        Ok(self)
    }

    /// Undoes [`merge`](Self::merge), restoring the base weight (up to rounding).
    pub fn unmerge(mut self) -> Result<Self> {
        if !self.merged {
            return Err(invalid(&self.name, "the adapter is not merged".into()));
        }
        match self.adapter.take() {
            Some(Adapter::Lora(l)) => {
                let delta = l.delta_weight();
                self.base.weight = self.base.weight.map(|w| (w - delta).detach());
                self.adapter = Some(Adapter::Lora(l));
            }
            Some(Adapter::Dora(mut d)) => {
                let d_out = self.shape().1;
                let factor = d
                    .merged_factor
                    .take()
                    .ok_or_else(|| invalid(&self.name, "merged DoRA layer lost its merge factor".into()))?;
                let delta = d.lora.delta_weight();
                self.base.weight =
                    self.base.weight.map(|w| (w / factor.reshape([1, d_out]) - delta).detach());
                self.adapter = Some(Adapter::Dora(d));
            }
            other => {
                self.adapter = other;
                return Err(invalid(&self.name, "only LoRA and DoRA can be merged".into()));
            }
        }
        self.merged = false;
        Ok(self)
    }
}

impl IdLora {
    fn new(
        name: &str,
        d_in: usize,
        d_out: usize,
        cfg: &MethodConfig,
        sets: &IndexSets,
        device: &Device,
    ) -> Result<Self> {
        let k = sets.k();
        if k != cfg.k || sets.rank != cfg.r {
            return Err(invalid(
                name,
                format!(
                    "index sets are {k} x {} but the settings ask for k = {} and r = {}",
                    sets.rank, cfg.k, cfg.r
                ),
            ));
        }
        for (i, set) in sets.sets.iter().enumerate() {
            if set.len() != cfg.r {
                return Err(invalid(
                    name,
                    format!("index set {i} has {} rows, expected r = {}", set.len(), cfg.r),
                ));
            }
            if let Some(&bad) = set.iter().find(|&&row| row as usize >= d_out) {
                return Err(invalid(
                    name,
                    format!("index set {i} names row {bad}, but the layer has {d_out} rows"),
                ));
            }
        }
        let (b_out, b_in) = idlora_b_shape(cfg, d_out, name)?;
        let indices = Tensor::<1, Int>::from_data(TensorData::new(sets.to_i32(), [k * cfg.r]), device);
        Ok(IdLora {
            b: zeros([b_in, b_out], device),
            router: kaiming([d_in, k], d_in, k, device),
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

    /// The gathered bases `u = [A_1 x; ...; A_k x]`, `[n, k r]`.
    fn bases(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> Tensor<2> {
        let input_dropout =
            self.dropout_site == DropoutSite::Input && dropout::is_active(&self.dropout, &x.device());
        if self.basis == BasisPath::Explicit || input_dropout {
            // A = W0[S, :] in PEFT layout, i.e. the columns S of our [d_in, d_out] weight.
            let a = base.weight.val().select(1, self.indices.clone());
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

    /// The update as one product `lhs rhs`, whose `[rows, cols]` result is the `[n, d_out]` update
    /// laid out row-major (with rank boosting, `n p` rows of `d_out / p`).
    fn product(&self, base: &Linear, x: Tensor<2>, y0: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let [n, _] = x.dims();
        let (k, r) = (self.k, self.r);
        // Inference on the CPU backend: router, gather and scale in one pass per token. (No
        // dropout is active there: it needs autodiff.)
        #[cfg(feature = "flex")]
        if self.basis == BasisPath::Gather {
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
                return (lhs, self.b.val());
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
        (lhs, self.b.val())
    }
}
