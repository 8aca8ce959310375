//! ID-LoRA and the baselines it is measured against, as burn modules.
//!
//! * [`AdaptedLinear`] wraps a frozen base [`burn::nn::Linear`] (moved in, never copied) with one
//!   adapter: [`Lora`], [`Dora`], [`HydraLora`], [`MoeLora`] or [`IdLora`]; without an adapter it
//!   is the full-fine-tuning case. ID-LoRA's frozen bases are a gather from the base layer's output,
//!   `A_i x = (W0 x)[S_i]` (METHOD.md section 2): they cost no FLOPs.
//! * [`methods`] holds one file per method (module, initialisation, forward, merge, PEFT
//!   tensors); [`Adapter`] only dispatches to them.
//! * [`params`] counts trainable parameters exactly from shapes or a Hugging Face `config.json`
//!   (the paper's Table 6).
//! * [`peft`] reads and writes adapter folders in PEFT's layout.
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Tensor};
//! use idlora_adapter::{AdaptedLinear, MethodConfig, MethodKind};
//!
//! let device = Device::flex();
//! let base = LinearConfig::new(32, 32).with_bias(false).init(&device);
//! let x = Tensor::<2>::random([4, 32], burn::tensor::Distribution::Default, &device);
//! let y0 = base.forward(x.clone());
//! let layer = AdaptedLinear::new("q_proj", base, &MethodConfig::new(MethodKind::Lora, 8), None).unwrap();
//! // B starts at zero: the adapted layer equals the base layer.
//! y0.into_data().assert_eq(&layer.forward(x).into_data(), true);
//! assert_eq!(layer.trainable_params(), 8 * (32 + 32));
//! ```

pub mod adapter;
mod dropout;
pub mod error;
pub mod index_sets;
pub mod layer;
pub mod method;
pub mod methods;
pub mod params;
pub mod peft;

pub use adapter::Adapter;
pub use error::{AdapterError, Result};
pub use index_sets::IndexSets;
pub use layer::AdaptedLinear;
pub use method::{BasisPath, DropoutSite, MethodConfig, MethodKind};
pub use methods::{Dora, HydraLora, IdLora, Lora, Method, MoeLora};
pub use peft::{AdapterConfig, AdapterFile, HostTensor};
