//! GPT-1-style fine-tuning (Radford et al. 2018, §3.3) on GPT-1 and GPT-2, behind `kiln finetune`
//! with a decoder model:
//!
//! - **Input transforms.** Three tokens are added to the tokenizer and the vocabulary:
//!   [`START`], [`DELIMITER`] and [`EXTRACT`]; the token embedding grows by exactly the rows they
//!   need (new rows drawn from the store's seeded init, normal with `initializer_range`; the
//!   pretrained rows copied unchanged, [`GptTokens::fill_embedding`]). Sequence classification reads
//!   `start text extract`; entailment pairs `start premise delim hypothesis extract`; similarity
//!   pairs (`--pair-mode similarity`) both orders, their final states summed before the linear head;
//!   multiple choice one `start question delim choice extract` sequence per choice.
//! - **The head** reads the hidden state of the extract token, the last real token of every
//!   sequence: `GPT2ForSequenceClassification` / `OpenAIGPTForSequenceClassification` (`score`, no
//!   bias, at the last non-pad token; pad = the config's `pad_token_id`, else the start token, which
//!   never ends a sequence) for the classification tasks; `GPT2DoubleHeadsModel` /
//!   `OpenAIGPTDoubleHeadsModel` (`multiple_choice_head` at `mc_token_ids` = the extract token) for
//!   multiple choice. Since `score` has no bias, the similarity head on the summed states is the sum
//!   of the two orders' logits (what transformers gives for each order).
//! - **Auxiliary LM loss** ([`GptFinetune`]): `task loss + λ · causal-LM loss` on the same input
//!   (every real token predicts the next; padding ignored), the LM logits on the tied token
//!   embedding; `λ` = `--lm-coef` (default 0.5; 0 disables).
use crate::checkpoint::LoadReport;
use crate::config::ModelConfig;
use crate::data::{Batch, IGNORE_INDEX};
use crate::family::Task;
use crate::finetune::{at, task_inputs, Encoded, Example, FinetuneTask, Labels};
use crate::heads::shifted_lm_loss;
use crate::model::{Model, Stack};
use crate::nn::{ForwardCtx, Linear};
use crate::objective::Objective;
use crate::params::ParamStore;
use crate::tokenize::Tokenizer;
use kiln_tensor::{Error, Result, Tensor};
use std::path::Path;

/// The start token (GPT-1's `_start_`).
pub const START: &str = "_start_";
/// The delimiter between the two texts of a pair, or a question and a choice.
pub const DELIMITER: &str = "_delimiter_";
/// The extract token, last in every sequence: the classifier reads its hidden state.
pub const EXTRACT: &str = "_classify_";

/// How a pair is fed to a GPT model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PairMode {
    /// `start premise delim hypothesis extract` (entailment, GPT-1's default).
    #[default]
    Entailment,
    /// Both orders, their final states summed before the linear head (GPT-1's similarity).
    Similarity,
}

impl std::str::FromStr for PairMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "entailment" => Ok(PairMode::Entailment),
            "similarity" => Ok(PairMode::Similarity),
            _ => Err(Error::msg(format!("unknown --pair-mode '{s}' (entailment, similarity)"))),
        }
    }
}

/// The transform tokens' ids, and the vocabulary before and after they were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptTokens {
    pub start: u32,
    pub delimiter: u32,
    pub extract: u32,
    /// The padding id batches use (the config's `pad_token_id`, else [`START`]'s).
    pub pad: u32,
    /// The config's vocabulary before the tokens were added (the pretrained embedding's rows).
    pub old_vocab: usize,
    /// The config's vocabulary now.
    pub vocab: usize,
}

impl GptTokens {
    /// Adds the three tokens to `tok` as special tokens (never split, never merged) and grows
    /// `cfg`'s vocabulary to hold them (by exactly three rows when the tokenizer and the config
    /// agree on the size, as they do for GPT-1, GPT-2 and kiln's own runs); sets `pad_token_id`
    /// to the start token when the config has none. A tokenizer that has them already (a
    /// fine-tuned model, a resumed run) is left as it is.
    pub fn install(tok: &mut Tokenizer, cfg: &mut ModelConfig) -> Result<GptTokens> {
        let ModelConfig::Decoder(_) = cfg else { return Err(Error::msg("GPT input transforms: the model is not a decoder (GPT-1 / GPT-2)")) };
        let old_vocab = cfg.vocab_size();
        let added: Vec<tokenizers::AddedToken> = [START, DELIMITER, EXTRACT].iter().filter(|t| tok.token_to_id(t).is_none()).map(|t| tokenizers::AddedToken::from(*t, true)).collect();
        tok.add_special_tokens(added).map_err(|e| Error::msg(format!("tokenizer: adding the GPT transform tokens: {e}")))?;
        let id = |t: &str| tok.token_to_id(t).ok_or_else(|| Error::msg(format!("tokenizer: could not add '{t}'")));
        let (start, delimiter, extract) = (id(START)?, id(DELIMITER)?, id(EXTRACT)?);
        let vocab = old_vocab.max(start.max(delimiter).max(extract) as usize + 1);
        if vocab != old_vocab {
            cfg.set_vocab_size(vocab);
        }
        let ModelConfig::Decoder(c) = cfg else { unreachable!("checked above") };
        let pad = *c.pad_token_id.get_or_insert(start);
        Ok(GptTokens { start, delimiter, extract, pad, old_vocab, vocab })
    }

    /// After a non-strict load of `file` into a store built for the grown vocabulary: each
    /// parameter `rep` lists as `[old_vocab, C]` in the file and `[vocab, C]` in the model (the
    /// token embedding; an untied LM head) gets the file's rows and keeps its seeded init in the
    /// added rows; those mismatches leave `rep`.
    pub fn fill_embedding(&self, file: &Path, store: &ParamStore, rep: &mut LoadReport) -> Result<()> {
        if self.vocab == self.old_vocab {
            return Ok(());
        }
        let st = crate::st_io::StFile::open(file)?;
        let mut left = Vec::new();
        for m in std::mem::take(&mut rep.shape_mismatches) {
            let grown = m.got.len() == 2 && m.expected.len() == 2 && m.got[0] == self.old_vocab && m.expected[0] == self.vocab && m.got[1] == m.expected[1];
            let Some(p) = store.get(&m.name).filter(|_| grown) else {
                left.push(m);
                continue;
            };
            let old = st.tensor(&m.file_name)?.to_dtype(p.dtype())?.to_device(p.device())?;
            let fresh = p.tensor().narrow(0, self.old_vocab, self.vocab - self.old_vocab)?;
            p.assign(&Tensor::cat(&[old, fresh], 0)?)?;
            rep.loaded.push((m.name, m.file_name));
        }
        rep.shape_mismatches = left;
        Ok(())
    }
}

/// Token ids of `text` without the tokenizer's own special tokens.
fn ids(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    Ok(tok.encode(text, false).map_err(|e| Error::msg(format!("tokenizer: {e}")))?.get_ids().iter().map(|&i| i as i64).collect())
}

/// Encodes `examples` with GPT-1's transforms into sequences of at most `seq` tokens: a single
/// text, or the longer of a pair, is cut at its end to fit; a multiple-choice question is cut to
/// fit its longest choice, and a choice that does not fit even without the question is an error
/// naming `path` and the line. Labels by `labels` (multiple choice: the choice's index).
pub fn encode(tok: &Tokenizer, examples: &[Example], labels: &Labels, task: FinetuneTask, mode: PairMode, seq: usize, path: &Path, t: &GptTokens) -> Result<Vec<Encoded>> {
    let (s, d, e) = (t.start as i64, t.delimiter as i64, t.extract as i64);
    if seq < 4 {
        return Err(Error::msg(format!("finetune: --seq {seq} leaves no room for the text beside the GPT transform tokens (start, delimiter, extract)")));
    }
    let one = |a: &[i64]| [&[s][..], a, &[e]].concat();
    let two = |a: &[i64], b: &[i64]| [&[s][..], a, &[d], b, &[e]].concat();
    let row = |v: Vec<i64>| {
        let n = v.len();
        (v, vec![0; n])
    };
    examples
        .iter()
        .map(|ex| {
            let mut out = Encoded { ids: Vec::new(), types: Vec::new(), labels: Vec::new(), qa: None, choices: Vec::new() };
            match (task, &ex.pair) {
                (FinetuneTask::SeqCls, _) => {
                    let mut a = ids(tok, &ex.text)?;
                    a.truncate(seq - 2);
                    (out.ids, out.types) = row(one(&a));
                }
                (FinetuneTask::PairCls, Some(p)) => {
                    let (mut a, mut b) = (ids(tok, &ex.text)?, ids(tok, p)?);
                    while a.len() + b.len() > seq - 3 {
                        if a.len() >= b.len() { a.pop() } else { b.pop() };
                    }
                    match mode {
                        PairMode::Entailment => (out.ids, out.types) = row(two(&a, &b)),
                        PairMode::Similarity => out.choices = vec![row(two(&a, &b)), row(two(&b, &a))],
                    }
                }
                (FinetuneTask::MultipleChoice, _) => {
                    let q = ids(tok, &ex.text)?;
                    for (i, c) in ex.choices.iter().enumerate() {
                        let c = ids(tok, c)?;
                        if c.len() > seq - 3 {
                            return Err(at(path, ex.line, format!("choice {i} has {} tokens: with the 3 GPT transform tokens it does not fit --seq {seq} even without the question", c.len())));
                        }
                        out.choices.push(row(two(&q[..q.len().min(seq - 3 - c.len())], &c)));
                    }
                    out.labels = vec![ex.label.parse::<i64>().map_err(|_| at(path, ex.line, format!("label '{}' is not a choice index", ex.label)))?];
                    return Ok(out);
                }
                _ => return Err(Error::msg(format!("finetune: GPT fine-tuning takes seq-cls, pair-cls or multiple-choice, not {task:?}"))),
            }
            out.labels = vec![labels.id(&ex.label, path, ex.line)?];
            Ok(out)
        })
        .collect()
}

/// The LM targets of a batch: the ids where the mask is 1, -100 on padding (HF shifts them).
pub fn lm_labels(b: &Batch) -> Result<Tensor> {
    let ids = b.input_ids.to_vec::<i64>()?;
    let mask = b.attention_mask.to_vec::<i64>()?;
    let v: Vec<i64> = ids.iter().zip(&mask).map(|(&i, &m)| if m != 0 { i } else { IGNORE_INDEX }).collect();
    Tensor::from_vec(v, b.input_ids.shape())?.to_device(b.input_ids.device())
}

/// GPT-1's fine-tuning objective: the task's loss (`GPT2ForSequenceClassification`'s `loss`, a
/// double-heads model's `mc_loss`) plus `lm_coef` times the causal-LM loss on the same input, from
/// one forward pass.
pub struct GptFinetune {
    pub lm_coef: f64,
}

impl GptFinetune {
    /// The task loss and, when `lm_coef` is not 0, the LM loss of one batch.
    pub fn losses(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, Option<Tensor>)> {
        let Stack::Decoder(dec) = &model.stack else { return Err(Error::msg(format!("GPT fine-tuning: {} is not a decoder", model.arch.name))) };
        let double = model.arch.task == Task::DoubleHeads;
        let mut inputs = task_inputs(model, b)?;
        if double {
            inputs.mc_labels = Some(b.labels.clone());
        } else {
            inputs.labels = Some(b.labels.clone());
        }
        let out = model.forward(&inputs, ctx)?;
        let task = if double { out.get("mc_loss").cloned() } else { out.loss.clone() };
        let task = task.ok_or_else(|| Error::msg(format!("GPT fine-tuning: {} gave no task loss", model.arch.name)))?;
        if self.lm_coef == 0.0 {
            return Ok((task, None));
        }
        let t = *b.input_ids.shape().last().unwrap_or(&1);
        let rows = b.input_ids.elem_count() / t.max(1);
        // a double-heads model's logits are its LM's; a classifier's LM is the tied embedding
        let logits = match out.get("logits") {
            Some(l) if double => l.clone(),
            _ => {
                let h = out.get("last_hidden_state").ok_or_else(|| Error::msg("GPT fine-tuning: no hidden states"))?;
                Linear::tied(&dec.wte.weight).forward(h)?
            }
        };
        let v = *logits.shape().last().unwrap_or(&1);
        let lm = shifted_lm_loss(&logits.reshape(&[rows, t, v])?, &lm_labels(b)?.reshape(&[rows, t])?)?;
        Ok((task, Some(lm)))
    }
}

impl Objective for GptFinetune {
    fn name(&self) -> &'static str {
        "gpt-finetune"
    }
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        match self.losses(model, b, ctx)? {
            (task, Some(lm)) => task.add(&lm.mul_scalar(self.lm_coef)?),
            (task, None) => Ok(task),
        }
    }
    fn loss_is_perplexity(&self) -> bool {
        false
    }
}
