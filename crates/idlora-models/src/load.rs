//! Building a [`CausalLm`] from a Hugging Face folder or a GGUF file.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use idlora_adapter::{AdaptedLinear, MethodConfig, MethodKind};
use idlora_weights::Weights;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{Attention, CausalLm, DecoderLayer, Mlp, RmsNorm, linear};
use crate::precision::Precision;
use crate::rope;

/// Opens a model: a folder with `config.json` and safetensors (single file or shards), or a GGUF
/// file of the `llama` architecture. Weights are converted to f32 on `device` one tensor at a time.
///
/// ```no_run
/// use burn::tensor::Device;
/// let model = idlora_models::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &Device::flex())?;
/// println!("{} layers", model.config.num_layers);
/// # Ok::<(), idlora_models::ModelError>(())
/// ```
pub fn load(path: &Path, device: &Device) -> Result<CausalLm> {
    load_as(path, device, Precision::F32)
}

/// [`load`] with the frozen base stored in `precision` (see [`crate::precision`]): each matrix is
/// cast as it is read, so at most one tensor is ever held in f32 (an 8B model in bf16 never needs
/// its 32 GB f32 form).
pub fn load_as(path: &Path, device: &Device, precision: Precision) -> Result<CausalLm> {
    let weights = Weights::open(path)?;
    let config = config_of(&weights, path)?;
    from_weights_as(&weights, config, device, precision)
}

/// The model configuration of a checkpoint, without reading its tensors: a `config.json`, a
/// Hugging Face folder (its `config.json`) or a GGUF file (its metadata).
///
/// ```no_run
/// let config = idlora_models::load::read_config("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
/// println!("{} layers", config.num_layers);
/// # Ok::<(), idlora_models::ModelError>(())
/// ```
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    if path.extension().is_some_and(|e| e == "json") {
        return ModelConfig::from_hf_file(path);
    }
    if path.is_dir() {
        return ModelConfig::from_hf_file(&path.join("config.json"));
    }
    config_of(&Weights::open(path)?, path)
}

fn config_of(weights: &Weights, path: &Path) -> Result<ModelConfig> {
    Ok(match weights.gguf() {
        Some(g) => {
            let tied = !weights.tensor_names().iter().any(|n| n == "lm_head.weight");
            ModelConfig::from_gguf(g, tied)?
        }
        None => {
            let dir = if path.is_dir() {
                path.to_path_buf()
            } else {
                path.parent().unwrap_or(Path::new(".")).to_path_buf()
            };
            ModelConfig::from_hf_file(&dir.join("config.json"))?
        }
    })
}

/// The tensor names a model with `config` reads.
pub fn expected_tensors(config: &ModelConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        names.push(format!("{p}.input_layernorm.weight"));
        names.push(format!("{p}.post_attention_layernorm.weight"));
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            names.push(format!("{p}.self_attn.{m}.weight"));
            if config.attention_bias {
                names.push(format!("{p}.self_attn.{m}.bias"));
            }
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{m}.weight"));
            if config.mlp_bias {
                names.push(format!("{p}.mlp.{m}.bias"));
            }
        }
    }
    names
}

/// Where the values come from: a checkpoint, or a seeded random initialisation.
enum Source<'a> {
    Weights {
        weights: &'a Weights,
        /// The checkpoint's tensor names, listed once.
        names: BTreeSet<String>,
    },
    /// The generator and the standard deviation.
    Random(Box<RefCell<(ChaCha8Rng, f32)>>),
}

struct Reader<'a> {
    source: Source<'a>,
    device: &'a Device,
    /// What the matrices (embedding, head, projections) are stored in; vectors stay f32.
    precision: Precision,
}

impl Reader<'_> {
    fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (weights, names) = match &self.source {
            Source::Weights { weights, names } => (weights, names),
            Source::Random(rng) => return Ok(random_values(name, expected, &mut rng.borrow_mut())),
        };
        let path = weights.path().to_path_buf();
        if !names.contains(name) {
            return Err(ModelError::MissingTensor { path, name: name.to_string() });
        }
        let t = weights.read_f32(name)?;
        if t.shape != expected {
            return Err(ModelError::Shape {
                path,
                name: name.to_string(),
                found: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t.data)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Tensor<1>> {
        Ok(Tensor::from_data(TensorData::new(self.read(name, &[n])?, [n]), self.device))
    }

    /// An out-major `[rows, cols]` checkpoint matrix as a contiguous input-major `[cols, rows]`
    /// tensor. The transposition happens once here, on the host, one tensor at a time: products
    /// with a transposed view would repack the weight at every forward.
    fn transposed(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<2>> {
        let data = self.read(name, &[rows, cols])?;
        let mut t = vec![0.0f32; data.len()];
        for (i, row) in data.chunks_exact(cols).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                t[j * rows + i] = v;
            }
        }
        Ok(Tensor::<2>::from_data(TensorData::new(t, [cols, rows]), self.device).cast(self.precision.dtype()))
    }

    fn projection(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<AdaptedLinear> {
        let w = self.transposed(&format!("{prefix}.weight"), d_out, d_in)?;
        let b = if bias { Some(self.vector(&format!("{prefix}.bias"), d_out)?) } else { None };
        // No adapter yet: full fine-tuning is the neutral state; `apply_adapters` freezes the base.
        Ok(AdaptedLinear::new(prefix, linear(w, b), &MethodConfig::new(MethodKind::Full, 1), None)?)
    }
}

/// Builds the model from opened weights and a config. Missing, extra or mis-shaped tensors are
/// errors naming the tensor.
pub fn from_weights(weights: &Weights, config: ModelConfig, device: &Device) -> Result<CausalLm> {
    from_weights_as(weights, config, device, Precision::F32)
}

/// [`from_weights`] with the frozen base stored in `precision`, each matrix cast as it is read.
pub fn from_weights_as(
    weights: &Weights,
    config: ModelConfig,
    device: &Device,
    precision: Precision,
) -> Result<CausalLm> {
    // The last layer must exist before every expected name is listed: a corrupt layer count would
    // otherwise list billions of names.
    let names: BTreeSet<String> = weights.tensor_names().into_iter().collect();
    if let Some(last) = config.num_layers.checked_sub(1) {
        let name = format!("model.layers.{last}.input_layernorm.weight");
        if !names.contains(&name) {
            return Err(ModelError::MissingTensor { path: weights.path().to_path_buf(), name });
        }
    }
    let expected: BTreeSet<String> = expected_tensors(&config).into_iter().collect();
    for name in names.iter().cloned() {
        // Old checkpoints store RoPE's inverse frequencies; tied checkpoints may still carry a head.
        let harmless =
            name.ends_with("rotary_emb.inv_freq") || (config.tie_word_embeddings && name == "lm_head.weight");
        if !expected.contains(&name) && !harmless {
            return Err(ModelError::ExtraTensor {
                path: weights.path().to_path_buf(),
                name,
                arch: config.arch.name().to_string(),
            });
        }
    }
    build(Reader { source: Source::Weights { weights, names }, device, precision }, config)
}

/// A model with seeded random weights (norms 1, everything else uniform with standard deviation
/// 0.02, as Hugging Face's `initializer_range` default): for tests, benchmarks and training from
/// scratch. The same `config` and `seed` give the same weights on every machine.
///
/// ```
/// use burn::tensor::Device;
/// # let json = r#"{"model_type": "llama", "hidden_size": 16, "intermediate_size": 24,
/// #   "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 32}"#;
/// let config = idlora_models::ModelConfig::from_hf_json(json, "config.json")?;
/// let model = idlora_models::load::random(config, 7, &Device::flex())?;
/// assert_eq!(model.layers.len(), 1);
/// # Ok::<(), idlora_models::ModelError>(())
/// ```
pub fn random(config: ModelConfig, seed: u64, device: &Device) -> Result<CausalLm> {
    random_with_std(config, seed, 0.02, device)
}

/// [`random`] with another standard deviation (tiny test models learn faster with a larger one).
pub fn random_with_std(config: ModelConfig, seed: u64, std: f32, device: &Device) -> Result<CausalLm> {
    let rng = Box::new(RefCell::new((ChaCha8Rng::seed_from_u64(seed), std)));
    build(Reader { source: Source::Random(rng), device, precision: Precision::F32 }, config)
}

fn random_values(name: &str, shape: &[usize], (rng, std): &mut (ChaCha8Rng, f32)) -> Vec<f32> {
    let n = shape.iter().product();
    if name.ends_with("norm.weight") {
        return vec![1.0; n];
    }
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let a = *std * 3f32.sqrt();
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

fn build(r: Reader, config: ModelConfig) -> Result<CausalLm> {
    let device = r.device;
    let (h, v) = (config.hidden_size, config.vocab_size);
    let (q_dim, kv_dim) = (config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim);
    let i_dim = config.intermediate_size;
    let embed = r.read("model.embed_tokens.weight", &[v, h])?;
    let embed = Tensor::<2>::from_data(TensorData::new(embed, [v, h]), device).cast(r.precision.dtype());
    let embed_tokens = Param::from_tensor(embed);
    let mut layers = Vec::new();
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let (ab, mb) = (config.attention_bias, config.mlp_bias);
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: Param::from_tensor(r.vector(&format!("{p}.{name}.weight"), h)?),
                eps: config.rms_norm_eps,
            })
        };
        layers.push(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention {
                q_proj: r.projection(&format!("{p}.self_attn.q_proj"), h, q_dim, ab)?,
                k_proj: r.projection(&format!("{p}.self_attn.k_proj"), h, kv_dim, ab)?,
                v_proj: r.projection(&format!("{p}.self_attn.v_proj"), h, kv_dim, ab)?,
                o_proj: r.projection(&format!("{p}.self_attn.o_proj"), q_dim, h, ab)?,
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
            },
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp {
                gate_proj: r.projection(&format!("{p}.mlp.gate_proj"), h, i_dim, mb)?,
                up_proj: r.projection(&format!("{p}.mlp.up_proj"), h, i_dim, mb)?,
                down_proj: r.projection(&format!("{p}.mlp.down_proj"), i_dim, h, mb)?,
            },
        });
    }
    let norm =
        RmsNorm { weight: Param::from_tensor(r.vector("model.norm.weight", h)?), eps: config.rms_norm_eps };
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(Param::from_tensor(r.transposed("lm_head.weight", v, h)?))
    };
    let inv_freq = rope::inv_freq(&config);
    Ok(CausalLm { embed_tokens, layers, norm, lm_head, config, inv_freq })
}
