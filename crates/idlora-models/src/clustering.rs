//! ID-LoRA's index sets for a whole model: every adapted matrix of a checkpoint (or of a loaded
//! model), clustered in parallel by [`idlora_cluster::many::select_bases_many`].
//!
//! This module knows the LLaMA / Mistral layout (which tensors are the adapted weights); the
//! cluster crate knows only matrices.

use idlora_cluster::PmrcConfig;
use idlora_cluster::bases_file::BasesFile;
use idlora_cluster::many::{OwnedMatrix, select_bases_many};
use idlora_weights::Weights;

use crate::error::{ModelError, Result};
use crate::layout::Target;

/// Checkpoint names of the `targets` weights of every decoder layer, layer by layer in `targets`
/// order. A layer that lacks one is an error naming it, as is a checkpoint with no
/// `model.layers.N.*` tensors at all.
pub fn adapted_weight_names(weights: &Weights, targets: &[Target]) -> Result<Vec<String>> {
    let names = weights.tensor_names();
    let missing = |name: String| ModelError::MissingTensor { path: weights.path().to_path_buf(), name };
    let mut found = Vec::new();
    for layer in 0.. {
        let prefix = format!("model.layers.{layer}.");
        if !names.iter().any(|n| n.starts_with(&prefix)) {
            break;
        }
        for t in targets {
            let name = t.weight_name(layer);
            if !names.contains(&name) {
                return Err(missing(name));
            }
            found.push(name);
        }
    }
    if found.is_empty() {
        return Err(ModelError::Input(format!(
            "{}: no `model.layers.N.*` tensors: not a LLaMA / Mistral-layout model",
            weights.path().display()
        )));
    }
    Ok(found)
}

/// Clusters the `targets` weights of every layer of a checkpoint (a Hugging Face folder, a
/// safetensors file or a GGUF file opened with [`Weights::open`]) with `cfg`, spreading the
/// matrices over rayon's threads. Each matrix is read when a thread takes it, so memory holds only
/// those in flight, never the whole model. `progress(done, total)` is called after each matrix.
///
/// The file's `extra` holds `source` (the checkpoint), `targets`, `inertia` (PMRC) and
/// `slowest_seconds`.
///
/// ```no_run
/// use idlora_cluster::PmrcConfig;
/// use idlora_models::{Target, clustering::cluster_checkpoint};
/// let weights = idlora_weights::Weights::open("SmolLM2-135M")?;
/// let cfg = PmrcConfig { k: 4, rank: 32, ..PmrcConfig::default() };
/// let file = cluster_checkpoint(&weights, &Target::ALL, &cfg, &|done, total| eprintln!("{done}/{total}"))?;
/// file.save("bases.safetensors".as_ref())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn cluster_checkpoint(
    weights: &Weights,
    targets: &[Target],
    cfg: &PmrcConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BasesFile> {
    let names = adapted_weight_names(weights, targets)?;
    let read =
        |name: &str| weights.read_matrix(name).map(|(rows, cols, data)| OwnedMatrix { data, rows, cols });
    let mut file = select_bases_many(&names, read, cfg, progress)?;
    file.extra.insert("source".into(), weights.path().display().to_string());
    let targets: Vec<&str> = targets.iter().map(|t| t.module_name()).collect();
    file.extra.insert("targets".into(), targets.join(","));
    Ok(file)
}
