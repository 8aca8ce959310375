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
        if m <= SMALL_M {
            small_m_dots(a, d, centers, &mut dots);
        } else {
            gemm_dots(a, rows, d, centers, m, &mut dots);
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

/// Up to this many centres, a streaming kernel beats a packed GEMM: with `m` this small the GEMM
/// spends its time packing `x`, while the kernel reads each row once and keeps it in L1.
const SMALL_M: usize = 16;

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

/// `dots[r * m + j] = a_r . c_j` row by row, with the AVX2+FMA build of the loop where the CPU
/// has it (decided at run time, so one binary serves every x86-64 machine).
fn small_m_dots(a: &[f32], d: usize, centers: &[f32], dots: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { small_m_dots_avx2(a, d, centers, dots) };
            return;
        }
    }
    small_m_dots_portable(a, d, centers, dots);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn small_m_dots_avx2(a: &[f32], d: usize, centers: &[f32], dots: &mut [f32]) {
    small_m_dots_portable(a, d, centers, dots);
}

#[inline(always)]
fn small_m_dots_portable(a: &[f32], d: usize, centers: &[f32], dots: &mut [f32]) {
    let m = centers.len() / d;
    for (row, out) in a.chunks_exact(d).zip(dots.chunks_exact_mut(m)) {
        for (c, o) in centers.chunks_exact(d).zip(out.iter_mut()) {
            *o = dot(row, c);
        }
    }
}

/// `acc += row`, widening to `f64` (the update step's inner loop), AVX2 where available.
pub fn add_row_f64(acc: &mut [f64], row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature the function is compiled for.
            unsafe { add_row_f64_avx2(acc, row) };
            return;
        }
    }
    add_row_f64_portable(acc, row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_row_f64_avx2(acc: &mut [f64], row: &[f32]) {
    add_row_f64_portable(acc, row);
}

#[inline(always)]
fn add_row_f64_portable(acc: &mut [f64], row: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += f64::from(v);
    }
}

/// A dot product with 16 independent partial sums, so the compiler can vectorise it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ac, at) = a.split_at(a.len() / L * L);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(L).zip(bc.chunks_exact(L)) {
        for l in 0..L {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in at.iter().zip(bt) {
        tail = x.mul_add(*y, tail);
    }
    acc.iter().sum::<f32>() + tail
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
        let mut gemm = vec![0.0f32; n * m];
        gemm_dots(&x, n, d, &c, m, &mut gemm);
        let mut small = vec![0.0f32; n * m];
        small_m_dots_portable(&x, d, &c, &mut small);
        for (g, s) in gemm.iter().zip(&small) {
            assert!((g - s).abs() <= 1e-4 * (1.0 + g.abs()));
        }
        for i in 0..n {
            for j in 0..m {
                let want = sq_dist_exact(xm.row(i), &c[j * d..(j + 1) * d]);
                assert!((got[i * m + j] - want).abs() <= 1e-5 * (1.0 + want), "{i} {j}");
            }
        }
    }
}
