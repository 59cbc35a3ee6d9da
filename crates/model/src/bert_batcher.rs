//! [`BertBatcher`]: BERT pre-training batches (NSP pairs or single segments, dynamic MLM masking,
//! padding to a fixed length), resumable from a [`DataPosition`].
use crate::data::{pad_rows, Batch, DataPosition, MlmMasker, NspBuilder, IGNORE_INDEX};
use crate::rng::{epoch_permutation, DataRng};
use crate::tokenize::SpecialIds;
use kiln_tensor::{Error, Result, Tensor};

#[derive(Debug, Clone)]
enum Source {
    Nsp(NspBuilder),
    /// MLM only: `[CLS] sentences… [SEP]` starting at every sentence.
    Single { docs: Vec<Vec<Vec<u32>>>, starts: Vec<(usize, usize)> },
}

/// BERT pre-training batches: `[B, T]` ids padded with `[PAD]`, attention mask, segment ids, MLM
/// labels, and NSP labels when `nsp` is on.
#[derive(Debug, Clone)]
pub struct BertBatcher {
    src: Source,
    masker: MlmMasker,
    rng: DataRng,
    ids: (u32, u32, u32, u32),
    batch: usize,
    seq: usize,
    seed: u64,
    epoch: u64,
    cursor: u64,
    perm: Vec<usize>,
}

impl BertBatcher {
    /// `docs`: documents of tokenized sentences (see [`crate::data::encode_documents`]).
    /// `special` must provide `[CLS] [SEP] [MASK] [PAD]`; `vocab_size` bounds random replacements.
    pub fn new(docs: Vec<Vec<Vec<u32>>>, special: &SpecialIds, vocab_size: usize, batch: usize, seq: usize, seed: u64, nsp: bool) -> Result<BertBatcher> {
        let (cls, sep, mask, pad) = special.bert()?;
        if batch == 0 || seq < 5 {
            return Err(Error::msg(format!("BERT data: batch ({batch}) must be > 0 and seq ({seq}) >= 5")));
        }
        let src = if nsp {
            Source::Nsp(NspBuilder::new(docs, cls, sep, seq)?)
        } else {
            let docs: Vec<Vec<Vec<u32>>> = docs.into_iter().map(|d| d.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>()).filter(|d| !d.is_empty()).collect();
            let starts: Vec<(usize, usize)> = docs.iter().enumerate().flat_map(|(d, s)| (0..s.len()).map(move |i| (d, i))).collect();
            if starts.is_empty() {
                return Err(Error::msg("BERT data: no tokens in the data"));
            }
            Source::Single { docs, starts }
        };
        let n = match &src {
            Source::Nsp(b) => b.len(),
            Source::Single { starts, .. } => starts.len(),
        };
        let masker = MlmMasker::new(mask, vocab_size as u32, &special.all(), seed);
        Ok(BertBatcher { src, masker, rng: DataRng::new(seed, 0x4e5350), ids: (cls, sep, mask, pad), batch, seq, seed, epoch: 0, cursor: 0, perm: epoch_permutation(seed, 0, n) })
    }
    /// Sets the fraction of non-special tokens chosen for masking (BERT's 0.15; higher rates such
    /// as 0.3–0.4 give more labelled positions per batch and train small models faster). Must lie
    /// in (0, 1).
    pub fn set_mask_prob(&mut self, p: f64) -> Result<()> {
        if !(p > 0.0 && p < 1.0) {
            return Err(Error::msg(format!("BERT data: mask probability {p} must lie in (0, 1)")));
        }
        self.masker.mask_prob = p;
        Ok(())
    }
    /// Examples per epoch.
    pub fn examples_per_epoch(&self) -> usize {
        self.perm.len()
    }
    /// The current position, with the NSP and masking RNG states.
    pub fn position(&self) -> DataPosition {
        let mut p = DataPosition { epoch: self.epoch, cursor: self.cursor, ..Default::default() };
        p.rngs.insert("nsp".into(), self.rng.state());
        p.rngs.insert("mlm".into(), self.masker.rng_state());
        p
    }
    /// Jumps to a saved position.
    pub fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        let n = self.perm.len();
        if p.cursor as usize > n {
            return Err(Error::msg(format!("BERT data: cursor {} beyond {n} examples (different data?)", p.cursor)));
        }
        let get = |k: &str| p.rngs.get(k).ok_or_else(|| Error::msg(format!("BERT data: position lacks the '{k}' rng state")));
        self.rng = DataRng::from_state(get("nsp")?)?;
        self.masker.set_rng_state(get("mlm")?)?;
        self.epoch = p.epoch;
        self.cursor = p.cursor;
        self.perm = epoch_permutation(self.seed, p.epoch, n);
        Ok(())
    }

    fn next_example(&mut self) -> (Vec<u32>, Vec<i64>, Option<bool>) {
        if self.cursor as usize >= self.perm.len() {
            self.epoch += 1;
            self.cursor = 0;
            self.perm = epoch_permutation(self.seed, self.epoch, self.perm.len());
        }
        let k = self.perm[self.cursor as usize];
        self.cursor += 1;
        let (cls, sep, _, _) = self.ids;
        match &self.src {
            Source::Nsp(b) => {
                let ex = b.example(k, &mut self.rng);
                (ex.ids, ex.type_ids, Some(ex.is_random_next))
            }
            Source::Single { docs, starts } => {
                let (d, i) = starts[k];
                let mut ids = vec![cls];
                for s in &docs[d][i..] {
                    if ids.len() > 1 && ids.len() + s.len() > self.seq - 1 {
                        break;
                    }
                    ids.extend(s);
                }
                ids.truncate(self.seq - 1);
                ids.push(sep);
                let n = ids.len();
                (ids, vec![0; n], None)
            }
        }
    }

    /// The next batch (fixed length `seq`).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (mut seqs, mut types, mut nsp, mut labels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.batch {
            let (mut ids, tt, is_rand) = self.next_example();
            let mut lab = self.masker.mask(&mut ids);
            lab.resize(self.seq, IGNORE_INDEX);
            labels.push(lab);
            seqs.push(ids);
            types.push(tt);
            if let Some(r) = is_rand {
                nsp.push(r as i64);
            }
        }
        let (ids, mask, tt) = pad_rows(&seqs, &types, self.ids.3, self.seq)?;
        let (b, t) = (self.batch, self.seq);
        let flat = |rows: Vec<Vec<i64>>| Tensor::from_vec(rows.into_iter().flatten().collect::<Vec<i64>>(), &[b, t]);
        let next_sentence_label = if nsp.is_empty() { None } else { Some(Tensor::from_vec(nsp, &[b])?) };
        Ok(Batch { input_ids: flat(ids)?, labels: flat(labels)?, attention_mask: flat(mask)?, token_type_ids: flat(tt)?, next_sentence_label })
    }
}
