//! End-to-end training on a tiny random model: every method learns, a killed run resumes exactly,
//! Ctrl-C saves, NaN stops, the saved adapter reloads, bad configs and data are named.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::tensor::Device;
use idlora_models::{CausalLm, ForwardInput, ModelConfig, Tokenizer};
use idlora_train::checkpoint::read_tensors;
use idlora_train::trainer::{Outcome, RunPlan, TrainOptions, train};
use idlora_train::{Observer, TrainConfig, TrainError};

#[path = "train_parts/recompute.rs"]
mod recompute;

const WORDS: &[&str] = &[
    "<unk>", "</s>", "red", "green", "blue", "one", "two", "three", "four", "cat", "dog", "bird", "reverse",
    "copy", "say", "colour", "number", "animal", "the", "of", "is", "what", "a", "b", "c", "d",
];

/// burn's CPU generator is process-wide: runs that use dropout must not interleave, or each
/// would draw the other's numbers. Every test that trains holds this lock.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let vocab: serde_json::Map<String, serde_json::Value> =
            WORDS.iter().enumerate().map(|(i, w)| (w.to_string(), serde_json::json!(i))).collect();
        let special = |id: usize, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let tok = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "</s>")],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).expect("tokenizer");
        let records = serde_json::json!([
            {"instruction": "reverse", "input": "a b c", "output": "c b a"},
            {"instruction": "colour of the bird", "input": "", "output": "blue"},
            {"instruction": "copy", "input": "one two three", "output": "one two three"},
            {"instruction": "what is a cat", "input": "", "output": "animal"},
            {"instruction": "say the number", "input": "four", "output": "four four"},
            {"instruction": "reverse", "input": "d c", "output": "c d"},
        ]);
        std::fs::write(dir.path().join("data.json"), records.to_string()).expect("data");
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tokenizer(&self) -> Tokenizer {
        Tokenizer::from_dir(self.dir.path(), &[1]).expect("tokenizer")
    }

    fn config(&self, method: &str, out: &str, extra: &[&str]) -> TrainConfig {
        let text = format!(
            r#"
[model]
path = "random"
[method]
kind = "{method}"
r = 4
k = 2
dropout = 0.0
[[data.sources]]
path = "{data}"
[data]
max_length = 64
val_fraction = 0.0
[optim]
lr = 1e-2
schedule = "constant"
[train]
micro_batch = 2
effective_batch = 4
max_steps = 30
checkpoint_interval = 0
output_dir = "{out}"
"#,
            data = self.path("data.json").display(),
            out = self.path(out).display(),
        );
        let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        TrainConfig::from_toml(&text, "test.toml", &overrides).expect("config")
    }
}

/// Weights of the random test model: large enough that a frozen tied head can express a peaked
/// distribution, so that adapters alone can fit the data.
const STD: f32 = 0.3;

fn model_config() -> ModelConfig {
    let json = format!(
        r#"{{"model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": {}, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true, "eos_token_id": 1}}"#,
        WORDS.len()
    );
    ModelConfig::from_hf_json(&json, "config.json").expect("model config")
}

fn model() -> CausalLm {
    idlora_models::load::random_with_std(model_config(), 3, STD, &Device::flex().autodiff()).expect("model")
}

#[derive(Default)]
struct Capture {
    plan: Mutex<Option<RunPlan>>,
    messages: Mutex<Vec<String>>,
}

impl Observer for Capture {
    fn start(&self, plan: &RunPlan) {
        *self.plan.lock().expect("lock") = Some(plan.clone());
    }
    fn message(&self, text: &str) {
        self.messages.lock().expect("lock").push(text.to_string());
    }
}

/// (step, loss) of every training step a run logged, through `read_steps`, which must list each
/// step once and in order (a resumed run too).
fn losses_in(run: &Path) -> Vec<(usize, f64)> {
    let steps = idlora_train::trainer::read_steps(run).expect("metrics.jsonl");
    let numbers: Vec<usize> = steps.iter().map(|s| s.step).collect();
    assert_eq!(numbers, (1..=steps.len()).collect::<Vec<_>>(), "steps out of order or repeated");
    steps.iter().map(|s| (s.step, s.loss)).collect()
}

#[test]
fn every_method_overfits_a_handful_of_examples() {
    let _serial = serial();
    let fx = Fixture::new();
    let mut results = Vec::new();
    for method in ["full", "lora", "dora", "hydralora", "moelora", "idlora"] {
        let lr = if method == "full" { "optim.lr=1e-2" } else { "optim.lr=2e-2" };
        let cfg = fx.config(method, method, &[lr]);
        let cap = Capture::default();
        let run = train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &cap).expect(method);
        assert_eq!(run.outcome, Outcome::Finished);
        let first = run.losses[0].1;
        let last = run.losses.last().expect("losses").1;
        results.push((method, first, last));
        // The count on the model equals the count from the shape alone (`cargo xtask params`).
        let plan = cap.plan.lock().expect("lock").clone().expect("plan");
        assert_eq!(plan.trainable_params, plan.expected_trainable_params, "{method}");
        assert!(plan.trainable_params > 0);
        assert!(run.run_dir.join("loss.svg").is_file() && run.run_dir.join("summary.json").is_file());
        assert_eq!(run.adapter_dir.is_some(), method != "full");
        assert_eq!(run.model_dir.is_some(), method == "full");
        if let Some(dir) = &run.model_dir {
            // The fully fine-tuned model is a Hugging Face folder with the trained weights.
            let input = ForwardInput::single(&[12, 22, 23, 24, 1, 5, 9]);
            let host = |m: &CausalLm| {
                m.forward(&input, None).expect("logits").into_data().try_into_vec::<f32>().expect("host")
            };
            let saved = idlora_models::load(dir, &Device::flex()).expect("load model/");
            let (a, b) = (host(&run.model.valid()), host(&saved));
            let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(max < 1e-5, "model/ logits differ by {max}");
            assert!(dir.join("tokenizer.json").is_file(), "model/ has its tokenizer");
            let recorded = idlora_data::prompt::recorded_format(dir).expect("prompt file");
            assert_eq!(recorded, Some(idlora_data::prompt::PromptFormat::Alpaca));
        }
    }
    for (method, first, last) in results {
        assert!(last < first / 10.0, "{method}: loss {first} -> {last}");
    }
}

#[test]
fn a_killed_run_resumes_exactly() {
    let _serial = serial();
    let fx = Fixture::new();
    // Dropout on and two micro-batches per step: the dropout streams and data position matter.
    let extra = [
        "method.dropout=0.1",
        "train.max_steps=9",
        "train.checkpoint_interval=3",
        "optim.schedule=\"linear\"",
    ];
    let whole = train(
        &fx.config("idlora", "whole", &extra),
        model(),
        &fx.tokenizer(),
        &TrainOptions::default(),
        &Capture::default(),
    )
    .expect("uninterrupted");
    let cfg = fx.config("idlora", "killed", &extra);
    let halted = TrainOptions { halt_after: Some(7), ..Default::default() };
    let first = train(&cfg, model(), &fx.tokenizer(), &halted, &Capture::default()).expect("first part");
    assert_eq!((first.outcome, first.steps), (Outcome::Halted, 7));
    // The "crash" left the step-6 checkpoint; step 7's metrics line is rewritten on resume.
    let err = train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &Capture::default())
        .err()
        .expect("refuses to overwrite");
    assert!(err.to_string().contains("--resume"), "{err}");
    let resume = TrainOptions { resume: true, ..Default::default() };
    let rest = train(&cfg, model(), &fx.tokenizer(), &resume, &Capture::default()).expect("resumed");
    assert_eq!(rest.outcome, Outcome::Finished);
    let a = losses_in(&whole.run_dir);
    let b = losses_in(&rest.run_dir);
    assert_eq!(a.len(), 9);
    assert_eq!(a, b, "loss curves differ");
    let ta = read_tensors(&whole.run_dir.join("checkpoints/step-0000009/trainable.safetensors")).expect("a");
    let tb = read_tensors(&rest.run_dir.join("checkpoints/step-0000009/trainable.safetensors")).expect("b");
    assert_eq!(ta, tb, "final weights differ");
}

/// Gradient checkpointing recomputes activations in the backward pass instead of keeping them:
/// the gradients, and so the whole run, must be the same as without it, for both schemes (layer
/// recomputation and burn's Balanced strategy), with dropout on (each recomputed layer must draw
/// the masks of its first pass) and for full fine-tuning (whose embedding is also the tied head).
/// The recomputation is the same arithmetic grouped differently: 1e-6 asserted.
#[test]
fn gradient_checkpointing_trains_to_the_same_weights() {
    let _serial = serial();
    let fx = Fixture::new();
    for method in ["idlora", "lora", "dora", "full"] {
        let dropout = if method == "full" { "method.dropout=0.0" } else { "method.dropout=0.1" };
        let extra = [dropout, "train.max_steps=3"];
        let plain = fx.config(method, &format!("{method}-plain"), &extra);
        let a = train(&plain, model(), &fx.tokenizer(), &TrainOptions::default(), &Capture::default())
            .expect("without checkpointing");
        assert_eq!(a.losses.len(), 3);
        for scheme in ["true", "\"operations\""] {
            let set = format!("train.gradient_checkpointing={scheme}");
            let with: Vec<&str> = extra.iter().copied().chain([set.as_str()]).collect();
            let ckpt = fx.config(method, &format!("{method}-ckpt-{}", scheme.trim_matches('"')), &with);
            let device = idlora_train::devices::training_device(&ckpt, Device::flex());
            let balanced = device.gradient_checkpointing_strategy()
                == Some(burn::tensor::GradientCheckpointingStrategy::Balanced);
            assert_eq!(balanced, scheme != "true", "{scheme}");
            let on = idlora_models::load::random_with_std(model_config(), 3, STD, &device).expect("model");
            let b = train(&ckpt, on, &fx.tokenizer(), &TrainOptions::default(), &Capture::default())
                .expect("with checkpointing");
            for ((_, la), (_, lb)) in a.losses.iter().zip(&b.losses) {
                assert!((la - lb).abs() <= 1e-6 * la.abs().max(1.0), "{method} {scheme}: loss {la} vs {lb}");
            }
            let last = "checkpoints/step-0000003/trainable.safetensors";
            let ta = read_tensors(&a.run_dir.join(last)).expect("a");
            let tb = read_tensors(&b.run_dir.join(last)).expect("b");
            assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
            for (name, (_, va)) in &ta {
                let vb = &tb[name].1;
                let worst = va.iter().zip(vb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1e-6, "{method} {scheme}: {name} differs by {worst}");
            }
            if balanced {
                // A model on a device without burn's strategy is refused, naming the key.
                let err =
                    train(&ckpt, model(), &fx.tokenizer(), &TrainOptions::default(), &Capture::default())
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                assert!(err.contains("train.gradient_checkpointing"), "{err}");
            }
        }
    }
}

/// A bf16 (or f16) frozen base trains like an f32 one: the same start (the base's rounding moves
/// the first loss by well under 5%) and a large fall on the tiny task.
#[test]
fn a_half_precision_base_trains_like_f32() {
    let _serial = serial();
    let fx = Fixture::new();
    for method in ["idlora", "lora", "dora"] {
        let f32_run = train(
            &fx.config(method, &format!("{method}-f32"), &["optim.lr=2e-2"]),
            model(),
            &fx.tokenizer(),
            &TrainOptions::default(),
            &Capture::default(),
        )
        .expect("f32");
        for precision in ["bf16", "f16"] {
            let cfg = fx.config(
                method,
                &format!("{method}-{precision}"),
                &["optim.lr=2e-2", &format!("train.precision={precision}")],
            );
            let run = train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &Capture::default())
                .expect(precision);
            assert_eq!(run.model.base_precision().to_string(), precision);
            let (first, last) = (run.losses[0].1, run.losses.last().expect("losses").1);
            let first_f32 = f32_run.losses[0].1;
            assert!(
                (first - first_f32).abs() < 0.05 * first_f32,
                "{method} {precision}: {first} vs {first_f32}"
            );
            assert!(first != first_f32, "{method} {precision}: the base must really be rounded");
            // f32 falls 18-150x here; the rounded base products (and their bf16 / f16 gradients)
            // make the later, chaotic part of the curve differ, not the learning.
            let last_f32 = f32_run.losses.last().expect("losses").1;
            assert!(last < first / 5.0, "{method} {precision}: loss {first} -> {last} (f32: {last_f32})");
        }
    }
}

#[test]
fn stop_request_checkpoints_and_resume_finishes() {
    let _serial = serial();
    let fx = Fixture::new();
    let cfg = fx.config("lora", "stopped", &["train.max_steps=4"]);
    let stop = TrainOptions { stop: Some(Arc::new(AtomicBool::new(true))), ..Default::default() };
    let run = train(&cfg, model(), &fx.tokenizer(), &stop, &Capture::default()).expect("stopped");
    assert_eq!((run.outcome, run.steps), (Outcome::Stopped, 1));
    assert!(run.last_checkpoint.as_ref().is_some_and(|p| p.join("state.json").is_file()));
    let resume = TrainOptions { resume: true, ..Default::default() };
    let rest = train(&cfg, model(), &fx.tokenizer(), &resume, &Capture::default()).expect("resumed");
    assert_eq!((rest.outcome, rest.steps, rest.losses.len()), (Outcome::Finished, 4, 4));
    // A changed config does not resume silently.
    let other = fx.config("lora", "stopped", &["train.max_steps=4", "optim.lr=1e-3"]);
    let err = train(&other, model(), &fx.tokenizer(), &resume, &Capture::default()).err().expect("digest");
    assert!(err.to_string().contains("another configuration"), "{err}");
}

#[test]
fn a_diverging_run_stops_with_the_last_good_checkpoint() {
    let _serial = serial();
    let fx = Fixture::new();
    let cfg = fx.config(
        "full",
        "nan",
        &["optim.lr=1e12", "optim.max_grad_norm=0", "train.checkpoint_interval=1", "train.max_steps=20"],
    );
    let err = train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &Capture::default())
        .err()
        .expect("diverges");
    let TrainError::NonFinite { step, last_checkpoint, .. } = &err else { panic!("{err}") };
    assert!(*step >= 2, "{err}");
    assert!(last_checkpoint.contains(&format!("step-{:07}", step - 1)), "{err}");
    assert!(Path::new(last_checkpoint).join("trainable.safetensors").is_file());
}

#[test]
fn the_saved_adapter_gives_the_trained_models_logits() {
    let _serial = serial();
    let fx = Fixture::new();
    let cfg = fx.config("idlora", "reload", &["train.max_steps=5", "method.dropout=0.05"]);
    let run =
        train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &Capture::default()).expect("train");
    let dir = run.adapter_dir.clone().expect("adapter");
    // The folder says which prompt format the model was trained with (the default, Alpaca).
    let recorded = idlora_data::prompt::recorded_format(&dir).expect("prompt file");
    assert_eq!(recorded, Some(idlora_data::prompt::PromptFormat::Alpaca));
    let input = ForwardInput::single(&[12, 22, 23, 24, 1, 5, 9]);
    let trained = run.model.valid().forward(&input, None).expect("logits");
    let base = idlora_models::load::random_with_std(model_config(), 3, STD, &Device::flex()).expect("model");
    let (reloaded, _) = base.load_adapters(&dir).expect("load adapter");
    let again = reloaded.forward(&input, None).expect("logits");
    let (a, b) = (
        trained.into_data().try_into_vec::<f32>().expect("a"),
        again.into_data().try_into_vec::<f32>().expect("b"),
    );
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max < 1e-5, "max difference {max}");
    // And training moved the model away from the base.
    let plain = idlora_models::load::random_with_std(model_config(), 3, STD, &Device::flex()).expect("model");
    let p = plain.forward(&input, None).expect("logits").into_data().try_into_vec::<f32>().expect("p");
    assert!(a.iter().zip(&p).any(|(x, y)| (x - y).abs() > 1e-3));
}

#[test]
fn bad_configs_and_data_are_named() {
    let _serial = serial();
    let fx = Fixture::new();
    let err = |text: &str, overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::from_toml(text, "run.toml", &o).expect_err("an error").to_string()
    };
    let ok = "[model]\npath = \"m\"\n[[data.sources]]\npath = \"d.json\"\n";
    assert!(err(&format!("{ok}[optim]\nlrr = 1\n"), &[]).contains("unknown field `lrr`"));
    assert!(err(ok, &["optim.lr=-1"]).contains("config `optim.lr`"));
    let e = err(ok, &["method.kind=lorax"]);
    assert!(e.contains("method.kind") && e.contains("lorax") && e.contains("idlora"), "{e}");
    assert!(err(ok, &["train.effective_batch=6"]).contains("config `train.effective_batch`"));
    let e = err(ok, &["train.precision=fp8"]);
    assert!(e.contains("train.precision") && e.contains("fp8") && e.contains("bf16"), "{e}");
    let e = err(ok, &["train.precision=bf16", "method.kind=full"]);
    assert!(e.contains("config `train.precision`") && e.contains("full"), "{e}");
    assert!(err(ok, &["data.sources.0.fraction=0"]).contains("data.sources[0].fraction"));
    assert!(err(ok, &["data.sources.3.weight=2"]).contains("has 1 entries"));
    let e = err(ok, &["method.targets=[\"q\", \"x\"]"]);
    assert!(e.contains("method.targets") && e.contains("`x`") && e.contains("gate"), "{e}");
    assert!(err(ok, &["nonsense"]).contains("key=value"));
    assert!(err("[model]\npath = \"m\"\n", &[]).contains("missing field `data`"));
    let cfg = TrainConfig::from_toml(ok, "run.toml", &[]).expect("minimal config");
    assert!(cfg.check_files().expect_err("missing").to_string().contains("config `model.path`"));

    // Data: malformed records are reported with file and line; an empty result is an error.
    std::fs::write(
        fx.path("mixed.jsonl"),
        "{\"instruction\": \"copy\", \"input\": \"a\", \"output\": \"a\"}\n{\"instruction\": \"copy\"}\n",
    )
    .expect("write");
    let mut cfg = fx.config("lora", "mixed", &["train.max_steps=1"]);
    cfg.data.sources[0].path = fx.path("mixed.jsonl").display().to_string();
    let cap = Capture::default();
    train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &cap).expect("trains on the good record");
    let messages = cap.messages.lock().expect("lock").join("\n");
    assert!(messages.contains("2 records, 1 malformed"), "{messages}");
    assert!(messages.contains("mixed.jsonl line 2: missing field `output`"), "{messages}");
    std::fs::write(fx.path("bad.jsonl"), "{\"instruction\": \"copy\"}\n").expect("write");
    cfg.data.sources[0].path = fx.path("bad.jsonl").display().to_string();
    cfg.train.output_dir = fx.path("bad").display().to_string();
    let e = train(&cfg, model(), &fx.tokenizer(), &TrainOptions::default(), &cap).err().expect("empty");
    assert!(e.to_string().contains("bad.jsonl: no training example left"), "{e}");
}

#[test]
fn shipped_configs_are_valid_and_carry_the_papers_settings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train");
    let mut paper = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/train") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg = TrainConfig::from_file(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_stem().expect("stem").to_string_lossy().into_owned();
        if !(name.starts_with("llama3-8b") || name.starts_with("mistral-7b")) {
            continue;
        }
        paper += 1;
        let m = cfg.method_config().expect("method");
        assert_eq!((m.r, m.alpha, m.k, m.dropout), (128, 256.0, 4, 0.05), "{name}");
        assert_eq!(cfg.targets().expect("targets").len(), 7, "{name}");
        // Table 4 (GSM8K, CodeAlpaca, Saferpaca per model) and Table 5 (multi-task), cell by cell.
        let (lr, epochs) = match name.as_str() {
            "llama3-8b-math" => (5e-5, 3),
            "mistral-7b-math" => (3e-5, 3),
            "llama3-8b-code" | "mistral-7b-code" => (5e-5, 2),
            "llama3-8b-safety" | "mistral-7b-safety" => (1e-4, 2),
            "llama3-8b-multitask" | "mistral-7b-multitask" => (5e-5, 2),
            other => panic!("{other}: no table cell for this config"),
        };
        assert_eq!((cfg.train.effective_batch, cfg.train.epochs), (32, epochs), "{name}");
        assert_eq!((cfg.optim.warmup_steps, cfg.optim.warmup_ratio), (0, 0.0), "{name}");
        assert_eq!(cfg.optim.lr, lr, "{name}");
        // A bf16 base and layer checkpointing: what makes 4 x 1024 tokens fit an 80 GB GPU.
        assert_eq!(cfg.train.precision, idlora_models::Precision::Bf16, "{name}");
        assert_eq!(
            cfg.train.gradient_checkpointing,
            idlora_train::config::GradientCheckpointing::Layers,
            "{name}"
        );
        // Full fine-tuning is refused on the half base, and valid with the f32 override that the
        // FFT rows of the reproduce grids set.
        assert!(TrainConfig::from_file(&path, &["method.kind=full".into()]).is_err(), "{name}");
        let set = ["method.kind=full".to_string(), "train.precision=f32".to_string()];
        TrainConfig::from_file(&path, &set).unwrap_or_else(|e| panic!("{name} full f32: {e}"));
        // Switching the method gives the paper's baseline rank, alpha = 2 r.
        for (kind, r) in [("lora", 32), ("dora", 32), ("hydralora", 16), ("moelora", 8)] {
            let set = [format!("method.kind={kind}")];
            let b = TrainConfig::from_file(&path, &set).expect("override").method_config().expect("method");
            assert_eq!((b.r, b.alpha), (r, 2.0 * r as f64), "{name} with {kind}");
        }
        if name.ends_with("multitask") {
            let fractions: Vec<f64> = cfg.data.sources.iter().map(|s| s.fraction).collect();
            assert_eq!(fractions, [1.0, 1.0, 0.5], "{name}");
        }
    }
    assert_eq!(paper, 8);
}

#[test]
fn data_parallel_over_two_replicas_matches_one_device() {
    let _serial = serial();
    let fx = Fixture::new();
    // Two micro-batches per step: one per replica. No dropout, so both runs see the same numbers.
    let extra = ["train.max_steps=4"];
    let one = train(
        &fx.config("lora", "one", &extra),
        model(),
        &fx.tokenizer(),
        &TrainOptions::default(),
        &Capture::default(),
    )
    .expect("one device");
    let opts = TrainOptions { replicas: vec![Device::flex().autodiff()], ..Default::default() };
    let two = train(&fx.config("lora", "two", &extra), model(), &fx.tokenizer(), &opts, &Capture::default())
        .expect("two replicas");
    assert_eq!(one.losses.len(), 4);
    for ((s, a), (_, b)) in one.losses.iter().zip(&two.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s}: {a} (one device) vs {b} (two replicas)");
    }
}

#[test]
fn typed_sections_take_every_setting_and_name_the_key_and_accepted_values() {
    use idlora_adapter::{DropoutSite, MethodKind};
    use idlora_cluster::{AssignmentSolver, Selector};
    use idlora_models::DeviceChoice;
    use idlora_train::config::{Schedule, TemplateKind};
    let ok = "[model]\npath = \"m\"\n[[data.sources]]\npath = \"d.json\"\n";
    let set = |overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::from_toml(ok, "run.toml", &o)
    };
    let cfg = set(&[
        "method.kind=dora",
        "method.dropout_site=input",
        "method.targets=[\"q_proj\", \"down\"]",
        "cluster.selector=ss",
        "cluster.size_min=130",
        "cluster.size_max=400",
        "cluster.solver=lp",
        "data.template=chat",
        "optim.schedule=cosine",
        "train.device=cuda:1",
    ])
    .expect("valid");
    assert_eq!(cfg.method.kind, MethodKind::Dora);
    assert_eq!(cfg.method.dropout_site, DropoutSite::Input);
    let pmrc = cfg.cluster_config().expect("cluster");
    assert_eq!(
        (pmrc.selector, pmrc.size_min, pmrc.size_max, pmrc.solver),
        (Selector::Ss, Some(130), Some(400), AssignmentSolver::Lp)
    );
    assert_eq!((cfg.data.template, cfg.optim.schedule), (TemplateKind::Chat, Schedule::Cosine));
    assert_eq!(cfg.train.device, DeviceChoice::Cuda(1));
    assert_eq!(cfg.targets().expect("targets").len(), 2);
    // What is written to the run folder reads back the same.
    // (with the rank as it was run: left unset, it is the method's paper rank).
    let again = TrainConfig::from_toml(&cfg.to_toml(), "config.toml", &[]).expect("round trip");
    let mut want = cfg.clone();
    want.method.r = Some(cfg.method.rank());
    assert_eq!(again, want);

    // Bad values name the key and what is accepted, in the file and in overrides.
    let cases: [(&str, &[&str]); 6] = [
        ("method.dropout_site=middle", &["dropout_site", "gathered", "input"]),
        ("cluster.selector=kmeans", &["selector", "pmrc", "ss", "rs"]),
        ("cluster.solver=simplex", &["solver", "flow", "lp"]),
        ("optim.schedule=step", &["schedule", "constant", "linear", "cosine"]),
        ("data.template=plain", &["template", "alpaca", "chat"]),
        ("train.device=tpu", &["device", "cuda:N"]),
    ];
    for (o, wanted) in cases {
        let e = set(&[o]).expect_err(o).to_string();
        assert!(wanted.iter().all(|w| e.contains(w)), "{o}: {e}");
        let (section, kv) = o.split_once('.').expect("dotted");
        let (key, value) = kv.split_once('=').expect("key=value");
        let text = format!("{ok}[{section}]\n{key} = \"{value}\"\n");
        let e = TrainConfig::from_toml(&text, "run.toml", &[]).expect_err(o).to_string();
        assert!(wanted.iter().all(|w| e.contains(w)), "{o} in the file: {e}");
    }
    let e = set(&["cluster.size_min=3"]).expect_err("below r").to_string();
    assert!(e.contains("cluster.size_min") && e.contains("r = 128"), "{e}");
    let e = set(&["cluster.size_max=100"]).expect_err("below min").to_string();
    assert!(e.contains("cluster.size_max"), "{e}");
}
