#![allow(clippy::unwrap_used, clippy::needless_range_loop)]
//! idlora-adapter tests: every method against an independent reference (explicit products,
//! finite differences, PEFT's outputs saved as fixtures, hand-computed cases, Table 6).

mod common;

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use idlora_adapter::params::layer_params;
use idlora_adapter::peft::{AdapterFile, HostTensor};
use idlora_adapter::{AdaptedLinear, Adapter, AdapterError, BasisPath, IndexSets, MethodConfig, MethodKind};
use idlora_cluster::select::select_random;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn device() -> Device {
    let d = Device::flex().autodiff();
    d.seed(7);
    d
}

fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn vec_any<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// max |a - b| / max(1, max |b|)
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

fn base(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
}

fn cfg(kind: MethodKind, r: usize) -> MethodConfig {
    MethodConfig::new(kind, r).with_dropout(0.0)
}

fn sets(rows: usize, k: usize, r: usize, seed: u64) -> IndexSets {
    IndexSets::new(select_random(rows, k, r, seed).unwrap().sets).unwrap()
}

/// Replaces every zero-initialised `B` (and the rest of the adapter) by random values, so that
/// gradients and outputs are not trivially zero.
struct Randomize;
impl ModuleMapper for Randomize {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let shape = t.shape();
            let device = t.device();
            let noise = Tensor::<D>::random(shape, Distribution::Normal(0.0, 0.3), &device);
            let trainable = t.is_require_grad();
            let v = (t + noise).detach();
            if trainable { v.require_grad() } else { v }
        })
    }
}

fn randomized(layer: AdaptedLinear) -> AdaptedLinear {
    let AdaptedLinear { base, adapter, merged, name } = layer;
    AdaptedLinear { base, adapter: adapter.map(|a| a.map(&mut Randomize)), merged, name }
}

fn all_methods(d_out: usize) -> Vec<(MethodConfig, Option<IndexSets>)> {
    let mut id = cfg(MethodKind::IdLora, 2);
    id.k = 2;
    let mut id_sum = id.clone();
    id_sum.rank_boost = false;
    let mut rs = cfg(MethodKind::Lora, 3);
    rs.rslora = true;
    vec![
        (cfg(MethodKind::Lora, 3), None),
        (rs, None),
        (cfg(MethodKind::Dora, 3), None),
        (cfg(MethodKind::HydraLora, 2), None),
        (cfg(MethodKind::MoeLora, 2), None),
        (id, Some(sets(d_out, 2, 2, 1))),
        (id_sum, Some(sets(d_out, 2, 2, 2))),
    ]
}

#[test]
fn every_method_equals_the_base_at_initialisation() {
    let device = Device::flex();
    for bias in [false, true] {
        for (c, s) in all_methods(8) {
            let b = base(6, 8, bias, &device);
            let x = Tensor::<3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device);
            let y0 = b.forward(x.clone());
            let layer = AdaptedLinear::new("l", b, &c, s.as_ref()).unwrap();
            let y = layer.forward(x);
            assert_eq!(vec_any(y), vec_any(y0), "{:?} (bias {bias}) is not the base at init", c.kind);
        }
    }
}

#[test]
fn gather_path_equals_explicit_bases_forward_and_gradients() {
    let device = device();
    for (bias, rank_boost, p) in
        [(false, true, None), (true, true, None), (true, true, Some(2)), (true, false, None)]
    {
        let mut c = cfg(MethodKind::IdLora, 4);
        c.k = 4;
        c.p = p;
        c.rank_boost = rank_boost;
        let s = sets(16, 4, 4, 3);
        let b = base(10, 16, bias, &device);
        let gather = randomized(AdaptedLinear::new("g", b, &c, Some(&s)).unwrap());
        let mut explicit = gather.clone();
        if let Some(Adapter::IdLora(id)) = explicit.adapter.as_mut() {
            id.basis = BasisPath::Explicit;
        }
        let x = Tensor::<3>::random([2, 5, 10], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let g = Tensor::<3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let run = |layer: &AdaptedLinear| {
            let x = x.clone().detach().require_grad();
            let y = layer.forward(x.clone());
            let grads = (y.clone() * g.clone()).sum().backward();
            let Some(Adapter::IdLora(id)) = &layer.adapter else { unreachable!() };
            (
                vec_any(y),
                vec_any(x.grad(&grads).unwrap()),
                vec2(id.b.val().grad(&grads).unwrap()),
                vec2(id.router.val().grad(&grads).unwrap()),
            )
        };
        let (a, b) = (run(&gather), run(&explicit));
        let ctx = format!("bias {bias} rank_boost {rank_boost} p {p:?}");
        assert!(rel_err(&a.0, &b.0) < 1e-6, "forward {ctx}: {}", rel_err(&a.0, &b.0));
        assert!(rel_err(&a.1, &b.1) < 1e-6, "grad x {ctx}");
        assert!(rel_err(&a.2, &b.2) < 1e-6, "grad B {ctx}");
        assert!(rel_err(&a.3, &b.3) < 1e-6, "grad router {ctx}");
        assert!(a.2.iter().any(|v| v.abs() > 1e-3), "the B gradient must not be trivially zero");
    }
}

/// The inference path on the CPU backend (router, gather and scale fused per token) against the
/// explicit bases composed from burn operations, at a width that fills whole vector chunks.
#[test]
fn fused_inference_path_equals_explicit_bases() {
    let device = Device::flex();
    for (bias, rank_boost, p) in [(false, true, None), (true, true, Some(2)), (true, false, None)] {
        let mut c = cfg(MethodKind::IdLora, 5);
        c.k = 4;
        c.p = p;
        c.rank_boost = rank_boost;
        let s = sets(40, 4, 5, 7);
        let fused = randomized(AdaptedLinear::new("f", base(37, 40, bias, &device), &c, Some(&s)).unwrap());
        let mut explicit = fused.clone();
        if let Some(Adapter::IdLora(id)) = explicit.adapter.as_mut() {
            id.basis = BasisPath::Explicit;
        }
        let x = Tensor::<3>::random([3, 7, 37], Distribution::Normal(0.0, 1.0), &device);
        let (a, b) = (vec_any(fused.forward(x.clone())), vec_any(explicit.forward(x.clone())));
        let base_only = vec_any(fused.base.forward(x));
        assert!(rel_err(&a, &b) < 1e-5, "bias {bias} rank_boost {rank_boost}: {}", rel_err(&a, &b));
        assert!(rel_err(&a, &base_only) > 1e-3, "the update must not vanish");
    }
}

/// Central finite differences of `sum(y * g)` with respect to every trainable tensor, compared
/// with autodiff. DoRA's `A` and `B` are excluded: DoRA detaches the weight norm by design, so its
/// gradient is not the derivative of its output (checked against PEFT instead).
#[test]
fn gradients_match_finite_differences() {
    let device = device();
    for (c, s) in all_methods(6) {
        let layer = randomized(AdaptedLinear::new("fd", base(5, 6, true, &device), &c, s.as_ref()).unwrap());
        let x = Tensor::<2>::random([3, 5], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
        let loss = |l: &AdaptedLinear| -> f64 {
            let y = l.valid().forward(x.clone().detach());
            let v = vec2(y);
            let gv = vec2(g.clone());
            v.iter().zip(&gv).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        let y = layer.forward(x.clone());
        let grads = (y * g.clone()).sum().backward();

        // Every trainable tensor, with a way to rebuild the layer with it perturbed.
        struct Visit(Vec<(String, usize, Vec<f32>)>, Vec<String>);
        impl burn::module::ModuleVisitor for Visit {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.1.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push((self.1.join("."), param.shape().num_elements(), vec_any(param.val())));
            }
        }
        let adapter = layer.adapter.clone().unwrap();
        let mut v = Visit(Vec::new(), Vec::new());
        adapter.visit(&mut v);
        // Gradients in the same order.
        struct Grads<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for Grads<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.1.push(param.val().grad(self.0).map(vec_any).unwrap_or_default());
            }
        }
        let mut gs = Grads(&grads, Vec::new());
        adapter.visit(&mut gs);
        for (pi, (path, _shape, values)) in v.0.iter().enumerate() {
            if c.kind == MethodKind::Dora && path.contains("lora") {
                continue;
            }
            let analytic = &gs.1[pi];
            assert_eq!(analytic.len(), values.len(), "{:?} {path}: no gradient", c.kind);
            for idx in 0..values.len() {
                let eps = 1e-2f32;
                let perturb = |delta: f32| {
                    struct Set(usize, usize, usize, f32);
                    impl ModuleMapper for Set {
                        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                            let me = self.0 == self.1;
                            self.1 += 1;
                            if !me {
                                return param;
                            }
                            let (idx, delta) = (self.2, self.3);
                            param.map(|t| {
                                let shape = t.shape();
                                let device = t.device();
                                let mut data = vec_any(t);
                                data[idx] += delta;
                                Tensor::from_data(TensorData::new(data, shape), &device)
                            })
                        }
                    }
                    let mut l = layer.clone();
                    l.adapter = l.adapter.map(|a| a.map(&mut Set(pi, 0, idx, delta)));
                    loss(&l)
                };
                let fd = (perturb(eps) - perturb(-eps)) / (2.0 * eps as f64);
                let an = analytic[idx] as f64;
                assert!(
                    (fd - an).abs() <= 2e-3 * (1.0 + an.abs()),
                    "{:?} {path}[{idx}]: autodiff {an} vs finite differences {fd}",
                    c.kind
                );
            }
        }
    }
}

#[test]
fn router_weights_sum_to_one() {
    let device = Device::flex();
    for (c, s) in all_methods(8) {
        let layer = randomized(AdaptedLinear::new("r", base(6, 8, false, &device), &c, s.as_ref()).unwrap());
        let x = Tensor::<2>::random([7, 6], Distribution::Normal(0.0, 3.0), &device);
        match layer.router_weights(x) {
            Some(w) => {
                let [n, e] = w.dims();
                let v = vec2(w);
                for row in v.chunks(e) {
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-6, "{:?}: a row sums to {sum}", c.kind);
                    assert!(row.iter().all(|&p| p > 0.0));
                }
                assert_eq!(n, 7);
            }
            None => assert!(matches!(c.kind, MethodKind::Lora | MethodKind::Dora)),
        }
    }
}

/// d_in = 2, d_out = 4, k = 2 clusters of r = 1 row: S_1 = {0}, S_2 = {3}, p = 2. A zero router
/// gives w = (1/2, 1/2). B is [d_out / p, k r / p] = [2, 1] (out x in).
#[test]
fn rank_boosting_hand_computed_case() {
    let device = Device::flex();
    let w0 = [[1.0f32, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]; // [d_in, d_out]
    let weight = Tensor::<2>::from_data(TensorData::new(w0.concat(), [2, 4]), &device);
    let lin = Linear { weight: Param::from_tensor(weight), bias: None };
    let mut c = cfg(MethodKind::IdLora, 1);
    c.k = 2;
    c.alpha = 1.0;
    let s = IndexSets::new(vec![vec![0], vec![3]]).unwrap();
    let mut layer = AdaptedLinear::new("hand", lin, &c, Some(&s)).unwrap();
    let Some(Adapter::IdLora(id)) = layer.adapter.as_mut() else { unreachable!() };
    assert_eq!(id.b.dims(), [1, 2], "B is stored input-major: [k r / p, d_out / p]");
    id.b = Param::from_tensor(Tensor::from_data(TensorData::new(vec![10.0f32, 100.0], [1, 2]), &device));
    id.router = Param::from_tensor(Tensor::zeros([2, 2], &device));
    // x = (1, 2): W0 x = (2, 0, 3, 8); u_1 = w_1 * 2 = 1, u_2 = w_2 * 8 = 4.
    // Output delta = [B u_1; B u_2] = (10, 100, 40, 400), scale alpha / r = 1.
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device);
    let y = vec2(layer.forward(x));
    assert_eq!(y, vec![2.0 + 10.0, 0.0 + 100.0, 3.0 + 40.0, 8.0 + 400.0]);
}

#[test]
fn invalid_settings_are_errors_naming_the_layer() {
    let device = Device::flex();
    let mut c = cfg(MethodKind::IdLora, 3);
    c.k = 2;
    c.p = Some(4); // 4 does not divide k r = 6
    let err = AdaptedLinear::new(
        "model.layers.0.mlp.up_proj",
        base(4, 8, false, &device),
        &c,
        Some(&sets(8, 2, 3, 0)),
    )
    .unwrap_err();
    assert!(
        matches!(&err, AdapterError::InvalidConfig { layer, .. } if layer == "model.layers.0.mlp.up_proj"),
        "{err}"
    );
    assert!(err.to_string().contains("p = 4"), "{err}");
    c.p = None;
    let err = AdaptedLinear::new("v", base(4, 8, false, &device), &c, None).unwrap_err();
    assert!(err.to_string().contains("index sets"), "{err}");
    let err = AdaptedLinear::new("v", base(4, 8, false, &device), &c, Some(&sets(8, 2, 2, 0))).unwrap_err();
    assert!(err.to_string().contains("r = 3"), "{err}");
    let out_of_range = IndexSets::new(vec![vec![0, 1, 2], vec![3, 4, 9]]).unwrap();
    let err = AdaptedLinear::new("v", base(4, 8, false, &device), &c, Some(&out_of_range)).unwrap_err();
    assert!(err.to_string().contains("row 9"), "{err}");
    let mut z = cfg(MethodKind::Lora, 0);
    z.r = 0;
    assert!(
        AdaptedLinear::new("z", base(4, 8, false, &device), &z, None)
            .unwrap_err()
            .to_string()
            .contains("rank")
    );
    let mut d = cfg(MethodKind::Lora, 2);
    d.dropout = 1.0;
    assert!(AdaptedLinear::new("d", base(4, 8, false, &device), &d, None).is_err());
}

#[test]
fn merge_then_forward_equals_unmerged_and_unmerge_restores_the_base() {
    let device = Device::flex();
    for kind in [MethodKind::Lora, MethodKind::Dora] {
        let layer =
            randomized(AdaptedLinear::new("m", base(6, 5, true, &device), &cfg(kind, 2), None).unwrap());
        let w0 = vec2(layer.base.weight.val());
        let x = Tensor::<3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device);
        let y = vec_any(layer.forward(x.clone()));
        let merged = layer.merge().unwrap();
        assert!(merged.merged);
        let ym = vec_any(merged.forward(x));
        assert!(rel_err(&ym, &y) < 1e-5, "{kind:?} merged differs: {}", rel_err(&ym, &y));
        assert!(rel_err(&vec2(merged.base.weight.val()), &w0) > 1e-3, "merge must change the weight");
        let merged = merged.merge().map(|_| ()).unwrap_err();
        assert!(merged.to_string().contains("already merged"));
    }
    for kind in [MethodKind::Lora, MethodKind::Dora] {
        let layer =
            randomized(AdaptedLinear::new("m", base(6, 5, false, &device), &cfg(kind, 2), None).unwrap());
        let w0 = vec2(layer.base.weight.val());
        let back = layer.merge().unwrap().unmerge().unwrap();
        assert!(!back.merged);
        assert!(rel_err(&vec2(back.base.weight.val()), &w0) < 1e-5, "{kind:?} unmerge");
    }
    for (c, s) in
        all_methods(8).into_iter().filter(|(c, _)| !matches!(c.kind, MethodKind::Lora | MethodKind::Dora))
    {
        let layer = AdaptedLinear::new("routed", base(6, 8, false, &device), &c, s.as_ref()).unwrap();
        let err = layer.merge().unwrap_err();
        assert!(matches!(err, AdapterError::NotMergeable { .. }), "{:?}: {err}", c.kind);
        assert!(err.to_string().contains("router"), "{err}");
    }
}

#[test]
fn base_is_frozen_and_adapter_trainable() {
    let device = device();
    for (c, s) in all_methods(8).into_iter().chain([(MethodConfig::new(MethodKind::Full, 1), None)]) {
        let layer = randomized(AdaptedLinear::new("f", base(6, 8, true, &device), &c, s.as_ref()).unwrap());
        let x = Tensor::<2>::random([3, 6], Distribution::Normal(0.0, 1.0), &device);
        let grads = layer.forward(x).sum().backward();
        let base_grad = layer.base.weight.val().grad(&grads);
        let bias_grad = layer.base.bias.as_ref().unwrap().val().grad(&grads);
        if c.kind == MethodKind::Full {
            assert!(base_grad.is_some() && bias_grad.is_some(), "full fine-tuning trains the base");
            assert_eq!(layer.trainable_params(), 6 * 8 + 8);
        } else {
            assert!(base_grad.is_none() && bias_grad.is_none(), "{:?}: the base must stay frozen", c.kind);
            assert_eq!(layer.trainable_params(), layer_params(&c, 6, 8).unwrap(), "{:?}", c.kind);
        }
    }
}

#[test]
fn peft_lora_and_dora_match_peft_outputs_and_gradients() {
    let device = device();
    for kind in ["lora", "dora"] {
        let file = AdapterFile::load(&fixtures().join(format!("peft_{kind}"))).unwrap();
        assert!(file.warnings.is_empty(), "PEFT's own keys are known: {:?}", file.warnings);
        let bytes = std::fs::read(fixtures().join(format!("{kind}_reference.safetensors"))).unwrap();
        let reference = SafeTensors::deserialize(&bytes).unwrap();
        let get = |key: &str| -> (Vec<usize>, Vec<f32>) {
            let v = reference.tensor(key).unwrap();
            (
                v.shape().to_vec(),
                v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            )
        };
        let names = file.modules();
        assert_eq!(names.len(), 3);
        for name in &names {
            let lin =
                common::base::base_linear(&fixtures().join("tiny_llama/model.safetensors"), name, &device)
                    .unwrap();
            let (w_shape, w) = get(&format!("{name}.base_weight"));
            assert_eq!(vec2(lin.weight.val().transpose()), w, "fixture base weight");
            let layer = file.apply(name, lin).unwrap();
            assert_eq!(layer.kind(), if kind == "lora" { MethodKind::Lora } else { MethodKind::Dora });
            let (x_shape, x) = get(&format!("{name}.x"));
            let x = Tensor::<3>::from_data(TensorData::new(x, [x_shape[0], x_shape[1], x_shape[2]]), &device)
                .require_grad();
            let (_, g) = get(&format!("{name}.g"));
            let g = Tensor::<3>::from_data(TensorData::new(g, [x_shape[0], x_shape[1], w_shape[0]]), &device);
            let y = layer.forward(x.clone());
            let grads = (y.clone() * g).sum().backward();
            let check = |what: &str, got: Vec<f32>, key: &str, tol: f32| {
                let (_, want) = get(key);
                let e = rel_err(&got, &want);
                assert!(e < tol, "{kind} {name} {what}: relative error {e}");
            };
            check("output", vec_any(y), &format!("{name}.y"), 1e-5);
            check("grad x", vec_any(x.grad(&grads).unwrap()), &format!("{name}.grad_x"), 1e-5);
            let (a, b, m) = match layer.adapter.as_ref().unwrap() {
                Adapter::Lora(l) => (l.a.val(), l.b.val(), None),
                Adapter::Dora(d) => (d.lora.a.val(), d.lora.b.val(), Some(d.magnitude.val())),
                _ => unreachable!(),
            };
            // Gradients are input-major here, out-major in PEFT.
            check("grad A", vec2(a.grad(&grads).unwrap().transpose()), &format!("{name}.grad_lora_A"), 1e-5);
            check("grad B", vec2(b.grad(&grads).unwrap().transpose()), &format!("{name}.grad_lora_B"), 1e-5);
            if let Some(m) = m {
                check(
                    "grad m",
                    vec_any(m.grad(&grads).unwrap()),
                    &format!("{name}.grad_lora_magnitude_vector"),
                    1e-5,
                );
            }
        }
    }
}

/// The `ours_*` folders were written by `examples/resave_peft.rs` and proven to load in PEFT with
/// identical outputs by `make_peft_fixtures.py`; the code must still write exactly them.
#[test]
fn saved_adapter_matches_the_folder_peft_was_shown_to_load() {
    let device = Device::flex();
    for kind in ["lora", "dora"] {
        let file = AdapterFile::load(&fixtures().join(format!("peft_{kind}"))).unwrap();
        let layers: Vec<_> = file
            .modules()
            .into_iter()
            .map(|n| {
                let lin =
                    common::base::base_linear(&fixtures().join("tiny_llama/model.safetensors"), &n, &device);
                file.apply(&n, lin.unwrap()).unwrap()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        AdapterFile::from_layers(file.config.clone(), &layers).unwrap().save(dir.path()).unwrap();
        let ours = AdapterFile::load(dir.path()).unwrap();
        let committed = AdapterFile::load(&fixtures().join(format!("ours_{kind}"))).unwrap();
        assert_eq!(ours.tensors, committed.tensors, "{kind}: tensors differ from the PEFT-verified fixture");
        assert_eq!(ours.config, committed.config);
        let json = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap()).unwrap()
        };
        assert_eq!(json(dir.path()), json(&fixtures().join(format!("ours_{kind}"))));
        // And the tensors are PEFT's own, key for key.
        assert_eq!(ours.tensors, file.tensors, "{kind}: PEFT keys or values not preserved");
    }
}

#[test]
fn every_method_round_trips_through_files() {
    let device = Device::flex();
    for (c, s) in all_methods(8) {
        let layers: Vec<_> = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
            .iter()
            .map(|n| randomized(AdaptedLinear::new(n, base(6, 8, true, &device), &c, s.as_ref()).unwrap()))
            .collect();
        let config = idlora_adapter::AdapterConfig::new(c.clone(), vec!["q_proj".into(), "down_proj".into()]);
        let dir = tempfile::tempdir().unwrap();
        AdapterFile::from_layers(config, &layers).unwrap().save(dir.path()).unwrap();
        let file = AdapterFile::load(dir.path()).unwrap();
        assert!(file.warnings.is_empty(), "{:?}", file.warnings);
        assert_eq!(file.config.method.kind, c.kind);
        let x = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device);
        for layer in &layers {
            let loaded = file.apply(&layer.name, layer.base.clone()).unwrap();
            let (a, b) = (vec2(layer.forward(x.clone())), vec2(loaded.forward(x.clone())));
            assert_eq!(a, b, "{:?} {} differs after save/load", c.kind, layer.name);
        }
        file.check_all_used(&layers.iter().map(|l| l.name.clone()).collect()).unwrap();
        let err = file.check_all_used(&[layers[0].name.clone()].into_iter().collect()).unwrap_err();
        assert!(err.to_string().contains("down_proj"), "{err}");
    }
}

#[test]
fn bad_adapter_files_are_errors_naming_the_key_or_file() {
    let device = Device::flex();
    let src = fixtures().join("peft_lora");
    let copy = |dir: &Path| {
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    };
    let edit_config = |dir: &Path, f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let p = dir.join("adapter_config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(v.as_object_mut().unwrap());
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    };
    let q = "model.layers.0.self_attn.q_proj";
    let qbase =
        || common::base::base_linear(&fixtures().join("tiny_llama/model.safetensors"), q, &device).unwrap();

    let dir = tempfile::tempdir().unwrap();
    copy(dir.path());
    edit_config(dir.path(), &|m| {
        m.insert("peft_type".into(), "IA3".into());
    });
    let err = AdapterFile::load(dir.path()).unwrap_err();
    assert!(matches!(err, AdapterError::WrongPeftType { .. }) && err.to_string().contains("IA3"), "{err}");

    copy(dir.path());
    edit_config(dir.path(), &|m| {
        m.insert("a_key_from_peft_2030".into(), 1.into());
    });
    let file = AdapterFile::load(dir.path()).unwrap();
    assert_eq!(file.warnings.len(), 1);
    assert!(file.warnings[0].contains("a_key_from_peft_2030"));

    copy(dir.path());
    edit_config(dir.path(), &|m| {
        m.insert("fan_in_fan_out".into(), true.into());
    });
    assert!(AdapterFile::load(dir.path()).unwrap_err().to_string().contains("fan_in_fan_out"));

    copy(dir.path());
    edit_config(dir.path(), &|m| {
        m.insert("r".into(), "eight".into());
    });
    assert!(AdapterFile::load(dir.path()).unwrap_err().to_string().contains("field `r`"));

    // A rank that disagrees with the tensors: the shape error names the key.
    copy(dir.path());
    edit_config(dir.path(), &|m| {
        m.insert("r".into(), 5.into());
    });
    let err = AdapterFile::load(dir.path()).unwrap().apply(q, qbase()).unwrap_err();
    assert!(
        err.to_string().contains(&format!("{q}.lora_A.weight")) && err.to_string().contains("[5, 16]"),
        "{err}"
    );

    // A module the file does not have: missing key.
    copy(dir.path());
    let err =
        AdapterFile::load(dir.path()).unwrap().apply("model.layers.0.self_attn.k_proj", qbase()).unwrap_err();
    assert!(
        matches!(&err, AdapterError::MissingKey { key, .. } if key.ends_with("k_proj.lora_A.weight")),
        "{err}"
    );

    // Truncated weights: every cut is an error naming the file, never a panic.
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        copy(dir.path());
        std::fs::write(dir.path().join("adapter_model.safetensors"), &bytes[..cut]).unwrap();
        let err = AdapterFile::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("adapter_model.safetensors"), "cut {cut}: {err}");
    }
    let err = AdapterFile::load(&dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
}

#[test]
fn host_tensor_reports_shape() {
    let t = HostTensor::I32 { shape: vec![2, 3], data: vec![0; 6] };
    assert_eq!(t.shape(), &[2, 3]);
}

#[test]
fn method_kinds_parse_by_any_spelling() {
    assert!(
        "lora".parse::<MethodKind>().is_ok()
            && "ID-LoRA".parse::<MethodKind>().unwrap() == MethodKind::IdLora
    );
    assert!("lorax".parse::<MethodKind>().unwrap_err().to_string().contains("lorax"));
}

/// Every method's forward against a per-token loop in f64 over the tensors as saved in the file
/// layout (out-major), written from the formulas of METHOD.md sections 3 and 4.
#[test]
fn forward_matches_a_per_token_loop_over_the_formulas() {
    let device = Device::flex();
    let (d_in, d_out, n) = (6, 8, 5);
    for (c, s) in all_methods(d_out) {
        let layer =
            randomized(AdaptedLinear::new("loop", base(d_in, d_out, true, &device), &c, s.as_ref()).unwrap());
        let x = Tensor::<2>::random([n, d_in], Distribution::Normal(0.0, 1.0), &device);
        let got = vec2(layer.forward(x.clone()));
        let xs: Vec<f64> = vec2(x).into_iter().map(f64::from).collect();
        let w0: Vec<f64> = vec2(layer.base.weight.val()).into_iter().map(f64::from).collect(); // [d_in, d_out]
        let bias: Vec<f64> =
            vec_any(layer.base.bias.as_ref().unwrap().val()).into_iter().map(f64::from).collect();
        let tensors: std::collections::BTreeMap<String, HostTensor> =
            idlora_adapter::peft::export(&layer).unwrap().into_iter().collect();
        let mat = |key: &str| -> (usize, usize, Vec<f64>) {
            match &tensors[key] {
                HostTensor::F32 { shape, data } => {
                    (shape[0], shape[1], data.iter().map(|&v| v as f64).collect())
                }
                HostTensor::I32 { .. } => panic!("{key} is not float"),
            }
        };
        // out-major matrix [rows, cols] times vector
        let mv = |m: &(usize, usize, Vec<f64>), v: &[f64]| -> Vec<f64> {
            (0..m.0).map(|i| (0..m.1).map(|j| m.2[i * m.1 + j] * v[j]).sum()).collect()
        };
        let softmax = |z: Vec<f64>| -> Vec<f64> {
            let mx = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        };
        let scale = c.scale();
        for t in 0..n {
            let xt = &xs[t * d_in..(t + 1) * d_in];
            let base_out: Vec<f64> =
                (0..d_out).map(|o| (0..d_in).map(|i| w0[i * d_out + o] * xt[i]).sum()).collect();
            let delta: Vec<f64> = match c.kind {
                MethodKind::Lora => mv(&mat("lora_B.weight"), &mv(&mat("lora_A.weight"), xt))
                    .iter()
                    .map(|v| v * scale)
                    .collect(),
                MethodKind::Dora => {
                    let (a, b) = (mat("lora_A.weight"), mat("lora_B.weight"));
                    let m = match &tensors["lora_magnitude_vector"] {
                        HostTensor::F32 { data, .. } => data.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                        HostTensor::I32 { .. } => unreachable!(),
                    };
                    // W' = m * (W0 + s B A) / ||W0 + s B A||_row, output row o.
                    (0..d_out)
                        .map(|o| {
                            let row: Vec<f64> = (0..d_in)
                                .map(|i| {
                                    w0[i * d_out + o]
                                        + scale
                                            * (0..c.r)
                                                .map(|q| b.2[o * c.r + q] * a.2[q * d_in + i])
                                                .sum::<f64>()
                                })
                                .collect();
                            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                            m[o] / norm * row.iter().zip(xt).map(|(w, x)| w * x).sum::<f64>() - base_out[o]
                        })
                        .collect()
                }
                MethodKind::HydraLora => {
                    let w = softmax(mv(&mat("lora_route.weight"), xt));
                    let ax = mv(&mat("lora_A.weight"), xt);
                    let mut out = vec![0.0; d_out];
                    for (j, wj) in w.iter().enumerate() {
                        for (o, v) in mv(&mat(&format!("lora_B.{j}.weight")), &ax).into_iter().enumerate() {
                            out[o] += scale * wj * v;
                        }
                    }
                    out
                }
                MethodKind::MoeLora => {
                    let w = softmax(mv(&mat("lora_route.weight"), xt));
                    let mut out = vec![0.0; d_out];
                    for (j, wj) in w.iter().enumerate() {
                        let ax = mv(&mat(&format!("lora_A.{j}.weight")), xt);
                        for (o, v) in mv(&mat(&format!("lora_B.{j}.weight")), &ax).into_iter().enumerate() {
                            out[o] += scale * wj * v;
                        }
                    }
                    out
                }
                MethodKind::IdLora => {
                    let sets = s.as_ref().unwrap();
                    let w = softmax(mv(&mat("lora_route.weight"), xt));
                    // u = [w_1 A_1 x; ...; w_k A_k x] with A_i = W0[S_i, :] (rows of the out-major W0).
                    let u: Vec<f64> = sets
                        .sets()
                        .iter()
                        .enumerate()
                        .flat_map(|(i, set)| set.iter().map(move |&row| (i, row as usize)))
                        .map(|(i, row)| w[i] * base_out[row])
                        .collect();
                    let b = mat("lora_B.weight");
                    if c.rank_boost {
                        let p = c.parts();
                        let part = u.len() / p;
                        (0..p).flat_map(|j| mv(&b, &u[j * part..(j + 1) * part])).map(|v| v * scale).collect()
                    } else {
                        let sum: Vec<f64> =
                            (0..c.r).map(|q| (0..c.k).map(|i| u[i * c.r + q]).sum()).collect();
                        mv(&b, &sum).into_iter().map(|v| v * scale).collect()
                    }
                }
                MethodKind::Full => unreachable!(),
            };
            for o in 0..d_out {
                let want = base_out[o] + bias[o] + delta[o];
                let g = got[t * d_out + o] as f64;
                assert!(
                    (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{:?} token {t} out {o}: {g} vs {want}",
                    c.kind
                );
            }
        }
    }
}

/// A base stored in bf16 multiplies in bf16: `x` rounded to bf16, the product of the rounded
/// operands (exact in f32 for one term, accumulated in f32), the result rounded to bf16, then the
/// f32 bias. The reference does exactly that with f32 arithmetic on rounded values; they agree
/// to one bf16 rounding step (2^-8 relative) where the accumulation order differs. Every method's
/// output is then within bf16 rounding of the f32 base's, and its adapter still acts in f32.
#[test]
fn a_bf16_base_multiplies_in_bf16_and_adapters_stay_f32() {
    use burn::tensor::FloatDType;
    let dev = device();
    let (d_in, d_out, n) = (24, 16, 5);
    let round = |t: Tensor<2>| t.cast(FloatDType::BF16).cast(FloatDType::F32);
    for kind in
        [MethodKind::Lora, MethodKind::Dora, MethodKind::IdLora, MethodKind::HydraLora, MethodKind::MoeLora]
    {
        let base = LinearConfig::new(d_in, d_out).with_bias(true).init(&dev);
        let mut cfg = MethodConfig::new(kind, 2);
        cfg.k = 2;
        let sets = IndexSets::new(vec![vec![0, 3], vec![5, 9]]).expect("sets");
        let f32_layer = AdaptedLinear::new("l", base.clone(), &cfg, Some(&sets)).expect("layer");
        let mut bf16_layer = f32_layer.clone();
        bf16_layer.base.weight = bf16_layer.base.weight.clone().map(|w| w.cast(FloatDType::BF16));
        let x = Tensor::<2>::random([n, d_in], Distribution::Normal(0.0, 1.0), &dev);
        let w = base.weight.val();
        let b = base.bias.as_ref().expect("bias").val().reshape([1, d_out]);
        let reference = round(round(x.clone()).matmul(round(w))) + b;
        let base_only = {
            let mut l = bf16_layer.clone();
            l.adapter = None;
            vec2(l.forward(x.clone()))
        };
        let want = vec2(reference);
        let worst = base_only
            .iter()
            .zip(&want)
            .map(|(a, r)| (a - r).abs() / r.abs().max(1e-3))
            .fold(0.0f32, f32::max);
        assert!(worst <= 2.0f32.powi(-8), "{kind:?}: base product off by {worst} (relative)");
        // With the adapter: within bf16 rounding of the f32 layer (the initial update is zero or
        // DoRA's identity, so the outputs are the base's).
        let (a, f) = (vec2(bf16_layer.forward(x.clone())), vec2(f32_layer.forward(x)));
        assert!(rel_err(&a, &f) < 1e-2, "{kind:?}: {}", rel_err(&a, &f));
        assert_eq!(bf16_layer.base.weight.val().dtype(), burn::tensor::DType::BF16);
    }
}
