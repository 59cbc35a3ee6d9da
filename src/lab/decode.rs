//! The decoding rows of `kiln bench`: greedy generation from a GPT-2 with the key/value cache
//! (`CausalLm::generate`), batch 1, after a short and a long prompt, as
//! scripts/torch_bench.py runs Hugging Face's `generate(use_cache=True, do_sample=False)` on the
//! same config, with f32 and with bf16 weights. One call is the prefill of the prompt plus `new`
//! tokens; decoding one token streams every weight once, so the rows count bytes: 4·P·new for f32
//! weights, 2·P·new for bf16 (tied embedding counted once), against the copy bandwidth.
//!
//! Before timing, the generated tokens are checked against one full forward over the whole
//! sequence: at every generated position the cached decoder's pick must be the recomputed
//! logits' maximum, within [`greedy_tolerance`] of the logits' scale (so a near-tie that rounding
//! may break either way is not an error).
use super::harness::{Stats, Work};
use super::row::Row;
use crate::model::config::{DecoderConfig, ModelConfig};
use crate::model::family::Family;
use crate::model::generate::{CausalLm, SampleOptions};
use crate::model::model::Model;
use crate::model::nn::ForwardCtx;
use crate::model::ParamStore;
use crate::tensor::{cuda, no_grad};
use crate::{DType, Device, Error, Result, Tensor};

/// The op name of the row.
pub const OP: &str = "decode_gpt";

/// (config, [(prompt tokens, new tokens)]): GPT-2 124M with 32 + 32 and 512 + 32 tokens (a
/// short and a long context), or a one-layer model with 8 + 8 when `quick`.
pub fn spec(quick: bool) -> Result<(DecoderConfig, Vec<(usize, usize)>)> {
    if quick {
        let mut g = DecoderConfig::defaults(Family::Gpt2);
        (g.n_layer, g.n_embd, g.n_head, g.vocab_size, g.n_positions) = (1, 32, 2, 256, 64);
        (g.bos_token_id, g.eos_token_id) = (Some(0), Some(0));
        return Ok((g, vec![(8, 8)]));
    }
    match ModelConfig::preset("gpt2")? {
        ModelConfig::Decoder(g) => Ok((g, vec![(32, 32), (512, 32)])),
        _ => Err(Error::msg("decode: the gpt2 preset is not a GPT-2 config")),
    }
}

/// Seeded prompt ids in the vocabulary (the same rule as torch_bench.py's).
pub fn prompt(n: usize, vocab: usize) -> Vec<i64> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as i64).collect()
}

/// The largest gap [`check_greedy`] allows, relative to the logits' scale, for parameters in `dt`:
/// 1e-4 in f32; two bf16 roundings (2⁻⁷) when the logits themselves are bf16.
pub fn greedy_tolerance(dt: DType) -> f64 {
    if dt == DType::F32 || dt == DType::F64 { 1e-4 } else { 2.0 / 128.0 }
}

/// Checks greedy `ids` (prompt + generated) against a full forward over them, computed in the
/// parameters' dtype as `generate` is; returns the largest gap between a recomputed maximum and the
/// picked token's logit, relative to the logits' scale.
pub fn check_greedy(m: &CausalLm, ids: &[i64], n_prompt: usize) -> Result<f64> {
    let w = m.transformer.wte.weight.tensor();
    let x = Tensor::from_vec(ids.to_vec(), &[1, ids.len()])?.to_device(w.device())?;
    let logits = no_grad(|| m.forward(&x, None, None, &ForwardCtx::eval().with_compute_dtype(w.dtype())))?.logits;
    let tol = greedy_tolerance(w.dtype());
    let v = logits.dim(2)?;
    let all = logits.to_dtype(DType::F64)?.to_vec::<f64>()?;
    let mut worst = 0.0f64;
    for pos in n_prompt..ids.len() {
        let row = &all[(pos - 1) * v..pos * v];
        let (max, scale) = row.iter().fold((f64::NEG_INFINITY, 0.0f64), |(m, s), &x| (m.max(x), s.max(x.abs())));
        let gap = (max - row[ids[pos] as usize]) / scale.max(1e-30);
        if gap > tol {
            return Err(Error::msg(format!("decode: token {pos} ({}) is not the recomputed maximum (gap {gap:.2e} of the logits' scale)", ids[pos])));
        }
        worst = worst.max(gap);
    }
    Ok(worst)
}

/// Times greedy generation (1 warm-up call, then `runs`) at each shape of [`spec`]; no rows when
/// filtered out.
pub fn rows(device: Device, quick: bool, runs: usize, filter: &dyn Fn(&str) -> bool) -> Result<Vec<Row>> {
    if !filter(OP) {
        return Ok(vec![]);
    }
    let (cfg, shapes) = spec(quick)?;
    let mut out = Vec::new();
    // f32 weights, and bf16 weights (generate computes in the parameters' dtype)
    for dt in [DType::F32, DType::BF16] {
        let store = ParamStore::new(0, dt, device);
        let model = Model::build(&ModelConfig::Decoder(cfg.clone()), &store);
        for &(n_prompt, new) in &shapes {
            let mut row = Row::new(OP, "kiln", device, dt, &format!("1x{n_prompt}x{new}"), false);
            let r = match &model {
                Ok(model) => measure(&cfg, model, &store, n_prompt, new, device, runs, &mut row),
                Err(e) => Err(Error::msg(e.to_string())),
            };
            if let Err(e) = r {
                row.status = format!("error: {e}");
            }
            out.push(row);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn measure(cfg: &DecoderConfig, model: &Model, store: &ParamStore, n_prompt: usize, new: usize, device: Device, runs: usize, row: &mut Row) -> Result<()> {
    let m = model.as_causal_lm()?;
    let n_params: usize = store.params().iter().map(|p| p.elem_count()).sum();
    let p = prompt(n_prompt, cfg.vocab_size);
    let opts = SampleOptions { max_new_tokens: new, ..Default::default() };
    let ids = m.generate(&p, &opts)?;
    let gap = check_greedy(&m, &ids, n_prompt)?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        cuda::synchronize(device)?;
        let (out, ms) = cuda::time_ms(device, || m.generate(&p, &opts))?;
        if out != ids {
            return Err(Error::msg("decode: two greedy runs gave different tokens"));
        }
        times.push(ms);
    }
    let s = Stats::of(times);
    let dt = m.transformer.wte.weight.dtype();
    row.set_stats(&s, Work::Bytes((dt.size_in_bytes() * n_params * new) as u64));
    let x = &mut row.extra;
    x.insert("tokens_per_s".into(), ((new as f64 / (s.median_ms / 1e3) * 10.0).round() / 10.0).into());
    x.insert("ms_per_token".into(), ((s.median_ms / new as f64 * 1e3).round() / 1e3).into());
    x.insert("params".into(), n_params.into());
    x.insert("prompt_tokens".into(), n_prompt.into());
    x.insert("new_tokens".into(), new.into());
    x.insert("check_max_gap".into(), gap.into());
    x.insert("method".into(), "CausalLm::generate, greedy, key/value cache; bytes = (weight bytes)*P*new (weights streamed per token)".into());
    x.insert("config".into(), serde_json::to_value(cfg).map_err(|e| Error::msg(e.to_string()))?);
    Ok(())
}
