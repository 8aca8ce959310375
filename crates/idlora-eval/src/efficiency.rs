//! Inference cost of each method over its base model (paper section 5.4, Figure 3): prompt time,
//! decoding time per token with a KV cache, extra parameters and extra peak memory.
//!
//! [`measure`] measures one method in the calling process. Peak memory is the process's
//! high-water mark (Linux `VmHWM`, reset after loading), so a comparison of methods is only fair
//! with each in a fresh process: `cargo xtask eval efficiency` and `cargo xtask reproduce fig3`
//! run every method in its own. The mark is what was alive only where freed memory goes back to
//! the system; `cargo xtask` keeps freed memory for reuse (faster), so it times in one process
//! and reads the peak in a second one that returns it. It is host memory: on a GPU the device
//! memory is not measured.
//!
//! ```
//! use idlora_eval::efficiency::{Measurement, overhead};
//! let lora = Measurement { label: "LoRA".into(), decode_ms_per_token: 10.0, ..Default::default() };
//! let hydra = Measurement { label: "HydraLoRA".into(), decode_ms_per_token: 13.65, ..Default::default() };
//! assert!((overhead(&hydra, &lora) - 36.5).abs() < 1e-9); // percent more decoding time
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;

use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::{PmrcConfig, Selector};
use idlora_models::adapters::BasesSource;
use idlora_models::layout::Target;
use idlora_models::{CausalLm, DeviceChoice, ForwardInput, KvCache, pick};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// One measurement to make.
#[derive(Clone, Debug)]
pub struct EfficiencyRequest {
    /// Row label (`base`, `LoRA r=8`, ...).
    pub label: String,
    /// The base model (Hugging Face folder or GGUF file).
    pub model: PathBuf,
    /// Compute device.
    pub device: DeviceChoice,
    /// The method, or `None` for the base model alone.
    pub method: Option<MethodConfig>,
    /// Merge the adapter into the base before measuring (LoRA / DoRA, as deployed).
    pub merged: bool,
    /// Adapted projections.
    pub targets: Vec<Target>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens decoded greedily after the prompt.
    pub new_tokens: usize,
    /// Timed rounds (the median is reported; one untimed warm-up first).
    pub rounds: usize,
}

/// What one measurement found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Row label.
    pub label: String,
    /// Parameters added to the base model (0 when merged).
    pub extra_params: usize,
    /// Prompt forward pass, milliseconds (median).
    pub prompt_ms: f64,
    /// Decoding, milliseconds per token (median).
    pub decode_ms_per_token: f64,
    /// Peak resident memory of the process during inference, MiB (NaN where not measurable).
    pub peak_rss_mb: f64,
}

impl Measurement {
    /// Memory of the extra parameters, MiB (f32 adapters).
    pub fn extra_weight_mb(&self) -> f64 {
        self.extra_params as f64 * 4.0 / f64::from(1u32 << 20)
    }
}

/// Percent more decoding time per token of `m` than of `reference`.
pub fn overhead(m: &Measurement, reference: &Measurement) -> f64 {
    100.0 * (m.decode_ms_per_token / reference.decode_ms_per_token - 1.0)
}

/// Peak resident memory of this process so far, MiB (Linux `VmHWM`; NaN elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The median (upper for an even count); NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Loads the model, applies the method (ID-LoRA's index sets by serial selection: the same
/// inference cost as PMRC's, without clustering), merges it if asked, and times `rounds` rounds
/// of a prompt forward pass and `new_tokens` greedy decoding steps on fixed token ids.
pub fn measure(req: &EfficiencyRequest) -> Result<Measurement> {
    let picked = pick(req.device).map_err(|e| EvalError::Settings(e.to_string()))?;
    let mut model = idlora_models::load(&req.model, &picked.device)?;
    let base_params = model.num_params();
    if let Some(method) = &req.method {
        let cfg = PmrcConfig { selector: Selector::Ss, ..PmrcConfig::default() };
        let no_progress = |_: usize, _: usize| {};
        let bases = (method.kind == MethodKind::IdLora).then_some(BasesSource::Cluster(cfg, &no_progress));
        model = model.apply_adapters(method, &req.targets, bases)?;
        // Zero-initialised factors (LoRA's B) sit in untouched pages that count for no resident
        // memory until written; a trained adapter's do. Writing every adapter tensor once makes
        // the peak memory that of a trained adapter.
        for (_, p) in model.projections_mut() {
            p.adapter = p.adapter.take().map(|a| a.map(&mut Touch));
        }
        if req.merged {
            let merged = model.merge_adapters()?;
            if merged == 0 {
                return Err(EvalError::Settings(format!(
                    "{}: {} adapters cannot be merged",
                    req.label,
                    method.kind.display_name()
                )));
            }
            // A merged adapter is deployed without its factors.
            for (_, p) in model.projections_mut() {
                p.adapter = None;
            }
        }
    }
    let extra_params = model.num_params().saturating_sub(base_params);
    let v = model.config.vocab_size as u32;
    if req.prompt_tokens == 0 {
        return Err(EvalError::Settings("efficiency: the prompt needs at least one token".into()));
    }
    let prompt: Vec<u32> = (0..req.prompt_tokens as u32).map(|i| (i * 7919 + 13) % v).collect();
    one_round(&model, &prompt, 2)?;
    // Peak memory of inference alone: reset the high-water mark after loading (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (mut prompt_ms, mut decode_ms) = (Vec::new(), Vec::new());
    for _ in 0..req.rounds.max(1) {
        let (p, d) = one_round(&model, &prompt, req.new_tokens)?;
        prompt_ms.push(p);
        decode_ms.push(d);
    }
    Ok(Measurement {
        label: req.label.clone(),
        extra_params,
        prompt_ms: median(prompt_ms),
        decode_ms_per_token: median(decode_ms),
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Rewrites every tensor it maps (`x + 0`), so that its pages are resident.
struct Touch;
impl burn::module::ModuleMapper for Touch {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        param.map(|t| t.add_scalar(0.0))
    }
}

fn host(t: burn::tensor::Tensor<3>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| EvalError::Backend(format!("{e:?}")))
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Prompt time and per-token decoding time of one round, milliseconds.
fn one_round(model: &CausalLm, prompt: &[u32], new_tokens: usize) -> Result<(f64, f64)> {
    let v = model.config.vocab_size;
    let mut cache = KvCache::new();
    let t = Instant::now();
    let logits = model.forward(&ForwardInput::single(prompt), Some(&mut cache))?;
    let s = prompt.len();
    let mut next = argmax(&host(logits.slice([0..1, s - 1..s, 0..v]))?);
    let prompt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..new_tokens {
        let logits = model.forward(&ForwardInput::single(&[next]), Some(&mut cache))?;
        next = argmax(&host(logits)?);
    }
    Ok((prompt_s * 1e3, t.elapsed().as_secs_f64() * 1e3 / new_tokens.max(1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_overhead_by_hand() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(vec![]).is_nan());
        let a = Measurement { decode_ms_per_token: 2.0, ..Default::default() };
        let b = Measurement { decode_ms_per_token: 1.6, ..Default::default() };
        assert!((overhead(&a, &b) - 25.0).abs() < 1e-12);
    }
}
