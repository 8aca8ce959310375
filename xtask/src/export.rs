//! `cargo xtask export`: a model with its LoRA / DoRA adapter merged, written as a Hugging Face
//! folder (config.json, safetensors, tokenizer) that transformers and `eval --model` load. Fully
//! fine-tuned runs write theirs themselves (`<run>/model`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_models::Precision;
use idlora_models::export::{ExportOptions, export_hf};

use crate::lm::ModelArgs;

/// Arguments of `cargo xtask export`.
#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output folder (created; existing model files in it are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Storage type of the written weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Largest shard, MiB (transformers' default is 5000 MB).
    #[arg(long, default_value_t = 2048)]
    shard_mib: usize,
}

/// Runs `cargo xtask export`.
pub fn run(args: ExportArgs) -> Result<()> {
    if args.model.precision != Precision::F32 {
        bail!(
            "--precision {}: export merges in f32; load the base in f32 and use --dtype for the output",
            args.model.precision
        );
    }
    let t = Instant::now();
    let (loaded, _) = args.model.load_described()?;
    // A GGUF base has no tokenizer.json: the exported folder gets the tokenizer rebuilt from it.
    let tokenizer = loaded.tokenizer().ok();
    if tokenizer.is_none() {
        eprintln!("warning: {} has no tokenizer; the export has none either", loaded.path.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let options = ExportOptions { dtype: args.dtype, max_shard_bytes: args.shard_mib.max(1) << 20 };
    let written = export_hf(loaded.model.clone(), tokenizer, &args.out, &options)
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    // The prompt format the adapter was trained with goes along, for `eval --model`.
    if let Some(adapter) = &args.model.adapter
        && let Some(format) = idlora_data::prompt::recorded_format(adapter)?
    {
        idlora_data::prompt::record_format(&args.out, format)?;
    }
    println!(
        "exported {} tensors ({:.1} MiB, {}; {} projections merged) to {} in {:.1} s: {}",
        written.tensors,
        written.bytes as f64 / (1 << 20) as f64,
        args.dtype,
        written.merged.len(),
        args.out.display(),
        t.elapsed().as_secs_f64(),
        written.files.join(", ")
    );
    Ok(())
}
