//! Loads a PEFT adapter folder with idlora's loader over the base weights of the fixture's tiny
//! LLaMA, and writes it back with idlora's writer: `resave_peft IN_DIR OUT_DIR`. Used by
//! `tests/fixtures/make_peft_fixtures.py` to prove that PEFT loads what idlora writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use idlora_adapter::AdapterFile;

#[path = "../tests/common/base.rs"]
mod base;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else { bail!("usage: resave_peft IN_DIR OUT_DIR") };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let file = AdapterFile::load(Path::new(input)).with_context(|| format!("loading {input}"))?;
    let device = Device::flex();
    let layers = file
        .modules()
        .into_iter()
        .map(|name| {
            let linear = base::base_linear(&fixtures.join("tiny_llama/model.safetensors"), &name, &device)?;
            Ok(file.apply(&name, linear)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let out = AdapterFile::from_layers(file.config.clone(), &layers)?;
    out.save(&PathBuf::from(output))?;
    println!("wrote {output} ({} tensors)", out.tensors.len());
    Ok(())
}
