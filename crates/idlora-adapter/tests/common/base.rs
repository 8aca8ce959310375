//! Builds a burn `Linear` from a Hugging Face weight `[d_out, d_in]` in a safetensors file.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

/// Reads `<name>.weight` (f32, `[d_out, d_in]`) and returns a bias-free `Linear` holding it
/// input-major, as burn stores it.
pub fn base_linear(file: &Path, name: &str, device: &Device) -> Result<Linear> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let view = st
        .tensor(&format!("{name}.weight"))
        .with_context(|| format!("{name}.weight in {}", file.display()))?;
    let shape = view.shape().to_vec();
    let data: Vec<f32> =
        view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let w = Tensor::<2>::from_data(TensorData::new(data, [shape[0], shape[1]]), device).transpose();
    Ok(Linear { weight: Param::from_tensor(w), bias: None })
}
