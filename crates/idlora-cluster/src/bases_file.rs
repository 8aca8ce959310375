//! The index-set file: every adapted matrix's `S_1 .. S_k` of a model in one safetensors file.
//!
//! Each matrix `model.layers.3.self_attn.q_proj.weight` gets an `I32` tensor
//! `model.layers.3.self_attn.q_proj.bases` of shape `[k, r]` (row `i` is `S_i`, nearest first for
//! PMRC). The safetensors metadata holds `format = "idlora-bases"`, `format_version`, and the
//! settings (`settings`, JSON of [`PmrcConfig`]) plus any caller-given entries.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::{IndexSets, PmrcConfig};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "idlora-bases";
/// Version of the layout written.
pub const FORMAT_VERSION: &str = "1";

/// Errors reading or writing an index-set file.
#[derive(Debug, thiserror::Error)]
pub enum BasesFileError {
    /// File-system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid index-set file.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the tensor or key.
        reason: String,
    },
}

/// The tensor name holding the sets of weight `weight_name` (`...q_proj.weight` -> `...q_proj.bases`).
pub fn bases_tensor_name(weight_name: &str) -> String {
    format!("{}.bases", weight_name.strip_suffix(".weight").unwrap_or(weight_name))
}

/// A model's index sets, keyed by weight name, with the settings that made them.
#[derive(Debug, Clone, PartialEq)]
pub struct BasesFile {
    /// Sets per weight name (`model.layers.0.self_attn.q_proj.weight`).
    pub sets: BTreeMap<String, IndexSets>,
    /// The settings used.
    pub settings: PmrcConfig,
    /// Further metadata (source model, timings, ...).
    pub extra: BTreeMap<String, String>,
}

impl BasesFile {
    /// Writes the file atomically (a temporary file in the same folder, then a rename).
    pub fn save(&self, path: &Path) -> Result<(), BasesFileError> {
        let shown = path.display().to_string();
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .sets
            .iter()
            .map(|(name, s)| {
                let bytes = s.to_i32().iter().flat_map(|v| v.to_le_bytes()).collect();
                (bases_tensor_name(name), bytes, vec![s.k(), s.rank])
            })
            .collect();
        let mut views = Vec::with_capacity(data.len());
        for (name, bytes, shape) in &data {
            let view = TensorView::new(Dtype::I32, shape.clone(), bytes).map_err(|e| {
                BasesFileError::Invalid { path: shown.clone(), reason: format!("{name}: {e}") }
            })?;
            views.push((name.clone(), view));
        }
        let mut meta: HashMap<String, String> = self.extra.clone().into_iter().collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("format_version".into(), FORMAT_VERSION.into());
        let settings = serde_json::to_string(&self.settings)
            .map_err(|e| BasesFileError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        meta.insert("settings".into(), settings);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| BasesFileError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        idlora_data::write_atomic(path, &bytes)
            .map_err(|e| BasesFileError::Io { path: e.path.display().to_string(), source: e.source })
    }

    /// Reads a file written by [`BasesFile::save`], checking its format and every tensor.
    pub fn load(path: &Path) -> Result<Self, BasesFileError> {
        let shown = path.display().to_string();
        let invalid = |reason: String| BasesFileError::Invalid { path: shown.clone(), reason };
        let bytes =
            std::fs::read(path).map_err(|source| BasesFileError::Io { path: shown.clone(), source })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut extra: BTreeMap<String, String> =
            meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        if extra.remove("format").as_deref() != Some(FORMAT) {
            return Err(invalid(format!("metadata `format` is not `{FORMAT}`")));
        }
        match extra.remove("format_version").as_deref() {
            Some(FORMAT_VERSION) => {}
            other => {
                return Err(invalid(format!(
                    "metadata `format_version` is {other:?}, expected {FORMAT_VERSION}"
                )));
            }
        }
        let settings =
            extra.remove("settings").ok_or_else(|| invalid("metadata `settings` is missing".into()))?;
        let settings: PmrcConfig =
            serde_json::from_str(&settings).map_err(|e| invalid(format!("metadata `settings`: {e}")))?;
        let mut sets = BTreeMap::new();
        for (name, view) in st.tensors() {
            let Some(stem) = name.strip_suffix(".bases") else {
                return Err(invalid(format!("tensor `{name}` does not end in `.bases`")));
            };
            if view.dtype() != Dtype::I32 {
                return Err(invalid(format!("tensor `{name}` is {:?}, expected I32", view.dtype())));
            }
            let [k, r] = view.shape()[..] else {
                return Err(invalid(format!(
                    "tensor `{name}` has shape {:?}, expected [k, r]",
                    view.shape()
                )));
            };
            let values: Vec<i32> =
                view.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let s = IndexSets::from_i32(&values, k, r, i32::MAX as usize)
                .map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
            sets.insert(format!("{stem}.weight"), s);
        }
        Ok(Self { sets, settings, extra })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bases.safetensors");
        let mut sets = BTreeMap::new();
        sets.insert(
            "model.layers.0.self_attn.q_proj.weight".to_string(),
            IndexSets { rank: 2, sets: vec![vec![3, 1], vec![0, 7]] },
        );
        sets.insert(
            "model.layers.1.mlp.down_proj.weight".to_string(),
            IndexSets { rank: 1, sets: vec![vec![5]] },
        );
        let mut extra = BTreeMap::new();
        extra.insert("source".to_string(), "model.gguf".to_string());
        let file = BasesFile { sets, settings: PmrcConfig::default(), extra };
        file.save(&path).unwrap();
        assert_eq!(BasesFile::load(&path).unwrap(), file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = BasesFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("bases.safetensors"), "{err}");
    }
}
