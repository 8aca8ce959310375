//! Stages 3 and 4: the steps and the checkpoints. A [`Session`] holds what changes as the run
//! goes (model, optimizer, counters, losses) and is passed by value through each step, so that
//! the optimizer updates the parameters in place (no second handle on them).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::optim::ModuleOptimizer;
use burn::tensor::Bytes;
use idlora_adapter::MethodConfig;
use idlora_models::{CausalLm, Tokenizer};

use super::grads::{StepBatches, grad_norm, scale_grads, step_grads};
use super::metrics_log::MetricsLog;
use super::prepare::{Adapted, Examples, StepPlan, optimizer};
use super::run_folder::RunFolder;
use super::{Observer, Outcome, RunPlan, StepMetrics, TrainOptions, eval_loss};
use crate::batch::{Batch, collate, epoch_plan};
use crate::checkpoint::{
    CheckpointFiles, RunState, load_checkpoint, load_trainable, read_tensors, save_checkpoint,
    tensors_to_bytes, trainable_tensors,
};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::schedule::lr_at;
use crate::template::Example;

/// A run in progress.
pub(super) struct Session<'a> {
    pub cfg: &'a TrainConfig,
    pub opts: &'a TrainOptions,
    pub observer: &'a dyn Observer,
    pub run: &'a Path,
    pub data: &'a Examples<'a>,
    /// Written with a fully fine-tuned model's folder.
    pub tokenizer: &'a Tokenizer,
    pub plan: StepPlan,
    pub method: MethodConfig,
    pub counts: (usize, usize, usize),
    pub model: CausalLm,
    pub optim: ModuleOptimizer,
    pub state: RunState,
    pub losses: Vec<(usize, f64)>,
    pub last_checkpoint: Option<PathBuf>,
    pub metrics: MetricsLog,
    /// The batch plan of the current epoch.
    epoch_cache: Option<(usize, Vec<Vec<usize>>)>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        cfg: &'a TrainConfig,
        opts: &'a TrainOptions,
        observer: &'a dyn Observer,
        folder: &'a RunFolder,
        data: &'a Examples<'a>,
        tokenizer: &'a Tokenizer,
        adapted: Adapted,
    ) -> Self {
        let plan = StepPlan::new(cfg, data);
        let state = RunState {
            step: 0,
            total_steps: plan.total_steps,
            micro_batches: 0,
            tokens: 0,
            train_seconds: 0.0,
            config_digest: folder.config_digest.clone(),
        };
        Self {
            cfg,
            opts,
            observer,
            run: &folder.dir,
            data,
            tokenizer,
            plan,
            method: adapted.method,
            counts: (adapted.trainable, adapted.expected, adapted.base_params),
            model: adapted.model,
            optim: optimizer(cfg),
            state,
            losses: Vec::new(),
            last_checkpoint: None,
            metrics: MetricsLog::new(&folder.dir),
            epoch_cache: None,
        }
    }

    /// What the observer is told before the first step.
    pub(super) fn run_plan(&self) -> RunPlan {
        let (trainable_params, expected_trainable_params, base_params) = self.counts;
        RunPlan {
            total_steps: self.plan.total_steps,
            start_step: self.state.step,
            grad_accum: self.plan.accum,
            train_examples: self.data.train.len(),
            val_examples: self.data.val.len(),
            trainable_params,
            expected_trainable_params,
            base_params,
        }
    }

    /// Continues from the checkpoint in `dir`: trainable tensors, AdamW's moments, counters, and
    /// the metrics logged up to it.
    pub(super) fn restore(mut self, dir: &Path) -> Result<Self> {
        let files = load_checkpoint(dir)?;
        if files.state.config_digest != self.state.config_digest {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "was made with another configuration ({} has changed since): resume with the same settings",
                    self.run.join("config.toml").display()
                ),
            });
        }
        let path = dir.join("trainable.safetensors");
        self.model = load_trainable(self.model, &read_tensors(&path)?, &path)?;
        self.optim = self.optim.from_bytes(Bytes::from_bytes_vec(files.optimizer)).map_err(|e| {
            TrainError::Checkpoint { path: dir.join("optimizer.bpk"), message: format!("{e:?}") }
        })?;
        self.state = files.state;
        self.losses = self.metrics.truncate_to(self.state.step)?;
        self.last_checkpoint = Some(dir.to_path_buf());
        self.observer.message(&format!("resuming {} at step {}", self.run.display(), self.state.step));
        Ok(self)
    }

    /// Measures the validation loss, tells the observer and logs it (with `"final": true` at
    /// the end of the run).
    pub(super) fn validate(&self, last: bool) -> Result<Option<f64>> {
        let Some(v) = eval_loss(&self.model, &self.data.val, self.cfg.train.micro_batch, self.data.pad)?
        else {
            return Ok(None);
        };
        let step = self.state.step;
        self.observer.eval(step, v);
        let line = if last {
            serde_json::json!({"step": step, "val_loss": v, "final": true})
        } else {
            serde_json::json!({"step": step, "val_loss": v})
        };
        self.metrics.append(&line)?;
        Ok(Some(v))
    }

    /// Steps until the end, a stop request or the test halt.
    pub(super) fn run_steps(mut self) -> Result<(Self, Outcome)> {
        while self.state.step < self.plan.total_steps {
            self = self.step()?;
            if let Some(outcome) = self.after_step()? {
                return Ok((self, outcome));
            }
        }
        Ok((self, Outcome::Finished))
    }

    /// The micro-batches of the next step, each with its global index.
    fn next_batches(&mut self) -> Vec<(usize, Batch)> {
        let (cfg, plan, data) = (self.cfg, self.plan, self.data);
        let first = self.state.micro_batches;
        let mut last = first + plan.accum;
        if cfg.train.max_steps.is_none() {
            last = last.min(plan.total_micro);
        }
        let mut batches = Vec::with_capacity(plan.accum);
        for g in first..last {
            let epoch = g / plan.micro_per_epoch;
            if self.epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let members = data.mixture.epoch_members(cfg.train.seed, epoch);
                let order = epoch_plan(&members, &data.lengths, cfg.train.micro_batch, cfg.train.seed, epoch);
                self.epoch_cache = Some((epoch, order));
            }
            let rows: Vec<&Example> = self
                .epoch_cache
                .as_ref()
                .map(|(_, p)| p[g % plan.micro_per_epoch].iter().map(|&i| data.train[i]).collect())
                .unwrap_or_default();
            batches.push((g, collate(&rows, data.pad)));
        }
        batches
    }

    /// One optimizer step: gradients of the step's micro-batches, clipping by the global norm,
    /// AdamW, metrics.
    fn step(mut self) -> Result<Self> {
        let started = Instant::now();
        let o = &self.cfg.optim;
        let batches = self.next_batches();
        let step_targets: usize = batches.iter().map(|(_, b)| b.target_count()).sum();
        let step_tokens: usize = batches.iter().map(|(_, b)| b.real_tokens).sum();
        let work = StepBatches {
            batches: &batches,
            seed: self.cfg.train.seed,
            targets: step_targets,
            checkpointing: self.cfg.train.gradient_checkpointing,
        };
        let (mut grads, nll) = step_grads(&self.model, &self.opts.replicas, work)?;
        let step = self.state.step + 1;
        let loss = nll / step_targets.max(1) as f64;
        let norm = grad_norm(&self.model, &grads)?;
        if !loss.is_finite() || !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                value: if loss.is_finite() { norm } else { loss },
                last_checkpoint: self
                    .last_checkpoint
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |p| p.display().to_string()),
            });
        }
        if o.max_grad_norm > 0.0 && norm > o.max_grad_norm {
            // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6).
            grads = scale_grads(&self.model, grads, o.max_grad_norm / (norm + 1e-6));
        }
        let lr = lr_at(o.schedule, o.lr, self.state.step, self.plan.total_steps, self.plan.warmup);
        self.model = self.optim.step(lr, self.model, grads);
        let secs = started.elapsed().as_secs_f64();
        self.state.step = step;
        self.state.micro_batches += batches.len();
        self.state.tokens += step_tokens;
        self.state.train_seconds += secs;
        let m = StepMetrics {
            step,
            total_steps: self.plan.total_steps,
            loss,
            lr,
            grad_norm: norm,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / secs.max(1e-9),
            elapsed_s: self.state.train_seconds,
        };
        self.losses.push((step, loss));
        let line = serde_json::to_value(&m)
            .map_err(|e| TrainError::Tensor { name: "metrics".into(), message: e.to_string() })?;
        self.metrics.append(&line)?;
        self.observer.step(&m);
        Ok(self)
    }

    /// Periodic validation and checkpoint after a step; `Some` when the run ends here.
    fn after_step(&mut self) -> Result<Option<Outcome>> {
        let (train, step) = (&self.cfg.train, self.state.step);
        let before_end = step < self.plan.total_steps;
        if train.eval_interval > 0 && step.is_multiple_of(train.eval_interval) && before_end {
            self.validate(false)?;
        }
        if self.opts.halt_after == Some(step) {
            return Ok(Some(Outcome::Halted));
        }
        let stop = self.opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let periodic = train.checkpoint_interval > 0 && step.is_multiple_of(train.checkpoint_interval);
        if (periodic || stop) && before_end {
            self.checkpoint()?;
        }
        Ok(stop.then_some(Outcome::Stopped))
    }

    /// Writes a checkpoint (atomically: a folder renamed into place) and keeps the newest
    /// `train.keep_checkpoints`.
    pub(super) fn checkpoint(&mut self) -> Result<()> {
        let trainable = tensors_to_bytes(&trainable_tensors(&self.model)?)?;
        let optimizer = self
            .optim
            .into_bytes()
            .map_err(|e| TrainError::Checkpoint {
                path: self.run.to_path_buf(),
                message: format!("optimizer state: {e:?}"),
            })?
            .to_vec();
        let files = CheckpointFiles { trainable, optimizer, state: self.state.clone() };
        let dir = save_checkpoint(self.run, &files, self.cfg.train.keep_checkpoints)?;
        self.observer.checkpoint(self.state.step, &dir);
        self.last_checkpoint = Some(dir);
        Ok(())
    }
}
