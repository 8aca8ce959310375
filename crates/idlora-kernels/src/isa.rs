//! The one instruction-set detection of the workspace: which vector extensions the hand-written
//! kernels run on here, chosen at run time.
//!
//! Every kernel in this crate, and the distance pass of `idlora-cluster`, asks [`detect`] and
//! compiles its bodies for the two levels below. The levels are the x86-64 micro-architecture
//! levels the compilers name (`x86-64-v4` and `x86-64-v3`), so a kernel that asks for
//! [`Isa::Avx512`] may use any of AVX-512 F, BW, DQ and VL, and one that asks for [`Isa::Avx2`]
//! AVX2, FMA, BMI1 and BMI2. (Every AVX-512 CPU since Skylake-SP has all four AVX-512 subsets;
//! Knights Landing, which lacks BW, DQ and VL, is served by the AVX2 level.)

/// A level of vector instructions the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// `x86-64-v4`: AVX-512 F, BW, DQ and VL (and everything of [`Isa::Avx2`]); 16 `f32` lanes.
    Avx512,
    /// `x86-64-v3`: AVX2 with FMA, BMI1 and BMI2; 8 `f32` lanes.
    Avx2,
}

impl Isa {
    /// Every level, widest first.
    pub const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    /// Floats per vector register.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// Whether this CPU has every instruction of the level (always `false` off x86-64).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let v3 = || has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2");
            match self {
                Isa::Avx512 => {
                    has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && v3()
                }
                Isa::Avx2 => v3(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The widest level this CPU has, `None` where it has neither (or is not x86-64): the kernels
/// then say so and their callers take the portable or burn path.
///
/// ```
/// use idlora_kernels::isa::{Isa, detect};
///
/// match detect() {
///     Some(isa) => assert!(isa.supported() && isa.lanes() >= 8),
///     None => assert!(!Isa::Avx2.supported()),
/// }
/// ```
pub fn detect() -> Option<Isa> {
    // The standard library caches the CPUID answers, so this is a few atomic loads.
    Isa::ALL.into_iter().find(|isa| isa.supported())
}

/// The levels this CPU has, widest first (the tests run every kernel on each).
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|isa| isa.supported()).collect()
}

/// Runs `f` compiled for the widest level this CPU has ([`detect`]), or as it is where it has
/// none. Mark the closure `#[inline(always)]`: only a closure inlined into the chosen variant is
/// compiled for its instructions (without the attribute the compiler kept the fused kernels'
/// closures as separate baseline-x86-64 functions, scalar code that was slower than libm's
/// `expf`). The result is the same function of the inputs either way, up to the rounding of
/// contracted multiply-adds.
///
/// ```
/// use idlora_kernels::isa::vectorized;
///
/// let xs: Vec<f32> = (0..64).map(|i| i as f32).collect();
/// let sum: f32 = vectorized(#[inline(always)] || xs.iter().map(|x| x * 2.0).sum());
/// assert_eq!(sum, 4032.0);
/// ```
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match detect() {
        // SAFETY: the CPU has every feature the variant is compiled for.
        Some(Isa::Avx512) => return unsafe { x86::v4(f) },
        // SAFETY: as above.
        Some(Isa::Avx2) => return unsafe { x86::v3(f) },
        None => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2")]
    pub(super) unsafe fn v4<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma,bmi1,bmi2")]
    pub(super) unsafe fn v3<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detected_level_is_the_widest_available_one() {
        let here = available();
        assert_eq!(detect(), here.first().copied());
        // A machine with the wider level has the narrower one too.
        if here.contains(&Isa::Avx512) {
            assert!(here.contains(&Isa::Avx2));
        }
    }
}
