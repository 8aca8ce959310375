//! The run configuration: one TOML file, every setting of the paper's Tables 4 and 5, validated as a
//! whole before any work starts.
//!
//! ```
//! use idlora_train::config::TrainConfig;
//! let text = r#"
//! [model]
//! path = "SmolLM2-135M-Instruct.Q4_1.gguf"
//! [method]
//! kind = "idlora"
//! r = 128
//! [[data.sources]]
//! path = "alpaca.json"
//! "#;
//! let mut cfg = TrainConfig::from_toml(text, "run.toml", &["optim.lr=1e-4".into()])?;
//! assert_eq!(cfg.optim.lr, 1e-4);
//! assert_eq!(cfg.method_config()?.alpha, 256.0); // alpha defaults to 2 r
//! # Ok::<(), idlora_train::TrainError>(())
//! ```

use std::path::{Path, PathBuf};

use idlora_adapter::{DropoutSite, MethodConfig, MethodKind};
use idlora_cluster::{AssignmentSolver, PmrcConfig, Selector};
use idlora_data::{Columns, Format};
use idlora_models::layout::Target;
use idlora_models::{DeviceChoice, Precision};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, TrainError, config_err, io};

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The base model.
    pub model: ModelSection,
    /// The fine-tuning method and its settings.
    #[serde(default)]
    pub method: MethodSection,
    /// How ID-LoRA's index sets are made.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Training data.
    pub data: DataSection,
    /// Optimizer and learning-rate schedule.
    #[serde(default)]
    pub optim: OptimSection,
    /// Batching, length of the run, devices, intervals, outputs.
    #[serde(default)]
    pub train: RunSection,
    /// Before/after samples printed by `cargo xtask train`.
    #[serde(default)]
    pub sample: SampleSection,
}

/// `[model]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face folder (`config.json` + safetensors + `tokenizer.json`) or a GGUF file.
    pub path: String,
}

/// `[method]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodSection {
    /// `full`, `lora`, `dora`, `hydralora`, `moelora` or `idlora`.
    pub kind: MethodKind,
    /// Rank `r` (ID-LoRA: rows per cluster); unset, the paper's rank for `kind`
    /// ([`paper_rank`]), so that switching `kind` runs the paper's baseline, not ID-LoRA's rank.
    pub r: Option<usize>,
    /// Scale numerator (`alpha / r`); default `2 r` as in the paper.
    pub alpha: Option<f64>,
    /// Dropout probability.
    pub dropout: f64,
    /// rsLoRA scaling `alpha / sqrt(r)` (LoRA, DoRA).
    pub rslora: bool,
    /// HydraLoRA heads / MoELoRA experts; default 3 and 4.
    pub experts: Option<usize>,
    /// ID-LoRA clusters `k`.
    pub k: usize,
    /// ID-LoRA rank-boosting parts `p`; default `k`.
    pub p: Option<usize>,
    /// ID-LoRA rank boosting (false: the paper's "w/o RB" sum form).
    pub rank_boost: bool,
    /// ID-LoRA dropout site: `gathered` (on the gathered bases) or `input` (exact input dropout).
    pub dropout_site: DropoutSite,
    /// Adapted projections: names from `q k v o gate up down` (or `q_proj`, ...), or `["all"]`.
    #[serde(deserialize_with = "targets_from_names", serialize_with = "targets_to_names")]
    pub targets: Vec<Target>,
}

/// `["q", "v_proj"]` or `["all"]` to targets; an unknown name is an error listing the known.
fn targets_from_names<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Target>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Target::parse_list(&names.join(",")).map_err(|e| {
        serde::de::Error::custom(format!("{e}; expected names from q, k, v, o, gate, up, down, or \"all\""))
    })
}

fn targets_to_names<S: Serializer>(targets: &[Target], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(targets.iter().map(|t| t.module_name().trim_end_matches("_proj")))
}

/// The rank the paper runs each method at (Tables 1-2): its `# Params` column matched against
/// Table 6's counts for LLaMA-3-8B. LoRA 1.03% and DoRA 1.05% are r = 32 (83.9 M and 85.3 M),
/// HydraLoRA 1.10% is r = 16 (89.7 M, 3 heads), MoELoRA 1.09% is r = 8 (88.9 M, 4 experts),
/// ID-LoRA is r = 128 (Tables 4-5). Full fine-tuning has no rank (0).
///
/// ```
/// use idlora_adapter::MethodKind;
/// assert_eq!(idlora_train::config::paper_rank(MethodKind::HydraLora), 16);
/// ```
pub fn paper_rank(kind: MethodKind) -> usize {
    match kind {
        MethodKind::Full => 0,
        MethodKind::Lora | MethodKind::Dora => 32,
        MethodKind::HydraLora => 16,
        MethodKind::MoeLora => 8,
        MethodKind::IdLora => 128,
    }
}

impl MethodSection {
    /// `r`, or the paper's rank for `kind` when unset.
    pub fn rank(&self) -> usize {
        self.r.unwrap_or_else(|| paper_rank(self.kind))
    }
}

impl Default for MethodSection {
    fn default() -> Self {
        MethodSection {
            kind: MethodKind::IdLora,
            r: None,
            alpha: None,
            dropout: 0.05,
            rslora: false,
            experts: None,
            k: 4,
            p: None,
            rank_boost: true,
            dropout_site: DropoutSite::Gathered,
            targets: Target::ALL.to_vec(),
        }
    }
}

/// `[cluster]`: PMRC settings for ID-LoRA's index sets (`k` and `r` come from `[method]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `pmrc` (the paper), `ss` or `rs` (ablations).
    pub selector: Selector,
    /// Minimum cluster size; default the rank `r`, as in the paper.
    pub size_min: Option<usize>,
    /// Maximum cluster size; default none.
    pub size_max: Option<usize>,
    /// Exact assignment solver: `flow` (min-cost flow, the default) or `lp` (`good_lp`).
    pub solver: AssignmentSolver,
    /// k-means restarts.
    pub n_init: usize,
    /// Lloyd iterations per restart at most.
    pub max_iter: usize,
    /// Convergence tolerance.
    pub tol: f64,
    /// Seed.
    pub seed: u64,
    /// An index-set file from `cargo xtask cluster --model` to use instead of clustering.
    pub bases: Option<String>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            selector: Selector::Pmrc,
            size_min: None,
            size_max: None,
            solver: AssignmentSolver::Flow,
            n_init: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            bases: None,
        }
    }
}

/// `[data]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Prompt template: `alpaca` (Stanford Alpaca's) or `chat` (the model's chat template).
    #[serde(default)]
    pub template: TemplateKind,
    /// Longest training sequence in tokens (prompt + response); longer ones are cut at the end.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Share of each source held out for validation.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Validation examples at most (over all sources).
    #[serde(default = "default_val_max")]
    pub val_max: usize,
    /// The sources of the mixture.
    pub sources: Vec<SourceConfig>,
}

fn default_max_length() -> usize {
    512
}
fn default_val_fraction() -> f64 {
    0.05
}
fn default_val_max() -> usize {
    256
}

/// One `[[data.sources]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name in reports (default: the file name).
    pub name: Option<String>,
    /// JSON (array of objects) or JSONL file, optionally gzip-compressed (`.gz`).
    pub path: String,
    /// `alpaca` (`instruction`, `input`, `output`; also CodeAlpaca and Saferpaca), `gsm8k`
    /// (`question`, `answer`) or `columns` (see `columns`).
    #[serde(default)]
    pub format: SourceFormat,
    /// Field names for `format = "columns"`; dotted paths reach into nested objects (`doc.question`).
    pub columns: Option<Columns>,
    /// Mixture weight: each epoch takes `weight x` this source's training records (repeats above 1,
    /// a fresh seeded subsample below 1).
    #[serde(default = "one")]
    pub weight: f64,
    /// Keep this fraction of the source once, seeded (the paper's "50% of CodeAlpaca" is 0.5).
    #[serde(default = "one")]
    pub fraction: f64,
    /// Records to skip at the start of the file.
    #[serde(default)]
    pub skip: usize,
    /// Records to take after `skip` (default: all).
    pub take: Option<usize>,
}

/// A source's record layout, as written in `format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// `instruction`, `input`, `output`.
    #[default]
    Alpaca,
    /// `question`, `answer`.
    Gsm8k,
    /// Named by the source's `columns` table.
    Columns,
}
fn one() -> f64 {
    1.0
}

/// `[optim]`: AdamW and the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW beta 1.
    pub beta1: f64,
    /// AdamW beta 2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// `constant`, `linear` or `cosine` (Hugging Face's schedules, after warm-up).
    pub schedule: Schedule,
    /// Warm-up steps (the larger of this and `warmup_ratio x steps` is used).
    pub warmup_steps: usize,
    /// Warm-up as a share of all steps.
    pub warmup_ratio: f64,
    /// Global gradient-norm clipping (0: off).
    pub max_grad_norm: f64,
}

impl Default for OptimSection {
    /// The paper's Table 4: AdamW, learning rate 5e-5, no warm-up; Hugging Face's other defaults.
    fn default() -> Self {
        OptimSection {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// `[train]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Sequences per optimizer step (paper: 32); a multiple of `micro_batch`.
    pub effective_batch: usize,
    /// Passes over the mixture.
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Seed of shuffling, sampling, dropout and initialisation.
    pub seed: u64,
    /// Precision the frozen base is stored and multiplied in: `f32`, `bf16` or `f16`. Adapters,
    /// routers, optimizer state, activations between blocks and the loss are f32 whatever it is
    /// (`idlora_models::precision`).
    pub precision: Precision,
    /// `auto`, `cpu`, `wgpu`, `vulkan`, `cuda` or `cuda:N`.
    pub device: DeviceChoice,
    /// Data parallelism: further devices (`["cuda:1", "cuda:2"]`) that each take a share of every
    /// step's micro-batches; gradients are summed on `device`.
    pub extra_devices: Vec<DeviceChoice>,
    /// Gradient checkpointing: `false`; `true` (or `"layers"`), each decoder layer run again in
    /// the backward pass from its kept input ([`crate::recompute`]); or `"operations"`, burn's
    /// `Balanced` strategy. The gradients are the same either way.
    pub gradient_checkpointing: GradientCheckpointing,
    /// Validation loss every this many steps (0: only before and after).
    pub eval_interval: usize,
    /// Checkpoint every this many steps (0: only at the end and on Ctrl-C).
    pub checkpoint_interval: usize,
    /// Checkpoints kept (oldest removed first).
    pub keep_checkpoints: usize,
    /// Run folder.
    pub output_dir: String,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            micro_batch: 4,
            effective_batch: 32,
            epochs: 3,
            max_steps: None,
            seed: 42,
            precision: Precision::F32,
            device: DeviceChoice::Auto,
            extra_devices: Vec::new(),
            gradient_checkpointing: GradientCheckpointing::Off,
            eval_interval: 0,
            checkpoint_interval: 100,
            keep_checkpoints: 2,
            output_dir: "runs/train/run".into(),
        }
    }
}

/// `train.gradient_checkpointing`: what the backward pass recomputes instead of keeping from
/// the forward pass. In TOML `false`, `true`, `"off"`, `"layers"` or `"operations"`.
///
/// ```
/// use idlora_train::config::GradientCheckpointing;
///
/// assert_eq!("true".parse::<GradientCheckpointing>()?, GradientCheckpointing::Layers);
/// assert_eq!("operations".parse::<GradientCheckpointing>()?, GradientCheckpointing::Operations);
/// assert!("yes".parse::<GradientCheckpointing>().is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CheckpointingRepr", into = "CheckpointingRepr")]
pub enum GradientCheckpointing {
    /// Keep every activation the backward needs (fastest, most memory).
    #[default]
    Off,
    /// Keep each decoder layer's input only and run the layer again in the backward pass
    /// ([`crate::recompute`]): the transformer-style scheme, which cuts the activations to
    /// about one layer's worth for one more forward pass of compute.
    Layers,
    /// burn's `Balanced` strategy: element-wise operations recomputed from inputs kept inside
    /// one graph. Measured on the CPU it raises the peak (docs/bench-train.md).
    Operations,
}

impl GradientCheckpointing {
    /// Whether anything is recomputed.
    pub fn is_on(self) -> bool {
        self != GradientCheckpointing::Off
    }
}

impl std::fmt::Display for GradientCheckpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GradientCheckpointing::Off => "off",
            GradientCheckpointing::Layers => "layers",
            GradientCheckpointing::Operations => "operations",
        })
    }
}

impl std::str::FromStr for GradientCheckpointing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "false" | "off" => Ok(GradientCheckpointing::Off),
            "true" | "layers" => Ok(GradientCheckpointing::Layers),
            "operations" => Ok(GradientCheckpointing::Operations),
            other => Err(format!(
                "unknown gradient checkpointing `{other}` (false, true, \"layers\" or \"operations\")"
            )),
        }
    }
}

/// How [`GradientCheckpointing`] reads and writes in TOML: a boolean, or a name.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CheckpointingRepr {
    Flag(bool),
    Name(String),
}

impl TryFrom<CheckpointingRepr> for GradientCheckpointing {
    type Error = String;
    fn try_from(r: CheckpointingRepr) -> std::result::Result<Self, String> {
        match r {
            CheckpointingRepr::Flag(false) => Ok(GradientCheckpointing::Off),
            CheckpointingRepr::Flag(true) => Ok(GradientCheckpointing::Layers),
            CheckpointingRepr::Name(name) => name.parse(),
        }
    }
}

impl From<GradientCheckpointing> for CheckpointingRepr {
    fn from(g: GradientCheckpointing) -> Self {
        match g {
            GradientCheckpointing::Off => CheckpointingRepr::Flag(false),
            GradientCheckpointing::Layers => CheckpointingRepr::Flag(true),
            GradientCheckpointing::Operations => CheckpointingRepr::Name("operations".into()),
        }
    }
}

/// `[sample]`: prompts answered before and after training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSection {
    /// User messages (wrapped in the chat template when `data.template = "chat"`).
    pub prompts: Vec<String>,
    /// Tokens generated per prompt.
    pub max_new_tokens: usize,
}

impl Default for SampleSection {
    fn default() -> Self {
        SampleSection { prompts: Vec::new(), max_new_tokens: 48 }
    }
}

/// Prompt template of the training data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// Stanford Alpaca's prompt.
    #[default]
    Alpaca,
    /// The model's chat template, the instruction as the user turn.
    Chat,
}

impl TemplateKind {
    /// The prompt format the benchmarks use for a model trained with this template (recorded in
    /// the adapter folder, `idlora_data::prompt::PROMPT_FILE`).
    pub fn prompt_format(self) -> idlora_data::prompt::PromptFormat {
        match self {
            TemplateKind::Alpaca => idlora_data::prompt::PromptFormat::Alpaca,
            TemplateKind::Chat => idlora_data::prompt::PromptFormat::Chat,
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half a cosine to 0 at the last step.
    Cosine,
}

impl TrainConfig {
    /// Reads a TOML file and applies `key=value` overrides (values in TOML syntax; bare words are
    /// strings). Unknown keys and bad values are errors naming the key.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML `text` (`source` names it in messages), applies `overrides`, and validates.
    pub fn from_toml(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        let parse_err = |message: String| TrainError::ConfigFile { path: source.to_string(), message };
        // Without overrides, straight into the struct: messages carry line and column...
        if overrides.is_empty() {
            let cfg: TrainConfig = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
            cfg.validate()?;
            return Ok(cfg);
        }
        // ...and with overrides through a table, so that a bad override is named as such.
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let cfg: TrainConfig =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| TrainError::ConfigFile {
                path: format!("{source} with --set {}", overrides.join(" --set ")),
                message: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML (written to the run folder).
    pub fn to_toml(&self) -> String {
        // The rank as it was run, even where the config left it to the method's default.
        let mut resolved = self.clone();
        resolved.method.r = Some(self.method.rank());
        toml::to_string_pretty(&resolved)
            .unwrap_or_else(|e| format!("# could not serialise the config: {e}\n"))
    }

    /// The adapter method settings.
    pub fn method_config(&self) -> Result<MethodConfig> {
        let m = &self.method;
        let kind = m.kind;
        let r = m.rank();
        if r == 0 && kind != MethodKind::Full {
            return Err(config_err("method.r", "must be at least 1"));
        }
        let mut c = MethodConfig::new(kind, r);
        if let Some(a) = m.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(config_err("method.alpha", format!("{a} must be a positive number")));
            }
            c.alpha = a;
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return Err(config_err("method.dropout", format!("{} must be in [0, 1)", m.dropout)));
        }
        c.dropout = m.dropout;
        c.rslora = m.rslora;
        if let Some(e) = m.experts {
            if e == 0 {
                return Err(config_err("method.experts", "must be at least 1"));
            }
            c.experts = e;
        }
        if m.k == 0 {
            return Err(config_err("method.k", "must be at least 1"));
        }
        c.k = m.k;
        c.p = m.p;
        c.rank_boost = m.rank_boost;
        c.dropout_site = m.dropout_site;
        c.validate().map_err(|e| config_err("method", e.to_string()))?;
        Ok(c)
    }

    /// The adapted projections.
    pub fn targets(&self) -> Result<Vec<Target>> {
        if self.method.targets.is_empty() {
            return Err(config_err("method.targets", "names no projection"));
        }
        Ok(self.method.targets.clone())
    }

    /// PMRC settings (`k` and `r` from the method).
    pub fn cluster_config(&self) -> Result<PmrcConfig> {
        let c = &self.cluster;
        if c.n_init == 0 {
            return Err(config_err("cluster.n_init", "must be at least 1"));
        }
        if c.max_iter == 0 {
            return Err(config_err("cluster.max_iter", "must be at least 1"));
        }
        if !(c.tol.is_finite() && c.tol >= 0.0) {
            return Err(config_err("cluster.tol", format!("{} must be a number >= 0", c.tol)));
        }
        let pmrc = PmrcConfig {
            k: self.method.k,
            rank: self.method.rank(),
            size_min: c.size_min,
            size_max: c.size_max,
            n_init: c.n_init,
            max_iter: c.max_iter,
            tol: c.tol,
            seed: c.seed,
            selector: c.selector,
            solver: c.solver,
        };
        // The size the clustering will use (`None` means the rank, as PmrcConfig says).
        let (size_min, r) = (pmrc.kmeans().size_min, self.method.rank());
        if size_min < r && c.selector == Selector::Pmrc {
            return Err(config_err(
                "cluster.size_min",
                format!("{size_min} is below the rank r = {r}: a cluster must hold its r basis rows"),
            ));
        }
        if let Some(max) = c.size_max
            && max < size_min
        {
            return Err(config_err("cluster.size_max", format!("{max} is below size_min = {size_min}")));
        }
        Ok(pmrc)
    }

    /// Micro-batches per optimizer step.
    pub fn grad_accum(&self) -> usize {
        self.train.effective_batch / self.train.micro_batch.max(1)
    }

    /// Checks every value; the first problem is returned, naming its key.
    pub fn validate(&self) -> Result<()> {
        if self.model.path.trim().is_empty() {
            return Err(config_err("model.path", "is empty"));
        }
        self.method_config()?;
        self.targets()?;
        self.cluster_config()?;
        let d = &self.data;
        if d.sources.is_empty() {
            return Err(config_err("data.sources", "no source given; add a [[data.sources]] table"));
        }
        if d.max_length < 8 {
            return Err(config_err("data.max_length", format!("{} is too short (at least 8)", d.max_length)));
        }
        if !(0.0..0.5).contains(&d.val_fraction) {
            return Err(config_err("data.val_fraction", format!("{} must be in [0, 0.5)", d.val_fraction)));
        }
        for (i, s) in d.sources.iter().enumerate() {
            let key = |k: &str| format!("data.sources[{i}].{k}");
            if s.path.trim().is_empty() {
                return Err(config_err(key("path"), "is empty"));
            }
            source_format(s).map_err(|m| config_err(key("format"), m))?;
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return Err(config_err(key("weight"), format!("{} must be a positive number", s.weight)));
            }
            if !(s.fraction > 0.0 && s.fraction <= 1.0) {
                return Err(config_err(key("fraction"), format!("{} must be in (0, 1]", s.fraction)));
            }
            if s.take == Some(0) {
                return Err(config_err(key("take"), "0 keeps no record"));
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(config_err("optim.lr", format!("{} must be a positive number", o.lr)));
        }
        for (k, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(config_err(k, format!("{v} must be in [0, 1)")));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(config_err("optim.eps", format!("{} must be a positive number", o.eps)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(config_err("optim.weight_decay", format!("{} must be >= 0", o.weight_decay)));
        }
        if !(0.0..1.0).contains(&o.warmup_ratio) {
            return Err(config_err("optim.warmup_ratio", format!("{} must be in [0, 1)", o.warmup_ratio)));
        }
        if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
            return Err(config_err(
                "optim.max_grad_norm",
                format!("{} must be >= 0 (0: off)", o.max_grad_norm),
            ));
        }
        let t = &self.train;
        if t.micro_batch == 0 {
            return Err(config_err("train.micro_batch", "must be at least 1"));
        }
        if t.effective_batch == 0 || !t.effective_batch.is_multiple_of(t.micro_batch) {
            return Err(config_err(
                "train.effective_batch",
                format!(
                    "{} must be a positive multiple of train.micro_batch ({})",
                    t.effective_batch, t.micro_batch
                ),
            ));
        }
        if t.epochs == 0 && t.max_steps.is_none() {
            return Err(config_err("train.epochs", "0 epochs and no max_steps: nothing to train"));
        }
        if t.max_steps == Some(0) {
            return Err(config_err("train.max_steps", "must be at least 1"));
        }
        if t.precision != Precision::F32 && self.method.kind == MethodKind::Full {
            return Err(config_err(
                "train.precision",
                format!(
                    "`{}` stores the base in half precision, but method `full` trains the base: \
                     full fine-tuning needs `f32` (no f32 master copy of the weights is kept)",
                    t.precision
                ),
            ));
        }
        if t.keep_checkpoints == 0 {
            return Err(config_err("train.keep_checkpoints", "must be at least 1 (resume needs one)"));
        }
        if t.output_dir.trim().is_empty() {
            return Err(config_err("train.output_dir", "is empty"));
        }
        Ok(())
    }

    /// Checks that the files the config names exist (the model and every data source).
    pub fn check_files(&self) -> Result<()> {
        if !Path::new(&self.model.path).exists() {
            return Err(config_err("model.path", format!("{} does not exist", self.model.path)));
        }
        for (i, s) in self.data.sources.iter().enumerate() {
            if !Path::new(&s.path).is_file() {
                return Err(config_err(
                    format!("data.sources[{i}].path"),
                    format!("{} is not a file", s.path),
                ));
            }
        }
        if let Some(b) = &self.cluster.bases
            && !Path::new(b).is_file()
        {
            return Err(config_err("cluster.bases", format!("{b} is not a file")));
        }
        Ok(())
    }

    /// The run folder.
    pub fn output_dir(&self) -> PathBuf {
        PathBuf::from(&self.train.output_dir)
    }
}

/// The record layout of a source, or what is wrong with it.
pub fn source_format(s: &SourceConfig) -> std::result::Result<Format, String> {
    match (s.format, &s.columns) {
        (SourceFormat::Alpaca, None) => Ok(Format::Alpaca),
        (SourceFormat::Gsm8k, None) => Ok(Format::Gsm8k),
        (SourceFormat::Columns, Some(c)) => Ok(Format::Columns(c.clone())),
        (SourceFormat::Columns, None) => {
            Err("`columns` needs a `columns = { instruction = ..., output = ... }` table".into())
        }
        (f, Some(_)) => {
            let name = if f == SourceFormat::Gsm8k { "gsm8k" } else { "alpaca" };
            Err(format!("`{name}` takes no `columns` (use format = \"columns\")"))
        }
    }
}

/// Sets `key=value` in `table`; `key` is dotted, and a number selects an array element
/// (`data.sources.0.weight=2`).
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| config_err(item, "an override is `key=value` (for example optim.lr=1e-4)"))?;
    let key = key.trim();
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(config_err(key, "is not a dotted key"));
    }
    let mut cursor = table;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        if last {
            cursor.insert((*part).to_string(), value);
            return Ok(());
        }
        let entry =
            cursor.entry((*part).to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        // An array element: the next part is its index.
        if let toml::Value::Array(items) = entry {
            let idx_part = parts.get(depth + 1).copied().unwrap_or("");
            let idx: usize = idx_part
                .parse()
                .map_err(|_| config_err(key, format!("`{part}` is a list: give an index, as in {part}.0")))?;
            let len = items.len();
            let el = items
                .get_mut(idx)
                .ok_or_else(|| config_err(key, format!("`{part}` has {len} entries, no index {idx}")))?;
            let rest = &parts[depth + 2..];
            let toml::Value::Table(t) = el else {
                return Err(config_err(key, format!("`{part}.{idx}` is not a table")));
            };
            if rest.is_empty() {
                return Err(config_err(key, "cannot replace a whole list entry; set one of its keys"));
            }
            return apply_override(t, &format!("{}={raw}", rest.join(".")));
        }
        cursor = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(config_err(key, format!("`{part}` is a value, not a table"))),
        };
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
