//! Safetensors checkpoints: one file, or shards listed in `model.safetensors.index.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Result, WeightsError};
use crate::quant::{self, StoredType};

/// One memory-mapped shard with its parsed header.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Byte offset of the data section in the file.
    data_start: usize,
    tensors: BTreeMap<String, safetensors::tensor::TensorInfo>,
    metadata: BTreeMap<String, String>,
}

/// A checkpoint in safetensors format, memory-mapped (tensor data is read on demand, never held twice).
///
/// ```no_run
/// use idlora_weights::safetensors_file::SafetensorsCheckpoint;
/// let ckpt = SafetensorsCheckpoint::open("model.safetensors")?;
/// for name in ckpt.tensor_names() {
///     println!("{name}: {:?}", ckpt.shape(name)?);
/// }
/// # Ok::<(), idlora_weights::WeightsError>(())
/// ```
pub struct SafetensorsCheckpoint {
    root: PathBuf,
    shards: Vec<Shard>,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsCheckpoint")
            .field("root", &self.root)
            .field("shards", &self.shards.len())
            .field("tensors", &self.by_name.len())
            .finish()
    }
}

fn stored_type(dtype: Dtype) -> Option<StoredType> {
    Some(match dtype {
        Dtype::F32 => StoredType::F32,
        Dtype::F16 => StoredType::F16,
        Dtype::BF16 => StoredType::BF16,
        Dtype::F64 => StoredType::F64,
        Dtype::I8 => StoredType::Int(8),
        Dtype::I16 => StoredType::Int(16),
        Dtype::I32 => StoredType::Int(32),
        Dtype::I64 => StoredType::Int(64),
        Dtype::U8 => StoredType::UInt(8),
        Dtype::U16 => StoredType::UInt(16),
        Dtype::U32 => StoredType::UInt(32),
        Dtype::U64 => StoredType::UInt(64),
        Dtype::BOOL => StoredType::Bool,
        _ => return None,
    })
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
        // SAFETY: read-only map of a file we do not modify; see `GgufFile::open`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| WeightsError::corrupt(path, format!("safetensors header: {e}")))?;
        let tensors = meta.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let metadata = meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), map, data_start: 8 + header_len, tensors, metadata })
    }
}

impl SafetensorsCheckpoint {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a folder holding either.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            return if index.is_file() {
                Self::open_index(&index)
            } else if single.is_file() {
                Self::open_files(path, &[single])
            } else {
                Err(WeightsError::UnknownFormat {
                    path: path.to_path_buf(),
                    reason: "no model.safetensors or model.safetensors.index.json in this folder".into(),
                })
            };
        }
        if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".index.json")) {
            return Self::open_index(path);
        }
        Self::open_files(path, &[path.to_path_buf()])
    }

    fn open_index(index: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(index).map_err(|e| WeightsError::io(index, e))?;
        let parsed: Index = serde_json::from_str(&text)
            .map_err(|e| WeightsError::corrupt(index, format!("index JSON: {e}")))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        let ckpt = Self::open_files(index, &files)?;
        // The index must agree with the shards: every listed tensor is in the shard it names.
        for (name, file) in &parsed.weight_map {
            let shard = ckpt.by_name.get(name).map(|&i| &ckpt.shards[i].path);
            if shard != Some(&dir.join(file)) {
                return Err(WeightsError::corrupt(
                    index,
                    format!("index lists tensor `{name}` in {file}, but that shard does not hold it"),
                ));
            }
        }
        Ok(ckpt)
    }

    fn open_files(root: &Path, files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut by_name = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            let shard = Shard::open(file)?;
            for name in shard.tensors.keys() {
                if by_name.insert(name.clone(), i).is_some() {
                    return Err(WeightsError::corrupt(
                        file,
                        format!("tensor `{name}` appears in more than one shard"),
                    ));
                }
            }
            shards.push(shard);
        }
        Ok(Self { root: root.to_path_buf(), shards, by_name })
    }

    /// The path this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The string metadata of the first shard (`__metadata__` in the header).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.shards.first().map(|s| s.metadata.clone()).unwrap_or_default()
    }

    fn entry(&self, name: &str) -> Result<(&Shard, &safetensors::tensor::TensorInfo)> {
        let shard = self
            .by_name
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| WeightsError::MissingTensor { path: self.root.clone(), name: name.into() })?;
        Ok((shard, &shard.tensors[name]))
    }

    /// A tensor's shape.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.entry(name)?.1.shape.clone())
    }

    /// A tensor's stored type.
    pub fn stored_type(&self, name: &str) -> Result<StoredType> {
        let (shard, info) = self.entry(name)?;
        stored_type(info.dtype).ok_or_else(|| WeightsError::UnsupportedType {
            path: shard.path.clone(),
            name: name.into(),
            dtype: format!("{:?}", info.dtype),
        })
    }

    /// The raw little-endian bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let (shard, info) = self.entry(name)?;
        let (start, end) = info.data_offsets;
        // `read_metadata` validated that offsets are contiguous and end at the file's end.
        Ok(&shard.map[shard.data_start + start..shard.data_start + end])
    }

    /// A floating-point tensor converted to `f32`, row-major.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let ty = self.stored_type(name)?;
        let bytes = self.tensor_bytes(name)?;
        let mut out = Vec::with_capacity(bytes.len() / ty.block_bytes());
        if !ty.is_float_convertible() || quant::to_f32(ty, bytes, &mut out).is_none() {
            let (shard, _) = self.entry(name)?;
            return Err(WeightsError::UnsupportedType {
                path: shard.path.clone(),
                name: name.into(),
                dtype: ty.to_string(),
            });
        }
        Ok(out)
    }

    /// An `i32` tensor (index sets are stored this way).
    pub fn read_i32(&self, name: &str) -> Result<Vec<i32>> {
        let ty = self.stored_type(name)?;
        if ty != StoredType::Int(32) {
            let (shard, _) = self.entry(name)?;
            return Err(WeightsError::UnsupportedType {
                path: shard.path.clone(),
                name: name.into(),
                dtype: format!("{ty} (expected I32)"),
            });
        }
        Ok(self
            .tensor_bytes(name)?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
