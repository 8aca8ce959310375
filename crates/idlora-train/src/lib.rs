//! Fine-tuning LLaMA / Mistral models with ID-LoRA and its baselines, as the paper does: one TOML
//! config ([`config::TrainConfig`]), a data mixture ([`mixture::Mixture`]), and a loop
//! ([`trainer::train`]) with AdamW, a Hugging Face learning-rate schedule, gradient accumulation,
//! global-norm clipping, validation loss, metrics as JSONL, a loss-curve SVG, atomic checkpoints and
//! exact resumption.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use idlora_train::config::TrainConfig;
//! use idlora_train::trainer::{Silent, TrainOptions, train};
//!
//! let cfg = TrainConfig::from_file("run.toml".as_ref(), &[])?;
//! let device = Device::flex().autodiff();
//! let model = idlora_models::load(cfg.model.path.as_ref(), &device)?;
//! let tokenizer = idlora_models::load_tokenizer(cfg.model.path.as_ref(), &model.config.eos_token_ids)?;
//! let run = train(&cfg, model, &tokenizer, &TrainOptions::default(), &Silent)?;
//! println!("validation loss {:?} -> {:?}", run.val_loss_before, run.val_loss_after);
//! # Ok::<(), idlora_train::TrainError>(())
//! ```

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod devices;
pub mod error;
pub mod loss;
pub mod mixture;
pub mod plan;
pub mod plot;
pub mod recompute;
pub mod schedule;
pub mod template;
pub mod trainer;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{Observer, Outcome, RunPlan, RunSummary, StepMetrics, TrainOptions, train};
