//! ID-LoRA's index sets `S_1 .. S_k` as this crate takes them: plain row indices.
//!
//! The adapter only needs to know which output rows of `W0` form each basis; how they were chosen
//! (PMRC clustering, serial or random selection) is `idlora-cluster`'s business, so this crate
//! keeps its own small type rather than depending on the clustering crate.

use crate::error::{AdapterError, Result};

/// The index sets of one layer: `k` sets of `rank` rows of `W0` (rows are the layer's outputs),
/// nearest the centroid first for PMRC.
///
/// ```
/// use idlora_adapter::IndexSets;
/// let sets = IndexSets::new(vec![vec![0, 3], vec![1, 2]])?;
/// assert_eq!((sets.k(), sets.rank()), (2, 2));
/// assert_eq!(sets.to_i32(), vec![0, 3, 1, 2]);
/// assert!(IndexSets::new(vec![vec![0, 3], vec![1]]).is_err());
/// # Ok::<(), idlora_adapter::AdapterError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSets {
    rank: usize,
    sets: Vec<Vec<u32>>,
}

impl IndexSets {
    /// Sets of equal, non-zero length; at least one set.
    pub fn new(sets: Vec<Vec<u32>>) -> Result<Self> {
        let bad = |message: String| AdapterError::InvalidSetting { setting: "index sets", message };
        let rank = sets.first().map_or(0, Vec::len);
        if rank == 0 {
            return Err(bad("at least one non-empty set is needed".into()));
        }
        if let Some((i, s)) = sets.iter().enumerate().find(|(_, s)| s.len() != rank) {
            return Err(bad(format!("set {i} has {} rows, set 0 has {rank}", s.len())));
        }
        Ok(IndexSets { rank, sets })
    }

    /// Number of sets `k`.
    pub fn k(&self) -> usize {
        self.sets.len()
    }

    /// Rows per set `r`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The sets.
    pub fn sets(&self) -> &[Vec<u32>] {
        &self.sets
    }

    /// The sets flattened row-major as a `[k, r]` matrix of `i32` (the on-disk layout).
    pub fn to_i32(&self) -> Vec<i32> {
        // Row indices of real layers are far below 2^31.
        self.sets.iter().flatten().map(|&i| i as i32).collect()
    }

    /// Rebuilds sets from a `[k, r]` `i32` matrix, checking every index against `rows`.
    pub fn from_i32(data: &[i32], k: usize, rank: usize, rows: usize) -> Result<Self> {
        let bad = |message: String| AdapterError::InvalidSetting { setting: "index sets", message };
        if k == 0 || rank == 0 || data.len() != k * rank {
            return Err(bad(format!("{} indices do not form a [{k}, {rank}] matrix", data.len())));
        }
        let sets = data
            .chunks_exact(rank)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|&i| match u32::try_from(i) {
                        Ok(u) if (u as usize) < rows => Ok(u),
                        _ => Err(bad(format!("index {i} is outside 0..{rows}"))),
                    })
                    .collect()
            })
            .collect::<Result<Vec<Vec<u32>>>>()?;
        IndexSets::new(sets)
    }
}
