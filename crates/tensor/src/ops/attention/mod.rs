//! attention: fused scaled-dot-product attention, `softmax(q·kᵀ·scale + mask)·v`, with a fused
//! backward. CPU (`cpu.rs`): tiles of 64 queries × 128 keys (64 × 64 in the backward) with an
//! online softmax (O(T) extra memory per row, no Tq×Tk matrix), rayon over (batch·head, query
//! tile); the forward saves the per-row logsumexp and the backward recomputes the probabilities
//! from it. Tile GEMMs: `gemm512.rs` (AVX-512 f32), `cpu/gemm256.rs` (AVX2 + FMA f32) or
//! matrixmultiply (scalar level, f64); softmax row primitives with
//! AVX-512 / AVX2 / scalar bodies in `simd.rs`; the backward in `bwd.rs`. Optional
//! attention-probability dropout ([`AttnDropout`]) with a counter-based mask the backward
//! regenerates (FlashAttention's way), its bits computed per SIMD level in `keep.rs`. On CUDA:
//! `cuda.rs` (the adapter and autograd node), `launch.rs` (the default kernels' launchers),
//! `variants/` (the opt-in kernels and the wgmma probe), `dropout_path.rs` (fused or composed
//! dropout) and `composed.rs` (the default dropout path there).
mod bwd;
mod cpu;
// CUDA's default dropout path (device-generic; without the cuda feature only its test uses it)
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod composed;
#[cfg(feature = "cuda")]
mod cuda;
mod dropout_path;
#[cfg(target_arch = "x86_64")]
mod gemm512;
mod keep;
#[cfg(feature = "cuda")]
mod launch;
mod simd;
pub mod variants;

pub use dropout_path::{attention_dropout_path, force_attention_dropout, AttnDropoutPath};
#[cfg(feature = "cuda")]
pub use launch::AttentionDims;
pub use variants::{attention_kernel_override, force_attention_kernel, AttnKernel};

use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Error, Layout, Result, Tensor};
use bwd::Saved;
use cpu::{Dims, KeyMask, View};
use simd::AttnFloat;
use std::sync::Arc;

const OP: &str = "attention";

/// Attention-probability dropout (FlashAttention's, inside the fused op): each probability
/// `P[b, h, i, j]` of the softmax is kept with probability `1 - p` and the kept ones are scaled
/// by `1/(1 - p)`, so `out = (P ∘ M / (1 - p))·v`.
///
/// Whether an element is kept depends only on `seed` and its counter
/// `((b·H + h)·Tq + i)·Tk + j` (the row-major index in a contiguous `[B, H, Tq, Tk]` matrix),
/// through the same keep function as [`Tensor::dropout`] ([`crate::ops::dropout::keep`], the RNG
/// contract shared with the CUDA kernels): the same seed gives the same mask on any device and
/// thread count, and the backward regenerates it instead of storing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnDropout {
    /// Drop probability, in [0, 1). 0 is the same as no dropout (bit for bit).
    pub p: f64,
    /// Seed of the mask.
    pub seed: u64,
}

impl AttnDropout {
    /// The counter of probability `(b, h, i, j)` in an attention with `heads` heads, `tq` queries
    /// and `tk` keys: `((b·heads + h)·tq + i)·tk + j`.
    pub fn index(heads: usize, tq: usize, tk: usize, b: usize, h: usize, i: usize, j: usize) -> u64 {
        (((b * heads + h) * tq + i) * tk + j) as u64
    }
    /// Whether the probability with counter `index` is kept.
    pub fn keeps(&self, index: u64) -> bool {
        crate::ops::dropout::keep(self.seed, index, crate::ops::dropout::threshold(self.p))
    }
}

/// Options of [`Tensor::attention`]. `Default` is: not causal, no mask, scale `1/sqrt(d)`, no
/// dropout.
#[derive(Debug, Clone, Default)]
pub struct AttentionOpts {
    /// Query `i` sees keys `j <= i` only. Like PyTorch's `scaled_dot_product_attention(is_causal=True)`
    /// this is aligned to the TOP-LEFT corner (`tril` of a Tq×Tk matrix of ones) also when Tq != Tk.
    pub causal: bool,
    /// `[B, Tk]`, any dtype: nonzero = a real token (kept), 0 = padding (its keys get no weight).
    /// This is the Hugging Face `attention_mask` convention. Not differentiated.
    pub key_padding_mask: Option<Tensor>,
    /// Multiplies `q·kᵀ`; `None` means `1/sqrt(d)`.
    pub scale: Option<f64>,
    /// Attention-probability dropout (training); `None` or `p = 0`: none.
    pub dropout: Option<AttnDropout>,
}

/// Validated sizes of a call.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Dims> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 4 {
            return Err(Error::Shape { op: OP, shape: t.shape().to_vec(), msg: format!("{name} must have rank 4 [B, H, T, d]") });
        }
    }
    q.check_float(OP)?;
    q.check_same(OP, k)?;
    q.check_same(OP, v)?;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs[..2] != ks[..2] || qs[3] != ks[3] {
        return Err(Error::ShapeMismatch { op: OP, lhs: qs.to_vec(), rhs: ks.to_vec() });
    }
    if ks[..3] != vs[..3] {
        return Err(Error::ShapeMismatch { op: OP, lhs: ks.to_vec(), rhs: vs.to_vec() });
    }
    if qs[3] == 0 || vs[3] == 0 {
        return Err(Error::Shape { op: OP, shape: vs.to_vec(), msg: format!("head dims must be positive (q/k have {}, v has {})", qs[3], vs[3]) });
    }
    let scale = opts.scale.unwrap_or(1.0 / (qs[3] as f64).sqrt());
    if !scale.is_finite() {
        return Err(Error::msg(format!("{OP}: scale must be finite, got {scale}")));
    }
    if let Some(d) = &opts.dropout {
        if !(0.0..1.0).contains(&d.p) {
            return Err(Error::msg(format!("{OP}: dropout.p must be in [0, 1), got {}", d.p)));
        }
    }
    if let Some(m) = &opts.key_padding_mask {
        if m.shape() != [qs[0], ks[2]] {
            return Err(Error::ShapeMismatch { op: "attention (key_padding_mask must be [B, Tk])", lhs: m.shape().to_vec(), rhs: vec![qs[0], ks[2]] });
        }
        if m.device() != q.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: m.device(), rhs: q.device() });
        }
    }
    Ok(Dims { b: qs[0], h: qs[1], tq: qs[2], tk: ks[2], d: qs[3], dv: vs[3], scale, causal: opts.causal, drop: opts.dropout.filter(|d| d.p > 0.0) })
}

/// A tensor in compute dtype `T`, with the storage handle that keeps its data alive.
struct Operand {
    t: Tensor,
    s: Arc<Storage>,
}

impl Operand {
    fn new(t: &Tensor, ct: DType) -> Result<Self> {
        let t = crate::no_grad(|| t.detach().to_dtype(ct))?;
        let s = t.storage();
        Ok(Operand { t, s })
    }
    fn view<T: CpuSlice>(&self) -> Result<View<'_, T>> {
        let st = self.t.strides();
        Ok(View { data: self.s.as_cpu()?.as_slice::<T>()?, off: self.t.layout().offset(), st: [st[0], st[1], st[2], st[3]] })
    }
}

fn key_mask<T: AttnFloat>(opts: &AttentionOpts, p: &Dims) -> Result<Option<KeyMask<T>>> {
    let Some(m) = &opts.key_padding_mask else { return Ok(None) };
    let keep: Vec<bool> = m.to_vec_f64()?.into_iter().map(|x| x != 0.0).collect();
    Ok(Some(KeyMask::new(&keep, p.tk)))
}

/// Forward in compute dtype `T`: (output with autograd history, lse [B, H, Tq] in `T`).
fn run<T: AttnFloat>(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts, p: Dims) -> Result<(Tensor, Tensor)> {
    let ct = T::DTYPE;
    let (qo, ko, vo) = (Operand::new(q, ct)?, Operand::new(k, ct)?, Operand::new(v, ct)?);
    let mask = key_mask::<T>(opts, &p)?;
    let (o, lse) = cpu::forward(&p, qo.view::<T>()?, ko.view::<T>()?, vo.view::<T>()?, mask.as_ref());
    let shape = [p.b, p.h, p.tq, p.dv];
    let saved_o = Arc::new(Storage::Cpu(T::into_storage(o)));
    let out = if q.dtype() == ct {
        Tensor::from_parts(saved_o.clone(), Layout::contiguous(&shape), false, None)
    } else {
        Tensor::from_storage(Storage::Cpu(saved_o.as_cpu()?.to_dtype(q.dtype())), &shape)?
    };
    let lse_t = Tensor::from_vec(lse.clone(), &[p.b, p.h, p.tq])?;
    let out = out.with_history(&[q, k, v], || {
        node(AttentionBackward::<T> { q: q.clone(), k: k.clone(), v: v.clone(), mask, out: saved_o, lse, p })
    });
    Ok((out, lse_t))
}

/// Scaled-dot-product attention with its per-row logsumexp; see [`Tensor::attention`].
///
/// Returns `(out [B, H, Tq, dv], lse [B, H, Tq])`; `lse` is f32 (f64 for f64 inputs), holds
/// `log Σ_j exp(scale·q_i·k_j)` over the kept keys (with dropout: of the undropped softmax), and is
/// `-inf` for fully masked rows. Only `out` carries gradients.
pub fn attention_with_lse(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<(Tensor, Tensor)> {
    let (out, lse) = dispatch(q, k, v, opts, true)?;
    Ok((out, lse.ok_or_else(|| Error::msg(format!("{OP}: no logsumexp was computed")))?))
}

/// The forward on the inputs' device; the lse may be left out (`None`) when `want_lse` is false
/// (CUDA's composed dropout path computes it separately, only when asked for).
fn dispatch(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts, want_lse: bool) -> Result<(Tensor, Option<Tensor>)> {
    let p = check(q, k, v, opts)?;
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return cuda::run(q, k, v, opts, p, want_lse);
    }
    let _ = want_lse;
    let (out, lse) = match q.dtype().cpu_compute() {
        DType::F32 => run::<f32>(q, k, v, opts, p)?,
        DType::F64 => run::<f64>(q, k, v, opts, p)?,
        d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
    };
    Ok((out, Some(lse)))
}

/// Scaled-dot-product attention; see [`Tensor::attention`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Tensor> {
    let _range = crate::nvtx::range("attention");
    Ok(dispatch(q, k, v, opts, false)?.0)
}

impl Tensor {
    /// Fused scaled-dot-product attention: `softmax(q·kᵀ·scale + mask)·v` over the last two dims.
    ///
    /// - `self` = q `[B, H, Tq, d]`, `k` `[B, H, Tk, d]`, `v` `[B, H, Tk, dv]` (any strides: a
    ///   transposed `[B, T, H, d]` view is read in place); output `[B, H, Tq, dv]`, contiguous.
    /// - `opts.causal`: query `i` sees keys `j <= i` (top-left aligned, as PyTorch's
    ///   `is_causal`, also for Tq != Tk). `opts.key_padding_mask` `[B, Tk]`: nonzero keeps a key.
    ///   `opts.scale` defaults to `1/sqrt(d)`. `opts.dropout`: attention-probability dropout
    ///   ([`AttnDropout`]: a counter-based mask, regenerated by the backward; the saved
    ///   logsumexp is the undropped softmax's). On CUDA the fused kernels apply it only when
    ///   `KILN_ATTN_DROPOUT=fused` (or [`force_attention_dropout`]); otherwise a
    ///   composed path of hardware-validated ops applies the same mask.
    /// - A query row whose keys are all masked outputs 0 (PyTorch gives NaN there), and its
    ///   gradients are 0.
    /// - f32 and f64; bf16 / f16 are computed in f32 and the result cast back.
    /// - Differentiable in q, k, v with a fused backward (recomputes the probabilities tile by tile
    ///   from the saved logsumexp); the mask gets no gradient. Deterministic run to run.
    ///
    /// Errors (naming `attention` and the shapes): ranks other than 4, mismatched B/H/d between q
    /// and k or B/H/Tk between k and v, a mask that is not `[B, Tk]`, zero head dims, dtype or
    /// device mismatches, non-float inputs, a `dropout.p` outside [0, 1).
    pub fn attention(&self, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Tensor> {
        attention(self, k, v, opts)
    }
}

struct AttentionBackward<T> {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<KeyMask<T>>,
    /// The forward output in compute dtype (the storage alone: holding the output tensor would
    /// make a reference cycle through its own node).
    out: Arc<Storage>,
    lse: Vec<T>,
    p: Dims,
}

impl<T: AttnFloat> BackwardOp for AttentionBackward<T> {
    backward_io!(|s| OP, [s.q, s.k, s.v]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let ct = T::DTYPE;
        let (qo, ko, vo, go) = (Operand::new(&self.q, ct)?, Operand::new(&self.k, ct)?, Operand::new(&self.v, ct)?, Operand::new(g, ct)?);
        let saved = Saved { out: self.out.as_cpu()?.as_slice::<T>()?, lse: &self.lse, dout: go.view::<T>()? };
        let (dq, dk, dv) = bwd::backward(&self.p, qo.view::<T>()?, ko.view::<T>()?, vo.view::<T>()?, self.mask.as_ref(), &saved);
        let wrap = |x: Vec<T>, like: &Tensor| -> Result<Option<Tensor>> {
            if !like.requires_grad() {
                return Ok(None);
            }
            let s: CpuStorage = T::into_storage(x);
            let s = if like.dtype() == T::DTYPE { s } else { s.to_dtype(like.dtype()) };
            Ok(Some(Tensor::from_storage(Storage::Cpu(s), like.shape())?))
        };
        Ok(vec![wrap(dq, &self.q)?, wrap(dk, &self.k)?, wrap(dv, &self.v)?])
    }
}

/// The composed (unfused) attention: `softmax(mask(q kᵀ · scale)) v` built from matmul,
/// masked_fill, softmax_last_dim and matmul (with `opts.dropout`, the probabilities go through
/// [`Tensor::dropout`], whose mask on the contiguous `[B, H, Tq, Tk]` matrix is the fused op's).
/// It stores the full T×T matrix; it exists to test the fused op against. Rows whose keys are all
/// masked give NaN here (as in PyTorch), where the fused op gives 0.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts) -> Result<Tensor> {
    let (tq, tk, d) = (q.dim(2)?, k.dim(2)?, q.dim(3)?);
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut s = q.matmul(&k.t()?)?.mul_scalar(scale)?; // [B, H, Tq, Tk]
    if opts.causal {
        let rows = Tensor::arange(0.0, tq as f64, 1.0, s.dtype(), s.device())?.reshape(&[tq, 1])?;
        let cols = Tensor::arange(0.0, tk as f64, 1.0, s.dtype(), s.device())?.reshape(&[1, tk])?;
        s = s.masked_fill(&cols.gt(&rows)?, f64::NEG_INFINITY)?;
    }
    if let Some(m) = &opts.key_padding_mask {
        let b = m.dim(0)?;
        let drop = m.to_dtype(s.dtype())?.eq_scalar(0.0)?.reshape(&[b, 1, 1, tk])?;
        s = s.masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    let mut p = s.softmax_last_dim()?;
    if let Some(d) = opts.dropout {
        p = p.dropout(d.p, d.seed, true)?;
    }
    p.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    /// Forward + backward bits on a pool of `threads` threads.
    fn bits(threads: usize, b: usize, h: usize, dropout: Option<AttnDropout>) -> Vec<u32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mk = |s, t| Tensor::randn(s, &[b, h, t, 32], 0.0, 1.0, DType::F32, Device::Cpu).unwrap().var();
            let (q, k, v) = (mk(1, 150), mk(2, 200), mk(3, 200));
            let out = q.attention(&k, &v, &AttentionOpts { causal: true, dropout, ..Default::default() }).unwrap();
            out.mul(&out).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = out.to_vec::<f32>().unwrap();
            for x in [&q, &k, &v] {
                all.extend(x.grad().unwrap().to_vec::<f32>().unwrap());
            }
            all.into_iter().map(f32::to_bits).collect()
        })
    }

    #[test]
    fn thread_count_does_not_change_bits() {
        // B·H = 2: the backward splits keys into chunks; B·H = 16: one task per (b, h). Holding the
        // SIMD level (and its lock) keeps tests that force other levels from running in between.
        use crate::cpu::simd::{detected, with_level};
        for (b, h) in [(1, 2), (4, 4)] {
            for dropout in [None, Some(AttnDropout { p: 0.2, seed: 5 })] {
                with_level(detected(), || assert_eq!(bits(1, b, h, dropout), bits(3, b, h, dropout), "b {b} h {h} {dropout:?}"));
            }
        }
    }
}
