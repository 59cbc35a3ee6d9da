//! Tokenizers through the Hugging Face `tokenizers` crate: load a `tokenizer.json`, or train one on
//! the training data (byte-level BPE for GPT-2, WordPiece for BERT) and save it with the checkpoint.
//!
//! - GPT-2 style: BPE model, `ByteLevel` pre-tokenizer (`add_prefix_space = false`), byte-level
//!   decoder and post-processor, special token `<|endoftext|>`.
//! - BERT style: WordPiece model (`##` continuation), lower-casing `BertNormalizer`,
//!   `BertPreTokenizer`, `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` template with type ids 0/1,
//!   WordPiece decoder, special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0–4 when trained here).
use crate::config::ModelConfig;
use crate::io::{atomic_write, io_err};
use kiln_tensor::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;
pub use tokenizers::Tokenizer;

/// GPT-2's end-of-text token.
pub const EOT: &str = "<|endoftext|>";
/// BERT's special tokens, in the order they get ids 0.. when trained here.
pub const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("tokenizer: {what}: {e}"))
}

/// Loads a `tokenizer.json` (HF format); errors name the file.
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let p = path.as_ref();
    let bytes = crate::io::read_input(p)?;
    Tokenizer::from_bytes(&bytes).map_err(|e| Error::msg(format!("{}: not a valid tokenizer.json: {e}", p.display())))
}

/// The tokenizer to use: `explicit` (`--tokenizer FILE`) if given, else `model_dir/tokenizer.json`
/// if it exists, else `None` (the caller trains one).
pub fn find_tokenizer(explicit: Option<&Path>, model_dir: Option<&Path>) -> Result<Option<Tokenizer>> {
    if let Some(p) = explicit {
        return load_tokenizer(p).map(Some);
    }
    if let Some(d) = model_dir {
        let p = d.join("tokenizer.json");
        if p.is_file() {
            return load_tokenizer(&p).map(Some);
        }
    }
    Ok(None)
}

/// `tok` as pretty `tokenizer.json` text.
pub fn tokenizer_json(tok: &Tokenizer) -> Result<String> {
    tok.to_string(true).map_err(|e| tk_err("cannot serialize", e))
}

/// Writes `tok` as pretty `tokenizer.json` at `path`, atomically.
pub fn save_tokenizer(tok: &Tokenizer, path: impl AsRef<Path>) -> Result<()> {
    atomic_write(path.as_ref(), tokenizer_json(tok)?.as_bytes())
}

fn check_inputs(files: &[PathBuf], vocab_size: usize) -> Result<Vec<String>> {
    if vocab_size == 0 {
        return Err(Error::msg("tokenizer training: vocab_size must be > 0"));
    }
    let mut out = Vec::new();
    let mut any = false;
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| io_err(f, e))?;
        any |= meta.len() > 0;
        out.push(f.display().to_string());
    }
    if !any {
        return Err(Error::msg(format!("tokenizer training: no text in {:?}", out)));
    }
    Ok(out)
}

/// A GPT-2 style byte-level BPE tokenizer, untrained.
fn bpe_skeleton() -> Tokenizer {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.with_post_processor(Some(ByteLevel::default().add_prefix_space(false).trim_offsets(false)));
    tok
}

fn bpe_trainer(vocab_size: usize) -> TrainerWrapper {
    BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOT, true)])
        .build()
        .into()
}

fn wordpiece_skeleton() -> Result<Tokenizer> {
    let mut tok = Tokenizer::new(WordPiece::default());
    tok.with_normalizer(Some(BertNormalizer::default())).map_err(|e| tk_err("normalizer", e))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    Ok(tok)
}

fn wordpiece_trainer(vocab_size: usize) -> TrainerWrapper {
    WordPieceTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(BERT_SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect())
        .build()
        .into()
}

fn bert_post_process(tok: &mut Tokenizer) -> Result<()> {
    let id = |t: &str| tok.token_to_id(t).ok_or_else(|| Error::msg(format!("tokenizer: trained vocabulary lacks {t}")));
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let tp = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| tk_err("template", e))?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(|e| tk_err("template", e))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| tk_err("template", e))?;
    tok.with_post_processor(Some(tp));
    Ok(())
}

/// Trains a byte-level BPE tokenizer (GPT-2 style) of at most `vocab_size` tokens on text files.
pub fn train_bpe(files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    let files = check_inputs(files, vocab_size)?;
    let mut tok = bpe_skeleton();
    let mut trainer = bpe_trainer(vocab_size);
    tok.train_from_files(&mut trainer, files).map_err(|e| tk_err("BPE training failed", e))?;
    Ok(tok)
}

/// Trains a WordPiece tokenizer (BERT style) of at most `vocab_size` tokens on text files.
pub fn train_wordpiece(files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    let files = check_inputs(files, vocab_size)?;
    let mut tok = wordpiece_skeleton()?;
    let mut trainer = wordpiece_trainer(vocab_size);
    tok.train_from_files(&mut trainer, files).map_err(|e| tk_err("WordPiece training failed", e))?;
    bert_post_process(&mut tok)?;
    Ok(tok)
}

/// [`train_bpe`] on in-memory texts (each one a line or a document).
pub fn train_bpe_from_texts(texts: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(Error::msg("tokenizer training: no text"));
    }
    let mut tok = bpe_skeleton();
    let mut trainer = bpe_trainer(vocab_size);
    tok.train(&mut trainer, texts.iter()).map_err(|e| tk_err("BPE training failed", e))?;
    Ok(tok)
}

/// [`train_wordpiece`] on in-memory texts.
pub fn train_wordpiece_from_texts(texts: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(Error::msg("tokenizer training: no text"));
    }
    let mut tok = wordpiece_skeleton()?;
    let mut trainer = wordpiece_trainer(vocab_size);
    tok.train(&mut trainer, texts.iter()).map_err(|e| tk_err("WordPiece training failed", e))?;
    bert_post_process(&mut tok)?;
    Ok(tok)
}

/// Trains the tokenizer family of `model_type` (`gpt2` → BPE, `bert` → WordPiece).
pub fn train_for_model(model_type: &str, files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    match model_type {
        "gpt2" => train_bpe(files, vocab_size),
        "bert" => train_wordpiece(files, vocab_size),
        other => Err(Error::msg(format!("no tokenizer family for model_type '{other}'"))),
    }
}

/// The special-token ids a pipeline needs (None where the vocabulary lacks the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialIds {
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    pub cls: Option<u32>,
    pub sep: Option<u32>,
    pub mask: Option<u32>,
    /// `<|endoftext|>` (GPT-2 bos/eos).
    pub eot: Option<u32>,
}

impl SpecialIds {
    /// Looks the standard special tokens up in `tok`.
    pub fn of(tok: &Tokenizer) -> SpecialIds {
        let id = |t: &str| tok.token_to_id(t);
        SpecialIds { pad: id("[PAD]"), unk: id("[UNK]"), cls: id("[CLS]"), sep: id("[SEP]"), mask: id("[MASK]"), eot: id(EOT) }
    }
    /// All ids that are present, sorted (tokens never masked or sampled).
    pub fn all(&self) -> Vec<u32> {
        let mut v: Vec<u32> = [self.pad, self.unk, self.cls, self.sep, self.mask, self.eot].into_iter().flatten().collect();
        v.sort();
        v.dedup();
        v
    }
    /// The `[CLS]`, `[SEP]`, `[MASK]`, `[PAD]` ids, or an error naming the missing one.
    pub fn bert(&self) -> Result<(u32, u32, u32, u32)> {
        let need = |v: Option<u32>, n: &str| v.ok_or_else(|| Error::msg(format!("tokenizer has no {n} token (needed for BERT pre-training)")));
        Ok((need(self.cls, "[CLS]")?, need(self.sep, "[SEP]")?, need(self.mask, "[MASK]")?, need(self.pad, "[PAD]")?))
    }
}

/// Makes `cfg` agree with `tok`: vocabulary size (with added tokens), BERT `pad_token_id`, GPT-2
/// `bos_token_id`/`eos_token_id` (`<|endoftext|>`).
pub fn sync_config(cfg: &mut ModelConfig, tok: &Tokenizer) {
    let ids = SpecialIds::of(tok);
    cfg.set_vocab_size(tok.get_vocab_size(true));
    match cfg {
        ModelConfig::Encoder(c) => {
            if ids.pad.is_some() {
                c.pad_token_id = ids.pad;
            }
        }
        ModelConfig::Decoder(c) => {
            if ids.eot.is_some() {
                c.bos_token_id = ids.eot;
                c.eos_token_id = ids.eot;
            }
        }
    }
}

/// Encodes many texts in parallel without special tokens, returning the id lists.
pub fn encode_many(tok: &Tokenizer, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
    let encs = tok.encode_batch(texts.to_vec(), false).map_err(|e| tk_err("encode", e))?;
    Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

/// Encodes one text without special tokens, as the i64 ids models take
/// (e.g. the prompt of [`crate::generate::CausalLm::generate`]).
pub fn encode_ids(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let enc = tok.encode(text, false).map_err(|e| tk_err("encode", e))?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}

/// Decodes i64 ids (e.g. the output of generation) to text, skipping special tokens. Ids outside
/// `0..2³²` are an error.
pub fn decode_ids(tok: &Tokenizer, ids: &[i64]) -> Result<String> {
    let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).map_err(|_| Error::msg(format!("tokenizer: decode: id {i} is out of range")))).collect::<Result<_>>()?;
    tok.decode(&ids, true).map_err(|e| tk_err("decode", e))
}
