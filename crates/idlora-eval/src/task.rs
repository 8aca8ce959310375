//! What every benchmark shares: its settings, its result, prompt rendering, batched generation and
//! choice scoring.

use std::collections::BTreeMap;

pub use idlora_data::prompt::PromptFormat;
use idlora_models::{CausalLm, ChatMessage, Generation, SamplingConfig, Tokenizer, generate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EvalError, Result};
use crate::loglik::{ContinuationScore, best_choice, score_continuations};

/// How multiple-choice questions are put to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceFormat {
    /// The choices are listed with letters and the model's likelihood of each letter after
    /// `Answer:` decides (MMLU's original protocol).
    Letters,
    /// Each choice's text is a continuation of `Answer:`; the most likely one wins ("cloze"
    /// formulation, which small models handle better). Also reports `acc_norm` (per byte).
    Text,
}

impl std::str::FromStr for ChoiceFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "letters" => Ok(ChoiceFormat::Letters),
            "text" => Ok(ChoiceFormat::Text),
            other => Err(format!("`{other}` is not a choice format (letters, text)")),
        }
    }
}

/// Settings shared by the benchmarks; `None` means the benchmark's own default.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// Evaluate at most this many items (the first ones, in a fixed order).
    pub limit: Option<usize>,
    /// Few-shot examples in each prompt.
    pub shots: Option<usize>,
    /// Prompts per generation batch.
    pub batch_size: usize,
    /// How GSM8K and HEx-PHI prompts are put to the model (raw text, the chat template, Alpaca's
    /// template); `None` = the benchmark's default (GSM8K raw, HEx-PHI chat). HumanEval, MMLU and
    /// CommonsenseQA always complete the raw text (their scoring reads a continuation).
    pub prompt: Option<PromptFormat>,
    /// Sampling for generation tasks (its `max_new_tokens` is overridden by `max_new_tokens`
    /// when set, else by the task's default).
    pub sampling: SamplingConfig,
    /// Tokens to generate at most.
    pub max_new_tokens: Option<usize>,
    /// Samples per HumanEval task (`n` of pass@k).
    pub samples: usize,
    /// Multiple-choice formulation for MMLU and CommonsenseQA (default: text).
    pub choice_format: Option<ChoiceFormat>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            limit: None,
            shots: None,
            batch_size: 4,
            prompt: None,
            sampling: SamplingConfig::default(),
            max_new_tokens: None,
            samples: 1,
            choice_format: None,
        }
    }
}

/// One benchmark's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    /// Benchmark name (`gsm8k`, `humaneval`, `mmlu`, `cqa`, `hexphi`).
    pub task: String,
    /// Name of the main metric.
    pub metric: String,
    /// The main metric, in percent.
    pub score: f64,
    /// Items evaluated.
    pub n: usize,
    /// Every metric (percent), including the main one and per-subject ones.
    pub metrics: BTreeMap<String, f64>,
    /// The settings used (protocol, shots, sampling, data file, ...).
    pub settings: Value,
    /// Per-item records (prompt id, generation or scores, verdict).
    pub records: Vec<Value>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Progress callback: `(done, total)`.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// The prompt text for `user_text`: as is, as a user message in the chat template, or as the
/// instruction of Alpaca's template.
pub fn render(tokenizer: &Tokenizer, user_text: &str, format: PromptFormat) -> Result<String> {
    Ok(match format {
        PromptFormat::Raw => user_text.to_string(),
        PromptFormat::Chat => tokenizer.apply_chat_template(&[ChatMessage::new("user", user_text)], true)?,
        PromptFormat::Alpaca => idlora_data::prompt::alpaca(user_text, ""),
    })
}

/// The sampling settings of a generation task.
pub fn sampling_for(settings: &EvalSettings, default_max_new: usize, stops: &[&str]) -> SamplingConfig {
    let mut s = settings.sampling.clone();
    s.max_new_tokens = settings.max_new_tokens.unwrap_or(default_max_new);
    for stop in stops {
        if !s.stop_strings.iter().any(|x| x == stop) {
            s.stop_strings.push((*stop).to_string());
        }
    }
    s
}

/// `settings` (a JSON object) with the generation settings of `sampling` added, for result files.
pub fn with_sampling(mut settings: Value, sampling: &SamplingConfig) -> Value {
    if let Value::Object(m) = &mut settings {
        m.insert("max_new_tokens".into(), sampling.max_new_tokens.into());
        m.insert("temperature".into(), sampling.temperature.into());
        m.insert("top_k".into(), sampling.top_k.into());
        m.insert("top_p".into(), sampling.top_p.into());
        m.insert("seed".into(), sampling.seed.into());
        m.insert("stop_strings".into(), sampling.stop_strings.clone().into());
    }
    settings
}

/// Generates a continuation of every prompt, `batch` prompts at a time (sorted by length so that
/// a batch wastes little padding), returned in the prompts' order. Each batch's sampler is seeded
/// from `sampling.seed` and the batch's first prompt index, so results do not depend on timing.
pub fn generate_all(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    sampling: &SamplingConfig,
    batch: usize,
    progress: Progress,
) -> Result<Vec<Generation>> {
    let batch = batch.max(1);
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| (prompts[i].len(), i));
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut done = 0;
    progress(0, prompts.len());
    for chunk in order.chunks(batch) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let cfg = SamplingConfig { seed: sampling.seed.wrapping_add(chunk[0] as u64), ..sampling.clone() };
        let gens = generate(model, tokenizer, &rows, &cfg, &mut |_, _| {})?;
        for (&i, g) in chunk.iter().zip(gens) {
            out[i] = Some(g);
        }
        done += chunk.len();
        progress(done, prompts.len());
    }
    out.into_iter()
        .enumerate()
        .map(|(i, g)| g.ok_or_else(|| EvalError::Settings(format!("prompt {i} was not generated"))))
        .collect()
}

/// Token ids of `context` and of each continuation as they are tokenised after it: the whole text
/// is tokenised and split at the context's length (so merges across the boundary are the ones the
/// model sees), falling back to tokenising the continuation alone when the split does not line up.
pub fn tokenize_choices(
    tokenizer: &Tokenizer,
    context: &str,
    continuations: &[String],
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    let ctx = tokenizer.encode(context)?;
    let mut conts = Vec::with_capacity(continuations.len());
    for c in continuations {
        let whole = tokenizer.encode(&format!("{context}{c}"))?;
        let cont = if whole.len() > ctx.len() && whole[..ctx.len()] == ctx[..] {
            whole[ctx.len()..].to_vec()
        } else {
            tokenizer.encode_continuation(c)?
        };
        conts.push(cont);
    }
    Ok((ctx, conts))
}

/// A scored multiple-choice question.
#[derive(Clone, Debug)]
pub struct ChoiceOutcome {
    /// Scores of the choices.
    pub scores: Vec<ContinuationScore>,
    /// The best choice by log-likelihood.
    pub pick: usize,
    /// The best choice by log-likelihood per byte.
    pub pick_norm: usize,
}

/// Scores each continuation after `context` and picks the most likely one.
pub fn answer_choice(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    context: &str,
    continuations: &[String],
) -> Result<ChoiceOutcome> {
    let (ctx, conts) = tokenize_choices(tokenizer, context, continuations)?;
    let scores = score_continuations(model, &ctx, &conts)?;
    let bytes: Vec<usize> = continuations.iter().map(|c| c.trim_start().len()).collect();
    Ok(ChoiceOutcome {
        pick: best_choice(&scores, &bytes, false),
        pick_norm: best_choice(&scores, &bytes, true),
        scores,
    })
}

/// `part / whole` in percent (0 for an empty whole).
pub fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

/// The first `limit` of `items`.
pub fn limited<T>(items: &[T], limit: Option<usize>) -> &[T] {
    &items[..limit.map_or(items.len(), |l| l.min(items.len()))]
}
