//! Stage 2: preparation. The data read and reported, the adapters attached (ID-LoRA's bases
//! clustered or read), the number of steps and the optimizer.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::bases_file::BasesFile;
use idlora_models::CausalLm;
use idlora_models::adapters::BasesSource;

use super::Observer;
use crate::batch::epoch_plan;
use crate::checkpoint::{trainable_count, with_stable_ids};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError, config_err};
use crate::mixture::Mixture;
use crate::schedule::warmup_steps;
use crate::template::Example;

/// The examples of a prepared mixture.
pub(super) struct Examples<'m> {
    pub mixture: &'m Mixture,
    pub train: Vec<&'m Example>,
    pub val: Vec<&'m Example>,
    /// Token count of each training example (for length-grouped batches).
    pub lengths: Vec<usize>,
    /// The padding token.
    pub pad: u32,
}

impl<'m> Examples<'m> {
    pub(super) fn new(mixture: &'m Mixture, pad: u32) -> Self {
        let train = mixture.train_examples();
        let lengths = train.iter().map(|e| e.tokens.len()).collect();
        Self { mixture, val: mixture.val_examples(), train, lengths, pad }
    }
}

/// Tells the observer what each data source gave.
pub(super) fn report_data(cfg: &TrainConfig, mixture: &Mixture, observer: &dyn Observer) {
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
}

/// The model with its adapters, and the parameter counts the run reports.
pub(super) struct Adapted {
    pub model: CausalLm,
    pub method: MethodConfig,
    /// Parameters receiving gradients, counted on the model.
    pub trainable: usize,
    /// The same from the model's shape alone.
    pub expected: usize,
    /// Parameters of the base model.
    pub base_params: usize,
}

/// Attaches `cfg`'s adapters to `model`. ID-LoRA's index sets are kept in the run folder, so
/// that resuming reuses them instead of clustering again.
pub(super) fn attach_adapters(
    cfg: &TrainConfig,
    model: CausalLm,
    run: &Path,
    observer: &dyn Observer,
) -> Result<Adapted> {
    let targets = cfg.targets()?;
    // ID-LoRA's `p` made concrete (unset: the largest valid divisor), so that the adapter folder
    // records the value its tensors were made with (k = 6 gives p = 4 on most models).
    let method = model.config.resolve_parts(&cfg.method_config()?, &targets)?;
    let base_params = model.num_params();
    let bases = if method.kind == MethodKind::IdLora {
        let path = run.join("bases.safetensors");
        let checkpoint_err =
            |e: &dyn std::fmt::Display| TrainError::Checkpoint { path: path.clone(), message: e.to_string() };
        let file = if path.is_file() {
            BasesFile::load(&path).map_err(|e| checkpoint_err(&e))?
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
            file.save(&path).map_err(|e| checkpoint_err(&e))?;
        }
        Some(file)
    } else {
        None
    };
    // The base in its storage precision (a no-op for a model loaded with `load_as` in it). After
    // clustering, which reads the weights as they are stored then (bf16-rounded when the model
    // was loaded in bf16); before the adapters, which are f32 and read W0 through
    // `base_weight_f32`.
    let model = model.with_base_precision(cfg.train.precision)?;
    // Adapter initialisation (LoRA's A, routers) draws from the device's generator: seed it so
    // that the same config gives the same run.
    model.device().seed(cfg.train.seed);
    let model = model.apply_adapters(&method, &targets, bases.as_ref().map(BasesSource::File))?;
    let model = with_stable_ids(model);
    let trainable = trainable_count(&model);
    let expected = model.config.trainable_params(&method, &targets)?;
    Ok(Adapted { model, method, trainable, expected, base_params })
}

/// How many micro-batches and steps the run has.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepPlan {
    /// Micro-batches per optimizer step.
    pub accum: usize,
    pub micro_per_epoch: usize,
    /// Micro-batches of all epochs.
    pub total_micro: usize,
    pub total_steps: usize,
    pub warmup: usize,
}

impl StepPlan {
    pub(super) fn new(cfg: &TrainConfig, data: &Examples<'_>) -> Self {
        let accum = cfg.grad_accum();
        let seed = cfg.train.seed;
        let first_epoch = data.mixture.epoch_members(seed, 0);
        let micro_per_epoch = epoch_plan(&first_epoch, &data.lengths, cfg.train.micro_batch, seed, 0).len();
        let total_micro = micro_per_epoch * cfg.train.epochs;
        let total_steps = cfg.train.max_steps.unwrap_or(total_micro.div_ceil(accum));
        let warmup = warmup_steps(cfg.optim.warmup_steps, cfg.optim.warmup_ratio, total_steps);
        Self { accum, micro_per_epoch, total_micro, total_steps, warmup }
    }
}

/// AdamW (burn's) with `[optim]`'s betas, epsilon and weight decay.
pub(super) fn optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    let o = &cfg.optim;
    AdamWConfig::new()
        .with_beta_1(o.beta1 as f32)
        .with_beta_2(o.beta2 as f32)
        .with_epsilon(o.eps as f32)
        .with_weight_decay(o.weight_decay as f32)
        .init()
}
