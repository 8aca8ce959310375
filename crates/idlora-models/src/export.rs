//! Writing a model as a Hugging Face folder: `config.json`, safetensors (one file, or shards with
//! `model.safetensors.index.json`), and the tokenizer. LoRA and DoRA adapters are merged into the
//! base first; a fully fine-tuned model is written as it is. What comes out loads in transformers
//! (`AutoModelForCausalLM.from_pretrained`) and in [`crate::load`], with the same logits
//! (`tests/export.rs` checks both against fixtures made by transformers).
//!
//! ID-LoRA, HydraLoRA and MoELoRA cannot be merged: their update depends on the input through the
//! router. Exporting them is an error; evaluate them as adapters.
//!
//! ```
//! use burn::tensor::Device;
//! use idlora_models::export::{ExportOptions, export_hf};
//! # let json = r#"{"model_type": "llama", "hidden_size": 16, "intermediate_size": 24,
//! #   "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 32}"#;
//! let config = idlora_models::ModelConfig::from_hf_json(json, "config.json")?;
//! let model = idlora_models::load::random(config, 7, &Device::flex())?;
//! let dir = tempfile::tempdir()?;
//! let written = export_hf(model, None, dir.path(), &ExportOptions::default())?;
//! assert_eq!(written.files, ["config.json", "model.safetensors"]);
//! let again = idlora_models::load(dir.path(), &Device::flex())?;
//! assert_eq!(again.layers.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{FloatDType, Tensor};
use idlora_adapter::{AdapterError, MethodKind};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::error::{ModelError, Result};
use crate::model::CausalLm;
use crate::precision::Precision;
use crate::tokenizer::Tokenizer;

/// How [`export_hf`] writes the weights.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Storage type of the weights (norms and biases too, as Hugging Face checkpoints do).
    pub dtype: Precision,
    /// A new shard starts when the current one would pass this many bytes (Hugging Face's default
    /// is 5 GB; smaller shards keep the writer's memory low).
    pub max_shard_bytes: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { dtype: Precision::F32, max_shard_bytes: 2 << 30 }
    }
}

/// What [`export_hf`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    /// File names written into the folder, in the order written.
    pub files: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub bytes: usize,
    /// Projections whose adapter was merged into the weight (module paths).
    pub merged: Vec<String>,
}

/// One tensor to write: its Hugging Face name and its value in Hugging Face's layout.
struct Entry {
    name: String,
    value: Value,
}

enum Value {
    Vector(Tensor<1>),
    /// Stored as in the checkpoint (the embedding).
    Matrix(Tensor<2>),
    /// Stored input-major here, out-major in the checkpoint: transposed on the way out.
    InputMajor(Tensor<2>),
}

impl Value {
    fn shape(&self) -> Vec<usize> {
        match self {
            Value::Vector(t) => t.dims().to_vec(),
            Value::Matrix(t) => t.dims().to_vec(),
            Value::InputMajor(t) => {
                let [i, o] = t.dims();
                vec![o, i]
            }
        }
    }

    fn host(&self) -> Result<Vec<f32>> {
        let data = match self {
            Value::Vector(t) => t.clone().cast(FloatDType::F32).into_data(),
            Value::Matrix(t) => t.clone().cast(FloatDType::F32).into_data(),
            Value::InputMajor(t) => t.clone().cast(FloatDType::F32).transpose().into_data(),
        };
        data.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("reading a tensor back from the device: {e:?}")))
    }
}

fn dtype_of(p: Precision) -> (Dtype, usize, &'static str) {
    match p {
        Precision::F32 => (Dtype::F32, 4, "float32"),
        Precision::Bf16 => (Dtype::BF16, 2, "bfloat16"),
        Precision::F16 => (Dtype::F16, 2, "float16"),
    }
}

fn encode(values: &[f32], p: Precision) -> Vec<u8> {
    match p {
        Precision::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Precision::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        Precision::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
    }
}

/// Merges every LoRA / DoRA adapter of `model` into its base weight; errors name the first
/// projection whose method cannot be merged.
fn merge_all(model: &mut CausalLm) -> Result<Vec<String>> {
    let mut merged = Vec::new();
    for (_, p) in model.projections_mut() {
        match p.kind() {
            MethodKind::Full => {}
            MethodKind::Lora | MethodKind::Dora => {
                if !p.merged {
                    *p = p.clone().merge()?;
                }
                merged.push(p.name.clone());
            }
            other => {
                return Err(ModelError::Adapter(AdapterError::NotMergeable {
                    method: other.name(),
                    reason: "its update depends on the input through the router; evaluate the adapter \
                             folder with `--adapter` instead of exporting a merged model",
                }));
            }
        }
    }
    Ok(merged)
}

/// Every tensor of the model under its Hugging Face name, in checkpoint order.
fn entries(model: &CausalLm) -> Vec<Entry> {
    let mut out = vec![Entry {
        name: "model.embed_tokens.weight".into(),
        value: Value::Matrix(model.embed_tokens.val()),
    }];
    let mut projections = model.projections().into_iter();
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        out.push(Entry {
            name: format!("{p}.input_layernorm.weight"),
            value: Value::Vector(layer.input_layernorm.weight.val()),
        });
        out.push(Entry {
            name: format!("{p}.post_attention_layernorm.weight"),
            value: Value::Vector(layer.post_attention_layernorm.weight.val()),
        });
        // `projections()` lists each layer's seven in order; their names are the checkpoint's.
        for (_, proj) in projections.by_ref().take(7) {
            out.push(Entry {
                name: format!("{}.weight", proj.name),
                value: Value::InputMajor(proj.base.weight.val()),
            });
            if let Some(b) = &proj.base.bias {
                out.push(Entry { name: format!("{}.bias", proj.name), value: Value::Vector(b.val()) });
            }
        }
    }
    out.push(Entry { name: "model.norm.weight".into(), value: Value::Vector(model.norm.weight.val()) });
    if let Some(head) = &model.lm_head {
        out.push(Entry { name: "lm_head.weight".into(), value: Value::InputMajor(head.val()) });
    }
    out
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    idlora_data::write_atomic(path, bytes).map_err(|e| ModelError::Io { path: e.path, source: e.source })
}

/// Writes `model` (its LoRA / DoRA adapters merged) into `dir` as a Hugging Face folder, with
/// `tokenizer`'s files when given. Every file is written atomically; tensors are read back from
/// the device one at a time and a shard is held in memory only while it is written.
pub fn export_hf(
    mut model: CausalLm,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    options: &ExportOptions,
) -> Result<Exported> {
    let merged = merge_all(&mut model)?;
    let (dtype, width, dtype_name) = dtype_of(options.dtype);
    let entries = entries(&model);
    // Shards planned from the shapes first: their names carry the count.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let bytes = e.value.shape().iter().product::<usize>() * width;
        if size > 0 && size + bytes > options.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
    }
    let n = shards.len();
    let shard_name = |s: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        }
    };
    let mut files = vec!["config.json".to_string()];
    write(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&model.config.to_hf_json(dtype_name))
            .map_err(|e| ModelError::Input(e.to_string()))?
            .as_bytes(),
    )?;
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (s, members) in shards.iter().enumerate() {
        let mut data = Vec::with_capacity(members.len());
        for &i in members {
            let e = &entries[i];
            data.push((e.name.clone(), e.value.shape(), encode(&e.value.host()?, options.dtype)));
        }
        let views = data
            .iter()
            .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(dtype, shape.clone(), bytes)?)))
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| ModelError::Input(format!("building the safetensors header: {e}")))?;
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| ModelError::Input(format!("serialising {}: {e}", shard_name(s))))?;
        write(&dir.join(shard_name(s)), &bytes)?;
        for (name, _, b) in &data {
            total += b.len();
            weight_map.insert(name.clone(), shard_name(s));
        }
        files.push(shard_name(s));
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write(&dir.join("model.safetensors.index.json"), index.to_string().as_bytes())?;
        files.push("model.safetensors.index.json".into());
    }
    if let Some(t) = tokenizer {
        t.save_dir(dir)?;
        files.extend(["tokenizer.json".to_string(), "tokenizer_config.json".to_string()]);
    }
    Ok(Exported { files, tensors: entries.len(), bytes: total, merged })
}
