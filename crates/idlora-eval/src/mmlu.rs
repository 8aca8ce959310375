//! MMLU (Hendrycks et al., 2021): 57 subjects of four-choice questions, 5-shot from each subject's
//! `dev` split, the answer picked by log-likelihood; accuracy per subject and their macro average.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use idlora_models::{CausalLm, Tokenizer};
use serde_json::{Value, json};

use crate::choice::{ChoiceRun, LETTERS, Question};
use crate::error::{EvalError, Result, data_err};
use crate::task::{ChoiceFormat, EvalSettings, Progress, TaskResult};

/// MMLU questions by subject.
#[derive(Clone, Debug)]
pub struct MmluData {
    /// Where they came from.
    pub path: PathBuf,
    /// Evaluated split, by subject.
    pub eval: BTreeMap<String, Vec<Question>>,
    /// Few-shot split (`dev`), by subject; empty when the data has none.
    pub dev: BTreeMap<String, Vec<Question>>,
}

/// Reads MMLU: a folder in the Hugging Face layout `<subject>/<split>/*.arrow|*.parquet|*.jsonl`
/// (`split` evaluated, `dev` for shots), or one file of rows with `question`, `choices`, `answer`
/// (index or letter) and `subject`.
pub fn load(path: &Path, split: &str) -> Result<MmluData> {
    let mut eval = BTreeMap::new();
    let mut dev = BTreeMap::new();
    if path.is_dir() {
        let entries =
            std::fs::read_dir(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
        let mut subjects: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        subjects.sort();
        for dir in subjects {
            let subject = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(file) = data_file(&dir.join(split))? {
                eval.insert(subject.clone(), read_questions(&file, &subject)?);
            }
            if let Some(file) = data_file(&dir.join("dev"))? {
                dev.insert(subject.clone(), read_questions(&file, &subject)?);
            }
        }
    } else {
        for q in read_questions(path, "")? {
            eval.entry(q.subject.clone()).or_insert_with(Vec::new).push(q);
        }
    }
    if eval.values().all(Vec::is_empty) {
        return Err(data_err(path, format!("no MMLU question in split `{split}`")));
    }
    Ok(MmluData { path: path.to_path_buf(), eval, dev })
}

fn data_file(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|source| EvalError::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| ["arrow", "parquet", "jsonl", "json", "gz"].iter().any(|x| e == *x))
        })
        .filter(|p| {
            !p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("info.json") || n == "state.json")
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

fn read_questions(path: &Path, subject: &str) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (i, (location, row)) in idlora_data::read_rows(path)?.into_iter().enumerate() {
        let row = row.map_err(|e| data_err(path, format!("{location}: {e}")))?;
        let bad = |what: &str| data_err(path, format!("{location}: {what}"));
        let question =
            row.get("question").and_then(Value::as_str).ok_or_else(|| bad("no `question` text"))?;
        let choices: Vec<String> = row
            .get("choices")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `choices` list"))?
            .iter()
            .map(|c| c.as_str().map(str::to_string).ok_or_else(|| bad("a choice is not text")))
            .collect::<Result<_>>()?;
        let answer = match row.get("answer") {
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
            Some(Value::String(s)) => LETTERS.iter().position(|l| l == s),
            _ => None,
        }
        .filter(|&a| a < choices.len())
        .ok_or_else(|| bad("`answer` is not a valid choice index or letter"))?;
        let subject = row.get("subject").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(subject);
        out.push(Question {
            id: format!("{subject}/{}", i + 1),
            subject: subject.to_string(),
            question: question.to_string(),
            choices,
            answer,
        });
    }
    Ok(out)
}

impl MmluData {
    /// The evaluated questions, subjects interleaved (the first of each subject, then the second
    /// of each, ...), so that `--limit` samples every subject.
    pub fn interleaved(&self) -> Vec<Question> {
        let longest = self.eval.values().map(Vec::len).max().unwrap_or(0);
        (0..longest).flat_map(|i| self.eval.values().filter_map(move |qs| qs.get(i).cloned())).collect()
    }
}

/// `abstract_algebra` -> `abstract algebra`.
fn subject_words(s: &str) -> String {
    s.replace('_', " ")
}

/// Runs MMLU: `shots` (default 5) exemplars from the subject's dev split; choices scored by their
/// text unless `choice_format` says letters.
pub fn run(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    data: &MmluData,
    settings: &EvalSettings,
    progress: Progress,
) -> Result<TaskResult> {
    let shots = settings.shots.unwrap_or(5);
    let format = settings.choice_format.unwrap_or(ChoiceFormat::Text);
    if shots > 0 && data.dev.is_empty() {
        return Err(data_err(&data.path, "few-shot MMLU needs the `dev` split (or pass --shots 0)"));
    }
    let mut questions = data.interleaved();
    if let Some(l) = settings.limit {
        questions.truncate(l);
    }
    let header = |q: &Question| {
        if q.subject.is_empty() {
            "The following are multiple choice questions (with answers).\n\n".to_string()
        } else {
            format!(
                "The following are multiple choice questions (with answers) about {}.\n\n",
                subject_words(&q.subject)
            )
        }
    };
    let exemplars = |q: &Question| {
        data.dev.get(&q.subject).map(|d| d.iter().take(shots).cloned().collect()).unwrap_or_default()
    };
    let run = ChoiceRun {
        task: "mmlu",
        format,
        header: &header,
        shots: &exemplars,
        settings: json!({
            "data": data.path,
            "shots": shots,
            "shots_from": "the subject's dev split",
            "protocol": "log-likelihood of each choice's continuation after 'Answer:'; accuracy per subject, macro average",
        }),
    };
    run.run(model, tokenizer, &questions, progress)
}
