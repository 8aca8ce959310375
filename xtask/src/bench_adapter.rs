//! `cargo xtask bench adapter-table`: the overhead table from criterion's saved estimates of
//! `cargo bench -p idlora-benches --bench adapter` (median time per iteration, each method over
//! the bare base layer measured in the same group, i.e. the same run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::bench_lm::median;
use crate::paths;

/// Arguments of `cargo xtask bench adapter-table`.
#[derive(Args)]
pub struct TableArgs {
    /// criterion's output folder [default: target/criterion].
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

const METHODS: [&str; 6] = ["base", "lora", "dora", "hydralora", "moelora", "idlora"];

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Median nanoseconds per iteration by (group, method).
fn collect(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "benchmark.json")
                && p.parent().and_then(Path::file_name).is_some_and(|n| n == "new")
            {
                let b = read_json(&p)?;
                let group = b["group_id"].as_str().unwrap_or_default();
                if !group.starts_with("adapter/") {
                    continue;
                }
                let method = b["value_str"].as_str().or(b["function_id"].as_str()).unwrap_or_default();
                let est = read_json(&p.with_file_name("estimates.json"))?;
                let median = est["median"]["point_estimate"]
                    .as_f64()
                    .with_context(|| format!("{}: no median", p.display()))?;
                out.entry(group.to_string()).or_default().insert(method.to_string(), median);
            }
        }
    }
    Ok(out)
}

/// Runs the command.
pub fn run(args: TableArgs) -> Result<()> {
    let dir = args.criterion_dir.unwrap_or_else(|| paths::repo_root().join("target/criterion"));
    let groups = collect(&dir)?;
    if groups.is_empty() {
        bail!(
            "no adapter benchmarks in {}: run `cargo bench -p idlora-benches --bench adapter` first",
            dir.display()
        );
    }
    let mut md = String::new();
    md.push_str("| shape | r | pass | base ms | LoRA | DoRA | HydraLoRA | MoELoRA | ID-LoRA | ID-LoRA time / LoRA time |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (group, times) in &groups {
        let parts: Vec<&str> = group.split('/').collect();
        let [_, shape, r, pass] = parts.as_slice() else { continue };
        let Some(&base) = times.get("base") else { continue };
        let overhead = |m: &str| times.get(m).map(|t| t / base - 1.0);
        let cells: Vec<String> = METHODS[1..]
            .iter()
            .map(|m| overhead(m).map_or("-".into(), |o| format!("{:+.1}%", 100.0 * o)))
            .collect();
        // Times, not overheads: a ratio of two overheads of a few percent is mostly noise.
        let ratio = match (times.get("idlora"), times.get("lora")) {
            (Some(i), Some(l)) if *l > 0.0 => format!("{:.3}", i / l),
            _ => "-".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} | {ratio} |\n",
            shape.replace('x', " -> "),
            r.trim_start_matches('r'),
            if *pass == "fwd" { "forward" } else { "forward + backward" },
            base / 1e6,
            cells.join(" | ")
        ));
    }
    print!("{md}");
    if let Some(out) = args.out {
        std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Arguments of `cargo xtask bench adapter`.
#[derive(Args)]
pub struct InterleavedArgs {
    /// Rounds; every round runs each method once per case, right after the base layer, and the
    /// table reports the median of the per-round ratios.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Only 4096 x 4096 at r = 8 and 128.
    #[arg(long)]
    quick: bool,
    /// Only these `d_in x d_out` shapes (e.g. `4096x14336`) [default: 4096x4096,4096x14336].
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Only these ranks [default: 8,128].
    #[arg(long, value_delimiter = ',')]
    ranks: Vec<usize>,
    /// Forward passes only (inference).
    #[arg(long)]
    forward_only: bool,
    /// Tokens per batch.
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Runs per timing, back to back; a timing is their minimum.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Per-method cost of one adapted layer at LLaMA-3-8B shapes on the CPU backend, interleaved.
pub fn run_interleaved(args: InterleavedArgs) -> Result<()> {
    use std::time::Instant;

    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution, Tensor};
    use idlora_adapter::{AdaptedLinear, MethodConfig, MethodKind};
    use idlora_cluster::select::select_random;

    // Full fine-tuning with a frozen base is the bare base layer: the reference column.
    let kinds = MethodKind::ALL;
    let mut shapes = args
        .shapes
        .iter()
        .map(|s| {
            let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|&v| v > 0);
            match s.split_once('x').map(|(a, b)| (parse(a), parse(b))) {
                Some((Some(d_in), Some(d_out))) => Ok((d_in, d_out)),
                _ => bail!("--shapes: `{s}` is not D_INxD_OUT (e.g. 4096x14336)"),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if shapes.is_empty() {
        shapes = if args.quick { vec![(4096, 4096)] } else { vec![(4096, 4096), (4096, 14336)] };
    }
    let ranks = if args.ranks.is_empty() { vec![8, 128] } else { args.ranks.clone() };
    let passes: &[bool] = if args.forward_only { &[false] } else { &[false, true] };
    let mut md = format!(
        "{} tokens, CPU backend (burn flex), {} rounds; a timing is the fastest of {} back-to-back runs; \
         overhead = median over rounds of method / base - 1, the base timed right before each method; ±: half the interquartile range of the rounds' ratios \
         (percentage points).\n\n\
         The last column: median over rounds of ID-LoRA's time / LoRA's, timed back to back, ± half \
         its interquartile range (rounds where ID-LoRA was not slower / rounds).\n\n\
         | shape | r | pass | base ms | LoRA | DoRA | HydraLoRA | MoELoRA | ID-LoRA | ID-LoRA time / LoRA time |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        args.tokens,
        args.rounds,
        args.reps.max(1)
    );
    for &(d_in, d_out) in &shapes {
        for &r in &ranks {
            for &backward in passes {
                let device = if backward { Device::flex().autodiff() } else { Device::flex() };
                device.seed(0);
                let base = LinearConfig::new(d_in, d_out).with_bias(false).init(&device).no_grad();
                let layers = kinds
                    .iter()
                    .map(|&kind| {
                        let cfg = MethodConfig::new(kind, r).with_dropout(0.0);
                        let sets = (kind == MethodKind::IdLora)
                            .then(|| -> Result<_> {
                                Ok(idlora_adapter::IndexSets::new(select_random(d_out, cfg.k, r, 0)?.sets)?)
                            })
                            .transpose()?;
                        let l = AdaptedLinear::new("bench", base.clone(), &cfg, sets.as_ref())?;
                        Ok(if backward { l } else { l.valid() })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let x = Tensor::<3>::random([1, args.tokens, d_in], Distribution::Normal(0.0, 1.0), &device);
                let once = |l: &AdaptedLinear| -> Result<f64> {
                    let t = Instant::now();
                    if backward {
                        let x = x.clone().require_grad();
                        let grads = l.forward(x.clone()).sum().backward();
                        std::hint::black_box(x.grad(&grads));
                    } else {
                        std::hint::black_box(l.forward(x.clone()));
                    }
                    device.sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
                    Ok(t.elapsed().as_secs_f64() * 1e3)
                };
                // The fastest of a few back-to-back runs: interference on a shared machine only
                // ever adds time, so the minimum is the least disturbed estimate of each side.
                let run = |l: &AdaptedLinear| -> Result<f64> {
                    (0..args.reps.max(1)).try_fold(f64::INFINITY, |best, _| Ok(best.min(once(l)?)))
                };
                // Paired: the base runs right before each method, and each method's overhead is
                // the median over rounds of its time over that base time. A drift of this shared
                // machine then hits both sides of a ratio, not one method's median.
                //
                // The target (ID-LoRA's overhead at most LoRA's) is tested head to head: every
                // round also times LoRA and ID-LoRA back to back, in alternating order, and the
                // last column is the median of ID-LoRA's time over LoRA's. (A ratio of the two
                // overheads divides one noisy small number by another: at +2% ± 5 it says nothing.)
                let position = |kind| kinds.iter().position(|&k| k == kind).unwrap_or(0);
                let (lora, idlora) = (position(MethodKind::Lora), position(MethodKind::IdLora));
                let mut base_times = Vec::new();
                let mut ratios = vec![Vec::new(); kinds.len()];
                let mut head_to_head = Vec::new();
                for round in 0..=args.rounds {
                    for (i, l) in layers.iter().enumerate().skip(1) {
                        let (tb, tm) = (run(&layers[0])?, run(l)?);
                        if round > 0 {
                            // Round 0 warms up.
                            base_times.push(tb);
                            ratios[i].push(tm / tb);
                        }
                    }
                    let (t_lora, t_id) = if round % 2 == 0 {
                        let t = run(&layers[lora])?;
                        (t, run(&layers[idlora])?)
                    } else {
                        let t = run(&layers[idlora])?;
                        (run(&layers[lora])?, t)
                    };
                    if round > 0 {
                        head_to_head.push(t_id / t_lora);
                    }
                }
                let base_ms = median(base_times);
                let cells: Vec<String> = ratios[1..]
                    .iter()
                    .map(|r| {
                        format!("{:+.1}% ±{:.1}", 100.0 * (median(r.clone()) - 1.0), 100.0 * half_iqr(r))
                    })
                    .collect();
                let faster = head_to_head.iter().filter(|&&q| q <= 1.0).count();
                let h2h = format!(
                    "{:.3} ±{:.3} ({faster}/{})",
                    median(head_to_head.clone()),
                    half_iqr(&head_to_head),
                    head_to_head.len()
                );
                let line = format!(
                    "| {d_in} -> {d_out} | {r} | {} | {base_ms:.1} | {} | {h2h} |\n",
                    if backward { "forward + backward" } else { "forward" },
                    cells.join(" | ")
                );
                print!("{line}");
                md.push_str(&line);
            }
        }
    }
    if let Some(out) = args.out {
        std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Half the interquartile range of `t`: how far apart the rounds are (0 when empty).
fn half_iqr(t: &[f64]) -> f64 {
    let mut t = t.to_vec();
    t.sort_by(f64::total_cmp);
    if t.is_empty() { 0.0 } else { (t[3 * t.len() / 4] - t[t.len() / 4]) / 2.0 }
}
