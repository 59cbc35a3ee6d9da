//! The training-state file and whole-checkpoint helpers.
//!
//! `training_state.safetensors` holds the optimizer's state tensors (f32, exact) and, in the
//! header's `__metadata__` under `kiln_train_state`, a JSON [`TrainState`]: step, optimizer kind,
//! hyper-parameters and per-parameter step counts, data position, RNG states, config hash and any
//! trainer extras. Restoring all of it (plus the f32 weights in `model.safetensors`) makes a
//! resumed CPU run bit-identical to an uninterrupted one.
//!
//! [`checkpoint_files`] lists the files of a checkpoint (`config.json`, `model.safetensors` with HF
//! names, `tokenizer.json`, `training_state.safetensors`) with their bytes made on demand;
//! [`crate::run_dir`] writes them as one unit with a manifest (what `kiln train` does), and
//! [`save_checkpoint`] writes them into a plain HF directory, each file atomically on its own.
use crate::checkpoint::hf_tensors;
use crate::config::ModelConfig;
use crate::data::DataPosition;
use crate::optim::OptimState;
use crate::params::ParamStore;
use crate::rng::RngState;
use crate::io::atomic_write;
use crate::st_io::{to_safetensors_bytes, StFile};
use crate::tokenize::Tokenizer;
use kiln_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Written beside `tokenizer.json` ([`crate::tokenize::tokenizer_config_json`]).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const TRAIN_STATE_FILE: &str = "training_state.safetensors";
const META_KEY: &str = "kiln_train_state";
const FORMAT_VERSION: u32 = 1;

/// Everything besides weights and optimizer tensors that a resumed run needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer updates done so far.
    pub step: u64,
    /// Names the run the state belongs to (drawn when a run starts, kept across resumes); the
    /// checkpoints of a run directory are pruned within their run only.
    #[serde(default)]
    pub run_id: String,
    /// [`ModelConfig::hash_hex`] of the model being trained (checked on resume).
    pub config_hash: String,
    /// Where the data pipeline is.
    pub data: DataPosition,
    /// Other generators (e.g. `"dropout"`).
    #[serde(default)]
    pub rngs: BTreeMap<String, RngState>,
    /// Trainer-specific values (arguments, tokens seen, loss scale, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Optimizer state; its tensors go to the file body, the rest to the JSON header.
    #[serde(skip)]
    pub optimizer: OptimState,
}

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    #[serde(flatten)]
    state: TrainState,
    optimizer_kind: String,
    optimizer_hyper: serde_json::Value,
    optimizer_steps: BTreeMap<String, u64>,
}

impl TrainState {
    /// Errors unless the state was saved for a model with `cfg`'s hash.
    pub fn check_config(&self, cfg: &ModelConfig) -> Result<()> {
        let h = cfg.hash_hex()?;
        if !self.config_hash.is_empty() && self.config_hash != h {
            return Err(Error::msg(format!(
                "training state was saved for a different model config (hash {} vs {h}); resume with the same config",
                self.config_hash
            )));
        }
        Ok(())
    }
}

fn state_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(TRAIN_STATE_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The bytes of `training_state.safetensors` for `st`.
pub fn train_state_bytes(st: &TrainState) -> Result<Vec<u8>> {
    let h = Header {
        version: FORMAT_VERSION,
        state: st.clone(),
        optimizer_kind: st.optimizer.kind.clone(),
        optimizer_hyper: st.optimizer.hyper.clone(),
        optimizer_steps: st.optimizer.steps.clone(),
    };
    let json = serde_json::to_string(&h).map_err(|e| Error::msg(format!("cannot serialize the training state: {e}")))?;
    let meta: HashMap<String, String> = [(META_KEY.to_string(), json)].into_iter().collect();
    to_safetensors_bytes(&st.optimizer.tensors, None, Some(meta))
}

/// Writes the training state to `path` (a file, or a directory to hold `training_state.safetensors`).
pub fn save_train_state(path: impl AsRef<Path>, st: &TrainState) -> Result<()> {
    atomic_write(&state_path(path.as_ref()), &train_state_bytes(st)?)
}

/// Reads a training state written by [`save_train_state`] (`path`: the file or its directory).
pub fn load_train_state(path: impl AsRef<Path>) -> Result<TrainState> {
    let p = state_path(path.as_ref());
    let f = StFile::open(&p)?;
    let meta = f.metadata();
    let json = meta.get(META_KEY).ok_or_else(|| Error::msg(format!("{}: not a kiln training-state file (no '{META_KEY}' metadata)", p.display())))?;
    let h: Header = serde_json::from_str(json).map_err(|e| Error::msg(format!("{}: bad training-state metadata: {e}", p.display())))?;
    if h.version != FORMAT_VERSION {
        return Err(Error::msg(format!("{}: training-state format {} is not supported (expected {FORMAT_VERSION})", p.display(), h.version)));
    }
    let mut st = h.state;
    st.optimizer = OptimState { kind: h.optimizer_kind, hyper: h.optimizer_hyper, steps: h.optimizer_steps, tensors: f.tensors()? };
    Ok(st)
}

/// One file of a checkpoint: its name and a maker of its bytes (called once, when the file is
/// written, so that only one file's bytes are held at a time).
pub type CheckpointFile<'a> = (&'static str, Box<dyn FnOnce() -> Result<Vec<u8>> + 'a>);

/// The files of a checkpoint, in writing order: `model.safetensors` (f32, HF names per `cfg`'s
/// model type), `config.json`, `tokenizer.json` and `tokenizer_config.json` when a tokenizer is
/// given, the training state when given.
pub fn checkpoint_files<'a>(cfg: &'a ModelConfig, store: &'a ParamStore, tok: Option<&'a Tokenizer>, state: Option<&'a TrainState>) -> Vec<CheckpointFile<'a>> {
    let mut files: Vec<CheckpointFile<'a>> = vec![
        (MODEL_FILE, Box::new(move || to_safetensors_bytes(&hf_tensors(store, &cfg.family().name_map())?, None, None))),
        (CONFIG_FILE, Box::new(move || Ok(cfg.to_json_file_string()?.into_bytes()))),
    ];
    if let Some(t) = tok {
        files.push((TOKENIZER_FILE, Box::new(move || crate::tokenize::tokenizer_json(t).map(String::into_bytes))));
        files.push((TOKENIZER_CONFIG_FILE, Box::new(move || crate::tokenize::tokenizer_config_json(cfg, t).map(String::into_bytes))));
    }
    if let Some(s) = state {
        files.push((TRAIN_STATE_FILE, Box::new(move || train_state_bytes(s))));
    }
    files
}

/// Writes a plain HF checkpoint directory (created if needed) with [`checkpoint_files`], each
/// file atomically on its own, the training state last. This is an export: a set that must be
/// one unit (a training run's checkpoints) is written by [`crate::run_dir::commit`].
pub fn save_checkpoint(dir: impl AsRef<Path>, cfg: &ModelConfig, store: &ParamStore, tok: Option<&Tokenizer>, state: Option<&TrainState>) -> Result<()> {
    let d = dir.as_ref();
    std::fs::create_dir_all(d).map_err(|e| Error::Io { path: d.display().to_string(), source: e })?;
    for (name, make) in checkpoint_files(cfg, store, tok, state) {
        atomic_write(&d.join(name), &make()?)?;
    }
    Ok(())
}
