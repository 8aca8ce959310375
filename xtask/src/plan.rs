//! `cargo xtask plan`: predicted memory per device for a training step ([`idlora_train::plan`]),
//! and `--validate`, which measures the CPU peaks the prediction is checked against.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_models::{ModelConfig, Precision, Target};
use idlora_train::config::GradientCheckpointing;
use idlora_train::plan::{Backend, MemoryPlan, PlanSettings, plan};

use crate::bench_train;
use crate::paths;

/// Arguments of `cargo xtask plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// A Hugging Face `config.json`, a model folder or a GGUF file [default:
    /// configs/models/llama-3-8b.json].
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Method: full, lora, dora, hydralora, moelora, idlora.
    #[arg(long, default_value = "idlora")]
    method: String,
    /// Rank `r` [default: the paper's for the method: ID-LoRA 128, LoRA/DoRA 32, HydraLoRA 16,
    /// MoELoRA 8].
    #[arg(long)]
    r: Option<usize>,
    /// ID-LoRA clusters `k`.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Dropout probability.
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Adapted projections: q,k,v,o,gate,up,down (or `all`).
    #[arg(long, default_value = "all")]
    targets: String,
    /// Storage precision of the frozen base: f32, bf16, f16.
    #[arg(long, default_value = "bf16")]
    precision: Precision,
    /// Sequences per micro-batch on one device.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// `train.gradient_checkpointing`: `layers` (the flag alone), `operations` or `off`.
    #[arg(long, default_value = "off", num_args = 0..=1, default_missing_value = "layers")]
    gradient_checkpointing: GradientCheckpointing,
    /// Devices sharing the batch.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Backend kind: gpu (CUDA, wgpu, Vulkan) or cpu.
    #[arg(long, default_value = "gpu")]
    backend: Backend,
    /// Device memory in GiB, for the "fits" line.
    #[arg(long, default_value_t = 80.0)]
    gpu_gib: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// One row per configuration instead, `METHOD-R` comma-separated (`idlora-128,lora-32`),
    /// each on --targets with the other settings as given.
    #[arg(long)]
    compare: Option<String>,
    /// Instead: measure peak memory of SmolLM2-135M training steps on this CPU (one process per
    /// row) and compare each with its plan.
    #[arg(long)]
    validate: bool,
    /// With --validate: also write the Markdown table here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// The plan's terms as Markdown table rows (label, bytes).
fn rows(p: &MemoryPlan) -> Vec<(&'static str, u64)> {
    vec![
        ("weights", p.weights),
        ("trainable parameters (f32)", p.adapter_params),
        ("AdamW moments (f32)", p.optimizer),
        ("activations kept for backward", p.activations),
        ("head: logits, their gradient, transients", p.head),
        ("one recomputed layer (layer checkpointing; in the peak only above the head)", p.layer),
        ("gradients (f32; in the peak only above activations + head)", p.gradients),
        ("runtime allowance", p.runtime),
    ]
}

/// Markdown of one plan.
fn markdown(title: &str, p: &MemoryPlan, gpu_gib: f64) -> String {
    let mut md = format!("{title}\n\n| term | GiB |\n|---|---|\n");
    for (label, bytes) in rows(p) {
        md.push_str(&format!("| {label} | {:.2} |\n", bytes as f64 / GIB));
    }
    let total = p.total() as f64 / GIB;
    let fits = if p.fits((gpu_gib * GIB) as u64) { "fits" } else { "does not fit" };
    md.push_str(&format!("| **total per device** | **{total:.2}** |\n\n"));
    md.push_str(&format!(
        "{} trainable parameters; {fits} in {gpu_gib} GiB (keeping 5% free).\n",
        p.trainable
    ));
    for n in &p.notes {
        md.push_str(&format!("\nNote: {n}.\n"));
    }
    md
}

fn settings(args: &PlanArgs) -> Result<PlanSettings> {
    let kind: MethodKind = args.method.parse()?;
    let r = args.r.unwrap_or_else(|| idlora_train::config::paper_rank(kind));
    let mut method = MethodConfig::new(kind, r).with_dropout(args.dropout);
    method.k = args.k;
    let targets = Target::parse_list(&args.targets)?;
    Ok(PlanSettings {
        method,
        targets,
        precision: args.precision,
        micro_batch: args.micro_batch,
        seq: args.seq,
        gradient_checkpointing: args.gradient_checkpointing,
        devices: args.devices,
        backend: args.backend,
    })
}

/// Runs the command.
pub fn run(args: PlanArgs) -> Result<()> {
    if args.validate {
        return validate(&args);
    }
    let path = args
        .model_config
        .clone()
        .unwrap_or_else(|| paths::repo_root().join("configs/models/llama-3-8b.json"));
    let config = idlora_models::load::read_config(&path)?;
    let s = settings(&args)?;
    if let Some(list) = &args.compare {
        return compare(&args, &config, &s, list, &path);
    }
    let p = plan(&config, &s)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    let title = format!(
        "{}: {} r={} on {}, {} base, micro-batch {} x {} tokens, {} backend{}",
        path.display(),
        s.method.kind.display_name(),
        s.method.r,
        args.targets,
        s.precision,
        s.micro_batch,
        s.seq,
        args.backend,
        checkpointing_label(s.gradient_checkpointing)
    );
    println!("{}", markdown(&title, &p, args.gpu_gib));
    Ok(())
}

/// `--compare`: one row per `METHOD-R`, in GiB.
fn compare(
    args: &PlanArgs,
    config: &ModelConfig,
    base: &PlanSettings,
    list: &str,
    path: &std::path::Path,
) -> Result<()> {
    let mut md = format!(
        "{}: {} base, micro-batch {} x {} tokens, {} device(s), {} backend{}. GiB per device.\n\n\
         | method | trainable | weights | params + AdamW | activations | head | recomputed layer | gradients | total | fits {} GiB |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        path.display(),
        base.precision,
        base.micro_batch,
        base.seq,
        base.devices,
        args.backend,
        checkpointing_label(base.gradient_checkpointing),
        args.gpu_gib
    );
    let mut notes = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kind, r) = bench_train::method_rank(item).context("--compare")?;
        let mut method = MethodConfig::new(kind, r).with_dropout(base.method.dropout);
        method.k = base.method.k;
        let s = PlanSettings { method, ..base.clone() };
        let p = plan(config, &s)?;
        let g = |b: u64| b as f64 / GIB;
        md.push_str(&format!(
            "| {} r={r} | {:.1} M | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            s.method.kind.display_name(),
            p.trainable as f64 / 1e6,
            g(p.weights),
            g(p.adapter_params + p.optimizer),
            g(p.activations),
            g(p.head),
            g(p.layer),
            g(p.gradients),
            g(p.total()),
            if p.fits((args.gpu_gib * GIB) as u64) { "yes" } else { "no" }
        ));
        for n in p.notes {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
    }
    for n in notes {
        md.push_str(&format!("\nNote: {n}.\n"));
    }
    println!("{md}");
    Ok(())
}

/// One validation row: a `bench train` configuration and its shape.
struct Case {
    name: &'static str,
    precision: Precision,
    checkpointing: GradientCheckpointing,
    batch: usize,
    seq: usize,
}

const fn case(name: &'static str, precision: Precision, batch: usize, seq: usize) -> Case {
    Case { name, precision, checkpointing: GradientCheckpointing::Off, batch, seq }
}

const fn layers(name: &'static str, precision: Precision, batch: usize, seq: usize) -> Case {
    Case { name, precision, checkpointing: GradientCheckpointing::Layers, batch, seq }
}

const fn operations(name: &'static str, precision: Precision, batch: usize, seq: usize) -> Case {
    Case { name, precision, checkpointing: GradientCheckpointing::Operations, batch, seq }
}

/// ` + layer checkpointing` and the like, for labels.
fn checkpointing_label(c: GradientCheckpointing) -> String {
    match c {
        GradientCheckpointing::Off => String::new(),
        GradientCheckpointing::Layers => ", gradient checkpointing (layers)".into(),
        GradientCheckpointing::Operations => ", gradient checkpointing (operations: not modelled)".into(),
    }
}

/// The validation grid: every method at 4 x 256, both precisions for the three benchmark
/// configurations, half and twice the tokens, a longer sequence, layer checkpointing (modelled)
/// and burn's Balanced strategy (reported, not modelled).
const CASES: [Case; 21] = [
    case("lora-8", Precision::F32, 4, 256),
    case("lora-8", Precision::Bf16, 4, 256),
    case("lora-128", Precision::F32, 4, 256),
    case("lora-128", Precision::Bf16, 4, 256),
    case("idlora-128", Precision::F32, 4, 256),
    case("idlora-128", Precision::Bf16, 4, 256),
    case("idlora-32", Precision::F32, 4, 256),
    case("dora-8", Precision::F32, 4, 256),
    case("hydralora-8", Precision::F32, 4, 256),
    case("moelora-8", Precision::F32, 4, 256),
    case("full", Precision::F32, 4, 256),
    case("lora-8", Precision::F32, 2, 256),
    case("lora-8", Precision::Bf16, 8, 256),
    case("idlora-128", Precision::Bf16, 2, 512),
    layers("lora-8", Precision::F32, 4, 256),
    layers("lora-8", Precision::Bf16, 4, 256),
    layers("idlora-128", Precision::Bf16, 4, 256),
    layers("full", Precision::F32, 4, 256),
    layers("lora-8", Precision::Bf16, 8, 256),
    operations("lora-8", Precision::Bf16, 4, 256),
    operations("idlora-128", Precision::Bf16, 4, 256),
];

/// Measures each case in its own process and compares it with its CPU plan.
fn validate(args: &PlanArgs) -> Result<()> {
    let gguf = idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?;
    let config: ModelConfig = idlora_models::load::read_config(&gguf)?;
    let mut md = String::from(
        "SmolLM2-135M-Instruct on this CPU (burn flex), one warm-up and one timed step of forward + \
         backward + AdamW per row, each row in its own process; measured = peak RSS (`VmHWM`), \
         predicted = `idlora_train::plan` with the CPU backend. MiB.\n\n\
         | configuration | base | tokens | predicted | measured | error |\n|---|---|---|---|---|---|\n",
    );
    let mut worst: f64 = 0.0;
    for c in &CASES {
        let (method, targets) = bench_train::parse_config(c.name)?;
        let s = PlanSettings {
            method,
            targets,
            precision: c.precision,
            micro_batch: c.batch,
            seq: c.seq,
            gradient_checkpointing: c.checkpointing,
            devices: 1,
            backend: Backend::Cpu,
        };
        let predicted = plan(&config, &s)?.total() as f64 / MIB;
        let label = match c.checkpointing {
            GradientCheckpointing::Off => c.name.to_string(),
            GradientCheckpointing::Layers => format!("{} + layer checkpointing", c.name),
            GradientCheckpointing::Operations => format!("{} + burn Balanced", c.name),
        };
        eprintln!("measuring {label}, {} base, {} x {} ...", c.precision, c.batch, c.seq);
        let out = bench_train::child_with(c.name, c.precision, c.checkpointing, 1, c.batch, c.seq)?;
        let measured = bench_train::parse_peak(&out, &label)?;
        let error = (predicted - measured) / measured;
        let shown = if c.checkpointing == GradientCheckpointing::Operations {
            format!("{:+.0}% (not modelled)", 100.0 * error)
        } else {
            worst = worst.max(error.abs());
            format!("{:+.1}%", 100.0 * error)
        };
        md.push_str(&format!(
            "| {label} | {} | {} x {} | {predicted:.0} | {measured:.0} | {shown} |\n",
            c.precision, c.batch, c.seq
        ));
    }
    md.push_str(&format!("\nLargest error of the modelled rows: {:.1}%.\n", 100.0 * worst));
    println!("{md}");
    if let Some(p) = &args.out {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if worst > 0.15 {
        bail!("a prediction is off by more than 15% ({:.1}%)", 100.0 * worst);
    }
    Ok(())
}
