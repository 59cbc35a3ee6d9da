//! kiln-model: the model-side infrastructure of kiln — Hugging Face configs and checkpoints, named
//! parameters, optimizers and schedules, tokenizers and data pipelines, and the training-state file.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | `config.json` of every family member (HF field names and defaults), presets, validation |
//! | [`family`] | the family table: `model_type` and HF architecture names → stack, head, name quirks |
//! | [`params`] | [`params::ParamStore`] / [`params::Param`]: named parameters, freeze, no-decay |
//! | [`checkpoint`] | `model.safetensors` with HF names and their quirks, [`checkpoint::LoadReport`] |
//! | [`st_io`] | raw safetensors I/O (f32 / f16 / bf16 / f64 / ints), atomic writes |
//! | [`optim`] | [`optim::AdamW`] (PyTorch semantics), [`optim::Sgd`], [`optim::clip_grad_norm`] |
//! | [`sched`] | warm-up + constant / linear / cosine learning-rate schedules |
//! | [`tokenize`] | load or train tokenizers (byte-level BPE, WordPiece) |
//! | [`data`] | causal-LM windows, MLM masking, NSP pairs, padding, resumable positions |
//! | [`rng`] | the serialisable ChaCha8 generator used by the data pipeline |
//! | [`nn`] | layers: Linear, Embedding, LayerNorm, Dropout, SelfAttention, FeedForward, KvCache |
//! | [`encoder`], [`decoder`] | the two stacks (BERT, RoBERTa, ALBERT, DistilBERT, ELECTRA; GPT-1, GPT-2) with HF parameter names |
//! | [`heads`] | MLM, classification, token, QA, discriminator, LM and multiple-choice heads; the losses |
//! | [`generate`] | [`generate::CausalLm`]: cached decoding and sampling |
//! | [`inputs`] | the HF forward arguments by name, from a JSON batch; which ones an architecture takes |
//! | [`embed`] | [`embed::SentenceEncoder`]: sentence-transformers pipelines (pooling, normalisation, length-sorted batches) |
//! | [`limits`] | sizes checked before allocation: a config's or a command's, against the model and the machine's memory |
//! | [`model`] | [`model::Model`]: any architecture built from a config, HF inputs and outputs by name |
//! | [`finetune`] | labelled data (JSONL / CSV) for sequence, pair and token classification; labels, metrics |
//! | [`trainer`] | the training loop: accumulation, clipping, schedules, eval, checkpoints, resume |
//! | [`train_state`] | `training_state.safetensors` and the files of a checkpoint |
//! | [`run_dir`] | a run's checkpoints, each written and made current as one unit (manifest, `current` link, keep N) |
//!
//! ```
//! use kiln_model::{checkpoint, config::ModelConfig, params::{Init, ParamStore}};
//! use kiln_tensor::{DType, Device};
//! let cfg = ModelConfig::preset("bert-tiny")?;
//! let store = ParamStore::new(42, DType::F32, Device::Cpu);
//! store.get_or_init("bert.embeddings.word_embeddings.weight", &[cfg.vocab_size(), cfg.hidden_size()], Init::Normal { std: 0.02 })?;
//! let dir = std::env::temp_dir().join(format!("kiln-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let map = kiln_model::family::Family::Bert.name_map();
//! checkpoint::save_params(dir.join("model.safetensors"), &store, &map, None)?;
//! let report = checkpoint::load_params(dir.join("model.safetensors"), &store, &map, &checkpoint::LoadOptions::strict())?;
//! assert!(report.is_clean());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
mod bert_batcher;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod decoder;
pub mod embed;
pub mod encoder;
pub mod family;
pub mod finetune;
pub mod generate;
pub mod heads;
pub mod inputs;
pub mod io;
pub mod limits;
pub mod model;
pub mod nn;
pub mod optim;
pub mod objective;
pub mod params;
pub mod pretrain_data;
pub mod rng;
pub mod run_dir;
pub mod sched;
pub mod st_io;
pub mod tokenize;
pub mod train_state;
pub mod trainer;

pub use checkpoint::{load_params, save_params, HfNameMap, LoadOptions, LoadReport};
pub use config::{DecoderConfig, EncoderConfig, ModelConfig};
pub use family::{Arch, Family, Task};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
pub use params::{Init, Param, ParamStore};
pub use sched::{Decay, LrSchedule};
pub use train_state::TrainState;
