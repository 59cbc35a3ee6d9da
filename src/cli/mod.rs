//! One file per subcommand, plus what they share (loading a model directory).
pub mod bench;
pub mod eval;
pub mod forward;
pub mod generate;
pub mod kernels;
pub mod train;

use kiln::model::{config::ModelConfig, model::Model, params::ParamStore, tokenize, HfNameMap, LoadOptions};
use kiln::{DType, Device, Result};
use std::path::Path;

/// A model loaded from an HF-layout directory: config.json, and model.safetensors when present
/// (a directory with only config.json means freshly initialised weights).
pub struct Loaded {
    pub cfg: ModelConfig,
    pub store: ParamStore,
    pub model: Model,
    pub tokenizer: Option<tokenizers::Tokenizer>,
}

pub fn load_model_dir(dir: &Path, seed: u64, device: Device) -> Result<Loaded> {
    kiln::tensor::cuda::check_device(device)?;
    if !dir.is_dir() {
        return Err(kiln::Error::msg(format!("model directory {} does not exist", dir.display())));
    }
    let cfg = ModelConfig::load(dir.join("config.json"))?;
    let store = ParamStore::new(seed, DType::F32, device);
    let model = Model::build(&cfg, &store)?;
    let weights = dir.join("model.safetensors");
    if weights.exists() {
        kiln::model::load_params(&weights, &store, &HfNameMap::for_model_type(cfg.model_type()), &LoadOptions::strict())?;
    }
    let tokenizer = tokenize::find_tokenizer(None, Some(dir))?;
    Ok(Loaded { cfg, store, model, tokenizer })
}
