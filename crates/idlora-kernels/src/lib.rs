//! The hand-written CPU kernels of idlora, in one place.
//!
//! Every fast path in the workspace that burn does not give at its speed lives here, each beside
//! the plain composition of burn operations it replaces and tested against it:
//!
//! * [`isa`]: the one run-time instruction-set detection (AVX-512 or AVX2 + FMA) and
//!   [`isa::vectorized`], which runs a loop compiled for it;
//! * [`dots`]: rows-by-centres dot products reading the rows in place (k-means' distance pass);
//! * [`vmath`]: a branch-free `exp` that vectorises, and the reductions on it;
//! * [`product`] (feature `burn`): `y + a b` in place and few-row products that stream the
//!   weights across threads (the streaming kernels are `stream`'s), products with a bf16 / f16
//!   frozen weight that widen it a panel at a time (`half_weight`'s, with their backward), ID-LoRA's
//!   router, gather and scale in one pass;
//! * [`swiglu`], [`causal_attention`], [`cross_entropy`] (feature `burn`): the SwiGLU gate,
//!   causal self-attention and the training loss as single autodiff operations on burn's CPU
//!   backend (feature `flex`), the composition elsewhere.
//!
//! The rule for a fast path: it takes a burn tensor, takes its fused path only where it applies
//! (burn's CPU backend, `f32`, the layouts it reads) and otherwise hands the inputs back to the
//! composition of burn operations, so every backend computes the same function; a test compares
//! the two, values and gradients. The slice-level kernels ([`isa`], [`dots`], [`vmath`]) need no
//! burn (`default-features = false`), which is how `idlora-cluster` uses them.
//!
//! ```
//! use idlora_kernels::vmath;
//!
//! let e = vmath::exp(1.0);
//! assert!((e - std::f32::consts::E).abs() < 1e-6);
//! ```

pub mod dots;
pub mod isa;
mod simd;
pub mod vmath;

#[cfg(feature = "burn")]
pub mod causal_attention;
#[cfg(feature = "burn")]
pub mod cross_entropy;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod half_weight;
#[cfg(feature = "burn")]
pub mod product;
#[cfg(feature = "flex")]
mod stream;
#[cfg(feature = "burn")]
pub mod swiglu;
