//! `cargo xtask params`: trainable parameters per method and rank from a `config.json` alone.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_models::{ModelConfig, layout::Target};
use serde_json::json;

use crate::paths;

/// Arguments of `cargo xtask params`.
#[derive(Args)]
pub struct ParamsArgs {
    /// Hugging Face `config.json` of the base model [default: configs/models/llama-3-8b.json].
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// Methods, comma-separated: full, lora, dora, hydralora, moelora, idlora.
    #[arg(long, default_value = "lora,dora,hydralora,moelora,idlora")]
    methods: String,
    /// Ranks, comma-separated.
    #[arg(long, default_value = "8,16,32,64,128")]
    ranks: String,
    /// Adapted projections: q,k,v,o,gate,up,down (or `all`).
    #[arg(long, default_value = "all")]
    targets: String,
    /// ID-LoRA clusters `k`.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// ID-LoRA rank-boosting parts `p` [default: k].
    #[arg(long)]
    p: Option<usize>,
    /// Heads / experts: one number for both, or `hydralora=3,moelora=4` (the paper's).
    #[arg(long, default_value = "hydralora=3,moelora=4")]
    experts: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_experts(s: &str) -> Result<(usize, usize)> {
    if let Ok(n) = s.trim().parse::<usize>() {
        return Ok((n, n));
    }
    let (mut hydra, mut moe) = (3, 4);
    for item in s.split(',') {
        let (k, v) = item.split_once('=').with_context(|| format!("--experts: `{item}` is not METHOD=N"))?;
        let n: usize = v.trim().parse().with_context(|| format!("--experts: `{v}` is not a number"))?;
        match k.trim().parse::<MethodKind>()? {
            MethodKind::HydraLora => hydra = n,
            MethodKind::MoeLora => moe = n,
            other => bail!("--experts: {other} has no experts (only hydralora and moelora do)"),
        }
    }
    Ok((hydra, moe))
}

/// Runs the command.
pub fn run(args: ParamsArgs) -> Result<()> {
    let path = args.model_config.unwrap_or_else(|| paths::repo_root().join("configs/models/llama-3-8b.json"));
    let shape = ModelConfig::from_hf_file(&path)?;
    let methods =
        args.methods.split(',').map(|m| m.trim().parse::<MethodKind>()).collect::<Result<Vec<_>, _>>()?;
    let ranks = args
        .ranks
        .split(',')
        .map(|r| r.trim().parse::<usize>().with_context(|| format!("--ranks: `{r}` is not a number")))
        .collect::<Result<Vec<_>>>()?;
    let targets = Target::parse_list(&args.targets)?;
    let (hydra, moe) = parse_experts(&args.experts)?;
    let base = shape.base_params();
    let mut rows = Vec::new();
    for &r in &ranks {
        let mut cells = Vec::new();
        for &kind in &methods {
            let mut c = MethodConfig::new(kind, r);
            c.k = args.k;
            c.p = args.p;
            c.experts = if kind == MethodKind::HydraLora { hydra } else { moe };
            let n = shape.trainable_params(&c, &targets)?;
            cells.push((kind, n));
        }
        rows.push((r, cells));
    }
    if args.json {
        let out = json!({
            "model_config": path,
            "base_params": base,
            "targets": targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
            "k": args.k, "p": args.p.unwrap_or(args.k), "hydralora_heads": hydra, "moelora_experts": moe,
            "rows": rows.iter().map(|(r, cells)| json!({
                "r": r,
                "params": cells.iter().map(|(k, n)| (k.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "percent_of_base": cells.iter().map(|(k, n)| (k.name().to_string(), json!(100.0 * *n as f64 / base as f64))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} base parameters; targets {}; k = {}, p = {}, HydraLoRA N = {hydra}, MoELoRA N = {moe}",
        path.display(),
        group(base),
        targets.iter().map(|t| t.module_name()).collect::<Vec<_>>().join(","),
        args.k,
        args.p.unwrap_or(args.k)
    );
    let header: Vec<String> = methods.iter().map(|m| m.display_name().to_string()).collect();
    println!("| r | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(methods.len()));
    for (r, cells) in rows {
        let cells: Vec<String> = cells
            .iter()
            .map(|(_, n)| format!("{} ({:.2}%)", group(*n), 100.0 * *n as f64 / base as f64))
            .collect();
        println!("| {r} | {} |", cells.join(" | "));
    }
    Ok(())
}

/// 1234567 -> "1,234,567", the paper's style.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits_and_parses_experts() {
        assert_eq!(group(7_733_248), "7,733,248");
        assert_eq!(group(999), "999");
        assert_eq!(parse_experts("hydralora=2,moelora=8").ok(), Some((2, 8)));
        assert_eq!(parse_experts("5").ok(), Some((5, 5)));
        assert!(parse_experts("lora=2").is_err());
    }
}
