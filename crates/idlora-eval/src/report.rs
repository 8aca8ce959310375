//! Result files and tables: one JSON file per evaluation run, a Markdown table of it, and a
//! comparison table of several runs (methods as rows, benchmarks as columns, as in the paper's
//! Tables 1-2).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result, data_err};
use crate::task::TaskResult;

/// One evaluation run: a model (and adapter) on some benchmarks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    /// Row label in comparison tables (the method, e.g. `ID-LoRA r=32`, or `base`).
    pub label: String,
    /// The model path.
    pub model: String,
    /// The adapter folder, if any.
    pub adapter: Option<String>,
    /// The device it ran on.
    pub device: String,
    /// Seconds since the Unix epoch when it finished.
    pub finished_unix: u64,
    /// Per benchmark.
    pub tasks: Vec<TaskResult>,
    /// Trainable parameters of the evaluated method (the adapter's; the whole model for a full
    /// fine-tune), when known: the `# Params (%)` column of the paper's tables.
    #[serde(default)]
    pub trainable_params: Option<u64>,
    /// Parameters of the base model (embeddings and head included), the denominator of that
    /// column.
    #[serde(default)]
    pub base_params: Option<u64>,
}

/// Column titles of the benchmarks, in the paper's order.
const ORDER: [(&str, &str); 6] = [
    ("mmlu", "MMLU"),
    ("cqa", "CSQA"),
    ("gsm8k", "GSM8K"),
    ("humaneval", "HumanEval"),
    ("hexphi", "HEx-PHI refusal"),
    ("humaneval-canonical", "HumanEval canonical"),
];

fn title(task: &str) -> String {
    ORDER.iter().find(|(t, _)| *t == task).map_or_else(|| task.to_string(), |(_, n)| n.to_string())
}

fn rank(task: &str) -> usize {
    ORDER.iter().position(|(t, _)| *t == task).unwrap_or(ORDER.len())
}

impl EvalReport {
    /// Writes the report as pretty JSON, atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| EvalError::Settings(e.to_string()))?;
        Ok(idlora_data::write_atomic(path, text.as_bytes())?)
    }

    /// Reads a report written by [`EvalReport::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text)
            .map_err(|e| data_err(path, format!("not an idlora evaluation report: {e}")))
    }

    /// Markdown of this run: its row in the paper's layout (benchmarks as columns), then a table of
    /// benchmark, metric (and the other metrics), score, n, seconds.
    pub fn markdown(&self) -> String {
        let mut s = format!("Model: `{}`", self.model);
        if let Some(a) = &self.adapter {
            s.push_str(&format!(", adapter: `{a}`"));
        }
        s.push_str(&format!(" ({}; device: {})\n\n", self.label, self.device));
        s.push_str(&comparison_table(std::slice::from_ref(self)));
        s.push_str("\n| benchmark | metric | score (%) | n | seconds |\n|---|---|---|---|---|\n");
        let mut tasks: Vec<&TaskResult> = self.tasks.iter().collect();
        tasks.sort_by_key(|t| rank(&t.task));
        for t in tasks {
            let extra: Vec<String> = t
                .metrics
                .iter()
                .filter(|(k, _)| *k != &t.metric && !k.contains('/'))
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect();
            let metric = if extra.is_empty() {
                t.metric.clone()
            } else {
                format!("{} ({})", t.metric, extra.join(", "))
            };
            s.push_str(&format!(
                "| {} | {} | {:.1} | {} | {:.0} |\n",
                title(&t.task),
                metric,
                t.score,
                t.n,
                t.seconds
            ));
        }
        s
    }
}

/// The reports' labels, each once, in the order they first appear (a table's rows).
fn labels_in_order(reports: &[EvalReport]) -> Vec<&str> {
    let mut labels: Vec<&str> = Vec::new();
    for r in reports {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    labels
}

/// The column layouts of the paper's result tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaperLayout {
    /// Table 1 (single task): `# Params (%)`, GSM8K, HumanEval Pass@1 / @5 / @10, HEx-PHI
    /// (refusal rate).
    SingleTask,
    /// Tables 2, 3, 7, 8 (multi-task): `# Params (%)`, MATH (GSM8K), MMLU, CQA, CODE (HumanEval)
    /// Pass@1 / @5 / @10.
    MultiTask,
}

impl PaperLayout {
    /// `(title, task, metric)` of each score column, in the paper's order; metric `None` is the
    /// task's main metric.
    pub fn columns(self) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
        let pass = |t: &'static str| {
            [
                (t, "humaneval", Some("pass@1")),
                ("Pass@5", "humaneval", Some("pass@5")),
                ("Pass@10", "humaneval", Some("pass@10")),
            ]
        };
        match self {
            PaperLayout::SingleTask => {
                let mut c = vec![("GSM8K", "gsm8k", None)];
                c.extend(pass("HumanEval Pass@1"));
                c.push(("HEx-PHI", "hexphi", None));
                c
            }
            PaperLayout::MultiTask => {
                let mut c = vec![("MATH", "gsm8k", None), ("MMLU", "mmlu", None), ("CQA", "cqa", None)];
                c.extend(pass("CODE Pass@1"));
                c
            }
        }
    }
}

/// What the `# Params (%)` column divides by, printed under every paper-layout table.
pub const PARAMS_NOTE: &str = "`# Params (%)`: trainable parameters / all parameters of the base model \
(embeddings and head included), from the evaluated model's shapes. The paper's percentages do not \
all follow from its own Table 6 counts over LLaMA-3-8B's 8,030,261,248 parameters: LoRA r = 32 is \
83,886,080 = 1.04% (printed 1.03%), ID-LoRA r = 128, k = p = 4 is 49,020,928 = 0.61% (printed 0.56%).";

fn params_cell(r: &EvalReport) -> String {
    match (r.trainable_params, r.base_params) {
        (Some(t), Some(b)) if t == b => "100%".into(),
        (Some(t), Some(b)) if b > 0 => format!("{:.2}%", 100.0 * t as f64 / b as f64),
        _ => "-".into(),
    }
}

/// A table in one of the paper's layouts: one row per label (reports sharing a label fill one
/// row, the later report winning), `# Params (%)`, then the layout's columns in the paper's
/// order; a metric a row lacks (HumanEval pass@5 from one sample) is `-`.
///
/// ```
/// use idlora_eval::report::{EvalReport, PaperLayout, paper_table};
/// use idlora_eval::task::TaskResult;
/// let task = |name: &str, metrics: &[(&str, f64)]| TaskResult { task: name.into(), metric: metrics[0].0.into(),
///     score: metrics[0].1, n: 10, metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
///     settings: serde_json::Value::Null, records: vec![], seconds: 1.0 };
/// let lora = EvalReport { label: "LoRA".into(), model: "m".into(), adapter: None, device: "cpu".into(),
///     finished_unix: 0, trainable_params: Some(25), base_params: Some(1000),
///     tasks: vec![task("gsm8k", &[("accuracy", 40.0)]), task("humaneval", &[("pass@1", 12.5)])] };
/// let table = paper_table(&[lora], PaperLayout::SingleTask);
/// assert!(table.contains("| LoRA | 2.50% | 40.0 | 12.5 | - | - | - |"), "{table}");
/// ```
pub fn paper_table(reports: &[EvalReport], layout: PaperLayout) -> String {
    let columns = layout.columns();
    let mut s = String::from("| Method | # Params (%) |");
    for (title, _, _) in &columns {
        s.push_str(&format!(" {title} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(columns.len()));
    s.push('\n');
    for label in labels_in_order(reports) {
        let rows: Vec<&EvalReport> = reports.iter().rev().filter(|r| r.label == label).collect();
        let params = rows.iter().map(|r| params_cell(r)).find(|c| c != "-").unwrap_or_else(|| "-".into());
        s.push_str(&format!("| {label} | {params} |"));
        for (_, task, metric) in &columns {
            let value =
                rows.iter().find_map(|r| r.tasks.iter().find(|t| t.task == *task)).and_then(
                    |t| match metric {
                        Some(m) => t.metrics.get(*m).copied(),
                        None => Some(t.score),
                    },
                );
            match value {
                Some(v) => s.push_str(&format!(" {v:.1} |")),
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// A comparison table: one row per label (reports with the same label, such as two runs of one
/// adapter on different benchmarks, share a row; a benchmark in both takes the later report's),
/// one column per benchmark found in any of them (paper order), the main metric in percent, and
/// the average over the columns a row has.
///
/// ```
/// use idlora_eval::report::{EvalReport, comparison_table};
/// use idlora_eval::task::TaskResult;
/// let task = |name: &str, score: f64| TaskResult { task: name.into(), metric: "accuracy".into(), score,
///     n: 10, metrics: Default::default(), settings: serde_json::Value::Null, records: vec![], seconds: 1.0 };
/// let run = |label: &str, a: f64, b: f64| EvalReport { label: label.into(), model: "m".into(), adapter: None,
///     device: "cpu".into(), finished_unix: 0, tasks: vec![task("gsm8k", a), task("mmlu", b)],
///     trainable_params: None, base_params: None };
/// let mut cqa = run("LoRA", 0.0, 0.0);
/// cqa.tasks = vec![task("cqa", 30.0)];
/// let table = comparison_table(&[run("LoRA", 40.0, 60.0), run("ID-LoRA", 42.0, 61.0), cqa]);
/// assert!(table.contains("| LoRA | 60.0 | 30.0 | 40.0 | 43.3 |"), "{table}");
/// assert!(table.contains("| ID-LoRA | 61.0 | - | 42.0 | 51.5 |"), "{table}");
/// ```
pub fn comparison_table(reports: &[EvalReport]) -> String {
    let mut columns: Vec<String> =
        reports.iter().flat_map(|r| r.tasks.iter().map(|t| t.task.clone())).collect();
    columns.sort_by_key(|t| (rank(t), t.clone()));
    columns.dedup();
    let mut s = String::from("| method |");
    for c in &columns {
        s.push_str(&format!(" {} |", title(c)));
    }
    s.push_str(" Avg. |\n|---|");
    s.push_str(&"---|".repeat(columns.len() + 1));
    s.push('\n');
    for label in labels_in_order(reports) {
        s.push_str(&format!("| {label} |"));
        let mut sum = 0.0;
        let mut count = 0;
        for c in &columns {
            let found = reports
                .iter()
                .rev()
                .filter(|r| r.label == label)
                .find_map(|r| r.tasks.iter().find(|t| &t.task == c));
            match found {
                Some(t) => {
                    s.push_str(&format!(" {:.1} |", t.score));
                    sum += t.score;
                    count += 1;
                }
                None => s.push_str(" - |"),
            }
        }
        if count > 0 {
            s.push_str(&format!(" {:.1} |\n", sum / count as f64));
        } else {
            s.push_str(" - |\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_renders() {
        let task = TaskResult {
            task: "mmlu".into(),
            metric: "macro_accuracy".into(),
            score: 32.9,
            n: 228,
            metrics: [("macro_accuracy".to_string(), 32.9), ("accuracy".to_string(), 33.0)].into(),
            settings: serde_json::json!({"shots": 5}),
            records: vec![serde_json::json!({"id": "a/1", "correct": true})],
            seconds: 625.0,
        };
        let report = EvalReport {
            label: "base".into(),
            model: "m.gguf".into(),
            adapter: None,
            device: "cpu".into(),
            finished_unix: 1,
            tasks: vec![task],
            trainable_params: None,
            base_params: None,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs/x/results.json");
        report.save(&path).expect("save");
        assert!(!path.with_extension("json.partial").exists() && path.is_file());
        let back = EvalReport::load(&path).expect("load");
        assert_eq!(back.tasks[0].records, report.tasks[0].records);
        let md = back.markdown();
        assert!(md.contains("| base | 32.9 | 32.9 |"), "{md}");
        assert!(md.contains("| MMLU | macro_accuracy (accuracy 33.0) | 32.9 | 228 | 625 |"), "{md}");
        std::fs::write(&path, "{}").expect("write");
        let err = EvalReport::load(&path).expect_err("not a report");
        assert!(err.to_string().contains("results.json"), "{err}");
    }
}
