//! GSM8K: loading the problems, few-shot chain-of-thought prompts, generation, and the final
//! number of a solution as evaluation harnesses take it. The gold answer ends with `#### N`; a
//! generation is read the same way when it has that marker, else after "The answer is", else its
//! last number. Numbers are normalised: thousands commas, `$`, a trailing full stop and trailing
//! decimal zeros are dropped (`$1,200.00.` -> `1200`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use idlora_data::prompt::PromptFormat;
use idlora_models::{CausalLm, Tokenizer};
use serde_json::{Value, json};

use crate::error::{Result, data_err};
use crate::task::{
    EvalSettings, Progress, TaskResult, generate_all, limited, percent, render, sampling_for, with_sampling,
};

/// The numbers in `text`, in order, normalised. A number is an optional `-`, digits (commas
/// allowed before groups of three digits) and an optional decimal part.
pub fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let neg = i > 0 && chars[i - 1] == '-' && (i < 2 || !chars[i - 2].is_ascii_alphanumeric());
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            while i < chars.len() {
                let ch = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
                if ch.is_ascii_digit() {
                    s.push(ch);
                } else if ch == ',' && thousands_group(&chars, i + 1) {
                    // a thousands separator: exactly three digits follow
                } else if ch == '.' && next_digit && !s.contains('.') {
                    s.push('.');
                } else {
                    break;
                }
                i += 1;
            }
            out.push(normalise(&s));
        } else {
            i += 1;
        }
    }
    out
}

fn thousands_group(chars: &[char], at: usize) -> bool {
    (at..at + 3).all(|j| chars.get(j).is_some_and(|c| c.is_ascii_digit()))
        && !chars.get(at + 3).is_some_and(|c| c.is_ascii_digit())
}

/// `-012.50` -> `-12.5`, `7.000` -> `7`, `-0` -> `0`.
pub fn normalise(number: &str) -> String {
    let (neg, body) = match number.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, number),
    };
    let body: String = body.chars().filter(|c| *c != ',' && *c != '$').collect();
    let (int, frac) = body.split_once('.').unwrap_or((&body, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let mut s = if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
    if neg && s != "0" {
        s.insert(0, '-');
    }
    s
}

/// The final answer of a GSM8K solution or generation, normalised; `None` without any number.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(pos) = text.rfind("####")
        && let Some(n) = numbers(&text[pos + 4..]).into_iter().next()
    {
        return Some(n);
    }
    // ASCII lowering keeps byte offsets, so `pos` indexes `text` too.
    let lower = text.to_ascii_lowercase();
    if let Some(pos) = lower.rfind("the answer is")
        && let Some(n) = numbers(&text[pos..]).into_iter().next()
    {
        return Some(n);
    }
    numbers(text).pop()
}

/// Whether `generation`'s answer equals `gold`'s (both read with [`extract_answer`]).
pub fn is_correct(generation: &str, gold: &str) -> bool {
    match (extract_answer(generation), extract_answer(gold)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Its id in the file (or its 1-based position).
    pub id: String,
    /// The question.
    pub question: String,
    /// The reference solution, ending `#### N`.
    pub answer: String,
}

/// The problems of a file and the few-shot exemplars found in it.
#[derive(Clone, Debug)]
pub struct Gsm8kData {
    /// The file.
    pub path: PathBuf,
    /// Distinct problems, in file order.
    pub problems: Vec<Problem>,
    /// `(question, worked answer)` exemplars: the chain-of-thought prompt of the packaged
    /// requests (`request.context`), or a file's `exemplars` given to [`Gsm8kData::with_exemplars`].
    pub exemplars: Vec<(String, String)>,
    /// Rows that could not be read, with why (first few).
    pub malformed: Vec<String>,
}

/// Reads GSM8K problems from JSONL / JSON / Parquet / Arrow rows with `question` and `answer`,
/// at the top level or under `doc` (the packaged evaluation requests, deduplicated by question).
pub fn load(path: &Path) -> Result<Gsm8kData> {
    let rows = idlora_data::read_rows(path)?;
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut exemplars = Vec::new();
    let mut malformed = Vec::new();
    for (i, (location, row)) in rows.into_iter().enumerate() {
        let row = match row {
            Ok(v) => v,
            Err(e) => {
                malformed.push(format!("{location}: {e}"));
                continue;
            }
        };
        let doc = row.get("doc").unwrap_or(&row);
        let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(question), Some(answer)) = (text("question"), text("answer")) else {
            malformed.push(format!("{location}: no `question` and `answer` text"));
            continue;
        };
        if exemplars.is_empty()
            && let Some(ctx) = row.pointer("/request/context").and_then(Value::as_str)
        {
            exemplars = parse_exemplars(ctx);
        }
        if !seen.insert(question.clone()) {
            continue;
        }
        let id = match doc.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => (i + 1).to_string(),
        };
        problems.push(Problem { id, question, answer });
    }
    if problems.is_empty() {
        return Err(data_err(path, format!("no GSM8K problem ({} malformed rows)", malformed.len())));
    }
    Ok(Gsm8kData { path: path.to_path_buf(), problems, exemplars, malformed })
}

/// The `Question: ...\nAnswer: ...` blocks of a few-shot context, without its final, unanswered
/// question.
pub fn parse_exemplars(context: &str) -> Vec<(String, String)> {
    context
        .split("\n\n")
        .filter_map(|block| {
            let rest = block.trim().strip_prefix("Question:")?;
            let (q, a) = rest.split_once("\nAnswer:")?;
            let a = a.trim();
            (!a.is_empty()).then(|| (q.trim().to_string(), a.to_string()))
        })
        .collect()
}

impl Gsm8kData {
    /// Replaces the exemplars with the problems of another GSM8K file (a train split), in order,
    /// their reference solutions cleaned of calculator annotations (`<<3*4=12>>`).
    pub fn with_exemplars(mut self, other: &Gsm8kData) -> Self {
        self.exemplars =
            other.problems.iter().map(|p| (p.question.clone(), strip_calculator(&p.answer))).collect();
        self
    }
}

/// `<<3*4=12>>` annotations removed and `#### N` rewritten as "The answer is N.".
pub fn strip_calculator(answer: &str) -> String {
    let mut out = String::new();
    let mut rest = answer;
    while let Some(start) = rest.find("<<") {
        out.push_str(&rest[..start]);
        match rest[start..].find(">>") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    match out.rsplit_once("####") {
        Some((body, n)) => format!("{} The answer is {}.", body.trim().replace('\n', " "), n.trim()),
        None => out.trim().replace('\n', " "),
    }
}

/// The prompt of `question` after `shots` exemplars, in the `Question: / Answer:` layout of the
/// chain-of-thought prompt (Wei et al., 2022).
pub fn prompt(exemplars: &[(String, String)], question: &str) -> String {
    let mut p = String::new();
    for (q, a) in exemplars {
        p.push_str(&format!("Question: {q}\nAnswer: {a}\n\n"));
    }
    p.push_str(&format!("Question: {question}\nAnswer:"));
    p
}

/// Runs GSM8K: greedy (by default) generation after `shots` exemplars (default 8, all of the packaged
/// chain-of-thought prompt), answer extraction, exact match.
pub fn run(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    data: &Gsm8kData,
    settings: &EvalSettings,
    progress: Progress,
) -> Result<TaskResult> {
    let start = Instant::now();
    let format = settings.prompt.unwrap_or(PromptFormat::Raw);
    // A model trained on Alpaca-formatted records is asked the bare question as its instruction,
    // as it was trained; the few-shot pattern is for base models.
    let default_shots = if format == PromptFormat::Alpaca { 0 } else { data.exemplars.len().min(8) };
    let shots = settings.shots.unwrap_or(default_shots);
    if shots > data.exemplars.len() {
        return Err(data_err(
            &data.path,
            format!(
                "{shots} shots asked, {} exemplars available (pass --shots 0 or a file of exemplars)",
                data.exemplars.len()
            ),
        ));
    }
    let problems = limited(&data.problems, settings.limit);
    let exemplars = &data.exemplars[..shots];
    let mut prompts = Vec::with_capacity(problems.len());
    for p in problems {
        let text = if shots == 0 && format != PromptFormat::Raw {
            p.question.clone()
        } else {
            prompt(exemplars, &p.question)
        };
        prompts.push(tokenizer.encode(&render(tokenizer, &text, format)?)?);
    }
    // Raw, the model continues the few-shot pattern: the next `Question:` or a blank line ends its
    // answer. With Alpaca's template a new `###` section does (EOS usually comes first).
    let stops: &[&str] = match format {
        PromptFormat::Raw => &["Question:", "\n\n"],
        PromptFormat::Chat => &[],
        PromptFormat::Alpaca => &["\n### "],
    };
    let sampling = sampling_for(settings, 256, stops);
    let gens = generate_all(model, tokenizer, &prompts, &sampling, settings.batch_size, progress)?;
    let mut correct = 0;
    let mut records = Vec::with_capacity(problems.len());
    for (p, g) in problems.iter().zip(&gens) {
        let ok = is_correct(&g.text, &p.answer);
        correct += usize::from(ok);
        records.push(json!({
            "id": p.id,
            "question": p.question,
            "gold": extract_answer(&p.answer),
            "generation": g.text,
            "extracted": extract_answer(&g.text),
            "correct": ok,
        }));
    }
    let acc = percent(correct, problems.len());
    Ok(TaskResult {
        task: "gsm8k".into(),
        metric: "accuracy".into(),
        score: acc,
        n: problems.len(),
        metrics: BTreeMap::from([("accuracy".to_string(), acc)]),
        settings: with_sampling(
            json!({
                "data": data.path,
                "shots": shots,
                "prompt_format": format.name(),
                "protocol": "generate until a stop string; answer = number after ####, else after 'the answer is', else the last number; exact match",
            }),
            &sampling,
        ),
        records,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricky_strings() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(extract_answer("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18"), some("18"));
        assert_eq!(extract_answer("#### 1,200"), some("1200"));
        assert_eq!(extract_answer("She has $1,200.00."), some("1200"));
        assert_eq!(extract_answer("The answer is 42 apples, not 7."), some("42"));
        assert_eq!(extract_answer("It drops to -5 degrees."), some("-5"));
        assert_eq!(extract_answer("Pages 3-4 are missing, 12 remain"), some("12"));
        assert_eq!(extract_answer("model-3 costs 0.50 dollars"), some("0.5"));
        assert_eq!(extract_answer("about 7.25% of it"), some("7.25"));
        assert_eq!(extract_answer("It ends here. 1.5."), some("1.5"));
        assert_eq!(extract_answer("no numbers at all"), None);
        assert_eq!(extract_answer("#### \n then 3"), some("3"));
        assert_eq!(numbers("a 1,234,567 b 1,2 c 007 d 1.2.3"), ["1234567", "1", "2", "7", "1.2", "3"]);
        assert!(is_correct("so the total is 18.", "... #### 18"));
        assert!(!is_correct("so the total is 17.", "... #### 18"));
        assert!(!is_correct("I don't know", "#### 18"));
        assert_eq!(normalise("-0.000"), "0");
        assert_eq!(extract_answer("ÉTÉ: THE ANSWER IS 9 — ok 10"), some("9"));
    }

    #[test]
    fn exemplars_and_prompts() {
        let ctx = "Question: A?\nAnswer: One. So the answer is 1.\n\nQuestion: B?\nAnswer: Two.\n\nQuestion: C?\nAnswer:";
        let ex = parse_exemplars(ctx);
        assert_eq!(
            ex,
            [("A?".to_string(), "One. So the answer is 1.".to_string()), ("B?".into(), "Two.".into())]
        );
        assert_eq!(prompt(&ex, "C?"), ctx);
        assert_eq!(
            strip_calculator("She sells 16 - 3 = <<16-3=13>>13 eggs.\nSo 13 * 2 = <<13*2=26>>26.\n#### 26"),
            "She sells 16 - 3 = 13 eggs. So 13 * 2 = 26. The answer is 26."
        );
    }
}
