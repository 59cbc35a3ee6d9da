//! Fine-tuning batches: encoded examples padded into [`Batch`]es (`[batch, seq]`, or `[batch,
//! choices, seq]` for multiple choice), and the per-epoch shuffled [`ExampleBatcher`].
use super::{Encoded, FinetuneTask};
use crate::data::{Batch, DataPosition, IGNORE_INDEX};
use crate::rng::DataRng;
use crate::trainer::BatchSource;
use kiln_tensor::{Error, Result, Tensor};

/// Pads `items` into one batch (`pad` for ids; labels per position padded with -100).
pub(crate) fn collate(items: &[&Encoded], pad: i64, per_token: bool) -> Result<Batch> {
    if items.first().is_some_and(|e| !e.choices.is_empty()) {
        return collate_choices(items, pad);
    }
    let label_cols = items.first().map_or(1, |e| e.labels.len());
    let (b, t) = (items.len(), items.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1));
    let (mut ids, mut types, mut mask, mut labels) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::new());
    for e in items {
        let n = e.ids.len();
        ids.extend(e.ids.iter().copied().chain(std::iter::repeat_n(pad, t - n)));
        types.extend(e.types.iter().copied().chain(std::iter::repeat_n(0, t - n)));
        mask.extend(std::iter::repeat_n(1i64, n).chain(std::iter::repeat_n(0, t - n)));
        if per_token {
            labels.extend(e.labels.iter().copied().chain(std::iter::repeat_n(IGNORE_INDEX, t - n)));
        } else {
            labels.extend_from_slice(&e.labels);
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, &[b, t])?,
        labels: match (per_token, label_cols) {
            (true, _) => Tensor::from_vec(labels, &[b, t])?,
            (false, 1) => Tensor::from_vec(labels, &[b])?,
            (false, k) => Tensor::from_vec(labels, &[b, k])?, // QA: (start, end)
        },
        attention_mask: Tensor::from_vec(mask, &[b, t])?,
        token_type_ids: Tensor::from_vec(types, &[b, t])?,
        next_sentence_label: None,
    })
}

/// Pads multiple-choice `items` into `[B, C, T]` (T the longest choice row), labels `[B]`.
fn collate_choices(items: &[&Encoded], pad: i64) -> Result<Batch> {
    let (b, c) = (items.len(), items[0].choices.len());
    if let Some(e) = items.iter().find(|e| e.choices.len() != c) {
        return Err(Error::msg(format!("finetune: a batch mixes {c} and {} choices", e.choices.len())));
    }
    let t = items.iter().flat_map(|e| e.choices.iter().map(|r| r.0.len())).max().unwrap_or(1).max(1);
    let (mut ids, mut types, mut mask) = (Vec::with_capacity(b * c * t), Vec::with_capacity(b * c * t), Vec::with_capacity(b * c * t));
    for (rid, rty) in items.iter().flat_map(|e| e.choices.iter()) {
        let n = rid.len();
        ids.extend(rid.iter().copied().chain(std::iter::repeat_n(pad, t - n)));
        types.extend(rty.iter().copied().chain(std::iter::repeat_n(0, t - n)));
        mask.extend(std::iter::repeat_n(1i64, n).chain(std::iter::repeat_n(0, t - n)));
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, &[b, c, t])?,
        labels: Tensor::from_vec(items.iter().map(|e| e.labels[0]).collect(), &[b])?,
        attention_mask: Tensor::from_vec(mask, &[b, c, t])?,
        token_type_ids: Tensor::from_vec(types, &[b, c, t])?,
        next_sentence_label: None,
    })
}

/// Training batches: every example once per epoch, in an order shuffled per epoch from the seed
/// (a pure function of (seed, epoch), so a saved position resumes exactly).
pub struct ExampleBatcher {
    items: Vec<Encoded>,
    batch: usize,
    pad: i64,
    per_token: bool,
    seed: u64,
    pos: DataPosition,
    order: Vec<usize>,
}

impl ExampleBatcher {
    pub fn new(items: Vec<Encoded>, batch: usize, pad: i64, task: FinetuneTask, seed: u64) -> Result<ExampleBatcher> {
        if items.is_empty() || batch == 0 {
            return Err(Error::msg("finetune: no examples, or a batch of 0"));
        }
        let mut b = ExampleBatcher { items, batch, pad, per_token: task == FinetuneTask::TokenCls, seed, pos: DataPosition::default(), order: Vec::new() };
        b.reorder();
        Ok(b)
    }
    fn reorder(&mut self) {
        self.order = (0..self.items.len()).collect();
        DataRng::new(self.seed, self.pos.epoch).shuffle(&mut self.order);
    }
    /// Updates per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.items.len().div_ceil(self.batch) as u64
    }
}

impl BatchSource for ExampleBatcher {
    fn next_batch(&mut self) -> Result<Batch> {
        let start = self.pos.cursor as usize;
        let end = (start + self.batch).min(self.items.len());
        let picked: Vec<&Encoded> = self.order[start..end].iter().map(|&i| &self.items[i]).collect();
        let b = collate(&picked, self.pad, self.per_token)?;
        self.pos.cursor = end as u64;
        if end == self.items.len() {
            self.pos.epoch += 1;
            self.pos.cursor = 0;
            self.reorder();
        }
        Ok(b)
    }
    fn position(&self) -> DataPosition {
        self.pos.clone()
    }
    fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        if p.cursor as usize >= self.items.len() {
            return Err(Error::msg(format!("finetune: saved position {} is past the {} examples", p.cursor, self.items.len())));
        }
        self.pos = p.clone();
        self.reorder();
        Ok(())
    }
}
