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
//! it is given, so decoding streamed all of the model's weights through one core; split by
//! columns across threads it still read only 10-12 GB/s on SmolLM2's 576-wide projections, each
//! thread reading a short piece of every weight row (two threads here read 20 GB/s). On `flex`
//! without autodiff, [`matmul`] hands a product of at most [`FEW_ROWS`] rows to the streaming
//! kernels of [`crate::stream`] (AVX-512F), in which each thread reads one contiguous part of the
//! weight: 15-19 GB/s on the same projections, decoding 1.16x faster (docs/bench-lm.md); gemm's
//! per-block products remain the path on other CPUs. More rows go to gemm straight into a
//! fresh vector, without the zero-filled, re-aligned copy of burn's own matmul output.

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
/// let out = idlora_kernels::product::add_product(y, a, b);
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

/// Rows up to which [`matmul`] streams the weight across threads (decoding steps of a few
/// sequences); above it gemm's own parallel blocking is the better split.
pub const FEW_ROWS: usize = 8;

/// `x w` for `x: [m, k]`, `w: [k, n]` (any strides, e.g. a transposed view). On burn's CPU
/// backend without autodiff: at most [`FEW_ROWS`] rows stream the weight across the threads,
/// more rows are one gemm call into a fresh buffer; elsewhere it is `x.matmul(w)`. Where `w` is
/// stored in another float dtype than `x` (a bf16 / f16 frozen base), the product is that of `x`
/// cast to `w`'s dtype, returned in `x`'s: on burn's CPU backend, with or without autodiff, by a
/// path that widens a frozen half weight to `f32` a panel at a time instead of whole.
///
/// ```
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let x = Tensor::<2>::from_floats([[1.0, 2.0]], &device);
/// let w = Tensor::<2>::from_floats([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0]], &device);
/// let y = idlora_kernels::product::matmul(x, w);
/// y.into_data().assert_eq(&Tensor::<2>::from_floats([[1.0, 2.0, 11.0]], &device).into_data(), true);
/// ```
pub fn matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    // A weight stored in another precision (a bf16 frozen base): the product in the weight's
    // dtype, the input cast to it and the result cast back to the input's (burn's `cast` is
    // differentiable, so this holds under autodiff too).
    let (x_dtype, w_dtype) = (x.dtype(), w.dtype());
    if x_dtype != w_dtype {
        // On burn's CPU backend the same function without burn-flex's whole-weight conversions
        // (`half_weight`: the weight widened a panel at a time, no round trip of the output).
        #[cfg(feature = "flex")]
        let (x, w) = match crate::half_weight::matmul(x, w) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        };
        return matmul(x.cast(w_dtype), w).cast(x_dtype);
    }
    #[cfg(feature = "flex")]
    let (x, w) = match flex::matmul_few_rows(x, w) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    #[cfg(feature = "flex")]
    let (x, w) = match flex::matmul_fresh_output(x, w) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    x.matmul(w)
}

/// What [`idlora_lhs`] needs of an ID-LoRA layer besides its tensors.
#[derive(Debug, Clone, Copy)]
pub struct IdLoraLhs<'a> {
    /// `S_1 .. S_k` flattened, cluster-major (`k r` output columns of the base layer).
    pub indices: &'a [i32],
    /// Clusters.
    pub k: usize,
    /// Rows per cluster.
    pub r: usize,
    /// `alpha / r`.
    pub scale: f32,
    /// The sum form (Eq. 3, `[n, r]`) instead of the stacked one (`[n, k r]`).
    pub sum_form: bool,
}

/// ID-LoRA's left factor in one pass per token, on `flex` without autodiff: the router's logits
/// `x W_g`, their softmax, and the gathered bases `(y0 - b)[S]` scaled by `scale w_i(x)`,
/// stacked cluster-major (`[n, k r]`) or summed over clusters (`[n, r]`). `None` where it does
/// not apply (another backend, autodiff, non-contiguous rows); the caller then composes the
/// same from burn operations.
///
/// Written out because burn's way costs more than the product it feeds at large `d_in`: a
/// skinny `[n, d_in] x [d_in, k]` gemm call (a pass over `x` for `k` = 4 columns), a `select`
/// on the base output and two broadcast multiplies, each with its own output buffer (measured
/// at `4096 -> 14336`, r = 128, 512 tokens: 0.85 ms for the router product and 1.6 ms for the
/// select, next to about 10 ms for the product with `B`).
pub fn idlora_lhs(
    x: &Tensor<2>,
    y0: &Tensor<2>,
    router: &Tensor<2>,
    bias: Option<Tensor<2>>,
    spec: &IdLoraLhs<'_>,
) -> Option<Tensor<2>> {
    #[cfg(feature = "flex")]
    {
        flex::idlora_lhs(x, y0, router, bias, spec)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, y0, router, bias, spec);
        None
    }
}

// The `Err`s below hand the caller's own tensors back for the generic path; they live for one
// call, so their size (a burn tensor handle is 256 bytes) does not matter.
#[cfg(feature = "flex")]
#[allow(clippy::result_large_err)]
mod flex {
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::flex::{Strided, from_plain as from_flex, gemm, into_plain as into_flex, strides};

    /// The flex tensors inside two read-only operands, converted from clones (a reference-count
    /// increment each) so that the originals can go back untouched when a fast path does not
    /// apply.
    fn read_only(a: &Tensor<2>, b: &Tensor<2>) -> Option<(FlexTensor, FlexTensor)> {
        match (into_flex(a.clone()), into_flex(b.clone())) {
            (Ok(fa), Ok(fb)) => Some((fa, fb)),
            _ => None,
        }
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
        // The streaming kernels first (each thread reads one contiguous part of the weight),
        // given unit strides along one of the weight's dimensions; gemm's per-block
        // matrix-vector products otherwise.
        let layout = crate::stream::Layout::of((k, n), w_rs, w_cs);
        // x is at most FEW_ROWS rows: a contiguous copy costs nothing next to the weights.
        let x_contiguous = || -> Option<Vec<f32>> {
            (0..m * k)
                .map(|idx| {
                    let at = x_off as isize + (idx / k) as isize * x_rs + (idx % k) as isize * x_cs;
                    usize::try_from(at).ok().and_then(|at| x_data.get(at).copied())
                })
                .collect()
        };
        if let Some(layout) = layout
            && let Some(w_view) = w_data.get(w_off..)
            && let Some(xc) = x_contiguous()
            && crate::stream::few_rows((m, k, n), &xc, w_view, layout, &mut out, threads)
        {
            return Ok(Tensor::from_data(TensorData::new(out, [m, n]), &device));
        }
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
                let a = Strided { ptr: (xp as *const f32).add(x_off), rs: x_rs, cs: x_cs };
                let b = Strided {
                    ptr: (wp as *const f32).add(w_off).offset(c0 as isize * w_cs),
                    rs: w_rs,
                    cs: w_cs,
                };
                gemm((op as *mut f32).add(c0), n, (m, cols, k), a, b, false, false);
            }
        });
        Ok(Tensor::from_data(TensorData::new(out, [m, n]), &device))
    }

    /// `dst (+)= a b` for `a: [m, k]`, `b: [k, n]` read through their flex layouts, `dst` row-major
    /// with row stride `n`; overwritten unless `accumulate`. Threads above
    /// [`crate::flex::PARALLEL_MACS`].
    ///
    /// # Safety
    /// `dst` must be valid for writes (and reads when accumulating) of `m n` elements and alias
    /// neither operand; `a` and `b` must have the shapes given.
    unsafe fn gemm_into(
        dst: *mut f32,
        (m, n, k): (usize, usize, usize),
        a: &FlexTensor,
        b: &FlexTensor,
        accumulate: bool,
    ) {
        if m * n == 0 || k == 0 {
            return;
        }
        let ((a_rs, a_cs, a_off), (b_rs, b_cs, b_off)) = (strides(a), strides(b));
        let (a_data, b_data): (&[f32], &[f32]) = (a.storage(), b.storage());
        // SAFETY: each operand pointer starts at its tensor's offset inside its storage, and the
        // flex layouts keep every (row, column) of the given shapes inside that storage; `dst` is
        // the caller's promise.
        unsafe {
            let a = Strided { ptr: a_data.as_ptr().add(a_off), rs: a_rs, cs: a_cs };
            let b = Strided { ptr: b_data.as_ptr().add(b_off), rs: b_rs, cs: b_cs };
            gemm(dst, n, (m, n, k), a, b, accumulate, true);
        }
    }

    /// `Ok(x w)` by one gemm call into a fresh vector, or `Err` with the inputs untouched off
    /// `flex` or under autodiff.
    ///
    /// This is the very call burn-flex makes for a 2-D matmul; the difference is the output.
    /// burn-flex allocates it as zeroed bytes and then copies it once more to over-align it
    /// (`Bytes::from_bytes_vec`); a `Vec<f32>` handed over through `TensorData::new` keeps its
    /// allocation. Measured side by side (`cargo xtask bench products`, docs/bench-lm.md): 0.94-1.30x
    /// at SmolLM2's and LLaMA-3-8B's shapes, 1.13-1.65x for ID-LoRA's `[2048, 128] x [128, 3584]`.
    pub(super) fn matmul_fresh_output(
        x: Tensor<2>,
        w: Tensor<2>,
    ) -> Result<Tensor<2>, (Tensor<2>, Tensor<2>)> {
        let device = x.device();
        let ([m, k], [kw, n]) = (x.dims(), w.dims());
        if device != Device::flex() || device.is_autodiff() || w.device() != device || kw != k {
            return Err((x, w));
        }
        let Some((fx, fw)) = read_only(&x, &w) else {
            return Err((x, w));
        };
        let mut out = vec![0.0f32; m * n];
        // SAFETY: `out` is a fresh m x n row-major buffer that aliases neither input.
        unsafe { gemm_into(out.as_mut_ptr(), (m, n, k), &fx, &fw, false) };
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
        // `Some` only while no other tensor shares this buffer, so `a` and `b` cannot alias it.
        let Some(y_data) = fy.try_storage_mut::<f32>() else {
            return Err((from_flex(fy), a, b));
        };
        // SAFETY: `y` is uniquely owned (checked above) and row-major with unit column stride,
        // so `y_off` plus m x n elements lie inside its storage and nothing `a` or `b` reads.
        unsafe { gemm_into(y_data.as_mut_ptr().add(y_off), (m, n, k), &fa, &fb, true) };
        Ok(from_flex(fy))
    }

    /// See [`super::idlora_lhs`].
    pub(super) fn idlora_lhs(
        x: &Tensor<2>,
        y0: &Tensor<2>,
        router: &Tensor<2>,
        bias: Option<Tensor<2>>,
        spec: &super::IdLoraLhs<'_>,
    ) -> Option<Tensor<2>> {
        use rayon::prelude::*;

        let device = x.device();
        if device != Device::flex() || device.is_autodiff() {
            return None;
        }
        let ([n, d_in], [ny, d_out], [dr, k]) = (x.dims(), y0.dims(), router.dims());
        let (r, kr) = (spec.r, spec.k * spec.r);
        if ny != n || dr != d_in || k != spec.k || spec.indices.len() != kr || n == 0 || k == 0 {
            return None;
        }
        let (fx, fy) = read_only(x, y0)?;
        let (fr, fb) = match bias {
            Some(b) => {
                let (fr, fb) = read_only(router, &b)?;
                (fr, Some(fb))
            }
            None => (into_flex(router.clone()).ok()?, None),
        };
        let ((x_rs, x_cs, x_off), (y_rs, y_cs, y_off)) = (strides(&fx), strides(&fy));
        if (x_cs != 1 && d_in > 1) || (y_cs != 1 && d_out > 1) || x_rs < 0 || y_rs < 0 {
            return None;
        }
        let (x_rs, y_rs) = (x_rs as usize, y_rs as usize);
        let (x_data, y_data): (&[f32], &[f32]) = (fx.storage(), fy.storage());
        // Rows of x and y0 must lie inside their storage.
        let last = n - 1;
        if x_off + last * x_rs + d_in > x_data.len() || y_off + last * y_rs + d_out > y_data.len() {
            return None;
        }
        let cols: Vec<usize> = spec
            .indices
            .iter()
            .map(|&c| usize::try_from(c).ok().filter(|&c| c < d_out))
            .collect::<Option<_>>()?;
        // Small operands to host order: W_g transposed (k rows of d_in) and the gathered bias.
        // Read once per call with the layout looked up once per tensor.
        let host = |t: &FlexTensor, at: &mut dyn Iterator<Item = (usize, usize)>| -> Option<Vec<f32>> {
            let ((rs, cs, off), data) = (strides(t), t.storage::<f32>());
            at.map(|(i, j)| {
                let at = off as isize + i as isize * rs + j as isize * cs;
                usize::try_from(at).ok().and_then(|at| data.get(at).copied())
            })
            .collect()
        };
        let wg_t = host(&fr, &mut (0..k * d_in).map(|idx| (idx % d_in, idx / d_in)))?;
        let b_sel = match &fb {
            Some(fb) => host(fb, &mut cols.iter().map(|&c| (0, c)))?,
            None => vec![0.0; kr],
        };
        let width = if spec.sum_form { r } else { kr };
        let mut out = vec![0.0f32; n * width];
        out.par_chunks_mut(width).enumerate().with_min_len(8).for_each(|(i, row)| {
            let xr = &x_data[x_off + i * x_rs..][..d_in];
            let yr = &y_data[y_off + i * y_rs..][..d_out];
            let mut w = vec![0.0f32; k];
            crate::stream::dots(xr, &wg_t, &mut w);
            // Softmax over the clusters, the scale folded in: w_c = scale softmax(logits)_c.
            let top = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            w.iter_mut().for_each(|v| *v = (*v - top).exp());
            let total: f32 = w.iter().sum();
            w.iter_mut().for_each(|v| *v = *v / total * spec.scale);
            for (c, &wc) in w.iter().enumerate() {
                let (s, b) = (&cols[c * r..(c + 1) * r], &b_sel[c * r..(c + 1) * r]);
                if spec.sum_form {
                    for ((o, &col), &bc) in row.iter_mut().zip(s).zip(b) {
                        *o += (yr[col] - bc) * wc;
                    }
                } else {
                    for ((o, &col), &bc) in row[c * r..(c + 1) * r].iter_mut().zip(s).zip(b) {
                        *o = (yr[col] - bc) * wc;
                    }
                }
            }
        });
        Some(Tensor::from_data(TensorData::new(out, [n, width]), &device))
    }
}
