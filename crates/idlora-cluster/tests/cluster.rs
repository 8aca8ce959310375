//! Integration tests of `idlora-cluster`, each against an independent reference: brute force, the
//! LP through good_lp, linfa's unconstrained k-means, or hand-computed cases.

#![allow(clippy::unwrap_used)] // test helpers may panic: that is how a test fails

use idlora_cluster::flow::assign;
use idlora_cluster::kmeans::labels_inertia;
use idlora_cluster::lp::assign_lp;
use idlora_cluster::{
    AssignmentSolver, ClusterError, KMeansConfig, PmrcConfig, RowMatrix, Selector, constrained_kmeans,
    select_bases, select_nearest, select_random, select_serial,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn feasible_bounds(rng: &mut ChaCha8Rng, n: usize, k: usize) -> (usize, usize) {
    let size_min = rng.random_range(0..=n / k);
    let size_max = if rng.random_bool(0.5) { n } else { rng.random_range(n.div_ceil(k).max(size_min)..=n) };
    (size_min, size_max)
}

fn check_sizes(labels: &[u32], k: usize, size_min: usize, size_max: usize) {
    let mut sizes = vec![0; k];
    for &l in labels {
        sizes[l as usize] += 1;
    }
    assert!(
        sizes.iter().all(|&s| (size_min..=size_max).contains(&s)),
        "sizes {sizes:?} outside [{size_min}, {size_max}]"
    );
}

#[test]
fn flow_matches_lp_on_random_instances() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..300 {
        let n = rng.random_range(2..50);
        let k = rng.random_range(1..=5.min(n));
        let (size_min, size_max) = feasible_bounds(&mut rng, n, k);
        // Every third case has small integer costs, to exercise ties.
        let costs: Vec<f64> = (0..n * k)
            .map(|_| if case % 3 == 0 { rng.random_range(0..4) as f64 } else { rng.random::<f64>() * 10.0 })
            .collect();
        let flow = assign(&costs, n, k, size_min, size_max).unwrap();
        let lp = assign_lp(&costs, n, k, size_min, size_max).unwrap();
        let scale = lp.objective.abs().max(1.0);
        assert!(
            (flow.cost - lp.objective).abs() <= 1e-9 * scale,
            "case {case}: n={n} k={k} [{size_min},{size_max}] flow {} lp {}",
            flow.cost,
            lp.objective
        );
        assert!(lp.max_fractionality < 1e-6, "case {case}: LP vertex not integral");
        check_sizes(&flow.labels, k, size_min, size_max);
        check_sizes(&lp.assignment.labels, k, size_min, size_max);
        let recomputed: f64 = flow.labels.iter().enumerate().map(|(i, &j)| costs[i * k + j as usize]).sum();
        assert_eq!(recomputed, flow.cost);
    }
}

#[test]
fn flow_matches_brute_force_on_tiny_instances() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..200 {
        let n = rng.random_range(1..8);
        let k = rng.random_range(1..=3.min(n));
        let (size_min, size_max) = feasible_bounds(&mut rng, n, k);
        let costs: Vec<f64> = (0..n * k).map(|_| rng.random::<f64>()).collect();
        let mut best = f64::INFINITY;
        for code in 0..k.pow(n as u32) {
            let mut c = code;
            let mut sizes = vec![0; k];
            let mut total = 0.0;
            for i in 0..n {
                let j = c % k;
                c /= k;
                sizes[j] += 1;
                total += costs[i * k + j];
            }
            if sizes.iter().all(|&s| (size_min..=size_max).contains(&s)) {
                best = best.min(total);
            }
        }
        let flow = assign(&costs, n, k, size_min, size_max).unwrap();
        assert!((flow.cost - best).abs() < 1e-12, "flow {} brute {best}", flow.cost);
    }
}

#[test]
fn flow_handles_large_forced_moves() {
    // Every point is nearest cluster 0; clusters 1..4 must each take 500 of 4000 points, and
    // cluster 0 may hold at most 2000: a deficit large enough to exercise many re-labellings.
    let (n, k) = (4000, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let costs: Vec<f64> = (0..n)
        .flat_map(|_| {
            let base = rng.random::<f64>();
            let mut row = vec![base];
            row.extend((1..k).map(|_| base + 1.0 + rng.random::<f64>()));
            row
        })
        .collect();
    let flow = assign(&costs, n, k, 500, 2000).unwrap();
    check_sizes(&flow.labels, k, 500, 2000);
    // Every move out of cluster 0 costs at least 1, so the optimum keeps cluster 0 at its maximum.
    assert_eq!(flow.labels.iter().filter(|&&l| l == 0).count(), 2000);
    // The objective cannot be below the unconstrained optimum.
    let unconstrained: f64 = costs.chunks(k).map(|r| r.iter().copied().fold(f64::INFINITY, f64::min)).sum();
    assert!(flow.cost >= unconstrained);
    let lp = assign_lp(&costs[..200 * k], 200, k, 25, 100).unwrap();
    let small = assign(&costs[..200 * k], 200, k, 25, 100).unwrap();
    assert!((small.cost - lp.objective).abs() < 1e-9 * lp.objective.abs().max(1.0));
}

fn blobs(seed: u64, n_per: usize, centers: &[[f32; 3]], spread: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::new();
    for c in centers {
        for _ in 0..n_per {
            for &v in c {
                data.push(v + spread * (rng.random::<f32>() - 0.5));
            }
        }
    }
    data
}

#[test]
fn kmeans_respects_sizes_and_recovers_blobs() {
    // Blobs of 30, 30 and 10 points; with size_min 20 the small blob must be topped up.
    let mut data = blobs(1, 30, &[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], 1.0);
    data.extend(blobs(2, 10, &[[0.0, 10.0, 0.0]], 1.0));
    let x = RowMatrix::new(&data, 70, 3).unwrap();
    let mut cfg = KMeansConfig::new(3, 20);
    cfg.seed = 5;
    let c = constrained_kmeans(x, &cfg).unwrap();
    check_sizes(&c.labels, 3, 20, 70);
    assert_eq!(c.sizes.iter().sum::<usize>(), 70);
    // The far blob stays whole; the small one is topped up to exactly 20 from the nearer blob 0.
    assert!(c.labels[30..60].iter().all(|&l| l == c.labels[30]));
    let small = c.labels[60];
    assert!(c.labels[60..].iter().all(|&l| l == small));
    assert_eq!(c.sizes[small as usize], 20);
    assert_eq!(c.labels[..30].iter().filter(|&&l| l == small).count(), 10);
    assert!((labels_inertia(x, &c.labels, 3) - c.inertia).abs() < 1e-9 * c.inertia);
}

#[test]
fn lp_and_flow_give_the_same_kmeans() {
    let data = blobs(4, 15, &[[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [0.0, 3.0, 3.0]], 4.0);
    let x = RowMatrix::new(&data, 45, 3).unwrap();
    let mut cfg = KMeansConfig::new(3, 12);
    cfg.n_init = 3;
    let flow = constrained_kmeans(x, &cfg).unwrap();
    cfg.solver = AssignmentSolver::Lp;
    let lp = constrained_kmeans(x, &cfg).unwrap();
    assert!((flow.inertia - lp.inertia).abs() <= 1e-9 * flow.inertia, "{} vs {}", flow.inertia, lp.inertia);
}

#[test]
fn results_are_bit_identical_across_thread_counts() {
    let data = blobs(9, 400, &[[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.5, 0.5, 0.5]], 3.0);
    let x = RowMatrix::new(&data, 1600, 3).unwrap();
    let mut cfg = KMeansConfig::new(4, 300);
    cfg.n_init = 6;
    cfg.seed = 42;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| constrained_kmeans(x, &cfg).unwrap())
    };
    let one = run(1);
    let many = run(4);
    assert_eq!(one.labels, many.labels);
    assert_eq!(one.inertia.to_bits(), many.inertia.to_bits());
    let bits = |c: &idlora_cluster::Clustering| c.centroids.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one), bits(&many));
    // A different seed is allowed to differ, the same one is not.
    assert_eq!(run(2), one);
}

#[test]
fn scaling_the_data_does_not_change_the_clustering() {
    // k-means-constrained rounds 1000*||x - c|| to integers, so its answer depends on scale;
    // ours works on exact costs. Powers of two scale f32 exactly.
    let data = blobs(3, 50, &[[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]], 2.0);
    let small: Vec<f32> = data.iter().map(|v| v * 2f32.powi(-12)).collect();
    let mut cfg = KMeansConfig::new(3, 45);
    cfg.n_init = 4;
    let a = constrained_kmeans(RowMatrix::new(&data, 150, 3).unwrap(), &cfg).unwrap();
    let b = constrained_kmeans(RowMatrix::new(&small, 150, 3).unwrap(), &cfg).unwrap();
    assert_eq!(a.labels, b.labels);
}

#[test]
fn slack_constraints_match_linfa_kmeans() {
    use linfa::DatasetBase;
    use linfa::traits::Fit;
    let data = blobs(8, 60, &[[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]], 2.0);
    let x = RowMatrix::new(&data, 240, 3).unwrap();
    let ours = constrained_kmeans(x, &KMeansConfig::new(4, 0)).unwrap();
    let array =
        ndarray::Array2::from_shape_vec((240, 3), data.iter().map(|&v| f64::from(v)).collect()).unwrap();
    let model =
        linfa_clustering::KMeans::params(4).n_runs(10).fit(&DatasetBase::from(array.clone())).unwrap();
    use linfa::traits::Predict;
    let labels: Vec<u32> = model.predict(&array).iter().map(|&l| l as u32).collect();
    let theirs = labels_inertia(x, &labels, 4);
    assert!(ours.inertia <= theirs * (1.0 + 1e-6), "ours {} linfa {theirs}", ours.inertia);
    assert!(ours.inertia >= theirs * (1.0 - 1e-3), "ours {} much below linfa {theirs}?", ours.inertia);
}

#[test]
fn pmrc_takes_the_rows_nearest_each_centroid() {
    // One dimension: cluster {0, 1, 2, 3} with mean 1.5 and {10, 11, 13} with mean 11.33.
    let data = [0.0f32, 1.0, 2.0, 3.0, 10.0, 11.0, 13.0];
    let x = RowMatrix::new(&data, 7, 1).unwrap();
    let cfg = PmrcConfig { k: 2, rank: 2, ..PmrcConfig::default() };
    let b = select_bases(x, &cfg).unwrap();
    let c = b.clustering.unwrap();
    let (lo, hi) = if c.labels[0] == 0 { (0, 1) } else { (1, 0) };
    // Rows 1 and 2 tie at distance 0.5 from 1.5: the lower index comes first.
    assert_eq!(b.bases.sets[lo], [1, 2]);
    assert_eq!(b.bases.sets[hi], [5, 4]);
}

#[test]
fn serial_and_random_selection() {
    let s = select_serial(20, 3, 4).unwrap();
    assert_eq!(s.sets, [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]]);
    let r = select_random(20, 3, 4, 1).unwrap();
    let mut all: Vec<u32> = r.sets.iter().flatten().copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12, "random rows must be distinct");
    assert!(all.iter().all(|&i| i < 20));
    assert_eq!(r, select_random(20, 3, 4, 1).unwrap());
    assert_ne!(r, select_random(20, 3, 4, 2).unwrap());
    let data = vec![0.5f32; 40];
    let cfg = PmrcConfig { k: 2, rank: 3, selector: Selector::Ss, ..PmrcConfig::default() };
    assert_eq!(
        select_bases(RowMatrix::new(&data, 20, 2).unwrap(), &cfg).unwrap().bases,
        select_serial(20, 2, 3).unwrap()
    );
}

#[test]
fn every_bad_input_is_an_error() {
    let data = vec![1.0f32; 12];
    let x = RowMatrix::new(&data, 6, 2).unwrap();
    assert_eq!(RowMatrix::new(&[], 0, 3).unwrap_err(), ClusterError::EmptyMatrix { rows: 0, cols: 3 });
    assert!(matches!(RowMatrix::new(&data, 5, 2), Err(ClusterError::ShapeMismatch { .. })));
    let mut bad = data.clone();
    bad[7] = f32::NAN;
    match RowMatrix::new(&bad, 6, 2) {
        Err(ClusterError::NonFinite { row: 3, col: 1, .. }) => {}
        other => panic!("expected NonFinite at row 3, got {other:?}"),
    }
    bad[7] = f32::INFINITY;
    assert!(RowMatrix::new(&bad, 6, 2).unwrap_err().to_string().contains("row 3"));
    let km = |k, min, max| {
        let mut c = KMeansConfig::new(k, min);
        c.size_max = max;
        constrained_kmeans(x, &c)
    };
    assert_eq!(km(0, 0, None).unwrap_err(), ClusterError::ZeroClusters);
    assert_eq!(km(7, 0, None).unwrap_err(), ClusterError::TooManyClusters { k: 7, rows: 6 });
    assert_eq!(km(2, 4, None).unwrap_err(), ClusterError::MinSizeInfeasible { k: 2, size_min: 4, rows: 6 });
    assert_eq!(km(2, 3, Some(2)).unwrap_err(), ClusterError::MaxBelowMin { size_min: 3, size_max: 2 });
    assert_eq!(
        km(2, 1, Some(2)).unwrap_err(),
        ClusterError::MaxSizeInfeasible { k: 2, size_max: 2, rows: 6 }
    );
    let mut c = KMeansConfig::new(2, 1);
    c.n_init = 0;
    assert!(matches!(constrained_kmeans(x, &c), Err(ClusterError::InvalidSetting { name: "n_init", .. })));
    // Rank larger than a cluster: clusters of 3 cannot give 4 rows each.
    let clustering = constrained_kmeans(x, &KMeansConfig::new(2, 3)).unwrap();
    assert!(matches!(
        select_nearest(x, &clustering, 4),
        Err(ClusterError::ClusterSmallerThanRank { rank: 4, .. })
    ));
    // PMRC with the default size_min = rank refuses k * r > rows up front.
    let cfg = PmrcConfig { k: 2, rank: 4, ..PmrcConfig::default() };
    assert!(matches!(select_bases(x, &cfg), Err(ClusterError::MinSizeInfeasible { .. })));
    assert!(matches!(select_serial(6, 2, 4), Err(ClusterError::SelectionTooLarge { .. })));
    assert!(matches!(select_random(6, 0, 1, 0), Err(ClusterError::ZeroClusters)));
    assert!(assign(&[0.0, f64::NAN], 1, 2, 0, 1).is_err());
}

#[test]
fn incrementally_kept_sums_give_the_exact_means() {
    // Overlapping blobs in 40 dimensions: many rows change cluster over many iterations, so the
    // sums kept by adding and removing moved rows see thousands of updates. The returned centroids
    // must still be the means of the returned labels (recomputed here from scratch, in f64), and
    // the reported inertia the exact one.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (n, d, k) = (900, 40, 4);
    let data: Vec<f32> = (0..n * d).map(|i| (i / d % 3) as f32 * 0.3 + rng.random::<f32>()).collect();
    let x = RowMatrix::new(&data, n, d).unwrap();
    let mut cfg = KMeansConfig::new(k, 150);
    cfg.n_init = 3;
    cfg.tol = 0.0;
    let c = constrained_kmeans(x, &cfg).unwrap();
    assert!(c.n_iter > 3, "too easy to exercise the updates: {} iterations", c.n_iter);
    for j in 0..k {
        let members: Vec<usize> = (0..n).filter(|&i| c.labels[i] as usize == j).collect();
        assert_eq!(members.len(), c.sizes[j]);
        for p in 0..d {
            let mean =
                members.iter().map(|&i| f64::from(data[i * d + p])).sum::<f64>() / members.len() as f64;
            let got = f64::from(c.centroid(j)[p]);
            assert!(
                (got - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "cluster {j} coord {p}: {got} vs {mean}"
            );
        }
    }
    assert!((labels_inertia(x, &c.labels, k) - c.inertia).abs() <= 1e-9 * c.inertia);
}
