//! Bases for many matrices at once: every adapted matrix of a model, clustered in parallel.
//!
//! One model has 7 x layers matrices, each clustered independently, so they are spread over the
//! threads of rayon's pool (each clustering is itself serial here: one matrix per thread keeps
//! every core busy without nested parallelism). Matrices are read by a caller-given function, so
//! this module knows nothing of file formats or model layouts; a read runs on the worker thread,
//! so only the matrices in flight are held in memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::bases_file::BasesFile;
use crate::{ClusterError, PmrcConfig, RowMatrix, select_bases};

/// A matrix handed to [`select_bases_many`]: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedMatrix {
    /// Row-major values, `rows * cols` of them.
    pub data: Vec<f32>,
    /// Rows (`d_out` of a weight `W0`).
    pub rows: usize,
    /// Columns (`d_in`).
    pub cols: usize,
}

/// Why one matrix of a batch could not be clustered. The matrix is always named.
#[derive(Debug, thiserror::Error)]
pub enum ManyError {
    /// The reader failed for this matrix.
    #[error("reading `{name}`: {source}")]
    Read {
        /// The matrix at fault.
        name: String,
        /// The reader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Clustering or selection failed for this matrix.
    #[error("clustering `{name}` ({rows} x {cols}): {source}")]
    Cluster {
        /// The matrix at fault.
        name: String,
        /// Its rows.
        rows: usize,
        /// Its columns.
        cols: usize,
        /// What went wrong.
        #[source]
        source: ClusterError,
    },
}

/// Chooses the bases of every matrix in `names` with `cfg`, in parallel, and gathers them into one
/// [`BasesFile`] keyed by name. `read` loads one matrix; `progress(done, total)` is called once after
/// each matrix (from worker threads, in completion order). The first failure stops the batch and
/// names its matrix.
///
/// `extra` of the result holds `inertia` (JSON map name -> final inertia, PMRC only) and
/// `slowest_seconds`; callers add their own entries (source model, targets) before saving.
///
/// ```
/// use idlora_cluster::{PmrcConfig, many::{OwnedMatrix, select_bases_many}};
/// let names = vec!["a".to_string(), "b".to_string()];
/// let read = |name: &str| -> Result<OwnedMatrix, std::io::Error> {
///     let shift = if name == "a" { 0.0 } else { 5.0 };
///     let data = (0..32 * 4).map(|i| ((i / 4) / 8) as f32 * 10.0 + shift + (i % 3) as f32 * 0.01).collect();
///     Ok(OwnedMatrix { data, rows: 32, cols: 4 })
/// };
/// let cfg = PmrcConfig { k: 4, rank: 2, ..PmrcConfig::default() };
/// let file = select_bases_many(&names, read, &cfg, &|_, _| {})?;
/// assert_eq!(file.sets.len(), 2);
/// assert_eq!(file.sets["a"].sets.len(), 4);
/// # Ok::<(), idlora_cluster::many::ManyError>(())
/// ```
pub fn select_bases_many<R, E>(
    names: &[String],
    read: R,
    cfg: &PmrcConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BasesFile, ManyError>
where
    R: Fn(&str) -> Result<OwnedMatrix, E> + Sync,
    E: std::error::Error + Send + Sync + 'static,
{
    let total = names.len();
    let done = AtomicUsize::new(0);
    let results: Vec<(String, crate::Bases, f64)> = names
        .par_iter()
        .map(|name| {
            let start = Instant::now();
            let m = read(name).map_err(|e| ManyError::Read { name: name.clone(), source: Box::new(e) })?;
            let fail = |source| ManyError::Cluster { name: name.clone(), rows: m.rows, cols: m.cols, source };
            let x = RowMatrix::new(&m.data, m.rows, m.cols).map_err(fail)?;
            let b = select_bases(x, cfg).map_err(fail)?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok((name.clone(), b, start.elapsed().as_secs_f64()))
        })
        .collect::<Result<_, ManyError>>()?;
    let mut sets = BTreeMap::new();
    let mut inertia = BTreeMap::new();
    let mut slowest = 0.0f64;
    for (name, b, seconds) in results {
        if let Some(c) = &b.clustering {
            inertia.insert(name.clone(), c.inertia);
        }
        slowest = slowest.max(seconds);
        sets.insert(name, b.bases);
    }
    let mut extra = BTreeMap::new();
    if !inertia.is_empty() {
        // A map of f64 always serializes.
        extra.insert("inertia".into(), serde_json::to_string(&inertia).unwrap_or_default());
    }
    extra.insert("slowest_seconds".into(), format!("{slowest:.3}"));
    Ok(BasesFile { sets, settings: cfg.clone(), extra })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Selector;

    fn matrix(seed: usize, rows: usize, cols: usize) -> OwnedMatrix {
        // A deterministic, unstructured matrix: a hash of the index.
        let data = (0..rows * cols)
            .map(|i| {
                let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000;
                h as f32 / 1000.0 - 0.5
            })
            .collect();
        OwnedMatrix { data, rows, cols }
    }

    #[test]
    fn equals_the_serial_selection_of_each_matrix_and_reports_progress_once_per_matrix() {
        let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        let read = |name: &str| -> Result<OwnedMatrix, std::io::Error> {
            let i: usize = name[1..].parse().map_err(std::io::Error::other)?;
            Ok(matrix(i, 40 + 8 * i, 6))
        };
        let cfg = PmrcConfig { k: 3, rank: 4, n_init: 2, ..PmrcConfig::default() };
        let calls = std::sync::Mutex::new(Vec::new());
        let file = select_bases_many(&names, read, &cfg, &|done, total| {
            calls.lock().map(|mut c| c.push((done, total))).unwrap_or(())
        })
        .unwrap();
        for name in &names {
            let m = read(name).unwrap();
            let serial = select_bases(RowMatrix::new(&m.data, m.rows, m.cols).unwrap(), &cfg).unwrap();
            assert_eq!(file.sets[name], serial.bases, "{name}");
        }
        let mut calls = calls.into_inner().unwrap();
        calls.sort();
        assert_eq!(calls, (1..=6).map(|d| (d, 6)).collect::<Vec<_>>());
        let inertia: BTreeMap<String, f64> = serde_json::from_str(&file.extra["inertia"]).unwrap();
        assert_eq!(inertia.len(), 6);
    }

    #[test]
    fn a_failing_matrix_is_named() {
        let names = vec!["ok".to_string(), "small".to_string()];
        let read = |name: &str| -> Result<OwnedMatrix, std::io::Error> {
            Ok(if name == "ok" { matrix(0, 32, 4) } else { matrix(1, 5, 4) })
        };
        let cfg = PmrcConfig { k: 4, rank: 2, selector: Selector::Ss, ..PmrcConfig::default() };
        let err = select_bases_many(&names, read, &cfg, &|_, _| {}).unwrap_err();
        assert!(matches!(&err, ManyError::Cluster { name, rows: 5, .. } if name == "small"), "{err}");
        assert!(err.to_string().contains("`small` (5 x 4)"), "{err}");

        let read_fails = |name: &str| -> Result<OwnedMatrix, std::io::Error> {
            if name == "small" { Err(std::io::Error::other("truncated")) } else { Ok(matrix(0, 32, 4)) }
        };
        let err = select_bases_many(&names, read_fails, &cfg, &|_, _| {}).unwrap_err();
        assert_eq!(err.to_string(), "reading `small`: truncated");
    }
}
