//! `kiln forward`: one pass over a JSON batch; writes outputs, the loss and (with --grads) every
//! parameter's gradient as `grad.<HF name>` to a safetensors file.
use clap::Args;
use kiln::model::bert::BertLabels;
use kiln::model::nn::ForwardCtx;
use kiln::{Error, Result, Tensor};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// JSON with input_ids (required), attention_mask, token_type_ids, labels, next_sentence_label,
    /// start_positions, end_positions.
    #[arg(long)]
    pub batch: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the gradient of the loss for every parameter (needs labels).
    #[arg(long)]
    pub grads: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// An integer field as a tensor: a list of rows ([B, T]) or a flat list ([B]).
fn int_field(v: &Value, key: &str) -> Result<Option<Tensor>> {
    let Some(x) = v.get(key) else { return Ok(None) };
    if x.is_null() {
        return Ok(None);
    }
    let bad = |why: &str| Error::msg(format!("batch: field '{key}' {why}"));
    let arr = x.as_array().ok_or_else(|| bad("must be a list"))?;
    let as_int = |e: &Value| e.as_i64().ok_or_else(|| bad("must hold integers"));
    if arr.first().is_some_and(|e| e.is_array()) {
        let rows: Vec<Vec<i64>> = arr.iter().map(|r| r.as_array().ok_or_else(|| bad("mixes rows and numbers"))?.iter().map(as_int).collect()).collect::<Result<_>>()?;
        let t = rows[0].len();
        if t == 0 || rows.iter().any(|r| r.len() != t) {
            return Err(bad("must have rows of one non-zero length (pad them)"));
        }
        Ok(Some(Tensor::from_vec(rows.concat(), &[rows.len(), t])?))
    } else {
        let flat: Vec<i64> = arr.iter().map(as_int).collect::<Result<_>>()?;
        if flat.is_empty() {
            return Err(bad("is empty"));
        }
        let n = flat.len();
        Ok(Some(Tensor::from_vec(flat, &[n])?))
    }
}

pub fn run(a: ForwardArgs) -> Result<()> {
    let device: kiln::Device = a.device.parse()?;
    let text = std::fs::read_to_string(&a.batch).map_err(|e| Error::Io { path: a.batch.display().to_string(), source: e })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::msg(format!("batch {}: invalid JSON: {e}", a.batch.display())))?;
    let ids = int_field(&v, "input_ids")?.ok_or_else(|| Error::msg("batch: 'input_ids' is required"))?;
    if ids.rank() != 2 {
        return Err(Error::msg("batch: 'input_ids' must be a list of rows"));
    }
    let l = super::load_model_dir(&a.model, 0, device)?;
    // the batch is read on the host; the model runs where its parameters are
    let up = |t: Option<Tensor>| t.map(|t| t.to_device(device)).transpose();
    let ids = ids.to_device(device)?;
    let labels = BertLabels {
        labels: up(int_field(&v, "labels")?)?,
        next_sentence_label: up(int_field(&v, "next_sentence_label")?)?,
        start_positions: up(int_field(&v, "start_positions")?)?,
        end_positions: up(int_field(&v, "end_positions")?)?,
    };
    let mask = up(int_field(&v, "attention_mask")?)?;
    let tt = up(int_field(&v, "token_type_ids")?)?;
    let out = l.model.forward(&ids, mask.as_ref(), tt.as_ref(), &labels, &ForwardCtx::eval())?;
    let mut tensors: Vec<(String, Tensor)> = out.tensors.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
    if let Some(loss) = &out.loss {
        tensors.push(("loss".into(), loss.detach().reshape(&[1])?));
        if a.grads {
            loss.backward()?;
            for p in l.store.params() {
                if let Some(g) = p.grad() {
                    tensors.push((format!("grad.{}", p.name()), g));
                }
            }
        }
    } else if a.grads {
        return Err(Error::msg("forward: --grads needs labels in the batch"));
    }
    let tensors = tensors.into_iter().map(|(k, t)| Ok((k, t.to_device(kiln::Device::Cpu)?))).collect::<Result<Vec<_>>>()?;
    kiln::model::st_io::write_safetensors(&a.out, &tensors, None, None)?;
    println!("wrote {} tensors to {}", tensors.len(), a.out.display());
    Ok(())
}
