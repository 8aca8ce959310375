/// Invalid input to clustering or row selection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    /// The matrix has no rows or no columns.
    #[error("the matrix is empty ({rows} x {cols})")]
    EmptyMatrix {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// The data slice does not match the stated shape.
    #[error("the data holds {len} values, but the shape {rows} x {cols} needs {}", rows * cols)]
    ShapeMismatch {
        /// Values given.
        len: usize,
        /// Rows stated.
        rows: usize,
        /// Columns stated.
        cols: usize,
    },
    /// A row holds NaN or an infinity.
    #[error("row {row} holds a non-finite value ({value}) in column {col}")]
    NonFinite {
        /// The row at fault.
        row: usize,
        /// The first column at fault.
        col: usize,
        /// The value found.
        value: f32,
    },
    /// `k` is zero.
    #[error("k must be at least 1")]
    ZeroClusters,
    /// More clusters than rows.
    #[error("k = {k} clusters cannot be formed from {rows} rows")]
    TooManyClusters {
        /// Clusters asked for.
        k: usize,
        /// Rows available.
        rows: usize,
    },
    /// `k * size_min > rows`: the minimum sizes cannot all be met.
    #[error("k * size_min = {k} * {size_min} = {} exceeds the {rows} rows", k * size_min)]
    MinSizeInfeasible {
        /// Clusters.
        k: usize,
        /// Minimum size.
        size_min: usize,
        /// Rows available.
        rows: usize,
    },
    /// `k * size_max < rows`: some row cannot be placed.
    #[error("k * size_max = {k} * {size_max} = {} is less than the {rows} rows", k * size_max)]
    MaxSizeInfeasible {
        /// Clusters.
        k: usize,
        /// Maximum size.
        size_max: usize,
        /// Rows to place.
        rows: usize,
    },
    /// `size_max < size_min`.
    #[error("size_max = {size_max} is below size_min = {size_min}")]
    MaxBelowMin {
        /// Minimum size.
        size_min: usize,
        /// Maximum size.
        size_max: usize,
    },
    /// A zero or otherwise unusable setting.
    #[error("invalid setting `{name}`: {reason}")]
    InvalidSetting {
        /// The setting at fault.
        name: &'static str,
        /// What is expected.
        reason: String,
    },
    /// A cluster holds fewer rows than the rank asks to select from it.
    #[error("cluster {cluster} holds {size} rows, fewer than the rank r = {rank}")]
    ClusterSmallerThanRank {
        /// The cluster at fault.
        cluster: usize,
        /// Its size.
        size: usize,
        /// The rank asked for.
        rank: usize,
    },
    /// Serial or random selection asks for more rows than the matrix has.
    #[error("selecting k * r = {k} * {rank} = {} rows needs that many rows, the matrix has {rows}", k * rank)]
    SelectionTooLarge {
        /// Clusters.
        k: usize,
        /// Rank.
        rank: usize,
        /// Rows available.
        rows: usize,
    },
    /// The LP solver failed (only the reference LP path).
    #[error("LP solver: {0}")]
    Lp(String),
}
