//! `cargo xtask bench cluster`: our constrained k-means against the Python `k-means-constrained`
//! package, side by side on identical matrices, with both inertias computed by one exact formula.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use idlora_cluster::kmeans::labels_inertia;
use idlora_cluster::{KMeansConfig, RowMatrix, constrained_kmeans};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::paths;

/// Which cases to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Small shapes only (minutes).
    Quick,
    /// Every shape at n_init 1; n_init 10 up to 4096 x 4096 and, on the larger shapes, for
    /// Gaussian rows at size_min 128 (about 40 minutes for Python).
    Standard,
    /// Every case of the issue, n_init 1 and 10 on all shapes (hours for Python).
    Full,
}

/// Arguments of `cargo xtask bench cluster`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which cases.
    #[arg(long, value_enum, default_value = "standard")]
    suite: Suite,
    /// Skip the Python side (ours only).
    #[arg(long)]
    no_python: bool,
    /// Also time the 224 matrices of a LLaMA-3-8B-shaped model (random weights, k 4, r 128, n_init 10).
    #[arg(long)]
    llama8b: bool,
    /// Also run the real SmolLM2-135M matrices of these layers (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,15,29")]
    smollm2_layers: Vec<usize>,
    /// Skip the SmolLM2 matrices.
    #[arg(long)]
    no_smollm2: bool,
    /// Markdown report to write (besides printing).
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Case {
    name: String,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    size_min: usize,
    n_init: usize,
}

/// Matrices at LLM weight scale: N(0, 0.02^2) entries, or a rank-16 product plus noise.
fn synthetic(rows: usize, cols: usize, low_rank: bool, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || {
        // Box-Muller; one value per call is plenty here.
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    if !low_rank {
        return (0..rows * cols).map(|_| 0.02 * normal()).collect();
    }
    let r = 16;
    let u: Vec<f32> = (0..rows * r).map(|_| normal()).collect();
    let v: Vec<f32> = (0..r * cols).map(|_| normal()).collect();
    let mut out = vec![0.0f32; rows * cols];
    for i in 0..rows {
        for t in 0..r {
            let a = u[i * r + t] * 0.02 / (r as f32).sqrt();
            for (o, &b) in out[i * cols..(i + 1) * cols].iter_mut().zip(&v[t * cols..(t + 1) * cols]) {
                *o += a * b;
            }
        }
    }
    for o in &mut out {
        *o += 0.005 * normal();
    }
    out
}

fn cases(suite: Suite) -> Vec<(usize, usize, bool, usize, usize)> {
    let shapes: &[(usize, usize)] = match suite {
        Suite::Quick => &[(1024, 4096)],
        _ => &[(1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336)],
    };
    let mut out = Vec::new();
    for &(rows, cols) in shapes {
        for low_rank in [false, true] {
            for size_min in [128, 256] {
                for n_init in [1, 10] {
                    let big = rows * cols > 4096 * 4096;
                    let keep = match suite {
                        Suite::Quick | Suite::Full => true,
                        Suite::Standard => n_init == 1 || !big || (!low_rank && size_min == 128),
                    };
                    if keep {
                        out.push((rows, cols, low_rank, size_min, n_init));
                    }
                }
            }
        }
    }
    out
}

/// Writes a 2-D `f32` array in NumPy's `.npy` format (version 1.0).
fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A venv with `k-means-constrained`, created on first use. `None` (with a message) if pip is missing.
fn python_env() -> Option<PathBuf> {
    paths::python_venv("venv-kmc", &["k-means-constrained==0.9.1"], "import k_means_constrained")
}

struct PythonRun {
    seconds: f64,
    labels: Vec<u32>,
}

fn run_python(python: &Path, dir: &Path, case: &Case, seed: u64) -> Result<PythonRun> {
    let npy = dir.join("matrix.npy");
    write_npy(&npy, &case.data, case.rows, case.cols)?;
    let script = paths::repo_root().join("benches/python/kmc_bench.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(&npy)
        .args(["4", &case.size_min.to_string(), &case.n_init.to_string(), &seed.to_string()])
        .arg(rayon::current_num_threads().to_string())
        .output()
        .context("running the Python benchmark")?;
    if !out.status.success() {
        bail!("k-means-constrained failed on {}: {}", case.name, String::from_utf8_lossy(&out.stderr));
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        seconds: f64,
        labels: Vec<u32>,
    }
    let reply: Reply = serde_json::from_slice(&out.stdout).context("reading the Python benchmark's JSON")?;
    Ok(PythonRun { seconds: reply.seconds, labels: reply.labels })
}

fn sizes_ok(labels: &[u32], k: usize, size_min: usize) -> bool {
    let mut sizes = vec![0usize; k];
    for &l in labels {
        if l as usize >= k {
            return false;
        }
        sizes[l as usize] += 1;
    }
    sizes.iter().all(|&s| s >= size_min)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let seed = 0;
    let k = 4;
    let python = if args.no_python { None } else { python_env() };
    let dir = tempfile_dir()?;
    let mut todo: Vec<Case> = Vec::new();
    for (i, (rows, cols, low_rank, size_min, n_init)) in cases(args.suite).into_iter().enumerate() {
        let kind = if low_rank { "low-rank+noise" } else { "gaussian" };
        todo.push(Case {
            name: format!("{rows}x{cols} {kind}"),
            rows,
            cols,
            data: synthetic(rows, cols, low_rank, 1000 + i as u64 / 4),
            size_min,
            n_init,
        });
    }
    if !args.no_smollm2 {
        let gguf = idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &paths::cache_dir())?;
        let w = idlora_weights::Weights::open(&gguf)?;
        for &layer in &args.smollm2_layers {
            for module in ["self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj"] {
                let name = format!("model.layers.{layer}.{module}.weight");
                let (rows, cols, data) = w.read_matrix(&name)?;
                todo.push(Case {
                    name: format!("SmolLM2 L{layer} {}", module.rsplit('.').next().unwrap_or(module)),
                    rows,
                    cols,
                    data,
                    size_min: 32,
                    n_init: 10,
                });
            }
        }
    }
    let mut table = String::new();
    writeln!(
        table,
        "| matrix | size_min | n_init | ours (s) | python (s) | speed-up | inertia ours | inertia python | ours/python - 1 | sizes ok (ours/python) |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|---|")?;
    println!("{}", table.trim_end());
    let mut ratios = Vec::new();
    for case in &todo {
        let x = RowMatrix::new(&case.data, case.rows, case.cols)?;
        let mut cfg = KMeansConfig::new(k, case.size_min);
        cfg.n_init = case.n_init;
        cfg.seed = seed;
        let t = Instant::now();
        let ours = constrained_kmeans(x, &cfg)?;
        let ours_s = t.elapsed().as_secs_f64();
        let ours_inertia = labels_inertia(x, &ours.labels, k);
        let ours_ok = sizes_ok(&ours.labels, k, case.size_min);
        eprintln!("  {}: {} iterations in the best restart", case.name, ours.n_iter);
        let py = match &python {
            Some(p) => Some(run_python(p, &dir, case, seed)?),
            None => None,
        };
        let row = match &py {
            Some(py) => {
                let py_inertia = labels_inertia(x, &py.labels, k);
                let speed = py.seconds / ours_s;
                ratios.push(speed);
                format!(
                    "| {} | {} | {} | {ours_s:.3} | {:.2} | {speed:.0}x | {ours_inertia:.6e} | {py_inertia:.6e} | {:+.4}% | {}/{} |",
                    case.name,
                    case.size_min,
                    case.n_init,
                    py.seconds,
                    100.0 * (ours_inertia / py_inertia - 1.0),
                    yes(ours_ok),
                    yes(sizes_ok(&py.labels, k, case.size_min)),
                )
            }
            None => format!(
                "| {} | {} | {} | {ours_s:.3} | - | - | {ours_inertia:.6e} | - | - | {}/- |",
                case.name,
                case.size_min,
                case.n_init,
                yes(ours_ok)
            ),
        };
        println!("{row}");
        writeln!(table, "{row}")?;
    }
    if !ratios.is_empty() {
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let line =
            format!("\nSpeed-up over k-means-constrained: geometric mean {geo:.0}x, lowest {min:.0}x.");
        println!("{line}");
        writeln!(table, "{line}")?;
    }
    if args.llama8b {
        let line = llama8b()?;
        println!("\n{line}");
        writeln!(table, "\n{line}")?;
    }
    if let Some(out) = &args.out {
        idlora_data::write_atomic(out, table.as_bytes())?;
        println!("\nwritten to {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("idlora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Times PMRC on every adapted matrix of a LLaMA-3-8B-shaped model: 32 layers of q, k, v, o
/// (4096 -> 4096/1024/1024/4096), gate, up (4096 -> 14336) and down (14336 -> 4096), random weights.
fn llama8b() -> Result<String> {
    let shapes =
        [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)];
    let cfg = idlora_cluster::PmrcConfig { k: 4, rank: 128, n_init: 10, ..Default::default() };
    let start = Instant::now();
    let mut per_shape = vec![0.0f64; shapes.len()];
    for layer in 0..32 {
        for (j, &(rows, cols)) in shapes.iter().enumerate() {
            let data = synthetic(rows, cols, false, 50_000 + (layer * 7 + j) as u64);
            let t = Instant::now();
            idlora_cluster::select_bases(RowMatrix::new(&data, rows, cols)?, &cfg)?;
            per_shape[j] += t.elapsed().as_secs_f64();
        }
        eprintln!("layer {layer}: {:.0} s so far", start.elapsed().as_secs_f64());
    }
    let total: f64 = per_shape.iter().sum();
    Ok(format!(
        "LLaMA-3-8B-shaped model, 224 matrices, k = 4, r = 128, n_init = 10: {:.1} min of clustering \
         (q {:.0} s, k {:.0} s, v {:.0} s, o {:.0} s, gate {:.0} s, up {:.0} s, down {:.0} s; generating the random weights excluded).",
        total / 60.0,
        per_shape[0],
        per_shape[1],
        per_shape[2],
        per_shape[3],
        per_shape[4],
        per_shape[5],
        per_shape[6]
    ))
}
