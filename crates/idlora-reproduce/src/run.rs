//! Running a grid: each cell trains (or is skipped because it already did), is evaluated (the
//! benchmarks it already has are kept), and the results files are rewritten after every cell.
//!
//! A cell's folder (`<out>/<cell id>/`):
//! - `config.toml`: the resolved training config;
//! - `train/`: the training run (checkpoints, `summary.json`, `adapter/` or `model/`);
//! - `eval/results.json`: its evaluation report, saved after every benchmark.
//!
//! A cell whose `train/summary.json` exists is not trained again; an interrupted one (checkpoints
//! but no summary) continues from its last checkpoint with `resume`; a benchmark already in
//! `eval/results.json` is not run again. So a grid can be stopped anywhere and continued, on
//! this machine or another with the same folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use idlora_adapter::MethodKind;
use idlora_eval::benchmark::{self, DataSources, EvalContext};
use idlora_eval::report::EvalReport;
use idlora_eval::router::{self, RouterReport};
use idlora_eval::sandbox::{Sandbox, SandboxConfig};
use idlora_eval::task::EvalSettings;
use idlora_models::{LoadedModel, Precision, SamplingConfig};
use idlora_train::TrainConfig;
use idlora_train::trainer::{Observer, Outcome, TrainOptions, train};
use serde::Deserialize;

use crate::error::{ReproduceError, Result};
use crate::experiment::{Cell, Domain, Experiment, ModelName, Scale, cells};
use crate::results::{self, CellRecord, TrainLoss};

/// Where the paper-scale models and data are (a TOML file, `--paths`). At small scale the
/// packaged model and stand-in data are used unless it names others (`models."smollm2"`,
/// `data.alpaca`, `data.gsm8k_train`), and the data that is not packaged (CodeAlpaca, Saferpaca,
/// HEx-PHI) comes from it.
///
/// ```toml
/// [models]
/// "llama3-8b" = "/models/Meta-Llama-3-8B"
/// "mistral-7b" = "/models/Mistral-7B-v0.1"
/// "llama3.2-3b" = "/models/Llama-3.2-3B"
///
/// [data]
/// alpaca = "/data/alpaca_data.json"
/// gsm8k_train = "/data/gsm8k/train.jsonl"
/// codealpaca = "/data/code_alpaca_20k.json"
/// saferpaca = "/data/saferpaca_Instructions_2000.json"
///
/// [eval]              # optional: the packaged copies are used where absent (HEx-PHI has none)
/// hexphi = "/data/HEx-PHI"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    /// Model folders by key (`llama3-8b`, `mistral-7b`, `llama3.2-3b`).
    #[serde(default)]
    pub models: BTreeMap<String, PathBuf>,
    /// Training data.
    #[serde(default)]
    pub data: DataPaths,
    /// Benchmark data (each optional).
    #[serde(default)]
    pub eval: EvalPaths,
}

/// Training data files.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPaths {
    /// Stanford Alpaca (52k), JSON.
    pub alpaca: Option<PathBuf>,
    /// GSM8K train split, JSONL.
    pub gsm8k_train: Option<PathBuf>,
    /// CodeAlpaca-20k, JSON.
    pub codealpaca: Option<PathBuf>,
    /// Saferpaca (Alpaca-Cleaned plus 2,000 safety instructions), JSON.
    pub saferpaca: Option<PathBuf>,
}

/// Benchmark data files (the packaged copies where absent).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPaths {
    /// GSM8K test.
    pub gsm8k: Option<PathBuf>,
    /// HumanEval.
    pub humaneval: Option<PathBuf>,
    /// MMLU.
    pub mmlu: Option<PathBuf>,
    /// CommonsenseQA.
    pub cqa: Option<PathBuf>,
    /// HEx-PHI (gated: never packaged).
    pub hexphi: Option<PathBuf>,
}

impl Paths {
    /// Reads a paths file; unknown keys are errors naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReproduceError::Io { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ReproduceError::PathsFile { path: path.to_path_buf(), message: e.to_string() })
    }
}

/// How a grid runs.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The experiment.
    pub experiment: Experiment,
    /// Paper or small scale.
    pub scale: Scale,
    /// Output folder: one folder per cell, `results.md`, `results.json`.
    pub out: PathBuf,
    /// Continue interrupted training runs (finished cells and benchmarks are skipped anyway).
    pub resume: bool,
    /// Seeds per cell (0, 1, ...).
    pub seeds: usize,
    /// Cache for packaged assets.
    pub cache: PathBuf,
    /// Models and data given by the user.
    pub paths: Paths,
    /// Config overrides for every cell, applied last (`train.device=cpu`, `train.max_steps=2`).
    pub overrides: Vec<String>,
    /// Items per benchmark at most, instead of the scale's.
    pub eval_limit: Option<usize>,
    /// Tokens generated at most, instead of each benchmark's default.
    pub max_new_tokens: Option<usize>,
    /// Run only the cells of these rows (labels as in the table); the others keep the results
    /// they have on disk. Empty: every row.
    pub rows: Vec<String>,
}

impl Setup {
    /// A setup with the scale's defaults: output `runs/reproduce/<experiment>-<scale>`, one seed.
    pub fn new(experiment: Experiment, scale: Scale, cache: PathBuf) -> Self {
        Setup {
            experiment,
            scale,
            out: PathBuf::from(format!("runs/reproduce/{}-{}", experiment.name(), scale.name())),
            resume: false,
            seeds: 1,
            cache,
            paths: Paths::default(),
            overrides: Vec::new(),
            eval_limit: None,
            max_new_tokens: None,
            rows: Vec::new(),
        }
    }
}

/// Evaluation budget at small scale (items per benchmark), stated in results.md.
pub const SMALL_EVAL_LIMITS: [(&str, usize); 5] =
    [("gsm8k", 40), ("mmlu", 114), ("cqa", 100), ("humaneval", 20), ("hexphi", 60)];

/// Receives a grid's progress. Every method has a default that does nothing.
pub trait GridObserver: Observer {
    /// Cell `index` (of `total`) starts; `what` says what it will do (train, evaluate, skip).
    fn cell_started(&self, _index: usize, _total: usize, _cell: &Cell, _what: &str) {}
    /// A cell ended.
    fn cell_finished(&self, _index: usize, _total: usize, _record: &CellRecord) {}
    /// Benchmark progress inside a cell.
    fn eval_progress(&self, _task: &str, _done: usize, _total: usize) {}
}

/// What [`reproduce`] did.
#[derive(Debug)]
pub struct GridOutcome {
    /// Every cell, in grid order.
    pub cells: Vec<CellRecord>,
    /// `results.md`.
    pub markdown: PathBuf,
    /// `results.json`.
    pub json: PathBuf,
}

fn quoted(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// The single-task code and safety cells swap the template's one source for the user's file;
/// `Some(reason)` when it is not given.
fn swap_source(
    sets: &mut Vec<String>,
    found: std::result::Result<PathBuf, String>,
    name: &str,
) -> Option<String> {
    match found {
        Ok(p) => {
            sets.push(format!("data.sources.0.path={}", quoted(&p)));
            sets.push(format!("data.sources.0.name={name}"));
            None
        }
        Err(reason) => Some(reason),
    }
}

/// The config template of a cell and the data overrides its domain needs; `Err(reason)` when the
/// cell cannot run at small scale for lack of data (skipped, with the reason in the table).
fn base_config(
    cell: &Cell,
    setup: &Setup,
) -> Result<std::result::Result<(&'static str, Vec<String>), String>> {
    let data = &setup.paths.data;
    let need =
        |key: &str, value: &Option<PathBuf>, what: &str| -> Result<std::result::Result<PathBuf, String>> {
            match (value, setup.scale) {
                (Some(p), _) => Ok(Ok(p.clone())),
                (None, Scale::Small) => Ok(Err(format!("not run: needs `{key}` ({what}) in --paths"))),
                (None, Scale::Paper) => Err(ReproduceError::MissingPath {
                    cell: cell.id.clone(),
                    key: key.to_string(),
                    what: what.to_string(),
                }),
            }
        };
    let mut sets = Vec::new();
    if setup.scale == Scale::Small {
        let text = match cell.domain {
            Domain::MultiTask => include_str!("../../../configs/reproduce/smollm2-multitask.toml"),
            _ => include_str!("../../../configs/reproduce/smollm2-math.toml"),
        };
        // The user's files replace the packaged stand-ins where given.
        if let Some(m) = setup.paths.models.get(ModelName::Smollm2.key()) {
            sets.push(format!("model.path={}", quoted(m)));
        }
        let gsm8k_index = if cell.domain == Domain::MultiTask { 1 } else { 0 };
        if let (Some(p), Domain::MultiTask) = (&data.alpaca, cell.domain) {
            sets.push(format!("data.sources.0.path={}", quoted(p)));
        }
        if let (Some(p), Domain::Math | Domain::MultiTask) = (&data.gsm8k_train, cell.domain) {
            sets.push(format!("data.sources.{gsm8k_index}.path={}", quoted(p)));
            sets.push(format!("data.sources.{gsm8k_index}.skip=0"));
        }
        let skip = match cell.domain {
            Domain::Code => swap_source(
                &mut sets,
                need("data.codealpaca", &data.codealpaca, "CodeAlpaca-20k JSON")?,
                "codealpaca",
            ),
            Domain::Safety => {
                if setup.paths.eval.hexphi.is_none() {
                    Some("not run: needs `eval.hexphi` (the gated HEx-PHI data) in --paths".to_string())
                } else {
                    swap_source(
                        &mut sets,
                        need("data.saferpaca", &data.saferpaca, "Saferpaca JSON")?,
                        "saferpaca",
                    )
                }
            }
            Domain::Math | Domain::MultiTask => None,
        };
        if matches!(cell.domain, Domain::Code | Domain::Safety) {
            sets.extend(["data.sources.0.format=alpaca".to_string(), "data.sources.0.skip=0".to_string()]);
        }
        return Ok(match skip {
            Some(reason) => Err(reason),
            None => Ok((text, sets)),
        });
    }
    // LLaMA-3.2-3B (Tables 3, 8) runs the LLaMA-3-8B settings; only Mistral has its own.
    let text = match (cell.model == ModelName::Mistral7b, cell.domain) {
        (false, Domain::MultiTask) => include_str!("../../../configs/train/llama3-8b-multitask.toml"),
        (false, Domain::Math) => include_str!("../../../configs/train/llama3-8b-math.toml"),
        (false, Domain::Code) => include_str!("../../../configs/train/llama3-8b-code.toml"),
        (false, Domain::Safety) => include_str!("../../../configs/train/llama3-8b-safety.toml"),
        (true, Domain::MultiTask) => include_str!("../../../configs/train/mistral-7b-multitask.toml"),
        (true, Domain::Math) => include_str!("../../../configs/train/mistral-7b-math.toml"),
        (true, Domain::Code) => include_str!("../../../configs/train/mistral-7b-code.toml"),
        (true, Domain::Safety) => include_str!("../../../configs/train/mistral-7b-safety.toml"),
    };
    let model_key = cell.model.key();
    let model = setup.paths.models.get(model_key).cloned();
    let model = need(&format!("models.\"{model_key}\""), &model, "the Hugging Face model folder")?
        .map_err(ReproduceError::Setting)?;
    sets.push(format!("model.path={}", quoted(&model)));
    let sources: Vec<(&str, &Option<PathBuf>, &str)> = match cell.domain {
        Domain::MultiTask => vec![
            ("data.alpaca", &data.alpaca, "Stanford Alpaca JSON"),
            ("data.gsm8k_train", &data.gsm8k_train, "GSM8K train JSONL"),
            ("data.codealpaca", &data.codealpaca, "CodeAlpaca-20k JSON"),
        ],
        Domain::Math => vec![("data.gsm8k_train", &data.gsm8k_train, "GSM8K train JSONL")],
        Domain::Code => vec![("data.codealpaca", &data.codealpaca, "CodeAlpaca-20k JSON")],
        Domain::Safety => vec![("data.saferpaca", &data.saferpaca, "Saferpaca JSON")],
    };
    for (i, (key, value, what)) in sources.into_iter().enumerate() {
        let p = need(key, value, what)?.map_err(ReproduceError::Setting)?;
        sets.push(format!("data.sources.{i}.path={}", quoted(&p)));
    }
    if cell.domain == Domain::Safety && setup.paths.eval.hexphi.is_none() {
        return Err(ReproduceError::MissingPath {
            cell: cell.id.clone(),
            key: "eval.hexphi".into(),
            what: "the HEx-PHI folder of category_*.csv files (gated on Hugging Face)".into(),
        });
    }
    Ok(Ok((text, sets)))
}

/// The cell's resolved training config (its folder under `setup.out`).
pub fn cell_config(cell: &Cell, setup: &Setup) -> Result<std::result::Result<TrainConfig, String>> {
    let (text, data_sets) = match base_config(cell, setup)? {
        Ok(x) => x,
        Err(reason) => return Ok(Err(reason)),
    };
    let dir = setup.out.join(&cell.id);
    let mut sets = cell.method.clone();
    sets.extend(data_sets);
    sets.push(format!("train.seed={}", cell.seed));
    sets.push(format!("cluster.seed={}", cell.seed));
    sets.push(format!("train.output_dir={}", quoted(&dir.join("train"))));
    sets.extend(setup.overrides.iter().cloned());
    let source = format!("{} ({})", cell.id, setup.scale.name());
    let mut cfg = TrainConfig::from_toml(text, &source, &sets)
        .map_err(|source| ReproduceError::Train { cell: cell.id.clone(), source: Box::new(source) })?;
    cfg.model.path = idlora_assets::resolve(&cfg.model.path, &setup.cache)?.display().to_string();
    for s in &mut cfg.data.sources {
        s.path = idlora_assets::resolve(&s.path, &setup.cache)?.display().to_string();
    }
    Ok(Ok(cfg))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Trains the cell unless it already finished; returns whether it trained now.
fn train_cell(cell: &Cell, cfg: &TrainConfig, setup: &Setup, observer: &dyn GridObserver) -> Result<bool> {
    let run = PathBuf::from(&cfg.train.output_dir);
    if run.join("summary.json").is_file() {
        return Ok(false);
    }
    let has_checkpoints = std::fs::read_dir(run.join("checkpoints")).is_ok_and(|mut d| d.next().is_some());
    if has_checkpoints && !setup.resume {
        return Err(ReproduceError::Interrupted { cell: cell.id.clone(), dir: run });
    }
    let err = |source: idlora_train::TrainError| ReproduceError::Train {
        cell: cell.id.clone(),
        source: Box::new(source),
    };
    let model_err = |source: idlora_models::ModelError| ReproduceError::Model {
        cell: cell.id.clone(),
        source: Box::new(source),
    };
    cfg.check_files().map_err(err)?;
    let devices = idlora_train::devices::pick_devices(cfg).map_err(err)?;
    observer.message(&format!("{}: device {}", cell.id, devices.main_description));
    let path = PathBuf::from(&cfg.model.path);
    let model = idlora_models::load::load_as(&path, &devices.main, cfg.train.precision).map_err(model_err)?;
    let tokenizer = idlora_models::load_tokenizer(&path, &model.config.eos_token_ids).map_err(model_err)?;
    let opts =
        TrainOptions { resume: has_checkpoints, stop: None, halt_after: None, replicas: devices.replicas };
    let summary = train(cfg, model, &tokenizer, &opts, observer).map_err(err)?;
    if summary.outcome != Outcome::Finished {
        return Err(ReproduceError::Setting(format!(
            "{}: training stopped at step {}",
            cell.id, summary.steps
        )));
    }
    Ok(true)
}

/// The evaluation settings of `task` at this scale.
fn eval_settings(
    task: &str,
    setup: &Setup,
    prompt: Option<idlora_data::prompt::PromptFormat>,
) -> EvalSettings {
    let mut settings = EvalSettings {
        limit: match setup.scale {
            Scale::Small => SMALL_EVAL_LIMITS.iter().find(|(t, _)| *t == task).map(|(_, n)| *n),
            Scale::Paper => None,
        },
        prompt,
        max_new_tokens: setup.max_new_tokens,
        ..EvalSettings::default()
    };
    if let Some(l) = setup.eval_limit {
        settings.limit = Some(l);
    }
    // Pass@5 and @10 need samples: at paper scale ten per problem at temperature 0.8 (Codex's
    // setting for pass@10); at small scale one greedy sample (pass@1 only).
    if task == "humaneval" && setup.scale == Scale::Paper {
        settings.samples = 10;
        settings.sampling = SamplingConfig { temperature: 0.8, top_p: 0.95, ..SamplingConfig::default() };
    }
    settings
}

/// Evaluates the cell on the benchmarks it lacks; returns the report and the model it loaded
/// (`None` when nothing was left to run), which the router analysis reuses.
fn eval_cell(
    cell: &Cell,
    cfg: &TrainConfig,
    setup: &Setup,
    observer: &dyn GridObserver,
) -> Result<(EvalReport, Option<LoadedModel>)> {
    let eval_err = |source: idlora_eval::EvalError| ReproduceError::Eval {
        cell: cell.id.clone(),
        source: Box::new(source),
    };
    let model_err = |source: idlora_models::ModelError| ReproduceError::Model {
        cell: cell.id.clone(),
        source: Box::new(source),
    };
    let run = PathBuf::from(&cfg.train.output_dir);
    let file = setup.out.join(&cell.id).join("eval").join("results.json");
    let tasks = cell.domain.tasks();
    let mut report = match EvalReport::load(&file) {
        Ok(r) => r,
        Err(_) => EvalReport {
            label: cell.row.clone(),
            model: String::new(),
            adapter: None,
            device: String::new(),
            finished_unix: 0,
            tasks: Vec::new(),
            trainable_params: None,
            base_params: None,
        },
    };
    let missing: Vec<&str> =
        tasks.iter().copied().filter(|t| !report.tasks.iter().any(|r| r.task == *t)).collect();
    if missing.is_empty() {
        return Ok((report, None));
    }
    let (model_path, adapter) = if run.join("model").is_dir() {
        (run.join("model"), None)
    } else {
        (PathBuf::from(&cfg.model.path), Some(run.join("adapter")))
    };
    let picked = idlora_models::pick(cfg.train.device)
        .map_err(|e| ReproduceError::Setting(format!("{}: {e}", cell.id)))?;
    let mut loaded =
        idlora_models::load_with_adapter_as(&model_path, adapter.as_deref(), &picked.device, Precision::F32)
            .map_err(model_err)?;
    // LoRA / DoRA are evaluated merged (the same function, the base layer's cost: unmerged DoRA
    // decodes about 4x slower); routed methods stay as they are.
    loaded.model.merge_adapters().map_err(model_err)?;
    let summary = read_json(&run.join("summary.json"));
    report.model = model_path.display().to_string();
    report.adapter = adapter.as_ref().map(|a| a.display().to_string());
    report.device = picked.description.clone();
    report.trainable_params = summary.as_ref().and_then(|s| s["trainable_params"].as_u64());
    report.base_params = Some(loaded.model.config.base_params() as u64);
    let prompt = match &adapter {
        Some(a) => idlora_data::prompt::recorded_format(a),
        None => idlora_data::prompt::recorded_format(&model_path),
    }
    .map_err(|e| ReproduceError::Setting(format!("{}: {e}", cell.id)))?;
    let data = data_sources(setup);
    let benchmarks = benchmark::select(&missing).map_err(eval_err)?;
    for b in &benchmarks {
        b.check(&data).map_err(eval_err)?;
    }
    let sandbox = if benchmarks.iter().any(|b| b.needs_sandbox()) {
        Some(Sandbox::new(SandboxConfig::default()).map_err(eval_err)?)
    } else {
        None
    };
    for b in &benchmarks {
        let settings = eval_settings(b.name(), setup, prompt);
        let progress = |d: usize, t: usize| observer.eval_progress(b.name(), d, t);
        let ctx = EvalContext {
            model: Some(&loaded),
            settings: &settings,
            sandbox: sandbox.as_ref(),
            progress: &progress,
        };
        let result = b.run(&data, &ctx).map_err(eval_err)?;
        report.tasks.push(result);
        report.finished_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // After every benchmark: an interruption loses at most the one running.
        report.save(&file).map_err(eval_err)?;
    }
    Ok((report, Some(loaded)))
}

/// The cell's finished results on disk (evaluation and router analysis), or `reason` as a
/// not-run cell.
fn on_disk(cell: &Cell, setup: &Setup, reason: &str) -> CellRecord {
    let dir = setup.out.join(&cell.id);
    let finished = EvalReport::load(&dir.join("eval").join("results.json"))
        .ok()
        .filter(|r| cell.domain.tasks().iter().all(|t| r.tasks.iter().any(|x| x.task == *t)));
    match finished {
        Some(report) => {
            let mut r = CellRecord::done(cell, report, false, false, 0.0);
            r.router_spread =
                RouterReport::load(&dir.join("router").join("router.json")).ok().map(|r| r.task_spread());
            r.train_loss = train_loss(&dir.join("train"));
            r
        }
        None => CellRecord::skipped(cell, reason),
    }
}

/// The loss a cell's training logged; `None` where it has logged nothing readable (a cell trained
/// before metrics were logged, or a damaged file: the table then leaves the cell out of its
/// training-loss section rather than failing the grid).
fn train_loss(run: &Path) -> Option<TrainLoss> {
    idlora_train::trainer::read_steps(run).ok().and_then(|steps| TrainLoss::from_steps(&steps))
}

/// Texts per task and tokens per text of a cell's router analysis.
pub const ROUTER_TEXTS: usize = 32;
/// See [`ROUTER_TEXTS`].
pub const ROUTER_MAX_TOKENS: usize = 256;

/// The router analysis of a routed method's multi-task cell (`<cell>/router/`), run once; its
/// task spread. `None` for cells without a router or with one task. `loaded` is the evaluation's
/// model when it loaded one (a routed adapter is never merged, so it is the trained model).
fn route_cell(
    cell: &Cell,
    cfg: &TrainConfig,
    setup: &Setup,
    loaded: Option<LoadedModel>,
    observer: &dyn GridObserver,
) -> Result<Option<f64>> {
    let routed = matches!(cfg.method.kind, MethodKind::HydraLora | MethodKind::MoeLora | MethodKind::IdLora);
    let tasks = cell.domain.tasks();
    if !routed || tasks.len() < 2 {
        return Ok(None);
    }
    let dir = setup.out.join(&cell.id).join("router");
    if let Ok(done) = RouterReport::load(&dir.join("router.json")) {
        return Ok(Some(done.task_spread()));
    }
    let eval_err = |source: idlora_eval::EvalError| ReproduceError::Eval {
        cell: cell.id.clone(),
        source: Box::new(source),
    };
    let run = PathBuf::from(&cfg.train.output_dir);
    let loaded = match loaded {
        Some(l) => l,
        None => {
            let picked = idlora_models::pick(cfg.train.device)
                .map_err(|e| ReproduceError::Setting(format!("{}: {e}", cell.id)))?;
            idlora_models::load_with_adapter_as(
                Path::new(&cfg.model.path),
                Some(&run.join("adapter")),
                &picked.device,
                Precision::F32,
            )
            .map_err(|source| ReproduceError::Model { cell: cell.id.clone(), source: Box::new(source) })?
        }
    };
    let texts = router::benchmark_tasks(tasks, &data_sources(setup), ROUTER_TEXTS).map_err(eval_err)?;
    let tokenizer = loaded
        .tokenizer()
        .map_err(|source| ReproduceError::Model { cell: cell.id.clone(), source: Box::new(source) })?;
    let tokens = texts
        .iter()
        .map(|t| t.encode(tokenizer, ROUTER_MAX_TOKENS))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(eval_err)?;
    let progress = |d: usize, t: usize| observer.eval_progress("router", d, t);
    let report = router::analyze(&loaded.model, &cell.row, &tokens, &progress).map_err(eval_err)?;
    report.save(&dir).map_err(eval_err)?;
    Ok(Some(report.task_spread()))
}

fn data_sources(setup: &Setup) -> DataSources {
    let e = &setup.paths.eval;
    DataSources {
        cache: setup.cache.clone(),
        gsm8k: e.gsm8k.clone(),
        gsm8k_fewshot: None,
        humaneval: e.humaneval.clone(),
        mmlu: e.mmlu.clone(),
        mmlu_split: "test".into(),
        cqa: e.cqa.clone(),
        hexphi: e.hexphi.clone(),
    }
}

/// Runs (or continues) the grid `setup` describes, rewriting `results.md` and `results.json` in
/// `setup.out` after every cell. A cell that fails stops the grid with an error naming it; the
/// cells before it keep their results.
pub fn reproduce(setup: &Setup, observer: &dyn GridObserver) -> Result<GridOutcome> {
    let grid = cells(setup.experiment, setup.scale, setup.seeds);
    std::fs::create_dir_all(&setup.out)
        .map_err(|source| ReproduceError::Io { path: setup.out.clone(), source })?;
    if let Some(bad) = setup.rows.iter().find(|r| !grid.iter().any(|c| &c.row == *r)) {
        let mut rows: Vec<&str> = grid.iter().map(|c| c.row.as_str()).collect();
        rows.dedup();
        return Err(ReproduceError::Setting(format!(
            "--rows: `{bad}` is not a row of {} (rows: {})",
            setup.experiment.name(),
            rows.join(", ")
        )));
    }
    let mut records: Vec<CellRecord> = Vec::new();
    let total = grid.len();
    for (i, cell) in grid.iter().enumerate() {
        let t = Instant::now();
        let cfg = match cell_config(cell, setup)? {
            Ok(cfg) => cfg,
            Err(reason) => {
                observer.cell_started(i, total, cell, "skip");
                records.push(CellRecord::skipped(cell, &reason));
                observer.cell_finished(i, total, &records[i]);
                results::write(setup, &records)?;
                continue;
            }
        };
        let dir = setup.out.join(&cell.id);
        if !setup.rows.is_empty() && !setup.rows.contains(&cell.row) {
            // Not selected: its finished results still belong in the table.
            records.push(on_disk(cell, setup, "not run yet (not among the selected rows)"));
            continue;
        }
        idlora_data::write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        let trained = PathBuf::from(&cfg.train.output_dir).join("summary.json").is_file();
        observer.cell_started(i, total, cell, if trained { "evaluate" } else { "train + evaluate" });
        let trained_now = train_cell(cell, &cfg, setup, observer)?;
        let (report, loaded) = eval_cell(cell, &cfg, setup, observer)?;
        let evaluated_now = loaded.is_some();
        let spread = route_cell(cell, &cfg, setup, loaded, observer)?;
        let mut record =
            CellRecord::done(cell, report, trained_now, evaluated_now, t.elapsed().as_secs_f64());
        record.router_spread = spread;
        record.train_loss = train_loss(Path::new(&cfg.train.output_dir));
        records.push(record);
        observer.cell_finished(i, total, &records[i]);
        // The running table: the cells still to come show what they have on disk from earlier
        // invocations.
        let mut table = records.clone();
        table.extend(grid[i + 1..].iter().map(|c| on_disk(c, setup, "not run yet")));
        results::write(setup, &table)?;
    }
    let (markdown, json) = results::write(setup, &records)?;
    Ok(GridOutcome { cells: records, markdown, json })
}
