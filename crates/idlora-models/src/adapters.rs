//! Attaching adapters to a model's projections, and saving / loading them.

use std::collections::BTreeMap;
use std::path::Path;

use crate::layout::Target;
use burn::module::Module;
use burn::tensor::Tensor;
use idlora_adapter::IndexSets;
use idlora_adapter::{AdaptedLinear, AdapterConfig, AdapterFile, MethodConfig, MethodKind};
use idlora_cluster::PmrcConfig;
use idlora_cluster::bases_file::BasesFile;
use idlora_cluster::many::{OwnedMatrix, select_bases_many};

use crate::error::{ModelError, Result};
use crate::model::{CausalLm, ForwardInput};

/// Where ID-LoRA's index sets come from.
pub enum BasesSource<'a> {
    /// Cluster each target weight now with these settings (`k` and `rank` are overridden by the
    /// method's). `progress` is called after each matrix with (done, total).
    Cluster(PmrcConfig, &'a (dyn Fn(usize, usize) + Sync)),
    /// A file written by `cargo xtask cluster --model`.
    File(&'a BasesFile),
}

/// The router weights of one routed projection for every token of an input.
#[derive(Clone, Debug)]
pub struct Routing {
    /// Decoder layer.
    pub layer: usize,
    /// Projection.
    pub target: Target,
    /// `softmax(W_g x)` per token, `[batch * seq, experts]`: ID-LoRA's `k` clusters, HydraLoRA's
    /// heads, MoELoRA's experts.
    pub weights: Tensor<2>,
}

impl CausalLm {
    /// The projection `target` of layer `layer`, if the model has that layer.
    pub fn projection(&self, layer: usize, target: Target) -> Option<&AdaptedLinear> {
        let l = self.layers.get(layer)?;
        Some(match target {
            Target::Q => &l.self_attn.q_proj,
            Target::K => &l.self_attn.k_proj,
            Target::V => &l.self_attn.v_proj,
            Target::O => &l.self_attn.o_proj,
            Target::Gate => &l.mlp.gate_proj,
            Target::Up => &l.mlp.up_proj,
            Target::Down => &l.mlp.down_proj,
        })
    }

    /// The router weights of every routed projection (HydraLoRA, MoELoRA, ID-LoRA) for every
    /// token of `input`, in layer order: one forward pass, each router applied to the input its
    /// projection reads. Empty for a model without routers.
    ///
    /// ```
    /// use std::path::Path;
    /// use burn::tensor::Device;
    /// use idlora_adapter::{MethodConfig, MethodKind};
    /// use idlora_models::{ForwardInput, layout::Target, load};
    /// let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa_untied");
    /// let hydra = MethodConfig::new(MethodKind::HydraLora, 2); // 3 heads by default
    /// let model = load(&dir, &Device::flex())?.apply_adapters(&hydra, &[Target::Down], None)?;
    /// let routing = model.routing(&ForwardInput::single(&[1, 2, 3, 4]))?;
    /// assert_eq!(routing.len(), model.config.num_layers);
    /// assert_eq!(routing[0].weights.dims()[0], 4); // one row per token
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn routing(&self, input: &ForwardInput) -> Result<Vec<Routing>> {
        let mut out = Vec::new();
        self.hidden_seen(input, &mut |layer, target, x| {
            let Some(p) = self.projection(layer, target) else { return };
            let [b, s, d] = x.dims();
            if let Some(weights) = p.router_weights(x.clone().reshape([b * s, d])) {
                out.push(Routing { layer, target, weights });
            }
        })?;
        Ok(out)
    }
}

impl CausalLm {
    /// Every projection with its module path, in layer order.
    pub fn projections_mut(&mut self) -> Vec<(Target, &mut AdaptedLinear)> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            out.push((Target::Q, &mut a.q_proj));
            out.push((Target::K, &mut a.k_proj));
            out.push((Target::V, &mut a.v_proj));
            out.push((Target::O, &mut a.o_proj));
            out.push((Target::Gate, &mut m.gate_proj));
            out.push((Target::Up, &mut m.up_proj));
            out.push((Target::Down, &mut m.down_proj));
        }
        out
    }

    /// Every projection, read-only.
    pub fn projections(&self) -> Vec<(Target, &AdaptedLinear)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            let a = &layer.self_attn;
            let m = &layer.mlp;
            out.extend([
                (Target::Q, &a.q_proj),
                (Target::K, &a.k_proj),
                (Target::V, &a.v_proj),
                (Target::O, &a.o_proj),
            ]);
            out.extend([
                (Target::Gate, &m.gate_proj),
                (Target::Up, &m.up_proj),
                (Target::Down, &m.down_proj),
            ]);
        }
        out
    }

    /// Folds every LoRA / DoRA adapter into its base weight, for inference: the merged model
    /// computes the same function (up to f32 rounding) with the base layer's cost only, while an
    /// unmerged DoRA re-normalises its weight at every forward. Routed methods (HydraLoRA,
    /// MoELoRA, ID-LoRA) depend on the input through their router and stay as they are, and so
    /// does everything when the base is stored below f32 (a bf16 base would round the update
    /// away). Returns how many projections were merged now.
    ///
    /// ```
    /// use std::path::Path;
    /// use burn::tensor::Device;
    /// use idlora_adapter::{MethodConfig, MethodKind};
    /// use idlora_models::{layout::Target, load};
    /// let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa_untied");
    /// let lora = MethodConfig::new(MethodKind::Lora, 2);
    /// let mut model = load(&dir, &Device::flex())?.apply_adapters(&lora, &[Target::Q, Target::V], None)?;
    /// assert_eq!(model.merge_adapters()?, 2 * model.config.num_layers);
    /// assert_eq!(model.merge_adapters()?, 0); // already merged
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn merge_adapters(&mut self) -> Result<usize> {
        if self.base_precision() != crate::precision::Precision::F32 {
            return Ok(0);
        }
        let mut merged = 0;
        for (_, p) in self.projections_mut() {
            if matches!(p.kind(), MethodKind::Lora | MethodKind::Dora) && !p.merged {
                *p = p.clone().merge()?;
                merged += 1;
            }
        }
        Ok(merged)
    }

    /// Wraps the `targets` projections of every layer with `method` and freezes everything else
    /// (embeddings, norms, head, untargeted projections). Full fine-tuning leaves the whole model
    /// trainable. ID-LoRA takes its index sets from `bases`.
    pub fn apply_adapters(
        mut self,
        method: &MethodConfig,
        targets: &[Target],
        bases: Option<BasesSource>,
    ) -> Result<Self> {
        if method.kind == MethodKind::Full {
            if self.base_precision() != crate::precision::Precision::F32 {
                return Err(ModelError::Setting {
                    setting: "precision",
                    message: format!(
                        "full fine-tuning trains the base, which is stored in {}: it needs f32",
                        self.base_precision()
                    ),
                });
            }
            return Ok(self);
        }
        let method = &self.config.resolve_parts(method, targets)?;
        let sets = if method.kind == MethodKind::IdLora {
            let source = bases.ok_or_else(|| {
                ModelError::Input("ID-LoRA needs index sets: cluster the weights or give a bases file".into())
            })?;
            Some(self.index_sets(method, targets, source)?)
        } else {
            None
        };
        self.freeze_non_projections();
        for (target, proj) in self.projections_mut() {
            let base = proj.base.clone();
            let name = proj.name.clone();
            *proj = if targets.contains(&target) {
                let s = sets.as_ref().and_then(|m| m.get(&name));
                AdaptedLinear::new(&name, base, method, s)?
            } else {
                let mut frozen =
                    AdaptedLinear::new(&name, base, &MethodConfig::new(MethodKind::Full, 1), None)?;
                frozen.base = frozen.base.no_grad();
                frozen
            };
        }
        Ok(self)
    }

    fn index_sets(
        &mut self,
        method: &MethodConfig,
        targets: &[Target],
        source: BasesSource,
    ) -> Result<BTreeMap<String, IndexSets>> {
        let mut out = BTreeMap::new();
        let wanted: Vec<(String, &AdaptedLinear)> = self
            .projections()
            .into_iter()
            .filter(|(t, _)| targets.contains(t))
            .map(|(_, p)| (p.name.clone(), p))
            .collect();
        match source {
            BasesSource::File(file) => {
                for (name, _) in &wanted {
                    let key = format!("{name}.weight");
                    let sets = file.sets.get(&key).ok_or_else(|| {
                        ModelError::Input(format!("the bases file has no index sets for `{key}`"))
                    })?;
                    out.insert(name.clone(), IndexSets::new(sets.sets.clone())?);
                }
            }
            BasesSource::Cluster(cfg, progress) => {
                let cfg = PmrcConfig { k: method.k, rank: method.r, ..cfg };
                let file = self.cluster_bases(targets, &cfg, progress)?;
                for (name, _) in &wanted {
                    if let Some(sets) = file.sets.get(&format!("{name}.weight")) {
                        out.insert(name.clone(), IndexSets::new(sets.sets.clone())?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Clusters the weight of every `targets` projection with `cfg` (PMRC, or the SS / RS ablations)
    /// and returns the index sets keyed by weight name (`model.layers.0.self_attn.q_proj.weight`),
    /// ready to save. `progress` is called after each matrix with (done, total).
    pub fn cluster_bases(
        &self,
        targets: &[Target],
        cfg: &PmrcConfig,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<BasesFile> {
        let wanted: BTreeMap<String, &AdaptedLinear> = self
            .projections()
            .into_iter()
            .filter(|(t, _)| targets.contains(t))
            .map(|(_, p)| (format!("{}.weight", p.name), p))
            .collect();
        // Weights are read back one at a time on the worker that clusters them.
        let names: Vec<String> = wanted.keys().cloned().collect();
        let read = |name: &str| -> std::result::Result<OwnedMatrix, ModelError> {
            let proj =
                wanted.get(name).ok_or_else(|| ModelError::Input(format!("no projection `{name}`")))?;
            // Rows of W0 are output rows: transpose our input-major weight back.
            let w = proj.base.weight.val().transpose().cast(burn::tensor::FloatDType::F32);
            let [rows, cols] = w.dims();
            let data = w
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| ModelError::Input(format!("reading `{name}` back for clustering: {e:?}")))?;
            Ok(OwnedMatrix { data, rows, cols })
        };
        Ok(select_bases_many(&names, read, cfg, progress)?)
    }

    /// Freezes the embedding, the norms and the head (adapter training leaves them as they are).
    fn freeze_non_projections(&mut self) {
        self.embed_tokens = self.embed_tokens.clone().set_require_grad(false);
        self.lm_head = self.lm_head.take().map(|p| p.set_require_grad(false));
        self.norm = self.norm.clone().no_grad();
        for layer in &mut self.layers {
            layer.input_layernorm = layer.input_layernorm.clone().no_grad();
            layer.post_attention_layernorm = layer.post_attention_layernorm.clone().no_grad();
        }
    }

    /// Saves the adapters of the adapted projections in PEFT's layout.
    pub fn save_adapters(&self, dir: &Path, config: AdapterConfig) -> Result<()> {
        let layers = self.projections().into_iter().filter(|(_, p)| p.adapter.is_some()).map(|(_, p)| p);
        AdapterFile::from_layers(config, layers)?.save(dir)?;
        Ok(())
    }

    /// Loads an adapter folder onto this model: the projections named in the file get their
    /// adapter, everything else is frozen. Tensors that match no projection are an error.
    pub fn load_adapters(mut self, dir: &Path) -> Result<(Self, AdapterFile)> {
        let file = AdapterFile::load(dir)?;
        let modules = file.modules();
        let names = self.projections().into_iter().map(|(_, p)| p.name.clone()).collect();
        file.check_all_used(&names)?;
        self.freeze_non_projections();
        for (_, proj) in self.projections_mut() {
            let base = proj.base.clone().no_grad();
            let name = proj.name.clone();
            *proj = if modules.contains(&name) {
                file.apply(&name, base)?
            } else {
                AdaptedLinear::new(&name, base, &MethodConfig::new(MethodKind::Full, 1), None)?
            };
        }
        Ok((self, file))
    }
}
