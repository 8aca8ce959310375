//! Turning a record into a training example: the prompt (Alpaca's template or the model's chat
//! template), the response, EOS, and where the loss starts.

use idlora_models::{ChatMessage, Tokenizer};

use crate::config::TemplateKind;
use crate::error::Result;
use idlora_data::Record;

/// A tokenised example: the loss covers `tokens[prompt_len..]` (the response and EOS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Prompt, response and EOS token ids.
    pub tokens: Vec<u32>,
    /// Number of prompt tokens (at least 1: the first token is never predicted).
    pub prompt_len: usize,
}

impl Example {
    /// Tokens the loss is computed on.
    pub fn target_count(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// What encoding did with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// It fit.
    Full(Example),
    /// The end was cut to `max_length`; some response tokens remain.
    Truncated(Example),
    /// The prompt alone fills `max_length`: no response token would be trained on.
    TooLong,
}

/// The prompt text of `record` (user message plus generation prompt for [`TemplateKind::Chat`]).
pub fn prompt_text(record: &Record, template: TemplateKind, tokenizer: &Tokenizer) -> Result<String> {
    Ok(match template {
        TemplateKind::Alpaca => idlora_data::prompt::alpaca(&record.instruction, &record.input),
        TemplateKind::Chat => {
            let user = if record.input.trim().is_empty() {
                record.instruction.clone()
            } else {
                format!("{}\n\n{}", record.instruction, record.input)
            };
            tokenizer.apply_chat_template(&[ChatMessage::new("user", &user)], true)?
        }
    })
}

/// Tokenises `record`: prompt (with BOS if the tokenizer adds one), response, then `eos`. Prompt
/// and response are tokenised separately, so the boundary is exact and the loss mask is too.
pub fn encode(
    record: &Record,
    template: TemplateKind,
    tokenizer: &Tokenizer,
    eos: Option<u32>,
    max_length: usize,
) -> Result<Encoded> {
    let prompt = tokenizer.encode(&prompt_text(record, template, tokenizer)?)?;
    let mut response = tokenizer.encode_continuation(&record.output)?;
    response.extend(eos);
    Ok(assemble(prompt, response, max_length))
}

/// Joins prompt and response token ids, cutting the end at `max_length`.
pub fn assemble(prompt: Vec<u32>, response: Vec<u32>, max_length: usize) -> Encoded {
    // The first token has no prediction; an empty prompt would leave the first response token
    // untrained, so it counts as prompt.
    let prompt_len = prompt.len().max(1);
    if prompt_len >= max_length || response.is_empty() {
        return Encoded::TooLong;
    }
    let mut tokens = prompt;
    tokens.extend(response);
    if tokens.len() > max_length {
        tokens.truncate(max_length);
        Encoded::Truncated(Example { tokens, prompt_len })
    } else {
        Encoded::Full(Example { tokens, prompt_len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assemble_cuts_the_end_and_keeps_the_mask() {
        let e = |t: Vec<u32>, p| Example { tokens: t, prompt_len: p };
        assert_eq!(assemble(vec![1, 2], vec![3, 4, 9], 8), Encoded::Full(e(vec![1, 2, 3, 4, 9], 2)));
        assert_eq!(assemble(vec![1, 2], vec![3, 4, 9], 3), Encoded::Truncated(e(vec![1, 2, 3], 2)));
        assert_eq!(assemble(vec![1, 2, 3], vec![4], 3), Encoded::TooLong);
        assert_eq!(assemble(vec![], vec![4, 5], 8), Encoded::Full(e(vec![4, 5], 1)));
        assert_eq!(e(vec![1, 2, 3, 4, 9], 2).target_count(), 3);
    }
}
