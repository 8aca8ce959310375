//! HumanEval (Chen et al., 2021): 164 Python functions to complete from their signature and
//! docstring, each run against its tests in the [`crate::sandbox`]; pass@k with the unbiased
//! estimator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use idlora_models::{CausalLm, Tokenizer};
use serde_json::{Value, json};

use crate::error::{EvalError, Result, data_err};
use crate::passk::mean_pass_at_k;
use crate::sandbox::{Execution, Sandbox, Verdict};
use crate::task::{
    EvalSettings, Progress, TaskResult, generate_all, limited, percent, sampling_for, with_sampling,
};

/// One problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `HumanEval/0`, ...
    pub task_id: String,
    /// Signature and docstring: what the model continues.
    pub prompt: String,
    /// The reference body.
    pub canonical_solution: String,
    /// `def check(candidate): ...`
    pub test: String,
    /// The function's name.
    pub entry_point: String,
}

/// The problems of a HumanEval JSONL (optionally `.gz`) file.
#[derive(Clone, Debug)]
pub struct HumanEvalData {
    /// The file.
    pub path: PathBuf,
    /// Problems in file order.
    pub problems: Vec<Problem>,
}

/// Reads HumanEval problems (`task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`).
pub fn load(path: &Path) -> Result<HumanEvalData> {
    let mut problems = Vec::new();
    for (location, row) in idlora_data::read_rows(path)? {
        let row = row.map_err(|e| data_err(path, format!("{location}: {e}")))?;
        let field = |k: &str| {
            row.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| data_err(path, format!("{location}: no `{k}` text")))
        };
        problems.push(Problem {
            task_id: field("task_id")?,
            prompt: field("prompt")?,
            canonical_solution: field("canonical_solution")?,
            test: field("test")?,
            entry_point: field("entry_point")?,
        });
    }
    if problems.is_empty() {
        return Err(data_err(path, "no HumanEval problem"));
    }
    Ok(HumanEvalData { path: path.to_path_buf(), problems })
}

/// The program that checks `completion` of `problem`: prompt, completion, tests, and the call of
/// `check` on the entry point (as the HumanEval harness builds it).
pub fn program(problem: &Problem, completion: &str) -> String {
    format!("{}{}\n\n{}\n\ncheck({})\n", problem.prompt, completion, problem.test, problem.entry_point)
}

/// Where a completion ends: the Codex paper's stop sequences (a new top-level statement).
pub const STOP_SEQUENCES: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// Runs every `(problem index, completion)` in the sandbox on `threads` threads, in order.
pub fn execute_all(
    sandbox: &Sandbox,
    problems: &[Problem],
    jobs: &[(usize, String)],
    threads: usize,
    progress: Progress,
) -> Result<Vec<Execution>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Execution>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    progress(0, jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((p, completion)) = jobs.get(i) else { break };
                    let r = sandbox.run(&program(&problems[*p], completion));
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(r);
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
                }
            });
        }
    });
    let all = results.into_inner().map_err(|_| EvalError::Sandbox("a worker thread panicked".into()))?;
    all.into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| Err(EvalError::Sandbox(format!("job {i} did not run")))))
        .collect()
}

/// Checks the data and the sandbox: every canonical solution must pass. Score = percent passing.
pub fn check_canonical(
    sandbox: &Sandbox,
    data: &HumanEvalData,
    settings: &EvalSettings,
    threads: usize,
    progress: Progress,
) -> Result<TaskResult> {
    let start = Instant::now();
    let problems = limited(&data.problems, settings.limit);
    let jobs: Vec<(usize, String)> =
        problems.iter().enumerate().map(|(i, p)| (i, p.canonical_solution.clone())).collect();
    let runs = execute_all(sandbox, problems, &jobs, threads, progress)?;
    let passed = runs.iter().filter(|r| r.verdict == Verdict::Passed).count();
    let records = problems
        .iter()
        .zip(&runs)
        .map(|(p, r)| json!({"task_id": p.task_id, "verdict": r.verdict, "seconds": r.seconds, "stderr": r.stderr_tail}))
        .collect();
    let score = percent(passed, problems.len());
    Ok(TaskResult {
        task: "humaneval-canonical".into(),
        metric: "passed".into(),
        score,
        n: problems.len(),
        metrics: BTreeMap::from([("passed".to_string(), score)]),
        settings: sandbox_settings(sandbox, &data.path),
        records,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn sandbox_settings(sandbox: &Sandbox, data: &Path) -> Value {
    let c = sandbox.config();
    json!({
        "data": data,
        "timeout_s": c.timeout.as_secs_f64(),
        "memory_mib": c.memory_mib,
        "max_processes": c.max_processes,
        "isolation": sandbox.isolation(),
    })
}

/// Runs HumanEval: `settings.samples` completions per problem (greedy needs 1; more need a
/// temperature), each executed against the problem's tests; pass@1, @5, @10 (those `<= n`).
pub fn run(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    data: &HumanEvalData,
    settings: &EvalSettings,
    sandbox: &Sandbox,
    progress: Progress,
) -> Result<TaskResult> {
    let start = Instant::now();
    let n = settings.samples.max(1);
    if n > 1 && settings.sampling.temperature <= 0.0 {
        return Err(EvalError::Settings(format!(
            "{n} samples per problem need a temperature above 0 (greedy decoding gives {n} identical samples)"
        )));
    }
    let problems = limited(&data.problems, settings.limit);
    let sampling = sampling_for(settings, 384, &STOP_SEQUENCES);
    let mut prompts = Vec::with_capacity(problems.len() * n);
    let mut owner = Vec::with_capacity(problems.len() * n);
    for (i, p) in problems.iter().enumerate() {
        let ids = tokenizer.encode(&p.prompt)?;
        for _ in 0..n {
            prompts.push(ids.clone());
            owner.push(i);
        }
    }
    // Generation takes most of the time: it gets the first nine tenths of the progress.
    let total = prompts.len();
    let gen_progress = |d: usize, _t: usize| progress(d * 9, total * 10);
    let gens = generate_all(model, tokenizer, &prompts, &sampling, settings.batch_size, &gen_progress)?;
    let jobs: Vec<(usize, String)> = owner.iter().zip(&gens).map(|(&i, g)| (i, g.text.clone())).collect();
    let exec_progress = |d: usize, t: usize| progress(total * 9 + d * total / t.max(1), total * 10);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runs = execute_all(sandbox, problems, &jobs, threads, &exec_progress)?;
    let mut per_task = vec![(n, 0usize); problems.len()];
    let mut records = Vec::with_capacity(jobs.len());
    for ((&i, (_, completion)), r) in owner.iter().zip(&jobs).zip(&runs) {
        if r.verdict == Verdict::Passed {
            per_task[i].1 += 1;
        }
        records.push(json!({
            "task_id": problems[i].task_id,
            "completion": completion,
            "verdict": r.verdict,
            "stderr": r.stderr_tail,
        }));
    }
    let mut metrics = BTreeMap::new();
    for k in [1, 5, 10].into_iter().filter(|&k| k <= n) {
        metrics.insert(format!("pass@{k}"), 100.0 * mean_pass_at_k(&per_task, k));
    }
    let score = metrics.get("pass@1").copied().unwrap_or(0.0);
    let mut s = with_sampling(sandbox_settings(sandbox, &data.path), &sampling);
    if let Value::Object(m) = &mut s {
        m.insert("samples".into(), json!(n));
        m.insert(
            "protocol".into(),
            json!("complete the prompt, run prompt + completion + tests, unbiased pass@k"),
        );
    }
    Ok(TaskResult {
        task: "humaneval".into(),
        metric: "pass@1".into(),
        score,
        n: problems.len(),
        metrics,
        settings: s,
        records,
        seconds: start.elapsed().as_secs_f64(),
    })
}
