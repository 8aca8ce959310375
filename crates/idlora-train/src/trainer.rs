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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, Tensor};
use idlora_adapter::{AdapterConfig, MethodKind};
use idlora_cluster::bases_file::BasesFile;
use idlora_data::write_atomic;
use idlora_models::adapters::BasesSource;
use idlora_models::{CausalLm, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::batch::{Batch, collate, epoch_plan};
use crate::checkpoint::{
    CheckpointFiles, RunState, digest, list_checkpoints, load_checkpoint, load_trainable, read_tensors,
    save_checkpoint, tensors_to_bytes, trainable_count, trainable_tensors, with_stable_ids,
};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError, config_err, io};
use crate::loss::nll_sum;
use crate::mixture::Mixture;
use crate::plot::loss_curve_svg;
use crate::schedule::{lr_at, warmup_steps};
use crate::template::Example;

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
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// The trained model.
    pub model: CausalLm,
}

/// Derives the dropout seed of micro-batch `index`.
fn micro_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn scalar(t: Tensor<1>, name: &str) -> Result<f64> {
    let v = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| TrainError::Tensor { name: name.into(), message: format!("{e:?}") })?;
    Ok(v.first().copied().unwrap_or(f32::NAN) as f64)
}

/// Forward and backward of `batches` on `model`, gradients accumulated; the loss of each
/// micro-batch is divided by `step_targets` so that the sum is the step's mean. Returns the
/// gradients and the summed negative log-likelihood.
fn micro_batch_grads(
    model: &CausalLm,
    batches: &[&(usize, Batch)],
    seed: u64,
    step_targets: usize,
) -> Result<(GradientsParams, f64)> {
    let device = model.device();
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let mut nll_total = 0.0;
    for (g, batch) in batches {
        device.seed(micro_seed(seed, *g));
        let nll = nll_sum(model, batch)?;
        nll_total += scalar(nll.clone().detach(), "loss")?;
        let grads = nll.div_scalar(step_targets.max(1) as f64).backward();
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    Ok((acc.grads(), nll_total))
}

/// [`micro_batch_grads`] spread over the model's device and `replicas` (micro-batch `i` on device
/// `i mod n`), one thread per device, the gradients moved to the model's device and summed.
fn data_parallel_grads(
    model: &CausalLm,
    replicas: &[Device],
    batches: &[&(usize, Batch)],
    seed: u64,
    step_targets: usize,
) -> Result<(GradientsParams, f64)> {
    let main = model.device();
    let devices: Vec<Device> = std::iter::once(main.clone()).chain(replicas.iter().cloned()).collect();
    let n = devices.len();
    let results: Vec<Result<(GradientsParams, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(j, dev)| {
                let mine: Vec<&(usize, Batch)> = batches.iter().skip(j).step_by(n).copied().collect();
                let replica = if j == 0 { model.clone() } else { model.clone().fork(dev) };
                scope.spawn(move || micro_batch_grads(&replica, &mine, seed, step_targets))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Tensor {
                        name: "data-parallel worker".into(),
                        message: "panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut acc = GradientsAccumulator::<CausalLm>::new();
    let mut nll_total = 0.0;
    for r in results {
        let (grads, nll) = r?;
        acc.accumulate(model, grads.to_device(&main, model));
        nll_total += nll;
    }
    Ok((acc.grads(), nll_total))
}

/// The global L2 norm of the gradients of `model`'s trainable parameters.
fn grad_norm(model: &CausalLm, grads: &GradientsParams) -> Result<f64> {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Norm { grads, sum: None };
    model.visit(&mut v);
    match v.sum {
        Some(s) => Ok(scalar(s, "gradient norm")?.sqrt()),
        None => Ok(0.0),
    }
}

/// Multiplies every gradient by `factor`.
fn scale_grads(model: &CausalLm, grads: GradientsParams, factor: f64) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut s = Scale { grads, factor };
    model.visit(&mut s);
    s.grads
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

fn append_jsonl(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io(path))?;
    writeln!(f, "{value}").map_err(io(path))?;
    f.flush().map_err(io(path))
}

/// Keeps the metrics lines of steps up to `step` (a resumed run rewrites what the killed one
/// logged after its last checkpoint). Returns the training losses kept.
fn truncate_metrics(path: &Path, step: usize) -> Result<Vec<(usize, f64)>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut kept = String::new();
    let mut losses = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let s = v.get("step").and_then(|s| s.as_u64()).unwrap_or(u64::MAX) as usize;
        if s <= step {
            if let (Some(l), None) = (v.get("loss").and_then(|l| l.as_f64()), v.get("val_loss")) {
                losses.push((s, l));
            }
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())?;
    Ok(losses)
}

fn read_val_points(path: &Path) -> Vec<(usize, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()? as usize, v.get("val_loss")?.as_f64()?)))
        .collect()
}

/// Trains `model` (on an autodiff device) as `cfg` says. The model arrives without adapters;
/// `tokenizer` encodes the data. Outputs go to `cfg.train.output_dir`.
pub fn train(
    cfg: &TrainConfig,
    model: CausalLm,
    tokenizer: &Tokenizer,
    opts: &TrainOptions,
    observer: &dyn Observer,
) -> Result<RunSummary> {
    cfg.validate()?;
    let device = model.device();
    if !device.is_autodiff() {
        return Err(config_err("train.device", "training needs an autodiff device (Device::autodiff())"));
    }
    let method = cfg.method_config()?;
    let targets = cfg.targets()?;
    let run = cfg.output_dir();
    std::fs::create_dir_all(&run).map_err(io(&run))?;
    let cfg_text = cfg.to_toml();
    let cfg_digest = digest(&cfg_text);
    let existing = list_checkpoints(&run)?;
    let resume_from = if opts.resume {
        Some(existing.last().cloned().ok_or_else(|| {
            config_err("train.output_dir", format!("{} holds no checkpoint to resume", run.display()))
        })?)
    } else {
        if !existing.is_empty() {
            return Err(config_err(
                "train.output_dir",
                format!(
                    "{} already holds a run's checkpoints: resume it (--resume) or choose another folder",
                    run.display()
                ),
            ));
        }
        None
    };
    write_atomic(&run.join("config.toml"), cfg_text.as_bytes())?;

    // Data.
    let eos = tokenizer.eos.first().copied();
    let pad = eos.unwrap_or(0);
    let mixture = Mixture::prepare(cfg, tokenizer, eos)?;
    for (s, src) in mixture.sources.iter().zip(&cfg.data.sources) {
        let st = &s.stats;
        observer.message(&format!(
            "data {}: {} records, {} malformed, {} kept, {} train + {} validation examples, {} cut at {} tokens, {} left out (prompt too long)",
            s.name,
            st.seen,
            st.malformed.len(),
            st.kept,
            s.train.len(),
            s.val.len(),
            st.truncated,
            cfg.data.max_length,
            st.too_long
        ));
        for m in st.malformed.iter().take(3) {
            observer.message(&format!("  malformed: {} {}: {}", src.path, m.location, m.reason));
        }
    }
    let train_ex = mixture.train_examples();
    let val_ex = mixture.val_examples();
    let lengths: Vec<usize> = train_ex.iter().map(|e| e.tokens.len()).collect();

    // Adapters (ID-LoRA's index sets are kept with the run, so that resuming reuses them).
    let base_params = model.num_params();
    let bases = if method.kind == MethodKind::IdLora {
        let path = run.join("bases.safetensors");
        let file = if path.is_file() {
            BasesFile::load(&path)
                .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: e.to_string() })?
        } else if let Some(p) = &cfg.cluster.bases {
            BasesFile::load(Path::new(p)).map_err(|e| config_err("cluster.bases", e.to_string()))?
        } else {
            observer.message(&format!(
                "clustering {} matrices (PMRC, k = {}, r = {})",
                targets.len() * model.config.num_layers,
                method.k,
                method.r
            ));
            let progress = |done: usize, total: usize| observer.cluster_progress(done, total);
            model.cluster_bases(&targets, &cfg.cluster_config()?, &progress)?
        };
        if !path.is_file() {
            file.save(&path)
                .map_err(|e| TrainError::Checkpoint { path: path.clone(), message: e.to_string() })?;
        }
        Some(file)
    } else {
        None
    };
    // Adapter initialisation (LoRA's A, routers) draws from the device's generator: seed it so
    // that the same config gives the same run.
    device.seed(cfg.train.seed);
    let model = model.apply_adapters(&method, &targets, bases.as_ref().map(BasesSource::File))?;
    let mut model = with_stable_ids(model);
    let trainable = trainable_count(&model);
    let expected = model.config.trainable_params(&method, &targets)?;

    // Steps.
    let accum = cfg.grad_accum();
    let micro_per_epoch = epoch_plan(
        &mixture.epoch_members(cfg.train.seed, 0),
        &lengths,
        cfg.train.micro_batch,
        cfg.train.seed,
        0,
    )
    .len();
    let total_micro = micro_per_epoch * cfg.train.epochs;
    let total_steps = cfg.train.max_steps.unwrap_or(total_micro.div_ceil(accum));
    let warmup = warmup_steps(cfg.optim.warmup_steps, cfg.optim.warmup_ratio, total_steps);
    let schedule = cfg.optim.schedule;

    let o = &cfg.optim;
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_beta_1(o.beta1 as f32)
        .with_beta_2(o.beta2 as f32)
        .with_epsilon(o.eps as f32)
        .with_weight_decay(o.weight_decay as f32)
        .init();

    let metrics_path = run.join("metrics.jsonl");
    let mut state = RunState {
        step: 0,
        total_steps,
        micro_batches: 0,
        tokens: 0,
        train_seconds: 0.0,
        config_digest: cfg_digest.clone(),
    };
    let mut losses = Vec::new();
    let mut last_checkpoint = None;
    if let Some((_, dir)) = &resume_from {
        let files = load_checkpoint(dir)?;
        if files.state.config_digest != cfg_digest {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                message: format!(
                    "was made with another configuration ({} has changed since): resume with the same settings",
                    run.join("config.toml").display()
                ),
            });
        }
        let tensors = read_tensors(&dir.join("trainable.safetensors"))?;
        model = load_trainable(model, &tensors, &dir.join("trainable.safetensors"))?;
        optim = optim.from_bytes(Bytes::from_bytes_vec(files.optimizer)).map_err(|e| {
            TrainError::Checkpoint { path: dir.join("optimizer.bpk"), message: format!("{e:?}") }
        })?;
        state = files.state;
        losses = truncate_metrics(&metrics_path, state.step)?;
        last_checkpoint = Some(dir.clone());
        observer.message(&format!("resuming {} at step {}", run.display(), state.step));
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(io(&metrics_path))?;
    }

    observer.start(&RunPlan {
        total_steps,
        start_step: state.step,
        grad_accum: accum,
        train_examples: train_ex.len(),
        val_examples: val_ex.len(),
        trainable_params: trainable,
        expected_trainable_params: expected,
        base_params,
    });

    let mut val_loss_before = None;
    if resume_from.is_none() {
        val_loss_before = eval_loss(&model, &val_ex, cfg.train.micro_batch, pad)?;
        if let Some(v) = val_loss_before {
            observer.eval(0, v);
            append_jsonl(&metrics_path, &serde_json::json!({"step": 0, "val_loss": v}))?;
        }
    }

    let save = |model: &CausalLm, optim: &ModuleOptimizer, state: &RunState| -> Result<PathBuf> {
        let trainable = tensors_to_bytes(&trainable_tensors(model)?)?;
        let optimizer = optim
            .into_bytes()
            .map_err(|e| TrainError::Checkpoint {
                path: run.clone(),
                message: format!("optimizer state: {e:?}"),
            })?
            .to_vec();
        let dir = save_checkpoint(
            &run,
            &CheckpointFiles { trainable, optimizer, state: state.clone() },
            cfg.train.keep_checkpoints,
        )?;
        observer.checkpoint(state.step, &dir);
        Ok(dir)
    };

    let mut plan_cache: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut outcome = Outcome::Finished;
    while state.step < total_steps {
        let step_start = Instant::now();
        let first = state.micro_batches;
        let mut last = first + accum;
        if cfg.train.max_steps.is_none() {
            last = last.min(total_micro);
        }
        let mut batches: Vec<(usize, Batch)> = Vec::with_capacity(accum);
        for g in first..last {
            let epoch = g / micro_per_epoch;
            if plan_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let members = mixture.epoch_members(cfg.train.seed, epoch);
                plan_cache = Some((
                    epoch,
                    epoch_plan(&members, &lengths, cfg.train.micro_batch, cfg.train.seed, epoch),
                ));
            }
            let rows: Vec<&Example> = plan_cache
                .as_ref()
                .map(|(_, p)| p[g % micro_per_epoch].iter().map(|&i| train_ex[i]).collect())
                .unwrap_or_default();
            batches.push((g, collate(&rows, pad)));
        }
        let step_targets: usize = batches.iter().map(|(_, b)| b.target_count()).sum();
        let step_tokens: usize = batches.iter().map(|(_, b)| b.real_tokens).sum();
        let refs: Vec<&(usize, Batch)> = batches.iter().collect();
        let (mut grads, nll_total) = if opts.replicas.is_empty() {
            micro_batch_grads(&model, &refs, cfg.train.seed, step_targets)?
        } else {
            data_parallel_grads(&model, &opts.replicas, &refs, cfg.train.seed, step_targets)?
        };
        let step_no = state.step + 1;
        let loss = nll_total / step_targets.max(1) as f64;
        let norm = grad_norm(&model, &grads)?;
        if !loss.is_finite() || !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: step_no,
                value: if loss.is_finite() { norm } else { loss },
                last_checkpoint: last_checkpoint
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |p: &PathBuf| p.display().to_string()),
            });
        }
        if o.max_grad_norm > 0.0 && norm > o.max_grad_norm {
            // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6).
            grads = scale_grads(&model, grads, o.max_grad_norm / (norm + 1e-6));
        }
        let lr = lr_at(schedule, o.lr, state.step, total_steps, warmup);
        model = optim.step(lr, model, grads);
        let secs = step_start.elapsed().as_secs_f64();
        state.step = step_no;
        state.micro_batches = last;
        state.tokens += step_tokens;
        state.train_seconds += secs;
        let m = StepMetrics {
            step: step_no,
            total_steps,
            loss,
            lr,
            grad_norm: norm,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / secs.max(1e-9),
            elapsed_s: state.train_seconds,
        };
        losses.push((step_no, loss));
        append_jsonl(
            &metrics_path,
            &serde_json::to_value(&m)
                .map_err(|e| TrainError::Tensor { name: "metrics".into(), message: e.to_string() })?,
        )?;
        observer.step(&m);

        if cfg.train.eval_interval > 0
            && step_no.is_multiple_of(cfg.train.eval_interval)
            && step_no < total_steps
            && let Some(v) = eval_loss(&model, &val_ex, cfg.train.micro_batch, pad)?
        {
            observer.eval(step_no, v);
            append_jsonl(&metrics_path, &serde_json::json!({"step": step_no, "val_loss": v}))?;
        }
        if opts.halt_after == Some(step_no) {
            outcome = Outcome::Halted;
            break;
        }
        let stop = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let periodic =
            cfg.train.checkpoint_interval > 0 && step_no.is_multiple_of(cfg.train.checkpoint_interval);
        if (periodic || stop) && step_no < total_steps {
            last_checkpoint = Some(save(&model, &optim, &state)?);
        }
        if stop {
            outcome = Outcome::Stopped;
            break;
        }
    }

    let mut val_loss_after = None;
    let mut adapter_dir = None;
    if outcome == Outcome::Finished {
        last_checkpoint = Some(save(&model, &optim, &state)?);
        val_loss_after = eval_loss(&model, &val_ex, cfg.train.micro_batch, pad)?;
        if let Some(v) = val_loss_after {
            observer.eval(state.step, v);
            append_jsonl(
                &metrics_path,
                &serde_json::json!({"step": state.step, "val_loss": v, "final": true}),
            )?;
        }
        if method.kind != MethodKind::Full {
            let dir = run.join("adapter");
            let modules = model
                .projections()
                .into_iter()
                .filter(|(_, p)| p.adapter.is_some())
                .map(|(t, _)| t.module_name().to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            model.save_adapters(&dir, AdapterConfig::new(method.clone(), modules))?;
            observer.message(&format!("adapter saved to {}", dir.display()));
            adapter_dir = Some(dir);
        }
        let summary = serde_json::json!({
            "steps": state.step,
            "method": method.kind.name(),
            "trainable_params": trainable,
            "expected_trainable_params": expected,
            "val_loss_before": val_loss_before,
            "val_loss_after": val_loss_after,
            "train_loss_first": losses.first().map(|l| l.1),
            "train_loss_last": losses.last().map(|l| l.1),
            "train_seconds": state.train_seconds,
            "tokens": state.tokens,
        });
        write_atomic(&run.join("summary.json"), summary.to_string().as_bytes())?;
    }
    if outcome != Outcome::Halted {
        let svg = loss_curve_svg(&losses, &read_val_points(&metrics_path));
        write_atomic(&run.join("loss.svg"), svg.as_bytes())?;
    }
    Ok(RunSummary {
        outcome,
        run_dir: run,
        steps: state.step,
        val_loss_before,
        val_loss_after,
        losses,
        adapter_dir,
        last_checkpoint,
        model,
    })
}
