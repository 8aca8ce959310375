//! Per-method cost of one adapted layer at LLaMA-3-8B shapes on the CPU backend (burn flex):
//! forward, and forward + backward, against the bare (frozen) base layer in the same group.
//!
//! `cargo bench -p idlora-benches --bench adapter`, then `cargo xtask bench adapter-table` turns
//! criterion's estimates into the overhead table of `docs/bench-adapter.md`.
//! `IDLORA_BENCH_QUICK=1` runs the 4096 x 4096 shape at r = 8 only.

use std::hint::black_box;
use std::time::Duration;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use idlora_adapter::{AdaptedLinear, IndexSets, MethodConfig, MethodKind};
use idlora_cluster::select::select_random;

const TOKENS: usize = 512;

fn layer(kind: Option<MethodKind>, d_in: usize, d_out: usize, r: usize, device: &Device) -> AdaptedLinear {
    device.seed(0);
    let base = LinearConfig::new(d_in, d_out).with_bias(false).init(device);
    let kind = kind.unwrap_or(MethodKind::Full);
    let cfg = MethodConfig::new(kind, r).with_dropout(0.0);
    // Random index sets cost the same as PMRC's: the forward only gathers them.
    let sets = (kind == MethodKind::IdLora).then(|| {
        let chosen = select_random(d_out, cfg.k, r, 0).expect("k r <= d_out");
        IndexSets::new(chosen.sets).expect("equal, non-empty sets")
    });
    let layer = AdaptedLinear::new("bench", base, &cfg, sets.as_ref()).expect("valid bench settings");
    // The bare base is frozen too: its backward computes the input gradient only, as in a model.
    if kind == MethodKind::Full { AdaptedLinear { base: layer.base.no_grad(), ..layer } } else { layer }
}

fn bench(c: &mut Criterion) {
    let quick = std::env::var_os("IDLORA_BENCH_QUICK").is_some();
    let shapes: &[(usize, usize)] = if quick { &[(4096, 4096)] } else { &[(4096, 4096), (4096, 14336)] };
    let ranks: &[usize] = if quick { &[8] } else { &[8, 128] };
    let methods: [(&str, Option<MethodKind>); 6] = [
        ("base", None),
        ("lora", Some(MethodKind::Lora)),
        ("dora", Some(MethodKind::Dora)),
        ("hydralora", Some(MethodKind::HydraLora)),
        ("moelora", Some(MethodKind::MoeLora)),
        ("idlora", Some(MethodKind::IdLora)),
    ];
    for &(d_in, d_out) in shapes {
        for &r in ranks {
            for backward in [false, true] {
                let pass = if backward { "fwd_bwd" } else { "fwd" };
                let mut group = c.benchmark_group(format!("adapter/{d_in}x{d_out}/r{r}/{pass}"));
                // Flat sampling: an iteration takes up to seconds here; ten of them are enough.
                group
                    .sampling_mode(SamplingMode::Flat)
                    .sample_size(10)
                    .warm_up_time(Duration::from_secs(1))
                    .measurement_time(Duration::from_secs(5));
                let device = if backward { Device::flex().autodiff() } else { Device::flex() };
                let x = Tensor::<3>::random([1, TOKENS, d_in], Distribution::Normal(0.0, 1.0), &device);
                for (name, kind) in methods {
                    let l = layer(kind, d_in, d_out, r, &device);
                    let l = if backward { l } else { l.valid() };
                    group.bench_function(BenchmarkId::from_parameter(name), |b| {
                        b.iter(|| {
                            if backward {
                                let x = x.clone().require_grad();
                                let grads = l.forward(x.clone()).sum().backward();
                                black_box(x.grad(&grads));
                            } else {
                                black_box(l.forward(x.clone()));
                            }
                            device.sync().expect("the CPU backend syncs");
                        })
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
