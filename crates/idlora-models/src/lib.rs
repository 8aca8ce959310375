//! LLaMA and Mistral in burn, loaded from Hugging Face safetensors folders or GGUF files, with
//! `idlora-adapter` methods on any projection.
//!
//! One set of parts serves both architectures (`docs/models.md`): RMSNorm, RoPE (with LLaMA 3
//! scaling), grouped-query attention with a KV cache (and Mistral's sliding window), SwiGLU MLP,
//! tied or untied head. Every projection is an [`idlora_adapter::AdaptedLinear`].

pub mod adapters;
pub mod clustering;
pub mod config;
#[cfg(feature = "flex")]
pub mod device;
pub mod error;
pub mod export;
#[cfg(feature = "flex")]
pub mod generate;
pub mod layout;
pub mod load;
pub mod loaded;
pub mod model;
pub mod precision;
pub mod rope;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig};
#[cfg(feature = "flex")]
pub use device::{DeviceChoice, DeviceError, Picked, pick};
pub use error::{ModelError, Result};
pub use generate::{Generation, SamplingConfig, StopReason, generate};
pub use layout::Target;
pub use load::load;
pub use loaded::{LoadedModel, load_with_adapter, load_with_adapter_as};
pub use model::{CausalLm, ForwardInput, KvCache};
pub use precision::Precision;
pub use tokenizer::{ChatMessage, Tokenizer, load_tokenizer};
