//! Log-likelihood of continuations given a shared context: how MMLU and CommonsenseQA choices are
//! scored. The context runs through the model once into a KV cache; the cache is then copied to
//! one row per choice and every choice's tokens run as one right-padded batch. A choice of one
//! token needs no second pass at all (the context's last logits score it).

use burn::tensor::{Int, Tensor, TensorData};
use idlora_models::{CausalLm, ForwardInput, KvCache};

use crate::error::{EvalError, Result};

/// How likely one continuation is.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinuationScore {
    /// Sum of the natural-log probabilities of its tokens.
    pub logprob: f64,
    /// Its number of tokens.
    pub tokens: usize,
    /// Whether every token was the model's most likely one (greedy decoding would produce it).
    pub greedy: bool,
}

/// `log p(continuation | context)` for each continuation. `context` must not be empty (it holds
/// at least the BOS token or the prompt); every continuation must have a token.
///
/// ```
/// # use burn::tensor::Device;
/// let config = idlora_models::ModelConfig::from_hf_json(
///     r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
///         "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}"#, "config.json")?;
/// let model = idlora_models::load::random(config, 0, &Device::flex())?;
/// let scores = idlora_eval::loglik::score_continuations(&model, &[1, 2], &[vec![3], vec![4, 5]])?;
/// assert!(scores.iter().all(|s| s.logprob < 0.0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn score_continuations(
    model: &CausalLm,
    context: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<ContinuationScore>> {
    if context.is_empty() {
        return Err(EvalError::Settings("scoring needs a non-empty context".into()));
    }
    if let Some(i) = continuations.iter().position(Vec::is_empty) {
        return Err(EvalError::Settings(format!("continuation {i} has no token")));
    }
    let v = model.config.vocab_size;
    let n = continuations.len();
    let mut cache = KvCache::new();
    let logits = model.forward(&ForwardInput::single(context), Some(&mut cache))?;
    let s = context.len();
    let last = host(logits.slice([0..1, s - 1..s, 0..v]))?;
    let first = log_softmax(&last);
    let mut scores: Vec<ContinuationScore> = continuations
        .iter()
        .map(|c| {
            let t = c[0] as usize;
            ContinuationScore {
                logprob: first.get(t).copied().unwrap_or(f64::NEG_INFINITY),
                tokens: c.len(),
                greedy: is_argmax(&last, t),
            }
        })
        .collect();
    let rest = continuations.iter().map(|c| c.len() - 1).max().unwrap_or(0);
    if rest == 0 {
        return Ok(scores);
    }
    // One cache row per continuation, then every continuation but its last token as a right-padded
    // batch: a row's real tokens precede its padding, so causality keeps the padding out of them.
    let device = model.device();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(vec![0i32; n], [n]), &device);
    cache.retain_rows(&rows);
    let mut tokens = Vec::with_capacity(n * rest);
    let mut positions = Vec::with_capacity(n * rest);
    for c in continuations {
        let feed = &c[..c.len() - 1];
        tokens.extend(feed.iter().copied().chain(std::iter::repeat_n(0, rest - feed.len())));
        positions.extend(s..s + rest);
    }
    // An explicit (all-visible) key padding makes the model build the offset causal mask for a
    // multi-token step on top of a cache.
    let input = ForwardInput {
        tokens,
        batch: n,
        seq: rest,
        positions: Some(positions),
        key_padding: Some(vec![false; n * (s + rest)]),
    };
    let logits = host(model.forward(&input, Some(&mut cache))?)?;
    for (row, c) in continuations.iter().enumerate() {
        for j in 0..c.len() - 1 {
            let at = (row * rest + j) * v;
            let step = &logits[at..at + v];
            let t = c[j + 1] as usize;
            scores[row].logprob += log_softmax(step).get(t).copied().unwrap_or(f64::NEG_INFINITY);
            scores[row].greedy &= is_argmax(step, t);
        }
    }
    Ok(scores)
}

fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| EvalError::Backend(format!("{e:?}")))
}

/// Natural-log softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

fn is_argmax(logits: &[f32], t: usize) -> bool {
    logits.get(t).is_some_and(|&x| logits.iter().all(|&y| y <= x))
}

/// Index of the best choice: highest log-likelihood, or (`normalise`) highest log-likelihood per
/// byte of the choice's text, as lm-evaluation-harness's `acc_norm` does. Ties go to the first.
pub fn best_choice(scores: &[ContinuationScore], byte_lengths: &[usize], normalise: bool) -> usize {
    let value = |i: usize| {
        let s = scores[i].logprob;
        if normalise { s / byte_lengths.get(i).copied().unwrap_or(1).max(1) as f64 } else { s }
    };
    (0..scores.len()).fold(0, |best, i| if value(i) > value(best) { i } else { best })
}
