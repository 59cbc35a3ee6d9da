//! Sentence embeddings as sentence-transformers computes them for a directory in its layout.
//!
//! A sentence-transformers directory lists its pipeline in `modules.json`: a `Transformer` (the HF
//! encoder, usually at the directory's root, with `sentence_bert_config.json` beside it holding
//! `max_seq_length`), a `Pooling` module (its `config.json` picks the mode, see [`pooling`]) and
//! optionally `Normalize`. [`Pipeline::read`] reads that; a bare encoder directory (no
//! `modules.json`) gets what `SentenceTransformer(dir)` gives it: mean pooling, no normalisation.
//!
//! [`SentenceEncoder`] runs it: texts are tokenized with `tokenizer.json` (special tokens added by
//! its post-processor, truncated to `max_seq_length` tokens including them; the file's own
//! truncation and padding settings are replaced, as transformers' tokenizer call replaces them),
//! sorted by length, run in batches of similar length (each padded to its longest, with an
//! attention mask), pooled, normalised, and returned in the original order. Batching does not
//! change a text's embedding beyond rounding: the mask keeps padding out of attention and pooling.
//!
//! ```no_run
//! use kiln_model::embed::SentenceEncoder;
//! let enc = SentenceEncoder::from_dir("all-MiniLM-L6-v2", kiln_tensor::Device::Cpu)?;
//! let e = enc.embed(&["A first sentence.", "Another one."])?; // [2, 384], f32, unit rows
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
pub mod pooling;

use crate::config::ModelConfig;
use crate::model::{LoadedModel, Stack};
use crate::nn::ForwardCtx;
use kiln_tensor::{Device, Error, Result, Tensor};
pub use pooling::{l2_normalize_rows, Pooling, PoolingMode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::normalizers::{Lowercase, NormalizerWrapper, Sequence};
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{Encoding, Tokenizer};

/// sentence-transformers' default batch size.
pub const DEFAULT_BATCH: usize = 32;

/// What a directory's `modules.json` and module configs ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The HF model directory (the `Transformer` module's path).
    pub transformer_dir: PathBuf,
    pub pooling: Pooling,
    /// The width the pooling config declares (`word_embedding_dimension`), if it does.
    pub pooling_dim: Option<usize>,
    pub normalize: bool,
    /// `max_seq_length` of `sentence_bert_config.json`; `None`: the tokenizer's and model's limit.
    pub max_seq_length: Option<usize>,
    /// `do_lower_case` of `sentence_bert_config.json`.
    pub do_lower_case: bool,
    /// Whether the directory had a `modules.json` (false: a bare encoder).
    pub sentence_transformers: bool,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::io::read_input_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: invalid JSON: {e}", path.display())))
}

/// The encoder config of `dir`, or an error saying why `dir` cannot embed (a decoder, no config).
fn encoder_config(dir: &Path) -> Result<ModelConfig> {
    if !dir.is_dir() {
        return Err(Error::msg(format!("model directory {} does not exist", dir.display())));
    }
    let cfg = ModelConfig::load(dir.join(crate::train_state::CONFIG_FILE))?;
    let family = cfg.family();
    if family.is_decoder() {
        return Err(Error::msg(format!(
            "{} holds a {} model, a decoder (causal LM): sentence embeddings need an encoder (bert, roberta, albert, distilbert, electra)",
            dir.display(),
            family.model_type()
        )));
    }
    Ok(cfg)
}

impl Pipeline {
    /// Reads `dir`'s pipeline (see the module docs). Modules other than Transformer, Pooling and
    /// Normalize (`Dense`, ...) are errors naming them, as are bad module configs.
    pub fn read(dir: &Path) -> Result<Pipeline> {
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            let p = Pipeline { transformer_dir: dir.to_path_buf(), pooling: Pooling::mean(), pooling_dim: None, normalize: false, max_seq_length: None, do_lower_case: false, sentence_transformers: false };
            return Ok(p);
        }
        let at = modules_path.display().to_string();
        let bad = |why: String| Error::msg(format!("{at}: {why}"));
        let modules = read_json(&modules_path)?;
        let list = modules.as_array().ok_or_else(|| bad("must be a list of modules".into()))?;
        let mut kinds = Vec::new();
        for m in list {
            let kind = m.get("type").and_then(Value::as_str).ok_or_else(|| bad(format!("module {m} has no \"type\"")))?;
            let path = m.get("path").and_then(Value::as_str).unwrap_or("");
            // "sentence_transformers.models.Pooling", "sentence_transformers.sentence_transformer.modules.Pooling", ...
            kinds.push((kind.rsplit('.').next().unwrap_or(kind).to_string(), dir.join(path)));
        }
        let names: Vec<&str> = kinds.iter().map(|(k, _)| k.as_str()).collect();
        let (transformer_dir, pooling, normalize) = match names.as_slice() {
            ["Transformer", "Pooling"] => (kinds[0].1.clone(), &kinds[1].1, false),
            ["Transformer", "Pooling", "Normalize"] => (kinds[0].1.clone(), &kinds[1].1, true),
            _ => return Err(bad(format!("kiln embeds Transformer → Pooling [→ Normalize] pipelines; this one is {}", names.join(" → ")))),
        };
        let pooling_cfg = pooling.join("config.json");
        let (pooling, pooling_dim) = Pooling::from_config(&read_json(&pooling_cfg)?, &pooling_cfg.display().to_string())?;
        let st_cfg = transformer_dir.join("sentence_bert_config.json");
        let (mut max_seq_length, mut do_lower_case) = (None, false);
        if st_cfg.is_file() {
            let v = read_json(&st_cfg)?;
            let bad = |k: &str| Error::msg(format!("{}: {k} must be {}", st_cfg.display(), if k == "do_lower_case" { "true or false" } else { "a positive integer or null" }));
            max_seq_length = match v.get("max_seq_length") {
                None | Some(Value::Null) => None,
                Some(x) => Some(x.as_u64().filter(|&n| n > 0).ok_or_else(|| bad("max_seq_length"))? as usize),
            };
            do_lower_case = match v.get("do_lower_case") {
                None | Some(Value::Null) => false,
                Some(x) => x.as_bool().ok_or_else(|| bad("do_lower_case"))?,
            };
        }
        Ok(Pipeline { transformer_dir, pooling, pooling_dim, normalize, max_seq_length, do_lower_case, sentence_transformers: true })
    }
}

/// An encoder directory ready to embed texts (see the module docs).
pub struct SentenceEncoder {
    pub model: LoadedModel,
    pub pipeline: Pipeline,
    /// `tokenizer.json`, set to truncate at [`SentenceEncoder::max_seq_length`] and not to pad.
    pub tokenizer: Tokenizer,
    /// Texts are cut to this many tokens, special tokens included.
    pub max_seq_length: usize,
    pad_id: u32,
    device: Device,
}

/// `model_max_length` of `tokenizer_config.json`, if the file gives one.
fn tokenizer_config_limit(dir: &Path) -> Option<usize> {
    let v = read_json(&dir.join("tokenizer_config.json")).ok()?;
    v.get("model_max_length")?.as_f64().filter(|x| (1.0..1e15).contains(x)).map(|x| x as usize)
}

impl SentenceEncoder {
    /// Loads a sentence-transformers directory or a bare encoder directory (weights in f32 on
    /// `device`). Errors: a missing directory or `tokenizer.json`, a decoder (GPT-2), a pipeline
    /// kiln does not run, a bad pooling config.
    pub fn from_dir(dir: impl AsRef<Path>, device: Device) -> Result<SentenceEncoder> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::msg(format!("model directory {} does not exist", dir.display())));
        }
        // the pipeline and the config first: their errors come before the weights are read
        let pipeline = Pipeline::read(dir)?;
        let cfg = encoder_config(&pipeline.transformer_dir)?;
        if let Some(d) = pipeline.pooling_dim.filter(|&d| d != cfg.hidden_size()) {
            return Err(Error::msg(format!("{}: the pooling config's word_embedding_dimension is {d}, but the model's hidden size is {}", dir.display(), cfg.hidden_size())));
        }
        let model = LoadedModel::from_dir(&pipeline.transformer_dir, 0, device)?;
        let tok = model.tokenizer.clone().ok_or_else(|| Error::msg(format!("no tokenizer.json in {}: kiln embed needs the model's tokenizer", pipeline.transformer_dir.display())))?;
        // sentence-transformers: max_seq_length, else the tokenizer's model_max_length capped at the
        // model's positions (kiln also caps a larger max_seq_length, which could not run)
        let positions = cfg.max_positions();
        let max_seq_length = pipeline.max_seq_length.or_else(|| tokenizer_config_limit(&pipeline.transformer_dir)).unwrap_or(positions).min(positions);
        let pad_id = crate::tokenize::pad_id(&tok, &cfg);
        let tokenizer = Self::configure(tok, max_seq_length, pipeline.do_lower_case)?;
        Ok(SentenceEncoder { model, pipeline, tokenizer, max_seq_length, pad_id, device })
    }

    /// The tokenizer as sentence-transformers calls it: truncation at `max_len` (longest first, on
    /// the right), no padding, and with `do_lower_case` a `Lowercase` normalizer in front unless
    /// the normalizer is or holds one.
    fn configure(mut tok: Tokenizer, max_len: usize, lower: bool) -> Result<Tokenizer> {
        let tk = |e: tokenizers::Error| Error::msg(format!("tokenizer: {e}"));
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams { direction: TruncationDirection::Right, max_length: max_len, strategy: TruncationStrategy::LongestFirst, stride: 0 })).map_err(tk)?;
        if lower {
            let has = match tok.get_normalizer() {
                Some(NormalizerWrapper::Lowercase(_)) => true,
                Some(NormalizerWrapper::Sequence(s)) => s.as_ref().iter().any(|n| matches!(n, NormalizerWrapper::Lowercase(_))),
                _ => false,
            };
            if !has {
                let mut seq = vec![NormalizerWrapper::Lowercase(Lowercase)];
                match tok.get_normalizer().cloned() {
                    Some(NormalizerWrapper::Sequence(s)) => seq.extend(s),
                    Some(n) => seq.push(n),
                    None => {}
                }
                tok.with_normalizer(Some(NormalizerWrapper::Sequence(Sequence::new(seq)))).map_err(tk)?;
            }
        }
        Ok(tok)
    }

    /// The width of an embedding.
    pub fn dim(&self) -> usize {
        self.pipeline.pooling.output_dim(self.model.cfg.hidden_size())
    }

    /// Tokenizes `texts` (special tokens added, truncated to [`SentenceEncoder::max_seq_length`]).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.tokenizer.encode_batch_fast(texts.to_vec(), true).map_err(|e| Error::msg(format!("tokenizer: encode: {e}")))
    }

    /// The padded model inputs of `encodings` (one row each, padded at the end to the longest):
    /// `input_ids`, `attention_mask` and, where the model takes them, `token_type_ids`, on the CPU.
    pub fn batch_inputs(&self, encodings: &[&Encoding]) -> Result<crate::model::Inputs> {
        let (b, t) = (encodings.len(), encodings.iter().map(|e| e.len()).max().unwrap_or(0));
        let (mut ids, mut mask, mut types) = (vec![self.pad_id as i64; b * t], vec![0i64; b * t], vec![0i64; b * t]);
        for (r, e) in encodings.iter().enumerate() {
            for (i, ((&id, &ty), &m)) in e.get_ids().iter().zip(e.get_type_ids()).zip(e.get_attention_mask()).enumerate() {
                (ids[r * t + i], types[r * t + i], mask[r * t + i]) = (id as i64, ty as i64, m as i64);
            }
        }
        let takes_types = self.model.model.arch.inputs().contains(&"token_type_ids");
        Ok(crate::model::Inputs {
            input_ids: Some(Tensor::from_vec(ids, &[b, t])?),
            attention_mask: Some(Tensor::from_vec(mask, &[b, t])?),
            token_type_ids: if takes_types { Some(Tensor::from_vec(types, &[b, t])?) } else { None },
            ..Default::default()
        })
    }

    /// Embeds one batch of encodings in the given order: `[len, dim]` row-major.
    pub fn embed_encodings(&self, encodings: &[&Encoding]) -> Result<Vec<f32>> {
        let Stack::Encoder(enc) = &self.model.model.stack else { unreachable!("checked in from_dir") };
        let inputs = self.batch_inputs(encodings)?.to_device(self.device)?;
        let mask = inputs.attention_mask.as_ref().expect("set by batch_inputs");
        let _g = kiln_tensor::no_grad_guard();
        let h = enc.forward(inputs.input_ids.as_ref().expect("set"), Some(mask), inputs.token_type_ids.as_ref(), &ForwardCtx::eval())?.last_hidden_state;
        let mut out = self.pipeline.pooling.forward(&h, mask)?.to_vec::<f32>()?;
        if self.pipeline.normalize {
            l2_normalize_rows(&mut out, self.dim());
        }
        Ok(out)
    }

    /// Embeds `texts`, [`DEFAULT_BATCH`] at a time: `[N, dim]` f32 on the CPU, row `i` for text `i`.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor> {
        self.embed_batched(texts, DEFAULT_BATCH, &mut |_, _| {})
    }

    /// [`SentenceEncoder::embed`] with `batch` texts per forward pass; `progress(done, total)` is
    /// called as batches finish. Texts are sorted by token count (longest first, as
    /// sentence-transformers sorts by length), batched, and the rows put back in input order. On
    /// the CPU as many batches run at once as rayon has threads.
    pub fn embed_batched(&self, texts: &[&str], batch: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Tensor> {
        if texts.is_empty() {
            return Err(Error::msg("embed: no texts"));
        }
        if batch == 0 {
            return Err(Error::msg("embed: the batch size must be at least 1"));
        }
        let encodings = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len())); // stable: ties keep input order
        let d = self.dim();
        let mut out = vec![0f32; texts.len() * d];
        let mut done = 0;
        let run = |chunk: &[usize]| -> Result<Vec<f32>> {
            let rows: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            self.embed_encodings(&rows)
        };
        // On the CPU, one batch per thread side by side: the ops of a batch of short texts are too
        // small to split well across threads (a fork-join per op), so whole batches run in parallel
        // and each op's own parallelism fills in where a batch runs alone (+16% on 2 threads on
        // all-MiniLM-L6-v2, docs/RESULTS.md). The bits are the same either way.
        let side_by_side = if self.device == Device::Cpu { rayon::current_num_threads().max(1) } else { 1 };
        let batches: Vec<&[usize]> = order.chunks(batch).collect();
        for group in batches.chunks(side_by_side) {
            use rayon::prelude::*;
            let results = group.par_iter().map(|c| run(c)).collect::<Result<Vec<_>>>()?;
            for (chunk, e) in group.iter().zip(results) {
                for (k, &i) in chunk.iter().enumerate() {
                    out[i * d..(i + 1) * d].copy_from_slice(&e[k * d..(k + 1) * d]);
                }
                done += chunk.len();
                progress(done, texts.len());
            }
        }
        Tensor::from_vec(out, &[texts.len(), d])
    }
}
