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
use idlora_train::loss::nll_sum;
use idlora_train::template::Example;

/// Grouped heads (4 query, 2 key/value), a tied head, two layers: every block of the decoder.
const TINY: &str = r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
    "tie_word_embeddings": true}"#;

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

/// Three AdamW steps of ID-LoRA (k = 2, r = 4, rank boosting) from the same adapter: built and
/// clustered on the CPU, then forked onto each device. Dropout is off: its masks come from each
/// device's own generator.
fn id_lora_losses(device: &Device) -> Vec<f32> {
    let cpu = Device::flex().autodiff();
    // The router's random initialisation comes from this generator: the same on both sides.
    cpu.seed(0);
    let mut method = MethodConfig::new(MethodKind::IdLora, 4).with_dropout(0.0);
    method.k = 2;
    let progress = |_: usize, _: usize| {};
    let bases = BasesSource::Cluster(PmrcConfig { n_init: 1, ..PmrcConfig::default() }, &progress);
    let model = tiny(&cpu).apply_adapters(&method, &Target::ALL, Some(bases)).unwrap();
    // `fork`, not `to_device`: the parameters become leaves on `device` (as the trainer's replicas).
    let mut model = model.fork(device);
    let examples: Vec<Example> =
        ids(48).chunks(12).map(|row| Example { tokens: row.to_vec(), prompt_len: 3 }).collect();
    let rows: Vec<&Example> = examples.iter().collect();
    let batch = collate(&rows, 0);
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
    let cpu = id_lora_losses(&Device::flex().autodiff());
    let got = id_lora_losses(&gpu.autodiff());
    eprintln!("cpu {cpu:?}\nwgpu {got:?}");
    // The steps move the loss (a large learning rate), so matching losses means matching updates.
    assert!((cpu[0] - cpu[2]).abs() > 1e-3, "the steps did not change the loss: {cpu:?}");
    for (a, b) in cpu.iter().zip(&got) {
        assert!((a - b).abs() < 1e-4, "losses differ: cpu {cpu:?}, wgpu {got:?}");
    }
}
