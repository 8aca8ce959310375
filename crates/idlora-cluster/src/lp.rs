//! The size-constrained assignment as a linear program, solved with `good_lp` (pure-Rust `microlp`).
//!
//! This is the textbook formulation: `x[i][j]` in `[0, 1]`, each point's row sums to one, each
//! cluster's column sum lies in `[size_min, size_max]`, minimise `sum c[i][j] x[i][j]`. Its constraint
//! matrix is totally unimodular, so a vertex optimum is integral and equals the min-cost flow's.
//! It is far slower than [`crate::flow`] (a dense LP with `n k` columns) and serves as the
//! independent reference in tests and as an option for users who want a second opinion.

use good_lp::{Expression, ProblemVariables, Solution, SolverModel, Variable, constraint, variable};

use crate::ClusterError;
use crate::flow::{Assignment, check_bounds};

/// An LP optimum: the labelling it rounds to, its objective, and how far from integral it was.
#[derive(Debug, Clone, PartialEq)]
pub struct LpAssignment {
    /// `argmax_j x[i][j]` per point, with its cost.
    pub assignment: Assignment,
    /// The LP objective `sum c x` as the solver returned it.
    pub objective: f64,
    /// `max |x - round(x)|` over all variables (0 for an integral vertex).
    pub max_fractionality: f64,
}

/// Solves the assignment as an LP. Same contract as [`crate::flow::assign`].
///
/// ```
/// use idlora_cluster::lp::assign_lp;
/// let costs = [0.0, 5.0, 0.0, 2.0, 0.0, 9.0];
/// let lp = assign_lp(&costs, 3, 2, 1, 3)?;
/// assert_eq!(lp.assignment.labels, [0, 1, 0]);
/// assert!((lp.objective - 2.0).abs() < 1e-9);
/// # Ok::<(), idlora_cluster::ClusterError>(())
/// ```
pub fn assign_lp(
    costs: &[f64],
    n: usize,
    k: usize,
    size_min: usize,
    size_max: usize,
) -> Result<LpAssignment, ClusterError> {
    check_bounds(n, k, size_min, size_max)?;
    if costs.len() != n * k {
        return Err(ClusterError::InvalidSetting {
            name: "costs",
            reason: format!("{} values for {n} points and {k} clusters", costs.len()),
        });
    }
    let mut vars = ProblemVariables::new();
    let x: Vec<Variable> = vars.add_vector(variable().min(0.0).max(1.0), n * k);
    let objective: Expression = x.iter().zip(costs).map(|(&v, &c)| c * v).sum();
    let mut model = vars.minimise(objective).using(good_lp::microlp);
    for i in 0..n {
        let row: Expression = x[i * k..(i + 1) * k].iter().copied().sum();
        model = model.with(constraint!(row == 1.0));
    }
    for j in 0..k {
        let col: Expression = (0..n).map(|i| x[i * k + j]).sum();
        model = model.with(constraint!(col.clone() >= size_min as f64));
        if size_max < n {
            model = model.with(constraint!(col <= size_max as f64));
        }
    }
    let solution = model.solve().map_err(|e| ClusterError::Lp(e.to_string()))?;
    let values: Vec<f64> = x.iter().map(|&v| solution.value(v)).collect();
    let objective = values.iter().zip(costs).map(|(v, c)| v * c).sum();
    let max_fractionality = values.iter().map(|v| (v - v.round()).abs()).fold(0.0, f64::max);
    let labels: Vec<u32> = values
        .chunks_exact(k)
        .map(|row| {
            let mut best = 0;
            for j in 1..k {
                if row[j] > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect();
    let cost = labels.iter().enumerate().map(|(i, &j)| costs[i * k + j as usize]).sum();
    Ok(LpAssignment { assignment: Assignment { labels, cost }, objective, max_fractionality })
}
