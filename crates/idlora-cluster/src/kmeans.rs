//! Minimum-size constrained k-means (Bradley, Bennett and Demiriz, 2000).
//!
//! Lloyd iterations whose assignment step is the exact size-constrained assignment of
//! [`crate::flow`] (or the LP of [`crate::lp`]), on exact squared Euclidean costs. Seeding is greedy
//! k-means++ (as scikit-learn does it), and every random draw comes from a ChaCha8 stream fixed by
//! `(seed, restart)`, so results are bit-identical for a given seed whatever the number of threads.
//!
//! The restarts advance in lockstep: one pass over the data computes the distances from every row
//! to the centres of *all* restarts still running (with pruning, below: all that need a full pass),
//! as one product with `n_init * k` centres, compute-bound where `n_init` separate passes with `k`
//! columns each would be bound by memory bandwidth; and
//! the assignment solves then run in parallel, one per restart. The cluster sums are updated
//! incrementally, from the rows that changed cluster only, so a late iteration that moves a few
//! rows costs no second pass over the data. Each distance is independent of the other centres in
//! the batch ([`crate::distance`]), so a restart's trajectory does not depend on its neighbours.
//!
//! Late iterations move few rows, and most rows' nearest cluster cannot have changed. With
//! [`Pruning::Bounds`] (the default) each restart keeps, per row and cluster, an interval holding
//! the Euclidean distance (Elkan's bounds, 2003): set from each exact distance, widened by each
//! centre's movement (triangle inequality), and turned into bounds on the *computed* squared
//! distance with a rigorous bound on its rounding error. A pass then computes the distances of
//! the rows whose nearest cluster the bounds leave open; the flow solver takes the others' bounds
//! and computes a row's exact distances when a bound reaches the top of one of its exchange heaps
//! ([`crate::flow`]). Every decision is the one the full cost matrix gives, so the result is bit
//! for bit that of [`Pruning::Off`] (a test pins this); only the work differs.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::distance::{DotKernel, Prepared, accumulate_row_f64, row_sq_norms, sq_dist_exact, sq_distances};
use crate::flow::{self, CostSource, check_bounds};
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

/// Whether Lloyd's passes skip the rows whose assignment distance bounds settle (module docs).
/// Both settings give bit-identical results; `Off` exists for cross-checks and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pruning {
    /// Distance bounds per row and cluster; exact distances only where they are needed.
    #[default]
    Bounds,
    /// Every distance at every iteration.
    Off,
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
    /// Distance bounds that skip settled rows (flow solver only; the LP reads every cost).
    #[serde(default)]
    pub pruning: Pruning,
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
            pruning: Pruning::Bounds,
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
    let mut runs = seed_restarts(x, &norms, cfg);
    lloyd(x, &norms, cfg, size_max, tol, &mut runs)?;
    // The restarts are ranked by the inertia their sums give in O(n + k d); the exact pass over the
    // data (O(n d) each) runs only for those within a rounding margin of the best.
    let quick: Vec<f64> = runs.iter().map(|run| run.quick_inertia(&norms)).collect();
    let lowest = quick.iter().copied().fold(f64::INFINITY, f64::min);
    let margin = 1e-6 * lowest.abs() + f64::MIN_POSITIVE;
    let finished: Vec<Clustering> = runs
        .into_par_iter()
        .zip(quick)
        // A NaN sum (non-finite data) is not ranked away: its exact pass decides.
        .filter(|(_, q)| q.is_nan() || *q <= lowest + margin)
        .map(|(run, _)| run.finish(x))
        .collect();
    let mut best: Option<Clustering> = None;
    for run in finished {
        // Strictly lower only: ties keep the earlier restart.
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.ok_or(ClusterError::InvalidSetting { name: "n_init", reason: "no restart ran".into() })
}

fn mean_column_variance(x: RowMatrix<'_>) -> f64 {
    let (n, d) = (x.rows(), x.cols());
    // Column sums and sums of squares per fixed chunk of rows, in parallel, then added in chunk
    // order: the same grouping on any number of threads.
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..n.div_ceil(REDUCE_CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut mean = vec![0.0f64; d];
            let mut sq = vec![0.0f64; d];
            for i in c * REDUCE_CHUNK..((c + 1) * REDUCE_CHUNK).min(n) {
                for ((m, s), &v) in mean.iter_mut().zip(sq.iter_mut()).zip(x.row(i)) {
                    *m += f64::from(v);
                    *s += f64::from(v) * f64::from(v);
                }
            }
            (mean, sq)
        })
        .collect();
    let mut mean = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for (pm, ps) in partials {
        mean.iter_mut().zip(&pm).for_each(|(a, b)| *a += b);
        sq.iter_mut().zip(&ps).for_each(|(a, b)| *a += b);
    }
    let n = n as f64;
    mean.iter().zip(&sq).map(|(m, s)| (s / n - (m / n) * (m / n)).max(0.0)).sum::<f64>() / d as f64
}

/// Where a restart stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Still iterating.
    Running,
    /// Stopped on a small centre shift: the labels predate the last centre update, so one more
    /// assignment to the final centres follows.
    NeedsFinalAssignment,
    /// Labels are the assignment to the current centres, and the centres their means.
    Done,
}

/// One k-means restart.
struct Restart {
    init: usize,
    centers: Vec<f32>,
    /// Empty before the first assignment.
    labels: Vec<u32>,
    /// Per-cluster sums of the member rows (`k x d`, `f64`) and member counts, kept in step with
    /// `labels` by adding and removing only the rows that move.
    sums: Vec<f64>,
    counts: Vec<usize>,
    n_iter: usize,
    phase: Phase,
    /// Bounds on the Euclidean distance from each row to each centre (`n x k`), valid for the
    /// current centres; empty until a full pass sets them (and always with pruning off).
    dist_lo: Vec<f64>,
    dist_hi: Vec<f64>,
    /// Rows whose distances the assignment passes computed, all passes together (for tests).
    rows_computed: usize,
}

/// Rows per task in the bounds' bookkeeping (a few flops per row and cluster: small tasks would
/// cost more in hand-offs than they hold).
const BOUND_CHUNK: usize = 2048;

/// Costs for the flow solver from a restart's distance bounds, exact where computed.
struct Bounded<'a> {
    x: RowMatrix<'a>,
    norms: &'a [f64],
    centres: &'a Prepared<'a>,
    k: usize,
    /// `n x k` lower bounds on the computed costs; the costs themselves where `exact`.
    lo: Vec<f64>,
    /// `n x k` upper bounds; equal to `lo` where `exact`.
    hi: Vec<f64>,
    exact: Vec<bool>,
    /// A non-finite cost came out of a distance (non-finite data).
    non_finite: Option<usize>,
}

impl Bounded<'_> {
    fn set_exact(&mut self, i: usize, costs: &[f64]) {
        let k = self.k;
        if costs.iter().any(|c| !c.is_finite()) {
            self.non_finite.get_or_insert(i);
        }
        self.lo[i * k..(i + 1) * k].copy_from_slice(costs);
        self.hi[i * k..(i + 1) * k].copy_from_slice(costs);
        self.exact[i] = true;
    }
}

impl CostSource for Bounded<'_> {
    fn exact(&self, i: usize) -> Option<&[f64]> {
        self.exact[i].then(|| &self.lo[i * self.k..(i + 1) * self.k])
    }

    fn bounds(&self, i: usize) -> (&[f64], &[f64]) {
        let k = self.k;
        (&self.lo[i * k..(i + 1) * k], &self.hi[i * k..(i + 1) * k])
    }

    fn resolve(&mut self, i: usize) {
        let mut costs = vec![0.0f64; self.k];
        self.centres.one(self.x, self.norms, i, &mut costs);
        self.set_exact(i, &costs);
    }
}

/// Above this share of rows left open by the bounds, a restart joins the shared full pass.
const PRUNED_MAX_SHARE: f64 = 0.5;

/// Narrower rows are never pruned: a row's distances then cost about what its bounds'
/// bookkeeping does (measured at 1536 x 576, `n_init` 10: 0.043 s pruned against 0.030 s
/// unpruned; at 576 x 1536 the two were even).
const PRUNED_MIN_WIDTH: usize = 1024;

/// Sets distance bounds (`dist_lo`, `dist_hi`, `n x k`) from exact computed costs (`n x k`) of
/// the rows flagged in `exact`, or of all rows.
fn set_bounds(
    (dist_lo, dist_hi): (&mut Vec<f64>, &mut Vec<f64>),
    centres: &Prepared<'_>,
    (norms, roots): (&[f64], &[f64]),
    costs: &[f64],
    exact: Option<&[bool]>,
) {
    let k = centres.len();
    let n = norms.len();
    if dist_lo.len() != n * k {
        *dist_lo = vec![0.0; n * k];
        *dist_hi = vec![f64::INFINITY; n * k];
    }
    let chunks = dist_lo.par_chunks_mut(k * BOUND_CHUNK).zip(dist_hi.par_chunks_mut(k * BOUND_CHUNK));
    chunks.enumerate().for_each(|(chunk, (lo, hi))| {
        for (r, (lo, hi)) in lo.chunks_exact_mut(k).zip(hi.chunks_exact_mut(k)).enumerate() {
            let i = chunk * BOUND_CHUNK + r;
            if exact.is_some_and(|e| !e[i]) {
                continue;
            }
            for j in 0..k {
                let (c, e) = (costs[i * k + j], centres.error_bound(norms[i], roots[i], j));
                lo[j] = (c - e).max(0.0).sqrt() * (1.0 - 1e-15);
                hi[j] = (c + e).sqrt() * (1.0 + 1e-15);
            }
        }
    });
}

impl Restart {
    /// Widens the bounds by each centre's movement from `old` to the current centres.
    fn drift_bounds(&mut self, old: &[f32]) {
        if self.dist_lo.is_empty() {
            return;
        }
        let k = self.counts.len();
        let d = old.len() / k.max(1);
        // The f64 sum of `d` squares is off by at most about `d / 8 * 2^-53` relatively (eight
        // partial sums); `1e-10` covers that for any width up to millions of columns.
        let moved: Vec<f64> = (0..k)
            .map(|j| {
                let (a, b) = (&old[j * d..(j + 1) * d], &self.centers[j * d..(j + 1) * d]);
                sq_dist_exact(a, b).sqrt() * (1.0 + 1e-10) + f64::MIN_POSITIVE
            })
            .collect();
        let chunks =
            self.dist_lo.par_chunks_mut(k * BOUND_CHUNK).zip(self.dist_hi.par_chunks_mut(k * BOUND_CHUNK));
        chunks.for_each(|(lo, hi)| {
            for (lo, hi) in lo.chunks_exact_mut(k).zip(hi.chunks_exact_mut(k)) {
                for j in 0..k {
                    lo[j] = (lo[j] - moved[j]).max(0.0);
                    hi[j] += moved[j];
                }
            }
        });
    }

    /// The assignment to the current centres from the distance bounds, computing only the
    /// distances the decisions need; `None` where the bounds leave too many rows open (or are
    /// not set), for the shared full pass.
    fn assign_pruned(
        &mut self,
        x: RowMatrix<'_>,
        (norms, roots): (&[f64], &[f64]),
        cfg: &KMeansConfig,
        size_max: usize,
    ) -> Result<Option<Vec<u32>>, ClusterError> {
        let (n, d, k) = (x.rows(), x.cols(), cfg.k);
        if self.dist_lo.len() != n * k {
            return Ok(None);
        }
        let centres = Prepared::new(&self.centers, d, DotKernel::Auto);
        let mut lo = vec![0.0f64; n * k];
        let mut hi = vec![0.0f64; n * k];
        let (dist_lo, dist_hi) = (&self.dist_lo, &self.dist_hi);
        let chunks = lo.par_chunks_mut(k * BOUND_CHUNK).zip(hi.par_chunks_mut(k * BOUND_CHUNK));
        chunks.enumerate().for_each(|(chunk, (lo, hi))| {
            for (r, (lo, hi)) in lo.chunks_exact_mut(k).zip(hi.chunks_exact_mut(k)).enumerate() {
                let i = chunk * BOUND_CHUNK + r;
                for j in 0..k {
                    let e = centres.error_bound(norms[i], roots[i], j);
                    let (a, b) = (dist_lo[i * k + j], dist_hi[i * k + j]);
                    lo[j] = a * a * (1.0 - 1e-15) - e;
                    hi[j] = b * b * (1.0 + 1e-15) + e;
                }
            }
        });
        let mut costs =
            Bounded { x, norms, centres: &centres, k, lo, hi, exact: vec![false; n], non_finite: None };
        let open: Vec<u32> = (0..n as u32)
            .into_par_iter()
            .with_min_len(BOUND_CHUNK)
            .filter(|&i| flow::nearest_by_bounds(&costs, i as usize, k).is_none())
            .collect();
        if open.len() as f64 > PRUNED_MAX_SHARE * n as f64 {
            return Ok(None);
        }
        let exact = centres.some(x, norms, &open);
        for (&i, row) in open.iter().zip(exact.chunks_exact(k)) {
            costs.set_exact(i as usize, row);
        }
        let labels = flow::solve(&mut costs, n, k, cfg.size_min, size_max)?;
        if let Some(i) = costs.non_finite {
            return Err(ClusterError::InvalidSetting {
                name: "costs",
                reason: format!("non-finite cost for point {i}"),
            });
        }
        let Bounded { lo, exact, .. } = costs;
        self.rows_computed += exact.iter().filter(|&&e| e).count();
        set_bounds((&mut self.dist_lo, &mut self.dist_hi), &centres, (norms, roots), &lo, Some(&exact));
        Ok(Some(labels))
    }

    /// Re-labels the restart and updates its sums; returns how many rows moved.
    fn relabel(&mut self, x: RowMatrix<'_>, labels: Vec<u32>) -> usize {
        let d = x.cols();
        if self.labels.is_empty() {
            let (sums, counts) = cluster_sums(x, &labels, self.counts.len());
            self.sums = sums;
            self.counts = counts;
            self.labels = labels;
            return x.rows();
        }
        let mut moved = 0;
        // Point order, one thread: the sums see the same updates in the same order on any machine.
        for (i, (&old, &new)) in self.labels.iter().zip(&labels).enumerate() {
            if old != new {
                let (old, new) = (old as usize, new as usize);
                accumulate_row_f64(&mut self.sums[old * d..(old + 1) * d], x.row(i), -1.0);
                accumulate_row_f64(&mut self.sums[new * d..(new + 1) * d], x.row(i), 1.0);
                self.counts[old] -= 1;
                self.counts[new] += 1;
                moved += 1;
            }
        }
        self.labels = labels;
        moved
    }

    /// The cluster means; an empty cluster keeps its previous centre.
    fn means(&self) -> Vec<f32> {
        means_from_sums(&self.sums, &self.counts, &self.centers)
    }

    /// `sum_j (sum_{i in S_j} ||x_i||^2 - ||s_j||^2 / |S_j|)`: the inertia against the exact
    /// cluster means, from the member sums `s_j` and the rows' squared norms, in `f64`. It agrees
    /// with [`inertia`] to rounding (which measures against the `f32` centres), enough to rank
    /// restarts; the winner's inertia is still computed exactly.
    fn quick_inertia(&self, norms: &[f64]) -> f64 {
        let k = self.counts.len();
        let mut member_norms = vec![0.0f64; k];
        for (&l, &n) in self.labels.iter().zip(norms) {
            member_norms[l as usize] += n;
        }
        let d = self.sums.len() / k.max(1);
        (0..k)
            .filter(|&j| self.counts[j] > 0)
            .map(|j| {
                let s = &self.sums[j * d..(j + 1) * d];
                member_norms[j] - s.iter().map(|v| v * v).sum::<f64>() / self.counts[j] as f64
            })
            .sum()
    }

    fn finish(self, x: RowMatrix<'_>) -> Clustering {
        let inertia = inertia(x, &self.labels, &self.centers);
        Clustering {
            labels: self.labels,
            centroids: self.centers,
            dim: x.cols(),
            sizes: self.counts,
            inertia,
            n_iter: self.n_iter,
            best_init: self.init,
        }
    }
}

/// Distances from every row to `k` centres per restart, one pass for all restarts: `out[r]` is the
/// `n x k` cost matrix of the restart whose centres are `centers[r]`.
fn batched_costs(x: RowMatrix<'_>, norms: &[f64], k: usize, centers: &[&[f32]]) -> Vec<Vec<f64>> {
    let m = centers.len() * k;
    let all = sq_distances(x, norms, &centers.concat());
    (0..centers.len())
        .into_par_iter()
        .map(|r| all.chunks_exact(m).flat_map(|row| row[r * k..(r + 1) * k].iter().copied()).collect())
        .collect()
}

fn solve_assignment(
    costs: &[f64],
    n: usize,
    cfg: &KMeansConfig,
    size_max: usize,
) -> Result<Vec<u32>, ClusterError> {
    Ok(match cfg.solver {
        AssignmentSolver::Flow => flow::assign(costs, n, cfg.k, cfg.size_min, size_max)?.labels,
        AssignmentSolver::Lp => lp::assign_lp(costs, n, cfg.k, cfg.size_min, size_max)?.assignment.labels,
    })
}

/// The assignment of every restart in `runs` to its current centres: from the distance bounds
/// where they settle enough rows, the others through one shared full pass.
fn assign_all(
    x: RowMatrix<'_>,
    (norms, roots): (&[f64], &[f64]),
    cfg: &KMeansConfig,
    size_max: usize,
    runs: &mut [&mut Restart],
) -> Result<Vec<Vec<u32>>, ClusterError> {
    let n = x.rows();
    let pruning = cfg.pruning == Pruning::Bounds
        && cfg.solver == AssignmentSolver::Flow
        && x.cols() >= PRUNED_MIN_WIDTH;
    let mut out: Vec<Option<Vec<u32>>> = if pruning {
        runs.par_iter_mut()
            .map(|run| run.assign_pruned(x, (norms, roots), cfg, size_max))
            .collect::<Result<_, _>>()?
    } else {
        vec![None; runs.len()]
    };
    let mut full: Vec<(&mut &mut Restart, &mut Option<Vec<u32>>)> =
        runs.iter_mut().zip(out.iter_mut()).filter(|(_, o)| o.is_none()).collect();
    if !full.is_empty() {
        let centers: Vec<&[f32]> = full.iter().map(|(run, _)| run.centers.as_slice()).collect();
        let costs = batched_costs(x, norms, cfg.k, &centers);
        full.par_iter_mut().zip(costs).try_for_each(|((run, out), costs)| -> Result<(), ClusterError> {
            let labels = solve_assignment(&costs, n, cfg, size_max)?;
            run.rows_computed += n;
            if pruning {
                let centres = Prepared::new(&run.centers, x.cols(), DotKernel::Auto);
                set_bounds((&mut run.dist_lo, &mut run.dist_hi), &centres, (norms, roots), &costs, None);
            }
            **out = Some(labels);
            Ok(())
        })?;
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// Lloyd iterations of every restart in lockstep, then the final assignment of those that stopped
/// on the tolerance (one more shared pass).
fn lloyd(
    x: RowMatrix<'_>,
    norms: &[f64],
    cfg: &KMeansConfig,
    size_max: usize,
    tol: f64,
    runs: &mut [Restart],
) -> Result<(), ClusterError> {
    // Row norms, for the distance bounds' rounding margins.
    let roots: Vec<f64> = norms.iter().map(|v| v.sqrt()).collect();
    for it in 1..=cfg.max_iter {
        let mut active: Vec<&mut Restart> = runs.iter_mut().filter(|r| r.phase == Phase::Running).collect();
        if active.is_empty() {
            break;
        }
        let labels = assign_all(x, (norms, &roots), cfg, size_max, &mut active)?;
        active.par_iter_mut().zip(labels).try_for_each(|(run, labels)| -> Result<(), ClusterError> {
            run.n_iter = it;
            let moved = run.relabel(x, labels);
            let new_centers = run.means();
            let shift: f64 = run
                .centers
                .iter()
                .zip(&new_centers)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            let old = std::mem::replace(&mut run.centers, new_centers);
            run.drift_bounds(&old);
            // No row moved: the centres are the means of labels that are already the assignment
            // to them, a fixed point. Otherwise a small shift ends the run but leaves the labels
            // one update behind.
            if moved == 0 && it > 1 {
                run.phase = Phase::Done;
            } else if shift <= tol || it == cfg.max_iter {
                run.phase = Phase::NeedsFinalAssignment;
            }
            Ok(())
        })?;
    }
    // Final assignment to the final centres, then the centres become the means of that
    // assignment (which can only lower the inertia), so labels and centroids are consistent.
    let mut pending: Vec<&mut Restart> = runs.iter_mut().filter(|r| r.phase != Phase::Done).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let labels = assign_all(x, (norms, &roots), cfg, size_max, &mut pending)?;
    pending.par_iter_mut().zip(labels).try_for_each(|(run, labels)| -> Result<(), ClusterError> {
        run.relabel(x, labels);
        run.centers = run.means();
        run.phase = Phase::Done;
        Ok(())
    })
}

/// Rows per task in the reductions; fixed so that sums are grouped identically on any thread count.
const REDUCE_CHUNK: usize = 256;

/// Per-cluster sums (`f64`) and counts of a labelling.
fn cluster_sums(x: RowMatrix<'_>, labels: &[u32], k: usize) -> (Vec<f64>, Vec<usize>) {
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
                accumulate_row_f64(&mut sums[l * d..(l + 1) * d], x.row(c * REDUCE_CHUNK + r), 1.0);
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
    (sums, counts)
}

/// Cluster means (f64 accumulation); an empty cluster keeps its previous centre.
fn means(x: RowMatrix<'_>, labels: &[u32], k: usize, previous: &[f32]) -> Vec<f32> {
    let (sums, counts) = cluster_sums(x, labels, k);
    means_from_sums(&sums, &counts, previous)
}

/// `sums / counts` per cluster (`k x d`); a cluster with no rows keeps its `previous` centre.
fn means_from_sums(sums: &[f64], counts: &[usize], previous: &[f32]) -> Vec<f32> {
    let d = previous.len() / counts.len().max(1);
    let mut out = previous.to_vec();
    for (j, &count) in counts.iter().enumerate() {
        if count > 0 {
            for p in 0..d {
                out[j * d + p] = (sums[j * d + p] / count as f64) as f32;
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

/// Greedy k-means++ for every restart, in lockstep: each new centre is the best of `2 + ln k`
/// candidates drawn with probability proportional to the squared distance to the nearest centre
/// so far. Every step's distances for all restarts come from one pass over the data.
fn seed_restarts(x: RowMatrix<'_>, norms: &[f64], cfg: &KMeansConfig) -> Vec<Restart> {
    let (n, d, k) = (x.rows(), x.cols(), cfg.k);
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut rngs: Vec<ChaCha8Rng> = (0..cfg.n_init)
        .map(|init| {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            rng.set_stream(init as u64);
            rng
        })
        .collect();
    let firsts: Vec<usize> = rngs.iter_mut().map(|rng| rng.random_range(0..n)).collect();
    let mut centers: Vec<Vec<f32>> = firsts.iter().map(|&i| x.row(i).to_vec()).collect();
    let rows: Vec<&[f32]> = firsts.iter().map(|&i| x.row(i)).collect();
    let mut closest: Vec<Vec<f64>> = batched_costs(x, norms, 1, &rows);
    let mut potential: Vec<f64> = closest.iter().map(|c| c.iter().sum()).collect();
    for _ in 1..k {
        let candidates: Vec<Vec<usize>> = rngs
            .iter_mut()
            .zip(&closest)
            .zip(&potential)
            .map(|((rng, closest), &potential)| {
                let mut cumulative = Vec::with_capacity(n);
                let mut acc = 0.0;
                for &c in closest {
                    acc += c;
                    cumulative.push(acc);
                }
                (0..trials)
                    .map(|_| {
                        let target = rng.random::<f64>() * potential;
                        cumulative.partition_point(|&c| c <= target).min(n - 1)
                    })
                    .collect()
            })
            .collect();
        let cand_rows: Vec<Vec<f32>> =
            candidates.iter().map(|c| c.iter().flat_map(|&i| x.row(i).iter().copied()).collect()).collect();
        let refs: Vec<&[f32]> = cand_rows.iter().map(Vec::as_slice).collect();
        let dists = batched_costs(x, norms, trials, &refs);
        closest
            .par_iter_mut()
            .zip(potential.par_iter_mut())
            .zip(centers.par_iter_mut())
            .zip(dists.par_iter().zip(&candidates))
            .for_each(|(((closest, potential), centers), (dist, candidates))| {
                let mut best: Option<(f64, usize)> = None;
                for t in 0..trials {
                    let pot: f64 = (0..n).map(|i| closest[i].min(dist[i * trials + t])).sum();
                    if best.is_none_or(|(b, _)| pot < b) {
                        best = Some((pot, t));
                    }
                }
                let (pot, t) = best.unwrap_or((*potential, 0));
                for i in 0..n {
                    closest[i] = closest[i].min(dist[i * trials + t]);
                }
                *potential = pot;
                centers.extend_from_slice(x.row(candidates[t]));
            });
    }
    centers
        .into_iter()
        .enumerate()
        .map(|(init, centers)| {
            debug_assert_eq!(centers.len(), k * d);
            Restart {
                init,
                centers,
                labels: Vec::new(),
                sums: Vec::new(),
                counts: vec![0; k],
                n_iter: 0,
                phase: Phase::Running,
                dist_lo: Vec::new(),
                dist_hi: Vec::new(),
                rows_computed: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn the_winner_is_the_restart_of_lowest_exact_inertia() {
        // Offset blobs (a large common mean makes the sums' formula cancel the most), many
        // restarts: the restarts' exact inertias, computed here for every restart, pick the same
        // winner as the ranking by sums, and its quick inertia agrees with the exact one.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (n, d, k) = (600, 24, 3);
        let data: Vec<f32> =
            (0..n * d).map(|i| 10.0 + (i / d % 5) as f32 * 0.2 + rng.random::<f32>()).collect();
        let x = RowMatrix::new(&data, n, d).unwrap();
        let mut cfg = KMeansConfig::new(k, 100);
        cfg.n_init = 8;
        let norms = row_sq_norms(x);
        let tol = cfg.tol * mean_column_variance(x);
        let mut runs = seed_restarts(x, &norms, &cfg);
        lloyd(x, &norms, &cfg, n, tol, &mut runs).unwrap();
        for run in &runs {
            let exact = inertia(x, &run.labels, &run.centers);
            let quick = run.quick_inertia(&norms);
            assert!((quick - exact).abs() <= 1e-9 * exact, "quick {quick} exact {exact}");
        }
        let all: Vec<Clustering> = runs.into_iter().map(|r| r.finish(x)).collect();
        let mut want = &all[0];
        for c in &all {
            if c.inertia < want.inertia {
                want = c;
            }
        }
        let got = constrained_kmeans(x, &cfg).unwrap();
        assert_eq!(got.best_init, want.best_init);
        assert_eq!(got.inertia.to_bits(), want.inertia.to_bits());
        assert_eq!(got.labels, want.labels);
        let distinct = all.iter().map(|c| c.inertia.to_bits()).collect::<std::collections::BTreeSet<_>>();
        assert!(distinct.len() > 1, "every restart reached the same optimum: nothing was ranked");
    }

    /// Rows near a few directions plus noise, at LLM weight scale (slow, boundary-heavy runs).
    fn low_rank_rows(seed: u64, n: usize, d: usize, offset: f32) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rank = 3;
        let v: Vec<f32> = (0..rank * d).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let u: Vec<f32> = (0..rank).map(|_| rng.random::<f32>() - 0.5).collect();
            for p in 0..d {
                let signal: f32 = (0..rank).map(|t| u[t] * v[t * d + p]).sum();
                out.push(offset + 0.04 * signal + 0.01 * (rng.random::<f32>() - 0.5));
            }
        }
        out
    }

    /// Runs Lloyd for every restart and returns them (private state included).
    fn run_restarts(x: RowMatrix<'_>, cfg: &KMeansConfig) -> Vec<Restart> {
        let norms = row_sq_norms(x);
        let tol = cfg.tol * mean_column_variance(x);
        let mut runs = seed_restarts(x, &norms, cfg);
        lloyd(x, &norms, cfg, cfg.size_max.unwrap_or(x.rows()), tol, &mut runs).unwrap();
        runs
    }

    #[test]
    fn narrow_rows_are_not_pruned() {
        let (n, d) = (300, PRUNED_MIN_WIDTH - 1);
        let data = low_rank_rows(9, n, d, 0.0);
        let x = RowMatrix::new(&data, n, d).unwrap();
        let mut cfg = KMeansConfig::new(3, 50);
        cfg.n_init = 2;
        let runs = run_restarts(x, &cfg);
        for run in &runs {
            // Every pass computed every row: n per iteration, plus the final assignment unless
            // the run ended on an unchanged labelling.
            let passes = run.rows_computed / n;
            assert_eq!(run.rows_computed % n, 0);
            assert!(
                passes == run.n_iter || passes == run.n_iter + 1,
                "{passes} passes, {} iterations",
                run.n_iter
            );
        }
    }

    #[test]
    fn pruned_passes_give_bit_identical_restarts_with_fewer_distances() {
        // Binding minimum sizes (the flow moves rows, fetching exact costs lazily), a maximum,
        // a large common offset (cancellation in the distances, wide rounding margins), several
        // restarts: every restart's labels, centres, iterations and sums must be those of the
        // unpruned run, bit for bit, while computing fewer rows' distances.
        let cases = [
            (1, 700, PRUNED_MIN_WIDTH, 4, 150, None, 0.0f32),
            (2, 900, 1100, 4, 200, Some(260), 0.0),
            (3, 640, 1030, 3, 200, None, 3.0),
            (4, 500, 1200, 2, 240, None, 0.0),
        ];
        for (seed, n, d, k, size_min, size_max, offset) in cases {
            let data = low_rank_rows(seed, n, d, offset);
            let x = RowMatrix::new(&data, n, d).unwrap();
            let mut cfg = KMeansConfig::new(k, size_min);
            cfg.size_max = size_max;
            cfg.n_init = 3;
            cfg.seed = seed;
            cfg.tol = 1e-7;
            cfg.pruning = Pruning::Off;
            let full = run_restarts(x, &cfg);
            cfg.pruning = Pruning::Bounds;
            let pruned = run_restarts(x, &cfg);
            let (mut computed_full, mut computed_pruned) = (0, 0);
            for (a, b) in full.iter().zip(&pruned) {
                assert_eq!(a.labels, b.labels, "case {seed}: labels");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.centers), bits(&b.centers), "case {seed}: centres");
                assert_eq!(a.n_iter, b.n_iter, "case {seed}: iterations");
                assert_eq!(a.counts, b.counts, "case {seed}: sizes");
                assert!(a.counts.iter().all(|&c| c >= size_min && size_max.is_none_or(|m| c <= m)));
                computed_full += a.rows_computed;
                computed_pruned += b.rows_computed;
            }
            // With a common offset the dot products' rounding margin (which grows with the norms)
            // exceeds the gaps between clusters: every row stays open, correctly.
            if offset == 0.0 {
                assert!(
                    2 * computed_pruned < computed_full,
                    "case {seed}: the bounds skipped little ({computed_pruned} of {computed_full} rows)"
                );
            }
            let off = KMeansConfig { pruning: Pruning::Off, ..cfg.clone() };
            assert_eq!(
                constrained_kmeans(x, &off).unwrap(),
                constrained_kmeans(x, &cfg).unwrap(),
                "case {seed}"
            );
        }
    }
}
