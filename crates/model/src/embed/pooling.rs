//! sentence-transformers' `Pooling` and `Normalize` modules: token vectors `[B, T, H]` and the
//! attention mask `[B, T]` to one vector per text. The rules are those of
//! `sentence_transformers/sentence_transformer/modules/pooling.py` (6.3), `_forward_padded`:
//!
//! - `cls`: the token at the first position whose mask is 1 (`argmax` of the mask; 0 if none);
//! - `max`: the element-wise maximum over positions whose mask is 1 (the others are set to `-inf`
//!   first, `masked_fill(mask == 0, -inf)`);
//! - `mean`: the sum over positions whose mask is 1 divided by their count, the count clamped at
//!   1e-9; `mean_sqrt_len_tokens`: the same sum divided by the count's square root;
//! - `weightedmean`: position `i` weighs `i + 1 - p` where `p` is the first position whose mask is
//!   1 (left padding), the sum divided by the weights' sum (clamped at 1e-9);
//! - `lasttoken`: the token at the last position whose mask is 1 (zeros if none).
//!
//! Several modes are concatenated in the order given (a legacy config's `pooling_mode_*` flags in
//! the order cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken). `Normalize` is
//! `torch.nn.functional.normalize(x, p=2, dim=-1)`: `x / max(‖x‖₂, 1e-12)`.
use kiln_tensor::{Device, Error, Result, Tensor};
use serde_json::Value;

/// One pooling mode of sentence-transformers' `Pooling` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
    WeightedMean,
    LastToken,
}

impl PoolingMode {
    /// Every mode, in the order a legacy config's flags are concatenated.
    pub const ALL: [PoolingMode; 6] = [PoolingMode::Cls, PoolingMode::Max, PoolingMode::Mean, PoolingMode::MeanSqrtLen, PoolingMode::WeightedMean, PoolingMode::LastToken];

    /// The name in a `pooling_mode` entry (`"cls"`, `"max"`, `"mean"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::Mean => "mean",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }

    /// The legacy boolean key of a pooling `config.json` (`pooling_mode_cls_token`, ...).
    pub fn legacy_key(self) -> &'static str {
        match self {
            PoolingMode::Cls => "pooling_mode_cls_token",
            PoolingMode::Max => "pooling_mode_max_tokens",
            PoolingMode::Mean => "pooling_mode_mean_tokens",
            PoolingMode::MeanSqrtLen => "pooling_mode_mean_sqrt_len_tokens",
            PoolingMode::WeightedMean => "pooling_mode_weightedmean_tokens",
            PoolingMode::LastToken => "pooling_mode_lasttoken",
        }
    }

    fn from_name(s: &str) -> Option<PoolingMode> {
        PoolingMode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// The `Pooling` module: which modes, concatenated in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    modes: Vec<PoolingMode>,
}

impl Pooling {
    /// Pooling by `modes` (at least one), concatenated in this order.
    pub fn new(modes: &[PoolingMode]) -> Result<Pooling> {
        if modes.is_empty() {
            return Err(Error::msg("pooling: no mode given"));
        }
        Ok(Pooling { modes: modes.to_vec() })
    }

    /// Mean pooling (what a bare encoder directory gets).
    pub fn mean() -> Pooling {
        Pooling { modes: vec![PoolingMode::Mean] }
    }

    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// The width of a pooled vector for hidden width `hidden`.
    pub fn output_dim(&self, hidden: usize) -> usize {
        self.modes.len() * hidden
    }

    /// Reads a pooling `config.json` as sentence-transformers does: `pooling_mode` (a name or a
    /// list of names) when present, else the legacy `pooling_mode_*` flags (none set: mean). Also
    /// returns the width it declares (`word_embedding_dimension` / `embedding_dimension`), which
    /// must be the encoder's hidden size. Unknown mode names, non-boolean flags and a non-integer
    /// width are errors naming `origin`.
    pub fn from_config(v: &Value, origin: &str) -> Result<(Pooling, Option<usize>)> {
        let bad = |why: String| Error::msg(format!("{origin}: {why}"));
        let obj = v.as_object().ok_or_else(|| bad("must be a JSON object".into()))?;
        let mut dim = None;
        for key in ["word_embedding_dimension", "embedding_dimension"] {
            if let Some(d) = obj.get(key).filter(|d| !d.is_null()) {
                dim = Some(d.as_u64().ok_or_else(|| bad(format!("{key} must be a positive integer, got {d}")))? as usize);
            }
        }
        let named = |x: &Value| -> Result<PoolingMode> {
            let s = x.as_str().ok_or_else(|| bad(format!("pooling_mode entries must be strings, got {x}")))?;
            let names: Vec<&str> = PoolingMode::ALL.iter().map(|m| m.name()).collect();
            PoolingMode::from_name(s).ok_or_else(|| bad(format!("unknown pooling mode '{s}' (known: {})", names.join(", "))))
        };
        let modes = match obj.get("pooling_mode") {
            Some(Value::Array(a)) => a.iter().map(named).collect::<Result<Vec<_>>>()?,
            Some(x) => vec![named(x)?],
            None => {
                let mut modes = Vec::new();
                for m in PoolingMode::ALL {
                    match obj.get(m.legacy_key()) {
                        None | Some(Value::Bool(false)) => {}
                        Some(Value::Bool(true)) => modes.push(m),
                        Some(x) => return Err(bad(format!("{} must be true or false, got {x}", m.legacy_key()))),
                    }
                }
                if modes.is_empty() {
                    modes.push(PoolingMode::Mean);
                }
                modes
            }
        };
        Ok((Pooling::new(&modes).map_err(|e| bad(e.to_string()))?, dim))
    }

    /// Pools row-major token vectors `hidden` `[b, t, h]` under `mask` `[b, t]` (nonzero = token)
    /// into `[b, modes · h]`.
    pub fn pool(&self, hidden: &[f32], mask: &[i64], b: usize, t: usize, h: usize) -> Result<Vec<f32>> {
        if hidden.len() != b * t * h || mask.len() != b * t {
            return Err(Error::ShapeMismatch { op: "pooling", lhs: vec![b, t, h], rhs: vec![hidden.len(), mask.len()] });
        }
        let mut out = Vec::with_capacity(b * self.output_dim(h));
        let mut acc = vec![0f64; h];
        for r in 0..b {
            let x = |i: usize| &hidden[(r * t + i) * h..(r * t + i + 1) * h];
            let m = &mask[r * t..(r + 1) * t];
            let on = |i: usize| m[i] != 0;
            let count = m.iter().filter(|&&v| v != 0).count() as f64;
            let first = (0..t).find(|&i| on(i));
            for mode in &self.modes {
                match mode {
                    PoolingMode::Cls => out.extend_from_slice(x(first.unwrap_or(0))),
                    PoolingMode::LastToken => match (0..t).rev().find(|&i| on(i)) {
                        Some(i) => out.extend_from_slice(x(i)),
                        None => out.extend(std::iter::repeat_n(0.0, h)), // a masked token times its 0
                    },
                    PoolingMode::Max => {
                        let mut best = vec![f32::NEG_INFINITY; h];
                        for i in (0..t).filter(|&i| on(i)) {
                            best.iter_mut().zip(x(i)).for_each(|(b, &v)| *b = b.max(v));
                        }
                        out.extend_from_slice(&best);
                    }
                    PoolingMode::Mean | PoolingMode::MeanSqrtLen | PoolingMode::WeightedMean => {
                        acc.fill(0.0);
                        let mut wsum = 0f64;
                        for i in (0..t).filter(|&i| on(i)) {
                            let w = match mode {
                                PoolingMode::WeightedMean => (i + 1) as f64 - first.unwrap_or(0) as f64,
                                _ => 1.0,
                            };
                            wsum += w;
                            acc.iter_mut().zip(x(i)).for_each(|(a, &v)| *a += w * v as f64);
                        }
                        let div = match mode {
                            PoolingMode::MeanSqrtLen => count.max(1e-9).sqrt(),
                            PoolingMode::Mean => count.max(1e-9),
                            _ => wsum.max(1e-9),
                        };
                        out.extend(acc.iter().map(|a| (a / div) as f32));
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`Pooling::pool`] on tensors: `last_hidden_state` `[B, T, H]` (float) and `attention_mask`
    /// `[B, T]` (i64) on any device; the result `[B, modes · H]` is f32 on the CPU.
    pub fn forward(&self, last_hidden_state: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let &[b, t, h] = last_hidden_state.shape() else {
            return Err(Error::Shape { op: "pooling", shape: last_hidden_state.shape().to_vec(), msg: "expected [batch, seq, hidden]".into() });
        };
        if attention_mask.shape() != [b, t] {
            return Err(Error::ShapeMismatch { op: "pooling: attention_mask", lhs: vec![b, t], rhs: attention_mask.shape().to_vec() });
        }
        let x = last_hidden_state.to_device(Device::Cpu)?.to_dtype(kiln_tensor::DType::F32)?.to_vec::<f32>()?;
        let m = attention_mask.to_device(Device::Cpu)?.to_vec::<i64>()?;
        Tensor::from_vec(self.pool(&x, &m, b, t, h)?, &[b, self.output_dim(h)])
    }
}

/// `Normalize` in place on rows of `width`: `x / max(‖x‖₂, 1e-12)`.
pub fn l2_normalize_rows(x: &mut [f32], width: usize) {
    for row in x.chunks_mut(width.max(1)) {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
    }
}
