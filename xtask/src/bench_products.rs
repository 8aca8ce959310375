//! `cargo xtask bench products`: `idlora_kernels::product::matmul` against burn's own
//! `Tensor::matmul` on the CPU backend, side by side, at the shapes a prompt, a training step
//! and a decoding step multiply (SmolLM2-135M's projections and head at 128 tokens, LLaMA-3-8B's
//! at 512, one token). With `--precision bf16` (or f16) the weight is stored in that type and
//! burn's side is the composition `x.cast(h).matmul(w).cast(f32)` that `product::matmul`
//! computes; `--backward` times forward and backward under autodiff (the input's gradient).

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
    /// The weight's storage type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    precision: idlora_models::Precision,
    /// Time forward + backward under autodiff (the gradient of the input; the weight is frozen).
    #[arg(long)]
    backward: bool,
}

/// `(name, m, k, n)`: `[m, k] x [k, n]`. A head's weight is read as the transpose of a
/// `[n, k]` embedding, as a tied head is.
const SHAPES: [(&str, usize, usize, usize); 12] = [
    ("SmolLM2 q/o proj, 128 tokens", 128, 576, 576),
    ("SmolLM2 k/v proj, 128 tokens", 128, 576, 192),
    ("SmolLM2 gate/up, 128 tokens", 128, 576, 1536),
    ("SmolLM2 down, 128 tokens", 128, 1536, 576),
    ("SmolLM2 head, 128 tokens", 128, 576, 49152),
    ("SmolLM2 gate/up, 1024 tokens", 1024, 576, 1536),
    ("SmolLM2 head, 1024 tokens", 1024, 576, 49152),
    ("LLaMA-3-8B 4096 -> 4096, 512 tokens", 512, 4096, 4096),
    ("LLaMA-3-8B 4096 -> 14336, 512 tokens", 512, 4096, 14336),
    ("ID-LoRA B (r = 128, p = 4), 512 tokens", 2048, 128, 3584),
    ("SmolLM2 head, 1 token", 1, 576, 49152),
    ("LLaMA-3-8B 4096 -> 14336, 1 token", 1, 4096, 14336),
];

/// Runs the benchmark.
pub fn run(args: ProductArgs) -> Result<()> {
    use burn::tensor::{Device, Distribution, FloatDType, Tensor};
    use idlora_kernels::product;

    let device = if args.backward { Device::flex().autodiff() } else { Device::flex() };
    device.seed(0);
    let rounds = args.rounds.max(1);
    let dtype = args.precision.dtype();
    let half = args.precision != idlora_models::Precision::F32;
    let burn_side = if half {
        format!("burn `cast`, `matmul`, `cast` ({})", args.precision)
    } else {
        "burn `matmul`".into()
    };
    let mut md = format!(
        "CPU backend (burn flex), {} threads, {rounds} rounds, weight in {}, {}; each round times both \
         sides back to back (alternating which goes first), repeating each product to about 2 GFLOP \
         per timing. Speed-up: median over rounds of burn's time / ours.\n\n\
         | product | m x k x n | {burn_side} ms | `product::matmul` ms | speed-up |\n|---|---|---|---|---|\n",
        rayon::current_num_threads(),
        args.precision,
        if args.backward { "forward + backward (input gradient)" } else { "forward" },
    );
    print!("{md}");
    for (name, m, k, n) in SHAPES {
        let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let w = if name.contains("head") {
            Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device).cast(dtype).transpose()
        } else {
            Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device).cast(dtype)
        };
        let burn = |x: Tensor<2>| {
            if half { x.cast(dtype).matmul(w.clone()).cast(FloatDType::F32) } else { x.matmul(w.clone()) }
        };
        let run = |ours: bool| {
            let x = if args.backward { x.clone().require_grad() } else { x.clone() };
            let y = if ours { product::matmul(x.clone(), w.clone()) } else { burn(x.clone()) };
            if args.backward {
                let grads = y.clone().sum().backward();
                std::hint::black_box(x.grad(&grads));
            }
            y
        };
        // Same result first: the bench compares two ways of computing one thing. With a half
        // weight ours is checked against the f32 product of the rounded operands (one rounding
        // step of the type, relative to the output's scale): burn-flex's f16 product is gemm's
        // f16 kernel, which drifts further than that at k = 4096.
        let (a, b) = (run(false), run(true));
        let (reference, tol) = if half {
            let exact = x.clone().cast(dtype).cast(FloatDType::F32).matmul(w.clone().cast(FloatDType::F32));
            let scale: f32 = exact.clone().abs().max().into_scalar();
            (exact, 1e-2 * scale.max(1.0))
        } else {
            (a, 1e-3)
        };
        let diff: f32 = (reference - b).abs().max().into_scalar();
        anyhow::ensure!(diff <= tol, "{name}: the two products differ by {diff}");
        let reps = (2e9 / (2 * m * k * n) as f64).ceil() as usize;
        let time = |ours: bool| {
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(run(ours));
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
