//! `x w` for an `f32` input and a weight stored in bf16 or f16 (a half-precision frozen base) on
//! burn's CPU backend, with and without autodiff: [`crate::product::matmul`]'s path for it.
//!
//! The function is the one burn computes for `x.cast(half).matmul(w).cast(f32)`, so every backend
//! computes the same: the input rounded to the weight's dtype, the product accumulated in `f32`,
//! the result rounded to the weight's dtype; the backward is `g -> round(round(g) w^T)` (the
//! weight is frozen: no gradient for it).
//!
//! Why not burn's composition: burn-flex has no half-precision product. Its bf16 matmul makes both
//! operands contiguous (for a tied head read through a transposed view, a copy of the whole
//! embedding), converts both to `f32` whole, and converts the result back, on one thread; the
//! casts around it add an `f32 -> bf16 -> f32` round trip of the output in the forward and of its
//! gradient in the backward. For SmolLM2's tied head at 1024 tokens that is a 113 MB `f32` copy of
//! the embedding next to several `[1024, 49152]` buffers of 100-200 MB, which ate most of what
//! storing the base in bf16 saves (docs/bench-train.md: 6-22% of the base's bytes where 50% is
//! the most). Here the weight is widened to `f32` a panel of columns at a time (at most
//! [`PANEL_VALUES`], [`BACKWARD_PANEL_VALUES`] in the backward) straight into the operand gemm
//! reads, the rounding of the input and output happens in place, and the backward keeps nothing
//! but the weight itself. A product of at most
//! [`crate::product::FEW_ROWS`] rows (a decoding step) takes the streaming kernels instead
//! (`stream::few_rows_half`), which read the weight at two bytes a value.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex,
};
use burn::tensor::{DType, Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::flex::{
    Strided, by_strategy, contiguous, from_plain, from_tracked, gemm, plain, strides, tracked,
};

/// The most `f32` values a widened panel of the weight holds in the forward pass: 16 MiB, so
/// that the transient memory of a product does not grow with the weight, while the panels stay
/// wide enough that gemm's repacking of the input for each of them costs little (with 4 MiB
/// panels LLaMA-3-8B's `4096 x 4096` product at 512 tokens was 1.2x burn's time).
pub(crate) const PANEL_VALUES: usize = 1 << 22;

/// The same for each of the backward's two panels (the weight's and the gradient's columns),
/// 4 MiB: they are alive at the step's peak, and each is packed once, so narrower costs nothing.
pub(crate) const BACKWARD_PANEL_VALUES: usize = 1 << 20;

/// Below this many values a widening or rounding pass runs on the calling thread: waking the
/// pool costs tens of microseconds, more than the pass over a small projection's weight.
const PARALLEL_VALUES: usize = 1 << 18;

/// Values per task of a parallel pass.
const TASK_VALUES: usize = 1 << 16;

/// Panels are a multiple of this many columns wide (one AVX-512 register of `f32`).
const PANEL_ALIGN: usize = 16;

/// The two half-precision storage types.
pub(crate) trait Half: Copy + Send + Sync {
    /// The value in `f32` (exact).
    fn widen(self) -> f32;
    /// `v` rounded to this type (to nearest, ties to even), back in `f32`.
    fn round(v: f32) -> f32;
    /// `dst[i] = src[i].widen()` (same lengths).
    fn widen_slice(src: &[Self], dst: &mut [f32]);
    /// Every value rounded to this type in place.
    fn round_slice(values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = Self::round(*v));
    }
}

impl Half for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn round(v: f32) -> f32 {
        // `bf16::from_f32` bit for bit (to nearest, ties to even; a NaN stays a quiet NaN), but
        // without its branches, so that a pass over a buffer vectorises: half's own was a
        // third of the product's time at SmolLM2's 576-wide projections.
        let b = v.to_bits();
        let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
        let quiet_nan = (b | 0x0040_0000) & 0xffff_0000;
        f32::from_bits(if v.is_nan() { quiet_nan } else { rounded })
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        // A bf16 is the top half of an f32: a shift.
        map_vectorized(src, dst, |s: bf16| f32::from_bits(u32::from(s.to_bits()) << 16));
    }
    fn round_slice(values: &mut [f32]) {
        crate::isa::vectorized(
            #[inline(always)]
            || values.iter_mut().for_each(|v| *v = Self::round(*v)),
        );
    }
}

/// `dst[i] = f(src[i])` (same lengths), compiled for the CPU's vectors: the widening passes are
/// branch-free so that this vectorises.
#[inline(always)]
fn map_vectorized<S: Copy>(src: &[S], dst: &mut [f32], f: impl Fn(S) -> f32) {
    crate::isa::vectorized(
        #[inline(always)]
        || {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f(s);
            }
        },
    );
}

/// An f16's value in f32 from its bits, exactly as `f16::to_f32` (a NaN keeps its payload and
/// becomes quiet), without branches: a pass over a slice vectorises. half's slice conversion
/// made one F16C call per few values and was the decoding step's bottleneck (a 1-token tied head
/// at 0.29x burn's f16 product).
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let exp = em & 0x7c00;
    // Normal: the exponent rebiased from 15 to 127.
    let normal = (em << 13) + ((127 - 15) << 23);
    // Infinity and NaN: the exponent all ones; a NaN's quiet bit set.
    let quiet = if em & 0x03ff != 0 { 0x0040_0000 } else { 0 };
    let special = ((em << 13) + ((255 - 31) << 23)) | quiet;
    // Zero and subnormals: the mantissa times 2^-24, exact in f32.
    let tiny = (em as f32 * f32::from_bits(0x3380_0000)).to_bits();
    let magnitude = if exp == 0x7c00 {
        special
    } else if exp == 0 {
        tiny
    } else {
        normal
    };
    f32::from_bits(sign | magnitude)
}

impl Half for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn round(v: f32) -> f32 {
        f16::from_f32(v).to_f32()
    }
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        map_vectorized(src, dst, |s: f16| f16_bits_to_f32(s.to_bits()));
    }
    fn round_slice(values: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        // Through half's slice conversions (F16C, eight values an instruction) rather than one
        // call per value, a stack buffer at a time.
        let mut buf = [f16::ZERO; 256];
        for chunk in values.chunks_mut(buf.len()) {
            let b = &mut buf[..chunk.len()];
            b.convert_from_f32_slice(chunk);
            b.convert_to_f32_slice(chunk);
        }
    }
}

/// A `[k, n]` weight read through its layout: `w[p, j]` at `data[off + p rs + j cs]`.
#[derive(Clone, Copy)]
struct WeightView<'a, H> {
    data: &'a [H],
    k: usize,
    n: usize,
    rs: usize,
    cs: usize,
    off: usize,
}

impl<'a, H: Half> WeightView<'a, H> {
    /// The view, or `None` where a stride is negative or an element lies outside `data`.
    fn new(data: &'a [H], (k, n): (usize, usize), (rs, cs): (isize, isize), off: usize) -> Option<Self> {
        let (rs, cs) = (usize::try_from(rs).ok()?, usize::try_from(cs).ok()?);
        let last = off
            .checked_add((k.checked_sub(1)?).checked_mul(rs)?)?
            .checked_add((n.checked_sub(1)?).checked_mul(cs)?)?;
        (last < data.len()).then_some(Self { data, k, n, rs, cs, off })
    }

    /// Columns `j0 .. j0 + cols` widened into `panel` (`k cols` values); returns the panel's
    /// `(row stride, column stride)`: the weight's contiguous direction stays contiguous.
    fn widen_columns(&self, j0: usize, cols: usize, panel: &mut [f32]) -> (usize, usize) {
        let (k, w) = (self.k, *self);
        let panel = &mut panel[..k * cols];
        if w.cs == 1 {
            // Rows of the weight contiguous (an untransposed projection): the panel is row-major.
            for_rows(panel, cols, |p, row| H::widen_slice(&w.data[w.off + p * w.rs + j0..][..cols], row));
            (cols, 1)
        } else if w.rs == 1 {
            // Columns contiguous (a tied embedding read as `E^T`): the panel is column-major.
            for_rows(panel, k, |j, col| H::widen_slice(&w.data[w.off + (j0 + j) * w.cs..][..k], col));
            (1, k)
        } else {
            for_rows(panel, cols, |p, row| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = w.data[w.off + p * w.rs + (j0 + j) * w.cs].widen();
                }
            });
            (cols, 1)
        }
    }
}

/// `f(i, row)` for each `width`-long row `i` of `values`, on several threads only where there
/// is enough work for them.
fn for_rows(values: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let width = width.max(1);
    if values.len() < PARALLEL_VALUES {
        values.chunks_mut(width).enumerate().for_each(|(i, row)| f(i, row));
    } else {
        let min_len = (TASK_VALUES / width).max(1);
        values.par_chunks_mut(width).with_min_len(min_len).enumerate().for_each(|(i, row)| f(i, row));
    }
}

/// Columns per panel of at most `budget` values with `depth` values per column: a multiple of
/// [`PANEL_ALIGN`], at least one block, at most `n`.
fn panel_width(budget: usize, depth: usize, n: usize) -> usize {
    let fit = (budget / depth.max(1)) / PANEL_ALIGN * PANEL_ALIGN;
    fit.max(PANEL_ALIGN).min(n.max(1))
}

/// Every value rounded to `H` in place, rows of `width` in parallel.
fn round_in_place<H: Half>(values: &mut [f32], width: usize) {
    for_rows(values, width, |_, row| H::round_slice(row));
}

/// `round(round(x) w)` for `x: [m, k]` contiguous row-major, as a fresh row-major `[m, n]`.
fn forward<H: Half>(x: &[f32], m: usize, w: &WeightView<'_, H>) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let mut xr = x[..m * k].to_vec();
    round_in_place::<H>(&mut xr, k);
    let mut out = vec![0.0f32; m * n];
    // A few rows (a decoding step): the streaming kernels, which read the weight once at two
    // bytes a value, widening it in cache.
    if m <= crate::product::FEW_ROWS
        && let Some(layout) = crate::stream::Layout::of((k, n), w.rs as isize, w.cs as isize)
        && crate::stream::few_rows_half(
            (m, k, n),
            &xr,
            &w.data[w.off..],
            layout,
            &mut out,
            rayon::current_num_threads(),
        )
    {
        round_in_place::<H>(&mut out, n);
        return out;
    }
    let width = panel_width(PANEL_VALUES, k, n);
    let mut panel = vec![0.0f32; k * width];
    for j0 in (0..n).step_by(width) {
        let cols = width.min(n - j0);
        let (prs, pcs) = w.widen_columns(j0, cols, &mut panel);
        // SAFETY: `out` is m x n row-major and this call writes its columns j0 .. j0 + cols; `xr`
        // is m x k row-major and `panel` holds the k x cols panel with the strides just returned;
        // the three buffers are distinct allocations.
        unsafe {
            let a = Strided { ptr: xr.as_ptr(), rs: k as isize, cs: 1 };
            let b = Strided { ptr: panel.as_ptr(), rs: prs as isize, cs: pcs as isize };
            gemm(out.as_mut_ptr().add(j0), n, (m, cols, k), a, b, false, true);
        }
    }
    round_in_place::<H>(&mut out, n);
    out
}

/// `round(round(g) w^T)` for `g: [m, n]` contiguous row-major, as a fresh row-major `[m, k]`
/// (the input's gradient): the reduction over `n` runs a panel of columns at a time, each
/// panel's rounded gradient columns copied out beside it and the partial products accumulated
/// in `f32`.
fn backward<H: Half>(g: &[f32], m: usize, w: &WeightView<'_, H>) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let mut gx = vec![0.0f32; m * k];
    let width = panel_width(BACKWARD_PANEL_VALUES, k.max(m), n);
    let mut panel = vec![0.0f32; k * width];
    let mut g_panel = vec![0.0f32; m * width];
    for (i, j0) in (0..n).step_by(width).enumerate() {
        let cols = width.min(n - j0);
        let (prs, pcs) = w.widen_columns(j0, cols, &mut panel);
        for_rows(&mut g_panel[..m * cols], cols, |r, row| {
            row.copy_from_slice(&g[r * n + j0..][..cols]);
            H::round_slice(row);
        });
        // SAFETY: `gx` is m x k row-major; `g_panel` holds m x cols row-major; the panel read as
        // its transpose (`cols x k`: row stride `pcs`, column stride `prs`) holds w[:, j0 .. j0 +
        // cols]; the three buffers are distinct allocations.
        unsafe {
            let a = Strided { ptr: g_panel.as_ptr(), rs: cols as isize, cs: 1 };
            let b = Strided { ptr: panel.as_ptr(), rs: pcs as isize, cs: prs as isize };
            gemm(gx.as_mut_ptr(), k, (m, k, cols), a, b, i > 0, true);
        }
    }
    round_in_place::<H>(&mut gx, k);
    gx
}

/// The flex tensor of a frozen half-precision weight, with or without autodiff (a tracked weight
/// would need its own gradient, which this operation does not give: `None`).
fn frozen_half(t: &DispatchTensor) -> Option<&FlexTensor> {
    let flex = match (&t.kind, t.autodiff) {
        (DispatchTensorKind::Flex(BackendTensor::Float(f)), DispatchAutodiffContext::Disabled) => f,
        (DispatchTensorKind::Autodiff(inner), DispatchAutodiffContext::Enabled(_)) => match inner.as_ref() {
            DispatchTensorKind::Flex(BackendTensor::Autodiff(a)) if !a.is_tracked() => a.primitive(),
            _ => return None,
        },
        _ => return None,
    };
    matches!(flex.dtype(), DType::BF16 | DType::F16).then_some(flex)
}

/// A [`frozen_half`] weight as a [`WeightView`] of its half type.
enum HalfView<'a> {
    Bf16(WeightView<'a, bf16>),
    F16(WeightView<'a, f16>),
}

impl<'a> HalfView<'a> {
    /// The view of `w: [k, n]`, `None` where its dtype is not a half type or its layout does not
    /// fit [`WeightView`].
    fn of(w: &'a FlexTensor, (k, n): (usize, usize)) -> Option<Self> {
        let (rs, cs, off) = strides(w);
        match w.dtype() {
            DType::BF16 => WeightView::new(w.storage::<bf16>(), (k, n), (rs, cs), off).map(HalfView::Bf16),
            DType::F16 => WeightView::new(w.storage::<f16>(), (k, n), (rs, cs), off).map(HalfView::F16),
            _ => None,
        }
    }

    fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        match self {
            HalfView::Bf16(w) => forward(x, m, w),
            HalfView::F16(w) => forward(x, m, w),
        }
    }

    fn backward(&self, g: &[f32], m: usize) -> Vec<f32> {
        match self {
            HalfView::Bf16(w) => backward(g, m, w),
            HalfView::F16(w) => backward(g, m, w),
        }
    }
}

/// `Ok(round(round(x) w))` for an `f32` flex `x: [m, k]` (with or without autodiff) and a frozen
/// bf16 / f16 flex `w: [k, n]`, or `Err` with both inputs untouched.
#[allow(clippy::result_large_err)] // the `Err` hands the caller's own tensors back, once
pub(crate) fn matmul(x: Tensor<2>, w: Tensor<2>) -> Result<Tensor<2>, (Tensor<2>, Tensor<2>)> {
    let ([m, k], [kw, n]) = (x.dims(), w.dims());
    if kw != k || m == 0 || k == 0 || n == 0 || x.device() != w.device() {
        return Err((x, w));
    }
    let w_dispatch = w.clone().into_dispatch();
    let Some(fw) = frozen_half(&w_dispatch) else {
        return Err((x, w));
    };
    let x_dispatch = x.into_dispatch();
    let context = x_dispatch.autodiff;
    let fx = match context {
        DispatchAutodiffContext::Disabled => plain(&x_dispatch),
        DispatchAutodiffContext::Enabled(_) => tracked(&x_dispatch).map(|t| t.primitive()),
    };
    let Some(fx) = fx else {
        return Err((Tensor::from_dispatch(x_dispatch), w));
    };
    let xc = contiguous(fx);
    let Some(out) = xc.as_slice::<f32>().and_then(|xs| Some(HalfView::of(fw, (k, n))?.forward(xs, m))) else {
        return Err((Tensor::from_dispatch(x_dispatch), w));
    };
    let out = FlexTensor::from_data(TensorData::new(out, [m, n]));
    match tracked(&x_dispatch) {
        Some(t) => match by_strategy!(context, op(t, fw.clone(), out)) {
            Some(tracked_out) => Ok(from_tracked(tracked_out, context)),
            None => Err((Tensor::from_dispatch(x_dispatch), w)),
        },
        None => Ok(from_plain(out)),
    }
}

/// Registers the backward of the product for `x` (the weight has none).
fn op<C: CheckpointStrategy>(
    x: &FloatTensor<Autodiff<Flex, C>>,
    w: FlexTensor,
    out: FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>> {
    match HalfProduct.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(w, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

#[derive(Debug)]
struct HalfProduct;

impl Backward<Flex, 1> for HalfProduct {
    /// The weight (a reference-counted handle, no copy).
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let w = ops.state;
        let [k, n] = [w.layout().shape()[0], w.layout().shape()[1]];
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let m = grad.layout().shape()[0];
            // The output was f32, so is its gradient; a contiguous copy only if it is a view.
            let g = if grad.dtype() == DType::F32 {
                contiguous(&grad)
            } else {
                FlexTensor::from_data(grad.into_data().convert::<f32>())
            };
            let gx = g
                .as_slice::<f32>()
                .and_then(|gs| Some(HalfView::of(&w, (k, n))?.backward(gs, m)))
                .expect("the weight's layout was accepted in the forward pass");
            FlexTensor::from_data(TensorData::new(gx, [m, k]))
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, FloatDType, Tensor};

    use super::*;
    use crate::flex::testing::values;

    /// Within one bf16 / f16 rounding step: both sides round their result to the half type, and
    /// a different summation order can move a value across a rounding boundary. The floor is for
    /// sums that cancel to near zero: the terms are of order 1, and an `f32` sum of thousands of
    /// them is off by up to about 1e-5 whatever the result.
    fn within_one_step(a: &[f32], b: &[f32], ulp: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let mut moved = 0;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = (x - y).abs();
            assert!(d <= ulp * y.abs() + 1e-4, "{what} [{i}]: {x} vs {y}");
            if d > 1e-7 * y.abs() {
                moved += 1;
            }
        }
        assert!(moved * 50 <= a.len(), "{what}: {moved} of {} values differ", a.len());
    }

    /// A value rounded to a half type, back in `f32`.
    type Rounding = fn(f32) -> f32;

    /// `(round(round(x) w), round(round(g) w^T))` in `f64`: the function, independently.
    fn reference(
        x: &[f32],
        g: &[f32],
        w: &[f32],
        (m, k, n): (usize, usize, usize),
        round: fn(f32) -> f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut y = vec![0.0f32; m * n];
        let mut gx = vec![0.0f32; m * k];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| f64::from(round(x[i * k + p])) * f64::from(w[p * n + j])).sum();
                y[i * n + j] = round(dot as f32);
            }
            for p in 0..k {
                let dot: f64 = (0..n).map(|j| f64::from(round(g[i * n + j])) * f64::from(w[p * n + j])).sum();
                gx[i * k + p] = round(dot as f32);
            }
        }
        (y, gx)
    }

    /// Forward and the input's gradient against the function computed in `f64` and against
    /// burn's composition `x.cast(h).matmul(w).cast(f32)`, for both half types, a row-major
    /// weight and a transposed (column-major) one, panels narrower than the weight (so the panel
    /// loop and the backward's accumulation both run), under autodiff and without.
    #[test]
    fn half_weight_product_is_burns_cast_composition() {
        let device = Device::flex().autodiff();
        device.seed(3);
        // k = 1100, n = 4000: forward panels of 3808 columns (two, the second partial), backward
        // panels of 944 (five): the panel loops and the backward's accumulation all run.
        for m in [37, 3] {
            product_matches(&device, (m, 1100, 4000));
        }
    }

    /// [`half_weight_product_is_burns_cast_composition`] at one shape: `m` up to
    /// [`crate::product::FEW_ROWS`] takes the streaming kernels in the forward pass, more rows the
    /// panels.
    fn product_matches(device: &Device, (m, k, n): (usize, usize, usize)) {
        let device = device.clone();
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
        let (xs, gs) = (values(x.clone()), values(g.clone()));
        // One rounding step of each type. burn-flex's bf16 product is an f32 gemm on converted
        // operands, the same function; its f16 product is gemm's f16 kernel, which at k = 4000
        // lands several f16 steps from the f32-accumulated value (the test saw 7): there the
        // check is that this path is the nearer of the two to the exact function.
        let types: [(FloatDType, f32, Rounding); 2] = [
            (FloatDType::BF16, 1.0 / 128.0, |v| bf16::from_f32(v).to_f32()),
            (FloatDType::F16, 1.0 / 1024.0, |v| f16::from_f32(v).to_f32()),
        ];
        for (dtype, ulp, round) in types {
            for transposed in [false, true] {
                // The weight cast first and then viewed transposed, as a tied head reads its
                // half-precision embedding.
                let shape = if transposed { [n, k] } else { [k, n] };
                let src = Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.1), &device);
                let view = |t: Tensor<2>| if transposed { t.transpose() } else { t };
                let w = view(src.clone().cast(dtype));
                let what = format!("{dtype:?}, transposed {transposed}, {m} rows");
                let run = |fast: bool| {
                    let x = x.clone().require_grad();
                    let y = if fast {
                        matmul(x.clone(), w.clone())
                            .unwrap_or_else(|_| panic!("{what}: the half path applies"))
                    } else {
                        x.clone().cast(dtype).matmul(w.clone()).cast(FloatDType::F32)
                    };
                    assert_eq!(y.dtype(), DType::F32);
                    let grads = (y.clone() * g.clone()).sum().backward();
                    (values(y), values(x.grad(&grads).expect("x's gradient")))
                };
                let ((y, gx), (y_burn, gx_burn)) = (run(true), run(false));
                let (y_ref, gx_ref) =
                    reference(&xs, &gs, &values(w.clone().cast(FloatDType::F32)), (m, k, n), round);
                within_one_step(&y, &y_ref, ulp, &format!("{what}: output"));
                within_one_step(&gx, &gx_ref, ulp, &format!("{what}: input gradient"));
                if dtype == FloatDType::BF16 {
                    within_one_step(&y_burn, &y, ulp, &format!("{what}: burn's output"));
                    within_one_step(&gx_burn, &gx, ulp, &format!("{what}: burn's input gradient"));
                } else {
                    let total_err = |a: &[f32], b: &[f32]| {
                        a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum::<f64>()
                    };
                    assert!(
                        total_err(&y, &y_ref) <= total_err(&y_burn, &y_ref),
                        "{what}: output nearer the exact function"
                    );
                    assert!(
                        total_err(&gx, &gx_ref) <= total_err(&gx_burn, &gx_ref),
                        "{what}: gradient nearer the exact function"
                    );
                }
                // Without autodiff: the same values.
                let plain_x = Tensor::<2>::from_data(x.to_data(), &Device::flex());
                let plain_w = view(Tensor::<2>::from_data(src.to_data(), &Device::flex()).cast(dtype));
                let y_plain = matmul(plain_x, plain_w)
                    .unwrap_or_else(|_| panic!("{what}: the half path applies without autodiff"));
                assert_eq!(values(y_plain), y, "{what}: the same values without autodiff");
            }
        }
    }

    /// The rounding is real: the result differs from the `f32` product of the widened weight,
    /// by no more than the half type's rounding of the input and output can explain.
    #[test]
    fn half_weight_product_rounds_like_the_half_type() {
        let device = Device::flex();
        device.seed(5);
        let x = Tensor::<2>::random([8, 64], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([64, 48], Distribution::Normal(0.0, 1.0), &device).cast(FloatDType::BF16);
        let exact = values(x.clone().matmul(w.clone().cast(FloatDType::F32)));
        let y = values(matmul(x, w).unwrap_or_else(|_| panic!("the half path applies")));
        assert!(y.iter().all(|v| bf16::from_f32(*v).to_f32() == *v), "outputs are bf16 values");
        let worst = y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst > 0.0, "rounding the input changes the product");
        assert!(worst < 0.6, "within bf16's rounding of 64 products: {worst}");
    }

    /// The branch-free bf16 rounding is half's `bf16::from_f32`, bit for bit: ties, carries into
    /// the exponent, overflow to infinity, subnormals, signed zeros, infinities and NaNs.
    #[test]
    fn bf16_rounding_is_halfs() {
        let mut bits: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x0000_8000,
            0x0001_8000,
            0x0000_8001,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_7fff,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x0000_0001,
            0x007f_ffff,
            0x3fff_ffff,
        ];
        // And a spread of ordinary values.
        let mut z = 0x1234_5678_9abc_def0u64;
        for _ in 0..100_000 {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            bits.push((z >> 32) as u32);
        }
        for b in bits {
            let v = f32::from_bits(b);
            let ours = <bf16 as Half>::round(v);
            let theirs = bf16::from_f32(v).to_f32();
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{b:#010x}: {ours} vs {theirs}");
        }
    }

    /// The branch-free f16 widening is half's `f16::to_f32` on every one of the 65 536 values.
    #[test]
    fn f16_widening_is_halfs_for_every_value() {
        for h in 0..=u16::MAX {
            let ours = f16_bits_to_f32(h);
            let theirs = f16::from_bits(h).to_f32();
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}: {ours} vs {theirs}");
        }
        let src: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut dst = vec![0.0f32; src.len()];
        <f16 as Half>::widen_slice(&src, &mut dst);
        assert!(dst.iter().zip(&src).all(|(d, s)| d.to_bits() == s.to_f32().to_bits()), "the slice pass");
    }

    /// f16's slice rounding is its per-value one (`f16::from_f32`), across the buffer's chunks.
    #[test]
    fn f16_slice_rounding_is_per_value_rounding() {
        let values: Vec<f32> = (0..1000)
            .map(|i| (i as f32 - 500.0) * 0.37 + 1e-4 * (i as f32).sin())
            .chain([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 70000.0, 1e-8, -0.0])
            .collect();
        let mut rounded = values.clone();
        <f16 as Half>::round_slice(&mut rounded);
        for (v, r) in values.iter().zip(&rounded) {
            let want = f16::from_f32(*v).to_f32();
            assert!(r.to_bits() == want.to_bits() || (r.is_nan() && want.is_nan()), "{v}: {r} vs {want}");
        }
    }

    #[test]
    fn other_inputs_go_back_untouched() {
        let device = Device::flex();
        let x = Tensor::<2>::ones([2, 3], &device);
        // An f32 weight is not this path's.
        assert!(matmul(x.clone(), Tensor::<2>::ones([3, 4], &device)).is_err());
        // Shapes that do not chain.
        assert!(matmul(x.clone(), Tensor::<2>::ones([4, 4], &device).cast(FloatDType::BF16)).is_err());
        // A weight that trains needs its own gradient: burn's composition gives it.
        let ad = Device::flex().autodiff();
        let w = Tensor::<2>::ones([3, 4], &ad).cast(FloatDType::BF16).require_grad();
        assert!(matmul(Tensor::<2>::ones([2, 3], &ad), w).is_err());
        // Panels: the whole weight when it is small, one aligned block when a column alone fills one.
        assert_eq!(panel_width(PANEL_VALUES, 3, 4), 4);
        assert_eq!(panel_width(PANEL_VALUES, 1100, 4000), 3808);
        assert_eq!(panel_width(BACKWARD_PANEL_VALUES, 1100, 4000), 944);
        assert_eq!(panel_width(BACKWARD_PANEL_VALUES, 1 << 20, 1 << 20), PANEL_ALIGN);
    }
}
