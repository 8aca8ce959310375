//! Few-row products that stream the weight through memory once, at the machine's bandwidth.
//!
//! Decoding multiplies one row (a few rows for a few sequences) by every weight of the model,
//! so its speed is the rate at which the weights come in from memory. Split across threads by
//! columns, gemm's matrix-vector product reached 10-12 GB/s on SmolLM2's 576-wide projections
//! (two threads here read 20 GB/s with plain vector loads): each thread read half of every
//! weight row, a short piece per row.
//!
//! Here each thread reads one contiguous part of the weight:
//! * a row-major weight (`w[p, j]` at `p ldw + j`) is split by its rows: thread `t` computes the
//!   partial product of rows `p` in its range, `x[:, p] w[p, :]`, as scaled row sums into a
//!   buffer that stays in cache, and the partial products are added at the end;
//! * a column-major weight (`w[p, j]` at `j ldw + p`, e.g. a transposed tied embedding as the LM
//!   head) is split by its columns: output column `j` is the dot product of `x`'s rows with
//!   contiguous column `j`.
//!
//! A weight stored in bf16 or f16 ([`few_rows_half`]) runs through the same kernels a few rows
//! or columns at a time, widened to `f32` in a per-thread buffer that stays in cache: it comes
//! in from memory at two bytes a value.
//!
//! x86-64 with AVX-512F, or AVX2 with FMA (one kernel body over either instruction set's
//! vectors, see `stream_kernels`); elsewhere [`few_rows`] says so and the caller uses gemm.

/// How the weight `w: [k, n]` is laid out in its slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `w[p, j]` at `p ld + j`.
    RowMajor { ld: usize },
    /// `w[p, j]` at `j ld + p`.
    ColMajor { ld: usize },
}

impl Layout {
    /// The layout of a `[k, n]` weight with row stride `rs` and column stride `cs`, where one
    /// direction is contiguous and the rows (or columns) do not overlap; `None` otherwise.
    pub(crate) fn of((k, n): (usize, usize), rs: isize, cs: isize) -> Option<Layout> {
        match (usize::try_from(rs), usize::try_from(cs)) {
            (Ok(ld), Ok(1)) if k == 1 || ld >= n => Some(Layout::RowMajor { ld: ld.max(n) }),
            (Ok(1), Ok(ld)) if n == 1 || ld >= k => Some(Layout::ColMajor { ld: ld.max(k) }),
            _ => None,
        }
    }
}

use crate::half_weight::Half;
use crate::isa::{Isa, detect};

/// `out[m, n] = x[m, k] w[k, n]` with `x` and `out` contiguous row-major.
///
/// Returns `false`, touching nothing, when the CPU has neither AVX-512F nor AVX2 with FMA, or a
/// slice is too short for the shapes; the caller then takes another path.
pub(crate) fn few_rows(
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    layout: Layout,
    out: &mut [f32],
    threads: usize,
) -> bool {
    detect().is_some_and(|isa| few_rows_on(isa, (m, k, n), x, w, layout, out, threads))
}

/// [`few_rows`] on a given instruction set, which the caller knows the CPU has.
fn few_rows_on(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    layout: Layout,
    out: &mut [f32],
    threads: usize,
) -> bool {
    if !in_bounds((m, k, n), x, w.len(), layout, out) {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let threads = threads.max(1);
    match layout {
        Layout::RowMajor { ld } => by_rows(isa, (m, k, n), x, w, ld, out, threads),
        Layout::ColMajor { ld } => by_columns(isa, (m, k, n), x, w, ld, out, threads),
    }
    true
}

/// `out[c] = <x, wt[c d .. (c + 1) d]>` for `d = x.len()` and every `c < out.len()` (a row of
/// `x` against a few weight rows, e.g. a router's; `wt` must hold `out.len() d`).
pub(crate) fn dots(x: &[f32], wt: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match detect() {
        // SAFETY: the instruction set was detected.
        Some(Isa::Avx512) => return unsafe { dots_avx512(x, wt, out) },
        // SAFETY: as above.
        Some(Isa::Avx2) => return unsafe { dots_avx2(x, wt, out) },
        None => {}
    }
    dots_portable(x, wt, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(x: &[f32], wt: &[f32], out: &mut [f32]) {
    dots_portable(x, wt, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(x: &[f32], wt: &[f32], out: &mut [f32]) {
    dots_portable(x, wt, out);
}

/// Sixteen lanes per dot product, written so that the compiler vectorises them (iterators, no
/// index arithmetic: this crate's dev profile keeps overflow checks).
#[inline(always)]
fn dots_portable(x: &[f32], wt: &[f32], out: &mut [f32]) {
    const L: usize = 16;
    let d = x.len();
    for (o, w) in out.iter_mut().zip(wt.chunks_exact(d.max(1))) {
        let mut acc = [0.0f32; L];
        for (xc, wc) in x.chunks_exact(L).zip(w.chunks_exact(L)) {
            for ((a, &xv), &wv) in acc.iter_mut().zip(xc).zip(wc) {
                *a += xv * wv;
            }
        }
        let tail: f32 =
            x.chunks_exact(L).remainder().iter().zip(w.chunks_exact(L).remainder()).map(|(a, b)| a * b).sum();
        *o = acc.iter().sum::<f32>() + tail;
    }
}

fn in_bounds((m, k, n): (usize, usize, usize), x: &[f32], w_len: usize, layout: Layout, out: &[f32]) -> bool {
    let span = |outer: usize, ld: usize, inner: usize| match outer.checked_sub(1) {
        None => Some(0),
        Some(last) => last.checked_mul(ld).and_then(|v| v.checked_add(inner)),
    };
    let w_need = match layout {
        Layout::RowMajor { ld } if ld >= n || k <= 1 => span(k, ld, n),
        Layout::ColMajor { ld } if ld >= k || n <= 1 => span(n, ld, k),
        _ => None,
    };
    let xy =
        m.checked_mul(k).is_some_and(|v| v <= x.len()) && m.checked_mul(n).is_some_and(|v| v <= out.len());
    xy && (m == 0 || n == 0 || k == 0 || w_need.is_some_and(|v| v <= w_len))
}

/// Row-major weight: thread `t` sums rows `p` of its range; the partial products are added.
fn by_rows(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    ld: usize,
    out: &mut [f32],
    threads: usize,
) {
    // SAFETY: the bounds were checked by `few_rows`: rows p0 .. p1 of `w` and columns p0 .. p1
    // of `x` lie inside their slices, `dst` holds m x n.
    split_rows((m, k, n), out, threads, |p0, p1, dst| unsafe {
        rows_kernel(isa, (m, k, n), x, w, ld, p0, p1, dst)
    });
}

/// `dst += x[:, p0 .. p1] w[p0 .. p1, :]` on `isa`.
///
/// # Safety
/// `isa` was detected; `x` holds `m x k`, `w` rows `p0 .. p1` of `n` at stride `ld`, `dst` `m x n`.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_kernel(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    ld: usize,
    p0: usize,
    p1: usize,
    dst: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as the caller vouches.
        Isa::Avx512 => unsafe { avx512::rows_into(m, k, n, x, w, ld, p0, p1, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::rows_into(m, k, n, x, w, ld, p0, p1, dst) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no instruction set is detected off x86-64 ({x:?}, {w:?}, {dst:?})"),
    }
}

/// The weight's `k` rows split into up to `threads` ranges, `run(p0, p1, dst)` adding each
/// range's partial product into a zeroed `dst` (the first range's straight into `out`), and the
/// partials added up.
fn split_rows(
    (m, k, n): (usize, usize, usize),
    out: &mut [f32],
    threads: usize,
    run: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    // At least 64 weight rows per part: fewer would cost more in partial sums than they save.
    let parts = threads.min(k.div_ceil(64)).max(1);
    let per = k.div_ceil(parts);
    let run = |t: usize, dst: &mut [f32]| run(t * per, ((t + 1) * per).min(k), dst);
    let first = &mut out[..m * n];
    first.fill(0.0);
    if parts == 1 {
        run(0, first);
        return;
    }
    let mut partials = vec![vec![0.0f32; m * n]; parts - 1];
    let run = &run;
    rayon::scope(|s| {
        for (t, dst) in partials.iter_mut().enumerate() {
            s.spawn(move |_| run(t + 1, dst));
        }
        run(0, first);
    });
    for p in &partials {
        for (o, v) in first.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// Column-major weight: thread `t` computes a contiguous range of output columns.
fn by_columns(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    ld: usize,
    out: &mut [f32],
    threads: usize,
) {
    let op = out.as_mut_ptr() as usize;
    // SAFETY: the bounds were checked by `few_rows`; block (j0, j1) writes columns j0 .. j1 of
    // `out` (m x n, row-major) only, disjoint from every other block's, and `out` outlives the
    // parallel loop.
    split_columns(n, threads, |j0, j1| unsafe {
        columns_kernel(isa, (m, k, n), x, w, ld, j0, j1, op as *mut f32)
    });
}

/// `out[:, j0 .. j1] = x w[:, j0 .. j1]` on `isa`.
///
/// # Safety
/// `isa` was detected; `x` holds `m x k`, `w` columns `j0 .. j1` of `k` at stride `ld`, `out`
/// is `m x n` row-major and nobody else touches its columns `j0 .. j1` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn columns_kernel(
    isa: Isa,
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    ld: usize,
    j0: usize,
    j1: usize,
    out: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as the caller vouches.
        Isa::Avx512 => unsafe { avx512::columns_into(m, k, n, x, w, ld, j0, j1, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::columns_into(m, k, n, x, w, ld, j0, j1, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no instruction set is detected off x86-64 ({x:?}, {w:?}, {out:?})"),
    }
}

/// The `n` output columns split into up to `threads` contiguous blocks, `run(j0, j1)` on each.
fn split_columns(n: usize, threads: usize, run: impl Fn(usize, usize) + Sync) {
    use rayon::prelude::*;
    let per = n.div_ceil(threads.max(1)).max(1);
    let blocks = n.div_ceil(per);
    let run = |t: usize| run(t * per, ((t + 1) * per).min(n));
    if blocks == 1 {
        run(0);
    } else {
        (0..blocks).into_par_iter().for_each(run);
    }
}

/// `f32` values per widened piece of a half weight: 128 KiB, in cache while the kernels read it.
const WIDENED_VALUES: usize = 32 * 1024;

/// [`few_rows`] for a weight stored in bf16 or f16: the same kernels, run over a few weight rows
/// (row-major) or columns (column-major) at a time widened to `f32` in a per-thread buffer, so
/// that the weight comes in from memory at two bytes a value and is widened in cache.
pub(crate) fn few_rows_half<H: Half>(
    (m, k, n): (usize, usize, usize),
    x: &[f32],
    w: &[H],
    layout: Layout,
    out: &mut [f32],
    threads: usize,
) -> bool {
    let Some(isa) = detect() else {
        return false;
    };
    if !in_bounds((m, k, n), x, w.len(), layout, out) {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    let threads = threads.max(1);
    match layout {
        Layout::RowMajor { ld } => {
            // Rows per widened piece, a multiple of the kernel's four-row step.
            let chunk = (WIDENED_VALUES / n).clamp(4, 256) / 4 * 4;
            split_rows((m, k, n), out, threads, |p0, p1, dst| {
                let mut buf = vec![0.0f32; chunk.min(p1 - p0) * n];
                for c0 in (p0..p1).step_by(chunk) {
                    let c1 = (c0 + chunk).min(p1);
                    for (p, row) in (c0..c1).zip(buf.chunks_exact_mut(n)) {
                        H::widen_slice(&w[p * ld..p * ld + n], row);
                    }
                    // Rows c0 .. c1 as rows 0 .. c1 - c0 of the buffer, `x` read from column c0.
                    // SAFETY: `isa` was detected; `x[c0..]` holds rows of stride k whose columns
                    // 0 .. c1 - c0 lie inside it (c1 <= k); the buffer holds c1 - c0 rows of n.
                    unsafe { rows_kernel(isa, (m, k, n), &x[c0..], &buf, n, 0, c1 - c0, dst) };
                }
            });
        }
        Layout::ColMajor { ld } => {
            let chunk = (WIDENED_VALUES / k.max(1)).clamp(1, 256);
            let op = out.as_mut_ptr() as usize;
            split_columns(n, threads, |j0, j1| {
                let mut buf = vec![0.0f32; chunk.min(j1 - j0) * k];
                for c0 in (j0..j1).step_by(chunk) {
                    let c1 = (c0 + chunk).min(j1);
                    for (j, col) in (c0..c1).zip(buf.chunks_exact_mut(k.max(1))) {
                        H::widen_slice(&w[j * ld..j * ld + k], col);
                    }
                    // Columns c0 .. c1 as columns 0 .. c1 - c0 of the buffer, written from
                    // output column c0.
                    // SAFETY: `isa` was detected; the buffer holds c1 - c0 columns of k; `out`
                    // is m x n row-major, this block alone writes its columns j0 .. j1 (so
                    // c0 .. c1), and it outlives the parallel loop.
                    unsafe {
                        columns_kernel(isa, (m, k, n), x, &buf, k, 0, c1 - c0, (op as *mut f32).add(c0))
                    };
                }
            });
        }
    }
    true
}

/// The kernels' bodies, written once over an instruction set's vectors: the invoking module
/// defines `V` (`LANES` floats), `Mask`, `ROWS` (rows of `x` per pass over a weight block in
/// `rows_into`: `ROWS x 4` broadcasts, four weight vectors and an output vector must fit the
/// registers), `COL_ROWS` (rows per column pass in `columns_into`) and the operations `mask(n)`
/// (the first `min(n, LANES)` lanes), `zero`, `splat`, `load` / `store` (full vectors),
/// `load_part` / `store_part` (masked), `fmadd`, `add` and `reduce`; `$feature` is the
/// `target_feature` they need. Full vectors take plain loads and stores and only the last
/// vector of a row is masked: AMD's masked stores are microcoded, far slower than plain ones.
#[cfg(target_arch = "x86_64")]
macro_rules! stream_kernels {
    ($feature:literal) => {
        /// `dst[i, :] += sum_{p0 <= p < p1} x[i, p] w[p, :]` for all `m` rows.
        ///
        /// # Safety
        /// The module's instruction set; `x` holds `m x k`, `w` rows `p0 .. p1` of `n` at stride
        /// `ld`, `dst` `m x n`.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn rows_into(
            m: usize,
            k: usize,
            n: usize,
            x: &[f32],
            w: &[f32],
            ld: usize,
            p0: usize,
            p1: usize,
            dst: &mut [f32],
        ) {
            let mut i0 = 0;
            while i0 < m {
                let rows = ROWS.min(m - i0);
                // SAFETY: rows i0 .. i0 + rows < m of `x` and `dst`, weight rows p0 .. p1.
                unsafe {
                    match rows {
                        1 => rows_block::<1>(k, n, x, w, ld, p0, p1, dst, i0),
                        2 => rows_block::<2>(k, n, x, w, ld, p0, p1, dst, i0),
                        3 if ROWS > 2 => rows_block::<3>(k, n, x, w, ld, p0, p1, dst, i0),
                        _ if ROWS > 2 => rows_block::<4>(k, n, x, w, ld, p0, p1, dst, i0),
                        _ => unreachable!("blocks are at most {ROWS} rows"),
                    }
                }
                i0 += rows;
            }
        }

        /// `R` rows of `x` from row `i0`: four weight rows per step, each loaded once for all
        /// `R`.
        ///
        /// # Safety
        /// As [`rows_into`], for rows `i0 .. i0 + R`.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn rows_block<const R: usize>(
            k: usize,
            n: usize,
            x: &[f32],
            w: &[f32],
            ld: usize,
            p0: usize,
            p1: usize,
            dst: &mut [f32],
            i0: usize,
        ) {
            let (xp, wp, dp) = (x.as_ptr(), w.as_ptr(), dst.as_mut_ptr());
            let full = n / LANES * LANES;
            let tail = mask(n - full);
            let mut p = p0;
            // SAFETY (pointer arithmetic): rows i0 + i < m of x (k each) and dst (n each), weight
            // rows p .. p + 4 <= p1, columns below n (the last vector masked).
            unsafe {
                while p + 4 <= p1 {
                    let mut b = [[zero(); 4]; R];
                    for (i, bi) in b.iter_mut().enumerate() {
                        let xr = xp.add((i0 + i) * k + p);
                        for (q, v) in bi.iter_mut().enumerate() {
                            *v = splat(*xr.add(q));
                        }
                    }
                    let w0 = wp.add(p * ld);
                    let (w1, w2, w3) = (w0.add(ld), w0.add(2 * ld), w0.add(3 * ld));
                    let mut off = 0;
                    while off < full {
                        let (a0, a1, a2, a3) =
                            (load(w0.add(off)), load(w1.add(off)), load(w2.add(off)), load(w3.add(off)));
                        for (i, bi) in b.iter().enumerate() {
                            let d = dp.add((i0 + i) * n + off);
                            let o = fmadd(
                                bi[3],
                                a3,
                                fmadd(bi[2], a2, fmadd(bi[1], a1, fmadd(bi[0], a0, load(d)))),
                            );
                            store(d, o);
                        }
                        off += LANES;
                    }
                    if off < n {
                        let a0 = load_part(w0.add(off), tail);
                        let (a1, a2, a3) = (
                            load_part(w1.add(off), tail),
                            load_part(w2.add(off), tail),
                            load_part(w3.add(off), tail),
                        );
                        for (i, bi) in b.iter().enumerate() {
                            let d = dp.add((i0 + i) * n + off);
                            let o = load_part(d, tail);
                            let o = fmadd(bi[3], a3, fmadd(bi[2], a2, fmadd(bi[1], a1, fmadd(bi[0], a0, o))));
                            store_part(d, tail, o);
                        }
                    }
                    p += 4;
                }
                while p < p1 {
                    let wr = wp.add(p * ld);
                    for i in 0..R {
                        let a = splat(*xp.add((i0 + i) * k + p));
                        let d = dp.add((i0 + i) * n);
                        let mut off = 0;
                        while off < full {
                            store(d.add(off), fmadd(a, load(wr.add(off)), load(d.add(off))));
                            off += LANES;
                        }
                        if off < n {
                            let o = fmadd(a, load_part(wr.add(off), tail), load_part(d.add(off), tail));
                            store_part(d.add(off), tail, o);
                        }
                    }
                    p += 1;
                }
            }
        }

        /// `out[i, j] = <x[i, :], w[:, j]>` for columns `j0 .. j1`, column `j` contiguous at
        /// `j ld`.
        ///
        /// # Safety
        /// The module's instruction set; `x` holds `m x k`, `w` columns `j0 .. j1` of `k` at
        /// stride `ld`, `out` is `m x n` row-major and nobody else touches its columns
        /// `j0 .. j1` meanwhile.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn columns_into(
            m: usize,
            k: usize,
            n: usize,
            x: &[f32],
            w: &[f32],
            ld: usize,
            j0: usize,
            j1: usize,
            out: *mut f32,
        ) {
            let (xp, wp) = (x.as_ptr(), w.as_ptr());
            let step = 2 * LANES;
            let full = k / step * step;
            // SAFETY: column j < j1 <= n of w (k elements from j ld), rows i < m of x and out.
            unsafe {
                for j in j0..j1 {
                    let col = wp.add(j * ld);
                    let mut i0 = 0;
                    while i0 < m {
                        let rows = COL_ROWS.min(m - i0);
                        let mut acc = [[zero(); 2]; COL_ROWS];
                        let mut p = 0;
                        // Two vectors per step (two chains per row hide the FMA latency).
                        while p < full {
                            let (c0, c1) = (load(col.add(p)), load(col.add(p + LANES)));
                            for (i, a) in acc.iter_mut().enumerate().take(rows) {
                                let xr = xp.add((i0 + i) * k + p);
                                a[0] = fmadd(load(xr), c0, a[0]);
                                a[1] = fmadd(load(xr.add(LANES)), c1, a[1]);
                            }
                            p += step;
                        }
                        while p < k {
                            let mk = mask(k - p);
                            let c0 = load_part(col.add(p), mk);
                            for (i, a) in acc.iter_mut().enumerate().take(rows) {
                                a[0] = fmadd(load_part(xp.add((i0 + i) * k + p), mk), c0, a[0]);
                            }
                            p += LANES;
                        }
                        for (i, a) in acc.iter().enumerate().take(rows) {
                            *out.add((i0 + i) * n + j) = reduce(add(a[0], a[1]));
                        }
                        i0 += rows;
                    }
                }
            }
        }
    };
}

/// AVX-512F: 32 registers (4 rows x 4 broadcasts in `rows_into`).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::simd::avx512::{
        LANES, add, fmadd, load, load_part, mask, reduce, splat, store, store_part, zero,
    };

    const ROWS: usize = 4;
    const COL_ROWS: usize = 4;

    stream_kernels!("avx512f");
}

/// AVX2 with FMA: 16 registers (2 rows x 4 broadcasts, four weight vectors and the output in
/// `rows_into`).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::simd::avx2::{
        LANES, add, fmadd, load, load_part, mask, reduce, splat, store, store_part, zero,
    };

    const ROWS: usize = 2;
    const COL_ROWS: usize = 4;

    stream_kernels!("avx2,fma");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_for_both_layouts() {
        let here = crate::isa::available();
        if here.is_empty() {
            eprintln!("neither AVX-512F nor AVX2 with FMA: the streaming kernels are not used on this CPU");
            return;
        }
        // Rows 1 ..= 8 (one and two passes), k below, at and above the 4-row step and one
        // vector, n with and without a vector tail, several threads.
        for &(m, k, n) in
            &[(1, 1, 1), (1, 5, 17), (3, 64, 33), (4, 130, 48), (5, 67, 100), (8, 300, 16), (2, 33, 1)]
        {
            for &threads in &[1, 2, 3] {
                for &pad in &[0, 3] {
                    let x = values(m * k, 1);
                    let (rm_ld, cm_ld) = (n + pad, k + pad);
                    let rm = values(k * rm_ld, 2);
                    // The same matrix stored column-major.
                    let mut cm = vec![0.0; n * cm_ld];
                    for p in 0..k {
                        for j in 0..n {
                            cm[j * cm_ld + p] = rm[p * rm_ld + j];
                        }
                    }
                    let want: Vec<f64> = (0..m * n)
                        .map(|idx| {
                            let (i, j) = (idx / n, idx % n);
                            (0..k).map(|p| f64::from(x[i * k + p]) * f64::from(rm[p * rm_ld + j])).sum()
                        })
                        .collect();
                    for (&isa, layout) in here.iter().flat_map(|i| {
                        [(i, Layout::RowMajor { ld: rm_ld }), (i, Layout::ColMajor { ld: cm_ld })]
                    }) {
                        let w = if matches!(layout, Layout::RowMajor { .. }) { &rm } else { &cm };
                        let mut out = vec![f32::NAN; m * n];
                        assert!(few_rows_on(isa, (m, k, n), &x, w, layout, &mut out, threads));
                        for (idx, (&got, &expect)) in out.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (k as f64).sqrt();
                            assert!(
                                (f64::from(got) - expect).abs() <= tol,
                                "{isa:?} {layout:?} {m}x{k}x{n}, {threads} threads, at {idx}: {got} vs {expect}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The half-weight path against the definition on the widened values: bf16 and f16, both
    /// layouts, strides with padding, several threads, and shapes whose weight spans several
    /// widened pieces (k = 2000: eight pieces of 256 rows, and column pieces of 16).
    #[test]
    fn half_weights_match_the_definition_for_both_layouts() {
        use half::{bf16, f16};
        if crate::isa::available().is_empty() {
            eprintln!("neither AVX-512F nor AVX2 with FMA: the streaming kernels are not used on this CPU");
            return;
        }
        fn check<H: Half>(to_half: fn(f32) -> H, what: &str) {
            for &(m, k, n) in &[(1, 5, 17), (3, 64, 33), (5, 67, 100), (8, 300, 16), (2, 2000, 40), (1, 1, 1)]
            {
                for &threads in &[1, 2, 3] {
                    let pad = 3;
                    let x = values(m * k, 1);
                    let (rm_ld, cm_ld) = (n + pad, k + pad);
                    let rm: Vec<H> = values(k * rm_ld, 2).into_iter().map(to_half).collect();
                    let mut cm = vec![to_half(0.0); n * cm_ld];
                    for p in 0..k {
                        for j in 0..n {
                            cm[j * cm_ld + p] = rm[p * rm_ld + j];
                        }
                    }
                    let want: Vec<f64> = (0..m * n)
                        .map(|idx| {
                            let (i, j) = (idx / n, idx % n);
                            (0..k)
                                .map(|p| f64::from(x[i * k + p]) * f64::from(rm[p * rm_ld + j].widen()))
                                .sum()
                        })
                        .collect();
                    for layout in [Layout::RowMajor { ld: rm_ld }, Layout::ColMajor { ld: cm_ld }] {
                        let w = if matches!(layout, Layout::RowMajor { .. }) { &rm } else { &cm };
                        let mut out = vec![f32::NAN; m * n];
                        assert!(few_rows_half((m, k, n), &x, w, layout, &mut out, threads));
                        for (idx, (&got, &expect)) in out.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (k as f64).sqrt();
                            assert!(
                                (f64::from(got) - expect).abs() <= tol,
                                "{what} {layout:?} {m}x{k}x{n}, {threads} threads, at {idx}: {got} vs {expect}"
                            );
                        }
                    }
                }
            }
        }
        check::<bf16>(bf16::from_f32, "bf16");
        check::<f16>(f16::from_f32, "f16");
    }

    #[test]
    fn short_slices_and_overlapping_strides_are_refused_untouched() {
        let x = vec![1.0; 8];
        let w = vec![1.0; 12];
        let mut out = vec![7.0; 8];
        // w needs 4 rows of 4.
        assert!(!few_rows((2, 4, 4), &x, &w, Layout::RowMajor { ld: 4 }, &mut out, 1));
        // A row stride below the row length.
        assert!(!few_rows((2, 4, 3), &x, &w, Layout::RowMajor { ld: 2 }, &mut out, 1));
        assert!(!few_rows((2, 4, 2), &x, &w, Layout::ColMajor { ld: 3 }, &mut out, 1));
        assert!(out.iter().all(|&v| v == 7.0));
    }
}
