//! CUDA attention with dropout composed of ops already validated on hardware: the default path
//! ([`crate::cuda::AttnDropoutPath::Composed`]) until the fused `_drop` kernels have passed on a
//! GPU. Computed in f32 whatever the input dtype (as the fused kernels accumulate):
//!
//! `s = q·kᵀ·scale + bias` (matmul, affine, a broadcast add: 0 where a key is visible, -inf where
//! it is hidden), `P = softmax_last_dim(s) [· live]`, `P.dropout(p, seed)`, `·v` (matmul).
//!
//! The dropout op's mask on the contiguous `[B, H, Tq, Tk]` probabilities is the fused op's: the
//! same keep function of the same counter `((b·H + h)·Tq + i)·Tk + j` (dropout.cu on CUDA). A query
//! that sees no key gets a zero bias row (so its softmax stays finite) and `live` = 0: output and
//! gradients 0, as the fused op gives. Gradients come from the ops' own backward nodes. The Tq×Tk
//! matrix is stored (the cost of this path).
use super::cpu::Dims;
use super::{AttentionOpts, OP};
use crate::{DType, Error, Result, Tensor};

/// The masks as tensors that broadcast against `[B, H, Tq, Tk]`: an additive bias `[Bm, 1, Tqm,
/// Tk]` and, when some query sees no key, the row liveness `[Bm, 1, Tqm, 1]` (Bm = B with a key
/// padding mask, else 1; Tqm = Tq when causal, else 1). None without masks.
fn masks(opts: &AttentionOpts, p: &Dims) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if !p.causal && opts.key_padding_mask.is_none() {
        return Ok(None);
    }
    let keep = match &opts.key_padding_mask {
        Some(m) => Some(m.to_vec_f64()?.into_iter().map(|x| x != 0.0).collect::<Vec<bool>>()),
        None => None,
    };
    let (bm, tqm, tk) = (if keep.is_some() { p.b } else { 1 }, if p.causal { p.tq } else { 1 }, p.tk);
    let (mut bias, mut live) = (Vec::with_capacity(bm * tqm * tk), Vec::with_capacity(bm * tqm));
    for b in 0..bm {
        for i in 0..tqm {
            let visible = |j: usize| keep.as_ref().is_none_or(|k| k[b * tk + j]) && (!p.causal || j <= i);
            let any = (0..tk).any(visible);
            bias.extend((0..tk).map(|j| if !any || visible(j) { 0.0f32 } else { f32::NEG_INFINITY }));
            live.push(if any { 1.0f32 } else { 0.0 });
        }
    }
    let bias = Tensor::from_vec(bias, &[bm, 1, tqm, tk])?;
    let live = if live.iter().all(|&x| x == 1.0) { None } else { Some(Tensor::from_vec(live, &[bm, 1, tqm, 1])?) };
    Ok(Some((bias, live)))
}

/// The composed forward (p.drop is set, Tq and Tk are positive); the lse, when `want_lse`, is the
/// undropped softmax's, from the fused forward without dropout.
pub(super) fn run(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts, p: Dims, want_lse: bool) -> Result<(Tensor, Option<Tensor>)> {
    let d = p.drop.ok_or_else(|| Error::msg(format!("{OP}: the composed CUDA path is for dropout")))?;
    let dt = q.dtype();
    if !matches!(dt, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::UnsupportedDType { op: OP, dtype: dt });
    }
    let dev = q.device();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let mut s = f32(q)?.matmul(&f32(k)?.t()?)?.mul_scalar(p.scale)?;
    let mut live = None;
    if let Some((bias, l)) = masks(opts, &p)? {
        s = s.add(&bias.to_device(dev)?)?;
        live = l.map(|l| l.to_device(dev)).transpose()?;
    }
    let mut probs = s.softmax_last_dim()?;
    if let Some(l) = &live {
        probs = probs.mul(l)?;
    }
    let out = probs.dropout(d.p, d.seed, true)?.matmul(&f32(v)?)?.to_dtype(dt)?;
    let lse = if want_lse {
        let plain = AttentionOpts { dropout: None, ..opts.clone() };
        Some(crate::no_grad(|| super::cuda::run(q, k, v, &plain, Dims { drop: None, ..p }, true))?.1.ok_or_else(|| Error::msg(format!("{OP}: no lse")))?)
    } else {
        None
    };
    Ok((out, lse))
}
