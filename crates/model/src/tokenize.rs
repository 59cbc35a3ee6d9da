//! Tokenizers through the Hugging Face `tokenizers` crate: load a `tokenizer.json`, or train one on
//! the training data (byte-level BPE for GPT-2, WordPiece for BERT) and save it with the checkpoint.
//!
//! - GPT-2 style: BPE model, `ByteLevel` pre-tokenizer (`add_prefix_space = false`) followed by a
//!   piece-length cap ([`MAX_BPE_PIECE`]), byte-level decoder and post-processor, special token
//!   `<|endoftext|>`.
//! - BERT style: WordPiece model (`##` continuation), lower-casing `BertNormalizer`,
//!   `BertPreTokenizer` followed by a piece-length cap ([`MAX_WORDPIECE_PIECE`]),
//!   `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` template with type ids 0/1, WordPiece decoder,
//!   special tokens `[PAD] [UNK] [CLS] [SEP] [MASK]` (ids 0–4 when trained here).
//!
//! Training is linear in the text: the cap bounds every pre-tokenized piece ("word"), so a long
//! run without whitespace (a minified file, a base64 blob, a DNA sequence, CJK text) is counted as
//! many short words rather than one huge one, over which the `tokenizers` crate's BPE trainer (which
//! WordPiece training also uses) is quadratic: each merge rewrites the word's symbol vector once per
//! occurrence of the pair. The cap is part of the saved pre-tokenizer (a standard `Split` with a
//! regex, which Python `tokenizers` and tokenizers.js load too), so encoding applies it as well.
use crate::config::ModelConfig;
use crate::io::atomic_write;
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
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};
pub use tokenizers::Tokenizer;

/// GPT-2's end-of-text token.
pub const EOT: &str = "<|endoftext|>";
/// BERT's special tokens, in the order they get ids 0.. when trained here.
pub const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The longest piece the byte-level BPE tokenizers trained here pre-tokenize to, in bytes (the
/// `ByteLevel` pre-tokenizer turns each byte into one character; the cap then cuts longer pieces
/// into runs of this many, the last one shorter). GPT-2's regex already cuts ordinary text at
/// whitespace, letter/digit/punctuation changes and contractions, so its pieces are words of a few
/// bytes and never reach the cap; only long runs of one class do (say 256 letters in a row, or 85
/// CJK characters without punctuation). Those pieces are tokenized as before except that no token
/// spans a cut, and no learned token is longer than the cap. The bound keeps the trainer's merge
/// cost per occurrence at O(cap) instead of O(run length), which makes training linear in the text.
pub const MAX_BPE_PIECE: usize = 256;

/// The longest piece the WordPiece tokenizers trained here pre-tokenize to, in characters (after
/// `BertPreTokenizer`, which cuts at whitespace and punctuation). It equals the WordPiece model's
/// `max_input_chars_per_word` (100, as in BERT), beyond which a word would become a single `[UNK]`:
/// a longer run is cut into pieces the model can tokenize, the later pieces starting a new word
/// (no `##`). Ordinary words are far shorter and tokenize as in BERT. Training cost is bounded as
/// for BPE; encoding such a run costs WordPiece's greedy longest-match search, O(cap²) per piece,
/// so it stays linear in the run's length too.
pub const MAX_WORDPIECE_PIECE: usize = 100;

/// The tokenizer families kiln trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2 style byte-level BPE.
    Bpe,
    /// BERT style WordPiece.
    WordPiece,
}

impl TokenizerKind {
    /// The family a `model_type` trains: `gpt2` → BPE, `bert` → WordPiece.
    pub fn for_model_type(model_type: &str) -> Result<TokenizerKind> {
        match model_type {
            "gpt2" => Ok(TokenizerKind::Bpe),
            "bert" => Ok(TokenizerKind::WordPiece),
            other => Err(Error::msg(format!("no tokenizer family for model_type '{other}'"))),
        }
    }
}

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

/// `tokenizer_config.json` for a directory holding `tok` as `tokenizer.json` beside `cfg`: it names
/// `PreTrainedTokenizerFast`, so transformers' `AutoTokenizer` reads `tokenizer.json` as it is
/// instead of building the model type's own class (a RoBERTa class would add `<s>`, `</s>`, ... as new
/// ids to a WordPiece vocabulary trained here, ids past the model's embedding). It also names the
/// special tokens by role (BERT's `[CLS]`-style or RoBERTa's `<s>`-style, GPT-2's `<|endoftext|>`),
/// the longest input, and the inputs the model takes (`token_type_ids` only where the family has
/// segment embeddings).
pub fn tokenizer_config_json(cfg: &ModelConfig, tok: &Tokenizer) -> Result<String> {
    let mut c = serde_json::Map::new();
    c.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    c.insert("model_max_length".into(), cfg.max_positions().into());
    c.insert("clean_up_tokenization_spaces".into(), false.into());
    let roles: [(&str, &[&str]); 7] = [
        ("cls_token", &["[CLS]", "<s>"]),
        ("sep_token", &["[SEP]", "</s>"]),
        ("pad_token", &["[PAD]", "<pad>"]),
        ("unk_token", &["[UNK]", "<unk>"]),
        ("mask_token", &["[MASK]", "<mask>"]),
        ("bos_token", &[EOT, "<s>"]),
        ("eos_token", &[EOT, "</s>"]),
    ];
    for (role, names) in roles {
        if let Some(t) = names.iter().find(|t| tok.token_to_id(t).is_some()) {
            c.insert(role.into(), (*t).into());
        }
    }
    let segments = matches!(cfg.model_type(), "bert" | "albert" | "electra");
    let inputs: &[&str] = if segments { &["input_ids", "token_type_ids", "attention_mask"] } else { &["input_ids", "attention_mask"] };
    c.insert("model_input_names".into(), inputs.into());
    serde_json::to_string_pretty(&c).map_err(|e| Error::msg(format!("tokenizer_config.json: {e}")))
}

/// Writes `tok` as pretty `tokenizer.json` at `path`, atomically.
pub fn save_tokenizer(tok: &Tokenizer, path: impl AsRef<Path>) -> Result<()> {
    atomic_write(path.as_ref(), tokenizer_json(tok)?.as_bytes())
}

fn check_vocab_size(vocab_size: usize) -> Result<()> {
    if vocab_size == 0 {
        return Err(Error::msg("tokenizer training: vocab_size must be > 0"));
    }
    Ok(())
}

/// Reads the training files (regular files, UTF-8; see [`crate::io::read_input`]).
fn read_inputs(files: &[PathBuf]) -> Result<Vec<String>> {
    files.iter().map(|f| crate::io::read_input_text(f)).collect()
}

/// `pre` followed by the cap that cuts pieces longer than `max_chars` characters into runs of
/// `max_chars` (the last one shorter); shorter pieces pass unchanged. The cap is a `Split` on the
/// regex `.{max_chars}` keeping matches and the text between them as pieces (`Isolated`): a piece
/// shorter than the pattern's minimum length is passed over without a search. The regex sees no
/// newline (`ByteLevel` maps `\n` to `Ċ`, `BertPreTokenizer` drops whitespace), so `.` is every
/// character it meets, in the regex crate (kiln, Rust `tokenizers`) and Oniguruma (Python) alike.
fn capped(pre: impl Into<PreTokenizerWrapper>, max_chars: usize) -> Result<Sequence> {
    let cap = Split::new(SplitPattern::Regex(format!(".{{{max_chars}}}")), SplitDelimiterBehavior::Isolated, false).map_err(|e| tk_err("piece-length cap", e))?;
    Ok(Sequence::new(vec![pre.into(), cap.into()]))
}

/// A GPT-2 style byte-level BPE tokenizer, untrained.
fn bpe_skeleton() -> Result<Tokenizer> {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(capped(ByteLevel::default().add_prefix_space(false), MAX_BPE_PIECE)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.with_post_processor(Some(ByteLevel::default().add_prefix_space(false).trim_offsets(false)));
    Ok(tok)
}

fn bpe_trainer(vocab_size: usize, show_progress: bool) -> TrainerWrapper {
    BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(show_progress)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOT, true)])
        .build()
        .into()
}

fn wordpiece_skeleton() -> Result<Tokenizer> {
    let mut tok = Tokenizer::new(WordPiece::default());
    tok.with_normalizer(Some(BertNormalizer::default())).map_err(|e| tk_err("normalizer", e))?;
    tok.with_pre_tokenizer(Some(capped(BertPreTokenizer, MAX_WORDPIECE_PIECE)?));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    Ok(tok)
}

fn wordpiece_trainer(vocab_size: usize, show_progress: bool) -> TrainerWrapper {
    WordPieceTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(show_progress)
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

/// Cuts `text` before each `\n` that a non-whitespace character follows. Both pre-tokenizers
/// already end a piece there and start a new one (GPT-2's regex makes such a `\n` a piece of its
/// own, whatever whitespace precedes it; BERT's drops it), so the parts pre-tokenize to exactly the
/// pieces of the whole text and training on them counts the same words, while the trainer can
/// pre-tokenize them in parallel and its progress bar counts them.
pub fn training_parts(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' && i > start && chars.peek().is_some_and(|&(_, n)| !n.is_whitespace()) {
            parts.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        parts.push(&text[start..]);
    }
    parts
}

/// Trains a tokenizer of `kind` with at most `vocab_size` tokens on in-memory texts (each one a
/// document or a whole corpus: [`training_parts`] cuts them for the trainer). With `show_progress`
/// the `tokenizers` crate draws its progress bars on stderr (pre-processing, counting, merges); the
/// CLI asks for them only when stderr is a terminal and the output is not `--json`.
pub fn train_from_texts(kind: TokenizerKind, texts: &[&str], vocab_size: usize, show_progress: bool) -> Result<Tokenizer> {
    check_vocab_size(vocab_size)?;
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(Error::msg("tokenizer training: no text"));
    }
    let parts: Vec<&str> = texts.iter().flat_map(|t| training_parts(t)).collect();
    match kind {
        TokenizerKind::Bpe => {
            let mut tok = bpe_skeleton()?;
            let mut trainer = bpe_trainer(vocab_size, show_progress);
            tok.train(&mut trainer, parts.into_iter()).map_err(|e| tk_err("BPE training failed", e))?;
            Ok(tok)
        }
        TokenizerKind::WordPiece => {
            let mut tok = wordpiece_skeleton()?;
            let mut trainer = wordpiece_trainer(vocab_size, show_progress);
            tok.train(&mut trainer, parts.into_iter()).map_err(|e| tk_err("WordPiece training failed", e))?;
            bert_post_process(&mut tok)?;
            Ok(tok)
        }
    }
}

/// Trains a tokenizer of `kind` on text files (regular UTF-8 files; errors name the file).
pub fn train_from_files(kind: TokenizerKind, files: &[PathBuf], vocab_size: usize, show_progress: bool) -> Result<Tokenizer> {
    check_vocab_size(vocab_size)?;
    let texts = read_inputs(files)?;
    if texts.iter().all(|t| t.trim().is_empty()) {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Error::msg(format!("tokenizer training: no text in {names:?}")));
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    train_from_texts(kind, &texts, vocab_size, show_progress)
}

/// Trains a byte-level BPE tokenizer (GPT-2 style) of at most `vocab_size` tokens on text files.
pub fn train_bpe(files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    train_from_files(TokenizerKind::Bpe, files, vocab_size, false)
}

/// Trains a WordPiece tokenizer (BERT style) of at most `vocab_size` tokens on text files.
pub fn train_wordpiece(files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    train_from_files(TokenizerKind::WordPiece, files, vocab_size, false)
}

/// [`train_bpe`] on in-memory texts (each one a line or a document).
pub fn train_bpe_from_texts(texts: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    train_from_texts(TokenizerKind::Bpe, texts, vocab_size, false)
}

/// [`train_wordpiece`] on in-memory texts.
pub fn train_wordpiece_from_texts(texts: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    train_from_texts(TokenizerKind::WordPiece, texts, vocab_size, false)
}

/// Trains the tokenizer family of `model_type` (`gpt2` → BPE, `bert` → WordPiece).
pub fn train_for_model(model_type: &str, files: &[PathBuf], vocab_size: usize) -> Result<Tokenizer> {
    train_from_files(TokenizerKind::for_model_type(model_type)?, files, vocab_size, false)
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

/// The padding id for `tok` and `cfg`: the tokenizer's padding, else its `[PAD]` / `<pad>` token,
/// else an encoder config's `pad_token_id`, else 0 (padded positions are masked out anyway).
pub fn pad_id(tok: &Tokenizer, cfg: &ModelConfig) -> u32 {
    tok.get_padding()
        .map(|p| p.pad_id)
        .or_else(|| ["[PAD]", "<pad>"].iter().find_map(|t| tok.token_to_id(t)))
        .or(match cfg {
            ModelConfig::Encoder(c) => c.pad_token_id,
            ModelConfig::Decoder(_) => None,
        })
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_config_names_the_fast_class_the_roles_and_the_inputs() {
        let texts = ["the quick brown fox jumps over the lazy dog", "a second line of text to learn from"];
        let wp = train_from_texts(TokenizerKind::WordPiece, &texts, 120, false).unwrap();
        let parse = |cfg: &ModelConfig, t: &Tokenizer| -> serde_json::Value { serde_json::from_str(&tokenizer_config_json(cfg, t).unwrap()).unwrap() };
        // a RoBERTa model over a WordPiece vocabulary trained here: the roles are [CLS]-style, no segments
        let roberta = ModelConfig::preset("roberta-tiny").unwrap();
        let c = parse(&roberta, &wp);
        assert_eq!(c["tokenizer_class"], "PreTrainedTokenizerFast");
        assert_eq!((c["cls_token"].as_str(), c["sep_token"].as_str(), c["mask_token"].as_str(), c["pad_token"].as_str()), (Some("[CLS]"), Some("[SEP]"), Some("[MASK]"), Some("[PAD]")));
        assert!(c.get("bos_token").is_none(), "{c}");
        assert_eq!(c["model_input_names"], serde_json::json!(["input_ids", "attention_mask"]));
        assert_eq!(c["model_max_length"].as_u64(), Some(roberta.max_positions() as u64));
        // BERT takes token_type_ids
        let c = parse(&ModelConfig::preset("bert-tiny").unwrap(), &wp);
        assert_eq!(c["model_input_names"], serde_json::json!(["input_ids", "token_type_ids", "attention_mask"]));
        // GPT-2's byte-level BPE: <|endoftext|> is bos and eos, nothing else
        let bpe = train_from_texts(TokenizerKind::Bpe, &texts, 300, false).unwrap();
        let c = parse(&ModelConfig::preset("gpt2-tiny").unwrap(), &bpe);
        assert_eq!((c["bos_token"].as_str(), c["eos_token"].as_str()), (Some(EOT), Some(EOT)));
        assert!(c.get("cls_token").is_none() && c.get("mask_token").is_none(), "{c}");
    }
}
