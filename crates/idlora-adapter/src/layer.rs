//! [`AdaptedLinear`]: a frozen base linear layer plus one adapter of any method.
//!
//! Layout: weights are stored the way burn's `Linear` stores them, input-major (`W0` is
//! `[d_in, d_out]`, `A` is `[d_in, r]`, `B` is `[r, d_out]`), so that every product is a plain
//! `x.matmul(W)`. Files use PEFT's out-major layout; `crate::peft` transposes at the boundary.
//! Everything method-specific is in `crate::methods`.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{FloatDType, Tensor};

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::index_sets::IndexSets;
use crate::method::{MethodConfig, MethodKind};
use crate::methods::{Update, invalid, route};
use idlora_kernels::product::{self, add_product};

/// A linear layer `y = x W0 + b` whose base is frozen (unless the method is full fine-tuning) with
/// one adapter of any method on top.
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use idlora_adapter::{AdaptedLinear, MethodConfig, MethodKind};
/// use idlora_adapter::IndexSets;
///
/// let device = Device::flex();
/// let base = LinearConfig::new(16, 8).with_bias(false).init(&device);
/// // ID-LoRA with k = 2 clusters of r = 2 rows of the 8 output rows (here: serial selection).
/// let mut cfg = MethodConfig::new(MethodKind::IdLora, 2);
/// cfg.k = 2;
/// let sets = IndexSets::new(vec![vec![0, 1], vec![2, 3]]).unwrap();
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

impl AdaptedLinear {
    /// Wraps `base` (moved, not copied) with the adapter `cfg` describes. `bases` are ID-LoRA's
    /// index sets (chosen by `idlora-cluster`, say), required for ID-LoRA and ignored otherwise. Every base
    /// parameter is frozen except under full fine-tuning. Errors name `name` when the settings do
    /// not fit the layer's shape.
    pub fn new(name: &str, base: Linear, cfg: &MethodConfig, bases: Option<&IndexSets>) -> Result<Self> {
        cfg.validate().map_err(|e| invalid(name, e.to_string()))?;
        let adapter = Adapter::init(name, &base, cfg, bases)?;
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
        self.adapter.as_ref().and_then(Adapter::router).map(|router| route(router, x))
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
        let y = match adapter.update(&self.base, x2, y2) {
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
    /// A base stored in another precision than `x` (a bf16 frozen base) multiplies in its own
    /// dtype, `x` cast to it and the product cast back; the bias stays f32.
    fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut dims = x.dims();
        let n = dims[..D - 1].iter().product::<usize>();
        let mixed = self.base.weight.val().dtype() != x.dtype();
        if x.device().is_autodiff() && !mixed {
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

    /// Folds the adapter into the base weight (LoRA and DoRA). The routed methods depend on `x`
    /// through their router and cannot be merged: that is an error, and so is merging twice.
    pub fn merge(mut self) -> Result<Self> {
        if self.merged {
            return Err(invalid(&self.name, "the adapter is already merged".into()));
        }
        let Some(adapter) = self.adapter.as_mut() else {
            return Err(AdapterError::NotMergeable { method: "FFT", reason: "there is no adapter" });
        };
        self.base.weight = in_f32(&self.base.weight, |w0| adapter.merge(&self.name, w0))?;
        self.merged = true;
        Ok(self)
    }

    /// Undoes [`merge`](Self::merge), restoring the base weight (up to rounding).
    pub fn unmerge(mut self) -> Result<Self> {
        let (true, Some(adapter)) = (self.merged, self.adapter.as_mut()) else {
            return Err(invalid(&self.name, "the adapter is not merged".into()));
        };
        self.base.weight = in_f32(&self.base.weight, |w| adapter.unmerge(&self.name, w))?;
        self.merged = false;
        Ok(self)
    }
}

/// `weight` replaced by `f` of its f32 value, detached and stored back in the weight's own
/// precision (merging computes in f32 whatever the base is stored in).
fn in_f32(
    weight: &Param<Tensor<2>>,
    f: impl FnOnce(Tensor<2>) -> Result<Tensor<2>>,
) -> Result<Param<Tensor<2>>> {
    let stored = weight.val().dtype();
    let new = f(weight.val().cast(FloatDType::F32))?.detach().cast(stored);
    Ok(weight.clone().map(|_| new))
}
