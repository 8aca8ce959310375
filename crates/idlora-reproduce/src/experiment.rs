//! The paper's experiments as grids of cells: which model, data, method and settings each cell
//! trains, which benchmarks it is evaluated on, and where its row and column sit in the paper's
//! table.

use idlora_adapter::MethodKind;
use idlora_eval::report::PaperLayout;

use crate::error::{ReproduceError, Result};
use crate::paper::{self, PaperRow};

/// An experiment of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Experiment {
    /// Table 1: single task (math, code, safety), per model.
    Table1,
    /// Table 2: multi-task, per model.
    Table2,
    /// Table 3: PMRC vs serial (SS) and random (RS) row selection, and without rank boosting.
    Table3,
    /// Table 7 (Figure 4): ID-LoRA against LoRA over parameter budgets.
    Table7,
    /// Table 8: the number of clusters k = 2, 4, 6, 8.
    Table8,
}

impl Experiment {
    /// Every experiment, in the paper's order.
    pub const ALL: [Experiment; 5] =
        [Experiment::Table1, Experiment::Table2, Experiment::Table3, Experiment::Table7, Experiment::Table8];

    /// The command-line name (`table1`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Experiment::Table1 => "table1",
            Experiment::Table2 => "table2",
            Experiment::Table3 => "table3",
            Experiment::Table7 => "table7",
            Experiment::Table8 => "table8",
        }
    }

    /// A one-line description, for titles.
    pub fn title(self) -> &'static str {
        match self {
            Experiment::Table1 => "Table 1: single-task fine-tuning (math, code, safety)",
            Experiment::Table2 => "Table 2: multi-task fine-tuning",
            Experiment::Table3 => "Table 3: row selection (PMRC, serial, random) and rank boosting",
            Experiment::Table7 => "Table 7 / Figure 4: ID-LoRA and LoRA over parameter budgets",
            Experiment::Table8 => "Table 8: the number of clusters k",
        }
    }

    /// The table's columns.
    pub fn layout(self) -> PaperLayout {
        match self {
            Experiment::Table1 => PaperLayout::SingleTask,
            _ => PaperLayout::MultiTask,
        }
    }
}

impl std::str::FromStr for Experiment {
    type Err = ReproduceError;
    fn from_str(s: &str) -> Result<Self> {
        Experiment::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Experiment::ALL.iter().map(|e| e.name()).collect();
            ReproduceError::Setting(format!("`{s}` is not an experiment ({})", known.join(", ")))
        })
    }
}

/// Which configurations a grid runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// The paper's models, data and settings (Tables 4-5), from the user's paths.
    Paper,
    /// The same grid on SmolLM2-135M and the packaged data, with bounded steps.
    Small,
}

impl Scale {
    /// `paper` or `small`.
    pub fn name(self) -> &'static str {
        match self {
            Scale::Paper => "paper",
            Scale::Small => "small",
        }
    }
}

impl std::str::FromStr for Scale {
    type Err = ReproduceError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Scale::Paper),
            "small" => Ok(Scale::Small),
            other => Err(ReproduceError::Setting(format!("`{other}` is not a scale (paper, small)"))),
        }
    }
}

/// A training domain: which data a cell trains on and which benchmarks score it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// GSM8K train -> GSM8K.
    Math,
    /// CodeAlpaca -> HumanEval.
    Code,
    /// Saferpaca -> HEx-PHI.
    Safety,
    /// Alpaca + GSM8K + half of CodeAlpaca -> GSM8K, MMLU, CommonsenseQA, HumanEval.
    MultiTask,
}

impl Domain {
    /// Folder-name part.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Math => "math",
            Domain::Code => "code",
            Domain::Safety => "safety",
            Domain::MultiTask => "multitask",
        }
    }

    /// The benchmarks a cell of this domain is evaluated on.
    pub fn tasks(self) -> &'static [&'static str] {
        match self {
            Domain::Math => &["gsm8k"],
            Domain::Code => &["humaneval"],
            Domain::Safety => &["hexphi"],
            Domain::MultiTask => &["gsm8k", "mmlu", "cqa", "humaneval"],
        }
    }
}

/// A base model of the paper (paper scale) or its stand-in (small scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelName {
    /// Meta-Llama-3-8B.
    Llama3_8b,
    /// Mistral-7B-v0.1.
    Mistral7b,
    /// Llama-3.2-3B (Tables 3 and 8).
    Llama32_3b,
    /// SmolLM2-135M-Instruct, every small-scale cell.
    Smollm2,
}

impl ModelName {
    /// The key in the paths file and in folder names.
    pub fn key(self) -> &'static str {
        match self {
            ModelName::Llama3_8b => "llama3-8b",
            ModelName::Mistral7b => "mistral-7b",
            ModelName::Llama32_3b => "llama3.2-3b",
            ModelName::Smollm2 => "smollm2",
        }
    }

    /// The name in table headings.
    pub fn title(self) -> &'static str {
        match self {
            ModelName::Llama3_8b => "LLaMA-3-8B",
            ModelName::Mistral7b => "Mistral-7B",
            ModelName::Llama32_3b => "LLaMA-3.2-3B",
            ModelName::Smollm2 => "SmolLM2-135M",
        }
    }
}

/// One cell of a grid: a training run and its evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// Folder name under the output folder (`<model>/<domain>/<row>/seed<N>`), unique in the grid.
    pub id: String,
    /// The model the cell trains.
    pub model: ModelName,
    /// The paper's model this cell stands for (its table block; the same as `model` at paper scale).
    pub paper_model: ModelName,
    /// Its data and benchmarks.
    pub domain: Domain,
    /// Row label in the table (`LoRA`, `ID-LoRA (Ours)`, `LoRA r=4`, ...).
    pub row: String,
    /// Config overrides for the method (`method.kind=lora`, ...), in the config's `--set` syntax.
    pub method: Vec<String>,
    /// Seed (training order, dropout, clustering).
    pub seed: u64,
    /// The paper's figures for this row, when the paper reports them.
    pub paper: Option<&'static PaperRow>,
}

/// One row of a grid before seeds and models are applied: its label and method overrides.
struct RowSpec {
    row: String,
    method: Vec<String>,
}

fn row(label: &str, method: Vec<String>) -> RowSpec {
    RowSpec { row: label.to_string(), method }
}

fn kind_rank(kind: &str, r: usize) -> Vec<String> {
    vec![format!("method.kind={kind}"), format!("method.r={r}")]
}

/// The rank at each scale: the paper's, or the small-scale one (a quarter of it, so that ID-LoRA's
/// `k r` fits SmolLM2's 192-row key / value projections: `k r <= 192`).
fn rank(scale: Scale, paper: usize, small: usize) -> usize {
    if scale == Scale::Paper { paper } else { small }
}

/// Every adapter method of the main comparison (Tables 1-2, Figure 3) with its rank: the
/// paper's (LoRA / DoRA 32, HydraLoRA 16, MoELoRA 8, ID-LoRA 128) or the small scale's quarter.
///
/// ```
/// use idlora_adapter::MethodKind;
/// use idlora_reproduce::experiment::{Scale, method_ranks};
/// assert_eq!(method_ranks(Scale::Paper)[4], (MethodKind::IdLora, 128));
/// assert_eq!(method_ranks(Scale::Small)[2], (MethodKind::HydraLora, 4));
/// ```
pub fn method_ranks(scale: Scale) -> [(MethodKind, usize); 5] {
    [
        (MethodKind::Lora, rank(scale, 32, 8)),
        (MethodKind::Dora, rank(scale, 32, 8)),
        (MethodKind::HydraLora, rank(scale, 16, 4)),
        (MethodKind::MoeLora, rank(scale, 8, 2)),
        (MethodKind::IdLora, rank(scale, 128, 32)),
    ]
}

/// The main comparison's rows (Tables 1 and 2): FFT and every method at its paper rank.
fn method_rows(scale: Scale, with_moelora: bool) -> Vec<RowSpec> {
    // Full fine-tuning trains the base itself, which stays f32 (the paper-scale configs store a
    // frozen base in bf16).
    let mut rows = vec![row("FFT", vec!["method.kind=full".to_string(), "train.precision=f32".to_string()])];
    for (kind, r) in method_ranks(scale) {
        if kind == MethodKind::MoeLora && !with_moelora {
            continue;
        }
        let label = if kind == MethodKind::IdLora { "ID-LoRA (Ours)" } else { kind.display_name() };
        rows.push(row(label, kind_rank(kind.name(), r)));
    }
    rows
}

fn rows_of(experiment: Experiment, scale: Scale) -> Vec<RowSpec> {
    match experiment {
        Experiment::Table1 => method_rows(scale, false),
        Experiment::Table2 => method_rows(scale, true),
        Experiment::Table3 => {
            let r = rank(scale, 128, 32);
            // Without rank boosting p = 1, so B is [d_out, k r]: r / 16 gives the same B as r with
            // p = k = 4 ([d_out / 4, k r / 4]), the "rank closely matching the parameter budget".
            let mut no_rb = kind_rank("idlora", r / 16);
            no_rb.push("method.rank_boost=false".into());
            let mut ss = kind_rank("idlora", r);
            ss.push("cluster.selector=ss".into());
            let mut rs = kind_rank("idlora", r);
            rs.push("cluster.selector=rs".into());
            vec![
                row("LoRA", kind_rank("lora", rank(scale, 32, 8))),
                row("ID-LoRA (PMRC+RB)", kind_rank("idlora", r)),
                row("ID-LoRA (w/o RB)", no_rb),
                row("ID-LoRA (SS+RB)", ss),
                row("ID-LoRA (RS+RB)", rs),
            ]
        }
        Experiment::Table7 => {
            let lora: [(usize, usize); 4] = [(4, 1), (8, 2), (16, 4), (32, 8)];
            // Small: ID-LoRA's largest rank is 48 (k r <= 192), not a quarter of 256.
            let idlora: [(usize, usize); 4] = [(32, 8), (64, 16), (128, 32), (256, 48)];
            let mut rows = Vec::new();
            for (p, s) in lora {
                let r = rank(scale, p, s);
                rows.push(row(&format!("LoRA r={r}"), kind_rank("lora", r)));
            }
            for (p, s) in idlora {
                let r = rank(scale, p, s);
                rows.push(row(&format!("ID-LoRA r={r}"), kind_rank("idlora", r)));
            }
            rows
        }
        Experiment::Table8 => {
            // Small: r = 24, so that k = 8 still fits (8 x 24 = 192 rows).
            let r = rank(scale, 128, 24);
            [2, 4, 6, 8]
                .into_iter()
                .map(|k| {
                    let mut m = kind_rank("idlora", r);
                    m.push(format!("method.k={k}"));
                    row(&format!("k={k}"), m)
                })
                .collect()
        }
    }
}

/// `(paper model, domain)` blocks of an experiment, in table order.
fn blocks(experiment: Experiment) -> Vec<(ModelName, Domain)> {
    let main = [ModelName::Llama3_8b, ModelName::Mistral7b];
    match experiment {
        Experiment::Table1 => main
            .into_iter()
            .flat_map(|m| [Domain::Math, Domain::Code, Domain::Safety].map(|d| (m, d)))
            .collect(),
        Experiment::Table2 => main.map(|m| (m, Domain::MultiTask)).to_vec(),
        Experiment::Table7 => vec![(ModelName::Llama3_8b, Domain::MultiTask)],
        Experiment::Table3 | Experiment::Table8 => vec![(ModelName::Llama32_3b, Domain::MultiTask)],
    }
}

fn slug(label: &str) -> String {
    let mut s: String = label
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '=' { c } else { '-' })
        .collect::<String>()
        .replace('=', "");
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// The cells of `experiment` at `scale`, each row repeated for `seeds` seeds (0, 1, ...). At small
/// scale every paper model is stood in for by SmolLM2-135M, so a grid with two paper models
/// (Tables 1-2) runs one block of cells, labelled with both.
pub fn cells(experiment: Experiment, scale: Scale, seeds: usize) -> Vec<Cell> {
    let mut blocks = blocks(experiment);
    if scale == Scale::Small {
        // One SmolLM2 block per domain; the first paper model names it.
        let mut seen = Vec::new();
        blocks.retain(|(_, d)| {
            let new = !seen.contains(d);
            seen.push(*d);
            new
        });
    }
    let mut out = Vec::new();
    for (paper_model, domain) in blocks {
        let model = if scale == Scale::Paper { paper_model } else { ModelName::Smollm2 };
        for spec in rows_of(experiment, scale) {
            for seed in 0..seeds.max(1) as u64 {
                out.push(Cell {
                    id: format!("{}/{}/{}/seed{seed}", model.key(), domain.name(), slug(&spec.row)),
                    model,
                    paper_model,
                    domain,
                    row: spec.row.clone(),
                    method: spec.method.clone(),
                    seed,
                    paper: paper::row(experiment, paper_model, &spec.row, scale),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_have_the_papers_rows_and_unique_folders() {
        for e in Experiment::ALL {
            for scale in [Scale::Paper, Scale::Small] {
                let cells = cells(e, scale, 2);
                let mut ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
                ids.sort();
                ids.dedup();
                assert_eq!(ids.len(), cells.len(), "{e:?} {scale:?}: folder names collide");
            }
        }
        let t2 = cells(Experiment::Table2, Scale::Paper, 1);
        let rows: Vec<&str> = t2.iter().take(6).map(|c| c.row.as_str()).collect();
        assert_eq!(rows, ["FFT", "LoRA", "DoRA", "HydraLoRA", "MoELoRA", "ID-LoRA (Ours)"]);
        assert_eq!(t2.len(), 12, "two models");
        assert!(t2[1].method.contains(&"method.r=32".to_string()));
        assert!(t2[5].method.contains(&"method.r=128".to_string()));
        // Small scale: one SmolLM2 block, ranks a quarter of the paper's.
        let small = cells(Experiment::Table2, Scale::Small, 1);
        assert_eq!(small.len(), 6);
        assert_eq!(small[5].id, "smollm2/multitask/id-lora-ours/seed0");
        assert!(small[5].method.contains(&"method.r=32".to_string()));
        // Table 1 has no MoELoRA row and three domains per model.
        let t1 = cells(Experiment::Table1, Scale::Paper, 1);
        assert_eq!(t1.len(), 2 * 3 * 5);
        assert!(t1.iter().all(|c| c.row != "MoELoRA"));
        // Table 8's k and Table 3's ablation switches.
        let t8 = cells(Experiment::Table8, Scale::Small, 1);
        assert!(t8[2].method.contains(&"method.k=6".to_string()) && t8[2].row == "k=6");
        let t3 = cells(Experiment::Table3, Scale::Paper, 1);
        assert!(t3[2].method.contains(&"method.rank_boost=false".to_string()));
        assert!(t3[2].method.contains(&"method.r=8".to_string()));
        assert!(t3[4].method.contains(&"cluster.selector=rs".to_string()));
    }

    #[test]
    fn names_parse_and_bad_ones_are_listed() {
        for e in Experiment::ALL {
            assert_eq!(e.name().parse::<Experiment>().ok(), Some(e));
        }
        let err = "table9".parse::<Experiment>().unwrap_err().to_string();
        assert!(err.contains("table9") && err.contains("table8"), "{err}");
        assert!("huge".parse::<Scale>().is_err());
    }
}
