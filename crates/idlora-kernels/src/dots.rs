//! Row-by-centre dot products for the distance pass, reading the data in place (AVX-512F, or
//! AVX2 with FMA).
//!
//! The distance pass multiplies a tall matrix (`n x d`, the weight rows, read once per Lloyd
//! iteration) by a few centres (`m = n_init * k`, 4 to 40 of them). A general GEMM copies the tall
//! operand into packed panels before multiplying: with `matrixmultiply` that copy was 42% of a
//! 4096 x 4096 `n_init = 1` run's samples (23% at `n_init = 10`), a second pass over the data.
//! Here each tile of rows is read where it lies, in depth blocks that stay in L1 while every
//! centre passes over them, so the data is read from memory exactly once per pass.
//!
//! Every `(row, centre)` pair owns one vector accumulator (16 lanes with AVX-512, 8 with AVX2)
//! that takes `acc = x * c + acc` (one rounding, FMA) over the depth in increasing order, then one
//! fixed horizontal sum. Which tile a pair falls in, how many centres share the call and how many
//! threads run decide nothing, so an entry is bit-identical whatever else is in the batch:
//! k-means's lockstep restarts rely on it (see [`crate::distance`]). The two instruction sets
//! round differently; one machine always uses the same one.
//!
//! Both kernels come from one body (the `in_place_kernel` macro) over each instruction set's handful of
//! vector operations, so they cannot drift apart.

pub use crate::isa::Isa;

/// Depth block in floats, a multiple of [`Isa::lanes`]: a block of 40 centres' pieces (40 KiB
/// at AVX-512's 256, 20 KiB at AVX2's 128) and a row tile's stay in or near L1 while a panel's
/// rows pass over them. AVX2 at 256 measured 42 against 51 GFLOP/s for 128 (one core, 40
/// centres).
fn depth(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 256,
        Isa::Avx2 => 128,
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
    isa: Option<Isa>,
}

impl Centres {
    /// Packs `m` row-major centres of depth `d` (`centers.len() == m * d`) for this CPU's
    /// instruction set; `None` if the length does not match.
    pub fn new(centers: &[f32], m: usize, d: usize) -> Option<Self> {
        Self::with_isa(centers, m, d, crate::isa::detect())
    }

    /// [`Centres::new`] for a chosen instruction set (`None`: the kernel is not used). Choosing
    /// one the CPU lacks is refused (`None`), so [`Centres::dots`] never runs an instruction the
    /// CPU does not have.
    pub fn with_isa(centers: &[f32], m: usize, d: usize, isa: Option<Isa>) -> Option<Self> {
        if m.checked_mul(d) != Some(centers.len()) || isa.is_some_and(|i| !i.supported()) {
            return None;
        }
        let depth = isa.map_or(d.max(1), depth);
        let mut packed = Vec::with_capacity(centers.len());
        let mut p0 = 0;
        while p0 < d {
            let len = (d - p0).min(depth);
            for row in centers.chunks_exact(d) {
                packed.extend_from_slice(&row[p0..p0 + len]);
            }
            p0 += len;
        }
        Some(Self { packed, m, d, isa })
    }

    /// The instruction set [`Centres::dots`] runs on, `None` where it computes nothing.
    pub fn isa(&self) -> Option<Isa> {
        self.isa
    }

    /// `out[i * m + j] = a_i . c_j` for the `rows x d` row-major `a`. Returns `false`, touching
    /// nothing, where no instruction set was chosen (see [`crate::isa::detect`]) or a slice's length does not
    /// match the shapes.
    ///
    /// ```
    /// use idlora_kernels::dots::Centres;
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
        shapes_match && self.run(Rows::Contiguous(a.as_ptr(), self.d), rows, out)
    }

    /// `out[t * m + j] = x_{rows[t]} . c_j` for the listed rows of the row-major `data` (rows of
    /// depth `d`), read where they lie; each entry bit for bit as [`Centres::dots`] gives it.
    /// Returns `false`, touching nothing, where no instruction set was chosen, `out` does not
    /// hold `rows.len() * m` values or a row lies past the end of `data`.
    ///
    /// ```
    /// use idlora_kernels::dots::Centres;
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
        inside
            && rows.len().checked_mul(self.m) == Some(out.len())
            && self.run(Rows::Indexed(data.as_ptr(), d, rows), rows.len(), out)
    }

    /// Runs the chosen kernel over rows the caller checked (`rows` of depth `d`, `out` holding
    /// `rows * m`); `false` where none was chosen.
    fn run(&self, a: Rows<'_>, rows: usize, out: &mut [f32]) -> bool {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_isa` admits an instruction set only where the CPU has it; the rows
            // and `out` hold the shapes' elements, as the callers checked.
            Some(Isa::Avx512) => unsafe { avx512::dots(a, rows, self, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Some(Isa::Avx2) => unsafe { avx2::dots(a, rows, self, out) },
            _ => return false,
        }
        true
    }
}

/// Where the rows of a call lie.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Row `t` at `base + t d`.
    Contiguous(*const f32, usize),
    /// Row `t` at `base + rows[t] d`.
    Indexed(*const f32, usize, &'a [u32]),
}

impl Rows<'_> {
    /// Start of row `t`, offset by `p` floats (pointer arithmetic only: in bounds by the callers'
    /// checks).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn at(self, t: usize, p: usize) -> *const f32 {
        match self {
            Rows::Contiguous(base, d) => base.wrapping_add(t * d + p),
            Rows::Indexed(base, d, rows) => base.wrapping_add(rows[t] as usize * d + p),
        }
    }
}

/// The kernel's body, written once over an instruction set `ISA` (whose depth blocks it uses),
/// its vector type `V` of `LANES` floats, its tile sizes `ROWS x CENTRES`, its panel height
/// `PANEL`, and its operations `zero`, `load`, `load_first` (the first `rest` floats, zeros
/// after), `fmadd` and `reduce` (a fixed-order horizontal sum), all in the invoking module;
/// `$feature` is the `target_feature` they need.
///
/// Rows go in panels of `PANEL` (a few tiles): each depth block serves every row tile of the
/// panel before the next block, so the block's centre pieces stay in L1 while the panel's rows
/// pass over them and the centres are read from L2 or L3 once per panel rather than once per row
/// tile. (40 centres of a 4096-wide matrix, 655 KB, do not fit a 512 KiB L2: streamed from L3
/// once per tile of two rows they halved the AVX2 kernel's speed, 23 against 51 GFLOP/s on one
/// core.)
#[cfg(target_arch = "x86_64")]
macro_rules! in_place_kernel {
    ($feature:literal, { $($r:literal => [$($c:literal),*]),* }) => {
        /// # Safety
        /// The CPU has the module's instruction set; `a` holds `rows` rows of depth `d` and
        /// `out` `rows * m` elements.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn dots(a: Rows<'_>, rows: usize, centres: &Centres, out: &mut [f32]) {
            let (m, d) = (centres.m, centres.d);
            // A panel's accumulators; row `t` of the panel holds its `m` at `t * m`.
            let mut acc = vec![zero(); PANEL * m];
            let mut r0 = 0;
            while r0 < rows {
                let pr = (rows - r0).min(PANEL);
                acc.fill(zero());
                let mut p0 = 0;
                while p0 < d {
                    let len = (d - p0).min(super::depth(ISA));
                    let mut t0 = 0;
                    while t0 < pr {
                        let rt = (pr - t0).min(ROWS);
                        // SAFETY: rows r0+t0..r0+t0+rt exist (t0 + rt <= pr), depth p0..p0+len
                        // is inside d (the packed block at p0 * m holds m pieces of len), and
                        // `acc` holds PANEL * m accumulators.
                        unsafe {
                            let mut x = [a.at(r0 + t0, p0); ROWS];
                            for (r, p) in x.iter_mut().enumerate().take(rt) {
                                *p = a.at(r0 + t0 + r, p0);
                            }
                            let mut c0 = 0;
                            while c0 < m {
                                let ct = (m - c0).min(CENTRES);
                                let c = centres.packed.as_ptr().add(p0 * m + c0 * len);
                                let acc = acc.as_mut_ptr().add(t0 * m + c0);
                                tile(rt, ct, &x, (c, len), len, (acc, m));
                                c0 += ct;
                            }
                        }
                        t0 += rt;
                    }
                    p0 += len;
                }
                for (t, row) in out[r0 * m..(r0 + pr) * m].chunks_exact_mut(m).enumerate() {
                    for (o, v) in row.iter_mut().zip(&acc[t * m..(t + 1) * m]) {
                        *o = reduce(*v);
                    }
                }
                r0 += pr;
            }
        }

        /// Dispatches a tile of `rt x ct` to the kernel compiled for that size.
        ///
        /// # Safety
        /// As [`tile_kernel`].
        #[target_feature(enable = $feature)]
        unsafe fn tile(
            rt: usize,
            ct: usize,
            x: &[*const f32; ROWS],
            c: (*const f32, usize),
            len: usize,
            acc: (*mut V, usize),
        ) {
            match (rt, ct) {
                $($(($r, $c) => unsafe { tile_kernel::<$r, $c>(x, c, len, acc) },)*)*
                _ => unreachable!("tile sizes are at most {ROWS} x {CENTRES}"),
            }
        }

        /// `acc[r * acc_ld + j] += x_r[0..len] * c_j[0..len]` lane-wise for `R` rows and `C`
        /// centres, the accumulators held in registers over the block. `x` holds the rows'
        /// pointers; `c` and `acc` are (pointer, stride).
        ///
        /// # Safety
        /// The module's instruction set; the first `R` pointers of `x` and the `C` rows of `c`
        /// have `len` readable floats each; `acc` points at `R` rows of its stride with `C`
        /// accumulators each.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn tile_kernel<const R: usize, const C: usize>(
            x: &[*const f32; ROWS],
            (c, cld): (*const f32, usize),
            len: usize,
            (acc, acc_ld): (*mut V, usize),
        ) {
            // SAFETY (whole body): every pointer formed stays inside the rows the caller vouched
            // for. Plain loops over the const sizes, no closures: a closure is not compiled with
            // this function's target features unless inlined, and in the dev profile it may not
            // be.
            unsafe {
                let mut xr = [x[0]; R];
                for (r, p) in xr.iter_mut().enumerate() {
                    *p = x[r];
                }
                let mut cr = [c; C];
                for (j, p) in cr.iter_mut().enumerate() {
                    *p = c.wrapping_add(j * cld);
                }
                let mut s = [[zero(); C]; R];
                for (r, row) in s.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = acc.wrapping_add(r * acc_ld + j).read();
                    }
                }
                let mut xs = [zero(); R];
                let full = len - len % LANES;
                let mut off = 0;
                while off < full {
                    for r in 0..R {
                        xs[r] = load(xr[r].wrapping_add(off));
                    }
                    for j in 0..C {
                        let cv = load(cr[j].wrapping_add(off));
                        for r in 0..R {
                            s[r][j] = fmadd(xs[r], cv, s[r][j]);
                        }
                    }
                    off += LANES;
                }
                let rest = len - full;
                if rest != 0 {
                    // The partial loads read zeros past the end, and `0 * 0 + acc` leaves acc as
                    // it was.
                    for r in 0..R {
                        xs[r] = load_first(xr[r].wrapping_add(full), rest);
                    }
                    for j in 0..C {
                        let cv = load_first(cr[j].wrapping_add(full), rest);
                        for r in 0..R {
                            s[r][j] = fmadd(xs[r], cv, s[r][j]);
                        }
                    }
                }
                for (r, row) in s.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        acc.wrapping_add(r * acc_ld + j).write(*v);
                    }
                }
            }
        }
    };
}

/// AVX-512F: 4 x 6 accumulators, 4 row vectors and one centre vector fit its 32 registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Centres, Isa, Rows};
    use crate::simd::avx512::{LANES, V, fmadd, load, load_part, mask, reduce, zero};

    const ISA: Isa = Isa::Avx512;
    const ROWS: usize = 4;
    const CENTRES: usize = 6;
    /// Rows per panel (see the macro).
    const PANEL: usize = 16;

    in_place_kernel!("avx512f", {
        1 => [1, 2, 3, 4, 5, 6],
        2 => [1, 2, 3, 4, 5, 6],
        3 => [1, 2, 3, 4, 5, 6],
        4 => [1, 2, 3, 4, 5, 6]
    });

    /// The first `rest` (< 16) floats at `p`, zeros after.
    ///
    /// # Safety
    /// `rest` floats readable at `p`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_first(p: *const f32, rest: usize) -> V {
        // SAFETY: as the caller vouches; masked-off lanes are not read.
        unsafe { load_part(p, mask(rest)) }
    }
}

/// AVX2 with FMA: 3 x 4 accumulators and 3 row vectors take 15 of its 16 registers, the centre
/// vectors loaded one at a time into the last (no spills in the loop). Measured on a Zen 3 core
/// at 40 centres: 57 GFLOP/s, against 51 for 2 x 6 tiles.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Centres, Isa, Rows};
    use crate::simd::avx2::{LANES, V, fmadd, load, load_part, mask, reduce, zero};

    const ISA: Isa = Isa::Avx2;
    const ROWS: usize = 3;
    const CENTRES: usize = 4;
    /// Rows per panel (see the macro).
    const PANEL: usize = 12;

    in_place_kernel!("avx2,fma", {
        1 => [1, 2, 3, 4],
        2 => [1, 2, 3, 4],
        3 => [1, 2, 3, 4]
    });

    /// The first `rest` (< 8) floats at `p`, zeros after.
    ///
    /// # Safety
    /// `rest` floats readable at `p`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_first(p: *const f32, rest: usize) -> V {
        // SAFETY: as the caller vouches; masked-off lanes are not read and do not fault.
        unsafe { load_part(p, mask(rest)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, mult: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| ((i * mult) % 1009) as f32 / scale - 1.0).collect()
    }

    /// The instruction sets this CPU can run (each is tested where present).
    fn kernels_here() -> Vec<Isa> {
        let here = crate::isa::available();
        if here.is_empty() {
            eprintln!("neither AVX-512F nor AVX2 with FMA here: the kernels are not run");
        }
        here
    }

    /// The kernel's arithmetic written out: lane `l` of `lanes` takes the products at depths
    /// `p = l mod lanes` in increasing order by fused multiply-adds from zero (depth blocks are
    /// multiples of the lane count, so the block and tile structure does not change which lane a
    /// depth falls in), then the lanes are added pairwise, halving: `s_i + s_{i + lanes/2}`.
    fn emulated(x: &[f32], c: &[f32], lanes: usize) -> f32 {
        let mut s = vec![0.0f32; lanes];
        for (p, (&a, &b)) in x.iter().zip(c).enumerate() {
            s[p % lanes] = a.mul_add(b, s[p % lanes]);
        }
        while s.len() > 1 {
            let half = s.len() / 2;
            s = (0..half).map(|i| s[i] + s[i + half]).collect();
        }
        s[0]
    }

    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (7, 15, 5),
        (9, 17, 13),
        (4, 256, 6),
        (5, 257, 7),
        (13, 600, 40),
        (3, 1000, 1),
        (6, 520, 11),
    ];

    #[test]
    fn dots_match_an_f64_loop_at_ragged_shapes() {
        for isa in kernels_here() {
            for (rows, d, m) in SHAPES {
                let a = data(rows * d, 7919, 500.0);
                let c = data(m * d, 104729, 400.0);
                let mut out = vec![f32::NAN; rows * m];
                assert!(Centres::with_isa(&c, m, d, Some(isa)).unwrap().dots(&a, rows, &mut out));
                for i in 0..rows {
                    for j in 0..m {
                        let want: f64 =
                            (0..d).map(|p| f64::from(a[i * d + p]) * f64::from(c[j * d + p])).sum();
                        let scale: f64 = (0..d).map(|p| f64::from(a[i * d + p] * c[j * d + p]).abs()).sum();
                        let got = f64::from(out[i * m + j]);
                        assert!(
                            (got - want).abs() <= 1e-6 * (1.0 + scale),
                            "{isa:?} {rows}x{d}x{m} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_entry_is_the_written_out_rounding_sequence_bit_for_bit() {
        // The distance module's error bound assumes exactly these chains; a reordering that kept
        // the f64 comparison above within tolerance would still fail here.
        for isa in kernels_here() {
            for (rows, d, m) in SHAPES {
                let a = data(rows * d, 7919, 500.0);
                let c = data(m * d, 104729, 400.0);
                let mut out = vec![f32::NAN; rows * m];
                assert!(Centres::with_isa(&c, m, d, Some(isa)).unwrap().dots(&a, rows, &mut out));
                for i in 0..rows {
                    for j in 0..m {
                        let want = emulated(&a[i * d..(i + 1) * d], &c[j * d..(j + 1) * d], isa.lanes());
                        assert_eq!(
                            out[i * m + j].to_bits(),
                            want.to_bits(),
                            "{isa:?} {rows}x{d}x{m} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn listed_rows_give_the_contiguous_entries_bit_for_bit() {
        for isa in kernels_here() {
            let (n, d, m) = (23, 530, 9);
            let a = data(n * d, 7919, 500.0);
            let c = Centres::with_isa(&data(m * d, 104729, 400.0), m, d, Some(isa)).unwrap();
            let mut all = vec![0.0f32; n * m];
            assert!(c.dots(&a, n, &mut all));
            let rows = [22u32, 0, 7, 7, 3, 19, 1];
            let mut out = vec![f32::NAN; rows.len() * m];
            assert!(c.dots_rows(&a, &rows, &mut out));
            for (t, &i) in rows.iter().enumerate() {
                for j in 0..m {
                    let (got, want) = (out[t * m + j], all[i as usize * m + j]);
                    assert_eq!(got.to_bits(), want.to_bits(), "{isa:?} row {i} centre {j}");
                }
            }
            assert!(!c.dots_rows(&a, &[23], &mut out[..m]), "a row past the end was read");
            assert!(!c.dots_rows(&a, &[1, 2], &mut out[..m]), "a short output was written");
        }
    }

    #[test]
    fn the_detected_kernel_is_the_widest_the_cpu_has() {
        let c = Centres::new(&[1.0; 4], 2, 2).unwrap();
        assert_eq!(c.isa(), kernels_here().first().copied());
        assert_eq!(c.isa(), crate::isa::detect());
    }

    #[test]
    fn mismatched_lengths_and_no_kernel_are_refused() {
        let mut out = [0.0f32; 2];
        assert!(Centres::new(&[1.0; 3], 1, 2).is_none());
        let c = Centres::new(&[1.0; 2], 1, 2).unwrap();
        assert!(!c.dots(&[1.0; 4], 2, &mut out[..1]));
        assert!(!c.dots(&[1.0; 3], 2, &mut out));
        let none = Centres::with_isa(&[1.0; 2], 1, 2, None).unwrap();
        assert!(!none.dots(&[1.0; 4], 2, &mut out), "no kernel chosen, yet it computed");
        assert_eq!(out, [0.0; 2]);
    }
}
