use crate::ClusterError;

/// A borrowed, row-major `f32` matrix whose rows are the points to cluster.
///
/// Construction checks the shape and that every value is finite, naming the first bad row.
///
/// ```
/// use idlora_cluster::RowMatrix;
/// let data = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
/// let m = RowMatrix::new(&data, 3, 2)?;
/// assert_eq!(m.row(1), &[2.0, 3.0]);
/// assert!(RowMatrix::new(&[0.0, f32::NAN], 1, 2).is_err());
/// # Ok::<(), idlora_cluster::ClusterError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RowMatrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> RowMatrix<'a> {
    /// Wraps `data` as a `rows x cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, ClusterError> {
        if rows == 0 || cols == 0 {
            return Err(ClusterError::EmptyMatrix { rows, cols });
        }
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(ClusterError::ShapeMismatch { len: data.len(), rows, cols });
        }
        if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
            return Err(ClusterError::NonFinite { row: pos / cols, col: pos % cols, value: data[pos] });
        }
        Ok(Self { data, rows, cols })
    }

    /// Number of rows (points).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (dimension of each point).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// All values, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
}
