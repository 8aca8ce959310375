//! Benchmark scoring for idlora: the unbiased pass@k estimator of the HumanEval paper and GSM8K's
//! final-number extraction and exact match.
//!
//! Status: only these scoring pieces are built. The benchmark runners (generation, the HumanEval
//! sandbox, MMLU / CommonsenseQA log-likelihood scoring, HEx-PHI, `cargo xtask eval`) are not yet.
//!
//! ```
//! use idlora_eval::{gsm8k, pass_at_k};
//! assert_eq!(pass_at_k(10, 10, 1), 1.0);
//! assert_eq!(gsm8k::extract_answer("so she makes $18 a day.\n#### 18"), Some("18".into()));
//! ```

pub mod gsm8k;
pub mod passk;

pub use passk::pass_at_k;
