//! One call from paths to a runnable model: the base (Hugging Face folder or GGUF file), an
//! optional adapter folder on top, and the tokenizer, read only when first asked for.
//!
//! The tokenizer is lazy because many callers never encode text: `logits` from token ids, the
//! parameter count, a training run fed pre-tokenised data. A folder written by
//! `save_pretrained` for a model alone has no `tokenizer.json`, and must still load.
//!
//! ```
//! use std::path::Path;
//! use burn::tensor::Device;
//! use idlora_models::{ForwardInput, loaded::load_with_adapter};
//! // A transformers test model saved without its tokenizer (config.json + model.safetensors).
//! let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa_untied");
//! let loaded = load_with_adapter(&dir, None, &Device::flex())?;
//! let logits = loaded.model.forward(&ForwardInput::single(&[1, 2, 3]), None)?;
//! assert_eq!(logits.dims()[1], 3);
//! // Only encoding text needs a tokenizer, and this folder has none.
//! assert!(loaded.tokenizer().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::Device;
use idlora_adapter::AdapterFile;

use crate::error::Result;
use crate::load::load_as;
use crate::model::CausalLm;
use crate::precision::Precision;
use crate::tokenizer::{Tokenizer, load_tokenizer};

/// A model loaded from disk, its adapter applied, and where it came from.
pub struct LoadedModel {
    /// The model, adapter applied (projections without one are frozen).
    pub model: CausalLm,
    /// The base model's path.
    pub path: PathBuf,
    /// The adapter file applied, if any (its `warnings` say what was ignored).
    pub adapter: Option<AdapterFile>,
    tokenizer: OnceLock<Tokenizer>,
}

impl LoadedModel {
    /// The tokenizer of the base model, read on first use (from GGUF metadata, or the folder's
    /// `tokenizer.json`); an error naming the missing file if there is none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        if let Some(t) = self.tokenizer.get() {
            return Ok(t);
        }
        let t = load_tokenizer(&self.path, &self.model.config.eos_token_ids)?;
        Ok(self.tokenizer.get_or_init(|| t))
    }

    /// `<method> r=<r>` of the adapter, if one was applied.
    pub fn adapter_label(&self) -> Option<String> {
        self.adapter.as_ref().map(|file| {
            let method = &file.config.method;
            format!("{} r={}", method.kind.display_name(), method.r)
        })
    }
}

/// Loads the model at `path` on `device` and applies the adapter folder `adapter`, if given.
/// The tokenizer is read later, by [`LoadedModel::tokenizer`].
pub fn load_with_adapter(path: &Path, adapter: Option<&Path>, device: &Device) -> Result<LoadedModel> {
    load_with_adapter_as(path, adapter, device, Precision::F32)
}

/// [`load_with_adapter`] with the frozen base stored in `precision` (cast tensor by tensor as it
/// is read; the adapter stays f32).
pub fn load_with_adapter_as(
    path: &Path,
    adapter: Option<&Path>,
    device: &Device,
    precision: Precision,
) -> Result<LoadedModel> {
    let mut model = load_as(path, device, precision)?;
    let mut file = None;
    if let Some(dir) = adapter {
        let (m, f) = model.load_adapters(dir)?;
        model = m;
        file = Some(f);
    }
    Ok(LoadedModel { model, path: path.to_path_buf(), adapter: file, tokenizer: OnceLock::new() })
}
