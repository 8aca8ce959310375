//! `y + a b`: how every adapter but DoRA adds its update to the base layer's output.
//!
//! LoRA, HydraLoRA, MoELoRA and ID-LoRA all end in one product with their `B`, whose result has
//! the size of the base output (`[tokens, d_out]`, 29 MB for 512 tokens at `d_out = 14336`).
//! Written as `y + a.matmul(b)`, burn's CPU backend (`flex`, burn 0.22) allocates that product,
//! zero-filling the buffer and then copying it once more to over-align it
//! (`FlexTensor::empty` goes through `Bytes::from_bytes_vec`), and the add is a second pass over
//! it. Measured here for ID-LoRA's product at r = 128, `4096 -> 14336`, 512 tokens: 45-53 ms
//! through burn against 17 ms for the bare gemm call. On `flex` without autodiff,
//! [`add_product`] therefore accumulates the product straight into the base output with one
//! gemm call (`y <- y + a b`) whenever that buffer is owned by nobody else; everywhere else
//! (autodiff, the GPU backends, a shared `y`) it is the plain `y + a.matmul(b)`.
//!
//! [`matmul`] is the other product that burn's CPU backend does poorly: one with a few rows, as
//! every projection and the head are while decoding one token. The gemm crate computes a
//! one-row product as a matrix-vector product on the calling thread alone, whatever parallelism
//! it is given, so decoding streamed all of the model's weights through one core. On `flex`
//! without autodiff, [`matmul`] splits such a product's columns into one block per thread; each
//! block's gemm call reads its own part of the weights.

use burn::tensor::Tensor;

/// `y + a b` for `y: [m, n]`, `a: [m, k]`, `b: [k, n]`; in place into `y`'s buffer where it can.
///
/// ```
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let y = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
/// let a = Tensor::<2>::from_floats([[1.0], [2.0]], &device);
/// let b = Tensor::<2>::from_floats([[10.0, 100.0]], &device);
/// let out = idlora_adapter::product::add_product(y, a, b);
/// out.into_data().assert_eq(&Tensor::<2>::from_floats([[11.0, 102.0], [23.0, 204.0]], &device).into_data(), true);
/// ```
pub fn add_product(y: Tensor<2>, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    let (y, a, b) = match flex::add_product(y, a, b) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    y + a.matmul(b)
}

/// Rows up to which [`matmul`] splits the columns across threads (decoding steps of a few
/// sequences); above it gemm's own parallel blocking is the better split.
pub const FEW_ROWS: usize = 8;

/// `x w` for `x: [m, k]`, `w: [k, n]` (any strides, e.g. a transposed view); with at most
/// [`FEW_ROWS`] rows on burn's CPU backend without autodiff, the columns are computed in one
/// block per thread.
///
/// ```
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
/// let w = Tensor::<2>::from_floats([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0]], &device);
/// let y = idlora_adapter::product::matmul(x, w);
/// y.into_data().assert_eq(&Tensor::<2>::from_floats([[1.0, 2.0, 11.0]], &device).into_data(), true);
/// ```
pub fn matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    let (x, w) = match flex::matmul_few_rows(x, w) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    x.matmul(w)
}

// The `Err`s below hand the caller's own tensors back for the generic path; they live for one
// call, so their size (a burn tensor handle is 256 bytes) does not matter.
#[cfg(feature = "flex")]
#[allow(clippy::result_large_err)]
mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::backend::{BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind};
    use burn::tensor::{DType, Device, Tensor, TensorData};

    /// Below this many multiply-adds one thread does the product (burn-flex's own threshold).
    const PARALLEL_MACS: usize = 192 * 192 * 192;

    /// The flex tensor inside `t`, or `t` back unchanged when it lives elsewhere.
    fn into_flex(t: Tensor<2>) -> Result<FlexTensor, Tensor<2>> {
        match t.into_dispatch() {
            DispatchTensor {
                kind: DispatchTensorKind::Flex(BackendTensor::Float(f)),
                autodiff: DispatchAutodiffContext::Disabled,
            } if f.dtype() == DType::F32 => Ok(f),
            other => Err(Tensor::from_dispatch(other)),
        }
    }

    fn from_flex(t: FlexTensor) -> Tensor<2> {
        Tensor::from_dispatch(DispatchTensor {
            kind: DispatchTensorKind::Flex(BackendTensor::Float(t)),
            autodiff: DispatchAutodiffContext::Disabled,
        })
    }

    /// The flex tensors inside two read-only operands, converted from clones (a reference-count
    /// increment each) so that the originals can go back untouched when a fast path does not
    /// apply.
    fn read_only(a: &Tensor<2>, b: &Tensor<2>) -> Option<(FlexTensor, FlexTensor)> {
        match (into_flex(a.clone()), into_flex(b.clone())) {
            (Ok(fa), Ok(fb)) => Some((fa, fb)),
            _ => None,
        }
    }

    /// `(row stride, column stride, offset)` of a 2-D flex tensor.
    fn strides(t: &FlexTensor) -> (isize, isize, usize) {
        let layout = t.layout();
        let s = layout.strides();
        (s[0], s[1], layout.start_offset())
    }

    type Inputs = (Tensor<2>, Tensor<2>, Tensor<2>);

    /// Below this many weights (`k n`) one thread does the product: handing out the blocks would
    /// cost more than it saves.
    const SPLIT_MIN_WEIGHTS: usize = 64 * 1024;

    /// Column blocks are a multiple of this wide (one AVX-512 register of `f32`).
    const BLOCK_ALIGN: usize = 16;

    /// `Ok(x w)` with the columns split across threads, or `Err` with the inputs untouched.
    pub(super) fn matmul_few_rows(x: Tensor<2>, w: Tensor<2>) -> Result<Tensor<2>, (Tensor<2>, Tensor<2>)> {
        use rayon::prelude::*;

        let device = x.device();
        let ([m, k], [kw, n]) = (x.dims(), w.dims());
        let threads = rayon::current_num_threads();
        if device != Device::flex()
            || device.is_autodiff()
            || w.device() != device
            || kw != k
            || m == 0
            || m > super::FEW_ROWS
            || threads < 2
            || k * n < SPLIT_MIN_WEIGHTS
        {
            return Err((x, w));
        }
        let Some((fx, fw)) = read_only(&x, &w) else {
            return Err((x, w));
        };
        let (x_rs, x_cs, x_off) = strides(&fx);
        let (w_rs, w_cs, w_off) = strides(&fw);
        let x_data: &[f32] = fx.storage();
        let w_data: &[f32] = fw.storage();
        let mut out = vec![0.0f32; m * n];
        let block = n.div_ceil(threads).next_multiple_of(BLOCK_ALIGN);
        // Raw addresses cross to the worker threads as integers; each block writes its own
        // columns of `out` only.
        let (xp, wp, op) = (x_data.as_ptr() as usize, w_data.as_ptr() as usize, out.as_mut_ptr() as usize);
        (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
            let c0 = b * block;
            let cols = block.min(n - c0);
            // SAFETY: `x` and `w` are read through their own offsets and strides, which the flex
            // layouts keep inside their storage for every (row, column) of their shapes; the
            // block reads columns c0 .. c0 + cols of `w`. `out` is m x n row-major and this block
            // writes exactly its columns c0 .. c0 + cols, disjoint from every other block's; `out`
            // outlives the parallel loop and aliases neither input.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    (op as *mut f32).add(c0),
                    1,
                    n as isize,
                    false,
                    (xp as *const f32).add(x_off),
                    x_cs,
                    x_rs,
                    (wp as *const f32).add(w_off).offset(c0 as isize * w_cs),
                    w_cs,
                    w_rs,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
        Ok(Tensor::from_data(TensorData::new(out, [m, n]), &device))
    }

    /// `Ok(y + a b)` computed in place, or `Err` with the inputs untouched when the fast path does
    /// not apply.
    pub(super) fn add_product(y: Tensor<2>, a: Tensor<2>, b: Tensor<2>) -> Result<Tensor<2>, Inputs> {
        let device = y.device();
        let eligible =
            device == Device::flex() && !device.is_autodiff() && a.device() == device && b.device() == device;
        let ([m, n], [ma, k], [kb, nb]) = (y.dims(), a.dims(), b.dims());
        if !eligible || ma != m || kb != k || nb != n {
            return Err((y, a, b));
        }
        // `y` may still turn out not to qualify, so the operands are read through clones.
        let Some((fa, fb)) = read_only(&a, &b) else {
            return Err((y, a, b));
        };
        let mut fy = match into_flex(y) {
            Ok(fy) => fy,
            Err(y) => return Err((y, a, b)),
        };
        let (y_rs, y_cs, y_off) = strides(&fy);
        if y_rs != n as isize || y_cs != 1 {
            return Err((from_flex(fy), a, b));
        }
        let (a_rs, a_cs, a_off) = strides(&fa);
        let (b_rs, b_cs, b_off) = strides(&fb);
        let a_data: &[f32] = fa.storage();
        let b_data: &[f32] = fb.storage();
        // `Some` only while no other tensor shares this buffer, so `a` and `b` cannot alias it.
        let Some(y_data) = fy.try_storage_mut::<f32>() else {
            return Err((from_flex(fy), a, b));
        };
        if m * n > 0 && k > 0 {
            let parallelism = if m * n * k >= PARALLEL_MACS {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: each pointer starts at its tensor's offset inside its storage, and the flex
            // layouts guarantee that every (row, column) reached through the given shapes and
            // strides lies inside that storage. `y` is uniquely owned (checked above) and
            // row-major, so the writes touch exactly its m x n elements and nothing `a` or `b`
            // reads.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    y_data.as_mut_ptr().add(y_off),
                    1,
                    n as isize,
                    true,
                    a_data.as_ptr().add(a_off),
                    a_cs,
                    a_rs,
                    b_data.as_ptr().add(b_off),
                    b_cs,
                    b_rs,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        Ok(from_flex(fy))
    }
}
