//! Exact size-constrained assignment as a min-cost flow (successive shortest paths).
//!
//! The problem: give each of `n` points one of `k` clusters, minimising the summed cost
//! `c[i, label_i]`, with every cluster's size in `[size_min, size_max]`. As a network: each point
//! supplies one unit, point `i` -> cluster `j` costs `c[i][j]`, and cluster `j` -> sink has a *lower*
//! arc (capacity `size_min`, which must fill first) and an *upper* arc (capacity
//! `size_max - size_min`, cost 0). "Must fill first" is a lexicographic cost: the lower arc costs
//! `(-1, 0)`, every other arc `(0, c)`, and costs compare on the first part, then the second.
//!
//! The point nodes never need to be visited one by one. Starting from every point at its nearest
//! cluster (optimal for those sizes: no exchange cycle has negative cost), all remaining work is
//! moving flow between the `k` cluster nodes and the sink. Moving one unit from cluster `j` to
//! cluster `l` means re-labelling the point of `j` with the smallest `c[i][l] - c[i][j]`; a
//! min-heap per ordered pair `(j, l)` gives that point. Each augmentation is then a Dijkstra over
//! `k + 1` nodes with reduced costs (node potentials keep them non-negative), so the cost is
//! `O(k^2)` per augmentation plus `O(k log n)` per moved point. Direct cluster -> sink paths carry
//! many units at once; only re-labelling paths carry one.
//!
//! This is the classic successive-shortest-path algorithm on a pseudo-flow (Ahuja, Magnanti and
//! Orlin, *Network Flows*, ch. 9), which stays optimal after each augmentation; the LP in
//! [`crate::lp`] solves the same problem independently and the tests compare the two.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::ClusterError;

/// A labelling with its total cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Cluster of each point.
    pub labels: Vec<u32>,
    /// `sum_i c[i][labels[i]]`.
    pub cost: f64,
}

/// Lexicographic arc cost: `forced` counts lower-bound arcs (negative = filling one), `c` is money.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cost {
    forced: i64,
    c: f64,
}

impl Cost {
    const ZERO: Cost = Cost { forced: 0, c: 0.0 };

    fn add(self, o: Cost) -> Cost {
        Cost { forced: self.forced + o.forced, c: self.c + o.c }
    }

    fn sub(self, o: Cost) -> Cost {
        Cost { forced: self.forced - o.forced, c: self.c - o.c }
    }

    fn cmp(&self, o: &Cost) -> Ordering {
        self.forced.cmp(&o.forced).then(self.c.total_cmp(&o.c))
    }

    /// Reduced costs are non-negative in exact arithmetic; rounding can leave `-1e-16`.
    fn clamp_rounding(self) -> Cost {
        debug_assert!(self.forced >= 0, "negative reduced cost {self:?}");
        if self.forced == 0 && self.c < 0.0 { Cost::ZERO } else { self }
    }
}

/// A heap entry: point `i`, whose move out of its cluster costs `key`, valid while `ver` is current.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: f64,
    i: u32,
    ver: u32,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed, so that `BinaryHeap` pops the smallest key (ties: smallest index).
    fn cmp(&self, o: &Self) -> Ordering {
        o.key.total_cmp(&self.key).then(o.i.cmp(&self.i)).then(o.ver.cmp(&self.ver))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arc {
    /// Re-label one point from the tail cluster to the head cluster.
    Exchange,
    /// Cluster -> sink over its lower-bound arc.
    Lower,
    /// Cluster -> sink over its upper arc.
    Upper,
}

/// Where the solver reads its costs: every cost known exactly (the public [`assign`]), or known
/// within bounds with the exact values computed on demand (k-means' pruned passes).
pub(crate) trait CostSource {
    /// Point `i`'s `k` costs, where they are known exactly.
    fn exact(&self, i: usize) -> Option<&[f64]>;
    /// Bounds `(lower, upper)` on point `i`'s `k` costs (where exact, both are the costs).
    fn bounds(&self, i: usize) -> (&[f64], &[f64]);
    /// Computes point `i`'s exact costs; [`CostSource::exact`] returns them from now on.
    fn resolve(&mut self, i: usize);
}

/// Costs all known: an `n x k` row-major matrix.
struct Dense<'a> {
    costs: &'a [f64],
    k: usize,
}

impl CostSource for Dense<'_> {
    fn exact(&self, i: usize) -> Option<&[f64]> {
        Some(&self.costs[i * self.k..(i + 1) * self.k])
    }

    fn bounds(&self, i: usize) -> (&[f64], &[f64]) {
        let row = &self.costs[i * self.k..(i + 1) * self.k];
        (row, row)
    }

    fn resolve(&mut self, _i: usize) {}
}

struct Solver<'a, C: CostSource> {
    costs: &'a mut C,
    k: usize,
    size_min: usize,
    cap_upper: usize,
    labels: Vec<u32>,
    version: Vec<u32>,
    /// `heaps[j * k + l]`: points of cluster `j` keyed by `c[i][l] - c[i][j]`.
    heaps: Vec<BinaryHeap<Entry>>,
    excess: Vec<usize>,
    lower: Vec<usize>,
    upper: Vec<usize>,
    /// Node potentials; node `k` is the sink.
    pi: Vec<Cost>,
}

/// The key of moving point `i` from cluster `j` to `l`: `c[i][l] - c[i][j]` where its costs are
/// exact, else the lower bound `lower[i][l] - upper[i][j]` (rounding is monotonic, so the
/// computed bound never exceeds the computed exact key).
fn exchange_key<C: CostSource>(costs: &C, i: usize, j: usize, l: usize) -> f64 {
    match costs.exact(i) {
        Some(c) => c[l] - c[j],
        None => {
            let (lo, hi) = costs.bounds(i);
            lo[l] - hi[j]
        }
    }
}

impl<C: CostSource> Solver<'_, C> {
    fn push_point(&mut self, i: usize) {
        let j = self.labels[i] as usize;
        for l in (0..self.k).filter(|&l| l != j) {
            let key = exchange_key(&*self.costs, i, j, l);
            self.heaps[j * self.k + l].push(Entry { key, i: i as u32, ver: self.version[i] });
        }
    }

    /// The cheapest re-labelling from `j` to `l`, dropping stale entries.
    ///
    /// An entry keyed by a bound is resolved when it comes to the top: the point's exact costs
    /// replace all its entries, and the search goes on. An exact entry on top is then the
    /// minimum over exact keys too (every other key is at most its exact value), with the same
    /// tie-break, so the solver takes the same steps as with every cost known from the start.
    fn top(&mut self, j: usize, l: usize) -> Option<Entry> {
        loop {
            let &e = self.heaps[j * self.k + l].peek()?;
            let i = e.i as usize;
            if self.version[i] != e.ver {
                self.heaps[j * self.k + l].pop();
            } else if self.costs.exact(i).is_none() {
                self.costs.resolve(i);
                self.version[i] += 1;
                self.push_point(i);
            } else {
                return Some(e);
            }
        }
    }

    fn sink_arc(&self, j: usize) -> Option<(Arc, Cost)> {
        if self.lower[j] < self.size_min {
            Some((Arc::Lower, Cost { forced: -1, c: 0.0 }))
        } else if self.upper[j] < self.cap_upper {
            Some((Arc::Upper, Cost::ZERO))
        } else {
            None
        }
    }

    /// Residual arc sink -> `j` (undoing flow into the sink), cheapest first.
    fn reverse_sink_arc(&self, j: usize) -> Option<Cost> {
        if self.upper[j] > 0 {
            Some(Cost::ZERO)
        } else if self.lower[j] > 0 {
            Some(Cost { forced: 1, c: 0.0 })
        } else {
            None
        }
    }

    /// One Dijkstra from `s` and one augmentation. Returns false if the sink is unreachable.
    fn augment(&mut self, s: usize) -> bool {
        let k = self.k;
        let t = k;
        let mut dist: Vec<Option<Cost>> = vec![None; k + 1];
        let mut done = vec![false; k + 1];
        let mut parent: Vec<Option<(usize, Arc)>> = vec![None; k + 1];
        dist[s] = Some(Cost::ZERO);
        loop {
            let mut u = None;
            for v in 0..=k {
                if let (false, Some(dv)) = (done[v], dist[v])
                    && u.is_none_or(|(_, du): (usize, Cost)| dv.cmp(&du) == Ordering::Less)
                {
                    u = Some((v, dv));
                }
            }
            let Some((u, du)) = u else { break };
            done[u] = true;
            let mut arcs: Vec<(usize, Cost, Arc)> = Vec::with_capacity(k + 1);
            if u == t {
                // Never on a path to the sink, but these arcs bound the potentials.
                arcs.extend((0..k).filter_map(|j| self.reverse_sink_arc(j).map(|c| (j, c, Arc::Upper))));
            } else {
                for l in (0..k).filter(|&l| l != u) {
                    if let Some(e) = self.top(u, l) {
                        arcs.push((l, Cost { forced: 0, c: e.key }, Arc::Exchange));
                    }
                }
                if let Some((arc, c)) = self.sink_arc(u) {
                    arcs.push((t, c, arc));
                }
            }
            for (v, arc_cost, arc) in arcs {
                let rc = arc_cost.add(self.pi[u]).sub(self.pi[v]).clamp_rounding();
                let nd = du.add(rc);
                if !done[v] && dist[v].is_none_or(|dv| nd.cmp(&dv) == Ordering::Less) {
                    dist[v] = Some(nd);
                    parent[v] = Some((u, arc));
                }
            }
        }
        if !done[t] {
            return false;
        }
        // New potentials: pi += dist (nodes not reached get the largest distance found).
        let far =
            (0..=k).filter_map(|v| dist[v].filter(|_| done[v])).max_by(|a, b| a.cmp(b)).unwrap_or(Cost::ZERO);
        for v in 0..=k {
            let dv = if done[v] { dist[v].unwrap_or(far) } else { far };
            self.pi[v] = self.pi[v].add(dv);
        }
        // Walk the path back from the sink; apply arcs last-to-first so that each heap pop sees
        // the heap as Dijkstra saw it.
        let mut path = Vec::new();
        let mut v = t;
        while let Some((u, arc)) = parent[v] {
            path.push((u, v, arc));
            v = u;
        }
        let amount = if path.len() == 1 {
            let (u, _, arc) = path[0];
            let room = match arc {
                Arc::Lower => self.size_min - self.lower[u],
                _ => self.cap_upper - self.upper[u],
            };
            room.min(self.excess[s])
        } else {
            1
        };
        for &(u, v, arc) in &path {
            match arc {
                Arc::Lower => self.lower[u] += amount,
                Arc::Upper => self.upper[u] += amount,
                Arc::Exchange => {
                    // Dijkstra used this arc, so its heap has a valid top.
                    let Some(e) = self.top(u, v) else { return false };
                    let i = e.i as usize;
                    self.labels[i] = v as u32;
                    self.version[i] += 1;
                    self.push_point(i);
                }
            }
        }
        self.excess[s] -= amount;
        true
    }
}

/// Solves the size-constrained assignment exactly.
///
/// `costs` is `n x k`, row-major; `size_max` may be `n` for no upper bound. Ties go to the lower
/// cluster index, so the result is deterministic.
///
/// ```
/// use idlora_cluster::flow::assign;
/// // Three points all nearest cluster 0; cluster 1 must take at least one.
/// let costs = [0.0, 5.0, 0.0, 2.0, 0.0, 9.0];
/// let a = assign(&costs, 3, 2, 1, 3)?;
/// assert_eq!(a.labels, [0, 1, 0]);
/// assert_eq!(a.cost, 2.0);
/// # Ok::<(), idlora_cluster::ClusterError>(())
/// ```
pub fn assign(
    costs: &[f64],
    n: usize,
    k: usize,
    size_min: usize,
    size_max: usize,
) -> Result<Assignment, ClusterError> {
    check_bounds(n, k, size_min, size_max)?;
    if costs.len() != n * k {
        return Err(ClusterError::InvalidSetting {
            name: "costs",
            reason: format!("{} values for {n} points and {k} clusters", costs.len()),
        });
    }
    if let Some(pos) = costs.iter().position(|c| !c.is_finite()) {
        return Err(ClusterError::InvalidSetting {
            name: "costs",
            reason: format!("non-finite cost for point {} and cluster {}", pos / k, pos % k),
        });
    }
    let labels = solve(&mut Dense { costs, k }, n, k, size_min, size_max)?;
    Ok(finish(costs, k, labels))
}

/// The labels of the optimal assignment for costs read through `costs`. Bounds as in
/// [`check_bounds`] are the caller's to check.
pub(crate) fn solve<C: CostSource>(
    costs: &mut C,
    n: usize,
    k: usize,
    size_min: usize,
    size_max: usize,
) -> Result<Vec<u32>, ClusterError> {
    let mut labels = Vec::with_capacity(n);
    let mut sizes = vec![0usize; k];
    for i in 0..n {
        let best = match nearest_by_bounds(&*costs, i, k) {
            Some(best) => best,
            None => {
                costs.resolve(i);
                first_min(costs.bounds(i).0)
            }
        };
        labels.push(best as u32);
        sizes[best] += 1;
    }
    if sizes.iter().all(|&s| (size_min..=size_max).contains(&s)) {
        return Ok(labels);
    }
    let mut solver = Solver {
        costs,
        k,
        size_min,
        cap_upper: size_max - size_min,
        labels,
        version: vec![0; n],
        heaps: Vec::new(),
        excess: sizes,
        lower: vec![0; k],
        upper: vec![0; k],
        // Valid initial potentials: all clusters 0, sink (-1, 0), so lower arcs reduce to 0.
        pi: (0..=k).map(|v| if v == k { Cost { forced: -1, c: 0.0 } } else { Cost::ZERO }).collect(),
    };
    let mut entries: Vec<Vec<Entry>> = vec![Vec::new(); k * k];
    for i in 0..n {
        let j = solver.labels[i] as usize;
        for l in (0..k).filter(|&l| l != j) {
            entries[j * k + l].push(Entry {
                key: exchange_key(&*solver.costs, i, j, l),
                i: i as u32,
                ver: 0,
            });
        }
    }
    solver.heaps = entries.into_iter().map(BinaryHeap::from).collect();
    while let Some(s) = solver.excess.iter().position(|&e| e > 0) {
        if !solver.augment(s) {
            // Unreachable after `check_bounds`; kept as an error rather than a panic.
            return Err(ClusterError::InvalidSetting {
                name: "size bounds",
                reason: "no feasible assignment".into(),
            });
        }
    }
    Ok(solver.labels)
}

/// Point `i`'s nearest cluster where its costs are exact (the first minimum) or where its bounds
/// prove one cluster strictly nearest; `None` where they do not.
pub(crate) fn nearest_by_bounds<C: CostSource>(costs: &C, i: usize, k: usize) -> Option<usize> {
    if let Some(row) = costs.exact(i) {
        return Some(first_min(row));
    }
    let (lo, hi) = costs.bounds(i);
    let best = first_min(hi);
    (0..k).all(|j| j == best || hi[best] < lo[j]).then_some(best)
}

/// Index of the first minimum: ties go to the lower cluster index.
fn first_min(row: &[f64]) -> usize {
    (1..row.len()).fold(0, |best, j| if row[j] < row[best] { j } else { best })
}

fn finish(costs: &[f64], k: usize, labels: Vec<u32>) -> Assignment {
    let cost = labels.iter().enumerate().map(|(i, &j)| costs[i * k + j as usize]).sum();
    Assignment { labels, cost }
}

/// Checks that `k` clusters with sizes in `[size_min, size_max]` can hold exactly `n` points.
pub fn check_bounds(n: usize, k: usize, size_min: usize, size_max: usize) -> Result<(), ClusterError> {
    if k == 0 {
        return Err(ClusterError::ZeroClusters);
    }
    if k > n {
        return Err(ClusterError::TooManyClusters { k, rows: n });
    }
    if size_max < size_min {
        return Err(ClusterError::MaxBelowMin { size_min, size_max });
    }
    if k.checked_mul(size_min).is_none_or(|total| total > n) {
        return Err(ClusterError::MinSizeInfeasible { k, size_min, rows: n });
    }
    if k.checked_mul(size_max).is_some_and(|total| total < n) {
        return Err(ClusterError::MaxSizeInfeasible { k, size_max, rows: n });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Exact costs behind bounds of random widths; `resolve` reveals them and counts.
    struct Hidden {
        k: usize,
        costs: Vec<f64>,
        lo: Vec<f64>,
        hi: Vec<f64>,
        exact: Vec<bool>,
        resolved: usize,
    }

    impl CostSource for Hidden {
        fn exact(&self, i: usize) -> Option<&[f64]> {
            self.exact[i].then(|| &self.costs[i * self.k..(i + 1) * self.k])
        }

        fn bounds(&self, i: usize) -> (&[f64], &[f64]) {
            let k = self.k;
            if self.exact[i] {
                let row = &self.costs[i * k..(i + 1) * k];
                (row, row)
            } else {
                (&self.lo[i * k..(i + 1) * k], &self.hi[i * k..(i + 1) * k])
            }
        }

        fn resolve(&mut self, i: usize) {
            assert!(!self.exact[i], "point {i} resolved twice");
            self.exact[i] = true;
            self.resolved += 1;
        }
    }

    #[test]
    fn costs_behind_bounds_give_the_labels_of_the_full_matrix() {
        // Costs on a coarse grid (many exact ties, to exercise the tie-breaks), bounds from
        // exact to loose, some points exact from the start; sizes that force many moves.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut resolved_some = false;
        for trial in 0..60 {
            let (n, k): (usize, usize) = (rng.random_range(20..300), rng.random_range(2..6));
            let costs: Vec<f64> = (0..n * k).map(|_| f64::from(rng.random_range(0..40u32)) * 0.25).collect();
            let size_min = rng.random_range(0..=n / k);
            let size_max = if trial % 3 == 0 { rng.random_range(n.div_ceil(k)..=n) } else { n };
            let width = [0.0, 0.1, 1.0, 5.0][trial % 4];
            let lo: Vec<f64> = costs.iter().map(|c| c - width * rng.random::<f64>()).collect();
            let hi: Vec<f64> = costs.iter().map(|c| c + width * rng.random::<f64>()).collect();
            let exact: Vec<bool> = (0..n).map(|_| rng.random::<f64>() < 0.2).collect();
            let want = assign(&costs, n, k, size_min, size_max).unwrap().labels;
            let mut hidden = Hidden { k, costs, lo, hi, exact, resolved: 0 };
            let got = solve(&mut hidden, n, k, size_min, size_max).unwrap();
            assert_eq!(got, want, "trial {trial}: n {n} k {k} sizes {size_min}..{size_max} width {width}");
            if width > 0.0 && hidden.resolved < n {
                resolved_some = true;
            }
        }
        assert!(resolved_some, "every point was resolved in every trial: nothing was lazy");
    }
}
