//! `cargo xtask bench lm`: prompt processing and greedy decoding tokens/s of SmolLM2-135M (f32) on
//! the CPU, side by side with transformers on the same machine, same token ids, same lengths.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_models::{ForwardInput, KvCache, load};

use crate::paths;

/// Arguments of `cargo xtask bench lm`.
#[derive(Args)]
pub struct LmArgs {
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode greedily.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Timed rounds (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the transformers side.
    #[arg(long)]
    no_python: bool,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub use idlora_eval::efficiency::{median, peak_rss_mb};

fn python_env() -> Option<PathBuf> {
    // transformers loads GGUF files only with accelerate installed (since 5.x).
    paths::python_venv(
        "venv-lm",
        &["torch", "transformers", "accelerate", "gguf"],
        "import torch, transformers, accelerate, gguf",
    )
}

/// Runs the benchmark.
pub fn run(args: LmArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.new_tokens == 0 || args.rounds == 0 {
        bail!("--prompt-tokens, --new-tokens and --rounds must be positive");
    }
    let gguf = idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device = burn::tensor::Device::flex();
    let model = load(&gguf, &device)?;
    // A fixed, ordinary token sequence (ids of common words), repeated to the prompt length.
    let base = [504u32, 3575, 282, 4649, 314, 17, 1073, 8236, 28, 253, 1978, 30];
    let prompt: Vec<u32> = base.iter().cycle().take(args.prompt_tokens).copied().collect();
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    let mut tokens = Vec::new();
    for round in 0..=args.rounds {
        let mut cache = KvCache::new();
        let t = Instant::now();
        // The head on the last position only, as generation does on both sides.
        let last = model.last_logits(&ForwardInput::single(&prompt), Some(&mut cache))?;
        let host = last.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let p = t.elapsed().as_secs_f64();
        let argmax =
            |h: &[f32]| h.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
        let mut next = argmax(&host);
        let mut generated = vec![next];
        let t = Instant::now();
        for _ in 1..args.new_tokens {
            let logits = model.last_logits(&ForwardInput::single(&[next]), Some(&mut cache))?;
            let host = logits.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            next = argmax(&host);
            generated.push(next);
        }
        let d = t.elapsed().as_secs_f64();
        if round > 0 {
            prefill.push(p);
            decode.push(d);
        }
        tokens = generated;
    }
    let ours = (median(prefill), median(decode), peak_rss_mb());
    let theirs = if args.no_python {
        None
    } else {
        match python_env() {
            None => None,
            Some(python) => {
                let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
                let out = Command::new(python)
                    .arg(paths::repo_root().join("benches/python/lm_speed.py"))
                    .arg(&gguf)
                    .arg(ids.join(","))
                    .args([args.new_tokens.to_string(), threads.to_string(), args.rounds.to_string()])
                    .output()
                    .context("running benches/python/lm_speed.py")?;
                if !out.status.success() {
                    bail!("transformers side failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let line = String::from_utf8_lossy(&out.stdout);
                let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())
                    .context("parsing lm_speed.py's output")?;
                let same = v["tokens"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|t| t.as_u64()).map(|t| t as u32).collect::<Vec<_>>())
                    == Some(tokens.clone());
                Some((
                    v["prefill_s"].as_f64().unwrap_or(f64::NAN),
                    v["decode_s"].as_f64().unwrap_or(f64::NAN),
                    v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                    same,
                ))
            }
        }
    };
    let pp = |s: f64| args.prompt_tokens as f64 / s;
    let dd = |s: f64| (args.new_tokens - 1) as f64 / s;
    let mut md = format!(
        "SmolLM2-135M-Instruct (GGUF dequantised to f32), CPU, {threads} threads, prompt {} tokens, {} greedy \
         tokens, median of {} rounds.\n\n| | prompt tokens/s | decode tokens/s | peak RSS MB |\n|---|---|---|---|\n",
        args.prompt_tokens, args.new_tokens, args.rounds
    );
    md.push_str(&format!("| idlora (burn flex) | {:.0} | {:.1} | {:.0} |\n", pp(ours.0), dd(ours.1), ours.2));
    if let Some((p, d, m, same)) = theirs {
        md.push_str(&format!("| transformers (torch) | {:.0} | {:.1} | {m:.0} |\n", pp(p), dd(d)));
        md.push_str(&format!(
            "| ratio idlora / transformers | {:.2} | {:.2} | {:.2} |\n\nGreedy tokens identical: {}.\n",
            p / ours.0,
            d / ours.1,
            ours.2 / m,
            if same { "yes" } else { "NO" }
        ));
    }
    print!("{md}");
    if let Some(out) = args.out {
        idlora_data::write_atomic(&out, md.as_bytes())?;
    }
    Ok(())
}
