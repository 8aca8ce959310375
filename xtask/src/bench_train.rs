//! `cargo xtask bench train`: tokens/s and peak memory of training steps on SmolLM2-135M (f32, CPU),
//! batch 4 x 256 tokens, for LoRA r = 8, LoRA r = 128 and ID-LoRA r = 128 (k = 4), side by side with
//! PyTorch + PEFT LoRA r = 8 on the same machine and the same token ids.
//!
//! Each configuration runs in its own process, so that its peak resident memory is its own.
//! ID-LoRA at r = 128 needs `k r = 512` rows per matrix: SmolLM2's k/v projections have 192, so
//! both r = 128 rows adapt q, o, gate, up and down (the same targets for LoRA and ID-LoRA).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::AdamWConfig;
use clap::Args;
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::PmrcConfig;
use idlora_models::adapters::BasesSource;
use idlora_models::layout::Target;
use idlora_models::load::load_as;
use idlora_models::{CausalLm, Precision};
use idlora_train::batch::collate;
use idlora_train::config::GradientCheckpointing;
use idlora_train::recompute::batch_grads;
use idlora_train::template::Example;
use rand::{RngExt, SeedableRng};

use crate::bench_lm::{median, peak_rss_mb};
use crate::paths;

/// Arguments of `cargo xtask bench train`.
#[derive(Args)]
pub struct TrainBenchArgs {
    /// Timed steps per configuration (after one warm-up step); medians are reported.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_python: bool,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: run one configuration (`METHOD-R` such as `lora-8`, `idlora-128`, or `full`) and print JSON.
    #[arg(long, hide = true)]
    one: Option<String>,
    /// Precision of the frozen base: f32, bf16 or f16 (`--precisions` runs several side by side).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Gradient checkpointing: `off`, `layers` (recompute each decoder layer in the backward)
    /// or `operations` (burn's Balanced strategy).
    #[arg(long, default_value = "off")]
    checkpointing: GradientCheckpointing,
    /// The memory table instead: every configuration at f32, bf16 and bf16 + checkpointing, one
    /// process each (peak resident memory is per process), no PyTorch.
    #[arg(long)]
    memory: bool,
}

const CONFIGS: [(&str, &str); 3] = [
    ("lora-8", "LoRA r=8, all 7 projections"),
    ("lora-128", "LoRA r=128, q,o,gate,up,down"),
    ("idlora-128", "ID-LoRA r=128 k=4, q,o,gate,up,down"),
];

pub(crate) fn token_ids(batch: usize, seq: usize, vocab: usize) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    // Ordinary ids (below 20k: real words), the same on both sides.
    (0..batch * seq).map(|_| rng.random_range(100..vocab.min(20_000) as u32)).collect()
}

fn run_one(name: &str, args: &TrainBenchArgs) -> Result<()> {
    let gguf = idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?;
    let device = burn::tensor::Device::flex().autodiff();
    let device = if args.checkpointing == GradientCheckpointing::Operations {
        device.gradient_checkpointing()
    } else {
        device
    };
    device.seed(0);
    let model = load_as(&gguf, &device, args.precision)?;
    let base_params = model.num_params();
    let (method, targets) = parse_config(name)?;
    // Clustering is not timed; one restart is enough for a speed measurement.
    let progress = |_: usize, _: usize| {};
    let bases = BasesSource::Cluster(PmrcConfig { n_init: 1, ..PmrcConfig::default() }, &progress);
    let model =
        model.apply_adapters(&method, &targets, (method.kind == MethodKind::IdLora).then_some(bases))?;
    let (step_s, loss) = timed_steps(model, args.batch, args.seq, args.steps, args.checkpointing)?;
    println!(
        "{}",
        serde_json::json!({"step_s": step_s, "peak_rss_mb": peak_rss_mb(), "loss": loss, "base_params": base_params})
    );
    Ok(())
}

/// A configuration name, `METHOD-R` (`lora-8`, `dora-8`, `idlora-128`, ...) or `full`: the
/// method at rank `R` with the paper's other settings, on all seven projections below r = 128
/// and on q, o, gate, up, down from r = 128 (SmolLM2's k/v have 192 rows, fewer than ID-LoRA's
/// `k r = 512`; LoRA at that rank uses the same projections so that the two compare).
pub(crate) fn parse_config(name: &str) -> Result<(MethodConfig, Vec<Target>)> {
    if name == "full" {
        return Ok((MethodConfig::new(MethodKind::Full, 0), Target::ALL.to_vec()));
    }
    let (kind, r) = method_rank(name)?;
    let targets = if r >= 128 {
        vec![Target::Q, Target::O, Target::Gate, Target::Up, Target::Down]
    } else {
        Target::ALL.to_vec()
    };
    Ok((MethodConfig::new(kind, r), targets))
}

/// `METHOD-R` (`lora-8`, `idlora-128`) as a method and a rank.
pub(crate) fn method_rank(name: &str) -> Result<(MethodKind, usize)> {
    let Some((kind, r)) = name.rsplit_once('-') else {
        bail!("`{name}` is not METHOD-R (lora-8, idlora-128, ...)");
    };
    let r: usize = r.parse().with_context(|| format!("`{name}`: `{r}` is not a rank"))?;
    Ok((kind.parse()?, r))
}

/// One warm-up and `steps` timed training steps (forward, backward, AdamW) of `model` on one
/// batch of `batch x seq` tokens from [`token_ids`]: the median step seconds and the last loss.
/// Dropout is seeded per layer as in training, so every checkpointing choice computes the same
/// losses.
pub(crate) fn timed_steps(
    mut model: CausalLm,
    batch: usize,
    seq: usize,
    steps: usize,
    checkpointing: GradientCheckpointing,
) -> Result<(f64, f64)> {
    let device = model.device();
    let ids = token_ids(batch, seq, model.config.vocab_size);
    let examples: Vec<Example> =
        ids.chunks(seq).map(|row| Example { tokens: row.to_vec(), prompt_len: 1 }).collect();
    let rows: Vec<&Example> = examples.iter().collect();
    let batch = collate(&rows, 0);
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0).init();
    let mut times = Vec::new();
    let mut loss = f64::NAN;
    for _ in 0..=steps {
        let t = Instant::now();
        let targets = batch.target_count() as f64;
        let (grads, nll) = batch_grads(&model, &batch, 0, targets, checkpointing)?;
        loss = nll / targets;
        model = optim.step(1e-4, model, grads);
        device.sync().map_err(|e| anyhow::anyhow!("synchronising the device: {e:?}"))?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok((median(times[1..].to_vec()), loss))
}

/// Runs `bench train --one name` with these settings in its own process.
fn child(
    args: &TrainBenchArgs,
    name: &str,
    precision: Precision,
    checkpointing: GradientCheckpointing,
) -> Result<std::process::Output> {
    child_with(name, precision, checkpointing, args.steps, args.batch, args.seq)
}

/// Runs `bench train --one name` in its own process: `steps` timed steps of `batch x seq` tokens.
pub(crate) fn child_with(
    name: &str,
    precision: Precision,
    checkpointing: GradientCheckpointing,
    steps: usize,
    batch: usize,
    seq: usize,
) -> Result<std::process::Output> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "train", "--one", name, "--precision", &precision.to_string()]);
    cmd.args(["--steps", &steps.to_string(), "--batch", &batch.to_string()]);
    cmd.args(["--seq", &seq.to_string()]);
    cmd.args(["--checkpointing", &checkpointing.to_string()]);
    cmd.output().with_context(|| format!("running {name} ({precision})"))
}

/// The peak resident MiB a `--one` child reported.
pub(crate) fn parse_peak(out: &std::process::Output, what: &str) -> Result<f64> {
    Ok(parse(out, what)?.1)
}

/// The memory table: each configuration with an f32 and a bf16 base, without and with layer
/// checkpointing, side by side, one process each.
fn run_memory(args: &TrainBenchArgs) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let variants = [
        ("f32 base", Precision::F32, GradientCheckpointing::Off),
        ("bf16 base", Precision::Bf16, GradientCheckpointing::Off),
        ("f32 base + layer checkpointing", Precision::F32, GradientCheckpointing::Layers),
        ("bf16 base + layer checkpointing", Precision::Bf16, GradientCheckpointing::Layers),
    ];
    let mut md = format!(
        "SmolLM2-135M-Instruct, CPU (burn flex), {threads} threads, batch {} x {} tokens, forward + \
         backward + AdamW, median of {} steps after one warm-up, each row in its own process. \
         `vs f32` is against the f32 row without checkpointing; `base saved` is the drop in peak \
         RSS from the f32 row with the same checkpointing, as a share of the base's f32 bytes (50% \
         is all a 2-byte base can save).\n\n\
         | configuration | base | s / step | peak RSS MB | vs f32 | base saved | loss |\n|---|---|---|---|---|---|---|\n",
        args.batch, args.seq, args.steps
    );
    for (name, label) in CONFIGS {
        // Peak RSS of the f32 rows: without checkpointing (the `vs f32` reference), and by mode.
        let mut f32_rows: Vec<(GradientCheckpointing, f64)> = Vec::new();
        for (variant, precision, ckpt) in variants {
            eprintln!("running {label}, {variant} ...");
            let out = child(args, name, precision, ckpt)?;
            let (step, rss, loss) = parse(&out, label)?;
            let base_params = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v["base_params"].as_f64())
                .unwrap_or(f64::NAN);
            if precision == Precision::F32 {
                f32_rows.push((ckpt, rss));
            }
            let reference = f32_rows.first().map_or(rss, |&(_, f)| f);
            let ratio = format!("{:.2}x", rss / reference);
            let saved = match f32_rows.iter().find(|(c, _)| *c == ckpt) {
                Some(&(_, f)) if precision != Precision::F32 => {
                    let base_mb = base_params * 4.0 / (1024.0 * 1024.0);
                    format!("{:.0}%", 100.0 * (f - rss) / base_mb)
                }
                _ => "-".to_string(),
            };
            md.push_str(&format!(
                "| {label} | {variant} | {step:.2} | {rss:.0} | {ratio} | {saved} | {loss:.4} |\n"
            ));
        }
    }
    println!("{md}");
    if let Some(p) = &args.out {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn parse(out: &std::process::Output, what: &str) -> Result<(f64, f64, f64)> {
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .with_context(|| format!("parsing {what}'s output"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok((f("step_s"), f("peak_rss_mb"), f("loss")))
}

/// Runs the benchmark (or, with `--one`, one configuration of it).
pub fn run(args: TrainBenchArgs) -> Result<()> {
    if let Some(name) = &args.one {
        return run_one(name, &args);
    }
    if args.steps == 0 || args.batch == 0 || args.seq < 2 {
        bail!("--steps and --batch must be positive and --seq at least 2");
    }
    if args.memory {
        return run_memory(&args);
    }
    let tokens = (args.batch * args.seq) as f64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for (name, label) in CONFIGS {
        eprintln!("running {label} ...");
        let out = child(&args, name, args.precision, args.checkpointing)?;
        rows.push((format!("idlora (burn flex): {label}"), parse(&out, label)?));
    }
    if !args.no_python
        && let Some(python) = paths::python_venv(
            "venv-train",
            &["torch", "transformers", "peft", "gguf"],
            "import torch, transformers, peft, gguf",
        )
    {
        eprintln!("running PyTorch + PEFT LoRA r=8 ...");
        let gguf = idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?;
        let ids: Vec<String> = token_ids(args.batch, args.seq, 49_152).iter().map(u32::to_string).collect();
        let out = Command::new(python)
            .arg(paths::repo_root().join("benches/python/train_speed.py"))
            .arg(&gguf)
            .arg(ids.join(","))
            .args([args.batch, args.seq, 8, threads, args.steps].map(|v| v.to_string()))
            .output()
            .context("running benches/python/train_speed.py")?;
        rows.push(("PyTorch + PEFT: LoRA r=8, all 7 projections".into(), parse(&out, "train_speed.py")?));
    }
    let torch = rows.iter().find(|r| r.0.starts_with("PyTorch")).map(|r| r.1);
    let mut md = format!(
        "SmolLM2-135M-Instruct (GGUF dequantised to f32), CPU, {threads} threads, batch {} x {} tokens, \
         forward + backward + AdamW, median of {} steps after one warm-up; each row in its own process.\n\n\
         | configuration | s / step | tokens/s | peak RSS MB | tokens/s vs PyTorch | memory vs PyTorch |\n|---|---|---|---|---|---|\n",
        args.batch, args.seq, args.steps
    );
    for (label, (step, rss, _)) in &rows {
        let (speed, mem) = match torch {
            Some((ts, tm, _)) => (format!("{:.2}x", ts / step), format!("{:.2}x", rss / tm)),
            None => ("-".into(), "-".into()),
        };
        md.push_str(&format!(
            "| {label} | {step:.2} | {:.0} | {rss:.0} | {speed} | {mem} |\n",
            tokens / step
        ));
    }
    if let (Some(l), Some(i)) =
        (rows.iter().find(|r| r.0.contains("LoRA r=128")), rows.iter().find(|r| r.0.contains("ID-LoRA")))
    {
        md.push_str(&format!("\nID-LoRA r=128 step time / LoRA r=128 step time: {:.3}.\n", i.1.0 / l.1.0));
    }
    println!("{md}");
    if let Some(p) = &args.out {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
