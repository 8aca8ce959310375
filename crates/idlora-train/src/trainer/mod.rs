//! The training loop: adapters attached, AdamW (burn's) with a Hugging Face schedule, gradient
//! accumulation to the effective batch, global gradient-norm clipping, validation loss, metrics,
//! atomic checkpoints and exact resumption.
//!
//! Why not burn-train's `Learner`: a resumed run here must reproduce the uninterrupted loss curve
//! bit for bit, which needs the data position and the dropout streams in the checkpoint, and
//! clipping must be by the global norm as in the paper's (PyTorch) setup, where burn clips each
//! tensor on its own. The loop is short; the optimizer, its state records and the gradient
//! accumulator are burn's.
//!
//! Exactness: every micro-batch reseeds the device's generator from (seed, micro-batch index), the
//! epoch order is a function of (seed, epoch), parameters keep path-derived ids, and checkpoints
//! hold the f32 tensors and AdamW's moments unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::tensor::Device;
use idlora_models::{CausalLm, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::batch::collate;
use crate::config::TrainConfig;
use crate::devices::check_training_device;
use crate::error::Result;
use crate::loss::{nll_sum, scalar};
use crate::mixture::Mixture;
use crate::template::Example;

mod finish;
mod grads;
mod metrics_log;
mod prepare;
mod run_folder;
mod session;

pub use metrics_log::read_steps;
use prepare::{Examples, attach_adapters, report_data};
use run_folder::RunFolder;
use session::Session;

/// Receives progress. Every method has a default that does nothing.
pub trait Observer: Sync {
    /// A line of information (data report, where things are written).
    fn message(&self, _text: &str) {}
    /// Clustering progress for ID-LoRA's index sets.
    fn cluster_progress(&self, _done: usize, _total: usize) {}
    /// Training is about to start.
    fn start(&self, _plan: &RunPlan) {}
    /// An optimizer step finished.
    fn step(&self, _m: &StepMetrics) {}
    /// A validation loss was measured.
    fn eval(&self, _step: usize, _val_loss: f64) {}
    /// A checkpoint was written.
    fn checkpoint(&self, _step: usize, _dir: &Path) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// The shape of the run, known before the first step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// Optimizer steps in all.
    pub total_steps: usize,
    /// First step of this process (non-zero when resuming).
    pub start_step: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Training examples (one epoch, before weights).
    pub train_examples: usize,
    /// Validation examples.
    pub val_examples: usize,
    /// Parameters receiving gradients, counted on the model.
    pub trainable_params: usize,
    /// The same count from the model's shape alone (what `cargo xtask params` prints).
    pub expected_trainable_params: usize,
    /// Parameters of the base model.
    pub base_params: usize,
}

/// One optimizer step's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step number, from 1.
    pub step: usize,
    /// Steps in all.
    pub total_steps: usize,
    /// Mean loss per response token of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens processed (prompts and responses, no padding).
    pub tokens: usize,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Training seconds so far.
    pub elapsed_s: f64,
}

/// Control over a run.
#[derive(Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in `train.output_dir` from its last checkpoint.
    pub resume: bool,
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop abruptly after this step, saving nothing (simulates a crash in tests).
    pub halt_after: Option<usize>,
    /// Further (autodiff) devices for data parallelism: each step's micro-batches are spread over
    /// the model's device and these, computed concurrently, and the gradients summed on the model's
    /// device. Empty: one device.
    pub replicas: Vec<Device>,
}

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All steps done.
    Finished,
    /// Stopped on request, with a checkpoint.
    Stopped,
    /// Halted by [`TrainOptions::halt_after`], without saving.
    Halted,
}

/// What a run produced.
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Steps done.
    pub steps: usize,
    /// Validation loss before training (`None` when resuming or without validation data).
    pub val_loss_before: Option<f64>,
    /// Validation loss at the end.
    pub val_loss_after: Option<f64>,
    /// Training loss per step of this process and the ones it resumed.
    pub losses: Vec<(usize, f64)>,
    /// The saved adapter folder (adapter methods, finished runs).
    pub adapter_dir: Option<PathBuf>,
    /// The saved Hugging Face model folder (full fine-tuning, finished runs).
    pub model_dir: Option<PathBuf>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// The trained model.
    pub model: CausalLm,
}

/// Trains `model` (on an autodiff device) as `cfg` says. The model arrives without adapters;
/// `tokenizer` encodes the data. Outputs go to `cfg.train.output_dir`.
///
/// The stages: the run folder ([`RunFolder::open`]), preparation (data, adapters, step plan,
/// optimizer: `prepare`), the steps and checkpoints (`Session`), and the end (`finish`).
pub fn train(
    cfg: &TrainConfig,
    model: CausalLm,
    tokenizer: &Tokenizer,
    opts: &TrainOptions,
    observer: &dyn Observer,
) -> Result<RunSummary> {
    cfg.validate()?;
    check_training_device(cfg, &model.device())?;
    let folder = RunFolder::open(cfg, opts.resume)?;
    let eos = tokenizer.eos.first().copied();
    let mixture = Mixture::prepare(cfg, tokenizer, eos)?;
    report_data(cfg, &mixture, observer);
    let data = Examples::new(&mixture, eos.unwrap_or(0));
    let adapted = attach_adapters(cfg, model, &folder.dir, observer)?;
    let mut session = Session::new(cfg, opts, observer, &folder, &data, tokenizer, adapted);
    if let Some(dir) = &folder.resume_from {
        session = session.restore(dir)?;
    } else {
        session.metrics.clear()?;
    }
    observer.start(&session.run_plan());
    let val_loss_before = match folder.resume_from {
        Some(_) => None,
        None => session.validate(false)?,
    };
    let (session, outcome) = session.run_steps()?;
    session.finish(outcome, val_loss_before)
}

/// Mean validation loss per response token of `model` (its inference form) on `examples`.
pub fn eval_loss(
    model: &CausalLm,
    examples: &[&Example],
    micro_batch: usize,
    pad: u32,
) -> Result<Option<f64>> {
    if examples.is_empty() {
        return Ok(None);
    }
    let model = model.valid();
    let mut order: Vec<&Example> = examples.to_vec();
    // Similar lengths together: less padding; the sum does not depend on the order's grouping
    // beyond float rounding, and the order is fixed, so the value is reproducible.
    order.sort_by_key(|e| std::cmp::Reverse(e.tokens.len()));
    let (mut nll, mut count) = (0.0, 0usize);
    for rows in order.chunks(micro_batch.max(1)) {
        let batch = collate(rows, pad);
        nll += scalar(nll_sum(&model, &batch)?, "validation loss")?;
        count += batch.target_count();
    }
    Ok(Some(nll / count.max(1) as f64))
}
