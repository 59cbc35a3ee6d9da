//! One file per subcommand, plus what they share (loading a model directory).
pub mod bench;
pub mod distill;
pub mod embed;
pub mod eval;
pub mod finetune;
pub mod forward;
pub mod generate;
pub mod kernels;
pub mod run;
pub mod train;

use kiln::model::model::LoadedModel;
use kiln::{Device, Result};
use std::path::Path;

/// A model loaded from an HF-layout directory (see [`LoadedModel::from_dir`]).
pub type Loaded = LoadedModel;

/// The files of a model directory that commands read.
const MODEL_FILES: [&str; 6] = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json", "sentence_bert_config.json"];

/// An `--out` file that already exists may not be one of the files the command reads (`inputs`,
/// or the model files of `model_dir`): writing it would replace the data being read.
pub fn out_is_not_an_input(out: &Path, inputs: &[std::path::PathBuf], model_dir: &Path) -> Result<()> {
    let Ok(target) = std::fs::canonicalize(out) else { return Ok(()) }; // not there yet
    let model_files = MODEL_FILES.iter().map(|f| model_dir.join(f));
    for input in inputs.iter().cloned().chain(model_files) {
        if std::fs::canonicalize(&input).is_ok_and(|p| p == target) {
            return Err(kiln::Error::msg(format!("--out {} is {}, which this command reads; write the output elsewhere", out.display(), input.display())));
        }
    }
    Ok(())
}

pub fn load_model_dir(dir: &Path, seed: u64, device: Device) -> Result<Loaded> {
    LoadedModel::from_dir(dir, seed, device)
}
