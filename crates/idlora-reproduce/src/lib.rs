//! The ID-LoRA paper's experiments as grids of cells, each one command:
//! `cargo xtask reproduce table2 --scale small`.
//!
//! - [`experiment`]: the grids (Tables 1, 2, 3, 7, 8): per cell the model, training domain,
//!   method and rank, seed, and the paper's row; at `paper` scale the paper's models and
//!   settings (the shipped `configs/train/*.toml`, Tables 4-5), at `small` scale SmolLM2-135M and
//!   the packaged stand-in data (`configs/reproduce/*.toml`).
//! - [`run`]: running a grid: train -> evaluate per cell, each in its own folder, finished cells
//!   and benchmarks skipped, interrupted training resumed.
//! - [`results`]: `results.md` in the paper's layout (our figure beside the paper's), `results.json`,
//!   Figure 4 as SVG.
//! - [`fig3`]: Figure 3, inference time and extra memory per method at its rank.
//! - [`paper`]: the paper's figures.
//!
//! ```
//! use idlora_reproduce::experiment::{Experiment, Scale, cells};
//! let grid = cells(Experiment::Table8, Scale::Small, 2);
//! assert_eq!(grid.len(), 8); // k = 2, 4, 6, 8, two seeds each
//! assert_eq!(grid[0].id, "smollm2/multitask/k2/seed0");
//! assert_eq!(grid[0].paper.map(|p| p.scores[0]), Some(Some(38.3)));
//! ```

pub mod error;
pub mod experiment;
pub mod fig3;
pub mod paper;
pub mod results;
pub mod run;

pub use error::{ReproduceError, Result};
pub use run::{GridObserver, GridOutcome, Paths, Setup, reproduce};
