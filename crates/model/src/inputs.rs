//! The HF forward arguments by name ([`Inputs`]), read from a JSON batch, and which ones each
//! architecture takes ([`Arch::inputs`]).
use crate::family::{Arch, Family, Task};
use kiln_tensor::{Device, Error, Result, Tensor};

/// The HF forward arguments, by name (each optional; which ones a model takes: [`Arch::inputs`]).
#[derive(Default, Clone)]
pub struct Inputs {
    pub input_ids: Option<Tensor>,
    pub attention_mask: Option<Tensor>,
    pub token_type_ids: Option<Tensor>,
    pub labels: Option<Tensor>,
    pub next_sentence_label: Option<Tensor>,
    pub sentence_order_label: Option<Tensor>,
    pub start_positions: Option<Tensor>,
    pub end_positions: Option<Tensor>,
    pub mc_token_ids: Option<Tensor>,
    pub mc_labels: Option<Tensor>,
}

/// An integer field as a tensor: nested lists of one rectangular shape (`[B]`, `[B, T]`, `[B, C, T]`).
fn int_field(key: &str, x: &serde_json::Value) -> Result<Tensor> {
    let bad = |why: &str| Error::msg(format!("batch: field '{key}' {why}"));
    let mut shape = Vec::new();
    let mut probe = x;
    while let serde_json::Value::Array(a) = probe {
        shape.push(a.len());
        match a.first() {
            Some(f) => probe = f,
            None => return Err(bad("has an empty list (pad the rows to one length)")),
        }
    }
    if shape.is_empty() {
        return Err(bad("must be a list"));
    }
    // The shape is read off the first element at each level, so it may claim far more elements than
    // the batch holds (a ragged batch, caught below): reserve no more than a modest amount up front.
    let claimed = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
    let mut flat = Vec::with_capacity(claimed.min(1 << 16));
    fn walk(v: &serde_json::Value, shape: &[usize], out: &mut Vec<i64>, bad: &dyn Fn(&str) -> Error) -> Result<()> {
        match (v, shape.split_first()) {
            (serde_json::Value::Array(a), Some((&n, rest))) if a.len() == n => a.iter().try_for_each(|e| walk(e, rest, out, bad)),
            (serde_json::Value::Array(_), _) => Err(bad("must have rows of one length at every level (pad them)")),
            (e, None) => {
                out.push(e.as_i64().ok_or_else(|| bad("must hold integers"))?);
                Ok(())
            }
            (_, Some(_)) => Err(bad("mixes lists and numbers")),
        }
    }
    walk(x, &shape, &mut flat, &bad)?;
    Tensor::from_vec(flat, &shape)
}

/// Every field of [`Inputs`], by HF name.
pub const INPUT_NAMES: [&str; 10] =
    ["input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label", "sentence_order_label", "start_positions", "end_positions", "mc_token_ids", "mc_labels"];

impl Inputs {
    /// Inputs holding `input_ids` only.
    pub fn ids(input_ids: &Tensor) -> Inputs {
        Inputs { input_ids: Some(input_ids.clone()), ..Default::default() }
    }
    /// The slot of an HF argument name (see [`INPUT_NAMES`]).
    pub fn slot(&mut self, name: &str) -> Option<&mut Option<Tensor>> {
        Some(match name {
            "input_ids" => &mut self.input_ids,
            "attention_mask" => &mut self.attention_mask,
            "token_type_ids" => &mut self.token_type_ids,
            "labels" => &mut self.labels,
            "next_sentence_label" => &mut self.next_sentence_label,
            "sentence_order_label" => &mut self.sentence_order_label,
            "start_positions" => &mut self.start_positions,
            "end_positions" => &mut self.end_positions,
            "mc_token_ids" => &mut self.mc_token_ids,
            "mc_labels" => &mut self.mc_labels,
            _ => return None,
        })
    }
    /// A batch in JSON: an object whose keys are HF argument names ([`INPUT_NAMES`]) holding
    /// nested lists of integers of one rectangular shape (`[B]`, `[B, T]`, `[B, C, T]`); `null`
    /// means absent. Unknown keys and ragged rows are errors naming the field; `input_ids` is
    /// required. The tensors are on the CPU.
    pub fn from_json(v: &serde_json::Value) -> Result<Inputs> {
        let obj = v.as_object().ok_or_else(|| Error::msg("batch: must be a JSON object"))?;
        let mut inputs = Inputs::default();
        for (k, x) in obj {
            let slot = inputs.slot(k).ok_or_else(|| Error::msg(format!("batch: unknown field '{k}' (known: {})", INPUT_NAMES.join(", "))))?;
            if !x.is_null() {
                *slot = Some(int_field(k, x)?);
            }
        }
        if inputs.input_ids.is_none() {
            return Err(Error::msg("batch: 'input_ids' is required"));
        }
        Ok(inputs)
    }
    /// Every input moved to `device`.
    pub fn to_device(mut self, device: Device) -> Result<Inputs> {
        for n in INPUT_NAMES {
            let slot = self.slot(n).expect("a known name");
            if let Some(t) = slot.take() {
                *slot = Some(t.to_device(device)?);
            }
        }
        Ok(self)
    }
    /// The names of the inputs that are set.
    pub fn present(&self) -> Vec<&'static str> {
        let mut me = self.clone();
        INPUT_NAMES.into_iter().filter(|n| me.slot(n).is_some_and(|s| s.is_some())).collect()
    }
}

impl Arch {
    /// The HF forward arguments this architecture takes.
    pub fn inputs(&self) -> Vec<&'static str> {
        let mut v = vec!["input_ids", "attention_mask"];
        if self.family != Family::DistilBert {
            v.push("token_type_ids");
        }
        v.extend(match (self.family, self.task) {
            (_, Task::Base) => &[][..],
            (Family::Bert, Task::PreTraining) => &["labels", "next_sentence_label"],
            (Family::Albert, Task::PreTraining) => &["labels", "sentence_order_label"],
            (_, Task::QuestionAnswering) => &["start_positions", "end_positions"],
            (_, Task::DoubleHeads) => &["labels", "mc_token_ids", "mc_labels"],
            _ => &["labels"],
        });
        v
    }
}

