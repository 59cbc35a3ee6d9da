//! One file per subcommand, plus what they share (loading a model directory).
pub mod bench;
pub mod embed;
pub mod eval;
pub mod forward;
pub mod generate;
pub mod kernels;
pub mod train;

use kiln::model::model::LoadedModel;
use kiln::{Device, Result};
use std::path::Path;

/// A model loaded from an HF-layout directory (see [`LoadedModel::from_dir`]).
pub type Loaded = LoadedModel;

pub fn load_model_dir(dir: &Path, seed: u64, device: Device) -> Result<Loaded> {
    LoadedModel::from_dir(dir, seed, device)
}
