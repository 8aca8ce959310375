//! `cargo xtask gpu-check`: the one prepared run for a lent GPU machine (scripts/gpu-check.sh
//! carries the binary there). In one process, on a SmolLM2-135M-shaped model with random weights:
//! which device answered; logits on it against the CPU's; training tokens/s (batch 8 x 512) for
//! LoRA r = 8 and ID-LoRA r = 128 (k = 4) with an f32 and a bf16 base;
//! forward + backward of an 8B-shaped stack (LLaMA-3-8B layers, random weights, bf16 base). Results
//! go to `gpu-check.json` and `gpu-check.md`.
//!
//! `--tiny` runs the same steps on small random models (no download, seconds on a CPU): the dry
//! run that CI does with `--device cpu`, so the script is known to work before a GPU is lent.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use burn::tensor::{Device, Tensor};
use clap::Args;
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::PmrcConfig;
use idlora_models::adapters::BasesSource;
use idlora_models::layout::Target;
use idlora_models::{CausalLm, DeviceChoice, ForwardInput, ModelConfig, Precision, pick};
use idlora_train::config::GradientCheckpointing;
use serde::Serialize;

use crate::bench_train::{timed_steps, token_ids};

/// Arguments of `cargo xtask gpu-check`.
#[derive(Args)]
pub struct GpuCheckArgs {
    /// The device to check: cuda, vulkan, wgpu (or cpu, for the dry run).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Small random models instead of SmolLM2 and LLaMA-3-8B layers (the CPU dry run).
    #[arg(long)]
    tiny: bool,
    /// Timed training steps per configuration (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Folder for gpu-check.json and gpu-check.md.
    #[arg(long, default_value = "runs/gpu-check")]
    out: PathBuf,
}

/// Everything one run found.
#[derive(Serialize)]
pub struct Report {
    /// The device, in words.
    pub device: String,
    /// Whether the small stand-in models were used.
    pub tiny: bool,
    /// max |logits(device) - logits(CPU)| for an f32 and a bf16 base (against the CPU's f32).
    pub logits_max_abs_diff_f32: f32,
    /// The same with a bf16 base on the device.
    pub logits_max_abs_diff_bf16: f32,
    /// Training rows.
    pub training: Vec<TrainRow>,
    /// The 8B-shaped stack.
    pub stack: StackRow,
}

/// One training configuration.
#[derive(Serialize)]
pub struct TrainRow {
    /// `lora-8` or `idlora-128`.
    pub config: String,
    /// The base's precision, and gradient checkpointing where it is on.
    pub precision: String,
    /// Median step time.
    pub step_s: f64,
    /// Tokens per second (batch x sequence / step time).
    pub tokens_per_s: f64,
    /// Loss of the last step.
    pub loss: f64,
}

/// Forward + backward of the layer stack.
#[derive(Serialize)]
pub struct StackRow {
    /// Its shape, in words.
    pub shape: String,
    /// Median seconds of forward + backward.
    pub step_s: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

fn config(json: &str) -> Result<ModelConfig> {
    Ok(ModelConfig::from_hf_json(json, "gpu-check")?)
}

/// SmolLM2-135M's shape (its `config.json`), with random weights: a lent machine has no
/// registry and the 93 MB checkpoint is over what a call carries, and speed and memory do not
/// depend on the values. `benches/python/gpu_train_speed.py` builds the same model for PyTorch.
const SMOLLM2_SHAPE: &str = r#"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true}"#;

/// The model for the logits and training steps: SmolLM2-shaped, or a small one (`--tiny`).
fn small_model(tiny: bool, device: &Device, precision: Precision) -> Result<CausalLm> {
    let json = if tiny {
        r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "tie_word_embeddings": true}"#
    } else {
        SMOLLM2_SHAPE
    };
    let model = idlora_models::load::random_with_std(config(json)?, 1, 0.05, device)?;
    Ok(model.with_base_precision(precision)?)
}

fn host(t: Tensor<3>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow!("reading logits back: {e:?}"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn training(args: &GpuCheckArgs, device: &Device) -> Result<Vec<TrainRow>> {
    let (batch, seq) = if args.tiny { (2, 32) } else { (8, 512) };
    let mut rows = Vec::new();
    for (name, kind, r) in [("lora-8", MethodKind::Lora, 8), ("idlora-128", MethodKind::IdLora, 128)] {
        let variants = [
            (Precision::F32, GradientCheckpointing::Off),
            (Precision::Bf16, GradientCheckpointing::Off),
            (Precision::Bf16, GradientCheckpointing::Layers),
        ];
        for (precision, checkpointing) in variants {
            let base = if checkpointing.is_on() {
                format!("{precision} + layer checkpointing")
            } else {
                precision.to_string()
            };
            eprintln!("training {name}, {base} base ...");
            let model = small_model(args.tiny, &device.clone().autodiff(), precision)?;
            let mut method = MethodConfig::new(kind, if args.tiny { r.min(4) } else { r });
            method.k = if args.tiny { 2 } else { 4 };
            let targets = if kind == MethodKind::Lora {
                Target::ALL.to_vec()
            } else {
                vec![Target::Q, Target::O, Target::Gate, Target::Up, Target::Down]
            };
            let progress = |_: usize, _: usize| {};
            let bases = BasesSource::Cluster(PmrcConfig { n_init: 1, ..PmrcConfig::default() }, &progress);
            let model =
                model.apply_adapters(&method, &targets, (kind == MethodKind::IdLora).then_some(bases))?;
            let (step_s, loss) = timed_steps(model, batch, seq, args.steps, checkpointing)?;
            let tokens_per_s = (batch * seq) as f64 / step_s;
            rows.push(TrainRow { config: name.into(), precision: base, step_s, tokens_per_s, loss });
        }
    }
    Ok(rows)
}

/// Four LLaMA-3-8B decoder layers (a small vocabulary: the layers are what is measured), bf16
/// base, LoRA r = 8 on every projection so that the backward pass runs through all of them.
fn stack(args: &GpuCheckArgs, device: &Device) -> Result<StackRow> {
    let (json, shape, seq) = if args.tiny {
        (
            r#"{"model_type": "llama", "hidden_size": 128, "intermediate_size": 448, "num_hidden_layers": 2,
                "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512, "rope_theta": 500000.0}"#,
            "2 layers of 128 / 448 (tiny stand-in)",
            64,
        )
    } else {
        (
            r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 4,
                "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 4096, "rope_theta": 500000.0}"#,
            "4 LLaMA-3-8B layers (4096 / 14336, 32 / 8 heads), vocab 4096",
            512,
        )
    };
    eprintln!("forward + backward of {shape} ...");
    let model = idlora_models::load::random(config(json)?, 3, &device.clone().autodiff())?
        .with_base_precision(Precision::Bf16)?
        .apply_adapters(&MethodConfig::new(MethodKind::Lora, 8), &Target::ALL, None)?;
    let (step_s, _) = timed_steps(model, 1, seq, args.steps, GradientCheckpointing::Off)?;
    Ok(StackRow { shape: shape.into(), step_s, tokens_per_s: seq as f64 / step_s })
}

/// Logits on the device (f32 and bf16 base) against the CPU's f32 logits.
fn logits(args: &GpuCheckArgs, device: &Device) -> Result<(f32, f32)> {
    let cpu = small_model(args.tiny, &Device::flex(), Precision::F32)?;
    let ids = token_ids(1, 64, cpu.config.vocab_size);
    let input = ForwardInput::single(&ids);
    let want = host(cpu.forward(&input, None)?)?;
    let mut out = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let m = small_model(args.tiny, device, precision)?;
        out.push(max_abs_diff(&host(m.forward(&input, None)?)?, &want));
    }
    Ok((out[0], out[1]))
}

/// Runs every step and returns the report (also written as JSON and Markdown under `args.out`).
pub fn check(args: &GpuCheckArgs) -> Result<Report> {
    let picked = pick(args.device)?;
    eprintln!("device: {}", picked.description);
    let (f32_diff, bf16_diff) = logits(args, &picked.device)?;
    let report = Report {
        device: picked.description.clone(),
        tiny: args.tiny,
        logits_max_abs_diff_f32: f32_diff,
        logits_max_abs_diff_bf16: bf16_diff,
        training: training(args, &picked.device)?,
        stack: stack(args, &picked.device)?,
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    idlora_data::write_atomic(&args.out.join("gpu-check.json"), json.as_bytes())?;
    idlora_data::write_atomic(&args.out.join("gpu-check.md"), markdown(&report).as_bytes())?;
    Ok(report)
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "Device: {}{}\n\nLogits against the CPU's f32 logits, max |diff|: f32 base {:.2e}, bf16 base {:.2e}.\n\n\
         | training | base | s / step | tokens/s | loss |\n|---|---|---|---|---|\n",
        r.device,
        if r.tiny { " (tiny stand-in models)" } else { "" },
        r.logits_max_abs_diff_f32,
        r.logits_max_abs_diff_bf16
    );
    for t in &r.training {
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.0} | {:.4} |\n",
            t.config, t.precision, t.step_s, t.tokens_per_s, t.loss
        ));
    }
    md.push_str(&format!(
        "\nForward + backward, {} (bf16 base, LoRA r=8): {:.3} s, {:.0} tokens/s.\n",
        r.stack.shape, r.stack.step_s, r.stack.tokens_per_s
    ));
    md
}

/// Runs `cargo xtask gpu-check` and prints the table.
pub fn run(args: GpuCheckArgs) -> Result<()> {
    let report = check(&args)?;
    println!("{}", markdown(&report));
    println!("written to {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU dry run CI does: every step runs on tiny models, the CPU's logits equal themselves,
    /// a bf16 base differs a little, and both files are written.
    #[test]
    fn the_dry_run_on_the_cpu_completes_and_writes_its_report() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args =
            GpuCheckArgs { device: DeviceChoice::Cpu, tiny: true, steps: 1, out: dir.path().to_path_buf() };
        let r = check(&args).expect("dry run");
        assert_eq!(r.logits_max_abs_diff_f32, 0.0);
        assert!(
            r.logits_max_abs_diff_bf16 > 0.0 && r.logits_max_abs_diff_bf16 < 0.5,
            "{}",
            r.logits_max_abs_diff_bf16
        );
        assert_eq!(r.training.len(), 6);
        assert!(r.training.iter().all(|t| t.loss.is_finite() && t.tokens_per_s > 0.0));
        // Layer checkpointing trains the same steps: the same last loss as without it.
        for pair in r.training.chunks(3) {
            let (plain, ckpt) = (&pair[1], &pair[2]);
            assert_eq!(ckpt.precision, "bf16 + layer checkpointing");
            assert!(
                (plain.loss - ckpt.loss).abs() <= 1e-5 * plain.loss.abs(),
                "{} vs {}",
                plain.loss,
                ckpt.loss
            );
        }
        assert!(r.stack.tokens_per_s > 0.0);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("gpu-check.json")).expect("json"))
                .expect("parse");
        assert_eq!(json["training"].as_array().map(Vec::len), Some(6));
        assert!(
            std::fs::read_to_string(dir.path().join("gpu-check.md"))
                .expect("md")
                .contains("| lora-8 | bf16 |")
        );
    }
}
