//! Adapter dropout with masks drawn in parallel.
//!
//! Same distribution as burn's `Dropout::forward` (each entry kept with probability `1 - p` and
//! scaled by `1 / (1 - p)`, only while training on an autodiff device), but the mask is drawn
//! differently. burn draws every entry through its per-element random generator on the calling
//! thread; profiled in a LoRA training step of SmolLM2 (`cargo xtask bench train --one lora-8`),
//! that was about 10% of all CPU samples, on one core while the other idled. Here one 64-bit seed
//! comes from the device's generator (so `Device::seed` still makes runs reproducible, and a
//! resumed run draws what the uninterrupted one did), and fixed-size chunks of the mask come from
//! ChaCha8 streams `(seed, chunk index)`, filled in parallel: the mask does not depend on the
//! number of threads.

use burn::nn::Dropout;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rayon::prelude::*;

/// Mask entries per ChaCha8 stream.
const CHUNK: usize = 1 << 14;

/// Whether `dropout` would drop anything on a tensor of `device` (the conditions of
/// `Dropout::forward`).
pub(crate) fn is_active(dropout: &Dropout, device: &Device) -> bool {
    dropout.prob > 0.0 && dropout.training.is_enabled() && device.is_autodiff()
}

/// Applies `dropout` to `x`: `x` unchanged unless [`is_active`], else `x` times a mask whose
/// entries are `1 / (1 - p)` with probability `1 - p` and `0` otherwise.
pub(crate) fn apply<const D: usize>(dropout: &Dropout, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !is_active(dropout, &device) {
        return x;
    }
    let dims = x.dims();
    let mask = mask(dims.iter().product(), 1.0 - dropout.prob, draw_seed(&device));
    x * Tensor::from_data(TensorData::new(mask, dims), &device)
}

/// A 64-bit seed from the device's random generator: three 24-bit words (integer tensors may be
/// `i32`, and 2^24 is exact in every float type that draws them).
fn draw_seed(device: &Device) -> u64 {
    let words = Tensor::<1, Int>::random([3], Distribution::Uniform(0.0, 16_777_216.0), device).into_data();
    words.iter::<i64>().fold(0u64, |acc, w| (acc << 24) ^ (w as u64 & 0xff_ffff))
}

/// `n` mask entries for keep probability `keep`: `1 / keep` where a uniform 32-bit draw falls
/// below `keep * 2^32`, else 0. Chunk `i` is stream `i` of ChaCha8 keyed by `seed`.
pub(crate) fn mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let threshold = (keep.clamp(0.0, 1.0) * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        for v in chunk {
            *v = if u64::from(rng.next_u32()) < threshold { scale } else { 0.0 };
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use burn::nn::DropoutConfig;

    use super::*;

    #[test]
    fn mask_keeps_the_right_share_scaled_and_is_a_function_of_the_seed() {
        let (n, keep) = (1_000_003, 0.95);
        let m = mask(n, keep, 42);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // Binomial: standard deviation sqrt(0.95 * 0.05 / n) = 2.2e-4; allow five of them.
        assert!((kept - keep).abs() < 1.1e-3, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || v == (1.0 / keep) as f32));
        assert_eq!(m, mask(n, keep, 42));
        let other = mask(n, keep, 43);
        assert!(m.iter().zip(&other).filter(|(a, b)| a != b).count() > n / 20);
        // A longer mask extends a shorter one: chunks are fixed streams, whatever the threads do.
        assert_eq!(&mask(n + 50_000, keep, 42)[..n], &m[..]);
        // Neighbouring chunks are different streams, not copies.
        assert_ne!(&m[..CHUNK], &m[CHUNK..2 * CHUNK]);
        assert!(mask(1000, 1.0, 7).iter().all(|&v| v == 1.0));
    }

    #[test]
    fn apply_drops_only_while_training_on_an_autodiff_device_and_follows_device_seed() {
        let x = |device: &Device| Tensor::<2>::ones([64, 300], device);
        let dropout = DropoutConfig::new(0.3).init();
        let plain = Device::flex();
        x(&plain).into_data().assert_eq(&apply(&dropout, x(&plain)).into_data(), true);
        let ad = Device::flex().autodiff();
        ad.seed(5);
        let first = apply(&dropout, x(&ad)).into_data().try_to_vec::<f32>().unwrap_or_default();
        let second = apply(&dropout, x(&ad)).into_data().try_to_vec::<f32>().unwrap_or_default();
        ad.seed(5);
        let again = apply(&dropout, x(&ad)).into_data().try_to_vec::<f32>().unwrap_or_default();
        assert_eq!(first.len(), 64 * 300);
        assert_eq!(first, again, "same device seed, same mask");
        assert_ne!(first, second, "consecutive calls draw new masks");
        let zeros = first.iter().filter(|&&v| v == 0.0).count() as f64 / first.len() as f64;
        assert!((zeros - 0.3).abs() < 0.03, "dropped share {zeros}");
        let off = DropoutConfig::new(0.0).init();
        x(&ad).into_data().assert_eq(&apply(&off, x(&ad)).into_data(), true);
    }
}
