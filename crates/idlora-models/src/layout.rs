//! Hugging Face's LLaMA / Mistral layout: which projections a decoder layer has, what they are
//! called in checkpoints, and what their shapes and the parameter counts built on them are.
//!
//! The adapter crate sees only `d_in -> d_out` layers; the names and shapes of a model's layers
//! live here, with the model that has them.

use std::fmt;
use std::str::FromStr;

use idlora_adapter::params::layer_params;
use idlora_adapter::{AdapterError, MethodConfig, MethodKind};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

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

    /// The module's path inside decoder layer `layer`.
    ///
    /// ```
    /// use idlora_models::layout::Target;
    /// assert_eq!(Target::Q.module_path(3), "model.layers.3.self_attn.q_proj");
    /// assert_eq!(Target::Down.module_path(0), "model.layers.0.mlp.down_proj");
    /// ```
    pub fn module_path(self, layer: usize) -> String {
        let block = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{block}.{}", self.module_name())
    }

    /// The checkpoint name of this projection's weight in layer `layer` (`...q_proj.weight`).
    pub fn weight_name(self, layer: usize) -> String {
        format!("{}.weight", self.module_path(layer))
    }

    /// Parses a comma-separated list (`q,k,v,o,gate,up,down`, or the `_proj` names, or `all`),
    /// dropping repeats.
    ///
    /// ```
    /// use idlora_models::layout::Target;
    /// assert_eq!(Target::parse_list("q_proj, down")?, vec![Target::Q, Target::Down]);
    /// assert_eq!(Target::parse_list("all")?, Target::ALL.to_vec());
    /// # Ok::<(), idlora_models::ModelError>(())
    /// ```
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
            return Err(ModelError::Setting { setting: "targets", message: "the list is empty".into() });
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
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let name = s.strip_prefix("self_attn.").or_else(|| s.strip_prefix("mlp.")).unwrap_or(s);
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Ok(match short {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            _ => {
                return Err(ModelError::Setting {
                    setting: "targets",
                    message: format!("`{s}` is not one of q, k, v, o, gate, up, down (or q_proj, ...)"),
                });
            }
        })
    }
}

impl ModelConfig {
    /// `(d_in, d_out)` of a target projection.
    pub fn target_shape(&self, target: Target) -> (usize, usize) {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let i = self.intermediate_size;
        match target {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
        }
    }

    /// Parameters of the base model: embeddings, every layer (with biases where the config has
    /// them), the final norm, and the head unless tied.
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
        embed + self.num_layers * layer + h + if self.tie_word_embeddings { 0 } else { embed }
    }

    /// Trainable parameters of `method` on `targets` of every layer (the paper's Table 6). Full
    /// fine-tuning counts the whole model. An unusable setting names the projection.
    ///
    /// ```
    /// use idlora_adapter::{MethodConfig, MethodKind};
    /// use idlora_models::{ModelConfig, layout::Target};
    /// let json = r#"{"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
    ///     "num_attention_heads": 2, "vocab_size": 10}"#;
    /// let config = ModelConfig::from_hf_json(json, "config.json")?;
    /// // LoRA r = 2 on q (8 -> 8): 2 * (8 + 8) per layer, two layers.
    /// assert_eq!(config.trainable_params(&MethodConfig::new(MethodKind::Lora, 2), &[Target::Q])?, 64);
    /// # Ok::<(), idlora_models::ModelError>(())
    /// ```
    pub fn trainable_params(&self, method: &MethodConfig, targets: &[Target]) -> Result<usize> {
        if method.kind == MethodKind::Full {
            return Ok(self.base_params());
        }
        let method = &self.resolve_parts(method, targets)?;
        let mut per_layer = 0;
        for &t in targets {
            let (d_in, d_out) = self.target_shape(t);
            per_layer += layer_params(method, d_in, d_out).map_err(|e| match e {
                AdapterError::InvalidConfig { message, .. } => {
                    ModelError::Adapter(AdapterError::InvalidConfig {
                        layer: t.module_name().to_string(),
                        message,
                    })
                }
                other => ModelError::Adapter(other),
            })?;
        }
        Ok(per_layer * self.num_layers)
    }

    /// ID-LoRA's rank-boosting parts `p` made concrete for `targets` of this model. `B` is
    /// `[d_out / p, k r / p]`, so `p` must divide `k r` and every adapted `d_out`. Unset
    /// (`method.p = None`), it is the largest such `p` not above `k`: `k` itself whenever that
    /// divides (the paper's `p = k`), otherwise the next smaller valid value, for example
    /// `p = 4` for `k = 6, r = 128` on LLaMA-3-8B (6 divides neither 4096 nor 1024). A `p` that
    /// was set and does not divide is an error naming `method.p` and the valid values. Other
    /// methods, and ID-LoRA without rank boosting, are returned as they are.
    ///
    /// ```
    /// use idlora_adapter::{MethodConfig, MethodKind};
    /// use idlora_models::{ModelConfig, layout::Target};
    /// let config = ModelConfig::from_hf_file("../../configs/models/llama-3-8b.json".as_ref())?;
    /// let mut m = MethodConfig::new(MethodKind::IdLora, 128);
    /// m.k = 6;
    /// assert_eq!(config.resolve_parts(&m, &Target::ALL)?.p, Some(4));
    /// # Ok::<(), idlora_models::ModelError>(())
    /// ```
    pub fn resolve_parts(&self, method: &MethodConfig, targets: &[Target]) -> Result<MethodConfig> {
        if method.kind != MethodKind::IdLora || !method.rank_boost {
            return Ok(method.clone());
        }
        let kr = method.k * method.r;
        let outs: Vec<usize> = targets.iter().map(|&t| self.target_shape(t).1).collect();
        let divides = |p: usize| p > 0 && kr.is_multiple_of(p) && outs.iter().all(|o| o.is_multiple_of(p));
        let valid: Vec<usize> = (1..=method.k.max(1)).filter(|&p| divides(p)).collect();
        let p = match method.p {
            Some(p) if divides(p) => p,
            Some(p) => {
                // Name what it does not divide: k r, and each projection by its d_out.
                let mut misses: Vec<String> = targets
                    .iter()
                    .map(|&t| (t, self.target_shape(t).1))
                    .filter(|&(_, o)| p == 0 || !o.is_multiple_of(p))
                    .map(|(t, o)| format!("{}'s d_out {o}", t.module_name()))
                    .collect();
                if p == 0 || !kr.is_multiple_of(p) {
                    misses.insert(0, format!("k r = {kr}"));
                }
                return Err(ModelError::Setting {
                    setting: "method.p",
                    message: format!(
                        "p = {p} must divide k r = {kr} (k = {}, r = {}) and every adapted d_out; it does \
                         not divide {}; valid values up to k: {valid:?} (leave it unset for the largest)",
                        method.k,
                        method.r,
                        misses.join(", ")
                    ),
                });
            }
            None => valid.last().copied().unwrap_or(1),
        };
        let mut resolved = method.clone();
        resolved.p = Some(p);
        Ok(resolved)
    }
}
