//! Row-by-centre dot products for the distance pass, reading the data in place (AVX-512F).
//!
//! The distance pass multiplies a tall matrix (`n x d`, the weight rows, read once per Lloyd
//! iteration) by a few centres (`m = n_init * k`, 4 to 40 of them). A general GEMM copies the tall
//! operand into packed panels before multiplying: with `matrixmultiply` that copy was 42% of a
//! 4096 x 4096 `n_init = 1` run's samples (23% at `n_init = 10`), a second pass over the data.
//! Here each tile of rows is read where it lies, in depth blocks that stay in L1 while every
//! centre passes over them, so the data is read from memory exactly once per pass.
//!
//! Every `(row, centre)` pair owns one 16-lane accumulator that takes `acc = x * c + acc` (one
//! rounding, FMA) over the depth in increasing order, then one fixed horizontal sum. Which tile a
//! pair falls in, how many centres share the call and how many threads run decide nothing, so an
//! entry is bit-identical whatever else is in the batch: k-means's lockstep restarts rely on it
//! (see [`crate::distance`]).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows per register tile.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 4;
/// Centres per register tile: `ROWS * CENTRES` accumulators, plus the row vectors and one centre
/// vector, fit AVX-512's 32 registers.
#[cfg(target_arch = "x86_64")]
const CENTRES: usize = 6;
/// Depth block in floats. A row tile's block (4 x 1 KiB) and the accumulators of 40 centres
/// (10 KiB) stay in L1 while the centres' blocks stream past from L2.
#[cfg(target_arch = "x86_64")]
const DEPTH: usize = 256;

/// Whether this CPU runs [`Centres::dots`] (x86-64 with AVX-512F, detected at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Centres laid out for [`Centres::dots`]: depth block by depth block, each block holding every
/// centre's piece of it contiguously. Row-major centres of a 4096-wide matrix sit 16 KiB apart,
/// so the pieces a tile reads at one depth would all map to the same L1 set; packed, they sit one
/// block apart. Built once per distance pass.
#[derive(Debug, Clone)]
pub struct Centres {
    packed: Vec<f32>,
    m: usize,
    d: usize,
}

impl Centres {
    /// Packs `m` row-major centres of depth `d` (`centers.len() == m * d`); `None` if the length
    /// does not match.
    pub fn new(centers: &[f32], m: usize, d: usize) -> Option<Self> {
        if m.checked_mul(d) != Some(centers.len()) {
            return None;
        }
        let mut packed = Vec::with_capacity(centers.len());
        let mut p0 = 0;
        while p0 < d {
            let len = (d - p0).min(DEPTH);
            for row in centers.chunks_exact(d) {
                packed.extend_from_slice(&row[p0..p0 + len]);
            }
            p0 += len;
        }
        Some(Self { packed, m, d })
    }

    /// `out[i * m + j] = a_i . c_j` for the `rows x d` row-major `a`. Returns `false`, touching
    /// nothing, where [`available`] is false or a slice's length does not match the shapes.
    ///
    /// ```
    /// use idlora_cluster::dots::Centres;
    /// let a = [1.0f32, 2.0, 3.0, 4.0]; // two rows of depth 2
    /// let c = Centres::new(&[1.0, 1.0, 0.0, 1.0], 2, 2).unwrap(); // two centres
    /// let mut out = [0.0f32; 4];
    /// if c.dots(&a, 2, &mut out) {
    ///     assert_eq!(out, [3.0, 2.0, 7.0, 4.0]);
    /// }
    /// ```
    pub fn dots(&self, a: &[f32], rows: usize, out: &mut [f32]) -> bool {
        let shapes_match =
            rows.checked_mul(self.d) == Some(a.len()) && rows.checked_mul(self.m) == Some(out.len());
        if !available() || !shapes_match {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected above, and the slices hold exactly the shapes' elements.
        unsafe {
            dots_avx512(Rows::Contiguous(a.as_ptr(), self.d), rows, self, out);
        }
        true
    }

    /// `out[t * m + j] = x_{rows[t]} . c_j` for the listed rows of the row-major `data` (rows of
    /// depth `d`), read where they lie; each entry bit for bit as [`Centres::dots`] gives it.
    /// Returns `false`, touching nothing, where [`available`] is false, `out` does not hold
    /// `rows.len() * m` values or a row lies past the end of `data`.
    ///
    /// ```
    /// use idlora_cluster::dots::Centres;
    /// let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // three rows of depth 2
    /// let c = Centres::new(&[1.0, 1.0], 1, 2).unwrap(); // one centre
    /// let mut out = [0.0f32; 2];
    /// if c.dots_rows(&data, &[2, 0], &mut out) {
    ///     assert_eq!(out, [11.0, 3.0]);
    /// }
    /// ```
    pub fn dots_rows(&self, data: &[f32], rows: &[u32], out: &mut [f32]) -> bool {
        let d = self.d;
        let inside = rows.iter().all(|&i| {
            (i as usize).checked_add(1).and_then(|e| e.checked_mul(d)).is_some_and(|e| e <= data.len())
        });
        if !available() || !inside || rows.len().checked_mul(self.m) != Some(out.len()) {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected above; every listed row lies inside `data`, and `out`
        // holds the shapes' elements.
        unsafe {
            dots_avx512(Rows::Indexed(data.as_ptr(), d, rows), rows.len(), self, out);
        }
        true
    }
}

/// Where the rows of a call lie.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Row `t` at `base + t d`.
    Contiguous(*const f32, usize),
    /// Row `t` at `base + rows[t] d`.
    Indexed(*const f32, usize, &'a [u32]),
}

#[cfg(target_arch = "x86_64")]
impl Rows<'_> {
    /// Start of row `t`, offset by `p` floats (pointer arithmetic only: in bounds by the callers'
    /// checks).
    fn at(self, t: usize, p: usize) -> *const f32 {
        match self {
            Rows::Contiguous(base, d) => base.wrapping_add(t * d + p),
            Rows::Indexed(base, d, rows) => base.wrapping_add(rows[t] as usize * d + p),
        }
    }
}

/// # Safety
/// The CPU supports AVX-512F; `a` holds `rows` rows of depth `d` and `out` `rows * m` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512(a: Rows<'_>, rows: usize, centres: &Centres, out: &mut [f32]) {
    let (m, d) = (centres.m, centres.d);
    let mut acc = vec![_mm512_setzero_ps(); ROWS * m];
    let mut r0 = 0;
    while r0 < rows {
        let rt = (rows - r0).min(ROWS);
        acc.fill(_mm512_setzero_ps());
        let mut p0 = 0;
        while p0 < d {
            let len = (d - p0).min(DEPTH);
            let mut c0 = 0;
            while c0 < m {
                let ct = (m - c0).min(CENTRES);
                // SAFETY: rows r0..r0+rt and centres c0..c0+ct exist, depth p0..p0+len is inside
                // d (the packed block at p0 * m holds m pieces of len), and `acc` holds
                // ROWS * m accumulators (row r's at r * m).
                unsafe {
                    let mut x = [a.at(r0, p0); ROWS];
                    for (r, p) in x.iter_mut().enumerate().take(rt) {
                        *p = a.at(r0 + r, p0);
                    }
                    let c = centres.packed.as_ptr().add(p0 * m + c0 * len);
                    let acc = acc.as_mut_ptr().add(c0);
                    tile(rt, ct, &x, (c, len), len, (acc, m));
                }
                c0 += ct;
            }
            p0 += len;
        }
        for (r, row) in out[r0 * m..(r0 + rt) * m].chunks_exact_mut(m).enumerate() {
            for (o, v) in row.iter_mut().zip(&acc[r * m..(r + 1) * m]) {
                *o = _mm512_reduce_add_ps(*v);
            }
        }
        r0 += rt;
    }
}

/// Dispatches a tile of `rt x ct` to the kernel compiled for that size.
///
/// # Safety
/// As [`tile_kernel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    rt: usize,
    ct: usize,
    x: &[*const f32; ROWS],
    c: (*const f32, usize),
    len: usize,
    acc: (*mut __m512, usize),
) {
    macro_rules! dispatch {
        ($($r:literal => [$($c:literal),*]),*) => {
            match (rt, ct) {
                $($(($r, $c) => unsafe { tile_kernel::<$r, $c>(x, c, len, acc) },)*)*
                _ => unreachable!("tile sizes are at most {ROWS} x {CENTRES}"),
            }
        };
    }
    dispatch!(
        1 => [1, 2, 3, 4, 5, 6],
        2 => [1, 2, 3, 4, 5, 6],
        3 => [1, 2, 3, 4, 5, 6],
        4 => [1, 2, 3, 4, 5, 6]
    )
}

/// `acc[r * acc_ld + j] += x_r[0..len] * c_j[0..len]` lane-wise for `R` rows and `C` centres,
/// the accumulators held in registers over the block. `x` holds the rows' pointers; `c` and
/// `acc` are (pointer, stride).
///
/// # Safety
/// AVX-512F; the first `R` pointers of `x` and the `C` rows of `c` have `len` readable floats
/// each; `acc` points at `R` rows of its stride with `C` accumulators each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_kernel<const R: usize, const C: usize>(
    x: &[*const f32; ROWS],
    (c, cld): (*const f32, usize),
    len: usize,
    (acc, acc_ld): (*mut __m512, usize),
) {
    // SAFETY (whole body): every pointer formed stays inside the rows the caller vouched for.
    // Plain loops over the const sizes, no closures: a closure is not compiled with this
    // function's target features unless inlined, and in the dev profile it may not be.
    unsafe {
        let mut xr = [x[0]; R];
        for (r, p) in xr.iter_mut().enumerate() {
            *p = x[r];
        }
        let mut cr = [c; C];
        for (j, p) in cr.iter_mut().enumerate() {
            *p = c.wrapping_add(j * cld);
        }
        let mut s = [[_mm512_setzero_ps(); C]; R];
        for (r, row) in s.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = load(acc.wrapping_add(r * acc_ld + j).cast::<f32>());
            }
        }
        let mut xs = [_mm512_setzero_ps(); R];
        let full = len & !15;
        let mut off = 0;
        while off < full {
            for r in 0..R {
                xs[r] = load(xr[r].wrapping_add(off));
            }
            for j in 0..C {
                let cv = load(cr[j].wrapping_add(off));
                for r in 0..R {
                    s[r][j] = _mm512_fmadd_ps(xs[r], cv, s[r][j]);
                }
            }
            off += 16;
        }
        let rest = len - full;
        if rest != 0 {
            // Masked loads read zeros past the end, and `0 * 0 + acc` leaves acc as it was.
            let mask: __mmask16 = (1u16 << rest) - 1;
            for r in 0..R {
                xs[r] = _mm512_maskz_loadu_ps(mask, xr[r].wrapping_add(full));
            }
            for j in 0..C {
                let cv = _mm512_maskz_loadu_ps(mask, cr[j].wrapping_add(full));
                for r in 0..R {
                    s[r][j] = _mm512_fmadd_ps(xs[r], cv, s[r][j]);
                }
            }
        }
        for (r, row) in s.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(acc.wrapping_add(r * acc_ld + j).cast::<f32>(), !0, *v);
            }
        }
    }
}

/// An unaligned 16-float load. A masked load with every lane set is the same instruction as a
/// plain one, but it compiles to the instruction itself even in the dev profile, where the plain
/// intrinsic's `read_unaligned` carries debug UB checks that route every vector through the
/// stack (measured: the 4 x 6 kernel at a third of its speed).
///
/// # Safety
/// AVX-512F; 16 floats readable at `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load(p: *const f32) -> __m512 {
    // SAFETY: as the caller vouches.
    unsafe { _mm512_maskz_loadu_ps(!0, p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, mult: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| ((i * mult) % 1009) as f32 / scale - 1.0).collect()
    }

    #[test]
    fn dots_match_an_f64_loop_at_ragged_shapes() {
        if !available() {
            eprintln!("no AVX-512F here: the kernel is not run");
            return;
        }
        for (rows, d, m) in
            [(1, 1, 1), (7, 15, 5), (9, 17, 13), (4, 256, 6), (5, 257, 7), (13, 600, 40), (3, 1000, 1)]
        {
            let a = data(rows * d, 7919, 500.0);
            let c = data(m * d, 104729, 400.0);
            let mut out = vec![f32::NAN; rows * m];
            assert!(Centres::new(&c, m, d).unwrap().dots(&a, rows, &mut out));
            for i in 0..rows {
                for j in 0..m {
                    let want: f64 = (0..d).map(|p| f64::from(a[i * d + p]) * f64::from(c[j * d + p])).sum();
                    let scale: f64 = (0..d).map(|p| f64::from(a[i * d + p] * c[j * d + p]).abs()).sum();
                    let got = f64::from(out[i * m + j]);
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + scale),
                        "{rows}x{d}x{m} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn listed_rows_give_the_contiguous_entries_bit_for_bit() {
        if !available() {
            eprintln!("no AVX-512F here: the kernel is not run");
            return;
        }
        let (n, d, m) = (23, 530, 9);
        let a = data(n * d, 7919, 500.0);
        let c = Centres::new(&data(m * d, 104729, 400.0), m, d).unwrap();
        let mut all = vec![0.0f32; n * m];
        assert!(c.dots(&a, n, &mut all));
        let rows = [22u32, 0, 7, 7, 3, 19, 1];
        let mut out = vec![f32::NAN; rows.len() * m];
        assert!(c.dots_rows(&a, &rows, &mut out));
        for (t, &i) in rows.iter().enumerate() {
            for j in 0..m {
                assert_eq!(out[t * m + j].to_bits(), all[i as usize * m + j].to_bits(), "row {i} centre {j}");
            }
        }
        assert!(!c.dots_rows(&a, &[23], &mut out[..m]), "a row past the end was read");
        assert!(!c.dots_rows(&a, &[1, 2], &mut out[..m]), "a short output was written");
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let mut out = [0.0f32; 2];
        assert!(Centres::new(&[1.0; 3], 1, 2).is_none());
        let c = Centres::new(&[1.0; 2], 1, 2).unwrap();
        assert!(!c.dots(&[1.0; 4], 2, &mut out[..1]));
        assert!(!c.dots(&[1.0; 3], 2, &mut out));
    }
}
