//! Multiple-choice questions scored by log-likelihood: the shared protocol of MMLU and
//! CommonsenseQA.

use std::collections::BTreeMap;
use std::time::Instant;

use idlora_models::{CausalLm, Tokenizer};
use serde_json::{Value, json};

use crate::error::Result;
use crate::task::{ChoiceFormat, Progress, TaskResult, answer_choice, percent};

/// One question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Its id (or `subject/index`).
    pub id: String,
    /// Subject (MMLU) or empty.
    pub subject: String,
    /// The question.
    pub question: String,
    /// The choices' texts.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub answer: usize,
}

/// Choice letters.
pub const LETTERS: [&str; 10] = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"];

/// The question as the model sees it; with its answer when `answered` (a few-shot exemplar).
///
/// ```
/// use idlora_eval::choice::{Question, render_question};
/// use idlora_eval::task::ChoiceFormat;
/// let q = Question { id: "1".into(), subject: String::new(), question: "2 + 2 =".into(),
///     choices: vec!["3".into(), "4".into()], answer: 1 };
/// assert_eq!(render_question(&q, ChoiceFormat::Letters, true), "2 + 2 =\nA. 3\nB. 4\nAnswer: B\n\n");
/// assert_eq!(render_question(&q, ChoiceFormat::Text, false), "Question: 2 + 2 =\nAnswer:");
/// ```
pub fn render_question(q: &Question, format: ChoiceFormat, answered: bool) -> String {
    let mut s = match format {
        ChoiceFormat::Letters => {
            let mut s = q.question.trim().to_string();
            for (l, c) in LETTERS.iter().zip(&q.choices) {
                s.push_str(&format!("\n{l}. {}", c.trim()));
            }
            s.push_str("\nAnswer:");
            s
        }
        ChoiceFormat::Text => format!("Question: {}\nAnswer:", q.question.trim()),
    };
    if answered {
        s.push_str(&continuations(q, format)[q.answer]);
        s.push_str("\n\n");
    }
    s
}

/// What follows `Answer:` for each choice: ` A`, ` B`, ... or ` <choice text>`.
pub fn continuations(q: &Question, format: ChoiceFormat) -> Vec<String> {
    match format {
        ChoiceFormat::Letters => LETTERS.iter().take(q.choices.len()).map(|l| format!(" {l}")).collect(),
        ChoiceFormat::Text => q.choices.iter().map(|c| format!(" {}", c.trim())).collect(),
    }
}

/// A multiple-choice benchmark run: each question's prompt is `header(q)`, the exemplars
/// `shots(q)` answered, then the question; the most likely continuation is the model's answer.
pub struct ChoiceRun<'a> {
    /// Benchmark name.
    pub task: &'a str,
    /// Formulation.
    pub format: ChoiceFormat,
    /// Prompt header of a question (MMLU: "The following are ... about <subject>.").
    pub header: &'a dyn Fn(&Question) -> String,
    /// Few-shot exemplars of a question.
    pub shots: &'a dyn Fn(&Question) -> Vec<Question>,
    /// Settings to record.
    pub settings: Value,
}

impl ChoiceRun<'_> {
    /// Scores every question; metrics: `accuracy` (micro), per-subject accuracy and their macro
    /// average when questions have subjects, and `acc_norm` (per-byte likelihood) for text choices.
    pub fn run(
        &self,
        model: &CausalLm,
        tokenizer: &Tokenizer,
        questions: &[Question],
        progress: Progress,
    ) -> Result<TaskResult> {
        let start = Instant::now();
        let mut records = Vec::with_capacity(questions.len());
        let mut right = 0;
        let mut right_norm = 0;
        let mut by_subject: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        progress(0, questions.len());
        for (i, q) in questions.iter().enumerate() {
            let mut context = (self.header)(q);
            for ex in (self.shots)(q) {
                context.push_str(&render_question(&ex, self.format, true));
            }
            context.push_str(&render_question(q, self.format, false));
            let outcome = answer_choice(model, tokenizer, &context, &continuations(q, self.format))?;
            let ok = outcome.pick == q.answer;
            right += usize::from(ok);
            right_norm += usize::from(outcome.pick_norm == q.answer);
            let entry = by_subject.entry(q.subject.clone()).or_default();
            entry.0 += usize::from(ok);
            entry.1 += 1;
            records.push(json!({
                "id": q.id,
                "subject": q.subject,
                "answer": q.answer,
                "pick": outcome.pick,
                "pick_norm": outcome.pick_norm,
                "logprobs": outcome.scores.iter().map(|s| s.logprob).collect::<Vec<_>>(),
                "correct": ok,
            }));
            progress(i + 1, questions.len());
        }
        let n = questions.len();
        let mut metrics = BTreeMap::from([("accuracy".to_string(), percent(right, n))]);
        if self.format == ChoiceFormat::Text {
            metrics.insert("acc_norm".into(), percent(right_norm, n));
        }
        let (metric, score) = if by_subject.len() > 1 || by_subject.keys().any(|s| !s.is_empty()) {
            for (s, (r, t)) in &by_subject {
                metrics.insert(format!("subject/{s}"), percent(*r, *t));
            }
            let macro_avg = by_subject.values().map(|(r, t)| percent(*r, *t)).sum::<f64>()
                / by_subject.len().max(1) as f64;
            metrics.insert("macro_accuracy".into(), macro_avg);
            ("macro_accuracy", macro_avg)
        } else {
            ("accuracy", percent(right, n))
        };
        let mut settings = self.settings.clone();
        if let Value::Object(m) = &mut settings {
            m.insert("format".into(), json!(self.format));
            m.insert("chance".into(), json!(chance(questions)));
        }
        Ok(TaskResult {
            task: self.task.to_string(),
            metric: metric.into(),
            score,
            n,
            metrics,
            settings,
            records,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Expected accuracy (percent) of guessing uniformly.
pub fn chance(questions: &[Question]) -> f64 {
    if questions.is_empty() {
        return 0.0;
    }
    100.0 * questions.iter().map(|q| 1.0 / q.choices.len().max(1) as f64).sum::<f64>()
        / questions.len() as f64
}
