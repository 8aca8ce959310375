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
    if !in_bounds((m, k, n), x, w, layout, out) {
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

fn in_bounds((m, k, n): (usize, usize, usize), x: &[f32], w: &[f32], layout: Layout, out: &[f32]) -> bool {
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
    xy && (m == 0 || n == 0 || k == 0 || w_need.is_some_and(|v| v <= w.len()))
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
    // At least 64 weight rows per part: fewer would cost more in partial sums than they save.
    let parts = threads.min(k.div_ceil(64)).max(1);
    let per = k.div_ceil(parts);
    let run = |t: usize, dst: &mut [f32]| {
        let (p0, p1) = (t * per, ((t + 1) * per).min(k));
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the instruction set was detected and the bounds were checked by
            // `few_rows`; rows p0 .. p1 of `w` and columns p0 .. p1 of `x` lie inside their
            // slices, `dst` holds m x n.
            Isa::Avx512 => unsafe { avx512::rows_into(m, k, n, x, w, ld, p0, p1, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::rows_into(m, k, n, x, w, ld, p0, p1, dst) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("no instruction set is detected off x86-64"),
        }
    };
    let first = &mut out[..m * n];
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
    use rayon::prelude::*;
    let per = n.div_ceil(threads);
    let op = out.as_mut_ptr() as usize;
    let run = |t: usize| {
        let (j0, j1) = (t * per, ((t + 1) * per).min(n));
        let out = op as *mut f32;
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the instruction set was detected and the bounds were checked by
            // `few_rows`; block `t` writes columns j0 .. j1 of `out` (m x n, row-major) only,
            // disjoint from every other block's, and `out` outlives the parallel loop.
            Isa::Avx512 => unsafe { avx512::columns_into(m, k, n, x, w, ld, j0, j1, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::columns_into(m, k, n, x, w, ld, j0, j1, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("no instruction set is detected off x86-64 ({out:?})"),
        }
    };
    let blocks = n.div_ceil(per);
    if blocks == 1 {
        run(0);
    } else {
        (0..blocks).into_par_iter().for_each(run);
    }
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
        /// `dst[i, :] = sum_{p0 <= p < p1} x[i, p] w[p, :]` for all `m` rows.
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
            dst[..m * n].fill(0.0);
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
