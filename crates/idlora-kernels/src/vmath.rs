//! A branch-free `exp` that compilers vectorise, and the reductions built on it.
//!
//! `f32::exp` is a call into libm per element, which no compiler turns into vector code. A
//! training step on SmolLM2 evaluates about 260 million of them (the loss's softmax over the
//! 49152-token vocabulary forward and backward, the attention's causal softmax recomputed in its
//! backward, the SwiGLU gate's sigmoid): libm's `__expf_fma` took 7.8% of a training run's CPU
//! samples, the vectorised code about 1.2%.
//! [`exp`] is the same function written as arithmetic and bit operations alone (Cody-Waite
//! range reduction, Cephes' degree-6 minimax polynomial, the power of two built in the exponent
//! bits), so a loop over a slice compiles to 8- or 16-wide vector code. [`vectorized`] (from
//! [`crate::isa`]) runs a closure compiled for AVX-512 or AVX2 + FMA when the CPU has them
//! (decided at run time, like the `gemm` crate's kernels), so the fused kernels need no
//! `-C target-cpu` flag.
//!
//! Accuracy: within 2 ulp of the correctly rounded value over the normal range `[-87.3, 88.7]`
//! (the test checks it against `f64::exp` on a dense grid), gradual underflow below it,
//! `exp(-inf) = 0`, `exp(+inf) = +inf`, NaN stays NaN.

pub use crate::isa::vectorized;

/// `e^x` in `f32`, branch-free (see the module docs for its accuracy).
///
/// ```
/// let e = idlora_kernels::vmath::exp(1.0);
/// assert!((e - std::f32::consts::E).abs() <= 2.0 * f32::EPSILON * std::f32::consts::E);
/// assert_eq!(idlora_kernels::vmath::exp(f32::NEG_INFINITY), 0.0);
/// ```
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for the n that occur (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const HI: f32 = 88.722_83;
    // Below this e^x is under half the smallest subnormal.
    const LO: f32 = -103.5;
    // `clamp` keeps NaN; the ends are handled by the selects below.
    let xc = x.clamp(LO, HI);
    // Plain `a * b + c` below, not `f32::mul_add`: that is a libm call where the compile target
    // lacks FMA (inside [`vectorized`] the compiler may still contract these).
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let bits_n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n as 2^(n >> 1) * 2^(n - (n >> 1)): n runs from -149 (subnormal results) to 128 (one
    // past the largest exponent), and each half stays a normal power of two.
    // Wrapping arithmetic throughout: an overflow check is a branch to a panic, which keeps the
    // loops that call this from being vectorised (the values cannot overflow).
    let half = bits_n >> 1;
    let pow2 = |m: i32| f32::from_bits((m.wrapping_add(127) as u32) << 23);
    let e = y * pow2(half) * pow2(bits_n.wrapping_sub(half));
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        e
    }
}

/// The logistic sigmoid `1 / (1 + e^-x)` through [`exp`].
///
/// ```
/// assert_eq!(idlora_kernels::vmath::sigmoid(0.0), 0.5);
/// ```
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Lanes of the reductions below: independent partial results the compiler keeps in one vector
/// register each, combined in a fixed order at the end (so a result depends only on the input).
const LANES: usize = 16;

/// The largest element (`f32::max` semantics: NaNs are skipped; `-inf` for an empty slice).
///
/// ```
/// assert_eq!(idlora_kernels::vmath::max(&[1.0, 7.0, -3.0]), 7.0);
/// ```
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    let m = tail.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    acc.iter().fold(m, |m, &a| m.max(a))
}

/// `sum_i e^(x_i - shift)`, accumulated in `f64`.
///
/// ```
/// let s = idlora_kernels::vmath::sum_exp_f64(&[0.0, 0.0], 0.0);
/// assert_eq!(s, 2.0);
/// ```
#[inline(always)]
pub fn sum_exp_f64(xs: &[f32], shift: f32) -> f64 {
    sum_exp_in(xs, shift)
}

/// `sum_i e^(x_i - shift)` in `f32`.
///
/// ```
/// let s = idlora_kernels::vmath::sum_exp(&[0.0, 0.0, 0.0], 0.0);
/// assert_eq!(s, 3.0);
/// ```
#[inline(always)]
pub fn sum_exp(xs: &[f32], shift: f32) -> f32 {
    sum_exp_in(xs, shift)
}

/// `sum_i e^(x_i - shift)` accumulated in `A` over [`LANES`] lanes.
#[inline(always)]
fn sum_exp_in<A>(xs: &[f32], shift: f32) -> A
where
    A: Copy + Default + std::ops::Add<Output = A> + From<f32>,
{
    let mut acc = [A::default(); LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = *a + A::from(exp(x - shift));
        }
    }
    let t = tail.iter().fold(A::default(), |t, &x| t + A::from(exp(x - shift)));
    acc.into_iter().fold(A::default(), |s, a| s + a) + t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `a` and the correctly rounded `want`.
    fn ulps(a: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = f64::from(f32::from_bits(w.to_bits() + 1) - w);
        (f64::from(a) - want).abs() / ulp
    }

    /// Every value on a grid of 1e-4 over the whole normal range, through the vectorised variant
    /// and the plain one, against `f64::exp`.
    #[test]
    fn exp_is_within_two_ulp_of_f64_exp() {
        let xs: Vec<f32> = (0..1_760_200).map(|i| -87.3 + i as f32 * 1e-4).filter(|&x| x <= 88.72).collect();
        let fast: Vec<f32> = vectorized(
            #[inline(always)]
            || xs.iter().map(|&x| exp(x)).collect(),
        );
        let plain: Vec<f32> = xs.iter().map(|&x| exp(x)).collect();
        let mut worst = (0.0f64, 0.0f32);
        for ((&x, &a), &b) in xs.iter().zip(&fast).zip(&plain) {
            let want = f64::from(x).exp();
            for v in [a, b] {
                let u = ulps(v, want);
                if u > worst.0 {
                    worst = (u, x);
                }
            }
        }
        assert!(worst.0 <= 2.0, "{} ulp at x = {}", worst.0, worst.1);
        // Spot values that a wrong constant would miss.
        assert_eq!(exp(0.0), 1.0);
        assert!(ulps(exp(1.0), 1f64.exp()) <= 1.0);
        assert!(ulps(exp(-10.0), (-10f64).exp()) <= 2.0);
    }

    #[test]
    fn exp_ends_infinities_and_nan() {
        for f in [exp as fn(f32) -> f32, |x| {
            vectorized(
                #[inline(always)]
                || exp(x),
            )
        }] {
            assert_eq!(f(f32::NEG_INFINITY), 0.0);
            assert_eq!(f(-1000.0), 0.0);
            assert_eq!(f(-104.0), 0.0, "below the smallest subnormal");
            let sub = f(-95.0);
            assert!(sub > 0.0 && (f64::from(sub) / (-95f64).exp() - 1.0).abs() < 1e-3, "subnormal {sub}");
            assert_eq!(f(f32::INFINITY), f32::INFINITY);
            assert_eq!(f(89.0), f32::INFINITY);
            assert!(f(f32::NAN).is_nan());
            let top = f(88.72);
            assert!(ulps(top, f64::from(88.72f32).exp()) <= 2.0, "{top}");
        }
    }

    /// The lane-wise reductions against plain serial ones, over lengths around the lane count.
    #[test]
    fn reductions_match_serial_sums() {
        for len in [0usize, 1, 15, 16, 17, 100, 4099] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13).collect();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(
                vectorized(
                    #[inline(always)]
                    || max(&xs)
                ),
                want_max,
                "max, len {len}"
            );
            let shift = if len == 0 { 0.0 } else { want_max };
            let want: f64 = xs.iter().map(|&x| (f64::from(x) - f64::from(shift)).exp()).sum();
            let got64 = vectorized(
                #[inline(always)]
                || sum_exp_f64(&xs, shift),
            );
            let got32 = vectorized(
                #[inline(always)]
                || sum_exp(&xs, shift),
            );
            assert!(
                (got64 - want).abs() <= 1e-6 * want.max(1.0),
                "sum_exp_f64, len {len}: {got64} vs {want}"
            );
            assert!((f64::from(got32) - want).abs() <= 1e-5 * want.max(1.0), "sum_exp, len {len}");
        }
        assert_eq!(max(&[f32::NAN, 2.0, -1.0]), 2.0, "NaN skipped as f32::max does");
        assert!(sum_exp(&[f32::NAN, 0.0], 0.0).is_nan(), "a NaN reaches the sum");
    }

    #[test]
    fn sigmoid_matches_its_definition() {
        for i in -400..=400 {
            let x = i as f32 * 0.05;
            let want = 1.0 / (1.0 + (-f64::from(x)).exp());
            assert!((f64::from(sigmoid(x)) - want).abs() <= 2e-7 * want.max(1e-30) + 1e-12, "x = {x}");
        }
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
    }
}
