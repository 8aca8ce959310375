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

struct Solver<'a> {
    costs: &'a [f64],
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

impl Solver<'_> {
    fn cost(&self, i: usize, j: usize) -> f64 {
        self.costs[i * self.k + j]
    }

    fn push_point(&mut self, i: usize) {
        let j = self.labels[i] as usize;
        let base = self.cost(i, j);
        for l in (0..self.k).filter(|&l| l != j) {
            let key = self.cost(i, l) - base;
            self.heaps[j * self.k + l].push(Entry { key, i: i as u32, ver: self.version[i] });
        }
    }

    /// The cheapest re-labelling from `j` to `l`, dropping stale entries.
    fn top(&mut self, j: usize, l: usize) -> Option<Entry> {
        let heap = &mut self.heaps[j * self.k + l];
        while let Some(&e) = heap.peek() {
            if self.version[e.i as usize] == e.ver {
                return Some(e);
            }
            heap.pop();
        }
        None
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
    let mut labels = Vec::with_capacity(n);
    let mut sizes = vec![0usize; k];
    for row in costs.chunks_exact(k) {
        let mut best = 0;
        for j in 1..k {
            if row[j] < row[best] {
                best = j;
            }
        }
        labels.push(best as u32);
        sizes[best] += 1;
    }
    if sizes.iter().all(|&s| (size_min..=size_max).contains(&s)) {
        return Ok(finish(costs, k, labels));
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
        let base = solver.cost(i, j);
        for l in (0..k).filter(|&l| l != j) {
            entries[j * k + l].push(Entry { key: solver.cost(i, l) - base, i: i as u32, ver: 0 });
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
    Ok(finish(costs, k, solver.labels))
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
