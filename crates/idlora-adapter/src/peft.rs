//! Adapter folders in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are `base_model.model.<module path>.<suffix>` without PEFT's `.default` segment. LoRA and
//! DoRA use PEFT's own suffixes and config (`peft_type = "LORA"`, `use_dora`), so files written
//! here load in PEFT and PEFT's load here. The other methods reuse the layout with their own
//! `peft_type` and suffixes (see `docs/adapters.md`):
//!
//! | method | suffixes |
//! |---|---|
//! | LoRA | `lora_A.weight` `[r, d_in]`, `lora_B.weight` `[d_out, r]` |
//! | DoRA | LoRA's plus `lora_magnitude_vector` `[d_out]` |
//! | HydraLoRA | `lora_A.weight`, `lora_B.{j}.weight` per head, `lora_route.weight` `[N, d_in]` |
//! | MoELoRA | `lora_A.{j}.weight`, `lora_B.{j}.weight` per expert, `lora_route.weight` |
//! | ID-LoRA | `lora_B.weight` `[d_out / p, k r / p]`, `lora_route.weight` `[k, d_in]`, `bases` int32 `[k, r]` |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Value, json};

use crate::adapter::Adapter;
use crate::error::{AdapterError, Result};
use crate::layer::AdaptedLinear;
use crate::method::{MethodConfig, MethodKind};
use crate::methods::transpose;

/// The config file's name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file's name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix of every key, as PEFT writes it for a causal LM.
pub const KEY_PREFIX: &str = "base_model.model.";

/// A tensor in host memory, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    /// 32-bit floats.
    F32 {
        /// Shape.
        shape: Vec<usize>,
        /// Values.
        data: Vec<f32>,
    },
    /// 32-bit integers (ID-LoRA's index sets).
    I32 {
        /// Shape.
        shape: Vec<usize>,
        /// Values.
        data: Vec<i32>,
    },
}

impl HostTensor {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32 { shape, .. } | HostTensor::I32 { shape, .. } => shape,
        }
    }
}

/// Settings stored in `adapter_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    /// The method and its settings.
    pub method: MethodConfig,
    /// Module names the adapter targets (`q_proj`, ...).
    pub target_modules: Vec<String>,
    /// Where the base model came from, informative.
    pub base_model_name_or_path: Option<String>,
    /// Per-module rank overrides (PEFT's `rank_pattern`: key = module path suffix).
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (PEFT's `alpha_pattern`).
    pub alpha_pattern: BTreeMap<String, f64>,
}

/// Does a PEFT pattern key match a module path? PEFT matches `(.*\.)?key$`.
fn pattern_matches(key: &str, path: &str) -> bool {
    path == key || path.ends_with(&format!(".{key}"))
}

impl AdapterConfig {
    /// A config for `method` on the given target module names.
    pub fn new(method: MethodConfig, target_modules: Vec<String>) -> Self {
        AdapterConfig {
            method,
            target_modules,
            base_model_name_or_path: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }

    /// The method settings for the module at `path`, with `rank_pattern` / `alpha_pattern` applied
    /// (the longest matching key wins).
    pub fn method_for(&self, path: &str) -> MethodConfig {
        let mut m = self.method.clone();
        let longest = |keys: Vec<&String>| keys.into_iter().max_by_key(|k| k.len()).cloned();
        if let Some(key) = longest(self.rank_pattern.keys().filter(|k| pattern_matches(k, path)).collect()) {
            m.r = self.rank_pattern[&key];
            // PEFT keeps lora_alpha when only the rank is overridden.
        }
        if let Some(key) = longest(self.alpha_pattern.keys().filter(|k| pattern_matches(k, path)).collect()) {
            m.alpha = self.alpha_pattern[&key];
        }
        m
    }

    /// The JSON PEFT expects (plus this crate's keys for its own methods).
    pub fn to_json(&self) -> Value {
        let m = &self.method;
        let mut obj = json!({
            "peft_type": Adapter::peft_type(m.kind),
            "task_type": "CAUSAL_LM",
            "r": m.r,
            "lora_alpha": m.alpha,
            "lora_dropout": m.dropout,
            "target_modules": self.target_modules,
            "use_dora": m.kind == MethodKind::Dora,
            "use_rslora": m.rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
        });
        if let Value::Object(map) = &mut obj {
            Adapter::write_config(m, map);
        }
        obj
    }

    /// Parses `adapter_config.json` text. Unknown keys are accepted and reported in the returned
    /// warnings (newer PEFT versions keep adding keys); keys whose non-default values would change
    /// the meaning of the weights (`fan_in_fan_out`, `bias`, `modules_to_save`, ...) are errors.
    pub fn from_json(text: &str, path: &Path) -> Result<(Self, Vec<String>)> {
        let json_err = |message: String| AdapterError::Json { path: path.to_path_buf(), message };
        let value: Value = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(json_err("the top level is not a JSON object".into()));
        };
        let mut fields = ConfigFields { map: &mut map, path };
        let peft_type = match fields.take("peft_type") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(json_err(format!("field `peft_type`: expected a string, found {other}")));
            }
            None => return Err(json_err("missing field `peft_type`".into())),
        };
        let r = fields.usize("r", None)?;
        let use_dora = fields.bool("use_dora", false)?;
        let kind = match peft_type.as_str() {
            "LORA" if use_dora => MethodKind::Dora,
            "LORA" => MethodKind::Lora,
            _ => match MethodKind::ALL.into_iter().find(|k| {
                !matches!(k, MethodKind::Full | MethodKind::Lora | MethodKind::Dora)
                    && Adapter::peft_type(*k) == peft_type
            }) {
                Some(kind) => kind,
                None => {
                    return Err(AdapterError::WrongPeftType {
                        path: path.to_path_buf(),
                        found: peft_type,
                        expected: "LORA (with or without use_dora), IDLORA, HYDRALORA or MOELORA".into(),
                    });
                }
            },
        };
        let mut method = MethodConfig::new(kind, r);
        method.alpha = fields.f64("lora_alpha", 8.0)?;
        method.dropout = fields.f64("lora_dropout", 0.0)?;
        method.rslora = fields.bool("use_rslora", false)?;
        Adapter::read_config(&mut fields, &mut method)?;
        method.validate().map_err(|e| json_err(e.to_string()))?;
        let mut take = |key: &str| map.remove(key);
        let usize_field =
            |v: Option<Value>, key: &str| -> Result<usize> { ConfigFields::as_usize(v, key, None, path) };
        let f64_field =
            |v: Option<Value>, key: &str| -> Result<f64> { ConfigFields::as_f64(v, key, 0.0, path) };
        let target_modules = match take("target_modules") {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => {
                        Err(json_err(format!("field `target_modules`: expected strings, found {other}")))
                    }
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::String(s)) => vec![s],
            None | Some(Value::Null) => Vec::new(),
            Some(other) => {
                return Err(json_err(format!("field `target_modules`: expected a list, found {other}")));
            }
        };
        let base_model_name_or_path = match take("base_model_name_or_path") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let mut rank_pattern = BTreeMap::new();
        if let Some(Value::Object(p)) = take("rank_pattern") {
            for (k, v) in p {
                rank_pattern.insert(k.clone(), usize_field(Some(v), &format!("rank_pattern.{k}"))?);
            }
        }
        let mut alpha_pattern = BTreeMap::new();
        if let Some(Value::Object(p)) = take("alpha_pattern") {
            for (k, v) in p {
                alpha_pattern.insert(k.clone(), f64_field(Some(v), &format!("alpha_pattern.{k}"))?);
            }
        }
        // Keys that would change what the weights mean: only their default values are supported.
        let unsupported = |key: &str, v: &Value| -> Option<String> {
            let default_ok = match key {
                "fan_in_fan_out" | "lora_bias" | "use_qalora" => v == &Value::Bool(false),
                "bias" => v == &Value::String("none".into()),
                "modules_to_save"
                | "layers_to_transform"
                | "layer_replication"
                | "target_parameters"
                | "trainable_token_indices"
                | "exclude_modules"
                | "layers_pattern" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
                _ => return None,
            };
            (!default_ok).then(|| format!("field `{key}` = {v} is not supported (only its default is)"))
        };
        // PEFT bookkeeping that does not affect the weights.
        const IGNORED: &[&str] = &[
            "task_type",
            "inference_mode",
            "init_lora_weights",
            "revision",
            "peft_version",
            "auto_mapping",
            "megatron_config",
            "megatron_core",
            "loftq_config",
            "eva_config",
            "corda_config",
            "runtime_config",
            "qalora_group_size",
            "use_bdlora",
            "arrow_config",
            "alora_invocation_tokens",
            "lora_ga_config",
            "monteclora_config",
            "velora_config",
            "kasa_config",
            "ensure_weight_tying",
        ];
        let mut warnings = Vec::new();
        for (key, v) in map {
            if let Some(msg) = unsupported(&key, &v) {
                return Err(json_err(msg));
            }
            let known = IGNORED.contains(&key.as_str())
                || matches!(
                    key.as_str(),
                    "fan_in_fan_out"
                        | "lora_bias"
                        | "use_qalora"
                        | "bias"
                        | "modules_to_save"
                        | "layers_to_transform"
                        | "layer_replication"
                        | "target_parameters"
                        | "trainable_token_indices"
                        | "exclude_modules"
                        | "layers_pattern"
                );
            if !known {
                warnings.push(format!("{}: unknown key `{key}` ignored", path.display()));
            }
        }
        Ok((
            AdapterConfig { method, target_modules, base_model_name_or_path, rank_pattern, alpha_pattern },
            warnings,
        ))
    }
}

/// An adapter folder in memory: its config and every tensor by full key.
#[derive(Clone, Debug)]
pub struct AdapterFile {
    /// The config.
    pub config: AdapterConfig,
    /// Tensors by full key (`base_model.model.<path>.<suffix>`).
    pub tensors: BTreeMap<String, HostTensor>,
    /// Warnings from loading (unknown config keys).
    pub warnings: Vec<String>,
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AdapterError + '_ {
    move |source| AdapterError::Io { path: path.to_path_buf(), source }
}

impl AdapterFile {
    /// Collects the adapters of `layers` (each named by its module path).
    pub fn from_layers<'a>(
        config: AdapterConfig,
        layers: impl IntoIterator<Item = &'a AdaptedLinear>,
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for layer in layers {
            for (suffix, t) in export(layer)? {
                tensors.insert(format!("{KEY_PREFIX}{}.{suffix}", layer.name), t);
            }
        }
        Ok(AdapterFile { config, tensors, warnings: Vec::new(), path: PathBuf::from("<memory>") })
    }

    /// Module paths that have tensors in this file.
    pub fn modules(&self) -> BTreeSet<String> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_prefix(KEY_PREFIX))
            .filter_map(|k| {
                let end = k.find(".lora_").or_else(|| k.strip_suffix(".bases").map(str::len))?;
                Some(k[..end].to_string())
            })
            .collect()
    }

    /// Writes the folder (created if needed); each file is written to a temporary name and renamed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let bytes: BTreeMap<&String, (Dtype, &[usize], Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let (dtype, shape, bytes) = match t {
                    HostTensor::F32 { shape, data } => {
                        (Dtype::F32, shape.as_slice(), data.iter().flat_map(|v| v.to_le_bytes()).collect())
                    }
                    HostTensor::I32 { shape, data } => {
                        (Dtype::I32, shape.as_slice(), data.iter().flat_map(|v| v.to_le_bytes()).collect())
                    }
                };
                (k, (dtype, shape, bytes))
            })
            .collect();
        let weights = dir.join(WEIGHTS_FILE);
        let views = bytes
            .iter()
            .map(|(k, (dtype, shape, b))| {
                TensorView::new(*dtype, shape.to_vec(), b).map(|v| (k.to_string(), v)).map_err(|e| {
                    AdapterError::BadTensor {
                        path: weights.clone(),
                        key: k.to_string(),
                        message: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
        let data = safetensors::serialize(views, metadata)
            .map_err(|e| AdapterError::Safetensors { path: weights.clone(), message: e.to_string() })?;
        idlora_data::write_atomic(&weights, &data)?;
        let config = serde_json::to_string_pretty(&self.config.to_json())
            .map_err(|e| AdapterError::Json { path: dir.join(CONFIG_FILE), message: e.to_string() })?;
        Ok(idlora_data::write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())?)
    }

    /// Reads a folder written by [`save`](Self::save) or by PEFT's `save_pretrained`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
        let (config, warnings) = AdapterConfig::from_json(&text, &config_path)?;
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).map_err(io(&weights))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| AdapterError::Safetensors { path: weights.clone(), message: e.to_string() })?;
        let mut tensors = BTreeMap::new();
        for (key, view) in st.tensors() {
            let bad = |message: String| AdapterError::BadTensor {
                path: weights.clone(),
                key: key.clone(),
                message,
            };
            let shape = view.shape().to_vec();
            let raw = view.data();
            let t = match view.dtype() {
                Dtype::F32 => HostTensor::F32 {
                    shape,
                    data: raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                },
                Dtype::F16 => HostTensor::F32 {
                    shape,
                    data: raw
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                },
                Dtype::BF16 => HostTensor::F32 {
                    shape,
                    data: raw
                        .chunks_exact(2)
                        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                        .collect(),
                },
                Dtype::I32 => HostTensor::I32 {
                    shape,
                    data: raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                },
                Dtype::I64 => HostTensor::I32 {
                    shape,
                    data: raw
                        .chunks_exact(8)
                        .map(|c| {
                            let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                            i32::try_from(v).map_err(|_| bad(format!("index {v} does not fit in 32 bits")))
                        })
                        .collect::<Result<_>>()?,
                },
                other => return Err(bad(format!("has unsupported dtype {other:?}"))),
            };
            tensors.insert(key, t);
        }
        Ok(AdapterFile { config, tensors, warnings, path: weights })
    }

    fn get(&self, key: &str) -> Result<&HostTensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| AdapterError::MissingKey { path: self.path.clone(), key: key.to_string() })
    }

    fn f32(&self, key: &str, shape: &[usize]) -> Result<&[f32]> {
        match self.get(key)? {
            HostTensor::F32 { shape: s, data } if s == shape => Ok(data),
            t => Err(AdapterError::BadTensor {
                path: self.path.clone(),
                key: key.to_string(),
                message: format!("has shape {:?} ({}), expected {shape:?} (float)", t.shape(), dtype_name(t)),
            }),
        }
    }

    /// Checks that every tensor in the file belongs to one of `modules`.
    pub fn check_all_used(&self, modules: &BTreeSet<String>) -> Result<()> {
        match self.modules().into_iter().find(|m| !modules.contains(m)) {
            Some(m) => {
                let key = self.tensors.keys().find(|k| k.starts_with(&format!("{KEY_PREFIX}{m}."))).cloned();
                Err(AdapterError::UnexpectedKey { path: self.path.clone(), key: key.unwrap_or(m) })
            }
            None => Ok(()),
        }
    }

    /// Builds the adapted layer `name` over `base` from this file's settings and tensors.
    pub fn apply(&self, name: &str, base: Linear) -> Result<AdaptedLinear> {
        let method = self.config.method_for(name);
        let [_, d_out] = base.weight.dims();
        let device = base.weight.val().device();
        let tensors = LayerTensors { file: self, prefix: format!("{KEY_PREFIX}{name}."), device };
        let sets = match method.kind {
            MethodKind::IdLora => Some(crate::methods::idlora::index_sets(&tensors, d_out)?),
            _ => None,
        };
        let mut layer = AdaptedLinear::new(name, base, &method, sets.as_ref())?;
        if let Some(adapter) = layer.adapter.as_mut() {
            adapter.import(&tensors)?;
        }
        Ok(layer)
    }
}

/// The `adapter_config.json` object being read, for the methods' own keys
/// ([`crate::methods::Method::read_config`]). Errors name the file and the field.
pub struct ConfigFields<'a> {
    map: &'a mut serde_json::Map<String, Value>,
    path: &'a Path,
}

impl ConfigFields<'_> {
    /// Removes and returns a key's value.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// An error about this file.
    pub fn error(&self, message: String) -> AdapterError {
        AdapterError::Json { path: self.path.to_path_buf(), message }
    }

    fn as_usize(v: Option<Value>, key: &str, default: Option<usize>, path: &Path) -> Result<usize> {
        let err = |message: String| AdapterError::Json { path: path.to_path_buf(), message };
        match v {
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| err(format!("field `{key}`: expected a non-negative integer, found {n}"))),
            None | Some(Value::Null) => default.ok_or_else(|| err(format!("missing field `{key}`"))),
            Some(other) => Err(err(format!("field `{key}`: expected an integer, found {other}"))),
        }
    }

    fn as_f64(v: Option<Value>, key: &str, default: f64, path: &Path) -> Result<f64> {
        let err = |message: String| AdapterError::Json { path: path.to_path_buf(), message };
        match v {
            Some(Value::Number(n)) => {
                n.as_f64().ok_or_else(|| err(format!("field `{key}`: expected a number, found {n}")))
            }
            None | Some(Value::Null) => Ok(default),
            Some(other) => Err(err(format!("field `{key}`: expected a number, found {other}"))),
        }
    }

    /// A non-negative integer; absent or null gives `default` (an error when `None`).
    pub fn usize(&mut self, key: &str, default: Option<usize>) -> Result<usize> {
        let v = self.take(key);
        Self::as_usize(v, key, default, self.path)
    }

    /// A number; absent or null gives `default`.
    pub fn f64(&mut self, key: &str, default: f64) -> Result<f64> {
        let v = self.take(key);
        Self::as_f64(v, key, default, self.path)
    }

    /// A boolean; absent or null gives `default`.
    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.take(key) {
            Some(Value::Bool(b)) => Ok(b),
            None | Some(Value::Null) => Ok(default),
            Some(other) => Err(self.error(format!("field `{key}`: expected true or false, found {other}"))),
        }
    }
}

/// One layer's tensors in an [`AdapterFile`], read into module parameters
/// ([`crate::methods::Method::import`]): files are out-major, modules input-major.
pub struct LayerTensors<'a> {
    file: &'a AdapterFile,
    prefix: String,
    device: Device,
}

impl LayerTensors<'_> {
    /// An error about tensor `suffix` of this layer.
    pub fn bad(&self, suffix: &str, message: String) -> AdapterError {
        AdapterError::BadTensor {
            path: self.file.path.clone(),
            key: format!("{}{suffix}", self.prefix),
            message,
        }
    }

    /// The float file tensor `suffix` of shape `[rows, cols]` as an input-major `[cols, rows]`
    /// parameter.
    pub fn param(&self, suffix: &str, rows: usize, cols: usize) -> Result<Param<Tensor<2>>> {
        let data = transpose(self.file.f32(&format!("{}{suffix}", self.prefix), &[rows, cols])?, rows, cols);
        Ok(Param::from_tensor(Tensor::from_data(TensorData::new(data, [cols, rows]), &self.device)))
    }

    /// `n` tensors `{key}.{j}.weight` of shape `[rows, cols]`, each transposed and joined along
    /// `axis` of the module layout.
    pub fn stacked(
        &self,
        key: &str,
        n: usize,
        rows: usize,
        cols: usize,
        axis: usize,
    ) -> Result<Param<Tensor<2>>> {
        let parts = (0..n)
            .map(|j| self.param(&format!("{key}.{j}.weight"), rows, cols).map(|p| p.val()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Param::from_tensor(Tensor::cat(parts, axis).detach()))
    }

    /// The float vector `suffix` of length `n`.
    pub fn vector(&self, suffix: &str, n: usize) -> Result<Param<Tensor<1>>> {
        let data = self.file.f32(&format!("{}{suffix}", self.prefix), &[n])?;
        Ok(Param::from_tensor(Tensor::from_data(TensorData::new(data.to_vec(), [n]), &self.device)))
    }

    /// The integer tensor `suffix`: its shape and values.
    pub fn i32(&self, suffix: &str) -> Result<(&[usize], &[i32])> {
        match self.file.get(&format!("{}{suffix}", self.prefix))? {
            HostTensor::I32 { shape, data } => Ok((shape, data)),
            t => {
                Err(self
                    .bad(suffix, format!("has shape {:?} ({}), expected int32", t.shape(), dtype_name(t))))
            }
        }
    }
}

fn dtype_name(t: &HostTensor) -> &'static str {
    match t {
        HostTensor::F32 { .. } => "float",
        HostTensor::I32 { .. } => "int32",
    }
}

/// The adapter tensors of one layer by key suffix (none for full fine-tuning).
pub fn export(layer: &AdaptedLinear) -> Result<Vec<(String, HostTensor)>> {
    match &layer.adapter {
        Some(adapter) => adapter.export(&layer.name),
        None => Ok(Vec::new()),
    }
}
