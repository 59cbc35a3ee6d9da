//! Attention with dropout composed of ops already validated on hardware: CUDA's default path
//! ([`super::AttnDropoutPath::Composed`]) until the fused `_drop` kernels have passed on a
//! GPU. Device-generic (the unit test below runs it on the CPU against the fused op). Computed in
//! f32 whatever the input dtype (as the fused kernels accumulate):
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

/// The composed forward (p.drop is set, Tq and Tk are positive), with autograd history.
pub(super) fn attention_dropout(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts, p: &Dims) -> Result<Tensor> {
    let d = p.drop.ok_or_else(|| Error::msg(format!("{OP}: the composed path is for dropout")))?;
    let dt = q.dtype();
    if !matches!(dt, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::UnsupportedDType { op: OP, dtype: dt });
    }
    let dev = q.device();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let mut s = f32(q)?.matmul(&f32(k)?.t()?)?.mul_scalar(p.scale)?;
    let mut live = None;
    if let Some((bias, l)) = masks(opts, p)? {
        s = s.add(&bias.to_device(dev)?)?;
        live = l.map(|l| l.to_device(dev)).transpose()?;
    }
    let mut probs = s.softmax_last_dim()?;
    if let Some(l) = &live {
        probs = probs.mul(l)?;
    }
    probs.dropout(d.p, d.seed, true)?.matmul(&f32(v)?)?.to_dtype(dt)
}

#[cfg(test)]
mod tests {
    use super::super::{check, AttnDropout};
    use super::*;
    use crate::testing::assert_close;
    use crate::Device;

    /// On the CPU the composed path must equal the fused op: values and gradients, causal, key
    /// padding with a fully padded batch row (0 output and gradients there), Tq != Tk, f32 and bf16.
    #[test]
    fn composed_matches_the_fused_op() {
        let (b, h, tq, tk, d) = (3, 2, 37, 53, 24);
        let keep: Vec<i64> = (0..b * tk).map(|x| (x / tk != 1 && x % 4 != 3) as i64).collect();
        let mask = Tensor::from_vec(keep, &[b, tk]).unwrap();
        for dt in [DType::F32, DType::BF16] {
            for (causal, pad, p) in [(false, false, 0.1), (true, false, 0.3), (false, true, 0.5), (true, true, 0.2)] {
                let tk = if causal { tq } else { tk };
                let mk = |s: u64, t: usize| Tensor::randn(s, &[b, h, t, d], 0.0, 1.0, dt, Device::Cpu).unwrap().var();
                let (q, k, v) = (mk(1, tq), mk(2, tk), mk(3, tk));
                let key_padding_mask = pad.then(|| mask.narrow(1, 0, tk).unwrap());
                let opts = AttentionOpts { causal, key_padding_mask, scale: None, dropout: Some(AttnDropout { p, seed: 99 }) };
                let w = Tensor::randn(4, &[b, h, tq, d], 0.0, 1.0, dt, Device::Cpu).unwrap();
                let run = |f: &dyn Fn() -> Result<Tensor>| {
                    for x in [&q, &k, &v] {
                        x.zero_grad();
                    }
                    let o = f().unwrap();
                    o.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                    [o.detach(), q.grad().unwrap(), k.grad().unwrap(), v.grad().unwrap()]
                };
                let dims = check(&q, &k, &v, &opts).unwrap();
                let got = run(&|| attention_dropout(&q, &k, &v, &opts, &dims));
                let want = run(&|| q.attention(&k, &v, &opts));
                let tol = if dt == DType::F32 { 1e-4 } else { 2e-2 };
                for (n, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_close(&format!("{} {dt} causal {causal} pad {pad}", ["out", "dq", "dk", "dv"][n]), a, b, tol);
                }
                if pad {
                    // batch row 1 keeps no key: output and gradients 0 (the fused op's convention)
                    let o = got[0].to_vec_f64().unwrap();
                    assert!(o[h * tq * d..2 * h * tq * d].iter().all(|&x| x == 0.0) && o.iter().all(|x| x.is_finite()));
                }
            }
        }
    }
}
