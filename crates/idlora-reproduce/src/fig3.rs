//! Figure 3 (paper section 5.4): inference time and extra memory of every method of the main
//! comparison at its rank (LoRA / DoRA 32, HydraLoRA 16, MoELoRA 8, ID-LoRA 128 on LLaMA-3-8B;
//! a quarter of that on SmolLM2-135M at small scale). LoRA and DoRA are measured merged, as the
//! paper deploys them, and LoRA unmerged too for reference.
//!
//! Each row is one [`EfficiencyRequest`]; the caller measures it (`cargo xtask reproduce fig3`
//! runs each in a fresh process, so that peak memory is the method's own) and [`run`] keeps the
//! measurements (`<out>/<row>.json`, skipped on rerun), writes `results.md`, `results.json` and
//! `figure3.svg`.
//!
//! ```
//! use idlora_reproduce::experiment::Scale;
//! use idlora_reproduce::fig3::rows;
//! let labels: Vec<String> = rows(Scale::Paper).into_iter().map(|r| r.label).collect();
//! assert_eq!(labels, ["base", "LoRA r=32 (merged)", "LoRA r=32", "DoRA r=32 (merged)",
//!     "HydraLoRA r=16", "MoELoRA r=8", "ID-LoRA r=128"]);
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use idlora_adapter::{MethodConfig, MethodKind};
use idlora_eval::efficiency::{EfficiencyRequest, Measurement, overhead};
use idlora_models::{DeviceChoice, Target};
use serde::Serialize;

use crate::error::{ReproduceError, Result};
use crate::experiment::{Scale, method_ranks};
use crate::run::Paths;

/// One bar of Figure 3.
#[derive(Clone, Debug)]
pub struct Fig3Row {
    /// Row label.
    pub label: String,
    /// File name of its measurement.
    pub slug: String,
    /// The method at its rank, or `None` for the base model.
    pub method: Option<MethodConfig>,
    /// Measured merged into the base (LoRA, DoRA).
    pub merged: bool,
    /// The paper's decoding-time overhead over LoRA, percent (section 5.4), where it gives one.
    pub paper_time_vs_lora: Option<f64>,
}

/// The rows at `scale`.
pub fn rows(scale: Scale) -> Vec<Fig3Row> {
    let mut out = vec![Fig3Row {
        label: "base".into(),
        slug: "base".into(),
        method: None,
        merged: false,
        paper_time_vs_lora: None,
    }];
    for (kind, r) in method_ranks(scale) {
        let name = kind.display_name();
        let method = Some(MethodConfig::new(kind, r));
        let paper = match kind {
            MethodKind::Lora | MethodKind::Dora => Some(0.0),
            MethodKind::HydraLora => Some(36.5),
            MethodKind::MoeLora => Some(61.6),
            MethodKind::IdLora => Some(0.5),
            MethodKind::Full => None,
        };
        let mergeable = matches!(kind, MethodKind::Lora | MethodKind::Dora);
        if mergeable {
            out.push(Fig3Row {
                label: format!("{name} r={r} (merged)"),
                slug: format!("{}-merged", kind.name()),
                method: method.clone(),
                merged: true,
                paper_time_vs_lora: paper,
            });
        }
        if !mergeable || kind == MethodKind::Lora {
            out.push(Fig3Row {
                label: format!("{name} r={r}"),
                slug: kind.name().to_string(),
                method,
                merged: false,
                paper_time_vs_lora: if mergeable { None } else { paper },
            });
        }
    }
    out
}

/// What to measure, and where.
#[derive(Clone, Debug)]
pub struct Fig3Setup {
    /// `paper` (LLaMA-3-8B from the paths file) or `small` (SmolLM2-135M).
    pub scale: Scale,
    /// Output folder.
    pub out: PathBuf,
    /// The base model.
    pub model: PathBuf,
    /// Compute device.
    pub device: DeviceChoice,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    pub new_tokens: usize,
    /// Timed rounds per row (median).
    pub rounds: usize,
}

impl Fig3Setup {
    /// The defaults at `scale` for `model`: output `runs/reproduce/fig3-<scale>`, a 128-token
    /// prompt, 32 decoded tokens, 5 rounds.
    pub fn new(scale: Scale, model: PathBuf) -> Self {
        Fig3Setup {
            scale,
            out: PathBuf::from(format!("runs/reproduce/fig3-{}", scale.name())),
            model,
            device: DeviceChoice::Auto,
            prompt_tokens: 128,
            new_tokens: 32,
            rounds: 5,
        }
    }

    /// The measurement of `row`.
    pub fn request(&self, row: &Fig3Row) -> EfficiencyRequest {
        EfficiencyRequest {
            label: row.label.clone(),
            model: self.model.clone(),
            device: self.device,
            method: row.method.clone(),
            merged: row.merged,
            targets: Target::ALL.to_vec(),
            prompt_tokens: self.prompt_tokens,
            new_tokens: self.new_tokens,
            rounds: self.rounds,
        }
    }
}

/// The base model of Figure 3 at `scale`: `models."llama3-8b"` of the paths file at paper scale
/// (an error naming the key when absent), `models."smollm2"` or the packaged SmolLM2-135M at
/// small scale.
pub fn model_for(scale: Scale, paths: &Paths, cache: &Path) -> Result<PathBuf> {
    let key = match scale {
        Scale::Paper => "llama3-8b",
        Scale::Small => "smollm2",
    };
    match (paths.models.get(key), scale) {
        (Some(p), _) => Ok(p.clone()),
        (None, Scale::Small) => Ok(idlora_assets::fetch(&idlora_assets::SMOLLM2_135M_INSTRUCT_GGUF, cache)?),
        (None, Scale::Paper) => Err(ReproduceError::MissingPath {
            cell: "fig3".into(),
            key: format!("models.\"{key}\""),
            what: "the LLaMA-3-8B Hugging Face folder".into(),
        }),
    }
}

/// One measured row, as `results.json` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Fig3Result {
    /// Row label.
    pub label: String,
    /// The measurement.
    pub measured: Measurement,
    /// Decoding time over merged LoRA's (the deployed LoRA), percent.
    pub time_vs_lora_merged: Option<f64>,
    /// Decoding time over unmerged LoRA's, percent.
    pub time_vs_lora: Option<f64>,
    /// The paper's decoding-time overhead over LoRA, percent.
    pub paper_time_vs_lora: Option<f64>,
    /// Extra peak memory over the base model's, MiB.
    pub extra_rss_mb: Option<f64>,
}

/// What [`run`] wrote.
#[derive(Clone, Debug)]
pub struct Fig3Outcome {
    /// Every row.
    pub rows: Vec<Fig3Result>,
    /// `results.md`.
    pub markdown: PathBuf,
}

/// Measures every row not measured yet (`measure` is called with its request; `started` with
/// (index, total, label) before), then writes `results.md`, `results.json` and `figure3.svg`.
pub fn run(
    setup: &Fig3Setup,
    measure: &dyn Fn(&EfficiencyRequest) -> std::result::Result<Measurement, String>,
    started: &dyn Fn(usize, usize, &str),
) -> Result<Fig3Outcome> {
    std::fs::create_dir_all(&setup.out)
        .map_err(|source| ReproduceError::Io { path: setup.out.clone(), source })?;
    let rows = rows(setup.scale);
    let mut measured = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let file = setup.out.join(format!("{}.json", row.slug));
        let done =
            std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str::<Measurement>(&t).ok());
        let m = match done {
            Some(m) => m,
            None => {
                started(i, rows.len(), &row.label);
                let m = measure(&setup.request(row))
                    .map_err(|e| ReproduceError::Setting(format!("fig3: {}: {e}", row.label)))?;
                let text = serde_json::to_string_pretty(&m).unwrap_or_default();
                idlora_data::write_atomic(&file, text.as_bytes())?;
                m
            }
        };
        measured.push(m);
    }
    let find = |slug: &str| rows.iter().position(|r| r.slug == slug).map(|i| &measured[i]);
    let (base, lora_merged, lora) = (find("base"), find("lora-merged"), find("lora"));
    let results: Vec<Fig3Result> = rows
        .iter()
        .zip(&measured)
        .map(|(row, m)| Fig3Result {
            label: row.label.clone(),
            measured: m.clone(),
            time_vs_lora_merged: lora_merged.map(|l| overhead(m, l)),
            time_vs_lora: lora.map(|l| overhead(m, l)),
            paper_time_vs_lora: row.paper_time_vs_lora,
            extra_rss_mb: base.map(|b| m.peak_rss_mb - b.peak_rss_mb),
        })
        .collect();
    let markdown = setup.out.join("results.md");
    idlora_data::write_atomic(&markdown, render(setup, &results).as_bytes())?;
    let json = serde_json::json!({ "experiment": "fig3", "scale": setup.scale.name(), "rows": results });
    idlora_data::write_atomic(
        &setup.out.join("results.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default().as_bytes(),
    )?;
    idlora_data::write_atomic(&setup.out.join("figure3.svg"), svg(&results).as_bytes())?;
    Ok(Fig3Outcome { rows: results, markdown })
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.1}%"))
}

fn render(setup: &Fig3Setup, rows: &[Fig3Result]) -> String {
    let mut s = format!(
        "# Figure 3: inference cost per method ({} scale)\n\nPrompt {} tokens, then {} greedy \
         tokens with a KV cache, batch 1; every projection adapted; median of {} rounds; each row \
         in its own process. Extra memory: the process's peak resident memory over the base \
         model's (host memory; on a GPU the device memory is not measured here), and the extra \
         parameters' f32 bytes.\n\n",
        setup.scale.name(),
        setup.prompt_tokens,
        setup.new_tokens,
        setup.rounds
    );
    s.push_str(
        "| Method | extra params | extra weights MiB | extra peak MiB | prompt ms | decode ms/token | \
         vs LoRA merged | vs LoRA unmerged | paper: vs LoRA |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let m = &r.measured;
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {} | {:.1} | {:.2} | {} | {} | {} |",
            r.label,
            m.extra_params,
            m.extra_weight_mb(),
            r.extra_rss_mb.map_or("-".into(), |v| format!("{v:+.1}")),
            m.prompt_ms,
            m.decode_ms_per_token,
            pct(r.time_vs_lora_merged),
            pct(r.time_vs_lora),
            pct(r.paper_time_vs_lora)
        );
    }
    let by = |prefix: &str| rows.iter().find(|r| r.label.starts_with(prefix));
    if let Some(id) = by("ID-LoRA") {
        let mut line = String::from(
            "\nThe paper: HydraLoRA +36.5% and MoELoRA +61.6% time over LoRA, ID-LoRA +0.5%, and ID-LoRA's \
             extra memory 45% below both HydraLoRA's and MoELoRA's. Here: ID-LoRA's extra weights are",
        );
        for other in ["HydraLoRA", "MoELoRA"] {
            if let Some(o) = by(other) {
                let ratio =
                    id.measured.extra_weight_mb() / o.measured.extra_weight_mb().max(f64::MIN_POSITIVE);
                let _ = write!(line, " {:.0}% below {other}'s,", 100.0 * (1.0 - ratio));
            }
        }
        let _ = write!(line, " and it decodes {} over merged LoRA.", pct(id.time_vs_lora_merged));
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// What a bar panel plots of a row.
type Value = fn(&Fig3Result) -> f64;

/// Two bar panels: decoding ms per token and extra weight memory per row.
fn svg(rows: &[Fig3Result]) -> String {
    let (w, bar, left) = (360.0, 18.0, 150.0);
    let h = 40.0 + rows.len() as f64 * (bar + 6.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * (left + w) + 20.0
    );
    let panels: [(&str, Value); 2] = [
        ("decode ms / token", |r| r.measured.decode_ms_per_token),
        ("extra weights MiB", |r| r.measured.extra_weight_mb()),
    ];
    for (p, (title, value)) in panels.iter().enumerate() {
        let x0 = p as f64 * (left + w + 20.0);
        let max = rows.iter().map(value).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
        let _ = writeln!(s, "<text x=\"{}\" y=\"16\" font-size=\"12\">{title}</text>", x0 + left);
        for (i, r) in rows.iter().enumerate() {
            let y = 28.0 + i as f64 * (bar + 6.0);
            let v = value(r);
            let len = (w - 60.0) * v / max;
            let colour = if r.label.starts_with("ID-LoRA") { "#d62728" } else { "#1f77b4" };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{v:.2}</text>",
                x0 + left - 6.0,
                y + bar - 5.0,
                r.label,
                x0 + left,
                x0 + left + len + 4.0,
                y + bar - 5.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_measure_every_method_at_its_rank_and_reruns_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut setup = Fig3Setup::new(Scale::Small, PathBuf::from("model"));
        setup.out = dir.path().to_path_buf();
        let calls = std::sync::Mutex::new(Vec::new());
        // A stand-in measurer: time grows with the rank, weights with nothing (checked by hand).
        let measure = |req: &EfficiencyRequest| {
            calls.lock().expect("lock").push(req.label.clone());
            let r = req.method.as_ref().map_or(0, |m| m.r);
            let merged_or_base = req.method.is_none() || req.merged;
            Ok(Measurement {
                label: req.label.clone(),
                extra_params: if merged_or_base { 0 } else { 1 << 18 },
                prompt_ms: 1.0,
                decode_ms_per_token: if merged_or_base { 10.0 } else { 10.0 + r as f64 },
                peak_rss_mb: 100.0 + r as f64,
            })
        };
        let out = run(&setup, &measure, &|_, _, _| {}).expect("run");
        let labels: Vec<&str> = out.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "base",
                "LoRA r=8 (merged)",
                "LoRA r=8",
                "DoRA r=8 (merged)",
                "HydraLoRA r=4",
                "MoELoRA r=2",
                "ID-LoRA r=32"
            ]
        );
        let id = &out.rows[6];
        // 10 + 32 ms against merged LoRA's 10 ms: +320%; against unmerged LoRA's 18 ms: +133.3%.
        assert!((id.time_vs_lora_merged.expect("vs merged") - 320.0).abs() < 1e-9);
        assert!((id.time_vs_lora.expect("vs lora") - 100.0 * (42.0 / 18.0 - 1.0)).abs() < 1e-9);
        assert_eq!(id.extra_rss_mb, Some(32.0));
        assert_eq!(id.measured.extra_weight_mb(), 1.0); // 2^18 f32
        let md = std::fs::read_to_string(&out.markdown).expect("md");
        assert!(md.contains("| ID-LoRA r=32 | 262144 | 1.0 | +32.0 |"), "{md}");
        assert!(md.contains("| HydraLoRA r=4 |") && md.contains("+36.5%"), "{md}");
        assert!(dir.path().join("figure3.svg").is_file());
        assert_eq!(calls.lock().expect("lock").len(), 7);
        // A rerun measures nothing.
        run(&setup, &measure, &|_, _, _| {}).expect("rerun");
        assert_eq!(calls.lock().expect("lock").len(), 7);
    }

    #[test]
    fn paper_scale_needs_the_llama_folder() {
        let err = model_for(Scale::Paper, &Paths::default(), Path::new("cache")).expect_err("no path");
        assert!(err.to_string().contains("models.\"llama3-8b\""), "{err}");
    }
}
