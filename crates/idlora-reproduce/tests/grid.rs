//! Every small-scale grid on a tiny random model and tiny data (2 training steps, 2 items per
//! benchmark): the table has the paper's rows and columns, every cell trained and was evaluated,
//! a second run skips everything, and an interrupted cell resumes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::Device;
use idlora_models::export::{ExportOptions, export_hf};
use idlora_models::{ModelConfig, Tokenizer};
use idlora_reproduce::experiment::{Cell, Experiment, Scale, cells};
use idlora_reproduce::results::{CellRecord, TrainLoss};
use idlora_reproduce::{GridObserver, Paths, Setup, reproduce};
use idlora_train::Observer;
use serde_json::json;

const WORDS: &[&str] = &[
    "<unk>", "</s>", "one", "two", "three", "four", "cat", "dog", "red", "blue", "is", "what", "the",
    "answer", "def", "return", "x", "(", ")", ":", "+", "1", "2", "3", "4", "a", "b", "c", "d", "e",
];

/// Builds the tiny world once per test: model folder (exported by idlora itself), training data,
/// benchmark data.
struct World {
    dir: tempfile::TempDir,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // A model wide enough for the small grids' ranks: ID-LoRA's k r must fit the 192 rows of
        // the key / value projections (k = 8, r = 24 in Table 8; k = 4, r = 48 in Table 7).
        let config = format!(
            r#"{{"model_type": "llama", "hidden_size": 192, "intermediate_size": 256, "num_hidden_layers": 1,
                "num_attention_heads": 3, "num_key_value_heads": 3, "vocab_size": {}, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": true, "eos_token_id": 1}}"#,
            WORDS.len()
        );
        let config = ModelConfig::from_hf_json(&config, "config.json").expect("config");
        let model = idlora_models::load::random_with_std(config, 5, 0.1, &Device::flex()).expect("model");
        let vocab: serde_json::Map<String, serde_json::Value> =
            WORDS.iter().enumerate().map(|(i, w)| (w.to_string(), json!(i))).collect();
        let special = |id: usize, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true})
        };
        let tok = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "</s>")],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        let model_dir = root.join("model");
        write(&model_dir.join("tokenizer.json"), &tok.to_string());
        let tokenizer = Tokenizer::from_dir(&model_dir, &[1]).expect("tokenizer");
        export_hf(model, Some(&tokenizer), &model_dir, &ExportOptions::default()).expect("export");

        let alpaca = json!([
            {"instruction": "what is the cat", "input": "", "output": "the cat is red"},
            {"instruction": "what is one + one", "input": "", "output": "two"},
            {"instruction": "def x", "input": "", "output": "return x + 1"},
            {"instruction": "what is the dog", "input": "", "output": "the dog is blue"},
        ]);
        write(&root.join("alpaca.json"), &alpaca.to_string());
        write(&root.join("code.json"), &alpaca.to_string());
        write(&root.join("safe.json"), &alpaca.to_string());
        let gsm = |q: &str, a: &str| json!({"question": q, "answer": a}).to_string();
        let gsm8k =
            [gsm("what is one + one", "two #### 2"), gsm("what is two + two", "four #### 4")].join("\n");
        write(&root.join("gsm8k.jsonl"), &gsm8k);
        let mmlu = |q: &str, a: usize| {
            json!({"question": q, "choices": ["one", "two", "three", "four"], "answer": a, "subject": "math"})
                .to_string()
        };
        write(
            &root.join("mmlu/math/test/data.jsonl"),
            &[mmlu("what is one", 0), mmlu("what is two", 1)].join("\n"),
        );
        write(
            &root.join("mmlu/math/dev/data.jsonl"),
            &[mmlu("what is three", 2), mmlu("what is four", 3)].join("\n"),
        );
        let cqa = |q: &str, key: &str| {
            json!({"id": q, "question": q, "choices": {"label": ["A", "B"], "text": ["cat", "dog"]}, "answerKey": key})
                .to_string()
        };
        write(&root.join("cqa.jsonl"), &[cqa("what is red", "A"), cqa("what is blue", "B")].join("\n"));
        let he = |id: &str| {
            json!({"task_id": id, "prompt": "def f(x):\n", "canonical_solution": "    return x + 1\n",
                "test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"})
            .to_string()
        };
        write(&root.join("humaneval.jsonl"), &[he("t/0"), he("t/1")].join("\n"));
        write(
            &root.join("hexphi.jsonl"),
            &json!({"instruction": "what is the answer", "category": "1"}).to_string(),
        );
        World { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn setup(&self, experiment: Experiment, out: &str) -> Setup {
        let mut setup = Setup::new(experiment, Scale::Small, self.path("cache"));
        setup.out = self.path(out);
        let mut paths = Paths::default();
        paths.models.insert("smollm2".into(), self.path("model"));
        paths.data.alpaca = Some(self.path("alpaca.json"));
        paths.data.gsm8k_train = Some(self.path("gsm8k.jsonl"));
        paths.data.codealpaca = Some(self.path("code.json"));
        paths.data.saferpaca = Some(self.path("safe.json"));
        paths.eval.gsm8k = Some(self.path("gsm8k.jsonl"));
        paths.eval.mmlu = Some(self.path("mmlu"));
        paths.eval.cqa = Some(self.path("cqa.jsonl"));
        paths.eval.humaneval = Some(self.path("humaneval.jsonl"));
        paths.eval.hexphi = Some(self.path("hexphi.jsonl"));
        setup.paths = paths;
        setup.overrides = [
            "train.max_steps=2",
            "train.micro_batch=2",
            "train.effective_batch=2",
            "train.device=cpu",
            "train.checkpoint_interval=1",
            "cluster.n_init=1",
            "data.max_length=32",
        ]
        .map(String::from)
        .to_vec();
        setup.eval_limit = Some(2);
        setup.max_new_tokens = Some(4);
        setup
    }
}

#[derive(Default)]
struct Log {
    started: Mutex<Vec<(String, String)>>,
}
impl Observer for Log {}
impl GridObserver for Log {
    fn cell_started(&self, _: usize, _: usize, cell: &Cell, what: &str) {
        self.started.lock().expect("lock").push((cell.id.clone(), what.to_string()));
    }
    fn cell_finished(&self, _: usize, _: usize, _: &CellRecord) {}
}

/// Reads `results.md` when the second cell starts: the running table, one cell in.
struct Peek {
    md: PathBuf,
    seen: Mutex<Option<String>>,
}
impl Observer for Peek {}
impl GridObserver for Peek {
    fn cell_started(&self, index: usize, _: usize, _: &Cell, _: &str) {
        if index == 1 {
            *self.seen.lock().expect("lock") = std::fs::read_to_string(&self.md).ok();
        }
    }
}

/// burn's CPU generator is process-wide; the grids train one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn every_small_grid_runs_with_the_papers_rows_and_columns_and_reruns_skip() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let world = World::new();
    for experiment in Experiment::ALL {
        let setup = world.setup(experiment, experiment.name());
        let log = Log::default();
        let outcome = reproduce(&setup, &log).unwrap_or_else(|e| panic!("{experiment:?}: {e}"));
        let grid = cells(experiment, Scale::Small, 1);
        assert_eq!(outcome.cells.len(), grid.len(), "{experiment:?}");
        for (record, cell) in outcome.cells.iter().zip(&grid) {
            assert!(record.is_done(), "{}: {}", record.id, record.status);
            assert!(record.trained_now && record.evaluated_now, "{}", record.id);
            // Every column the cell's benchmarks fill has a score.
            // Every benchmark fills one column (HumanEval's Pass@1: one greedy sample).
            assert_eq!(record.scores.len(), cell.domain.tasks().len(), "{}: {:?}", record.id, record.scores);
            assert!(setup.out.join(&cell.id).join("config.toml").is_file());
        }
        let md = std::fs::read_to_string(&outcome.markdown).expect("results.md");
        // The paper's columns, and each row with our figure and the paper's.
        let header = match experiment {
            Experiment::Table1 => {
                "| Method | # Params (%) | GSM8K | HumanEval Pass@1 | Pass@5 | Pass@10 | HEx-PHI |"
            }
            _ => "| Method | # Params (%) | MATH | MMLU | CQA | CODE Pass@1 | Pass@5 | Pass@10 |",
        };
        assert!(md.contains(header), "{experiment:?}:\n{md}");
        for cell in &grid {
            let paper = cell.paper.expect("paper row").params;
            let line = md.lines().find(|l| l.starts_with(&format!("| {} | **", cell.row)));
            let line = line.unwrap_or_else(|| panic!("{experiment:?}: no row {}:\n{md}", cell.row));
            assert!(line.contains(&format!(" / {paper} |")), "{line}");
        }
        // Routed methods in multi-task cells get the router analysis; the others do not.
        let mut router_files = Vec::new();
        for (record, cell) in outcome.cells.iter().zip(&grid) {
            let routed = ["hydralora", "moelora", "idlora"]
                .iter()
                .any(|k| cell.method.contains(&format!("method.kind={k}")));
            let multi = cell.domain.tasks().len() > 1;
            let file = setup.out.join(&cell.id).join("router").join("router.json");
            assert_eq!(record.router_spread.is_some(), routed && multi, "{}", record.id);
            assert_eq!(file.is_file(), routed && multi, "{}", record.id);
            if routed && multi {
                let report = idlora_eval::router::RouterReport::load(&file).expect("router.json");
                assert_eq!(report.tasks, cell.domain.tasks(), "{}", record.id);
                assert_eq!(report.projections.len(), 7, "{}: one layer, seven projections", record.id);
                let line = md.lines().find(|l| l.starts_with(&format!("| {} | {} | ", cell.row, cell.seed)));
                assert!(line.is_some_and(|l| l.contains("router.svg")), "{}:\n{md}", record.id);
                router_files.push((file.clone(), std::fs::metadata(&file).and_then(|m| m.modified()).ok()));
            }
        }
        assert_eq!(md.contains("## Router analysis"), !router_files.is_empty(), "{experiment:?}");
        // Every trained cell lists how far training moved its loss, from its metrics.jsonl.
        for record in outcome.cells.iter().filter(|r| r.is_done()) {
            let steps = idlora_train::trainer::read_steps(&setup.out.join(&record.id).join("train"))
                .expect("metrics");
            // The figures themselves are TrainLoss's (its doc test checks them by hand): here,
            // that each record carries its own cell's.
            assert!(!steps.is_empty(), "{}: no steps logged", record.id);
            assert_eq!(record.train_loss, TrainLoss::from_steps(&steps), "{}", record.id);
        }
        assert!(md.contains("## Training loss"), "{experiment:?}:\n{md}");
        assert_eq!(router_files.is_empty(), experiment == Experiment::Table1, "{experiment:?}");
        if experiment == Experiment::Table7 {
            let svg = std::fs::read_to_string(setup.out.join("figure4.svg")).expect("figure4.svg");
            assert_eq!(svg.matches("<polyline").count(), 8, "two series in four panels");
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&outcome.json).expect("json")).expect("parse");
        assert_eq!(json["cells"].as_array().map(Vec::len), Some(grid.len()));

        // A second run trains and evaluates nothing, and writes the same table; after its first
        // cell the running table already lists the later cells' results from disk.
        let peek = Peek { md: outcome.markdown.clone(), seen: Mutex::new(None) };
        let again = reproduce(&setup, &peek).expect("rerun");
        if grid.len() > 1 {
            let running = peek.seen.lock().expect("lock").clone().expect("results.md after the first cell");
            let last = &grid[grid.len() - 1];
            assert!(running.contains(&format!("| {} | **", last.row)), "{experiment:?}:\n{running}");
        }
        assert!(again.cells.iter().all(|c| !c.trained_now && !c.evaluated_now), "{experiment:?}");
        for (file, modified) in &router_files {
            let now = std::fs::metadata(file).and_then(|m| m.modified()).ok();
            assert_eq!(&now, modified, "{}: the router analysis is not redone", file.display());
        }
        let md2 = std::fs::read_to_string(&again.markdown).expect("results.md");
        let strip =
            |s: &str| s.lines().filter(|l| !l.starts_with("Wall time")).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(&md), strip(&md2));
    }
}

#[test]
fn an_interrupted_cell_needs_resume_and_missing_data_is_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let world = World::new();
    let mut setup = world.setup(Experiment::Table8, "interrupted");
    let cell = &cells(Experiment::Table8, Scale::Small, 1)[0];
    // Leave a checkpoint but no summary: what a killed run leaves.
    let first = reproduce(&setup, &Log::default()).expect("first run");
    assert!(first.cells[0].is_done());
    let train = setup.out.join(&cell.id).join("train");
    std::fs::remove_file(train.join("summary.json")).expect("remove summary");
    std::fs::remove_file(setup.out.join(&cell.id).join("eval/results.json")).expect("remove results");
    let err = reproduce(&setup, &Log::default()).expect_err("interrupted").to_string();
    assert!(err.contains(&cell.id) && err.contains("--resume"), "{err}");
    setup.resume = true;
    let again = reproduce(&setup, &Log::default()).expect("resumed");
    assert!(again.cells[0].is_done() && again.cells[0].evaluated_now);
    assert!(again.cells[1..].iter().all(|c| !c.trained_now), "only the interrupted cell runs");

    // --rows: only the selected row runs; the others are listed as not run yet.
    let mut some = world.setup(Experiment::Table8, "rows");
    some.rows = vec!["k=4".into()];
    let outcome = reproduce(&some, &Log::default()).expect("rows");
    let ran: Vec<&str> = outcome.cells.iter().filter(|c| c.trained_now).map(|c| c.row.as_str()).collect();
    assert_eq!(ran, ["k=4"]);
    assert!(outcome.cells.iter().filter(|c| c.row != "k=4").all(|c| c.status.contains("not run yet")));
    some.rows = vec!["k=5".into()];
    let err = reproduce(&some, &Log::default()).expect_err("bad row").to_string();
    assert!(err.contains("k=5") && err.contains("k=8"), "{err}");

    // Table 1 without the code and safety data: those cells are listed as not run, with why.
    let mut t1 = world.setup(Experiment::Table1, "t1-partial");
    t1.paths.data.codealpaca = None;
    t1.paths.eval.hexphi = None;
    let outcome = reproduce(&t1, &Log::default()).expect("table1");
    let not_run: Vec<&CellRecord> = outcome.cells.iter().filter(|c| !c.is_done()).collect();
    assert_eq!(not_run.len(), 2 * 5, "code and safety rows");
    assert!(not_run.iter().any(|c| c.status.contains("data.codealpaca")));
    assert!(not_run.iter().any(|c| c.status.contains("eval.hexphi")));
    let md = std::fs::read_to_string(&outcome.markdown).expect("md");
    assert!(md.contains("Not run:") && md.contains("data.codealpaca"), "{md}");

    // Paper scale without a paths file: the first cell names the model key to supply.
    let paper = Setup::new(Experiment::Table2, Scale::Paper, world.path("cache"));
    let mut paper = paper;
    paper.out = world.path("paper");
    let err = reproduce(&paper, &Log::default()).expect_err("no paths").to_string();
    assert!(err.contains("models.\"llama3-8b\"") && err.contains("--paths"), "{err}");
}
