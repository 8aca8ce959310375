//! Kernel timings of `idlora-cluster` (`cargo bench -p idlora-benches --bench cluster`).
//!
//! Side by side in one run: the flow solver against the LP on the same assignment problem, and our
//! k-means against linfa's unconstrained k-means on the same matrix.

#![allow(clippy::unwrap_used)] // a benchmark that fails may panic
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use idlora_cluster::distance::{DotKernel, row_sq_norms, sq_distances_with};
use idlora_cluster::flow::assign;
use idlora_cluster::lp::assign_lp;
use idlora_cluster::{KMeansConfig, RowMatrix, constrained_kmeans};
use idlora_kernels::dots::Isa;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * cols).map(|_| 0.04 * (rng.random::<f32>() - 0.5)).collect()
}

/// Costs where every point prefers cluster 0, so the minimum sizes force many moves.
fn skewed_costs(n: usize, k: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut costs = Vec::with_capacity(n * k);
    for _ in 0..n {
        let base: f64 = rng.random();
        costs.push(base);
        for _ in 1..k {
            costs.push(base + 0.5 + rng.random::<f64>());
        }
    }
    costs
}

fn assignment(c: &mut Criterion) {
    let mut g = c.benchmark_group("assignment");
    g.sample_size(10);
    for n in [200usize, 14336] {
        let k = 4;
        let costs = skewed_costs(n, k, 1);
        let min = n / 5;
        g.bench_with_input(BenchmarkId::new("flow", n), &n, |b, &n| {
            b.iter(|| assign(&costs, n, k, min, n).unwrap())
        });
        if n <= 200 {
            g.bench_with_input(BenchmarkId::new("lp-microlp", n), &n, |b, &n| {
                b.iter(|| assign_lp(&costs, n, k, min, n).unwrap())
            });
        }
    }
    g.finish();
}

fn distances(c: &mut Criterion) {
    let mut g = c.benchmark_group("sq_distances");
    g.sample_size(10);
    let (n, d) = (4096, 4096);
    let data = matrix(n, d, 2);
    let x = RowMatrix::new(&data, n, d).unwrap();
    let norms = row_sq_norms(x);
    // m = n_init * k centres: 4 (one restart), 12 (k-means++ trials), 40 (ten restarts).
    for m in [4usize, 12, 40] {
        let centers = data[..m * d].to_vec();
        // An instruction set the CPU lacks is left out (it would time matrixmultiply again).
        let here = |isa| idlora_kernels::dots::Centres::with_isa(&centers, m, d, Some(isa)).is_some();
        let kernels = [
            ("auto", DotKernel::Auto, true),
            ("avx512", DotKernel::InPlace(Isa::Avx512), here(Isa::Avx512)),
            ("avx2", DotKernel::InPlace(Isa::Avx2), here(Isa::Avx2)),
            ("matrixmultiply", DotKernel::Gemm, true),
        ];
        for (name, kernel, _) in kernels.into_iter().filter(|k| k.2) {
            g.bench_with_input(BenchmarkId::new(format!("4096x4096-{name}"), m), &m, |b, _| {
                b.iter(|| sq_distances_with(x, &norms, &centers, kernel))
            });
        }
    }
    g.finish();
}

fn kmeans(c: &mut Criterion) {
    use linfa::traits::Fit;
    let mut g = c.benchmark_group("kmeans");
    g.sample_size(10);
    let (n, d) = (2048, 256);
    let data = matrix(n, d, 3);
    let x = RowMatrix::new(&data, n, d).unwrap();
    let mut cfg = KMeansConfig::new(4, 0);
    cfg.n_init = 1;
    g.bench_function("ours-unconstrained-2048x256", |b| b.iter(|| constrained_kmeans(x, &cfg).unwrap()));
    cfg.size_min = 400;
    g.bench_function("ours-size_min400-2048x256", |b| b.iter(|| constrained_kmeans(x, &cfg).unwrap()));
    let array =
        ndarray::Array2::from_shape_vec((n, d), data.iter().map(|&v| f64::from(v)).collect()).unwrap();
    let dataset = linfa::DatasetBase::from(array);
    g.bench_function("linfa-unconstrained-2048x256", |b| {
        b.iter(|| linfa_clustering::KMeans::params(4).n_runs(1).fit(&dataset).unwrap())
    });
    g.finish();
}

criterion_group!(benches, assignment, distances, kmeans);
criterion_main!(benches);
