//! Text generation: greedy or sampled (temperature, top-k, top-p, repetition penalty, seed),
//! stop strings, batched prompts of unequal length (left padding), KV cache, streaming.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};
use crate::model::{CausalLm, ForwardInput, KvCache};
use crate::tokenizer::Tokenizer;

/// Sampling settings. The default is greedy decoding of up to 64 tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0: all).
    pub top_p: f64,
    /// transformers' repetition penalty: logits of tokens already in the context are divided by
    /// it when positive, multiplied when negative (1.0: off).
    pub repetition_penalty: f64,
    /// Generation stops when the decoded continuation contains one of these (which is cut).
    pub stop_strings: Vec<String>,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            stop_strings: Vec::new(),
            seed: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    StopString,
    /// `max_new_tokens`.
    Length,
}

/// One generated continuation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Decoded text (cut before a stop string).
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Picks the next token from one row of logits (modified in place).
pub fn sample(logits: &mut [f32], context: &[u32], cfg: &SamplingConfig, rng: &mut ChaCha8Rng) -> u32 {
    if cfg.repetition_penalty != 1.0 {
        let p = cfg.repetition_penalty as f32;
        for &t in context {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        }
    }
    let argmax =
        |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = cfg.temperature as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let max = logits[order[0]] / t;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] / t - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f64 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return order[i] as u32;
        }
        u -= p;
    }
    order[probs.len() - 1] as u32
}

/// Generates continuations of `prompts` (token ids) in one left-padded batch with a KV cache.
/// `on_text(row, piece)` receives each row's new text as it is decoded (for streaming).
pub fn generate(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<Vec<Generation>> {
    let b = prompts.len();
    if b == 0 || prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::Input("every prompt needs at least one token".into()));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(b * longest);
    let mut positions = Vec::with_capacity(b * longest);
    let mut padding: Vec<Vec<bool>> = Vec::with_capacity(b);
    for p in prompts {
        let pad = longest - p.len();
        tokens.extend(std::iter::repeat_n(0, pad).chain(p.iter().copied()));
        positions.extend(std::iter::repeat_n(0, pad).chain(0..p.len()));
        padding.push(std::iter::repeat_n(true, pad).chain(std::iter::repeat_n(false, p.len())).collect());
    }
    let any_pad = prompts.iter().any(|p| p.len() != longest);
    let mut next_pos: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut contexts: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation { tokens: Vec::new(), text: String::new(), stop: StopReason::Length })
        .collect();
    let mut done = vec![false; b];
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut cache = KvCache::new();
    let v = model.config.vocab_size;
    let mut input = ForwardInput {
        tokens,
        batch: b,
        seq: longest,
        positions: Some(positions),
        key_padding: any_pad.then(|| padding.concat()),
    };
    for _ in 0..cfg.max_new_tokens {
        let host = model
            .last_logits(&input, Some(&mut cache))?
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("reading logits back: {e:?}")))?;
        let mut step = Vec::with_capacity(b);
        for row in 0..b {
            let mut l = host[row * v..(row + 1) * v].to_vec();
            let next = if done[row] { 0 } else { sample(&mut l, &contexts[row], cfg, &mut rng) };
            step.push(next);
            if done[row] {
                continue;
            }
            if tokenizer.eos.contains(&next) {
                done[row] = true;
                out[row].stop = StopReason::Eos;
                continue;
            }
            contexts[row].push(next);
            out[row].tokens.push(next);
            let text = tokenizer.decode(&out[row].tokens, true)?;
            let stop_at = cfg.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min();
            let shown = stop_at.map_or(text.as_str(), |i| &text[..i]);
            // Stream only complete UTF-8 text; a partial character decodes to U+FFFD.
            if !shown.ends_with('\u{fffd}')
                && shown.len() > out[row].text.len()
                && shown.starts_with(&out[row].text)
            {
                on_text(row, &shown[out[row].text.len()..]);
                out[row].text = shown.to_string();
            }
            if stop_at.is_some() {
                out[row].text = shown.to_string();
                done[row] = true;
                out[row].stop = StopReason::StopString;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let positions = next_pos.clone();
        next_pos.iter_mut().for_each(|p| *p += 1);
        let key_padding = if any_pad {
            for p in &mut padding {
                p.push(false);
            }
            Some(padding.concat())
        } else {
            None
        };
        input = ForwardInput { tokens: step, batch: b, seq: 1, positions: Some(positions), key_padding };
    }
    for (row, g) in out.iter_mut().enumerate() {
        if g.stop == StopReason::Length && !done[row] {
            g.text = tokenizer.decode(&g.tokens, true)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rules_on_hand_made_logits() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = SamplingConfig::default();
        assert_eq!(sample(&mut [0.1, 2.0, 1.0], &[], &greedy, &mut rng), 1);
        // Repetition penalty 4: token 1's logit 2.0 becomes 0.5 < 1.0.
        let rep = SamplingConfig { repetition_penalty: 4.0, ..SamplingConfig::default() };
        assert_eq!(sample(&mut [0.1, 2.0, 1.0], &[1], &rep, &mut rng), 2);
        // Negative logits are multiplied: -1 * 4 = -4 < -2.
        assert_eq!(sample(&mut [-2.0, -1.0, -3.0], &[1], &rep, &mut rng), 0);
        // top-k = 1 is greedy whatever the temperature; top-p tiny keeps the best token only.
        let k1 = SamplingConfig { temperature: 5.0, top_k: 1, ..SamplingConfig::default() };
        let p0 = SamplingConfig { temperature: 5.0, top_p: 1e-6, ..SamplingConfig::default() };
        for _ in 0..50 {
            assert_eq!(sample(&mut [0.0, 0.5, 0.4], &[], &k1, &mut rng), 1);
            assert_eq!(sample(&mut [0.0, 0.5, 0.4], &[], &p0, &mut rng), 1);
        }
        // Temperature sampling follows softmax: with logits (0, ln 3), token 1 about 3/4 of the time.
        let t1 = SamplingConfig { temperature: 1.0, ..SamplingConfig::default() };
        let ones = (0..4000).filter(|_| sample(&mut [0.0, 3f32.ln()], &[], &t1, &mut rng) == 1).count();
        assert!((2850..3150).contains(&ones), "{ones} of 4000");
        // Same seed, same draws.
        let draw = |seed| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            (0..20).map(|_| sample(&mut [0.0, 0.1, 0.2, 0.3], &[], &t1, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }
}
