//! Squared Euclidean distances between rows and centres through a GEMM:
//! `||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`.
//!
//! The dot products run in `f32` through `matrixmultiply`'s packed kernels; the norms and the
//! assembly run in `f64`. Rows are split into fixed chunks computed in parallel: each row's result
//! depends only on that row, so the output is bit-identical whatever the number of threads.

use rayon::prelude::*;

use crate::RowMatrix;

/// Rows per parallel task.
const CHUNK_ROWS: usize = 256;

/// `||x_i||^2` for every row, in `f64`.
pub fn row_sq_norms(x: RowMatrix<'_>) -> Vec<f64> {
    (0..x.rows()).into_par_iter().map(|i| sq_norm(x.row(i))).collect()
}

/// `||v||^2` in `f64`.
pub fn sq_norm(v: &[f32]) -> f64 {
    v.iter().map(|&a| f64::from(a) * f64::from(a)).sum()
}

/// Exact `||a - b||^2`, accumulated in `f64` (used where exactness matters more than speed).
pub fn sq_dist_exact(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| {
            let d = f64::from(p) - f64::from(q);
            d * d
        })
        .sum()
}

/// `out[i * m + j] = ||x_i - c_j||^2` for the `m` centres in `centers` (row-major, `m x d`),
/// clamped at zero. `x_norms` are [`row_sq_norms`] of `x`.
pub fn sq_distances(x: RowMatrix<'_>, x_norms: &[f64], centers: &[f32]) -> Vec<f64> {
    let d = x.cols();
    let m = centers.len() / d;
    let c_norms: Vec<f64> = centers.chunks_exact(d).map(sq_norm).collect();
    let mut out = vec![0.0f64; x.rows() * m];
    out.par_chunks_mut(CHUNK_ROWS * m).enumerate().for_each(|(chunk, out)| {
        let r0 = chunk * CHUNK_ROWS;
        let rows = out.len() / m;
        let mut dots = vec![0.0f32; rows * m];
        let a = &x.data()[r0 * d..(r0 + rows) * d];
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
        for (r, (o, dot)) in out.chunks_exact_mut(m).zip(dots.chunks_exact(m)).enumerate() {
            let xn = x_norms[r0 + r];
            for j in 0..m {
                o[j] = (xn - 2.0 * f64::from(dot[j]) + c_norms[j]).max(0.0);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_distances_match_direct_ones() {
        let (n, d, m) = (700, 37, 5);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let c: Vec<f32> = (0..m * d).map(|i| ((i * 104729) % 997) as f32 / 400.0 - 1.2).collect();
        let xm = RowMatrix::new(&x, n, d).unwrap();
        let got = sq_distances(xm, &row_sq_norms(xm), &c);
        for i in 0..n {
            for j in 0..m {
                let want = sq_dist_exact(xm.row(i), &c[j * d..(j + 1) * d]);
                assert!((got[i * m + j] - want).abs() <= 1e-5 * (1.0 + want), "{i} {j}");
            }
        }
    }
}
