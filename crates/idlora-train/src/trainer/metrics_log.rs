//! `metrics.jsonl`: one JSON line per step and per validation, appended as the run goes.

use std::io::Write;
use std::path::{Path, PathBuf};

use idlora_data::write_atomic;

use super::StepMetrics;
use crate::error::{Result, TrainError, io};

/// The training steps a run logged in `<run>/metrics.jsonl`, in the order they ran (the
/// validation lines left out). A resumed run's file holds each step once: resuming truncates what
/// the interrupted run logged after its last checkpoint.
///
/// ```no_run
/// let steps = idlora_train::trainer::read_steps(std::path::Path::new("runs/demo")).unwrap();
/// let last = steps.last().map(|s| s.loss);
/// ```
pub fn read_steps(run: &Path) -> Result<Vec<StepMetrics>> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let bad = |line: usize, message: String| TrainError::Data {
        path: path.clone(),
        message: format!("line {line}: {message}"),
    };
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        if value.get("val_loss").is_some() {
            continue;
        }
        steps.push(serde_json::from_value(value).map_err(|e| bad(i + 1, e.to_string()))?);
    }
    Ok(steps)
}

/// The run's metrics file.
pub(super) struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub(super) fn new(run: &Path) -> Self {
        Self { path: run.join("metrics.jsonl") }
    }

    /// Appends one line.
    pub(super) fn append(&self, value: &serde_json::Value) -> Result<()> {
        let path = &self.path;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io(path))?;
        writeln!(f, "{value}").map_err(io(path))?;
        f.flush().map_err(io(path))
    }

    /// Removes what an earlier, not resumed run in the same folder logged.
    pub(super) fn clear(&self) -> Result<()> {
        if self.path.exists() {
            std::fs::remove_file(&self.path).map_err(io(&self.path))?;
        }
        Ok(())
    }

    /// Keeps the lines of steps up to `step` (a resumed run rewrites what the killed one logged
    /// after its last checkpoint). Returns the training losses kept.
    pub(super) fn truncate_to(&self, step: usize) -> Result<Vec<(usize, f64)>> {
        let path = &self.path;
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let mut kept = String::new();
        let mut losses = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let s = v.get("step").and_then(|s| s.as_u64()).unwrap_or(u64::MAX) as usize;
            if s <= step {
                if let (Some(l), None) = (v.get("loss").and_then(|l| l.as_f64()), v.get("val_loss")) {
                    losses.push((s, l));
                }
                kept.push_str(line);
                kept.push('\n');
            }
        }
        write_atomic(path, kept.as_bytes())?;
        Ok(losses)
    }

    /// The validation losses logged, as (step, loss).
    pub(super) fn val_points(&self) -> Vec<(usize, f64)> {
        let Ok(text) = std::fs::read_to_string(&self.path) else { return Vec::new() };
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v.get("step")?.as_u64()? as usize, v.get("val_loss")?.as_f64()?)))
            .collect()
    }
}
