//! The wgpu backend against the CPU backend on a tiny random LLaMA: the same logits, and the same
//! losses over three ID-LoRA training steps. CI runs it on Mesa's software Vulkan (lavapipe):
//! `cargo test -p idlora-train --features wgpu --test wgpu`. Without any wgpu adapter the test
//! fails when `IDLORA_REQUIRE_WGPU=1` (CI sets it) and is skipped with a message otherwise.
#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::PmrcConfig;
use idlora_models::adapters::BasesSource;
use idlora_models::{CausalLm, DeviceChoice, ForwardInput, ModelConfig, Target};
use idlora_train::batch::collate;
use idlora_train::loss::{nll_sum, seeded_nll_sum};
use idlora_train::recompute::recomputed_grads;
use idlora_train::template::Example;

/// Grouped heads (4 query, 2 key/value), a tied head, two layers: every block of the decoder.
const TINY: &str = r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
    "tie_word_embeddings": true}"#;

/// burn's CPU generator is process-wide, and the adapters draw their initialisation from it:
/// the tests that build adapters hold this lock, or each would draw the other's numbers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn wgpu_device() -> Option<Device> {
    match idlora_models::pick(DeviceChoice::Wgpu) {
        Ok(picked) => {
            eprintln!("wgpu device: {}", picked.description);
            Some(picked.device)
        }
        Err(e) => {
            assert!(
                std::env::var("IDLORA_REQUIRE_WGPU").as_deref() != Ok("1"),
                "IDLORA_REQUIRE_WGPU=1 but: {e}"
            );
            eprintln!("skipped: no wgpu adapter ({e})");
            None
        }
    }
}

fn tiny(device: &Device) -> CausalLm {
    let config = ModelConfig::from_hf_json(TINY, "tiny").unwrap();
    idlora_models::load::random_with_std(config, 7, 0.2, device).unwrap()
}

fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 64).collect()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn wgpu_logits_equal_the_cpu_backend() {
    let Some(gpu) = wgpu_device() else { return };
    let input = ForwardInput::single(&ids(24));
    let cpu = host(tiny(&Device::flex()).forward(&input, None).unwrap());
    let got = host(tiny(&gpu).forward(&input, None).unwrap());
    assert_eq!(cpu.len(), got.len());
    let diff = cpu.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "max |wgpu - cpu| = {diff}");
}

/// ID-LoRA (k = 2, r = 4, rank boosting, every projection) with `dropout`, built and clustered
/// on the CPU from a seeded generator (the same adapter every time), then forked onto `device`
/// (`fork`, not `to_device`: the parameters become leaves there, as the trainer's replicas).
fn id_lora_on(device: &Device, dropout: f64) -> CausalLm {
    let cpu = Device::flex().autodiff();
    cpu.seed(0);
    let mut method = MethodConfig::new(MethodKind::IdLora, 4).with_dropout(dropout);
    method.k = 2;
    let progress = |_: usize, _: usize| {};
    let bases = BasesSource::Cluster(PmrcConfig { n_init: 1, ..PmrcConfig::default() }, &progress);
    tiny(&cpu).apply_adapters(&method, &Target::ALL, Some(bases)).unwrap().fork(device)
}

/// Four rows of 12 tokens, the first 3 of each a prompt.
fn batch() -> idlora_train::batch::Batch {
    let examples: Vec<Example> =
        ids(48).chunks(12).map(|row| Example { tokens: row.to_vec(), prompt_len: 3 }).collect();
    let rows: Vec<&Example> = examples.iter().collect();
    collate(&rows, 0)
}

/// Three AdamW steps of ID-LoRA from the same adapter on `device`. Dropout is off: its masks
/// come from each device's own generator.
fn id_lora_losses(device: &Device) -> Vec<f32> {
    let mut model = id_lora_on(device, 0.0);
    let batch = batch();
    let mut optim = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let loss = nll_sum(&model, &batch).unwrap().div_scalar(batch.target_count() as f64);
        losses.push(host(loss.clone().detach())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    losses
}

#[test]
fn three_id_lora_steps_on_wgpu_match_the_cpu_backend() {
    let Some(gpu) = wgpu_device() else { return };
    let _serial = serial();
    let cpu = id_lora_losses(&Device::flex().autodiff());
    let got = id_lora_losses(&gpu.autodiff());
    eprintln!("cpu {cpu:?}\nwgpu {got:?}");
    // The steps move the loss (a large learning rate), so matching losses means matching updates.
    assert!((cpu[0] - cpu[2]).abs() > 1e-3, "the steps did not change the loss: {cpu:?}");
    for (a, b) in cpu.iter().zip(&got) {
        assert!((a - b).abs() < 1e-4, "losses differ: cpu {cpu:?}, wgpu {got:?}");
    }
}

/// Layer checkpointing on wgpu: the recomputed gradients of ID-LoRA (with dropout, drawn on the
/// device from the same per-layer seeds in both passes) equal wgpu's ordinary backward.
#[test]
fn layer_recomputation_on_wgpu_gives_the_ordinary_gradients() {
    let Some(gpu) = wgpu_device() else { return };
    let _serial = serial();
    let model = id_lora_on(&gpu.autodiff(), 0.1);
    let batch = batch();
    let scale = batch.target_count() as f64;
    let nll = seeded_nll_sum(&model, &batch, 3).unwrap().div_scalar(scale);
    let expected = GradientsParams::from_grads(nll.backward(), &model);
    let (got, _) = recomputed_grads(&model, &batch, 3, scale).unwrap();
    struct Compare<'a> {
        a: &'a GradientsParams,
        b: &'a GradientsParams,
        worst: f32,
        count: usize,
    }
    impl burn::module::ModuleVisitor for Compare<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(x) = self.a.get::<D>(param.id) {
                let y = self.b.get::<D>(param.id).expect("a recomputed gradient for every parameter");
                let d = host(x - y).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                self.worst = self.worst.max(d);
                self.count += 1;
            }
        }
    }
    let mut c = Compare { a: &expected, b: &got, worst: 0.0, count: 0 };
    model.visit(&mut c);
    eprintln!("{} gradients, worst |difference| {:e}", c.count, c.worst);
    assert!(c.count > 0);
    assert!(c.worst <= 1e-6, "recomputed gradients differ by {}", c.worst);
}
