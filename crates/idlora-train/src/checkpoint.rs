//! Checkpoints: the trainable tensors, the optimizer state and the run position, written into a
//! temporary folder and renamed into place, so that a crash leaves either the old or the new
//! checkpoint, never half of one.
//!
//! Parameters are named by their module path (`layers.3.self_attn.q_proj.adapter.b`), and their
//! burn [`ParamId`]s are derived from that path, so that the optimizer state saved by one process
//! finds its parameters again in the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use idlora_models::CausalLm;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError, io};

/// A named host tensor: path, shape, f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);
/// Host tensors by name: shape and f32 values.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Where a run stands, saved with each checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: usize,
    /// Steps the run will take in all.
    pub total_steps: usize,
    /// Micro-batches consumed (the data position).
    pub micro_batches: usize,
    /// Training tokens seen.
    pub tokens: usize,
    /// Seconds of training so far (excluding evaluation).
    pub train_seconds: f64,
    /// Digest of the configuration that made the run (a resumed run must have the same).
    pub config_digest: String,
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A digest of `text` (hex FNV-1a).
pub fn digest(text: &str) -> String {
    format!("{:016x}", fnv1a(text))
}

#[derive(Default)]
struct PathStack {
    stack: Vec<String>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        // Enum variants add their type name, not a field: keep the path to fields and indices.
        if !container.starts_with("Enum:") {
            self.stack.push(name.to_string());
        } else {
            self.stack.push(String::new());
        }
    }
    fn exit(&mut self) {
        self.stack.pop();
    }
    fn join(&self) -> String {
        self.stack.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(".")
    }
}

/// A float parameter: path, shape, whether it trains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// Module path.
    pub path: String,
    /// Parameter id.
    pub id: ParamId,
    /// Shape.
    pub shape: Vec<usize>,
    /// Receives gradients.
    pub trainable: bool,
}

/// Walks the float parameters with their paths; with `with_data`, also copies the trainable ones
/// to the host.
struct Lister {
    path: PathStack,
    with_data: bool,
    out: Vec<(ParamInfo, Option<Vec<f32>>)>,
    error: Option<(String, String)>,
}

impl Lister {
    fn run(model: &CausalLm, with_data: bool) -> Self {
        let mut l = Lister { path: PathStack::default(), with_data, out: Vec::new(), error: None };
        model.visit(&mut l);
        l
    }
}

impl ModuleVisitor for Lister {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let info = ParamInfo {
            path: self.path.join(),
            id: param.id,
            shape: t.dims().to_vec(),
            trainable: t.is_require_grad(),
        };
        let data = if self.with_data && info.trainable {
            match t.into_data().try_into_vec::<f32>() {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error = Some((info.path.clone(), format!("{e:?}")));
                    None
                }
            }
        } else {
            None
        };
        self.out.push((info, data));
    }
}

/// Every float parameter of `model`, in module order.
pub fn params(model: &CausalLm) -> Vec<ParamInfo> {
    Lister::run(model, false).out.into_iter().map(|(info, _)| info).collect()
}

/// Trainable parameters of `model` (the tensors that receive gradients), counted.
pub fn trainable_count(model: &CausalLm) -> usize {
    params(model).iter().filter(|p| p.trainable).map(|p| p.shape.iter().product::<usize>()).sum()
}

struct StableIds {
    path: PathStack,
}

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = ParamId::from(fnv1a(&self.path.join()));
        param
    }
}

/// Gives every parameter an id derived from its path, the same in every process.
pub fn with_stable_ids(model: CausalLm) -> CausalLm {
    model.map(&mut StableIds { path: PathStack::default() })
}

/// The trainable tensors as host data, by path.
pub fn trainable_tensors(model: &CausalLm) -> Result<Vec<NamedTensor>> {
    let l = Lister::run(model, true);
    if let Some((name, message)) = l.error {
        return Err(TrainError::Tensor { name, message });
    }
    Ok(l.out.into_iter().filter_map(|(info, data)| Some((info.path, info.shape, data?))).collect())
}

/// Replaces the trainable tensors of `model` with the ones in `tensors` (by path). Every trainable
/// parameter must be present with its shape.
pub fn load_trainable(model: CausalLm, tensors: &TensorMap, source: &Path) -> Result<CausalLm> {
    struct Load<'a> {
        path: PathStack,
        tensors: &'a TensorMap,
        used: usize,
        error: Option<String>,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.enter(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let t = param.val();
            if !t.is_require_grad() || self.error.is_some() {
                return param;
            }
            let name = self.path.join();
            let Some((shape, data)) = self.tensors.get(&name) else {
                self.error = Some(format!("no tensor `{name}`"));
                return param;
            };
            if shape.as_slice() != t.dims().as_slice() {
                self.error = Some(format!("`{name}` has shape {shape:?}, the model wants {:?}", t.dims()));
                return param;
            }
            self.used += 1;
            let value = Tensor::<D>::from_data(TensorData::new(data.clone(), shape.clone()), &t.device());
            Param::initialized(param.id, value.require_grad())
        }
    }
    let mut l = Load { path: PathStack::default(), tensors, used: 0, error: None };
    let model = model.map(&mut l);
    if let Some(message) = l.error {
        return Err(TrainError::Checkpoint { path: source.to_path_buf(), message });
    }
    if l.used != tensors.len() {
        return Err(TrainError::Checkpoint {
            path: source.to_path_buf(),
            message: format!(
                "holds {} tensors, the model trains {}: was it made with another method or targets?",
                tensors.len(),
                l.used
            ),
        });
    }
    Ok(model)
}

/// Serialises f32 tensors to safetensors bytes.
pub fn tensors_to_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Tensor { name: n.clone(), message: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| TrainError::Tensor { name: "checkpoint".into(), message: e.to_string() })
}

/// Reads f32 tensors from a safetensors file.
pub fn read_tensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bad = |message: String| TrainError::Checkpoint { path: path.to_path_buf(), message };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("`{name}` is {:?}, not F32", view.dtype())));
        }
        let data =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Creates `path` with `bytes` and waits until they are on disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The checkpoint folder of `step` under `run`.
pub fn checkpoint_dir(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:07}"))
}

/// Files of one checkpoint.
pub struct CheckpointFiles {
    /// Trainable tensors.
    pub trainable: Vec<u8>,
    /// The optimizer state (burnpack bytes).
    pub optimizer: Vec<u8>,
    /// The run position.
    pub state: RunState,
}

/// Writes a complete checkpoint for `files.state.step`: into `step-N.partial`, then renamed. Older
/// checkpoints beyond `keep` are removed afterwards.
pub fn save_checkpoint(run: &Path, files: &CheckpointFiles, keep: usize) -> Result<PathBuf> {
    let dir = checkpoint_dir(run, files.state.step);
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = |name: &str, bytes: &[u8]| write_synced(&tmp.join(name), bytes);
    write("trainable.safetensors", &files.trainable)?;
    write("optimizer.bpk", &files.optimizer)?;
    let state = serde_json::to_vec_pretty(&files.state)
        .map_err(|e| TrainError::Checkpoint { path: tmp.clone(), message: e.to_string() })?;
    write("state.json", &state)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let all = list_checkpoints(run)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(dir)
}

/// Complete checkpoints of `run`, oldest first.
pub fn list_checkpoints(run: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = run.join("checkpoints");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(io(&root))? {
        let p = entry.map_err(io(&root))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse::<usize>().ok())
            && p.join("state.json").is_file()
        {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a checkpoint folder.
pub fn load_checkpoint(dir: &Path) -> Result<CheckpointFiles> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(io(dir.join(name)));
    let state: RunState = serde_json::from_slice(&read("state.json")?)
        .map_err(|e| TrainError::Checkpoint { path: dir.join("state.json"), message: e.to_string() })?;
    Ok(CheckpointFiles {
        trainable: read("trainable.safetensors")?,
        optimizer: read("optimizer.bpk")?,
        state,
    })
}
