//! Training data: text → documents → token ids → batches.
//!
//! - [`CausalLmBatcher`]: a token stream cut into `[T+1]` windows, served in a seeded per-epoch
//!   order; `input_ids = w[..T]`, `labels = w[1..]` (already shifted, unlike HF's GPT-2 labels).
//! - [`MlmMasker`]: BERT's dynamic masking (15% of non-special tokens; of those 80% `[MASK]`,
//!   10% random, 10% unchanged), drawn afresh each time a sequence is seen.
//! - [`NspBuilder`]: `[CLS] A [SEP] B [SEP]` pairs with segment ids 0/1, B the true continuation
//!   half of the time and a span of another document otherwise.
//! - [`BertBatcher`]: NSP pairs (or single segments) + masking + padding.
//!
//! Every batcher's position ([`DataPosition`]: epoch, cursor and RNG states) can be saved and
//! restored, after which it yields exactly the batches an uninterrupted run would have.
use crate::rng::{epoch_permutation, DataRng, RngState};
use crate::tokenize::{encode_many, Tokenizer};
use kiln_tensor::{Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The label value ignored by the losses.
pub const IGNORE_INDEX: i64 = -100;

/// One batch; every tensor is i64 on the CPU, `[B, T]` unless noted.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    /// Per-position targets, [`IGNORE_INDEX`] where no loss is taken. Causal LM: the next token.
    pub labels: Tensor,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// Segment ids (BERT), 0 everywhere for GPT-2.
    pub token_type_ids: Tensor,
    /// `[B]`: 0 when B follows A, 1 when B is random (BERT NSP only).
    pub next_sentence_label: Option<Tensor>,
}

impl Batch {
    /// The batch on `device` (batchers build it on the host; the trainer uploads it to the
    /// parameters' device).
    pub fn to_device(&self, device: kiln_tensor::Device) -> Result<Batch> {
        Ok(Batch {
            input_ids: self.input_ids.to_device(device)?,
            labels: self.labels.to_device(device)?,
            attention_mask: self.attention_mask.to_device(device)?,
            token_type_ids: self.token_type_ids.to_device(device)?,
            next_sentence_label: self.next_sentence_label.as_ref().map(|t| t.to_device(device)).transpose()?,
        })
    }
}

/// Where a batcher is: the epoch, the cursor inside the epoch's order and named RNG states.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub cursor: u64,
    #[serde(default)]
    pub rngs: BTreeMap<String, RngState>,
}

/// Reads a UTF-8 text file; empty or whitespace-only files are an error naming the path.
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let p = path.as_ref();
    let s = crate::io::read_input_text(p)?;
    if s.trim().is_empty() {
        return Err(Error::msg(format!("{}: the data file has no text", p.display())));
    }
    Ok(s)
}

/// Splits text into documents (separated by blank lines) of sentences (non-empty lines, trimmed).
pub fn split_documents(text: &str) -> Vec<Vec<&str>> {
    let mut docs = Vec::new();
    let mut cur = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() {
            if !cur.is_empty() {
                docs.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(l);
        }
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// The token stream for causal LM: each document (blank-line separated, internal newlines kept) is
/// encoded and followed by `eot` when given.
pub fn encode_stream(tok: &Tokenizer, text: &str, eot: Option<u32>) -> Result<Vec<u32>> {
    let docs: Vec<&str> = text.split("\n\n").map(|d| d.trim_matches('\n')).filter(|d| !d.trim().is_empty()).collect();
    if docs.is_empty() {
        return Err(Error::msg("causal LM data: no text"));
    }
    let mut out = Vec::new();
    for ids in encode_many(tok, &docs)? {
        out.extend(ids);
        out.extend(eot);
    }
    Ok(out)
}

/// Encodes `text` into documents of sentences of ids (for [`NspBuilder`]).
pub fn encode_documents(tok: &Tokenizer, text: &str) -> Result<Vec<Vec<Vec<u32>>>> {
    let docs = split_documents(text);
    let flat: Vec<&str> = docs.iter().flatten().copied().collect();
    let mut enc = encode_many(tok, &flat)?.into_iter();
    Ok(docs.iter().map(|d| d.iter().map(|_| enc.next().unwrap_or_default()).filter(|s| !s.is_empty()).collect()).filter(|d: &Vec<Vec<u32>>| !d.is_empty()).collect())
}

fn ids_tensor(rows: &[Vec<i64>], t: usize) -> Result<Tensor> {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, &[rows.len(), t])
}

/// Causal-LM batches of non-overlapping windows from a token stream.
#[derive(Debug, Clone)]
pub struct CausalLmBatcher {
    tokens: Vec<u32>,
    batch: usize,
    seq: usize,
    seed: u64,
    pos: DataPosition,
    perm: Vec<usize>,
}

impl CausalLmBatcher {
    /// Windows `tokens[i·T .. i·T + T + 1]` for `i < (len − 1) / T`, `batch` per batch, shuffled
    /// per epoch from `seed`. Too few tokens for one window is an error.
    pub fn new(tokens: Vec<u32>, batch: usize, seq: usize, seed: u64) -> Result<CausalLmBatcher> {
        if batch == 0 || seq == 0 {
            return Err(Error::msg(format!("causal LM data: batch ({batch}) and seq ({seq}) must be > 0")));
        }
        if tokens.len() < seq + 1 {
            return Err(Error::msg(format!(
                "causal LM data: {} tokens, need at least seq + 1 = {} for one window (use a shorter --seq or more data)",
                tokens.len(),
                seq + 1
            )));
        }
        let n = (tokens.len() - 1) / seq;
        Ok(CausalLmBatcher { tokens, batch, seq, seed, pos: DataPosition::default(), perm: epoch_permutation(seed, 0, n) })
    }
    /// Windows per epoch.
    pub fn num_windows(&self) -> usize {
        self.perm.len()
    }
    /// The current position (save it to resume).
    pub fn position(&self) -> DataPosition {
        self.pos.clone()
    }
    /// Jumps to a saved position.
    pub fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        if p.cursor as usize > self.num_windows() {
            return Err(Error::msg(format!("causal LM data: cursor {} beyond {} windows (different data?)", p.cursor, self.num_windows())));
        }
        self.perm = epoch_permutation(self.seed, p.epoch, self.num_windows());
        self.pos = p.clone();
        Ok(())
    }
    /// The next `batch` windows as `(inputs, labels)` rows of length T.
    pub fn next_rows(&mut self) -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for _ in 0..self.batch {
            if self.pos.cursor as usize >= self.perm.len() {
                self.pos.epoch += 1;
                self.pos.cursor = 0;
                self.perm = epoch_permutation(self.seed, self.pos.epoch, self.perm.len());
            }
            let w = self.perm[self.pos.cursor as usize];
            self.pos.cursor += 1;
            let s = &self.tokens[w * self.seq..w * self.seq + self.seq + 1];
            xs.push(s[..self.seq].iter().map(|&t| t as i64).collect());
            ys.push(s[1..].iter().map(|&t| t as i64).collect());
        }
        (xs, ys)
    }
    /// The next batch: `input_ids`, shifted `labels`, all-ones mask, zero type ids.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (xs, ys) = self.next_rows();
        let (b, t) = (xs.len(), self.seq);
        Ok(Batch {
            input_ids: ids_tensor(&xs, t)?,
            labels: ids_tensor(&ys, t)?,
            attention_mask: Tensor::from_vec(vec![1i64; b * t], &[b, t])?,
            token_type_ids: Tensor::from_vec(vec![0i64; b * t], &[b, t])?,
            next_sentence_label: None,
        })
    }
}

/// BERT's dynamic masking. Each call draws new positions from the masker's own RNG, so a sequence
/// seen twice is masked differently.
#[derive(Debug, Clone)]
pub struct MlmMasker {
    /// Fraction of non-special tokens chosen (0.15).
    pub mask_prob: f64,
    /// Of the chosen: fraction replaced by `[MASK]` (0.8) and by a random token (0.1).
    pub replace_mask: f64,
    pub replace_random: f64,
    pub mask_id: u32,
    pub vocab_size: u32,
    specials: Vec<u32>,
    rng: DataRng,
}

impl MlmMasker {
    /// A masker with BERT's 15% / 80-10-10. `specials` (incl. padding) are never chosen and never
    /// drawn as random replacements.
    pub fn new(mask_id: u32, vocab_size: u32, specials: &[u32], seed: u64) -> MlmMasker {
        let mut s = specials.to_vec();
        s.push(mask_id);
        s.sort();
        s.dedup();
        MlmMasker { mask_prob: 0.15, replace_mask: 0.8, replace_random: 0.1, mask_id, vocab_size, specials: s, rng: DataRng::new(seed, 0x4d4c4d) }
    }
    fn is_special(&self, id: u32) -> bool {
        self.specials.binary_search(&id).is_ok()
    }
    /// Masks `ids` in place and returns the labels (original id where chosen, -100 elsewhere).
    /// The number chosen is `0.15·n` rounded stochastically (at least 1 when n > 0), n = number
    /// of non-special tokens; positions are drawn uniformly without replacement.
    pub fn mask(&mut self, ids: &mut [u32]) -> Vec<i64> {
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        let cand: Vec<usize> = (0..ids.len()).filter(|&i| !self.is_special(ids[i])).collect();
        if cand.is_empty() {
            return labels;
        }
        let exact = self.mask_prob * cand.len() as f64;
        let mut k = exact.floor() as usize;
        if self.rng.uniform() < exact - exact.floor() {
            k += 1;
        }
        let k = k.clamp(1, cand.len());
        for j in self.rng.sample_indices(cand.len(), k) {
            let i = cand[j];
            labels[i] = ids[i] as i64;
            let r = self.rng.uniform();
            if r < self.replace_mask {
                ids[i] = self.mask_id;
            } else if r < self.replace_mask + self.replace_random {
                ids[i] = self.random_token(ids[i]);
            }
        }
        labels
    }
    fn random_token(&mut self, orig: u32) -> u32 {
        if (self.vocab_size as usize) <= self.specials.len() {
            return orig;
        }
        loop {
            let t = self.rng.below(self.vocab_size as u64) as u32;
            if !self.is_special(t) {
                return t;
            }
        }
    }
    /// Draws the next masks from a generator seeded by `seed` (masks drawn per visit, see
    /// [`crate::pretrain_data`]).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = DataRng::new(seed, 0x4d4c4d);
    }
    pub fn rng_state(&self) -> RngState {
        self.rng.state()
    }
    pub fn set_rng_state(&mut self, s: &RngState) -> Result<()> {
        self.rng = DataRng::from_state(s)?;
        Ok(())
    }
}

/// One NSP example before padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairExample {
    /// `[CLS] A [SEP] B [SEP]`.
    pub ids: Vec<u32>,
    /// 0 on `[CLS] A [SEP]`, 1 on `B [SEP]`.
    pub type_ids: Vec<i64>,
    /// True when B was taken from another document.
    pub is_random_next: bool,
}

/// Builds `[CLS] A [SEP] B [SEP]` pairs from documents of tokenized sentences.
#[derive(Debug, Clone)]
pub struct NspBuilder {
    docs: Vec<Vec<Vec<u32>>>,
    starts: Vec<(usize, usize)>,
    cls: u32,
    sep: u32,
    max_len: usize,
}

impl NspBuilder {
    /// `max_len` ≥ 5 is the full pair length with the three special tokens. A corpus with a single
    /// document is cut into pseudo-documents of 8 sentences so random B's exist. Needs at least
    /// two sentences in one document.
    pub fn new(docs: Vec<Vec<Vec<u32>>>, cls: u32, sep: u32, max_len: usize) -> Result<NspBuilder> {
        if max_len < 5 {
            return Err(Error::msg(format!("NSP: sequence length {max_len} too short (need >= 5)")));
        }
        let mut docs: Vec<Vec<Vec<u32>>> = docs.into_iter().map(|d| d.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>()).filter(|d| !d.is_empty()).collect();
        if docs.len() == 1 {
            let only = docs.pop().unwrap_or_default();
            docs = only.chunks(8).map(|c| c.to_vec()).collect();
        }
        let starts: Vec<(usize, usize)> = docs.iter().enumerate().flat_map(|(d, s)| (0..s.len().saturating_sub(1)).map(move |i| (d, i))).collect();
        if starts.is_empty() || docs.len() < 2 {
            return Err(Error::msg("NSP data: need at least two documents (blank-line separated) and one document with two or more sentences (lines)"));
        }
        Ok(NspBuilder { docs, starts, cls, sep, max_len })
    }
    /// Number of start points (examples per epoch).
    pub fn len(&self) -> usize {
        self.starts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
    fn fill(&self, d: usize, from: usize, budget: usize, out: &mut Vec<u32>) -> usize {
        let doc = &self.docs[d];
        let mut j = from;
        while j < doc.len() && (out.is_empty() || out.len() + doc[j].len() <= budget) {
            out.extend(&doc[j]);
            j += 1;
        }
        j
    }
    /// The example starting at start point `k`; `rng` decides next/random (50/50) and where the
    /// random B comes from.
    pub fn example(&self, k: usize, rng: &mut DataRng) -> PairExample {
        let (d, i) = self.starts[k];
        let budget = self.max_len - 3;
        let doc = &self.docs[d];
        let mut a = Vec::new();
        let mut a_end = i + 1;
        a.extend(&doc[i]);
        while a_end < doc.len() - 1 && a.len() + doc[a_end].len() <= budget / 2 {
            a.extend(&doc[a_end]);
            a_end += 1;
        }
        let is_random_next = rng.bernoulli(0.5);
        let mut b = Vec::new();
        if is_random_next {
            let mut d2 = rng.below(self.docs.len() as u64 - 1) as usize;
            if d2 >= d {
                d2 += 1;
            }
            let s = rng.below(self.docs[d2].len() as u64) as usize;
            self.fill(d2, s, budget.saturating_sub(a.len()).max(1), &mut b);
        } else {
            self.fill(d, a_end, budget.saturating_sub(a.len()).max(1), &mut b);
        }
        while a.len() + b.len() > budget {
            if a.len() > b.len() { a.pop() } else { b.pop() };
        }
        let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
        ids.push(self.cls);
        ids.extend(&a);
        ids.push(self.sep);
        let na = ids.len();
        ids.extend(&b);
        ids.push(self.sep);
        let type_ids = (0..ids.len()).map(|p| if p < na { 0 } else { 1 }).collect();
        PairExample { ids, type_ids, is_random_next }
    }
}

/// Pads `seqs` to `len` with `pad`; returns `(ids, attention_mask, type_ids)` rows. Longer
/// sequences are an error.
pub fn pad_rows(seqs: &[Vec<u32>], types: &[Vec<i64>], pad: u32, len: usize) -> Result<(Vec<Vec<i64>>, Vec<Vec<i64>>, Vec<Vec<i64>>)> {
    let (mut ids, mut mask, mut tt) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in seqs.iter().enumerate() {
        if s.len() > len {
            return Err(Error::msg(format!("pad: sequence {k} has {} tokens, more than {len}", s.len())));
        }
        let mut r: Vec<i64> = s.iter().map(|&x| x as i64).collect();
        let mut m = vec![1i64; s.len()];
        let mut t = types.get(k).cloned().unwrap_or_else(|| vec![0; s.len()]);
        t.resize(s.len(), 0);
        r.resize(len, pad as i64);
        m.resize(len, 0);
        t.resize(len, 0);
        ids.push(r);
        mask.push(m);
        tt.push(t);
    }
    Ok((ids, mask, tt))
}

pub use crate::bert_batcher::BertBatcher;
