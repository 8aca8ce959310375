//! Reading model weights: safetensors checkpoints (one file or shards) and GGUF v2/v3 files.
//!
//! [`Weights::open`] accepts any of them and presents every tensor under its Hugging Face name, in
//! Hugging Face row order, converted to `f32`: GGUF files of the `llama` architecture are renamed
//! and their query/key rows un-permuted (see [`llama`]). The lower-level readers
//! ([`gguf::GgufFile`], [`safetensors_file::SafetensorsCheckpoint`]) give raw access.
//!
//! Files are memory-mapped; a tensor is converted only when it is read.
//!
//! ```no_run
//! use idlora_weights::Weights;
//! let weights = Weights::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let q = weights.read_f32("model.layers.0.self_attn.q_proj.weight")?;
//! assert_eq!(q.shape, [576, 576]);
//! # Ok::<(), idlora_weights::WeightsError>(())
//! ```

/// Error type of this crate.
pub mod error;
pub mod gguf;
pub mod llama;
pub mod quant;
pub mod safetensors_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::{Result, WeightsError};
pub use quant::StoredType;

/// A dense `f32` tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl F32Tensor {
    /// The tensor as a matrix `(rows, cols)`, or an error naming it when it is not 2-D.
    pub fn matrix_dims(&self, path: &Path, name: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [rows, cols] => Ok((rows, cols)),
            _ => Err(WeightsError::Shape {
                path: path.to_path_buf(),
                name: name.into(),
                shape: self.shape.clone(),
                expected: "a 2-D matrix".into(),
            }),
        }
    }
}

enum Source {
    Safetensors(safetensors_file::SafetensorsCheckpoint),
    Gguf { file: gguf::GgufFile, names: BTreeMap<String, (String, Option<usize>)> },
}

/// Any supported weight file, with tensors under Hugging Face names.
pub struct Weights {
    path: PathBuf,
    source: Source,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights").field("path", &self.path).finish()
    }
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    if path.is_dir() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

impl Weights {
    /// Opens a GGUF file, a safetensors file, a shard index, or a Hugging Face model folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(WeightsError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        let source = if is_gguf(path)? {
            let file = gguf::GgufFile::open(path)?;
            let names = gguf_hf_names(&file)?;
            Source::Gguf { file, names }
        } else {
            Source::Safetensors(safetensors_file::SafetensorsCheckpoint::open(path)?)
        };
        Ok(Self { path: path.to_path_buf(), source })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying GGUF file, when this is one (for its metadata: tokenizer, hyper-parameters).
    pub fn gguf(&self) -> Option<&gguf::GgufFile> {
        match &self.source {
            Source::Gguf { file, .. } => Some(file),
            Source::Safetensors(_) => None,
        }
    }

    /// All tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        match &self.source {
            Source::Safetensors(s) => s.tensor_names().map(str::to_owned).collect(),
            Source::Gguf { names, .. } => names.keys().cloned().collect(),
        }
    }

    /// A tensor's shape, outermost first.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match &self.source {
            Source::Safetensors(s) => s.shape(name),
            Source::Gguf { file, names } => {
                let (raw, _) = names.get(name).ok_or_else(|| self.missing(name))?;
                Ok(file.tensor_info(raw)?.shape())
            }
        }
    }

    /// A tensor's stored element type.
    pub fn stored_type(&self, name: &str) -> Result<StoredType> {
        match &self.source {
            Source::Safetensors(s) => s.stored_type(name),
            Source::Gguf { file, names } => {
                let (raw, _) = names.get(name).ok_or_else(|| self.missing(name))?;
                Ok(file.tensor_info(raw)?.dtype)
            }
        }
    }

    fn missing(&self, name: &str) -> WeightsError {
        WeightsError::MissingTensor { path: self.path.clone(), name: name.into() }
    }

    /// A tensor converted to `f32` (dequantised where stored quantised).
    pub fn read_f32(&self, name: &str) -> Result<F32Tensor> {
        match &self.source {
            Source::Safetensors(s) => Ok(F32Tensor { shape: s.shape(name)?, data: s.read_f32(name)? }),
            Source::Gguf { file, names } => {
                let (raw, heads) = names.get(name).ok_or_else(|| self.missing(name))?;
                let shape = file.tensor_info(raw)?.shape();
                let mut data = file.read_f32(raw)?;
                if let Some(heads) = *heads {
                    let (rows, cols) = match shape[..] {
                        [r, c] => (r, c),
                        _ => (0, 0),
                    };
                    llama::unpermute_rows(&mut data, rows, cols, heads).ok_or_else(|| {
                        WeightsError::Shape {
                            path: self.path.clone(),
                            name: raw.clone(),
                            shape: shape.clone(),
                            expected: format!("a matrix whose rows split into {heads} heads of even size"),
                        }
                    })?;
                }
                Ok(F32Tensor { shape, data })
            }
        }
    }

    /// A 2-D tensor as `(rows, cols, data)`; any other rank is an error naming the tensor.
    pub fn read_matrix(&self, name: &str) -> Result<(usize, usize, Vec<f32>)> {
        let shape = self.shape(name)?;
        if shape.len() != 2 {
            return Err(WeightsError::Shape {
                path: self.path.clone(),
                name: name.into(),
                shape,
                expected: "a 2-D matrix".into(),
            });
        }
        let t = self.read_f32(name)?;
        Ok((t.shape[0], t.shape[1], t.data))
    }
}

/// Hugging Face names for the tensors of a GGUF file (identity unless the architecture is `llama`).
fn gguf_hf_names(file: &gguf::GgufFile) -> Result<BTreeMap<String, (String, Option<usize>)>> {
    let arch = file.metadata_str("general.architecture").ok();
    let mut names = BTreeMap::new();
    if arch == Some("llama") {
        let n_head = file.metadata_u64("llama.attention.head_count")? as usize;
        let n_head_kv = match file.metadata_u64("llama.attention.head_count_kv") {
            Ok(n) => n as usize,
            Err(_) => n_head,
        };
        for t in file.tensors() {
            let hf = llama::hf_name(&t.name, n_head, n_head_kv);
            names.insert(hf.name, (t.name.clone(), hf.unpermute_heads));
        }
    } else {
        for t in file.tensors() {
            names.insert(t.name.clone(), (t.name.clone(), None));
        }
    }
    Ok(names)
}
