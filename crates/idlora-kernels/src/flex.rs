//! What every fused operation on burn's CPU backend (`flex`) does around its kernel: take the
//! flex tensor out of a burn [`Tensor`] (with or without autodiff), read it as a slice, and wrap
//! the result back. One copy for [`crate::product`], [`crate::swiglu`],
//! [`crate::causal_attention`] and [`crate::cross_entropy`], so that a burn upgrade that moves
//! the dispatch types touches this file alone.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex,
};
use burn::tensor::{DType, Tensor, TensorData};

/// A flex tensor under autodiff (the same type whatever the checkpointing strategy).
pub(crate) type Tracked = FloatTensor<Autodiff<Flex>>;

/// Whether `t` is an `f32`, contiguous flex tensor: what the fused kernels read as a slice.
pub(crate) fn usable(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32 && t.is_contiguous()
}

/// The values of a [`usable`] tensor (empty for any other).
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().unwrap_or(&[])
}

/// `t` itself when it is the only owner of its buffer and starts at its beginning, else a copy:
/// either way a tensor whose storage can be written from index 0.
pub(crate) fn owned(t: FlexTensor) -> FlexTensor {
    if t.is_unique() && t.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0) {
        t
    } else {
        let shape = t.layout().shape().clone();
        FlexTensor::from_data(TensorData::new(values(&contiguous(&t)).to_vec(), shape))
    }
}

/// A contiguous copy of `t` unless it already is contiguous (then a reference-count increment).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() { t.clone() } else { t.to_contiguous() }
}

/// A gemm operand: the address of element `(0, 0)` and the row and column strides, in elements.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

/// Below this many multiply-adds one thread does a product (burn-flex's own threshold).
pub(crate) const PARALLEL_MACS: usize = 192 * 192 * 192;

/// `dst (+)= a b` for `a: [m, k]`, `b: [k, n]` and `dst` row-major with row stride `dst_rs`:
/// overwritten unless `accumulate`; on rayon's pool above [`PARALLEL_MACS`] when `pool` (a
/// caller that splits the work over threads itself passes `false`). The one place the crate
/// spells out gemm's nineteen arguments.
///
/// # Safety
/// `a` and `b` must address every element of their shapes; `dst` must be valid for writes (and
/// reads when accumulating) of `m` rows of `n` at stride `dst_rs`, and alias neither operand.
pub(crate) unsafe fn gemm(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: Strided,
    b: Strided,
    accumulate: bool,
    pool: bool,
) {
    if m * n == 0 {
        return;
    }
    let parallelism = if pool && m * n * k >= PARALLEL_MACS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `(row stride, column stride, offset)` of a 2-D flex tensor.
pub(crate) fn strides(t: &FlexTensor) -> (isize, isize, usize) {
    let layout = t.layout();
    let s = layout.strides();
    (s[0], s[1], layout.start_offset())
}

/// The `f32` flex tensor of a dispatch tensor without autodiff.
pub(crate) fn plain(t: &DispatchTensor) -> Option<&FlexTensor> {
    match (&t.kind, t.autodiff) {
        (DispatchTensorKind::Flex(BackendTensor::Float(f)), DispatchAutodiffContext::Disabled)
            if f.dtype() == DType::F32 =>
        {
            Some(f)
        }
        _ => None,
    }
}

/// The `f32` flex tensor of a dispatch tensor under autodiff.
pub(crate) fn tracked(t: &DispatchTensor) -> Option<&Tracked> {
    match (&t.kind, t.autodiff) {
        (DispatchTensorKind::Autodiff(inner), DispatchAutodiffContext::Enabled(_)) => match inner.as_ref() {
            DispatchTensorKind::Flex(BackendTensor::Autodiff(a)) if a.primitive().dtype() == DType::F32 => {
                Some(a)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The `f32` flex tensor inside `t` when it has no autodiff, or `t` back unchanged.
#[allow(clippy::result_large_err)] // the `Err` hands the caller's own tensor back, once
pub(crate) fn into_plain<const D: usize>(t: Tensor<D>) -> Result<FlexTensor, Tensor<D>> {
    let dispatch = t.into_dispatch();
    match plain(&dispatch) {
        Some(f) => Ok(f.clone()),
        None => Err(Tensor::from_dispatch(dispatch)),
    }
}

/// A burn tensor (no autodiff) holding `t`.
pub(crate) fn from_plain<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Flex(BackendTensor::Float(t)),
        autodiff: DispatchAutodiffContext::Disabled,
    })
}

/// A burn tensor under the autodiff `context` holding `t`.
pub(crate) fn from_tracked<const D: usize>(t: Tracked, context: DispatchAutodiffContext) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(DispatchTensorKind::Flex(BackendTensor::Autodiff(t)))),
        autodiff: context,
    })
}

/// `$run::<C>(args)` for the checkpointing strategy `C` of an autodiff context, `None` without
/// autodiff: each fused operation registers its backward for the strategy the graph uses.
macro_rules! by_strategy {
    ($context:expr, $run:ident ( $($arg:expr),* $(,)? )) => {{
        use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
        use burn::backend::{DispatchAutodiffContext, GradientCheckpointingStrategy};
        match $context {
            DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Disabled) => {
                Some($run::<NoCheckpointing>($($arg),*))
            }
            DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Balanced) => {
                Some($run::<BalancedCheckpointing>($($arg),*))
            }
            DispatchAutodiffContext::Disabled => None,
        }
    }};
}
pub(crate) use by_strategy;

#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::Tensor;

    /// A tensor's values (f32).
    pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().expect("f32 tensor")
    }

    /// Asserts `|a - b| <= abs + rel |b|` element by element, naming `what` and the index.
    pub(crate) fn close_within(a: &[f32], b: &[f32], (abs, rel): (f32, f32), what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= abs + rel * y.abs(), "{what} [{i}]: {x} vs {y}");
        }
    }
}
