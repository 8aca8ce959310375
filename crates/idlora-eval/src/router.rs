//! Router analysis: per layer, projection and task, the mean router weight per cluster (ID-LoRA),
//! head (HydraLoRA) or expert (MoELoRA). The paper's claim that ID-LoRA's clusters specialise per
//! task is a claim about these numbers: if the router sends every task to the same mixture, the
//! clusters are not task-specific, whatever the scores say.
//!
//! [`analyze`] runs each task's texts through the model once (no generation) and averages the
//! router weights `softmax(W_g x)` over all of the task's tokens. [`RouterReport::task_spread`]
//! sums it up in one number, and [`RouterReport::heatmap_svg`] draws it.
//!
//! ```
//! use idlora_eval::router::{ProjectionRouting, RouterReport};
//! // Two tasks over one projection with two clusters: each task prefers another cluster.
//! let report = RouterReport {
//!     label: "ID-LoRA r=8".into(),
//!     experts: 2,
//!     tasks: vec!["math".into(), "code".into()],
//!     texts: vec![1, 1],
//!     tokens: vec![10, 12],
//!     projections: vec![ProjectionRouting {
//!         layer: 0,
//!         target: "q_proj".into(),
//!         mean: vec![vec![0.7, 0.3], vec![0.3, 0.7]],
//!     }],
//! };
//! // Each task's mixture is 0.2 (total variation) away from their average.
//! assert!((report.task_spread() - 0.2).abs() < 1e-12);
//! assert!(report.heatmap_svg().starts_with("<svg"));
//! ```

use std::fmt::Write as _;
use std::path::Path;

use idlora_models::{CausalLm, ForwardInput, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::benchmark::DataSources;
use crate::error::{EvalError, Result, data_err};

/// One task's texts, as the model reads them.
#[derive(Clone, Debug)]
pub struct TaskTexts {
    /// Task name (a benchmark's name, or the name given to a data file).
    pub task: String,
    /// Its texts.
    pub texts: Vec<String>,
}

/// The mean router weights of one projection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionRouting {
    /// Decoder layer.
    pub layer: usize,
    /// Module name (`q_proj`, ..., `down_proj`).
    pub target: String,
    /// `[task][expert]`: the mean over the task's tokens of the router weight of each cluster /
    /// head / expert (each row sums to 1).
    pub mean: Vec<Vec<f64>>,
}

/// Mean router weights of every routed projection, per task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterReport {
    /// What was analysed (`ID-LoRA r=32`, a table row, ...).
    pub label: String,
    /// Clusters / heads / experts per router.
    pub experts: usize,
    /// Task names, in the order of every `mean`'s rows.
    pub tasks: Vec<String>,
    /// Texts read per task.
    pub texts: Vec<usize>,
    /// Tokens averaged over per task.
    pub tokens: Vec<usize>,
    /// Per routed projection, in layer order.
    pub projections: Vec<ProjectionRouting>,
}

impl TaskTexts {
    /// The texts as token ids, each cut to its first `max_tokens` (empty texts dropped).
    pub fn encode(&self, tokenizer: &Tokenizer, max_tokens: usize) -> Result<TaskTokens> {
        if max_tokens == 0 {
            return Err(EvalError::Settings("router analysis: max_tokens must be at least 1".into()));
        }
        let mut sequences = Vec::with_capacity(self.texts.len());
        for text in &self.texts {
            let mut ids = tokenizer.encode(text)?;
            ids.truncate(max_tokens);
            if !ids.is_empty() {
                sequences.push(ids);
            }
        }
        Ok(TaskTokens { task: self.task.clone(), sequences })
    }
}

/// The first `limit` items of each named benchmark as tasks (see [`Benchmark::texts`]).
///
/// [`Benchmark::texts`]: crate::benchmark::Benchmark::texts
pub fn benchmark_tasks<S: AsRef<str>>(
    names: &[S],
    data: &DataSources,
    limit: usize,
) -> Result<Vec<TaskTexts>> {
    let mut out = Vec::new();
    for b in crate::benchmark::select(names)? {
        b.check(data)?;
        out.push(TaskTexts { task: b.name().to_string(), texts: b.texts(data, limit)? });
    }
    Ok(out)
}

/// The first `limit` records of an instruction data file as a task: Alpaca records
/// (`instruction` and `input`) or, when the file has none, GSM8K ones (`question`); the text is
/// the instruction and its input, without a template.
pub fn file_task(name: &str, path: &Path, limit: usize) -> Result<TaskTexts> {
    let mut read = idlora_data::read_records(path, &idlora_data::Format::Alpaca)?;
    if read.records.is_empty() {
        read = idlora_data::read_records(path, &idlora_data::Format::Gsm8k)?;
    }
    if read.records.is_empty() {
        return Err(data_err(path, "no Alpaca (`instruction`) or GSM8K (`question`) record"));
    }
    let texts = read
        .records
        .into_iter()
        .take(limit)
        .map(|r| if r.input.is_empty() { r.instruction } else { format!("{}\n{}", r.instruction, r.input) })
        .collect();
    Ok(TaskTexts { task: name.to_string(), texts })
}

/// One task's token sequences.
#[derive(Clone, Debug)]
pub struct TaskTokens {
    /// Task name.
    pub task: String,
    /// Token ids, one sequence per text.
    pub sequences: Vec<Vec<u32>>,
}

/// Runs every task's sequences through `model` (one forward each, no generation) and averages
/// the router weights of each routed projection over the task's tokens. An error when the model
/// has no router (LoRA, DoRA, a full fine-tune) or a task has no sequence. `progress` gets
/// (done, total) sequences.
pub fn analyze(
    model: &CausalLm,
    label: &str,
    tasks: &[TaskTokens],
    progress: &dyn Fn(usize, usize),
) -> Result<RouterReport> {
    let total: usize = tasks.iter().map(|t| t.sequences.len()).sum();
    // sums[projection][task][expert]
    let mut sums: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut keys: Vec<(usize, String)> = Vec::new();
    let mut experts = 0;
    let (mut texts, mut tokens) = (vec![0; tasks.len()], vec![0; tasks.len()]);
    let mut done = 0;
    for (ti, task) in tasks.iter().enumerate() {
        if task.sequences.is_empty() {
            return Err(EvalError::Settings(format!("router analysis: task `{}` has no text", task.task)));
        }
        for ids in &task.sequences {
            let routing = model.routing(&ForwardInput::single(ids))?;
            if routing.is_empty() {
                return Err(EvalError::Settings(format!(
                    "router analysis of {label}: the model has no router (only HydraLoRA, MoELoRA and ID-LoRA adapters route)"
                )));
            }
            if sums.is_empty() {
                experts = routing[0].weights.dims()[1];
                keys = routing.iter().map(|r| (r.layer, r.target.module_name().to_string())).collect();
                sums = vec![vec![vec![0.0; experts]; tasks.len()]; routing.len()];
            }
            for (pi, r) in routing.into_iter().enumerate() {
                let col = r
                    .weights
                    .sum_dim(0)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| EvalError::Backend(format!("{e:?}")))?;
                for (acc, v) in sums[pi][ti].iter_mut().zip(col) {
                    *acc += f64::from(v);
                }
            }
            texts[ti] += 1;
            tokens[ti] += ids.len();
            done += 1;
            progress(done, total);
        }
    }
    let projections = keys
        .into_iter()
        .zip(sums)
        .map(|((layer, target), per_task)| ProjectionRouting {
            layer,
            target,
            mean: per_task
                .into_iter()
                .zip(&tokens)
                .map(|(s, &n)| s.into_iter().map(|v| v / n.max(1) as f64).collect())
                .collect(),
        })
        .collect();
    Ok(RouterReport {
        label: label.to_string(),
        experts,
        tasks: tasks.iter().map(|t| t.task.clone()).collect(),
        texts,
        tokens,
        projections,
    })
}

impl RouterReport {
    /// How task-specific the routing is: the mean, over projections and tasks, of the total
    /// variation distance `0.5 sum_j |p_tj - pbar_j|` between a task's mean mixture and the
    /// average of all tasks' mixtures. 0 when every task is routed alike; at most `1 - 1/T` for
    /// `T` tasks each sent to its own cluster.
    pub fn task_spread(&self) -> f64 {
        let t = self.tasks.len();
        if t == 0 || self.projections.is_empty() {
            return 0.0;
        }
        let mut total = 0.0;
        for p in &self.projections {
            let avg: Vec<f64> =
                (0..self.experts).map(|j| p.mean.iter().map(|row| row[j]).sum::<f64>() / t as f64).collect();
            for row in &p.mean {
                total += 0.5 * row.iter().zip(&avg).map(|(a, b)| (a - b).abs()).sum::<f64>();
            }
        }
        total / (t * self.projections.len()) as f64
    }

    /// Writes `router.json` and `router.svg` into `dir` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| EvalError::Io { path: dir.to_path_buf(), source })?;
        let json = serde_json::to_string_pretty(self).map_err(|e| EvalError::Settings(e.to_string()))?;
        idlora_data::write_atomic(&dir.join("router.json"), json.as_bytes())?;
        idlora_data::write_atomic(&dir.join("router.svg"), self.heatmap_svg().as_bytes())?;
        Ok(())
    }

    /// Reads a report written by [`RouterReport::save`] (`router.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|e| data_err(path, format!("not a router report: {e}")))
    }

    /// Two heat maps side by side, one row per projection (layer by layer), one column block per
    /// task with a column per cluster: left the mean router weight (white 0 to blue at the
    /// largest), right its deviation from the average over tasks (blue above, red below), where
    /// specialisation shows.
    pub fn heatmap_svg(&self) -> String {
        const CW: usize = 12; // cell width
        const RH: usize = 4; // row height
        const GAP: usize = 6; // between task blocks
        const LEFT: usize = 70;
        const TOP: usize = 78;
        let k = self.experts.max(1);
        let nt = self.tasks.len().max(1);
        let block = k * CW + GAP;
        let panel = nt * block;
        let rows = self.projections.len();
        let width = LEFT + 2 * panel + 40;
        let height = TOP + rows * RH + 40;
        let max = self.projections.iter().flat_map(|p| p.mean.iter().flatten()).cloned().fold(0.0, f64::max);
        let devs: Vec<Vec<Vec<f64>>> = self
            .projections
            .iter()
            .map(|p| {
                let avg: Vec<f64> = (0..k)
                    .map(|j| p.mean.iter().map(|r| r.get(j).copied().unwrap_or(0.0)).sum::<f64>() / nt as f64)
                    .collect();
                p.mean.iter().map(|r| r.iter().zip(&avg).map(|(a, b)| a - b).collect()).collect()
            })
            .collect();
        let dmax = devs.iter().flatten().flatten().fold(0.0_f64, |m, v| m.max(v.abs()));
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="10">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="14" font-size="12">{}: mean router weight per cluster, per task (spread {:.3})</text>"#,
            escape(&self.label),
            self.task_spread()
        );
        let titles = [format!("weight (0 to {max:.2})"), format!("minus the task average (+/-{dmax:.3})")];
        for (pi, title) in titles.iter().enumerate() {
            let x0 = LEFT + pi * (panel + 20);
            let _ = writeln!(s, r#"<text x="{x0}" y="32">{}</text>"#, escape(title));
            for (ti, task) in self.tasks.iter().enumerate() {
                let x = x0 + ti * block;
                let _ = writeln!(s, r#"<text x="{x}" y="50">{}</text>"#, escape(task));
                for j in 0..k {
                    let _ = writeln!(
                        s,
                        r#"<text x="{}" y="{}" font-size="7">{j}</text>"#,
                        x + j * CW + 3,
                        TOP - 4
                    );
                }
            }
        }
        let mut last_layer = usize::MAX;
        for (ri, p) in self.projections.iter().enumerate() {
            let y = TOP + ri * RH;
            if p.layer != last_layer {
                last_layer = p.layer;
                if p.layer % 2 == 0 {
                    let _ =
                        writeln!(s, r#"<text x="4" y="{}" font-size="8">layer {}</text>"#, y + 6, p.layer);
                }
                let _ = writeln!(
                    s,
                    r##"<line x1="{}" x2="{}" y1="{y}" y2="{y}" stroke="#999" stroke-width="0.3"/>"##,
                    LEFT - 6,
                    LEFT + 2 * panel + 20
                );
            }
            for (ti, row) in p.mean.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let x = LEFT + ti * block + j * CW;
                    let fill = sequential(if max > 0.0 { v / max } else { 0.0 });
                    let _ =
                        writeln!(s, r#"<rect x="{x}" y="{y}" width="{CW}" height="{RH}" fill="{fill}"/>"#);
                    let d = devs[ri][ti][j];
                    let fill = diverging(if dmax > 0.0 { d / dmax } else { 0.0 });
                    let x = x + panel + 20;
                    let _ =
                        writeln!(s, r#"<rect x="{x}" y="{y}" width="{CW}" height="{RH}" fill="{fill}"/>"#);
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}">rows: q k v o gate up down of each layer; {} tokens per task: {}</text>"#,
            TOP + rows * RH + 20,
            self.tokens.iter().sum::<usize>(),
            escape(&self.tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" / "))
        );
        s.push_str("</svg>\n");
        s
    }
}

/// White (0) to blue (1).
fn sequential(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let c = |lo: f64| (255.0 - (255.0 - lo) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", c(33.0), c(102.0), c(172.0))
}

/// Red (-1), white (0), blue (+1).
fn diverging(t: f64) -> String {
    let t = t.clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 { (33.0, 102.0, 172.0) } else { (178.0, 24.0, 43.0) };
    let a = t.abs();
    let c = |v: f64| (255.0 - (255.0 - v) * a).round() as u8;
    format!("#{:02x}{:02x}{:02x}", c(r), c(g), c(b))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mean: Vec<Vec<f64>>) -> RouterReport {
        RouterReport {
            label: "x".into(),
            experts: mean[0].len(),
            tasks: (0..mean.len()).map(|i| format!("t{i}")).collect(),
            texts: vec![1; mean.len()],
            tokens: vec![5; mean.len()],
            projections: vec![ProjectionRouting { layer: 0, target: "q_proj".into(), mean }],
        }
    }

    #[test]
    fn spread_is_zero_for_alike_tasks_and_maximal_for_disjoint_ones() {
        assert_eq!(report(vec![vec![0.25; 4]; 3]).task_spread(), 0.0);
        // Three tasks, each on its own cluster: every task is 1 - 1/3 away from the average.
        let disjoint = vec![vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]];
        assert!((report(disjoint).task_spread() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn colours_run_from_white_to_the_ends() {
        assert_eq!(sequential(0.0), "#ffffff");
        assert_eq!(sequential(1.0), "#2166ac");
        assert_eq!(diverging(0.0), "#ffffff");
        assert_eq!(diverging(-1.0), "#b2182b");
        let svg = report(vec![vec![0.5, 0.5], vec![0.9, 0.1]]).heatmap_svg();
        // 2 tasks x 2 clusters, two panels: 8 cells plus the background.
        assert_eq!(svg.matches("<rect").count(), 9);
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn data_files_become_tasks_alpaca_or_gsm8k() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alpaca = dir.path().join("a.json");
        std::fs::write(
            &alpaca,
            r#"[{"instruction": "Sort", "input": "3 1 2", "output": "1 2 3"}, {"instruction": "Hi", "input": "", "output": "Hello"}, {"instruction": "x", "input": "", "output": "y"}]"#,
        )
        .expect("write");
        let t = file_task("alpaca", &alpaca, 2).expect("alpaca");
        assert_eq!((t.task.as_str(), t.texts), ("alpaca", vec!["Sort\n3 1 2".to_string(), "Hi".to_string()]));
        let gsm = dir.path().join("g.jsonl");
        std::fs::write(&gsm, "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n").expect("write");
        assert_eq!(file_task("math", &gsm, 9).expect("gsm8k").texts, ["1+1?"]);
        let other = dir.path().join("o.jsonl");
        std::fs::write(&other, "{\"text\": \"a\"}\n").expect("write");
        let err = file_task("o", &other, 9).expect_err("no records").to_string();
        assert!(err.contains("o.jsonl") && err.contains("instruction"), "{err}");
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = report(vec![vec![0.6, 0.4], vec![0.2, 0.8]]);
        r.save(dir.path()).expect("save");
        assert_eq!(RouterReport::load(&dir.path().join("router.json")).expect("load"), r);
        assert!(dir.path().join("router.svg").exists());
    }
}
