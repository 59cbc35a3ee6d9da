//! `kiln forward`: one pass over a JSON batch; writes the HF outputs (`last_hidden_state`,
//! `pooler_output`, `logits`, ...), the loss and (with --grads) every parameter's gradient as
//! `grad.<HF name>` to a safetensors file.
use clap::Args;
use kiln::model::model::Inputs;
use kiln::model::nn::ForwardCtx;
use kiln::{Error, Result, Tensor};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// JSON whose keys are the model's HF forward arguments: input_ids (required), attention_mask,
    /// token_type_ids, labels, next_sentence_label, sentence_order_label, start_positions,
    /// end_positions, mc_token_ids, mc_labels (nested lists of integers).
    #[arg(long)]
    pub batch: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the gradient of the loss (plus `mc_loss` where there is one) for every parameter
    /// (needs labels).
    #[arg(long)]
    pub grads: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: ForwardArgs) -> Result<()> {
    let device: kiln::Device = a.device.parse()?;
    super::out_is_not_an_input(&a.out, &[a.batch.clone()], &a.model)?;
    let text = kiln::model::io::read_input_text(&a.batch)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::msg(format!("batch {}: invalid JSON: {e}", a.batch.display())))?;
    // the batch is read on the host; the model runs where its parameters are
    let inputs = Inputs::from_json(&v)?.to_device(device)?;
    let l = super::load_model_dir(&a.model, 0, device)?;
    let out = l.model.forward(&inputs, &ForwardCtx::eval())?;
    let mut tensors: Vec<(String, Tensor)> = out.tensors.iter().map(|(k, t)| (k.clone(), t.detach())).collect();
    if let Some(loss) = &out.loss {
        tensors.push(("loss".into(), loss.detach().reshape(&[1])?));
    }
    // mc_loss is written as HF's [1] too
    for (k, t) in tensors.iter_mut() {
        if k == "mc_loss" {
            *t = t.reshape(&[1])?;
        }
    }
    if a.grads {
        let total = out.total_loss()?.ok_or_else(|| Error::msg("forward: --grads needs labels in the batch"))?;
        total.backward()?;
        for p in l.store.params() {
            if let Some(g) = p.grad() {
                tensors.push((format!("grad.{}", p.name()), g));
            }
        }
    }
    let tensors = tensors.into_iter().map(|(k, t)| Ok((k, t.to_device(kiln::Device::Cpu)?))).collect::<Result<Vec<_>>>()?;
    kiln::model::st_io::write_safetensors(&a.out, &tensors, None, None)?;
    println!("wrote {} tensors to {}", tensors.len(), a.out.display());
    Ok(())
}
