//! Exact trainable-parameter accounting (the paper's Table 6) from layer shapes or a Hugging Face
//! `config.json`, without loading any weights.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{AdapterError, Result};
use crate::method::{MethodConfig, MethodKind};

/// Trainable parameters `method` adds to one `d_in -> d_out` linear layer (for full fine-tuning:
/// the layer's own weight). Errors when ID-LoRA's `p` does not divide `d_out` and `k r`.
///
/// ```
/// use idlora_adapter::{MethodConfig, MethodKind, params::layer_params};
/// // LoRA r = 8 on a 4096 x 4096 projection: 8 * (4096 + 4096).
/// assert_eq!(layer_params(&MethodConfig::new(MethodKind::Lora, 8), 4096, 4096).unwrap(), 65_536);
/// // ID-LoRA k = p = 4, r = 8: d_out k r / p^2 + k d_in.
/// assert_eq!(layer_params(&MethodConfig::new(MethodKind::IdLora, 8), 4096, 4096).unwrap(), 24_576);
/// ```
pub fn layer_params(method: &MethodConfig, d_in: usize, d_out: usize) -> Result<usize> {
    method.validate()?;
    let r = method.r;
    let n = method.experts;
    Ok(match method.kind {
        MethodKind::Full => d_in * d_out,
        MethodKind::Lora => r * (d_in + d_out),
        MethodKind::Dora => r * (d_in + d_out) + d_out,
        MethodKind::HydraLora => r * d_in + n * r * d_out + n * d_in,
        MethodKind::MoeLora => n * r * (d_in + d_out) + n * d_in,
        MethodKind::IdLora => {
            let (rows, cols) = idlora_b_shape(method, d_out, "<unnamed>")?;
            rows * cols + method.k * d_in
        }
    })
}

/// Shape `[d_out / p, k r / p]` of ID-LoRA's shared `B` (PEFT orientation: out x in), checking
/// that `p` divides both `d_out` and `k r`. Without rank boosting: `[d_out, r]`.
pub fn idlora_b_shape(method: &MethodConfig, d_out: usize, layer: &str) -> Result<(usize, usize)> {
    if !method.rank_boost {
        return Ok((d_out, method.r));
    }
    let p = method.parts();
    let kr = method.k * method.r;
    if !d_out.is_multiple_of(p) || !kr.is_multiple_of(p) {
        return Err(AdapterError::InvalidConfig {
            layer: layer.to_string(),
            message: format!(
                "rank boosting with p = {p} needs p to divide d_out = {d_out} and k * r = {kr} (k = {}, r = {})",
                method.k, method.r
            ),
        });
    }
    Ok((d_out / p, kr / p))
}

/// One of the seven projections of a LLaMA / Mistral decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl Target {
    /// All seven, in layer order (the paper adapts all of them).
    pub const ALL: [Target; 7] =
        [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The module's name in Hugging Face checkpoints (`q_proj`, ...).
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The module's path inside decoder layer `layer` (`model.layers.3.self_attn.q_proj`).
    pub fn module_path(self, layer: usize) -> String {
        let block = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}", self.module_name())
    }

    /// Parses a comma-separated list (`q,k,v,o,gate,up,down`, or the `_proj` names, or `all`).
    pub fn parse_list(list: &str) -> Result<Vec<Target>> {
        if list.trim() == "all" {
            return Ok(Target::ALL.to_vec());
        }
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let t: Target = item.parse()?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            return Err(AdapterError::InvalidSetting {
                setting: "targets",
                message: "the list is empty".into(),
            });
        }
        Ok(out)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name())
    }
}

impl FromStr for Target {
    type Err = AdapterError;
    fn from_str(s: &str) -> Result<Self> {
        let short = s.strip_suffix("_proj").unwrap_or(s);
        Ok(match short {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            _ => {
                return Err(AdapterError::InvalidSetting {
                    setting: "targets",
                    message: format!("`{s}` is not one of q, k, v, o, gate, up, down (or q_proj, ...)"),
                });
            }
        })
    }
}

/// The shape facts of a LLaMA / Mistral model that parameter counts need, read from a Hugging Face
/// `config.json` (other keys are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ModelShape {
    /// `hidden_size`
    pub hidden_size: usize,
    /// `intermediate_size`
    pub intermediate_size: usize,
    /// `num_hidden_layers`
    pub num_hidden_layers: usize,
    /// `num_attention_heads`
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (defaults to `num_attention_heads`)
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `head_dim` (defaults to `hidden_size / num_attention_heads`)
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// `vocab_size`
    pub vocab_size: usize,
    /// `tie_word_embeddings` (default false)
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `attention_bias` (default false)
    #[serde(default)]
    pub attention_bias: bool,
    /// `mlp_bias` (default false)
    #[serde(default)]
    pub mlp_bias: bool,
}

impl ModelShape {
    /// Reads a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AdapterError::Io { path: path.to_path_buf(), source })?;
        let shape: ModelShape = serde_json::from_str(&text)
            .map_err(|e| AdapterError::ModelConfig { path: path.to_path_buf(), message: e.to_string() })?;
        shape.check().map_err(|message| AdapterError::ModelConfig { path: path.to_path_buf(), message })?;
        Ok(shape)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return Err("hidden_size, num_attention_heads and num_hidden_layers must be positive".into());
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {} and head_dim is not given",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_key_value_heads {} must divide num_attention_heads {}",
                self.kv_heads(),
                self.num_attention_heads
            ));
        }
        Ok(())
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// `(d_in, d_out)` of a target projection.
    pub fn target_shape(&self, target: Target) -> (usize, usize) {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        let i = self.intermediate_size;
        match target {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
        }
    }

    /// Parameters of the base model (embeddings, all layers, norms, head unless tied).
    pub fn base_params(&self) -> usize {
        let h = self.hidden_size;
        let mut layer: usize = Target::ALL.iter().map(|&t| self.target_shape(t)).map(|(i, o)| i * o).sum();
        layer += 2 * h; // the two RMSNorm weights
        if self.attention_bias {
            let (_, q) = self.target_shape(Target::Q);
            let (_, kv) = self.target_shape(Target::K);
            layer += q + 2 * kv + h;
        }
        if self.mlp_bias {
            layer += 2 * self.intermediate_size + h;
        }
        let embed = self.vocab_size * h;
        embed + self.num_hidden_layers * layer + h + if self.tie_word_embeddings { 0 } else { embed }
    }

    /// Trainable parameters of `method` on `targets` of every layer. Full fine-tuning counts the
    /// whole model.
    pub fn trainable_params(&self, method: &MethodConfig, targets: &[Target]) -> Result<usize> {
        if method.kind == MethodKind::Full {
            return Ok(self.base_params());
        }
        let mut per_layer = 0;
        for &t in targets {
            let (d_in, d_out) = self.target_shape(t);
            per_layer += layer_params(method, d_in, d_out).map_err(|e| match e {
                AdapterError::InvalidConfig { message, .. } => {
                    AdapterError::InvalidConfig { layer: t.module_name().to_string(), message }
                }
                other => other,
            })?;
        }
        Ok(per_layer * self.num_hidden_layers)
    }
}

impl FromStr for ModelShape {
    type Err = AdapterError;
    fn from_str(json: &str) -> Result<Self> {
        let shape: ModelShape = serde_json::from_str(json)
            .map_err(|e| AdapterError::ModelConfig { path: "<memory>".into(), message: e.to_string() })?;
        shape.check().map_err(|message| AdapterError::ModelConfig { path: "<memory>".into(), message })?;
        Ok(shape)
    }
}
