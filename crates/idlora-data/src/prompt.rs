//! How a prompt is put to a model, shared by training and the benchmarks so that a model is
//! evaluated in the format it was trained in.
//!
//! Training writes the format it used into the adapter (or exported model) folder with
//! [`record_format`]; evaluation reads it back with [`recorded_format`] and uses it unless told
//! otherwise.
//!
//! ```
//! use idlora_data::prompt::{PromptFormat, alpaca, record_format, recorded_format};
//! let dir = tempfile::tempdir()?;
//! assert_eq!(recorded_format(dir.path())?, None);
//! record_format(dir.path(), PromptFormat::Alpaca)?;
//! assert_eq!(recorded_format(dir.path())?, Some(PromptFormat::Alpaca));
//! assert!(alpaca("Add 2 and 3.", "").ends_with("### Instruction:\nAdd 2 and 3.\n\n### Response:\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{DataError, Result};

/// Stanford Alpaca's prompt for records with an input.
pub const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
/// Stanford Alpaca's prompt for records without one.
pub const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The file in an adapter or model folder that records the prompt format it was trained with.
pub const PROMPT_FILE: &str = "idlora_prompt.json";

/// A prompt format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptFormat {
    /// The text as it is (base models, few-shot completion).
    Raw,
    /// A user message in the model's chat template (rendered by the tokenizer's template).
    Chat,
    /// Stanford Alpaca's instruction template ([`ALPACA_NO_INPUT`] / [`ALPACA_WITH_INPUT`]).
    Alpaca,
}

impl PromptFormat {
    /// The name used in configs, flags and files.
    pub fn name(self) -> &'static str {
        match self {
            PromptFormat::Raw => "raw",
            PromptFormat::Chat => "chat",
            PromptFormat::Alpaca => "alpaca",
        }
    }
}

impl std::fmt::Display for PromptFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PromptFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "raw" => Ok(PromptFormat::Raw),
            "chat" => Ok(PromptFormat::Chat),
            "alpaca" => Ok(PromptFormat::Alpaca),
            other => Err(format!("`{other}` is not a prompt format (raw, chat, alpaca)")),
        }
    }
}

/// Alpaca's prompt for an instruction and an optional input (blank = none).
pub fn alpaca(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        ALPACA_NO_INPUT.replace("{instruction}", instruction)
    } else {
        ALPACA_WITH_INPUT.replace("{instruction}", instruction).replace("{input}", input)
    }
}

#[derive(Serialize, Deserialize)]
struct PromptFile {
    prompt_format: PromptFormat,
}

/// Writes [`PROMPT_FILE`] into `dir` (which must exist), atomically.
pub fn record_format(dir: &Path, format: PromptFormat) -> Result<()> {
    let path = dir.join(PROMPT_FILE);
    let text = serde_json::to_string_pretty(&PromptFile { prompt_format: format })
        .map_err(|e| DataError::Data { path: path.clone(), message: e.to_string() })?;
    write_atomic(&path, text.as_bytes()).map_err(|e| DataError::Io { path: e.path, source: e.source })
}

/// The format recorded in `dir`, `None` when the folder has no [`PROMPT_FILE`] (a foreign
/// adapter); a file that does not parse is an error naming it.
pub fn recorded_format(dir: &Path) -> Result<Option<PromptFormat>> {
    let path = dir.join(PROMPT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DataError::Io { path, source }),
    };
    let file: PromptFile = serde_json::from_str(&text).map_err(|e| DataError::Data {
        path: path.clone(),
        message: format!("{e} (expected {{\"prompt_format\": \"raw\" | \"chat\" | \"alpaca\"}})"),
    })?;
    Ok(Some(file.prompt_format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_matches_the_stanford_template_with_and_without_input() {
        // Written out by hand from Stanford Alpaca's `PROMPT_DICT`.
        let with = "Below is an instruction that describes a task, paired with an input that provides \
                    further context. Write a response that appropriately completes the request.\n\n\
                    ### Instruction:\nSum.\n\n### Input:\n1 2\n\n### Response:\n";
        assert_eq!(alpaca("Sum.", "1 2"), with);
        let without = "Below is an instruction that describes a task. Write a response that \
                       appropriately completes the request.\n\n### Instruction:\nSum.\n\n### Response:\n";
        assert_eq!(alpaca("Sum.", "  "), without);
    }

    #[test]
    fn names_round_trip_and_bad_ones_are_named() {
        for f in [PromptFormat::Raw, PromptFormat::Chat, PromptFormat::Alpaca] {
            assert_eq!(f.name().parse::<PromptFormat>(), Ok(f));
        }
        let err = "Alpaca".parse::<PromptFormat>().unwrap_err();
        assert!(err.contains("`Alpaca`") && err.contains("raw, chat, alpaca"), "{err}");
    }

    #[test]
    fn a_malformed_record_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PROMPT_FILE), r#"{"prompt_format": "vicuna"}"#).unwrap();
        let err = recorded_format(dir.path()).unwrap_err().to_string();
        assert!(err.contains(PROMPT_FILE) && err.contains("alpaca"), "{err}");
    }
}
