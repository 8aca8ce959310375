//! `export_hf` against transformers: each case takes a fixture base model, puts an adapter with
//! fixed non-zero values on it, exports it merged, and checks that
//! - the export is the committed folder `tests/fixtures/export_<case>/` (config.json and every
//!   tensor, bit for bit), which `tests/fixtures/make_export_fixtures.py` loaded with
//!   `AutoModelForCausalLM.from_pretrained` to write its `expected.safetensors` logits;
//! - the unmerged adapter model's logits equal transformers' logits on the export (1e-4, as the
//!   base-model parity tests: both are f32, and the merged product differs by rounding only);
//! - the export loads back here with the same logits.
//!
//! `IDLORA_WRITE_FIXTURES=1 cargo test -p idlora-models --test export` rewrites the folders
//! (then run the Python script to refresh the logits).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_models::export::{ExportOptions, export_hf};
use idlora_models::layout::Target;
use idlora_models::{CausalLm, ForwardInput, ModelError, Precision, load};
use safetensors::SafeTensors;

/// (export fixture, base fixture, method or `None` for a fully fine-tuned model)
const CASES: [(&str, &str, Option<MethodKind>); 3] = [
    // LoRA on every projection of the GQA model with an untied head.
    ("export_lora", "llama_gqa_untied", Some(MethodKind::Lora)),
    // DoRA on the tied model with biases and LLaMA-3 RoPE scaling (config.json carries both).
    ("export_dora", "llama3_tied_rope_scaling", Some(MethodKind::Dora)),
    // A "fine-tuned" Mistral (every weight moved) with its sliding window.
    ("export_full", "mistral_sliding_window", None),
];

/// Tokens the fixture logits are computed for (the Python script reads them from here too).
const TOKENS: [u32; 12] = [1, 17, 42, 3, 63, 8, 25, 25, 9, 50, 0, 31];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Element `j` of the `c`-th tensor it sees becomes `0.05 sin(0.37 j + 1.3 c)` (matrices, when
/// `replace`: LoRA's randomly initialised A and B) or gets it added (vectors such as DoRA's
/// magnitude, and every weight of the fully fine-tuned case): fixed values, no random generator,
/// so that the committed export can be compared bit for bit, and every update is non-zero.
struct Fixed {
    count: usize,
    replace: bool,
}
impl ModuleMapper for Fixed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let c = self.count as f32;
        self.count += 1;
        let replace = self.replace && D == 2;
        param.map(|t| {
            let shape = t.shape();
            let n = shape.num_elements();
            let bump: Vec<f32> = (0..n).map(|j| 0.05 * (0.37 * j as f32 + 1.3 * c).sin()).collect();
            let bump = Tensor::<D>::from_data(TensorData::new(bump, shape), &t.device());
            let trainable = t.is_require_grad();
            let v = if replace { bump } else { (t + bump).detach() };
            if trainable { v.require_grad() } else { v }
        })
    }
}

fn adapted(base: &str, method: Option<MethodKind>) -> CausalLm {
    let model = load(&fixtures().join(base), &Device::flex()).expect("fixture model");
    let mut cfg = MethodConfig::new(method.unwrap_or(MethodKind::Full), 4);
    cfg.alpha = 8.0;
    cfg.dropout = 0.0;
    let mut model = model.apply_adapters(&cfg, &Target::ALL, None).expect("adapters");
    let mut fixed = Fixed { count: 0, replace: method.is_some() };
    if method.is_none() {
        return model.map(&mut fixed);
    }
    for (_, p) in model.projections_mut() {
        p.adapter = p.adapter.take().map(|a| a.map(&mut fixed));
    }
    model
}

fn logits(model: &CausalLm) -> Vec<f32> {
    let t = model.forward(&ForwardInput::single(&TOKENS), None).expect("forward");
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("host")
}

fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn exports_load_in_transformers_with_the_adapter_models_logits() {
    for (case, base, method) in CASES {
        let model = adapted(base, method);
        let ours = logits(&model);
        let committed = fixtures().join(case);
        let tmp = tempfile::tempdir().expect("tempdir");
        let write_fixture = std::env::var("IDLORA_WRITE_FIXTURES").as_deref() == Ok("1");
        let out = if write_fixture { committed.clone() } else { tmp.path().to_path_buf() };
        let written = export_hf(model, None, &out, &ExportOptions::default()).expect("export");
        assert_eq!(written.files, ["config.json", "model.safetensors"], "{case}");
        assert_eq!(written.merged.len(), if method.is_some() { 14 } else { 0 }, "{case}");
        if write_fixture {
            // The logits come from transformers: `make_export_fixtures.py`.
            continue;
        }

        // The same bytes as the folder transformers read.
        for file in ["config.json", "model.safetensors"] {
            let (a, b) = (std::fs::read(out.join(file)), std::fs::read(committed.join(file)));
            assert!(a.is_ok() && a.ok() == b.ok(), "{case}/{file} differs from the committed export");
        }
        let expected = read_f32(&committed.join("expected.safetensors"), "logits");
        let err = max_abs(&ours, &expected);
        assert!(err < 1e-4, "{case}: adapter model vs transformers on the export: max-abs {err}");
        assert!(expected.iter().any(|v| v.abs() > 0.5), "{case}: fixture logits trivially small");
        // The update is really in the export: the base alone is further away.
        let plain = logits(&load(&fixtures().join(base), &Device::flex()).expect("base"));
        assert!(max_abs(&plain, &expected) > 1e-2, "{case}: the export equals the base model");

        let again = logits(&load(&out, &Device::flex()).expect("reload"));
        let err = max_abs(&again, &expected);
        assert!(err < 1e-4, "{case}: reloaded export vs transformers: max-abs {err}");
    }
}

#[test]
fn routed_adapters_are_refused_and_bf16_exports_are_half_the_size() {
    let base = load(&fixtures().join("llama_gqa_untied"), &Device::flex()).expect("fixture");
    let mut cfg = MethodConfig::new(MethodKind::HydraLora, 2);
    cfg.dropout = 0.0;
    let hydra = base.clone().apply_adapters(&cfg, &Target::ALL, None).expect("adapters");
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = export_hf(hydra, None, tmp.path(), &ExportOptions::default()).expect_err("hydra");
    assert!(matches!(err, ModelError::Adapter(_)) && err.to_string().contains("router"), "{err}");
    assert!(!tmp.path().join("config.json").exists(), "nothing is written for a refused export");

    let f32_dir = tmp.path().join("f32");
    let bf16_dir = tmp.path().join("bf16");
    let a = export_hf(base.clone(), None, &f32_dir, &ExportOptions::default()).expect("f32");
    let options = ExportOptions { dtype: Precision::Bf16, ..ExportOptions::default() };
    let b = export_hf(base.clone(), None, &bf16_dir, &options).expect("bf16");
    assert_eq!((a.tensors, a.bytes), (b.tensors, 2 * b.bytes));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_dir.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["torch_dtype"], "bfloat16");
    // bf16 weights hold 8 bits of mantissa: logits move, but little.
    let (x, y) = (logits(&base), logits(&load(&bf16_dir, &Device::flex()).expect("bf16 reload")));
    let err = max_abs(&x, &y);
    assert!(err > 0.0 && err < 0.05, "bf16 export: max-abs {err}");
}

#[test]
fn small_shards_get_an_index_that_loads() {
    let base = load(&fixtures().join("llama_gqa_untied"), &Device::flex()).expect("fixture");
    let tmp = tempfile::tempdir().expect("tempdir");
    // 8 KiB shards: the embedding (64 x 32 f32) fills one alone.
    let options = ExportOptions { max_shard_bytes: 8 << 10, ..ExportOptions::default() };
    let written = export_hf(base.clone(), None, tmp.path(), &options).expect("export");
    let shards: Vec<&String> = written.files.iter().filter(|f| f.ends_with(".safetensors")).collect();
    assert!(shards.len() > 2, "{:?}", written.files);
    assert_eq!(shards[0], &format!("model-00001-of-{:05}.safetensors", shards.len()));
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    assert_eq!(index["metadata"]["total_size"], written.bytes);
    assert_eq!(index["weight_map"].as_object().map(|m| m.len()), Some(written.tensors));
    let err = max_abs(&logits(&base), &logits(&load(tmp.path(), &Device::flex()).expect("reload")));
    assert_eq!(err, 0.0, "sharded f32 export reloads exactly");
}

#[test]
fn merging_for_inference_keeps_the_logits_and_leaves_routed_methods() {
    // LoRA and DoRA with fixed non-zero updates: merged in place, same logits (the update is
    // large enough that dropping it would show: the base model is > 1e-2 away, checked above).
    for (_, base, method) in &CASES[..2] {
        let mut model = adapted(base, *method);
        let before = logits(&model);
        assert_eq!(model.merge_adapters().expect("merge"), 14, "{base}");
        assert!(model.projections().iter().all(|(_, p)| p.merged));
        let err = max_abs(&before, &logits(&model));
        assert!(err < 1e-4, "{base} {method:?}: merged vs unmerged max-abs {err}");
        assert_eq!(model.merge_adapters().expect("again"), 0, "merging twice merges nothing");
    }
    // A routed method is left unmerged.
    let base = load(&fixtures().join("llama_gqa_untied"), &Device::flex()).expect("fixture");
    let cfg = MethodConfig::new(MethodKind::HydraLora, 2);
    let mut hydra = base.apply_adapters(&cfg, &Target::ALL, None).expect("adapters");
    assert_eq!(hydra.merge_adapters().expect("merge"), 0);
    assert!(hydra.projections().iter().all(|(_, p)| !p.merged));
}
