//! Pre-training batches of the BERT-family objectives besides BERT's own ([`crate::data::BertBatcher`]):
//!
//! - [`PackedMlmBatcher`]: RoBERTa's FULL-SENTENCES inputs (whole sentences packed in corpus order
//!   up to the sequence length, across document boundaries, a `[SEP]` between documents, no NSP),
//!   masked afresh on every visit; also ELECTRA's input (every chosen token `[MASK]`).
//! - [`SopBatcher`]: ALBERT's sentence-order prediction pairs `[CLS] A [SEP] B [SEP]` (two
//!   consecutive segments of one document, swapped half of the time; label 1 = swapped), masked.
//!
//! Every random draw of an example (its mask, its swap) comes from a generator seeded by
//! (seed, epoch, cursor), i.e. by the visit: the position `(epoch, cursor)` alone resumes a run
//! exactly, and a sequence seen in two epochs gets two independent masks.
use crate::data::{pad_rows, Batch, DataPosition, MlmMasker, IGNORE_INDEX};
use crate::rng::{epoch_permutation, DataRng};
use crate::tokenize::SpecialIds;
use kiln_tensor::{Error, Result, Tensor};

/// The seed of the draws for the example served at `(epoch, cursor)` of a pipeline seeded `seed`.
pub fn visit_seed(seed: u64, epoch: u64, cursor: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ cursor.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An epoch order over `n` examples and the position in it.
#[derive(Debug, Clone)]
struct Order {
    seed: u64,
    epoch: u64,
    cursor: u64,
    perm: Vec<usize>,
}

impl Order {
    fn new(seed: u64, n: usize) -> Order {
        Order { seed, epoch: 0, cursor: 0, perm: epoch_permutation(seed, 0, n) }
    }
    /// The next example's index and the seed of its draws.
    fn next(&mut self) -> (usize, u64) {
        if self.cursor as usize >= self.perm.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.perm = epoch_permutation(self.seed, self.epoch, self.perm.len());
        }
        let k = self.perm[self.cursor as usize];
        let s = visit_seed(self.seed, self.epoch, self.cursor);
        self.cursor += 1;
        (k, s)
    }
    fn position(&self) -> DataPosition {
        DataPosition { epoch: self.epoch, cursor: self.cursor, ..Default::default() }
    }
    fn set_position(&mut self, p: &DataPosition, what: &str) -> Result<()> {
        let n = self.perm.len();
        if p.cursor as usize > n {
            return Err(Error::msg(format!("{what} data: cursor {} beyond {n} examples (different data?)", p.cursor)));
        }
        self.epoch = p.epoch;
        self.cursor = p.cursor;
        self.perm = epoch_permutation(self.seed, p.epoch, n);
        Ok(())
    }
}

fn non_empty(docs: Vec<Vec<Vec<u32>>>) -> Vec<Vec<Vec<u32>>> {
    docs.into_iter().map(|d| d.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>()).filter(|d| !d.is_empty()).collect()
}

/// Masked rows → a padded batch (`pair`: the per-row pair labels).
fn to_batch(rows: Vec<(Vec<u32>, Vec<i64>, Vec<i64>)>, pair: Option<Vec<i64>>, pad: u32, seq: usize) -> Result<Batch> {
    let b = rows.len();
    let (mut seqs, mut types, mut labels) = (Vec::with_capacity(b), Vec::with_capacity(b), Vec::with_capacity(b));
    for (ids, tt, mut lab) in rows {
        lab.resize(seq, IGNORE_INDEX);
        seqs.push(ids);
        types.push(tt);
        labels.push(lab);
    }
    let (ids, mask, tt) = pad_rows(&seqs, &types, pad, seq)?;
    let flat = |r: Vec<Vec<i64>>| Tensor::from_vec(r.into_iter().flatten().collect::<Vec<i64>>(), &[b, seq]);
    let next_sentence_label = pair.map(|p| Tensor::from_vec(p, &[b])).transpose()?;
    Ok(Batch { input_ids: flat(ids)?, labels: flat(labels)?, attention_mask: flat(mask)?, token_type_ids: flat(tt)?, next_sentence_label })
}

/// RoBERTa's FULL-SENTENCES MLM batches (see the module docs).
#[derive(Debug, Clone)]
pub struct PackedMlmBatcher {
    /// The packed examples, without their `[CLS]` / final `[SEP]`.
    examples: Vec<Vec<u32>>,
    masker: MlmMasker,
    order: Order,
    cls: u32,
    sep: u32,
    pad: u32,
    batch: usize,
    seq: usize,
}

impl PackedMlmBatcher {
    /// `docs`: documents of tokenized sentences ([`crate::data::encode_documents`]). Sentences are
    /// taken whole in corpus order while `[CLS] … [SEP]` fits in `seq`; a document boundary inside
    /// an example is a `[SEP]`; a sentence longer than the example is cut.
    pub fn new(docs: Vec<Vec<Vec<u32>>>, special: &SpecialIds, vocab_size: usize, batch: usize, seq: usize, seed: u64) -> Result<PackedMlmBatcher> {
        let (cls, sep, mask, pad) = special.bert()?;
        if batch == 0 || seq < 4 {
            return Err(Error::msg(format!("packed MLM data: batch ({batch}) must be > 0 and seq ({seq}) >= 4")));
        }
        let budget = seq - 2;
        let mut examples = Vec::new();
        let mut cur: Vec<u32> = Vec::new();
        for doc in non_empty(docs) {
            if !cur.is_empty() {
                if cur.len() + 1 >= budget {
                    examples.push(std::mem::take(&mut cur));
                } else {
                    cur.push(sep);
                }
            }
            for s in doc {
                let s = &s[..s.len().min(budget)];
                if !cur.is_empty() && cur.len() + s.len() > budget {
                    examples.push(std::mem::take(&mut cur));
                }
                cur.extend_from_slice(s);
            }
        }
        if !cur.is_empty() {
            examples.push(cur);
        }
        if examples.is_empty() {
            return Err(Error::msg("packed MLM data: no tokens in the data"));
        }
        let masker = MlmMasker::new(mask, vocab_size as u32, &special.all(), seed);
        let order = Order::new(seed, examples.len());
        Ok(PackedMlmBatcher { examples, masker, order, cls, sep, pad, batch, seq })
    }
    /// The fraction of tokens chosen for prediction (RoBERTa's 0.15), in (0, 1).
    pub fn set_mask_prob(&mut self, p: f64) -> Result<()> {
        if !(p > 0.0 && p < 1.0) {
            return Err(Error::msg(format!("packed MLM data: mask probability {p} must lie in (0, 1)")));
        }
        self.masker.mask_prob = p;
        Ok(())
    }
    /// Of the chosen tokens, the fractions replaced by `[MASK]` and by a random token (BERT's
    /// 0.8 / 0.1; ELECTRA's 1 / 0); the rest stay unchanged.
    pub fn set_replacement(&mut self, mask: f64, random: f64) -> Result<()> {
        if !(mask >= 0.0 && random >= 0.0 && mask + random <= 1.0) {
            return Err(Error::msg(format!("packed MLM data: replacement fractions {mask} / {random} must be >= 0 and sum to at most 1")));
        }
        (self.masker.replace_mask, self.masker.replace_random) = (mask, random);
        Ok(())
    }
    /// Examples per epoch.
    pub fn examples_per_epoch(&self) -> usize {
        self.examples.len()
    }
    /// The unmasked example `k`: `[CLS] … [SEP]`.
    pub fn example(&self, k: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.examples[k].len() + 2);
        ids.push(self.cls);
        ids.extend(&self.examples[k]);
        ids.push(self.sep);
        ids
    }
    /// The next example's index, its masked ids and labels (the mask drawn for this visit).
    pub fn next_masked(&mut self) -> (usize, Vec<u32>, Vec<i64>) {
        let (k, s) = self.order.next();
        let mut ids = self.example(k);
        self.masker.reseed(s);
        let labels = self.masker.mask(&mut ids);
        (k, ids, labels)
    }
    pub fn position(&self) -> DataPosition {
        self.order.position()
    }
    pub fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        self.order.set_position(p, "packed MLM")
    }
    /// The next batch (fixed length `seq`, no pair labels).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let rows = (0..self.batch)
            .map(|_| {
                let (_, ids, lab) = self.next_masked();
                let n = ids.len();
                (ids, vec![0; n], lab)
            })
            .collect();
        to_batch(rows, None, self.pad, self.seq)
    }
}

/// ALBERT's sentence-order batches (see the module docs): the pair label (in
/// [`Batch::next_sentence_label`]) is 0 for A then B as in the text, 1 when swapped.
#[derive(Debug, Clone)]
pub struct SopBatcher {
    docs: Vec<Vec<Vec<u32>>>,
    /// (document, first sentence) of each example.
    starts: Vec<(usize, usize)>,
    masker: MlmMasker,
    order: Order,
    cls: u32,
    sep: u32,
    pad: u32,
    batch: usize,
    seq: usize,
}

impl SopBatcher {
    /// Needs a document with at least two sentences; `seq` ≥ 5.
    pub fn new(docs: Vec<Vec<Vec<u32>>>, special: &SpecialIds, vocab_size: usize, batch: usize, seq: usize, seed: u64) -> Result<SopBatcher> {
        let (cls, sep, mask, pad) = special.bert()?;
        if batch == 0 || seq < 5 {
            return Err(Error::msg(format!("SOP data: batch ({batch}) must be > 0 and seq ({seq}) >= 5")));
        }
        let docs = non_empty(docs);
        let starts: Vec<(usize, usize)> = docs.iter().enumerate().flat_map(|(d, s)| (0..s.len().saturating_sub(1)).map(move |i| (d, i))).collect();
        if starts.is_empty() {
            return Err(Error::msg("SOP data: sentence-order pairs need a document (blank-line separated) with two or more sentences (lines)"));
        }
        let masker = MlmMasker::new(mask, vocab_size as u32, &special.all(), seed);
        let order = Order::new(seed, starts.len());
        Ok(SopBatcher { docs, starts, masker, order, cls, sep, pad, batch, seq })
    }
    /// See [`PackedMlmBatcher::set_mask_prob`].
    pub fn set_mask_prob(&mut self, p: f64) -> Result<()> {
        if !(p > 0.0 && p < 1.0) {
            return Err(Error::msg(format!("SOP data: mask probability {p} must lie in (0, 1)")));
        }
        self.masker.mask_prob = p;
        Ok(())
    }
    pub fn examples_per_epoch(&self) -> usize {
        self.starts.len()
    }
    /// The segments of example `k` in text order: A from its first sentence while A takes at most
    /// half the room, B the sentences after A while they fit (each at least one sentence, cut to fit).
    pub fn segments(&self, k: usize) -> (Vec<u32>, Vec<u32>) {
        let (d, i) = self.starts[k];
        let doc = &self.docs[d];
        let budget = self.seq - 3;
        let mut a = doc[i].clone();
        let mut j = i + 1;
        while j < doc.len() - 1 && a.len() + doc[j].len() <= budget / 2 {
            a.extend(&doc[j]);
            j += 1;
        }
        let mut b = doc[j].clone();
        j += 1;
        while j < doc.len() && a.len() + b.len() + doc[j].len() <= budget {
            b.extend(&doc[j]);
            j += 1;
        }
        while a.len() + b.len() > budget {
            if a.len() > b.len() { a.pop() } else { b.pop() };
        }
        (a, b)
    }
    /// The next example: ids, segment ids, MLM labels and the order label.
    pub fn next_example(&mut self) -> (Vec<u32>, Vec<i64>, Vec<i64>, i64) {
        let (k, s) = self.order.next();
        let (mut a, mut b) = self.segments(k);
        let mut rng = DataRng::new(s, 0x534f50);
        let swapped = rng.bernoulli(0.5);
        if swapped {
            std::mem::swap(&mut a, &mut b);
        }
        let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
        ids.push(self.cls);
        ids.extend(&a);
        ids.push(self.sep);
        let na = ids.len();
        ids.extend(&b);
        ids.push(self.sep);
        let tt = (0..ids.len()).map(|p| (p >= na) as i64).collect();
        self.masker.reseed(rng.next_u64());
        let lab = self.masker.mask(&mut ids);
        (ids, tt, lab, swapped as i64)
    }
    pub fn position(&self) -> DataPosition {
        self.order.position()
    }
    pub fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        self.order.set_position(p, "SOP")
    }
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (mut rows, mut order) = (Vec::with_capacity(self.batch), Vec::with_capacity(self.batch));
        for _ in 0..self.batch {
            let (ids, tt, lab, swapped) = self.next_example();
            rows.push((ids, tt, lab));
            order.push(swapped);
        }
        to_batch(rows, Some(order), self.pad, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialIds {
        SpecialIds { pad: Some(0), unk: Some(1), cls: Some(2), sep: Some(3), mask: Some(4), eot: None }
    }

    fn docs() -> Vec<Vec<Vec<u32>>> {
        (0..6).map(|d| (0..5).map(|s| (0..4 + (s + d) % 3).map(|t| 10 + (d * 50 + s * 7 + t) as u32).collect()).collect()).collect()
    }

    /// RoBERTa's dynamic masking: one example, visited once per epoch, gets a different mask
    /// each time, and replaying a position gives the same mask again.
    #[test]
    fn the_same_sequence_gets_different_masks_on_two_visits() {
        let mut b = PackedMlmBatcher::new(docs(), &special(), 400, 2, 24, 7).unwrap();
        let n = b.examples_per_epoch();
        assert!(n >= 3, "{n}");
        let mut masks: Vec<Vec<(Vec<u32>, Vec<i64>)>> = vec![Vec::new(); n];
        for _ in 0..3 * n {
            let (k, ids, lab) = b.next_masked();
            assert_eq!(ids.len(), b.example(k).len());
            masks[k].push((ids, lab));
        }
        for (k, m) in masks.iter().enumerate() {
            assert_eq!(m.len(), 3, "example {k} is visited once per epoch");
            assert!(m[0].1.iter().any(|&l| l != IGNORE_INDEX), "example {k} has masked tokens");
            assert!(m[0] != m[1] && m[1] != m[2] && m[0] != m[2], "example {k} got the same mask twice: {:?}", m);
        }
        // resuming at a saved position replays the same masks
        let mut c = PackedMlmBatcher::new(docs(), &special(), 400, 2, 24, 7).unwrap();
        c.next_batch().unwrap();
        let p = c.position();
        let want = c.next_batch().unwrap();
        let mut d = PackedMlmBatcher::new(docs(), &special(), 400, 2, 24, 7).unwrap();
        d.set_position(&p).unwrap();
        let got = d.next_batch().unwrap();
        assert_eq!(got.input_ids.to_vec::<i64>().unwrap(), want.input_ids.to_vec::<i64>().unwrap());
        assert_eq!(got.labels.to_vec::<i64>().unwrap(), want.labels.to_vec::<i64>().unwrap());
    }

    /// Whole sentences in corpus order, across documents with a [SEP] between them, each example
    /// within the length.
    #[test]
    fn full_sentences_are_packed_across_documents() {
        let d = docs();
        let b = PackedMlmBatcher::new(d.clone(), &special(), 400, 2, 24, 7).unwrap();
        let mut flat = Vec::new();
        for k in 0..b.examples_per_epoch() {
            let e = b.example(k);
            assert!(e.len() <= 24 && e[0] == 2 && *e.last().unwrap() == 3);
            flat.extend_from_slice(&e[1..e.len() - 1]);
        }
        let mut want = Vec::new();
        for (i, doc) in d.iter().enumerate() {
            if i > 0 {
                want.push(3);
            }
            want.extend(doc.iter().flatten());
        }
        // the packed stream is the corpus, documents separated by [SEP] (dropped where a
        // boundary falls on an example's end)
        let no_sep = |v: &[u32]| v.iter().copied().filter(|&t| t != 3).collect::<Vec<_>>();
        assert_eq!(no_sep(&flat), no_sep(&want));
        assert!(flat.contains(&3), "no example crosses a document boundary");
    }

    /// SOP: consecutive segments, swapped about half of the time, the label saying which.
    #[test]
    fn sop_pairs_are_consecutive_and_swapped_half_of_the_time() {
        let mut b = SopBatcher::new(docs(), &special(), 400, 8, 20, 3).unwrap();
        b.set_mask_prob(0.01).unwrap();
        let mut swapped = 0;
        let n = 400;
        for _ in 0..n {
            let (ids, tt, lab, label) = b.next_example();
            // the text before masking
            let ids: Vec<u32> = ids.iter().zip(&lab).map(|(&i, &l)| if l == IGNORE_INDEX { i } else { l as u32 }).collect();
            let cut = tt.iter().position(|&t| t == 1).unwrap();
            let (first, second) = (&ids[1..cut - 1], &ids[cut..ids.len() - 1]);
            // documents' tokens rise along the text, so the order shows in the ids (masked ones aside)
            let (lo, hi) = if label == 1 { (second, first) } else { (first, second) };
            let max_lo = lo.iter().filter(|&&t| t >= 10).max().unwrap();
            let min_hi = hi.iter().filter(|&&t| t >= 10).min().unwrap();
            assert!(max_lo < min_hi, "segments out of order for label {label}: {ids:?}");
            swapped += label;
        }
        assert!((150..250).contains(&swapped), "{swapped} of {n} swapped");
    }
}
