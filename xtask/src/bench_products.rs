//! `cargo xtask bench products`: `idlora_kernels::product::matmul` against burn's own
//! `Tensor::matmul` on the CPU backend, side by side, at the shapes a prompt and a training
//! step multiply (SmolLM2-135M's projections and head at 128 tokens, LLaMA-3-8B's at 512).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::bench_lm::median;

/// Arguments of `cargo xtask bench products`.
#[derive(Args)]
pub struct ProductArgs {
    /// Rounds; each times both sides back to back, in alternating order.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `(name, m, k, n)`: `[m, k] x [k, n]`.
const SHAPES: [(&str, usize, usize, usize); 9] = [
    ("SmolLM2 q/o proj, 128 tokens", 128, 576, 576),
    ("SmolLM2 k/v proj, 128 tokens", 128, 576, 192),
    ("SmolLM2 gate/up, 128 tokens", 128, 576, 1536),
    ("SmolLM2 down, 128 tokens", 128, 1536, 576),
    ("SmolLM2 head, 128 tokens", 128, 576, 49152),
    ("SmolLM2 gate/up, 1024 tokens", 1024, 576, 1536),
    ("LLaMA-3-8B 4096 -> 4096, 512 tokens", 512, 4096, 4096),
    ("LLaMA-3-8B 4096 -> 14336, 512 tokens", 512, 4096, 14336),
    ("ID-LoRA B (r = 128, p = 4), 512 tokens", 2048, 128, 3584),
];

/// Runs the benchmark.
pub fn run(args: ProductArgs) -> Result<()> {
    use burn::tensor::{Device, Distribution, Tensor};
    use idlora_kernels::product;

    let device = Device::flex();
    device.seed(0);
    let rounds = args.rounds.max(1);
    let mut md = format!(
        "CPU backend (burn flex), {} threads, {rounds} rounds; each round times both sides back to back \
         (alternating which goes first), repeating each product to about 2 GFLOP per timing. \
         Speed-up: median over rounds of burn's time / ours.\n\n\
         | product | m x k x n | burn `matmul` ms | `product::matmul` ms | speed-up |\n|---|---|---|---|---|\n",
        rayon::current_num_threads()
    );
    print!("{md}");
    for (name, m, k, n) in SHAPES {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        // Same result first: the bench compares two ways of computing one thing.
        let (a, b) = (x.clone().matmul(w.clone()), product::matmul(x.clone(), w.clone()));
        let diff: f32 = (a - b).abs().max().into_scalar();
        anyhow::ensure!(diff <= 1e-3, "{name}: the two products differ by {diff}");
        let reps = (2e9 / (2 * m * k * n) as f64).ceil() as usize;
        let time = |ours: bool| {
            let t = Instant::now();
            for _ in 0..reps {
                if ours {
                    std::hint::black_box(product::matmul(x.clone(), w.clone()));
                } else {
                    std::hint::black_box(x.clone().matmul(w.clone()));
                }
            }
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        // Warm-up: first-touch allocations and gemm's thread pool.
        time(false);
        time(true);
        let (mut burn_ms, mut ours_ms, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (tb, to) = if round % 2 == 0 {
                let tb = time(false);
                (tb, time(true))
            } else {
                let to = time(true);
                (time(false), to)
            };
            burn_ms.push(tb);
            ours_ms.push(to);
            ratio.push(tb / to);
        }
        let line = format!(
            "| {name} | {m} x {k} x {n} | {:.3} | {:.3} | {:.2}x |\n",
            median(burn_ms),
            median(ours_ms),
            median(ratio)
        );
        print!("{line}");
        md.push_str(&line);
    }
    if let Some(out) = args.out {
        std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
