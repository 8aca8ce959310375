//! `cargo xtask train`: fine-tune a model as a TOML config says (default: the embedded SmolLM2
//! ID-LoRA demo), with a progress bar, Ctrl-C checkpointing and before/after samples.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_models::{CausalLm, ChatMessage, SamplingConfig, Tokenizer, generate, load, load_tokenizer};
use idlora_train::config::TemplateKind;
use idlora_train::plan::{Backend, PlanSettings, plan};
use idlora_train::trainer::{Outcome, RunPlan, StepMetrics, TrainOptions, train};
use idlora_train::{Observer, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::paths;

/// The default run (`cargo xtask train` with no arguments).
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/train/smollm2-demo.toml");

/// Arguments of `cargo xtask train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Run configuration (TOML) [default: configs/train/smollm2-demo.toml, built in].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value, as `key=value` in TOML syntax (repeatable): `--set optim.lr=1e-4`,
    /// `--set data.sources.0.weight=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue the run in `train.output_dir` from its last checkpoint (give the same config and
    /// overrides, and `--set train.output_dir=...` when the config names it with `{time}`).
    #[arg(long)]
    resume: bool,
    /// Skip the before/after samples.
    #[arg(long)]
    no_samples: bool,
}

/// `asset:NAME` -> the fetched file.
fn resolve(path: &str, key: &str) -> Result<String> {
    let p = idlora_assets::resolve(path, &paths::cache_dir()).with_context(|| format!("config `{key}`"))?;
    Ok(p.display().to_string())
}

struct Progress {
    bar: ProgressBar,
    cluster: ProgressBar,
}

impl Progress {
    /// A line above the bar, or on stderr when the bar is hidden (output not a terminal).
    fn line(&self, text: &str) {
        if self.bar.is_hidden() { eprintln!("{text}") } else { self.bar.println(text) }
    }
}

impl Observer for Progress {
    fn message(&self, text: &str) {
        self.line(text);
    }
    fn cluster_progress(&self, done: usize, total: usize) {
        self.cluster.set_length(total as u64);
        self.cluster.set_position(done as u64);
        if done == total {
            self.cluster.finish_and_clear();
        }
    }
    fn start(&self, plan: &RunPlan) {
        self.bar.set_length(plan.total_steps as u64);
        self.bar.set_position(plan.start_step as u64);
        self.bar.reset_eta();
        let share = 100.0 * plan.trainable_params as f64 / plan.base_params.max(1) as f64;
        self.line(&format!(
            "trainable parameters: {} ({share:.3}% of {}); from the model shape (`cargo xtask params`): {}",
            plan.trainable_params, plan.base_params, plan.expected_trainable_params
        ));
        self.line(&format!(
            "{} training / {} validation examples, {} steps of {} micro-batches",
            plan.train_examples, plan.val_examples, plan.total_steps, plan.grad_accum
        ));
    }
    fn step(&self, m: &StepMetrics) {
        self.bar.set_position(m.step as u64);
        let text = format!(
            "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.0} tok/s",
            m.loss, m.lr, m.grad_norm, m.tokens_per_s
        );
        if self.bar.is_hidden() {
            eprintln!("step {}/{}: {text}", m.step, m.total_steps);
        }
        self.bar.set_message(text);
    }
    fn eval(&self, step: usize, val_loss: f64) {
        self.line(&format!("step {step}: validation loss {val_loss:.4}"));
    }
    fn checkpoint(&self, step: usize, dir: &std::path::Path) {
        self.line(&format!("step {step}: checkpoint {}", dir.display()));
    }
}

fn samples(model: &CausalLm, tokenizer: &Tokenizer, cfg: &TrainConfig) -> Result<Vec<String>> {
    let template = cfg.data.template;
    let inference = burn::module::Module::valid(model);
    let mut out = Vec::new();
    for p in &cfg.sample.prompts {
        let record =
            idlora_data::Record { instruction: p.clone(), input: String::new(), output: String::new() };
        let text = match template {
            TemplateKind::Chat => tokenizer.apply_chat_template(&[ChatMessage::new("user", p)], true)?,
            TemplateKind::Alpaca => idlora_train::template::prompt_text(&record, template, tokenizer)?,
        };
        let ids = tokenizer.encode(&text)?;
        let sampling =
            SamplingConfig { max_new_tokens: cfg.sample.max_new_tokens, ..SamplingConfig::default() };
        let g = generate(&inference, tokenizer, &[ids], &sampling, &mut |_, _| {})?;
        out.push(g.into_iter().next().map(|g| g.text).unwrap_or_default());
    }
    Ok(out)
}

/// Loads the base again, applies the saved adapter, and returns the largest logit difference from
/// the trained model on the first sample prompt (or a fixed sentence).
fn reload_check(
    trained: &CausalLm,
    model_path: &std::path::Path,
    adapter: &std::path::Path,
    tokenizer: &Tokenizer,
    cfg: &TrainConfig,
) -> Result<f64> {
    let inference = burn::module::Module::valid(trained);
    let device = inference.device();
    let (fresh, _) = load(model_path, &device)?.load_adapters(adapter)?;
    let text = cfg.sample.prompts.first().map_or("The capital of France is", String::as_str);
    let ids = tokenizer.encode(text)?;
    let input = idlora_models::ForwardInput::single(&ids);
    let host = |m: &CausalLm| -> Result<Vec<f32>> {
        m.forward(&input, None)?.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let (a, b) = (host(&inference)?, host(&fresh)?);
    Ok(a.iter().zip(&b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max))
}

/// Runs `cargo xtask train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let (text, source) = match &args.config {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CONFIG.to_string(), "configs/train/smollm2-demo.toml (built in)".to_string()),
    };
    let mut cfg = TrainConfig::from_toml(&text, &source, &args.set)?;
    if cfg.train.output_dir.contains("{time}") {
        if args.resume {
            bail!(
                "config `train.output_dir` is `{}`: name the run to resume with --set train.output_dir=runs/train/...",
                cfg.train.output_dir
            );
        }
        cfg.train.output_dir = cfg.train.output_dir.replace("{time}", &paths::timestamp());
    }
    if cfg.train.output_dir.starts_with("runs/") {
        cfg.train.output_dir = paths::repo_root().join(&cfg.train.output_dir).display().to_string();
    }
    cfg.model.path = resolve(&cfg.model.path, "model.path")?;
    for (i, s) in cfg.data.sources.iter_mut().enumerate() {
        s.path = resolve(&s.path, &format!("data.sources[{i}].path"))?;
    }
    cfg.check_files()?;
    let devices = idlora_train::devices::pick_devices(&cfg)?;
    eprintln!("device: {}", devices.main_description);
    for (i, d) in devices.replica_descriptions.iter().enumerate() {
        eprintln!("data-parallel replica {}: {d}", i + 1);
    }
    let (device, replicas) = (devices.main, devices.replicas);
    let t = Instant::now();
    let model_path = PathBuf::from(&cfg.model.path);
    let model = idlora_models::load::load_as(&model_path, &device, cfg.train.precision)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let tokenizer = load_tokenizer(&model_path, &model.config.eos_token_ids)?;
    eprintln!("loaded {} in {:.1} s", model_path.display(), t.elapsed().as_secs_f64());
    // What the longest micro-batch will need, before anything is spent on it.
    if let Ok(p) = PlanSettings::for_run(&cfg, Backend::of(&device)).and_then(|s| plan(&model.config, &s)) {
        eprintln!(
            "{} base, gradient checkpointing {}; predicted peak {:.2} GiB per device at {} x {} tokens \
             (`cargo xtask plan` for the terms)",
            cfg.train.precision,
            cfg.train.gradient_checkpointing,
            p.total() as f64 / crate::plan::GIB,
            cfg.train.micro_batch,
            cfg.data.max_length
        );
    }

    let show_samples = !args.no_samples && !cfg.sample.prompts.is_empty() && !args.resume;
    let before = if show_samples { samples(&model, &tokenizer, &cfg)? } else { Vec::new() };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!(
                "\nCtrl-C: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)"
            );
        })
        .context("installing the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} step {pos}/{len} ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cluster = ProgressBar::new(1);
    cluster.set_style(
        ProgressStyle::with_template("clustering [{elapsed_precise}] {bar:30} {pos}/{len} matrices")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = Progress { bar, cluster };
    let opts = TrainOptions { resume: args.resume, stop: Some(stop), halt_after: None, replicas };
    let run = train(&cfg, model, &tokenizer, &opts, &progress)?;
    progress.bar.finish_and_clear();

    let dir = run.run_dir.display();
    match run.outcome {
        Outcome::Finished => println!("finished {} steps in {dir}", run.steps),
        Outcome::Stopped | Outcome::Halted => {
            println!("stopped at step {} in {dir}; continue with:", run.steps);
            let config =
                args.config.as_ref().map(|p| format!(" --config {}", p.display())).unwrap_or_default();
            let sets: String = args.set.iter().map(|s| format!(" --set '{s}'")).collect();
            println!("  cargo xtask train{config}{sets} --set train.output_dir={dir} --resume");
            return Ok(());
        }
    }
    if let (Some(b), Some(a)) = (run.val_loss_before, run.val_loss_after) {
        println!("validation loss: {b:.4} before, {a:.4} after ({:+.1}%)", 100.0 * (a - b) / b);
    }
    if let (Some(f), Some(l)) = (run.losses.first(), run.losses.last()) {
        println!("training loss: {:.4} at step {}, {:.4} at step {}", f.1, f.0, l.1, l.0);
    }
    if let Some(a) = &run.adapter_dir {
        let diff = reload_check(&run.model, &model_path, a, &tokenizer, &cfg)?;
        println!(
            "adapter reloaded onto a fresh base: max |logit difference| {diff:.2e} against the trained model"
        );
    }
    println!("outputs:");
    if let Some(a) = &run.adapter_dir {
        println!("  adapter        {}", a.display());
    }
    if let Some(m) = &run.model_dir {
        println!("  model          {} (Hugging Face folder: `cargo xtask eval --model` it)", m.display());
    }
    println!("  metrics        {dir}/metrics.jsonl");
    println!("  loss curve     {dir}/loss.svg");
    println!("  summary        {dir}/summary.json");
    println!("  checkpoints    {dir}/checkpoints");
    println!("  config         {dir}/config.toml");
    if show_samples {
        let after = samples(&run.model, &tokenizer, &cfg)?;
        for ((p, b), a) in cfg.sample.prompts.iter().zip(&before).zip(&after) {
            println!(
                "\nprompt: {p}\n  before: {}\n  after:  {}",
                b.trim().replace('\n', "\n          "),
                a.trim().replace('\n', "\n          ")
            );
        }
    }
    Ok(())
}
