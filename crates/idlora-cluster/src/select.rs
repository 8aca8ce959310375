//! Choosing each cluster's `r` basis rows: PMRC (nearest the centroid), and the paper's serial
//! (SS) and random (RS) ablations.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::distance::sq_dist_exact;
use crate::{ClusterError, Clustering, RowMatrix};

/// How the rows behind each basis `A_i` are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// Parameter-matrix row clustering: constrained k-means, then the `r` rows nearest each centroid.
    #[default]
    Pmrc,
    /// Serial selection: basis `i` takes the contiguous rows `i*r .. (i+1)*r`.
    Ss,
    /// Random selection: `k*r` distinct rows drawn uniformly, `r` per basis.
    Rs,
}

impl std::str::FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "pmrc" => Ok(Self::Pmrc),
            "ss" | "serial" => Ok(Self::Ss),
            "rs" | "random" => Ok(Self::Rs),
            _ => Err(format!("unknown selector `{s}` (expected pmrc, ss or rs)")),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pmrc => "pmrc",
            Self::Ss => "ss",
            Self::Rs => "rs",
        })
    }
}

/// The index sets `S_1 .. S_k` of one weight matrix: `sets[i]` lists the `rank` rows of `W0` that
/// form `A_i`, nearest the centroid first for PMRC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSets {
    /// Rank `r` (rows per set).
    pub rank: usize,
    /// `k` sets of `r` row indices.
    pub sets: Vec<Vec<u32>>,
}

impl IndexSets {
    /// Number of sets `k`.
    pub fn k(&self) -> usize {
        self.sets.len()
    }

    /// The sets flattened row-major as a `[k, r]` matrix of `i32` (the on-disk layout).
    pub fn to_i32(&self) -> Vec<i32> {
        self.sets.iter().flatten().map(|&i| i as i32).collect()
    }

    /// Rebuilds sets from a `[k, r]` `i32` matrix, checking every index against `rows`.
    pub fn from_i32(data: &[i32], k: usize, rank: usize, rows: usize) -> Result<Self, ClusterError> {
        if k == 0 || rank == 0 || data.len() != k * rank {
            return Err(ClusterError::InvalidSetting {
                name: "index sets",
                reason: format!("{} indices do not form a [{k}, {rank}] matrix", data.len()),
            });
        }
        let mut sets = Vec::with_capacity(k);
        for chunk in data.chunks_exact(rank) {
            let mut set = Vec::with_capacity(rank);
            for &i in chunk {
                match u32::try_from(i) {
                    Ok(u) if (u as usize) < rows => set.push(u),
                    _ => {
                        return Err(ClusterError::InvalidSetting {
                            name: "index sets",
                            reason: format!("row index {i} is outside 0..{rows}"),
                        });
                    }
                }
            }
            sets.push(set);
        }
        Ok(Self { rank, sets })
    }
}

/// PMRC selection: in each cluster, the `rank` rows nearest its centroid (exact distances, ties to
/// the lower row index).
pub fn select_nearest(
    x: RowMatrix<'_>,
    clustering: &Clustering,
    rank: usize,
) -> Result<IndexSets, ClusterError> {
    if rank == 0 {
        return Err(ClusterError::InvalidSetting { name: "rank", reason: "must be at least 1".into() });
    }
    let k = clustering.sizes.len();
    let mut members: Vec<Vec<(f64, u32)>> = vec![Vec::new(); k];
    for (i, &l) in clustering.labels.iter().enumerate() {
        let d = sq_dist_exact(x.row(i), clustering.centroid(l as usize));
        members[l as usize].push((d, i as u32));
    }
    let mut sets = Vec::with_capacity(k);
    for (cluster, mut m) in members.into_iter().enumerate() {
        if m.len() < rank {
            return Err(ClusterError::ClusterSmallerThanRank { cluster, size: m.len(), rank });
        }
        m.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        sets.push(m.into_iter().take(rank).map(|(_, i)| i).collect());
    }
    Ok(IndexSets { rank, sets })
}

fn check_selection(rows: usize, k: usize, rank: usize) -> Result<(), ClusterError> {
    if k == 0 {
        return Err(ClusterError::ZeroClusters);
    }
    if rank == 0 {
        return Err(ClusterError::InvalidSetting { name: "rank", reason: "must be at least 1".into() });
    }
    if k.checked_mul(rank).is_none_or(|t| t > rows) {
        return Err(ClusterError::SelectionTooLarge { k, rank, rows });
    }
    Ok(())
}

/// Serial selection (SS): basis `i` is rows `i*rank .. (i+1)*rank`.
///
/// ```
/// let s = idlora_cluster::select_serial(10, 2, 3)?;
/// assert_eq!(s.sets, [vec![0, 1, 2], vec![3, 4, 5]]);
/// # Ok::<(), idlora_cluster::ClusterError>(())
/// ```
pub fn select_serial(rows: usize, k: usize, rank: usize) -> Result<IndexSets, ClusterError> {
    check_selection(rows, k, rank)?;
    let sets = (0..k).map(|i| ((i * rank) as u32..((i + 1) * rank) as u32).collect()).collect();
    Ok(IndexSets { rank, sets })
}

/// Random selection (RS): `k * rank` distinct rows drawn uniformly with a seeded ChaCha8 stream.
pub fn select_random(rows: usize, k: usize, rank: usize, seed: u64) -> Result<IndexSets, ClusterError> {
    check_selection(rows, k, rank)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let picked = rand::seq::index::sample(&mut rng, rows, k * rank).into_vec();
    let sets = picked.chunks_exact(rank).map(|c| c.iter().map(|&i| i as u32).collect()).collect();
    Ok(IndexSets { rank, sets })
}
