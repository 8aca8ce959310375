//! Minimum-size constrained k-means (Bradley, Bennett and Demiriz, 2000).
//!
//! Lloyd iterations whose assignment step is the exact size-constrained assignment of
//! [`crate::flow`] (or the LP of [`crate::lp`]), on exact squared Euclidean costs. Seeding is greedy
//! k-means++ (as scikit-learn does it), restarts run in parallel, and every random draw comes from
//! a ChaCha8 stream fixed by `(seed, restart)`, so results are bit-identical for a given seed
//! whatever the number of threads.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::{add_row_f64, row_sq_norms, sq_dist_exact, sq_distances};
use crate::flow::{self, check_bounds};
use crate::{ClusterError, RowMatrix, lp};

/// Which exact solver performs the assignment step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentSolver {
    /// Successive shortest paths over the `k` cluster nodes (fast; the default).
    #[default]
    Flow,
    /// The LP through `good_lp`'s pure-Rust solver (slow; an independent reference).
    Lp,
}

/// Settings of [`constrained_kmeans`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansConfig {
    /// Number of clusters.
    pub k: usize,
    /// Minimum rows per cluster (ID-LoRA uses the rank `r`).
    pub size_min: usize,
    /// Maximum rows per cluster, if any.
    pub size_max: Option<usize>,
    /// Restarts from independent seedings; the lowest inertia wins.
    pub n_init: usize,
    /// Lloyd iterations per restart at most.
    pub max_iter: usize,
    /// Stop when the squared centre shift is at most `tol` times the mean per-column variance
    /// (scikit-learn's convention).
    pub tol: f64,
    /// Seed of every random draw.
    pub seed: u64,
    /// Assignment solver.
    pub solver: AssignmentSolver,
}

impl KMeansConfig {
    /// `k` clusters of at least `size_min` rows, with the defaults of `k-means-constrained`
    /// (`n_init` 10, `max_iter` 300, `tol` 1e-4) and seed 0.
    pub fn new(k: usize, size_min: usize) -> Self {
        Self {
            k,
            size_min,
            size_max: None,
            n_init: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            solver: AssignmentSolver::Flow,
        }
    }
}

/// The result of [`constrained_kmeans`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clustering {
    /// Cluster of each row.
    pub labels: Vec<u32>,
    /// `k x d` centroids, row-major: the means of the final clusters.
    pub centroids: Vec<f32>,
    /// Row dimension `d`.
    pub dim: usize,
    /// Rows per cluster.
    pub sizes: Vec<usize>,
    /// `sum_i ||x_i - centroid(label_i)||^2`, accumulated exactly in `f64`.
    pub inertia: f64,
    /// Lloyd iterations run by the winning restart.
    pub n_iter: usize,
    /// Index of the winning restart.
    pub best_init: usize,
}

impl Clustering {
    /// Centroid `j`.
    pub fn centroid(&self, j: usize) -> &[f32] {
        &self.centroids[j * self.dim..(j + 1) * self.dim]
    }
}

/// Clusters the rows of `x` into `cfg.k` clusters of at least `cfg.size_min` (and at most
/// `cfg.size_max`) rows, minimising the sum of squared Euclidean distances.
///
/// ```
/// use idlora_cluster::{KMeansConfig, RowMatrix, constrained_kmeans};
/// // Five points near 0 and one near 10; every cluster must hold at least 2 points.
/// let data = [0.0f32, 0.1, 0.2, 0.3, 0.4, 10.0];
/// let x = RowMatrix::new(&data, 6, 1)?;
/// let c = constrained_kmeans(x, &KMeansConfig::new(2, 2))?;
/// assert!(c.sizes.iter().all(|&s| s >= 2));
/// assert_eq!(c.labels[4], c.labels[5]); // 0.4 joins 10.0 to meet the minimum
/// # Ok::<(), idlora_cluster::ClusterError>(())
/// ```
pub fn constrained_kmeans(x: RowMatrix<'_>, cfg: &KMeansConfig) -> Result<Clustering, ClusterError> {
    let n = x.rows();
    let size_max = cfg.size_max.unwrap_or(n);
    check_bounds(n, cfg.k, cfg.size_min, size_max)?;
    if cfg.n_init == 0 {
        return Err(ClusterError::InvalidSetting { name: "n_init", reason: "must be at least 1".into() });
    }
    if cfg.max_iter == 0 {
        return Err(ClusterError::InvalidSetting { name: "max_iter", reason: "must be at least 1".into() });
    }
    if !(cfg.tol.is_finite() && cfg.tol >= 0.0) {
        return Err(ClusterError::InvalidSetting {
            name: "tol",
            reason: format!("{} is not a finite non-negative number", cfg.tol),
        });
    }
    let norms = row_sq_norms(x);
    let tol = cfg.tol * mean_column_variance(x);
    let runs: Vec<Result<Clustering, ClusterError>> =
        (0..cfg.n_init).into_par_iter().map(|init| single_run(x, &norms, cfg, size_max, tol, init)).collect();
    let mut best: Option<Clustering> = None;
    for run in runs {
        let run = run?;
        // Strictly lower only: ties keep the earlier restart, independent of completion order.
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.ok_or(ClusterError::InvalidSetting { name: "n_init", reason: "no restart ran".into() })
}

fn mean_column_variance(x: RowMatrix<'_>) -> f64 {
    let (n, d) = (x.rows(), x.cols());
    let mut mean = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for i in 0..n {
        for (p, &v) in x.row(i).iter().enumerate() {
            mean[p] += f64::from(v);
            sq[p] += f64::from(v) * f64::from(v);
        }
    }
    let n = n as f64;
    mean.iter().zip(&sq).map(|(m, s)| (s / n - (m / n) * (m / n)).max(0.0)).sum::<f64>() / d as f64
}

fn assign(
    x: RowMatrix<'_>,
    norms: &[f64],
    centers: &[f32],
    cfg: &KMeansConfig,
    size_max: usize,
) -> Result<Vec<u32>, ClusterError> {
    let costs = sq_distances(x, norms, centers);
    let n = x.rows();
    Ok(match cfg.solver {
        AssignmentSolver::Flow => flow::assign(&costs, n, cfg.k, cfg.size_min, size_max)?.labels,
        AssignmentSolver::Lp => lp::assign_lp(&costs, n, cfg.k, cfg.size_min, size_max)?.assignment.labels,
    })
}

fn single_run(
    x: RowMatrix<'_>,
    norms: &[f64],
    cfg: &KMeansConfig,
    size_max: usize,
    tol: f64,
    init: usize,
) -> Result<Clustering, ClusterError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(init as u64);
    let mut centers = kmeans_plus_plus(x, norms, cfg.k, &mut rng);
    let mut labels: Option<Vec<u32>> = None;
    let mut n_iter = 0;
    for it in 1..=cfg.max_iter {
        n_iter = it;
        let new_labels = assign(x, norms, &centers, cfg, size_max)?;
        let new_centers = means(x, &new_labels, cfg.k, &centers);
        let shift: f64 =
            centers.iter().zip(&new_centers).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        centers = new_centers;
        let unchanged = labels.as_ref() == Some(&new_labels);
        labels = Some(new_labels);
        if unchanged || shift <= tol {
            break;
        }
    }
    // Final assignment to the final centres, then centroids as the means of that assignment
    // (which can only lower the inertia), so labels and centroids are consistent.
    let labels = assign(x, norms, &centers, cfg, size_max)?;
    let centroids = means(x, &labels, cfg.k, &centers);
    let inertia = inertia(x, &labels, &centroids);
    let mut sizes = vec![0; cfg.k];
    for &l in &labels {
        sizes[l as usize] += 1;
    }
    Ok(Clustering { labels, centroids, dim: x.cols(), sizes, inertia, n_iter, best_init: init })
}

/// Rows per task in the reductions; fixed so that sums are grouped identically on any thread count.
const REDUCE_CHUNK: usize = 256;

/// Cluster means (f64 accumulation); an empty cluster keeps its previous centre.
fn means(x: RowMatrix<'_>, labels: &[u32], k: usize, previous: &[f32]) -> Vec<f32> {
    let d = x.cols();
    let partials: Vec<(Vec<f64>, Vec<usize>)> = labels
        .par_chunks(REDUCE_CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut sums = vec![0.0f64; k * d];
            let mut counts = vec![0usize; k];
            for (r, &l) in chunk.iter().enumerate() {
                let l = l as usize;
                counts[l] += 1;
                add_row_f64(&mut sums[l * d..(l + 1) * d], x.row(c * REDUCE_CHUNK + r));
            }
            (sums, counts)
        })
        .collect();
    let mut sums = vec![0.0f64; k * d];
    let mut counts = vec![0usize; k];
    for (s, c) in partials {
        sums.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
    }
    let mut out = previous.to_vec();
    for j in 0..k {
        if counts[j] > 0 {
            for p in 0..d {
                out[j * d + p] = (sums[j * d + p] / counts[j] as f64) as f32;
            }
        }
    }
    out
}

/// `sum_i ||x_i - c_{label_i}||^2` accumulated exactly in `f64`, in a fixed order.
pub fn inertia(x: RowMatrix<'_>, labels: &[u32], centroids: &[f32]) -> f64 {
    let d = x.cols();
    let partials: Vec<f64> = labels
        .par_chunks(REDUCE_CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(r, &l)| {
                    let l = l as usize;
                    sq_dist_exact(x.row(c * REDUCE_CHUNK + r), &centroids[l * d..(l + 1) * d])
                })
                .sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}

/// Inertia of a labelling against its own cluster means: the objective that depends on the labels
/// alone, used to compare clusterings from different programs on equal terms.
pub fn labels_inertia(x: RowMatrix<'_>, labels: &[u32], k: usize) -> f64 {
    let zeros = vec![0.0f32; k * x.cols()];
    inertia(x, labels, &means(x, labels, k, &zeros))
}

/// Greedy k-means++: each new centre is the best of `2 + ln k` candidates drawn with probability
/// proportional to the squared distance to the nearest centre so far.
fn kmeans_plus_plus(x: RowMatrix<'_>, norms: &[f64], k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (n, d) = (x.rows(), x.cols());
    let trials = 2 + (k as f64).ln().floor() as usize;
    let first = rng.random_range(0..n);
    let mut centers: Vec<f32> = x.row(first).to_vec();
    let mut closest = sq_distances(x, norms, x.row(first));
    let mut potential: f64 = closest.iter().sum();
    for _ in 1..k {
        let mut cumulative = Vec::with_capacity(n);
        let mut acc = 0.0;
        for &c in &closest {
            acc += c;
            cumulative.push(acc);
        }
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                let target = rng.random::<f64>() * potential;
                cumulative.partition_point(|&c| c <= target).min(n - 1)
            })
            .collect();
        let cand_rows: Vec<f32> = candidates.iter().flat_map(|&i| x.row(i).iter().copied()).collect();
        let dist = sq_distances(x, norms, &cand_rows);
        let mut best: Option<(f64, usize)> = None;
        for t in 0..trials {
            let pot: f64 = (0..n).map(|i| closest[i].min(dist[i * trials + t])).sum();
            if best.is_none_or(|(b, _)| pot < b) {
                best = Some((pot, t));
            }
        }
        let (pot, t) = best.unwrap_or((potential, 0));
        for i in 0..n {
            closest[i] = closest[i].min(dist[i * trials + t]);
        }
        potential = pot;
        centers.extend_from_slice(x.row(candidates[t]));
    }
    debug_assert_eq!(centers.len(), k * d);
    centers
}
