//! Gradient checkpointing by layer recomputation against the ordinary backward, parameter by
//! parameter: the gradients of `idlora_train::recompute::recomputed_grads` must be those of
//! `seeded_nll_sum(..).backward()` for adapters with dropout (LoRA, DoRA, HydraLoRA, ID-LoRA)
//! and for full fine-tuning with a tied head. Adam's update hides a gradient's scale, so this
//! compares gradients, not trained weights. A module of `tests/train.rs` (one test binary fewer
//! to link); it reseeds burn's CPU generator, so it holds that file's lock like every test there.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use idlora_adapter::{MethodConfig, MethodKind};
use idlora_cluster::PmrcConfig;
use idlora_models::adapters::BasesSource;
use idlora_models::{CausalLm, ModelConfig, Target};
use idlora_train::batch::collate;
use idlora_train::loss::seeded_nll_sum;
use idlora_train::recompute::recomputed_grads;
use idlora_train::template::Example;

/// Grouped heads, a tied head, three layers.
const TINY: &str = r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
    "tie_word_embeddings": true}"#;

fn model(kind: MethodKind) -> CausalLm {
    let device = Device::flex().autodiff();
    device.seed(0);
    let config = ModelConfig::from_hf_json(TINY, "tiny").unwrap();
    let base = idlora_models::load::random_with_std(config, 7, 0.2, &device).unwrap();
    let r = if kind == MethodKind::IdLora { 4 } else { 2 };
    let dropout = if kind == MethodKind::Full { 0.0 } else { 0.2 };
    let mut method = MethodConfig::new(kind, r).with_dropout(dropout);
    method.k = 2;
    let progress = |_: usize, _: usize| {};
    let bases = BasesSource::Cluster(PmrcConfig { n_init: 1, ..PmrcConfig::default() }, &progress);
    let model = base.apply_adapters(&method, &Target::ALL, Some(bases)).unwrap();
    // Adapters start with B = 0, where several gradients vanish: one small step away from it so
    // that every parameter's gradient is non-trivial.
    perturb(model)
}

/// Every trainable parameter plus a small deterministic offset.
fn perturb(model: CausalLm) -> CausalLm {
    struct Shift(usize);
    impl burn::module::ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, t, mapper) = param.consume();
            if !t.is_require_grad() {
                return Param::from_mapped_value(id, t, mapper);
            }
            self.0 += 1;
            let n = t.shape().num_elements();
            let device = t.device();
            let shift: Vec<f32> = (0..n).map(|i| 0.01 * (((i * 7 + self.0 * 3) % 11) as f32 - 5.0)).collect();
            let offset = Tensor::<1>::from_floats(shift.as_slice(), &device).reshape(t.shape());
            // A fresh leaf (a sum is not one, and only leaves can require a gradient).
            let value = Tensor::<D>::from_data((t.detach() + offset).into_data(), &device).require_grad();
            Param::from_mapped_value(id, value, mapper)
        }
    }
    model.map(&mut Shift(0))
}

fn batch() -> idlora_train::batch::Batch {
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 64).collect();
    let examples: Vec<Example> =
        ids.chunks(10).map(|row| Example { tokens: row.to_vec(), prompt_len: 2 }).collect();
    let rows: Vec<&Example> = examples.iter().collect();
    collate(&rows, 0)
}

/// Every trainable parameter's gradient, flattened, in visiting order.
fn flat(model: &CausalLm, grads: &GradientsParams) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let v = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                self.out.push((format!("{} {:?}", param.id, param.shape().as_slice()), v));
            }
        }
    }
    let mut c = Collect { grads, out: Vec::new() };
    model.visit(&mut c);
    c.out
}

/// The largest difference over the largest entry, across all gradients, asserting the same
/// parameters have gradients.
fn worst_relative(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    let scale = a.iter().flat_map(|x| x.1.iter()).fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    let diff = a
        .iter()
        .zip(b)
        .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs()))
        .fold(0.0f32, f32::max);
    diff / scale
}

#[test]
fn recomputed_gradients_equal_the_ordinary_backward() {
    let _serial = super::serial();
    let b = batch();
    let scale = b.target_count() as f64;
    for kind in
        [MethodKind::Lora, MethodKind::Dora, MethodKind::HydraLora, MethodKind::IdLora, MethodKind::Full]
    {
        let model = model(kind);
        let nll = seeded_nll_sum(&model, &b, 5).unwrap();
        let expected_nll = nll.clone().detach().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
        let expected = flat(&model, &GradientsParams::from_grads(nll.div_scalar(scale).backward(), &model));
        let (grads, got_nll) = recomputed_grads(&model, &b, 5, scale).unwrap();
        let got = flat(&model, &grads);
        assert!(!got.is_empty(), "{kind:?}: no gradients");
        if kind == MethodKind::Full {
            // Every weight trains, the embedding through both the lookup and the tied head.
            assert_eq!(got.len(), model.num_params_tensors());
        }
        assert!(((got_nll as f32) - expected_nll).abs() <= 1e-5 * expected_nll.abs(), "{kind:?}: nll");
        let err = worst_relative(&expected, &got);
        eprintln!("{kind:?}: {} gradients, nll {got_nll}, worst relative difference {err:e}", got.len());
        assert!(err <= 1e-5, "{kind:?}: gradients differ by {err} of the largest");

        // The control: recomputing with another dropout seed draws other masks and so other
        // gradients; the equality above is the seeding's doing, not dropout being inert.
        if kind != MethodKind::Full {
            let (other, _) = recomputed_grads(&model, &b, 6, scale).unwrap();
            let err = worst_relative(&expected, &flat(&model, &other));
            eprintln!("{kind:?}: another seed: {err:e}");
            assert!(err > 1e-3, "{kind:?}: another seed changed the gradients by only {err}");
        }
    }
}

trait CountTensors {
    fn num_params_tensors(&self) -> usize;
}

impl CountTensors for CausalLm {
    /// Float parameters that require a gradient.
    fn num_params_tensors(&self) -> usize {
        struct Count(usize);
        impl ModuleVisitor for Count {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.val().is_require_grad() {
                    self.0 += 1;
                }
            }
        }
        let mut c = Count(0);
        self.visit(&mut c);
        c.0
    }
}
