//! Rotary position embeddings in Hugging Face's half-split form, with LLaMA 3 scaling.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{Llama3RopeScaling, ModelConfig};

/// Inverse frequencies `theta^(-2i/d)`, `i < d/2`, with LLaMA 3's frequency-dependent scaling
/// applied when configured (long wavelengths divided by `factor`, short kept, a smooth blend
/// between), as transformers' `_compute_llama3_parameters` does.
pub fn inv_freq(config: &ModelConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> =
        (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
    match &config.rope_scaling {
        None => base,
        Some(s) => base.into_iter().map(|f| llama3_scale(f, s)).collect(),
    }
}

fn llama3_scale(freq: f64, s: &Llama3RopeScaling) -> f64 {
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}

/// `cos` and `sin` tables `[n, head_dim]` for the given positions (`[cos(p f); cos(p f)]`).
pub fn tables(inv_freq: &[f64], positions: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
    let half = inv_freq.len();
    let d = 2 * half;
    let mut cos = Vec::with_capacity(positions.len() * d);
    let mut sin = Vec::with_capacity(positions.len() * d);
    for &p in positions {
        // transformers computes the angles in f32; do the same so that long positions agree.
        let angles: Vec<f32> = inv_freq.iter().map(|&f| (f as f32) * (p as f32)).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let n = positions.len();
    (
        Tensor::from_data(TensorData::new(cos, [n, d]), device),
        Tensor::from_data(TensorData::new(sin, [n, d]), device),
    )
}

/// Applies the rotation to `x` `[b, heads, s, d]` with tables `[b, 1, s, d]`:
/// `x cos + rotate_half(x) sin`, `rotate_half([x1, x2]) = [-x2, x1]`.
pub fn apply(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}
