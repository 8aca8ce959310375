//! GGUF (v2 and v3) files, as llama.cpp writes them: metadata, tensor directory, and tensor data.
//!
//! The parser checks every count, length and offset against the file before it allocates or reads,
//! so a corrupt or truncated file is an error naming the field or tensor, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Result, WeightsError};
use crate::quant::{self, StoredType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f32`
    F32(f32),
    /// `f64`
    F64(f64),
    /// `bool`
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values (all of one type in a valid file).
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name as stored (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGML dimensions, fastest-varying first (`ne[0]` is the row length).
    pub ggml_dims: Vec<u64>,
    /// Storage type.
    pub dtype: StoredType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Byte length.
    pub len: usize,
}

impl GgufTensorInfo {
    /// The shape in row-major order, outermost first (`[d_out, d_in]` for a weight matrix), as
    /// PyTorch and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.ggml_dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.ggml_dims.iter().map(|&d| d as usize).product()
    }
}

/// A memory-mapped GGUF file.
///
/// ```no_run
/// let file = idlora_weights::gguf::GgufFile::open("model.gguf")?;
/// let arch = file.metadata_str("general.architecture")?;
/// let embedding = file.read_f32("token_embd.weight")?;
/// println!("{arch}: {} values", embedding.len());
/// # Ok::<(), idlora_weights::WeightsError>(())
/// ```
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: BTreeMap<String, usize>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> WeightsError {
        WeightsError::corrupt(self.path, format!("{what} (at byte {})", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.err(&format!("truncated while reading {what}")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A count of items each at least `min_item_bytes` long, checked against what is left.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_item_bytes))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(self.err(&format!("{what} = {n} does not fit in the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, &format!("length of {what}"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(&what)?[0]),
            1 => GgufValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(self.u32(&what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(&format!("`{key}`: bool byte {b}"))),
            },
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth > 4 {
                    return Err(self.err(&format!("`{key}`: arrays nested too deeply")));
                }
                let elem = self.u32(&format!("element type of `{key}`"))?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(&format!("`{key}`: unknown array element type {t}"))),
                };
                let n = self.count(min, &format!("length of `{key}`"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(&what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(self.err(&format!("`{key}`: unknown value type {t}"))),
        })
    }
}

/// GGML's type ids (llama.cpp `ggml.h`), with their block geometry.
fn ggml_type(id: u32) -> Option<StoredType> {
    let other = |name, block, bytes| Some(StoredType::Ggml { id, name, block, bytes });
    match id {
        0 => Some(StoredType::F32),
        1 => Some(StoredType::F16),
        2 => Some(StoredType::Q4_0),
        3 => Some(StoredType::Q4_1),
        6 => Some(StoredType::Q5_0),
        7 => Some(StoredType::Q5_1),
        8 => Some(StoredType::Q8_0),
        9 => other("Q8_1", 32, 36),
        10 => Some(StoredType::Q2_K),
        11 => Some(StoredType::Q3_K),
        12 => Some(StoredType::Q4_K),
        13 => Some(StoredType::Q5_K),
        14 => Some(StoredType::Q6_K),
        15 => other("Q8_K", 256, 292),
        24 => Some(StoredType::Int(8)),
        25 => Some(StoredType::Int(16)),
        26 => Some(StoredType::Int(32)),
        27 => Some(StoredType::Int(64)),
        28 => Some(StoredType::F64),
        30 => Some(StoredType::BF16),
        _ => None,
    }
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
        // SAFETY: the map is read-only; a file changed underneath by another process is outside
        // what any reader of model files can guard against (candle and burn map files the same way).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
        Self::from_map(path.to_path_buf(), map)
    }

    fn from_map(path: PathBuf, map: memmap2::Mmap) -> Result<Self> {
        let (version, metadata, tensors, data_start) = parse(&path, &map)?;
        let mut by_name = BTreeMap::new();
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(WeightsError::corrupt(&path, format!("tensor `{}` listed twice", t.name)));
            }
        }
        Ok(Self { path, map, version, metadata, tensors, by_name, data_start })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value, or an error naming the key.
    pub fn metadata_value(&self, key: &str) -> Result<&GgufValue> {
        self.metadata.get(key).ok_or_else(|| WeightsError::Metadata {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: "missing".into(),
        })
    }

    fn metadata_err(&self, key: &str, expected: &str) -> WeightsError {
        WeightsError::Metadata {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: format!("expected {expected}"),
        }
    }

    /// A string metadata value.
    pub fn metadata_str(&self, key: &str) -> Result<&str> {
        self.metadata_value(key)?.as_str().ok_or_else(|| self.metadata_err(key, "a string"))
    }

    /// An unsigned integer metadata value.
    pub fn metadata_u64(&self, key: &str) -> Result<u64> {
        self.metadata_value(key)?.as_u64().ok_or_else(|| self.metadata_err(key, "a non-negative integer"))
    }

    /// A float metadata value.
    pub fn metadata_f64(&self, key: &str) -> Result<f64> {
        self.metadata_value(key)?.as_f64().ok_or_else(|| self.metadata_err(key, "a number"))
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor's directory entry.
    pub fn tensor_info(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| WeightsError::MissingTensor { path: self.path.clone(), name: name.to_owned() })
    }

    /// The raw stored bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(name)?;
        // Offsets were checked against the file length while parsing.
        let start = self.data_start + info.offset as usize;
        Ok(&self.map[start..start + info.len])
    }

    /// A tensor's values converted (dequantised) to `f32`, in row-major order of [`GgufTensorInfo::shape`].
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        let mut out = Vec::with_capacity(info.n_elements());
        quant::to_f32(info.dtype, self.tensor_bytes(name)?, &mut out).ok_or_else(|| {
            WeightsError::UnsupportedType {
                path: self.path.clone(),
                name: name.to_owned(),
                dtype: info.dtype.to_string(),
            }
        })?;
        Ok(out)
    }
}

type Parsed = (u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>, usize);

fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    let mut c = Cursor { bytes, pos: 0, path };
    if c.take(4, "magic")? != MAGIC {
        return Err(WeightsError::corrupt(path, "bad magic: not a GGUF file"));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(WeightsError::corrupt(path, format!("GGUF version {version} is not supported (2 or 3)")));
    }
    // A tensor entry takes at least 8 (name length) + 4 + 4 + 8 bytes; a key-value pair 8 + 4 + 1.
    let n_tensors = c.count(24, "tensor count")?;
    let n_kv = c.count(13, "metadata count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of `{key}`"))?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(WeightsError::Metadata {
                    path: path.to_path_buf(),
                    key: "general.alignment".into(),
                    reason: format!("{v:?} is not a power of two"),
                });
            }
        },
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&format!("dimension count of `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(&format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&format!("dimensions of `{name}`"))?);
        }
        let type_id = c.u32(&format!("type of `{name}`"))?;
        let dtype = ggml_type(type_id)
            .ok_or_else(|| c.err(&format!("tensor `{name}` has unknown GGML type {type_id}")))?;
        let offset = c.u64(&format!("offset of `{name}`"))?;
        let n = dims
            .iter()
            .try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
            .ok_or_else(|| c.err(&format!("tensor `{name}`: element count overflows")))?;
        if !(dims[0] as usize).is_multiple_of(dtype.block_len()) {
            return Err(c.err(&format!(
                "tensor `{name}`: row length {} is not a multiple of the {dtype} block ({})",
                dims[0],
                dtype.block_len()
            )));
        }
        let len =
            dtype.bytes_for(n).ok_or_else(|| c.err(&format!("tensor `{name}`: byte size overflows")))?;
        infos.push(GgufTensorInfo { name, ggml_dims: dims, dtype, offset, len });
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    for t in &infos {
        if t.offset % alignment != 0 {
            return Err(WeightsError::corrupt(
                path,
                format!("tensor `{}`: offset {} is not aligned to {alignment}", t.name, t.offset),
            ));
        }
        let end = t.offset.checked_add(t.len as u64);
        if end.is_none_or(|end| end > data_len) {
            return Err(WeightsError::corrupt(
                path,
                format!(
                    "tensor `{}` ({} bytes at offset {}) runs past the end of the file (data section holds {data_len} bytes)",
                    t.name, t.len, t.offset
                ),
            ));
        }
    }
    Ok((version, metadata, infos, data_start as usize))
}

/// Parses GGUF bytes already in memory (used by the fuzz and property tests; files go through
/// [`GgufFile::open`]). Returns the tensor directory.
pub fn parse_bytes(bytes: &[u8]) -> Result<(BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>)> {
    let (_, metadata, tensors, _) = parse(Path::new("<memory>"), bytes)?;
    Ok((metadata, tensors))
}
