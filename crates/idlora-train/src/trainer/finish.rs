//! Stage 5: the end of a run. A finished run gets its last checkpoint, the final validation
//! loss, the PEFT adapter folder (or a fully fine-tuned model's Hugging Face folder) and
//! `summary.json`; every run but a halted one gets its loss curve.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::module::Module;
use idlora_adapter::{AdapterConfig, MethodKind};
use idlora_data::write_atomic;
use idlora_models::export::{ExportOptions, export_hf};

use super::session::Session;
use super::{Outcome, RunSummary};
use crate::error::Result;
use crate::plot::loss_curve_svg;

impl Session<'_> {
    /// Closes the run that ended with `outcome`.
    pub(super) fn finish(mut self, outcome: Outcome, val_loss_before: Option<f64>) -> Result<RunSummary> {
        let mut val_loss_after = None;
        let (mut adapter_dir, mut model_dir) = (None, None);
        if outcome == Outcome::Finished {
            self.checkpoint()?;
            val_loss_after = self.validate(true)?;
            adapter_dir = self.export_adapter()?;
            model_dir = self.export_model()?;
            self.write_summary(val_loss_before, val_loss_after)?;
        }
        if outcome != Outcome::Halted {
            let svg = loss_curve_svg(&self.losses, &self.metrics.val_points());
            write_atomic(&self.run.join("loss.svg"), svg.as_bytes())?;
        }
        Ok(RunSummary {
            outcome,
            run_dir: self.run.to_path_buf(),
            steps: self.state.step,
            val_loss_before,
            val_loss_after,
            losses: self.losses,
            adapter_dir,
            model_dir,
            last_checkpoint: self.last_checkpoint,
            model: self.model,
        })
    }

    /// Saves the adapters as a PEFT folder (`adapter/`, with the prompt format trained on);
    /// `None` for full fine-tuning.
    fn export_adapter(&self) -> Result<Option<PathBuf>> {
        if self.method.kind == MethodKind::Full {
            return Ok(None);
        }
        let dir = self.run.join("adapter");
        let modules: BTreeSet<String> = self
            .model
            .projections()
            .into_iter()
            .filter(|(_, p)| p.adapter.is_some())
            .map(|(t, _)| t.module_name().to_string())
            .collect();
        let config = AdapterConfig::new(self.method.clone(), modules.into_iter().collect());
        self.model.save_adapters(&dir, config)?;
        // Evaluation reads it back, so that the model is asked in the format it learned.
        idlora_data::prompt::record_format(&dir, self.cfg.data.template.prompt_format())?;
        self.observer.message(&format!("adapter saved to {}", dir.display()));
        Ok(Some(dir))
    }

    /// Saves a fully fine-tuned model as a Hugging Face folder (`model/`: config, safetensors,
    /// tokenizer, prompt format), which `eval --model` and transformers load; `None` for adapters.
    fn export_model(&self) -> Result<Option<PathBuf>> {
        if self.method.kind != MethodKind::Full {
            return Ok(None);
        }
        let dir = self.run.join("model");
        let options = ExportOptions::default();
        export_hf(self.model.valid(), Some(self.tokenizer), &dir, &options)?;
        idlora_data::prompt::record_format(&dir, self.cfg.data.template.prompt_format())?;
        self.observer.message(&format!("model saved to {}", dir.display()));
        Ok(Some(dir))
    }

    fn write_summary(&self, val_loss_before: Option<f64>, val_loss_after: Option<f64>) -> Result<()> {
        let (trainable, expected, _) = self.counts;
        let summary = serde_json::json!({
            "steps": self.state.step,
            "method": self.method.kind.name(),
            "trainable_params": trainable,
            "expected_trainable_params": expected,
            "val_loss_before": val_loss_before,
            "val_loss_after": val_loss_after,
            "train_loss_first": self.losses.first().map(|l| l.1),
            "train_loss_last": self.losses.last().map(|l| l.1),
            "train_seconds": self.state.train_seconds,
            "tokens": self.state.tokens,
        });
        write_atomic(&self.run.join("summary.json"), summary.to_string().as_bytes())?;
        Ok(())
    }
}
