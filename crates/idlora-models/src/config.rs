//! Model configuration from a Hugging Face `config.json` or from GGUF metadata.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ModelError, Result};

/// Which architecture: they share every part; Mistral adds a sliding attention window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// LLaMA 2 / 3 / 3.1 / 3.2, SmolLM2 (`model_type = "llama"`).
    Llama,
    /// Mistral (`model_type = "mistral"`).
    Mistral,
}

impl Architecture {
    /// The `model_type` string.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
        }
    }
}

/// LLaMA 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    /// `factor`
    pub factor: f64,
    /// `low_freq_factor`
    pub low_freq_factor: f64,
    /// `high_freq_factor`
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`
    pub original_max_position_embeddings: usize,
}

/// Everything the model needs to know about its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Architecture,
    /// `hidden_size`
    pub hidden_size: usize,
    /// `intermediate_size`
    pub intermediate_size: usize,
    /// `num_hidden_layers`
    pub num_layers: usize,
    /// `num_attention_heads`
    pub num_heads: usize,
    /// `num_key_value_heads`
    pub num_kv_heads: usize,
    /// `head_dim`
    pub head_dim: usize,
    /// `vocab_size`
    pub vocab_size: usize,
    /// `rms_norm_eps`
    pub rms_norm_eps: f64,
    /// `rope_theta`
    pub rope_theta: f64,
    /// `rope_scaling` (only `llama3` is supported).
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// `max_position_embeddings`
    pub max_position_embeddings: usize,
    /// `tie_word_embeddings`
    pub tie_word_embeddings: bool,
    /// `sliding_window` (Mistral); `None` means full attention.
    pub sliding_window: Option<usize>,
    /// `attention_bias`: q, k, v, o projections have biases.
    pub attention_bias: bool,
    /// `mlp_bias`: gate, up, down projections have biases.
    pub mlp_bias: bool,
    /// `bos_token_id`
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (one or several).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers 5 writes RoPE settings (theta included) here instead.
    rope_parameters: Option<Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    sliding_window: Option<usize>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

/// More parameters than any config describes in earnest (2^40, about a trillion): a larger count
/// is a corrupt or hostile config, refused before anything is allocated.
const MAX_PARAMETERS: u128 = 1 << 40;

fn config_err(source: &str, key: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config { source_name: source.to_string(), key: key.to_string(), message: message.into() }
}

impl ModelConfig {
    /// The Hugging Face `config.json` of this configuration (what `cargo xtask export` writes):
    /// read back by [`ModelConfig::from_hf_json`] it gives the same config, and transformers'
    /// `LlamaForCausalLM` / `MistralForCausalLM` load it. `dtype` names the weights' storage type
    /// (`float32`, `bfloat16`, `float16`).
    ///
    /// ```
    /// # let json = r#"{"model_type": "mistral", "hidden_size": 16, "intermediate_size": 24,
    /// #   "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 32, "sliding_window": 8}"#;
    /// let config = idlora_models::ModelConfig::from_hf_json(json, "config.json")?;
    /// let written = config.to_hf_json("bfloat16").to_string();
    /// assert_eq!(idlora_models::ModelConfig::from_hf_json(&written, "again")?, config);
    /// # Ok::<(), idlora_models::ModelError>(())
    /// ```
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        let class = match self.arch {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": [class],
            "model_type": self.arch.name(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": dtype,
        });
        if self.arch == Architecture::Mistral {
            v["sliding_window"] = json!(self.sliding_window);
        }
        if let Some(r) = &self.rope_scaling {
            v["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": r.factor,
                "low_freq_factor": r.low_freq_factor,
                "high_freq_factor": r.high_freq_factor,
                "original_max_position_embeddings": r.original_max_position_embeddings,
            });
        }
        v
    }

    /// Reads a Hugging Face `config.json`. Unknown keys are ignored; unsupported values
    /// (another `rope_scaling` type, another `hidden_act`, another `model_type`) are errors naming
    /// the key.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        Self::from_hf_json(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `source` names it in errors.
    pub fn from_hf_json(text: &str, source: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde names the missing field in its message: surface it as the key.
            let key = msg.split('`').nth(1).unwrap_or("config").to_string();
            config_err(source, &key, msg)
        })?;
        let arch = match raw.model_type.as_deref() {
            None | Some("llama") => Architecture::Llama,
            Some("mistral") => Architecture::Mistral,
            Some(other) => {
                return Err(config_err(
                    source,
                    "model_type",
                    format!("`{other}` is not supported (llama, mistral)"),
                ));
            }
        };
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(config_err(
                source,
                "hidden_act",
                format!("`{act}` is not supported (only silu / SwiGLU)"),
            ));
        }
        let (rope_key, rope) = match (&raw.rope_parameters, &raw.rope_scaling) {
            (Some(v), _) if !v.is_null() => ("rope_parameters", Some(v)),
            (_, Some(v)) if !v.is_null() => ("rope_scaling", Some(v)),
            _ => ("rope_scaling", None),
        };
        let rope_theta = raw
            .rope_theta
            .or_else(|| rope.and_then(|v| v.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => None,
            Some(v) => parse_rope_scaling(v, rope_key, source)?,
        };
        let eos_token_ids = match raw.eos_token_id {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            Some(other) => {
                return Err(config_err(
                    source,
                    "eos_token_id",
                    format!("expected an id or a list, found {other}"),
                ));
            }
        };
        let heads = raw.num_attention_heads;
        if heads == 0 {
            return Err(config_err(source, "num_attention_heads", "must be positive"));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(config_err(
                    source,
                    "head_dim",
                    format!(
                        "not given and hidden_size {} is not a multiple of {heads} heads",
                        raw.hidden_size
                    ),
                ));
            }
        };
        let config = ModelConfig {
            arch,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            sliding_window: if arch == Architecture::Mistral { raw.sliding_window } else { None },
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
        };
        config.validate(source)?;
        Ok(config)
    }

    /// Builds the config from GGUF metadata (`general.architecture = llama`). `tied` says whether
    /// the file lacks `output.weight` (the head then reuses the token embedding).
    pub fn from_gguf(file: &idlora_weights::gguf::GgufFile, tied: bool) -> Result<Self> {
        let source = file.path().display().to_string();
        let arch = file.metadata_str("general.architecture")?;
        if arch != "llama" {
            return Err(config_err(
                &source,
                "general.architecture",
                format!("`{arch}` is not supported (llama)"),
            ));
        }
        let u = |key: &str| -> Result<usize> { Ok(file.metadata_u64(key)? as usize) };
        let hidden = u("llama.embedding_length")?;
        let heads = u("llama.attention.head_count")?;
        let vocab = match file.metadata_u64("llama.vocab_size") {
            Ok(v) => v as usize,
            Err(_) => file
                .metadata_value("tokenizer.ggml.tokens")?
                .as_array()
                .map(<[_]>::len)
                .ok_or_else(|| config_err(&source, "tokenizer.ggml.tokens", "expected an array"))?,
        };
        let head_dim = match file.metadata_u64("llama.attention.key_length") {
            Ok(v) => v as usize,
            Err(_) => hidden / heads.max(1),
        };
        let opt_u32 = |key: &str| file.metadata_u64(key).ok().map(|v| v as u32);
        let config = ModelConfig {
            arch: Architecture::Llama,
            hidden_size: hidden,
            intermediate_size: u("llama.feed_forward_length")?,
            num_layers: u("llama.block_count")?,
            num_heads: heads,
            num_kv_heads: file.metadata_u64("llama.attention.head_count_kv").map_or(heads, |v| v as usize),
            head_dim,
            vocab_size: vocab,
            rms_norm_eps: file.metadata_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: file.metadata_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: u("llama.context_length")?,
            tie_word_embeddings: tied,
            sliding_window: None,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: opt_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: opt_u32("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        config.validate(&source)?;
        Ok(config)
    }

    fn validate(&self, source: &str) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_key_value_heads", self.num_kv_heads),
            ("vocab_size", self.vocab_size),
            ("head_dim", self.head_dim),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(config_err(source, key, "must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(config_err(
                source,
                "num_key_value_heads",
                format!("{} does not divide num_attention_heads {}", self.num_kv_heads, self.num_heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(config_err(source, "head_dim", "RoPE needs an even head dimension"));
        }
        if self.sliding_window == Some(0) {
            return Err(config_err(source, "sliding_window", "must be positive"));
        }
        if self.parameter_count().is_none_or(|n| n > MAX_PARAMETERS) {
            return Err(config_err(
                source,
                "hidden_size, intermediate_size, num_hidden_layers, head_dim, vocab_size",
                format!("describe more than {MAX_PARAMETERS} parameters (sizes out of range)"),
            ));
        }
        Ok(())
    }

    /// Parameters of the model this config describes (weights and norms, no biases), or `None` when
    /// the count overflows: every size product used later is then known to fit.
    fn parameter_count(&self) -> Option<u128> {
        let [h, i, l, q, kv, d, v] = [
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.vocab_size,
        ]
        .map(|x| x as u128);
        let q_dim = q.checked_mul(d)?;
        let kv_dim = kv.checked_mul(d)?;
        // q, k, v, o; gate, up, down; two norms.
        let attention = q_dim.checked_mul(2)?.checked_add(kv_dim.checked_mul(2)?)?.checked_mul(h)?;
        let layer = attention.checked_add(i.checked_mul(h)?.checked_mul(3)?)?.checked_add(2 * h)?;
        let embed = v.checked_mul(h)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        layer.checked_mul(l)?.checked_add(embed)?.checked_add(head)?.checked_add(h)
    }

    /// Number of query groups sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5): `default` means plain
/// RoPE, `llama3` is supported, anything else is an error naming the key.
fn parse_rope_scaling(v: &Value, key: &str, source: &str) -> Result<Option<Llama3RopeScaling>> {
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => return Ok(None),
        "llama3" => {}
        _ => {
            return Err(config_err(
                source,
                &format!("{key}.rope_type"),
                format!("`{kind}` is not supported (default or llama3)"),
            ));
        }
    }
    let f = |field: &str| -> Result<f64> {
        v.get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| config_err(source, &format!("{key}.{field}"), "missing or not a number"))
    };
    Ok(Some(Llama3RopeScaling {
        factor: f("factor")?,
        low_freq_factor: f("low_freq_factor")?,
        high_freq_factor: f("high_freq_factor")?,
        original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
    }))
}
