//! Fine-tuning evaluation: the task's metrics (accuracy and macro-F1, token F1, SQuAD's exact
//! match and F1), and the model inputs a fine-tuning batch gives.
use super::batch::collate;
use super::{Encoded, FinetuneTask};
use crate::data::{Batch, IGNORE_INDEX};
use crate::family::Task;
use crate::inputs::Inputs;
use crate::model::Model;
use crate::nn::ForwardCtx;
use kiln_tensor::{no_grad, Device, Error, Result, Tensor};
use std::collections::BTreeMap;

/// The task's metrics on `items` (batches of `batch`, no gradients): `accuracy` and `macro_f1`,
/// or `token_accuracy` and `token_f1`; `outside` is the id of the `O` tag, if any.
pub fn evaluate(model: &Model, items: &[Encoded], task: FinetuneTask, n_labels: usize, batch: usize, pad: i64, outside: Option<i64>, device: Device) -> Result<BTreeMap<&'static str, f64>> {
    let per_token = task == FinetuneTask::TokenCls;
    if task == FinetuneTask::Qa {
        return evaluate_qa(model, items, batch, pad, device);
    }
    let (mut gold, mut pred) = (Vec::new(), Vec::new());
    for chunk in items.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let (b, out) = eval_forward(model, &refs, pad, per_token, device)?;
        // a double-heads model's choice scores are its mc_logits (its logits are the LM's)
        let logits = out.get("mc_logits").or_else(|| out.get("logits")).ok_or_else(|| Error::msg("finetune: the model gave no logits"))?;
        let c = *logits.shape().last().unwrap_or(&1);
        let v = logits.to_dtype(kiln_tensor::DType::F32)?.to_vec::<f32>()?;
        let labels = b.labels.to_vec::<i64>()?;
        for (row, &g) in v.chunks(c).zip(&labels) {
            if g == IGNORE_INDEX {
                continue;
            }
            let p = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as i64);
            gold.push(g);
            pred.push(p);
        }
    }
    let acc = gold.iter().zip(&pred).filter(|(g, p)| g == p).count() as f64 / gold.len().max(1) as f64;
    let mut m = BTreeMap::new();
    match (per_token, outside) {
        (true, Some(o)) => {
            let tp = gold.iter().zip(&pred).filter(|(g, p)| g == p && **g != o).count() as f64;
            let (gp, pp) = (gold.iter().filter(|&&g| g != o).count() as f64, pred.iter().filter(|&&p| p != o).count() as f64);
            let f1 = if gp + pp == 0.0 { 1.0 } else { 2.0 * tp / (gp + pp) };
            m.insert("token_accuracy", acc);
            m.insert("token_f1", f1);
        }
        (true, None) => {
            m.insert("token_accuracy", acc);
            m.insert("token_f1", macro_f1(&gold, &pred, n_labels));
        }
        _ if task == FinetuneTask::MultipleChoice => {
            m.insert("accuracy", acc);
        }
        _ => {
            m.insert("accuracy", acc);
            m.insert("macro_f1", macro_f1(&gold, &pred, n_labels));
        }
    }
    Ok(m)
}

/// One evaluation batch through the model without gradients: the collated batch and the outputs.
fn eval_forward(model: &Model, items: &[&Encoded], pad: i64, per_token: bool, device: Device) -> Result<(Batch, crate::model::Outputs)> {
    let b = collate(items, pad, per_token)?.to_device(device)?;
    let inputs = task_inputs(model, &b)?;
    let out = no_grad(|| model.forward(&inputs, &ForwardCtx::eval()))?;
    Ok((b, out))
}

/// The model's inputs for a fine-tuning batch, without labels: ids and mask; segment ids for the
/// encoders that take them (never for GPT, whose token types would be looked up in the word
/// embedding); for a double-heads model, `mc_token_ids` at each row's last real token (the
/// extract token, [`crate::finetune::gpt`]).
pub fn task_inputs(model: &Model, b: &Batch) -> Result<Inputs> {
    let takes_types = !model.arch.family.is_decoder() && model.arch.inputs().contains(&"token_type_ids");
    let mc_token_ids = (model.arch.task == Task::DoubleHeads).then(|| last_positions(&b.attention_mask)).transpose()?;
    Ok(Inputs { input_ids: Some(b.input_ids.clone()), attention_mask: Some(b.attention_mask.clone()), token_type_ids: takes_types.then(|| b.token_type_ids.clone()), mc_token_ids, ..Default::default() })
}

/// Per row of `mask` (`[.., T]`, 1 on real tokens), the position of its last real token: `[..]`.
pub fn last_positions(mask: &Tensor) -> Result<Tensor> {
    let shape = mask.shape().to_vec();
    let t = *shape.last().unwrap_or(&1);
    let v: Vec<i64> = mask.to_vec::<i64>()?.chunks(t.max(1)).map(|r| r.iter().rposition(|&m| m != 0).unwrap_or(0) as i64).collect();
    Tensor::from_vec(v, &shape[..shape.len() - 1])?.to_device(mask.device())
}

/// Longest answer considered, in tokens.
const MAX_ANSWER_TOKENS: usize = 30;

/// SQuAD's exact match and F1 (each the best over the gold answers, averaged over examples): the
/// predicted span is the best-scoring `start ≤ end < start + 30` within the context.
fn evaluate_qa(model: &Model, items: &[Encoded], batch: usize, pad: i64, device: Device) -> Result<BTreeMap<&'static str, f64>> {
    let (mut em, mut f1) = (0.0, 0.0);
    for chunk in items.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let (b, out) = eval_forward(model, &refs, pad, false, device)?;
        let get = |n: &str| -> Result<Vec<f32>> { out.get(n).ok_or_else(|| Error::msg(format!("finetune: the model gave no {n}")))?.to_dtype(kiln_tensor::DType::F32)?.to_vec::<f32>() };
        let (starts, ends) = (get("start_logits")?, get("end_logits")?);
        let t = b.input_ids.shape()[1];
        for (i, e) in chunk.iter().enumerate() {
            let qa = e.qa.as_ref().ok_or_else(|| Error::msg("finetune: a QA example without spans"))?;
            let (sl, el) = (&starts[i * t..(i + 1) * t], &ends[i * t..(i + 1) * t]);
            let mut best: Option<(f32, usize, usize)> = None;
            for s in (0..qa.offsets.len()).filter(|&s| qa.offsets[s].is_some()) {
                for e in (s..qa.offsets.len().min(s + MAX_ANSWER_TOKENS)).filter(|&e| qa.offsets[e].is_some()) {
                    let score = sl[s] + el[e];
                    if best.is_none_or(|b| score > b.0) {
                        best = Some((score, s, e));
                    }
                }
            }
            let pred: String = match best {
                Some((_, s, e)) => qa.context[qa.offsets[s].map_or(0, |o| o.0)..qa.offsets[e].map_or(0, |o| o.1)].iter().collect(),
                None => String::new(),
            };
            em += qa.answers.iter().map(|a| (normalize(a) == normalize(&pred)) as u8 as f64).fold(0.0, f64::max);
            f1 += qa.answers.iter().map(|a| token_f1(&normalize(a), &normalize(&pred))).fold(0.0, f64::max);
        }
    }
    let n = items.len().max(1) as f64;
    Ok(BTreeMap::from([("exact_match", em / n), ("f1", f1 / n)]))
}

/// SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.
fn normalize(s: &str) -> String {
    let lower: String = s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    lower.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// F1 of the words of `pred` against `gold` (as multisets).
fn token_f1(gold: &str, pred: &str) -> f64 {
    let (g, p): (Vec<&str>, Vec<&str>) = (gold.split_whitespace().collect(), pred.split_whitespace().collect());
    if g.is_empty() || p.is_empty() {
        return (g.is_empty() && p.is_empty()) as u8 as f64;
    }
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &g {
        *left.entry(w).or_default() += 1;
    }
    let common = p.iter().filter(|w| left.get_mut(*w).is_some_and(|c| if *c > 0 { *c -= 1; true } else { false })).count() as f64;
    if common == 0.0 {
        return 0.0;
    }
    let (prec, rec) = (common / p.len() as f64, common / g.len() as f64);
    2.0 * prec * rec / (prec + rec)
}

/// Mean F1 over the classes that occur in `gold` or `pred`.
fn macro_f1(gold: &[i64], pred: &[i64], n: usize) -> f64 {
    let mut f = Vec::new();
    for c in 0..n as i64 {
        let tp = gold.iter().zip(pred).filter(|(g, p)| **g == c && **p == c).count() as f64;
        let (gc, pc) = (gold.iter().filter(|&&g| g == c).count() as f64, pred.iter().filter(|&&p| p == c).count() as f64);
        if gc + pc > 0.0 {
            f.push(2.0 * tp / (gc + pc));
        }
    }
    if f.is_empty() {
        0.0
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}
