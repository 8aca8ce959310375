// TEMPORARY probe (not committed): one constrained k-means case, for perf.
use idlora_cluster::RowMatrix;
use idlora_cluster::kmeans::{KMeansConfig, constrained_kmeans};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn synthetic(rows: usize, cols: usize, low_rank: bool, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    if !low_rank {
        return (0..rows * cols).map(|_| 0.02 * normal()).collect();
    }
    let r = 16;
    let u: Vec<f32> = (0..rows * r).map(|_| normal()).collect();
    let v: Vec<f32> = (0..r * cols).map(|_| normal()).collect();
    let mut out = vec![0.0f32; rows * cols];
    for i in 0..rows {
        for t in 0..r {
            let a = u[i * r + t] * 0.02 / (r as f32).sqrt();
            for (o, &b) in out[i * cols..(i + 1) * cols].iter_mut().zip(&v[t * cols..(t + 1) * cols]) {
                *o += a * b;
            }
        }
    }
    for o in &mut out {
        *o += 0.005 * normal();
    }
    out
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rows: usize = a[1].parse().unwrap();
    let cols: usize = a[2].parse().unwrap();
    let low = a[3] == "low";
    let n_init: usize = a[4].parse().unwrap();
    let reps: usize = a[5].parse().unwrap();
    let data = synthetic(rows, cols, low, 1000);
    let x = RowMatrix::new(&data, rows, cols).unwrap();
    let mut cfg = KMeansConfig::new(4, 128);
    cfg.n_init = n_init;
    for _ in 0..reps {
        let t = Instant::now();
        let c = constrained_kmeans(x, &cfg).unwrap();
        println!("{:.3} s, n_iter {}, inertia {:.6e}", t.elapsed().as_secs_f64(), c.n_iter, c.inertia);
    }
}
