//! The vector primitives of each instruction-set level, shared by every hand-written kernel
//! (`dots`, `stream`): one definition of a load, a masked tail, a fused multiply-add and a
//! horizontal sum per level, so that a change of idiom (or a fix) is made once.
//!
//! Each function carries its level's `#[target_feature]` and is `#[inline]`, so it melts into a
//! kernel compiled for the same level. Callers pick the module [`crate::isa::detect`] chose.
//!
//! Loads and stores are masked ones even where every lane is wanted: with a constant all-on mask
//! they compile to the plain instruction, in the dev profile too, where the plain intrinsics'
//! `read_unaligned` carries debug UB checks that route every vector through the stack (measured:
//! the AVX2 dots kernel at 19 against 57 GFLOP/s, the AVX-512 one at a third of its speed).

/// AVX-512F: 16 `f32` lanes, 32 registers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// A vector of 16 floats.
    pub(crate) type V = __m512;
    /// Which of the 16 lanes a partial load or store touches.
    pub(crate) type Mask = __mmask16;
    /// Floats per vector.
    pub(crate) const LANES: usize = 16;

    /// The first `n` lanes (all of them from 16 on).
    #[inline]
    pub(crate) fn mask(n: usize) -> Mask {
        if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as Mask }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn zero() -> V {
        _mm512_setzero_ps()
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn splat(v: f32) -> V {
        _mm512_set1_ps(v)
    }

    /// A full vector.
    ///
    /// # Safety
    /// 16 floats readable at `p`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn load(p: *const f32) -> V {
        // SAFETY: as the caller vouches.
        unsafe { _mm512_maskz_loadu_ps(!0, p) }
    }

    /// # Safety
    /// 16 floats writable at `p`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn store(p: *mut f32, v: V) {
        // SAFETY: as the caller vouches.
        unsafe { _mm512_mask_storeu_ps(p, !0, v) }
    }

    /// The lanes of `mk` from `p`, zeros elsewhere.
    ///
    /// # Safety
    /// The lanes of `mk` readable at `p`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn load_part(p: *const f32, mk: Mask) -> V {
        // SAFETY: masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(mk, p) }
    }

    /// # Safety
    /// The lanes of `mk` writable at `p`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn store_part(p: *mut f32, mk: Mask, v: V) {
        // SAFETY: masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(p, mk, v) }
    }

    /// `a * b + c`, rounded once.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn fmadd(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn add(a: V, b: V) -> V {
        _mm512_add_ps(a, b)
    }

    /// The sum of the lanes: lanes `i` and `i + 8` added, then [`super::avx2::reduce`]'s tree.
    /// The order is fixed here (the k-means dots are tested bit for bit against it), not left to
    /// the standard library's `_mm512_reduce_add_ps`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn reduce(v: V) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        super::avx2::reduce(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }
}

/// AVX2 with FMA: 8 `f32` lanes, 16 registers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// A vector of 8 floats.
    pub(crate) type V = __m256;
    /// Which of the 8 lanes a partial load or store touches (a lane is on where its sign bit is).
    pub(crate) type Mask = __m256i;
    /// Floats per vector.
    pub(crate) const LANES: usize = 8;

    /// The first `n` lanes (all of them from 8 on): lane `i` is on where `i < n`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn mask(n: usize) -> Mask {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn zero() -> V {
        _mm256_setzero_ps()
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn splat(v: f32) -> V {
        _mm256_set1_ps(v)
    }

    /// A full vector.
    ///
    /// # Safety
    /// 8 floats readable at `p`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn load(p: *const f32) -> V {
        // SAFETY: as the caller vouches.
        unsafe { _mm256_maskload_ps(p, _mm256_set1_epi32(-1)) }
    }

    /// # Safety
    /// 8 floats writable at `p`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn store(p: *mut f32, v: V) {
        // SAFETY: as the caller vouches.
        unsafe { _mm256_maskstore_ps(p, _mm256_set1_epi32(-1), v) }
    }

    /// The lanes of `mk` from `p`, zeros elsewhere.
    ///
    /// # Safety
    /// The lanes of `mk` readable at `p`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn load_part(p: *const f32, mk: Mask) -> V {
        // SAFETY: masked-off lanes are not read and do not fault.
        unsafe { _mm256_maskload_ps(p, mk) }
    }

    /// # Safety
    /// The lanes of `mk` writable at `p`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn store_part(p: *mut f32, mk: Mask, v: V) {
        // SAFETY: masked-off lanes are not written.
        unsafe { _mm256_maskstore_ps(p, mk, v) }
    }

    /// `a * b + c`, rounded once.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn fmadd(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn add(a: V, b: V) -> V {
        _mm256_add_ps(a, b)
    }

    /// The sum of the lanes, `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))`, always in
    /// this order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn reduce(v: V) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }
}
