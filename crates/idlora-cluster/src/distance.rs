//! Squared Euclidean distances between rows and centres through dot products:
//! `||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`.
//!
//! The dot products run in `f32`, through [`idlora_kernels::dots`]'s in-place kernel where the CPU has
//! AVX-512F or AVX2 with FMA, and `matrixmultiply`'s packed kernels elsewhere; the norms and the assembly run in
//! `f64`. Rows are split into fixed chunks computed in parallel: each row's result
//! depends only on that row, so the output is bit-identical whatever the number of threads.
//!
//! Each entry is also independent of which *other* centres share the call (both kernels accumulate
//! every `(row, centre)` pair over the depth in the same order wherever the centre sits in the
//! batch; a test pins this for each). k-means relies on it: all restarts share one pass over the data,
//! and a restart's trajectory must not depend on the restarts beside it.

use rayon::prelude::*;

use crate::RowMatrix;
use idlora_kernels::dots::{Centres, Isa};

/// Rows per parallel task.
const CHUNK_ROWS: usize = 256;

/// `||x_i||^2` for every row, in `f64`.
pub fn row_sq_norms(x: RowMatrix<'_>) -> Vec<f64> {
    (0..x.rows()).into_par_iter().map(|i| sq_norm(x.row(i))).collect()
}

/// Partial sums per sum: a single `f64` running sum is one dependent add per element (the
/// compiler may not reorder float adds), eight independent ones vectorise.
const LANES: usize = 8;

/// `sum_p f(a_p, b_p)` in `f64`, in [`LANES`] interleaved partial sums added in a fixed order.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (pa, pb) in ac.zip(bc) {
        for ((s, &x), &y) in acc.iter_mut().zip(pa).zip(pb) {
            *s += f(x, y);
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ar).zip(br) {
        *s += f(x, y);
    }
    acc.iter().sum()
}

/// `||v||^2` in `f64`.
pub fn sq_norm(v: &[f32]) -> f64 {
    lane_sum(v, v, |a, _| f64::from(a) * f64::from(a))
}

/// Exact `||a - b||^2`, accumulated in `f64` (used where exactness matters more than speed).
pub fn sq_dist_exact(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    lane_sum(&a[..n], &b[..n], |p, q| {
        let d = f64::from(p) - f64::from(q);
        d * d
    })
}

/// Which kernel computes the dot products of [`sq_distances_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DotKernel {
    /// [`idlora_kernels::dots`] on the widest instruction set the CPU has, else `matrixmultiply`.
    #[default]
    Auto,
    /// [`idlora_kernels::dots`] on this instruction set where the CPU has it, else `matrixmultiply`
    /// (to compare the kernels on one machine).
    InPlace(Isa),
    /// `matrixmultiply`'s packed GEMM (every CPU).
    Gemm,
}

/// `out[i * m + j] = ||x_i - c_j||^2` for the `m` centres in `centers` (row-major, `m x d`),
/// clamped at zero. `x_norms` are [`row_sq_norms`] of `x`.
///
/// ```
/// use idlora_cluster::RowMatrix;
/// use idlora_cluster::distance::{row_sq_norms, sq_distances};
/// let data = [0.0f32, 0.0, 3.0, 4.0];
/// let x = RowMatrix::new(&data, 2, 2)?;
/// let d = sq_distances(x, &row_sq_norms(x), &[0.0, 0.0]);
/// assert_eq!(d, vec![0.0, 25.0]);
/// # Ok::<(), idlora_cluster::ClusterError>(())
/// ```
pub fn sq_distances(x: RowMatrix<'_>, x_norms: &[f64], centers: &[f32]) -> Vec<f64> {
    sq_distances_with(x, x_norms, centers, DotKernel::Auto)
}

/// [`sq_distances`] with a chosen dot-product kernel (for benchmarks and cross-checks).
pub fn sq_distances_with(x: RowMatrix<'_>, x_norms: &[f64], centers: &[f32], kernel: DotKernel) -> Vec<f64> {
    Prepared::new(centers, x.cols(), kernel).all(x, x_norms)
}

/// One entry of the distance matrix from its dot product, clamped at zero.
#[inline(always)]
fn assemble(x_norm: f64, dot: f32, c_norm: f64) -> f64 {
    (x_norm - 2.0 * f64::from(dot) + c_norm).max(0.0)
}

/// Unit roundoff of `f32`.
const U32: f64 = 1.0 / (1u64 << 24) as f64;
/// Unit roundoff of `f64`.
const U64: f64 = 1.0 / (1u64 << 53) as f64;

/// Centres made ready for one distance pass (packed for the in-place kernel, norms computed),
/// which computes the entries of any rows: all of them, a chosen subset, or one row at a time,
/// every entry bit for bit as in the others.
pub(crate) struct Prepared<'a> {
    centers: &'a [f32],
    m: usize,
    d: usize,
    norms: Vec<f64>,
    /// `||c_j||`.
    roots: Vec<f64>,
    packed: Option<Centres>,
    /// `gamma`: the dot products' rounding error is at most `gamma sum_p |x_p c_p|`.
    gamma: f64,
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(centers: &'a [f32], d: usize, kernel: DotKernel) -> Self {
        let m = centers.len() / d.max(1);
        let norms: Vec<f64> = centers.chunks_exact(d.max(1)).map(sq_norm).collect();
        let packed = match kernel {
            DotKernel::Auto => Centres::new(centers, m, d).filter(|c| c.isa().is_some()),
            DotKernel::InPlace(isa) => Centres::with_isa(centers, m, d, Some(isa)),
            DotKernel::Gemm => None,
        };
        // The in-place kernel: one fused multiply-add chain per lane of 16 or 8 (full vectors,
        // plus at most one partial vector per depth block), then a horizontal sum of four or three
        // levels.
        // matrixmultiply: at most one chain of the whole depth, possibly a multiply and an add
        // per step, plus its depth blocks' additions. Both bounds are the textbook
        // `|fl(sum) - sum| <= n u sum |terms|` (Higham, ch. 3) with room to spare.
        let steps = match packed {
            Some(ref c) => d.div_ceil(c.isa().map_or(1, Isa::lanes)) + d.div_ceil(256) + 5,
            None => 2 * d + 16,
        };
        let gamma = 1.01 * steps as f64 * U32;
        let roots = norms.iter().map(|v| v.sqrt()).collect();
        Self { centers, m, d, norms, roots, packed, gamma }
    }

    /// Number of centres.
    pub(crate) fn len(&self) -> usize {
        self.m
    }

    /// A bound on `|computed - exact|` for the entry of a row of squared norm `x_norm` (and norm
    /// `x_root`, its square root) and centre `j`, where `exact` is `||x - c_j||^2` in real
    /// arithmetic (the clamp at zero only moves a computed value towards it). The dot product's
    /// error is at most `gamma ||x|| ||c_j||` (Cauchy-Schwarz); the `f64` norms and the assembly
    /// add a few `f64` roundings of the magnitudes involved. (The roots' own rounding is far
    /// inside the final relative margin.)
    #[inline]
    pub(crate) fn error_bound(&self, x_norm: f64, x_root: f64, j: usize) -> f64 {
        let cross = x_root * self.roots[j];
        let f64_part = ((self.d + 8) as f64 * U64) * (x_norm + self.norms[j] + 2.0 * cross);
        (2.0 * self.gamma * cross + f64_part) * (1.0 + 1e-9) + f64::MIN_POSITIVE
    }

    /// The `n x m` matrix for every row of `x`.
    pub(crate) fn all(&self, x: RowMatrix<'_>, x_norms: &[f64]) -> Vec<f64> {
        let (d, m) = (self.d, self.m);
        let mut out = vec![0.0f64; x.rows() * m];
        if m == 0 {
            return out;
        }
        out.par_chunks_mut(CHUNK_ROWS * m).enumerate().for_each(|(chunk, out)| {
            let r0 = chunk * CHUNK_ROWS;
            let rows = out.len() / m;
            self.block(&x.data()[r0 * d..(r0 + rows) * d], &x_norms[r0..r0 + rows], out);
        });
        out
    }

    /// The `rows.len() x m` matrix for the listed rows of `x`, in the order listed.
    pub(crate) fn some(&self, x: RowMatrix<'_>, x_norms: &[f64], rows: &[u32]) -> Vec<f64> {
        let (d, m) = (self.d, self.m);
        let mut out = vec![0.0f64; rows.len() * m];
        if m == 0 {
            return out;
        }
        out.par_chunks_mut(CHUNK_ROWS * m).zip(rows.par_chunks(CHUNK_ROWS)).for_each(|(out, rows)| {
            let norms: Vec<f64> = rows.iter().map(|&i| x_norms[i as usize]).collect();
            let mut dots = vec![0.0f32; rows.len() * m];
            // The in-place kernel reads the listed rows where they lie; matrixmultiply wants them
            // gathered into a contiguous block.
            if self.packed.as_ref().is_some_and(|p| p.dots_rows(x.data(), rows, &mut dots)) {
                self.assemble_block(&dots, &norms, out);
            } else {
                let mut a = Vec::with_capacity(rows.len() * d);
                for &i in rows {
                    a.extend_from_slice(x.row(i as usize));
                }
                self.block(&a, &norms, out);
            }
        });
        out
    }

    /// Row `i` of the matrix into `out` (`m` values).
    pub(crate) fn one(&self, x: RowMatrix<'_>, x_norms: &[f64], i: usize, out: &mut [f64]) {
        self.block(x.row(i), &x_norms[i..i + 1], out);
    }

    /// Entries of the contiguous rows `a` (`norms.len()` of them) into `out`.
    fn block(&self, a: &[f32], norms: &[f64], out: &mut [f64]) {
        let (d, m, rows) = (self.d, self.m, norms.len());
        let mut dots = vec![0.0f32; rows * m];
        if !self.packed.as_ref().is_some_and(|p| p.dots(a, rows, &mut dots)) {
            gemm_dots(a, rows, d, self.centers, m, &mut dots);
        }
        self.assemble_block(&dots, norms, out);
    }

    /// Entries from their dot products (`norms.len() x m` of each).
    fn assemble_block(&self, dots: &[f32], norms: &[f64], out: &mut [f64]) {
        let m = self.m;
        for ((o, dot), &xn) in out.chunks_exact_mut(m).zip(dots.chunks_exact(m)).zip(norms) {
            for j in 0..m {
                o[j] = assemble(xn, dot[j], self.norms[j]);
            }
        }
    }
}

/// `dots[r * m + j] = a_r . c_j` through `matrixmultiply`'s packed kernels.
fn gemm_dots(a: &[f32], rows: usize, d: usize, centers: &[f32], m: usize, dots: &mut [f32]) {
    // SAFETY: `a` is `rows x d` row-major (strides d, 1); `centers` read as its transpose
    // `d x m` (strides 1, d); `dots` is `rows x m` row-major (strides m, 1). All three slices
    // hold exactly those many elements, and `dots` does not alias the inputs.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            d,
            m,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            centers.as_ptr(),
            1,
            d as isize,
            0.0,
            dots.as_mut_ptr(),
            m as isize,
            1,
        );
    }
}

/// `acc += sign * row`, widening to `f64`: the update step's inner loop, with `sign` 1 to add a
/// row to a cluster's sum and -1 to remove it (exact: negation does not round). Compiled for
/// the CPU's widest vector level ([`idlora_kernels::isa`]).
pub fn accumulate_row_f64(acc: &mut [f64], row: &[f32], sign: f64) {
    // Rust never contracts `a + s * v` into a fused multiply-add, so the vector code rounds as
    // the scalar loop does, on any instruction set.
    idlora_kernels::isa::vectorized(
        #[inline(always)]
        || {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += sign * f64::from(v);
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel; an instruction set this CPU lacks falls back to `matrixmultiply`.
    const KERNELS: [DotKernel; 4] =
        [DotKernel::Auto, DotKernel::InPlace(Isa::Avx512), DotKernel::InPlace(Isa::Avx2), DotKernel::Gemm];

    fn data(n: usize, d: usize, mult: usize, modulus: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..n * d).map(|i| ((i * mult) % modulus) as f32 / scale - shift).collect()
    }

    #[test]
    fn an_entry_does_not_depend_on_the_other_centres_in_the_call() {
        // Batched k-means restarts need this bit for bit (see the module docs), from either kernel.
        for kernel in KERNELS {
            for (n, d) in [(300, 37), (513, 1000), (260, 4096)] {
                let x = data(n, d, 7919, 1000, 500.0, 1.0);
                let xm = RowMatrix::new(&x, n, d).unwrap();
                let norms = row_sq_norms(xm);
                let m = 43;
                let c = data(m, d, 104729, 997, 400.0, 1.2);
                let all = sq_distances_with(xm, &norms, &c, kernel);
                for (off, len) in [(0, 1), (5, 4), (17, 1), (40, 3), (3, 30), (8, 16)] {
                    let sub = sq_distances_with(xm, &norms, &c[off * d..(off + len) * d], kernel);
                    for i in 0..n {
                        for j in 0..len {
                            assert_eq!(
                                sub[i * len + j].to_bits(),
                                all[i * m + off + j].to_bits(),
                                "{kernel:?} {n}x{d} row {i} centre {}",
                                off + j
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn listed_rows_and_single_rows_match_the_full_pass_bit_for_bit() {
        // Pruned k-means passes compute chosen rows, and the flow one row at a time: each entry
        // must be the one the full pass gives.
        for kernel in KERNELS {
            for (n, d, m) in [(300, 37, 4), (515, 1000, 7), (70, 4096, 12)] {
                let x = data(n, d, 7919, 1000, 500.0, 1.0);
                let xm = RowMatrix::new(&x, n, d).unwrap();
                let norms = row_sq_norms(xm);
                let c = data(m, d, 104729, 997, 400.0, 1.2);
                let prepared = Prepared::new(&c, d, kernel);
                let all = prepared.all(xm, &norms);
                let rows: Vec<u32> = (0..n as u32).rev().step_by(3).chain([0, 0, 5]).collect();
                let some = prepared.some(xm, &norms, &rows);
                let mut one = vec![0.0; m];
                for (t, &i) in rows.iter().enumerate() {
                    let i = i as usize;
                    prepared.one(xm, &norms, i, &mut one);
                    for j in 0..m {
                        let want = all[i * m + j].to_bits();
                        assert_eq!(some[t * m + j].to_bits(), want, "{kernel:?} {n}x{d} listed row {i}");
                        assert_eq!(one[j].to_bits(), want, "{kernel:?} {n}x{d} single row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn computed_distances_lie_within_their_error_bound() {
        // Against an exact f64 reference, at LLM weight scale and with a large common offset
        // (where `||x||^2 - 2 x.c + ||c||^2` cancels the most). The bound must hold for every
        // entry, and not be vacuous: well below the distances themselves at weight scale.
        for kernel in KERNELS {
            for (d, scale, offset) in [(4096, 0.02, 0.0), (1000, 1.0, 0.0), (257, 0.5, 20.0), (33, 1e-3, 0.0)]
            {
                let n = 40;
                let x: Vec<f32> =
                    data(n, d, 7919, 1000, 500.0, 1.0).iter().map(|v| offset + scale * v).collect();
                let c: Vec<f32> =
                    data(5, d, 104729, 997, 400.0, 1.2).iter().map(|v| offset + 0.5 * scale * v).collect();
                let xm = RowMatrix::new(&x, n, d).unwrap();
                let norms = row_sq_norms(xm);
                let prepared = Prepared::new(&c, d, kernel);
                let got = prepared.all(xm, &norms);
                for i in 0..n {
                    for j in 0..5 {
                        let want = sq_dist_exact(xm.row(i), &c[j * d..(j + 1) * d]);
                        let bound = prepared.error_bound(norms[i], norms[i].sqrt(), j);
                        let err = (got[i * 5 + j] - want).abs();
                        assert!(
                            err <= bound,
                            "{kernel:?} d {d} offset {offset}: error {err:e} above {bound:e}"
                        );
                        if offset == 0.0 {
                            assert!(bound < 1e-2 * want, "{kernel:?} d {d}: bound {bound:e} vs {want:e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn both_kernels_give_the_direct_distances() {
        let (n, d, m) = (517, 300, 11);
        let x = data(n, d, 7919, 1000, 500.0, 1.0);
        let c = data(m, d, 104729, 997, 400.0, 1.2);
        let xm = RowMatrix::new(&x, n, d).unwrap();
        let norms = row_sq_norms(xm);
        for kernel in KERNELS {
            let got = sq_distances_with(xm, &norms, &c, kernel);
            for i in 0..n {
                for j in 0..m {
                    let want = sq_dist_exact(xm.row(i), &c[j * d..(j + 1) * d]);
                    assert!((got[i * m + j] - want).abs() <= 1e-5 * (1.0 + want), "{kernel:?} {i} {j}");
                }
            }
        }
    }

    #[test]
    fn adding_then_removing_a_row_restores_the_sum() {
        let row: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let mut acc: Vec<f64> = (0..19).map(|i| f64::from(i) * 0.5).collect();
        let before = acc.clone();
        accumulate_row_f64(&mut acc, &row, 1.0);
        assert!(acc.iter().zip(&before).zip(&row).all(|((a, b), &r)| *a == b + f64::from(r)));
        accumulate_row_f64(&mut acc, &row, -1.0);
        assert_eq!(acc, before);
    }
}
