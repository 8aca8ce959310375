//! Minimum-size constrained k-means and ID-LoRA's row selection (PMRC).
//!
//! ID-LoRA builds its frozen bases from rows of each pretrained weight matrix `W0` (`d_out x d_in`):
//! the rows are clustered into `k` groups of at least `r` rows with constrained k-means
//! ([`constrained_kmeans`]), and the `r` rows nearest each centroid form the index set `S_i`
//! ([`select_nearest`]). The paper's ablations replace this with serial ([`select_serial`]) or
//! random ([`select_random`]) rows. [`select_bases`] runs whichever is configured.
//!
//! The assignment step is solved exactly, on exact squared Euclidean costs, by a min-cost-flow
//! solver over the `k` cluster nodes ([`flow`]); the same problem as an LP through `good_lp`
//! ([`lp`]) is the independent reference.
//!
//! ```
//! use idlora_cluster::{PmrcConfig, RowMatrix, Selector, select_bases};
//! // A 64 x 8 matrix whose rows form four tight groups of 16.
//! let data: Vec<f32> = (0..64 * 8).map(|i| ((i / 8) / 16) as f32 * 10.0 + (i % 7) as f32 * 0.01).collect();
//! let w = RowMatrix::new(&data, 64, 8)?;
//! let cfg = PmrcConfig { k: 4, rank: 4, ..PmrcConfig::default() };
//! let result = select_bases(w, &cfg)?;
//! assert_eq!(result.bases.sets.len(), 4);
//! // Each basis holds rows of one group only.
//! for set in &result.bases.sets {
//!     assert!(set.iter().all(|&i| i / 16 == set[0] / 16));
//! }
//! # Ok::<(), idlora_cluster::ClusterError>(())
//! ```

pub mod bases_file;
pub mod distance;
mod error;
pub mod flow;
pub mod kmeans;
pub mod lp;
pub mod many;
mod matrix;
pub mod select;

pub use error::ClusterError;
pub use kmeans::{AssignmentSolver, Clustering, KMeansConfig, Pruning, constrained_kmeans};
pub use matrix::RowMatrix;
pub use select::{IndexSets, Selector, select_nearest, select_random, select_serial};
use serde::{Deserialize, Serialize};

/// Settings for choosing one matrix's bases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PmrcConfig {
    /// Number of bases (clusters) `k`.
    pub k: usize,
    /// Rank `r`: rows per basis.
    pub rank: usize,
    /// Minimum cluster size; `None` means the rank, as in the paper.
    pub size_min: Option<usize>,
    /// Maximum cluster size, if any.
    pub size_max: Option<usize>,
    /// k-means restarts.
    pub n_init: usize,
    /// Lloyd iterations per restart at most.
    pub max_iter: usize,
    /// Convergence tolerance (see [`KMeansConfig::tol`]).
    pub tol: f64,
    /// Seed for k-means++ and random selection.
    pub seed: u64,
    /// PMRC, SS or RS.
    pub selector: Selector,
    /// Assignment solver for PMRC.
    pub solver: AssignmentSolver,
}

impl Default for PmrcConfig {
    /// `k` 4, rank 8, `size_min` = rank, 10 restarts, 300 iterations, tol 1e-4, seed 0, PMRC.
    fn default() -> Self {
        Self {
            k: 4,
            rank: 8,
            size_min: None,
            size_max: None,
            n_init: 10,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            selector: Selector::Pmrc,
            solver: AssignmentSolver::Flow,
        }
    }
}

impl PmrcConfig {
    /// The k-means settings PMRC runs with.
    pub fn kmeans(&self) -> KMeansConfig {
        KMeansConfig {
            k: self.k,
            size_min: self.size_min.unwrap_or(self.rank),
            size_max: self.size_max,
            n_init: self.n_init,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
            solver: self.solver,
            pruning: kmeans::Pruning::Bounds,
        }
    }
}

/// The bases of one matrix, with the clustering behind them (PMRC only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bases {
    /// `S_1 .. S_k`.
    pub bases: IndexSets,
    /// The constrained k-means result, for PMRC.
    pub clustering: Option<Clustering>,
}

/// Chooses the `k` index sets of `w`'s rows as `cfg.selector` says.
pub fn select_bases(w: RowMatrix<'_>, cfg: &PmrcConfig) -> Result<Bases, ClusterError> {
    match cfg.selector {
        Selector::Pmrc => {
            if cfg.rank == 0 {
                return Err(ClusterError::InvalidSetting {
                    name: "rank",
                    reason: "must be at least 1".into(),
                });
            }
            let clustering = constrained_kmeans(w, &cfg.kmeans())?;
            let bases = select_nearest(w, &clustering, cfg.rank)?;
            Ok(Bases { bases, clustering: Some(clustering) })
        }
        Selector::Ss => Ok(Bases { bases: select_serial(w.rows(), cfg.k, cfg.rank)?, clustering: None }),
        Selector::Rs => {
            Ok(Bases { bases: select_random(w.rows(), cfg.k, cfg.rank, cfg.seed)?, clustering: None })
        }
    }
}
