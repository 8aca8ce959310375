//! The paper's benchmarks for idlora models, and the tables that compare methods.
//!
//! - [`gsm8k`]: few-shot chain-of-thought generation, final-number extraction, exact match.
//! - [`humaneval`]: completions run against the tests in a contained `python3` ([`sandbox`]),
//!   unbiased pass@k ([`passk`]).
//! - [`mmlu`] and [`cqa`]: multiple choice by log-likelihood ([`choice`], [`loglik`]).
//! - [`hexphi`]: refusal rate on harmful instructions by refusal-phrase matching.
//! - [`benchmark`]: the registry, every benchmark behind one trait, found by name.
//! - [`efficiency`]: inference latency and extra memory of a method over its base (Figure 3).
//! - [`report`]: JSON result files, Markdown tables, comparison of runs.
//! - [`router`]: mean router weight per cluster, layer and task (does routing specialise?).
//!
//! ```
//! use idlora_eval::{gsm8k, pass_at_k};
//! assert_eq!(pass_at_k(10, 10, 1), 1.0);
//! assert_eq!(gsm8k::extract_answer("so she makes $18 a day.\n#### 18"), Some("18".into()));
//! ```

pub mod benchmark;
pub mod choice;
pub mod cqa;
pub mod efficiency;
pub mod error;
pub mod gsm8k;
pub mod hexphi;
pub mod humaneval;
pub mod loglik;
pub mod mmlu;
pub mod passk;
pub mod report;
pub mod router;
pub mod sandbox;
pub mod task;

pub use error::{EvalError, Result};
pub use passk::pass_at_k;
pub use report::EvalReport;
pub use task::{ChoiceFormat, EvalSettings, TaskResult};
