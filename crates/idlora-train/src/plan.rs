//! Memory plans: how many bytes one training step needs on each device, before running it.
//!
//! A plan adds up what a step holds at its peak, from the model's shapes and the method's own
//! forward pass, term by term:
//!
//! - **weights**: the frozen base in its storage precision (plus, for full fine-tuning, the
//!   whole model in f32, since then it is the trainable part);
//! - **adapter**: the trainable parameters (f32), their **gradients** (f32) and **AdamW**'s two
//!   moments (f32 each);
//! - **activations**: every tensor the autodiff graph keeps from the forward pass for the
//!   backward, per token and per layer, counted from this crate's forward code (see
//!   [`layer_saved_floats`]): the residual stream and the norms' statistics, attention's
//!   inputs and output, SwiGLU's two inputs, and what each adapter keeps (dropout masks, the
//!   dropped input, the rank-`r` intermediate, router inputs and weights);
//! - **head**: what the head's backward holds while every activation is still alive (see
//!   [`Backend`]): on the CPU the f32 logits, whose buffer the fused cross-entropy's gradient
//!   overwrites (a half base adds nothing of that size: its products widen the weight a few
//!   MiB at a time); for full fine-tuning also the embedding's (or head's) gradient, which the
//!   head's backward writes first;
//! - **runtime**: the process or the GPU context (a fixed allowance, stated in [`Backend`]).
//!
//! The peak is where the backward starts: weights, trainable parameters and AdamW's moments,
//! all activations and the head's tensors at once. Gradients are written as the backward frees
//! the activations, so they count only where they outgrow them: the peak is `weights + params +
//! moments + runtime + max(activations + head, gradients)`. With gradient checkpointing by layer
//! recomputation ([`crate::recompute`]) the activations are each layer's input only, and the
//! backward holds either the head's tensors or one recomputed layer's ([`MemoryPlan::layer`]),
//! never both: `max(activations + max(head, layer), gradients)`. The numbers are validated
//! against measured peaks on the CPU in `docs/memory-plan.md` (`cargo xtask plan --validate`).
//!
//! ```
//! use idlora_adapter::{MethodConfig, MethodKind};
//! use idlora_models::{ModelConfig, Precision, Target};
//! use idlora_train::config::GradientCheckpointing;
//! use idlora_train::plan::{Backend, PlanSettings, plan};
//!
//! let json = r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
//!     "num_attention_heads": 4, "vocab_size": 100}"#;
//! let config = ModelConfig::from_hf_json(json, "config.json")?;
//! let settings = PlanSettings {
//!     method: MethodConfig::new(MethodKind::Lora, 8),
//!     targets: Target::ALL.to_vec(),
//!     precision: Precision::Bf16,
//!     micro_batch: 2,
//!     seq: 16,
//!     gradient_checkpointing: GradientCheckpointing::Off,
//!     devices: 1,
//!     backend: Backend::Gpu,
//! };
//! let p = plan(&config, &settings)?;
//! assert_eq!(p.weights, config.base_params() as u64 * 2);
//! assert!(p.total() > p.weights + p.activations);
//! # Ok::<(), idlora_train::TrainError>(())
//! ```

use burn::tensor::Device;
use idlora_adapter::{DropoutSite, MethodConfig, MethodKind};
use idlora_models::{ModelConfig, Precision, Target};
use serde::Serialize;

use crate::config::{GradientCheckpointing, TrainConfig};
use crate::error::{Result, config_err};

/// Which kind of backend the step runs on: it decides which fused kernels exist and how
/// half-precision products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's CPU backend with idlora's fused kernels (causal attention keeps `q, k, v`, its
    /// output and one log-sum-exp per row; SwiGLU keeps its two inputs; cross-entropy keeps the
    /// logits). A half-precision weight is widened to f32 a panel (4-16 MiB) at a time for its
    /// products (`idlora_kernels::product::matmul`), so it adds no copy of its size. Runtime: 64 MiB
    /// (the binary, thread stacks, the allocator's retained pages).
    Cpu,
    /// CUDA or wgpu: burn's generic operations (attention keeps its `[heads, seq, seq]` scores
    /// twice per sequence and the key/value heads repeated; SwiGLU keeps four `[intermediate]`
    /// tensors; the composed cross-entropy keeps three `[vocab]` rows per token), native half
    /// products. Runtime: 1 GiB (CUDA context and the allocator's pools). Not yet measured on a
    /// GPU.
    Gpu,
}

impl Backend {
    /// The kind of backend `device` is: burn's CPU backend (with or without autodiff) or a GPU.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use idlora_train::plan::Backend;
    ///
    /// assert_eq!(Backend::of(&Device::flex().autodiff()), Backend::Cpu);
    /// ```
    pub fn of(device: &Device) -> Backend {
        if device.clone().inner() == Device::flex() { Backend::Cpu } else { Backend::Gpu }
    }

    fn runtime_bytes(self) -> u64 {
        match self {
            Backend::Cpu => 64 << 20,
            Backend::Gpu => 1 << 30,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "CPU",
            Backend::Gpu => "GPU",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Backend::Cpu),
            "gpu" | "cuda" | "wgpu" | "vulkan" => Ok(Backend::Gpu),
            other => Err(format!("unknown backend `{other}` (cpu or gpu)")),
        }
    }
}

/// What a plan is for.
#[derive(Clone, Debug)]
pub struct PlanSettings {
    /// The method and its settings (rank, dropout, `k`, experts ...).
    pub method: MethodConfig,
    /// The adapted projections.
    pub targets: Vec<Target>,
    /// Storage precision of the frozen base.
    pub precision: Precision,
    /// Sequences per micro-batch on one device.
    pub micro_batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// `train.gradient_checkpointing`: layer recomputation is modelled; burn's `Balanced`
    /// strategy is not (see [`MemoryPlan::notes`]).
    pub gradient_checkpointing: GradientCheckpointing,
    /// Devices sharing the batch (each holds a replica of the model).
    pub devices: usize,
    /// The backend kind.
    pub backend: Backend,
}

impl PlanSettings {
    /// The settings of a run of `cfg` on `backend`: its method, targets, precision, micro-batch,
    /// checkpointing and devices, at its longest sequence (`data.max_length`).
    ///
    /// ```
    /// use idlora_train::TrainConfig;
    /// use idlora_train::plan::{Backend, PlanSettings};
    ///
    /// let cfg = TrainConfig::from_toml(
    ///     "[model]\npath = \"m\"\n[[data.sources]]\npath = \"d.json\"\n[train]\ngradient_checkpointing = true\n",
    ///     "run.toml",
    ///     &[],
    /// )?;
    /// let s = PlanSettings::for_run(&cfg, Backend::Gpu)?;
    /// assert_eq!((s.micro_batch, s.seq, s.devices), (cfg.train.micro_batch, cfg.data.max_length, 1));
    /// assert!(s.gradient_checkpointing.is_on());
    /// # Ok::<(), idlora_train::TrainError>(())
    /// ```
    pub fn for_run(cfg: &TrainConfig, backend: Backend) -> Result<PlanSettings> {
        Ok(PlanSettings {
            method: cfg.method_config()?,
            targets: cfg.targets()?,
            precision: cfg.train.precision,
            micro_batch: cfg.train.micro_batch,
            seq: cfg.data.max_length,
            gradient_checkpointing: cfg.train.gradient_checkpointing,
            devices: 1 + cfg.train.extra_devices.len(),
            backend,
        })
    }
}

/// Predicted bytes on the main device at the peak of one training step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// The frozen (or, for full fine-tuning, trained) model weights.
    pub weights: u64,
    /// Trainable parameters (f32).
    pub adapter_params: u64,
    /// Their gradients (f32).
    pub gradients: u64,
    /// AdamW's first and second moments (f32).
    pub optimizer: u64,
    /// Tensors kept for the backward pass over all decoder layers: every layer's activations,
    /// or with layer recomputation only every layer's input.
    pub activations: u64,
    /// With layer recomputation, what one layer holds while it runs again in the backward pass
    /// (its activations, the gradient at its output and the product with it); the head's
    /// backward and a layer's never overlap. 0 without.
    pub layer: u64,
    /// What the head's backward holds at the peak (logits, their gradient, transients).
    pub head: u64,
    /// Process or GPU context allowance.
    pub runtime: u64,
    /// Trainable parameter count.
    pub trainable: usize,
    /// What the plan does not model.
    pub notes: Vec<String>,
}

impl MemoryPlan {
    /// The predicted peak, in bytes: the backward's start (with layer recomputation, its head
    /// segment or a layer's, whichever is larger), or its end where the gradients outgrow the
    /// activations they replace.
    pub fn total(&self) -> u64 {
        self.weights
            + self.adapter_params
            + self.optimizer
            + self.runtime
            + (self.activations + self.head.max(self.layer)).max(self.gradients)
    }

    /// Whether the step fits in `device_bytes`, keeping 5% for fragmentation.
    pub fn fits(&self, device_bytes: u64) -> bool {
        (self.total() as f64) <= 0.95 * device_bytes as f64
    }
}

/// Floats that one adapter on a `d_in -> d_out` projection keeps per token, and whether it keeps
/// its input `x` itself (which the projections sharing that input then keep once).
fn adapter_saved(m: &MethodConfig, d_in: usize, d_out: usize) -> (usize, bool) {
    let r = m.r;
    // Dropout keeps its mask and the dropped copy (the rank-r product's input); without dropout
    // the product keeps `x` itself.
    let (dropped, keeps_x) = if m.dropout > 0.0 { (2 * d_in, false) } else { (0, true) };
    match m.kind {
        MethodKind::Full => (0, true),
        MethodKind::Lora => (dropped + r, keeps_x),
        // Also the base part and the LoRA part, each `[d_out]`, kept by the products with the
        // magnitude-over-norm factor.
        MethodKind::Dora => (dropped + r + 2 * d_out, keeps_x),
        MethodKind::HydraLora => {
            let heads = m.experts;
            // The router keeps x; softmax keeps its output; the outer product keeps the rank-r
            // intermediate and the scaled weights; the stacked B product keeps `[heads r]`.
            (dropped + r + heads * r + 2 * heads, true)
        }
        MethodKind::MoeLora => {
            let e = m.experts;
            (dropped + 2 * e * r + 2 * e, true)
        }
        MethodKind::IdLora => {
            let (k, kr) = (m.k, m.k * r);
            // The router keeps x and its softmax; the gathered bases `[k r]` (from the base
            // output: a gather keeps only indices) with dropout keep a mask and the dropped copy,
            // the product with the router weights keeps them and its result goes to B.
            let gathered = match (m.dropout > 0.0, m.dropout_site) {
                (true, DropoutSite::Gathered) => 2 * kr,
                (true, DropoutSite::Input) => 2 * d_in + kr,
                (false, _) => kr,
            };
            let to_b = if m.rank_boost { kr } else { r };
            (gathered + to_b + 2 * k, true)
        }
    }
}

/// Floats kept for the backward per token in one decoder layer (f32 activations), for `settings`
/// on `config`.
pub fn layer_saved_floats(config: &ModelConfig, settings: &PlanSettings) -> usize {
    let d = config.hidden_size;
    let (_, dq) = config.target_shape(Target::Q);
    let (_, dkv) = config.target_shape(Target::K);
    let i = config.intermediate_size;
    let heads = config.num_heads;
    let m = &settings.method;
    let full = m.kind == MethodKind::Full;

    // Two RMSNorms: the input (squared and divided) and the per-row rms; with trainable norm
    // weights (full fine-tuning) also the normalised input.
    let mut floats = 2 * (d + 1) + if full { 2 * d } else { 0 };
    // Attention and SwiGLU, by backend.
    floats += match settings.backend {
        Backend::Cpu => 2 * dq + 2 * dkv + heads + 2 * i,
        Backend::Gpu => {
            // q and the repeated k, v (`[heads, head_dim]` each), the softmax numerator and
            // output (`heads x seq` each) and the causal mask (one byte per score).
            let scores = heads * settings.seq;
            3 * dq + 2 * scores + scores.div_ceil(4) + dq + 4 * i
        }
    };
    // Adapters, and the inputs they keep once per group of projections that share an input.
    let groups: [(&[Target], usize); 4] = [
        (&[Target::Q, Target::K, Target::V], d),
        (&[Target::O], dq),
        (&[Target::Gate, Target::Up], d),
        (&[Target::Down], i),
    ];
    for (members, input) in groups {
        let mut keeps_input = false;
        for t in members.iter().filter(|t| full || settings.targets.contains(t)) {
            let (d_in, d_out) = config.target_shape(*t);
            let (own, keeps_x) = adapter_saved(m, d_in, d_out);
            floats += own;
            keeps_input |= keeps_x;
        }
        if keeps_input {
            floats += input;
        }
    }
    floats
}

/// The memory plan of one training step of `settings` on `config`.
///
/// Errors name the setting at fault (a method that cannot be built on these shapes, zero sizes).
pub fn plan(config: &ModelConfig, settings: &PlanSettings) -> Result<MemoryPlan> {
    if settings.micro_batch == 0 || settings.seq == 0 || settings.devices == 0 {
        return Err(config_err("plan", "micro-batch, sequence length and devices must be positive"));
    }
    let full = settings.method.kind == MethodKind::Full;
    if full && settings.precision != Precision::F32 {
        return Err(config_err(
            "train.precision",
            "full fine-tuning trains the base itself, which stays f32 (a half base is for adapters)",
        ));
    }
    let trainable = config.trainable_params(&settings.method, &settings.targets)?;
    let f = 4u64;
    let tokens = (settings.micro_batch * settings.seq) as u64;
    let base = config.base_params() as u64;
    // Full fine-tuning trains the base itself, in f32 (a half base was refused above).
    let weights = base * settings.precision.bytes() as u64;
    let params = trainable as u64 * f;

    let per_layer = layer_saved_floats(config, settings) as u64;
    let layers = config.num_layers as u64;
    let d = config.hidden_size as u64;
    let recompute = settings.gradient_checkpointing == GradientCheckpointing::Layers;
    // The final norm keeps its input and rms too. With layer recomputation the forward keeps
    // each layer's input and the top layer's output (the head's leaf) instead of the layers'
    // activations, which exist for one layer at a time in the backward, beside the gradient at
    // its output and that gradient times the output (the sum's operand).
    let (activations, layer) = if recompute {
        ((layers + 1) * d * tokens * f + (d + 1) * tokens * f, (per_layer + 2 * d) * tokens * f)
    } else {
        ((per_layer * layers + d + 1) * tokens * f, 0)
    };

    let v = config.vocab_size as u64;
    let logits = tokens * v * f;
    let mut head = match settings.backend {
        // The fused cross-entropy keeps the logits and writes their gradient over them. With a
        // half base the head's backward reads that gradient and the embedding a panel of
        // columns at a time (two 4 MiB buffers, not counted).
        Backend::Cpu => logits,
        // The composed log-softmax keeps three `[vocab]` rows per token, plus the gradient.
        Backend::Gpu => 4 * logits,
    };
    if full {
        // The head's own weight gradient comes first in the backward, beside every activation.
        head += v * d * f;
    }
    let mut notes = Vec::new();
    if settings.gradient_checkpointing == GradientCheckpointing::Operations {
        notes.push(
            "gradient checkpointing \"operations\" is burn's Balanced strategy, which recomputes \
             element-wise operations but keeps their inputs: on the CPU it measured a higher peak \
             than without (docs/bench-train.md); the plan counts the step without it"
                .to_string(),
        );
    }
    if settings.backend == Backend::Gpu {
        notes.push(
            "the GPU activation counts follow burn's generic operations and are not yet measured on a GPU"
                .into(),
        );
    }
    if settings.devices > 1 {
        notes.push(format!(
            "{} devices: each holds a replica and its own micro-batch; the figures are per device \
             (the optimizer state lives on the main one)",
            settings.devices
        ));
    }
    Ok(MemoryPlan {
        weights,
        adapter_params: if full { 0 } else { params },
        gradients: params,
        optimizer: 2 * params,
        activations,
        layer,
        head,
        runtime: settings.backend.runtime_bytes(),
        trainable,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        // hidden 8, intermediate 12, one layer, 2 heads of 4 (no grouping), vocab 10, untied.
        let json = r#"{"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
            "num_attention_heads": 2, "vocab_size": 10, "tie_word_embeddings": false}"#;
        ModelConfig::from_hf_json(json, "config.json").unwrap()
    }

    fn settings(method: MethodConfig, targets: &[Target]) -> PlanSettings {
        PlanSettings {
            method,
            targets: targets.to_vec(),
            precision: Precision::F32,
            micro_batch: 1,
            seq: 3,
            gradient_checkpointing: GradientCheckpointing::Off,
            devices: 1,
            backend: Backend::Cpu,
        }
    }

    #[test]
    fn lora_on_q_by_hand() {
        let c = tiny();
        let s = settings(MethodConfig::new(MethodKind::Lora, 2).with_dropout(0.0), &[Target::Q]);
        // Norms 2 (8 + 1); CPU attention q, k, v, out (8 each) + 2 lse; SwiGLU 2 x 12; LoRA's
        // rank-2 intermediate; q's input kept once (no dropout).
        assert_eq!(layer_saved_floats(&c, &s), 18 + 32 + 2 + 24 + 2 + 8);
        let p = plan(&c, &s).unwrap();
        // 86 per layer, plus the final norm's 9, for 3 tokens, 4 bytes each.
        assert_eq!(p.activations, (86 + 9) * 3 * 4);
        // The logits of 3 tokens over 10 words; the gradient overwrites them.
        assert_eq!(p.head, 3 * 10 * 4);
        assert_eq!(p.trainable, 2 * (8 + 8));
        assert_eq!((p.adapter_params, p.gradients, p.optimizer), (128, 128, 256));
        // Embedding and head 80 each, q k v o 64 each, gate up down 96 each, three norms of 8.
        assert_eq!(p.weights, (80 + 80 + 4 * 64 + 3 * 96 + 3 * 8) * 4);
        // Gradients (128) are smaller than the activations they replace: not in the peak.
        assert_eq!(p.total(), p.weights + 384 + p.activations + p.head + (64 << 20));
    }

    #[test]
    fn layer_recomputation_keeps_layer_inputs_and_one_layer() {
        let mut c = tiny();
        c.num_layers = 4;
        let mut s = settings(MethodConfig::new(MethodKind::Lora, 2).with_dropout(0.0), &[Target::Q]);
        let off = plan(&c, &s).unwrap();
        s.gradient_checkpointing = GradientCheckpointing::Layers;
        let on = plan(&c, &s).unwrap();
        // 3 tokens, 4 bytes: the inputs of 4 layers and the top output (8 each), the final
        // norm's 9; one layer's 86 (lora_on_q_by_hand) with the gradient at its output and the
        // product with it (8 each).
        assert_eq!(on.activations, (5 * 8 + 9) * 3 * 4);
        assert_eq!(on.layer, (86 + 16) * 3 * 4);
        assert_eq!(off.activations, (4 * 86 + 9) * 3 * 4);
        assert_eq!(off.layer, 0);
        // The head (120 bytes) and one layer (1224) are never held together.
        assert_eq!(on.total() + off.activations + off.head, off.total() + on.activations + on.layer);
        assert!(on.total() < off.total());
        // burn's Balanced strategy is not modelled: the plan is the step without it, with a note.
        s.gradient_checkpointing = GradientCheckpointing::Operations;
        let ops = plan(&c, &s).unwrap();
        assert_eq!(ops.total(), off.total());
        assert!(ops.notes.iter().any(|n| n.contains("Balanced")));
    }

    #[test]
    fn dropout_keeps_a_mask_and_a_copy_per_adapter() {
        let c = tiny();
        let with = settings(MethodConfig::new(MethodKind::Lora, 2), &[Target::Q, Target::K]);
        let without =
            settings(MethodConfig::new(MethodKind::Lora, 2).with_dropout(0.0), &[Target::Q, Target::K]);
        // Without dropout the shared input once (8); with it, mask + copy per adapter (2 x 16).
        assert_eq!(layer_saved_floats(&c, &with) - layer_saved_floats(&c, &without), 32 - 8);
    }

    #[test]
    fn idlora_keeps_gathered_bases_not_its_input_rows() {
        let c = tiny();
        let mut m = MethodConfig::new(MethodKind::IdLora, 2);
        m.k = 2;
        let base = layer_saved_floats(&c, &settings(MethodConfig::new(MethodKind::Lora, 2), &[]));
        // Router input 8 (once), router softmax and scaled weights 2 x 2, gathered k r = 4 with
        // mask and copy (8), rank-boosted product input 4.
        assert_eq!(layer_saved_floats(&c, &settings(m, &[Target::Q])) - base, 8 + 4 + 8 + 4);
    }

    #[test]
    fn a_half_base_halves_the_weights_and_full_fine_tuning_refuses_it() {
        let c = tiny();
        let mut s = settings(MethodConfig::new(MethodKind::Lora, 2), &Target::ALL);
        s.backend = Backend::Gpu;
        let f32_plan = plan(&c, &s).unwrap();
        s.precision = Precision::Bf16;
        let bf16_plan = plan(&c, &s).unwrap();
        assert_eq!(bf16_plan.weights * 2, f32_plan.weights);
        assert_eq!(bf16_plan.activations, f32_plan.activations);
        s.method = MethodConfig::new(MethodKind::Full, 0);
        assert!(plan(&c, &s).unwrap_err().to_string().contains("train.precision"));
        s.micro_batch = 0;
        assert!(plan(&c, &s).is_err());
    }

    #[test]
    fn fits_keeps_five_percent() {
        let c = tiny();
        let p = plan(&c, &settings(MethodConfig::new(MethodKind::Lora, 2), &Target::ALL)).unwrap();
        assert!(p.fits(p.total() * 2));
        assert!(!p.fits(p.total()));
    }

    #[test]
    fn full_fine_tuning_counts_its_gradients_where_they_outgrow_the_activations() {
        let c = tiny();
        let mut s = settings(MethodConfig::new(MethodKind::Full, 0), &Target::ALL);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.trainable, c.base_params());
        assert_eq!(p.gradients, c.base_params() as u64 * 4);
        // One token: activations are tiny, so the end of the backward (all gradients) is the peak.
        s.seq = 1;
        let p = plan(&c, &s).unwrap();
        assert!(p.gradients > p.activations + p.head);
        assert_eq!(p.total(), p.weights + p.optimizer + p.runtime + p.gradients);
        // The head's weight gradient (10 x 8) is counted with the head.
        assert_eq!(p.head, 10 * 4 + 80 * 4);
    }
}
