//! Fused attention on CUDA: the tensor-core kernels of `kernels/attention_tc.cu` for bf16 / f16 with
//! head dim 64 or 128 on sm_80+, the simple kernels of `kernels/attention.cu` otherwise (or as
//! [`super::force_attention_kernel`] chooses). The forward saves `lse` (f32, on the
//! device) and records which kernels ran; the backward runs their blockwise passes. Limits of the CUDA path (clear errors): head dims
//! of q/k and v must be equal and at most 128, and a causal call needs `Tq == Tk` (the kernel's
//! causal mask is aligned bottom-right, kiln's top-left; they agree only for square calls).
//!
//! With dropout the kernels' `_drop` variants run when [`super::attention_dropout_path`] is
//! `Fused` (opt-in: `KILN_ATTN_DROPOUT=fused`); by default the composed path applies the same
//! mask with ops validated on hardware (`composed.rs`).
use super::cpu::Dims;
use super::{AttentionOpts, OP};
use crate::autograd::{backward_io, node, BackwardOp};
use super::launch::AttentionDims;
use super::variants::AttnKernel;
use super::{attention_dropout_path, AttnDropoutPath};
use crate::cuda::ops::{contiguous, float_dispatch};
use crate::cuda::storage::out_buf;
use crate::cuda::{not_implemented, CudaStorage};
use crate::storage::Storage;
use crate::{DType, Result, Tensor};

struct AttentionCudaBackward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<CudaStorage>,
    out: CudaStorage,
    lse: CudaStorage,
    dims: AttentionDims,
    kernel: AttnKernel,
}

impl BackwardOp for AttentionCudaBackward {
    backward_io!(|s| OP, [s.q, s.k, s.v]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (qc, kc, vc, gc) = (contiguous(&self.q.detach())?, contiguous(&self.k.detach())?, contiguous(&self.v.detach())?, contiguous(g)?);
        let be = qc.backend().clone();
        let d = &self.dims;
        let (dq, dk, dv) = float_dispatch!(OP, self.q.dtype(), T => {
            let mut dq = out_buf::<T>(&be, self.q.elem_count())?;
            let mut dk = out_buf::<T>(&be, self.k.elem_count())?;
            let mut dv = out_buf::<T>(&be, self.v.elem_count())?;
            let mask = self.mask.as_ref().map(|m| m.slice::<f32>(OP)).transpose()?.map(|s| s.slice(..));
            be.attention_bwd::<T>(
                &mut dq.slice_mut(..), &mut dk.slice_mut(..), &mut dv.slice_mut(..), &self.lse.slice::<f32>(OP)?.slice(..),
                &self.out.slice::<T>(OP)?.slice(..), &gc.slice::<T>(OP)?.slice(..), &qc.slice::<T>(OP)?.slice(..),
                &kc.slice::<T>(OP)?.slice(..), &vc.slice::<T>(OP)?.slice(..), mask.as_ref(), d, self.kernel,
            )?;
            Ok((CudaStorage::from_slice(dq, &be), CudaStorage::from_slice(dk, &be), CudaStorage::from_slice(dv, &be)))
        })?;
        let wrap = |s: CudaStorage, like: &Tensor| Tensor::from_storage(Storage::Cuda(s), like.shape()).map(Some);
        Ok(vec![wrap(dq, &self.q)?, wrap(dk, &self.k)?, wrap(dv, &self.v)?])
    }
}

/// The CUDA forward of `attention_with_lse` (shapes validated by the caller); the lse may be left
/// out when `want_lse` is false (the composed dropout path).
pub(super) fn run(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOpts, mut p: Dims, want_lse: bool) -> Result<(Tensor, Option<Tensor>)> {
    if p.tq == 0 || p.tk == 0 {
        p.drop = None; // no probabilities to drop
    }
    if p.drop.is_some() && attention_dropout_path() == AttnDropoutPath::Composed {
        let out = super::composed::attention_dropout(q, k, v, opts, &p)?;
        // the lse (of the undropped softmax) from the fused forward without dropout, when asked for
        let lse = if want_lse {
            let plain = AttentionOpts { dropout: None, ..opts.clone() };
            crate::no_grad(|| run(q, k, v, &plain, Dims { drop: None, ..p }, true))?.1
        } else {
            None
        };
        return Ok((out, lse));
    }
    if p.dv != p.d {
        return Err(not_implemented("attention with a v head dim different from q/k's"));
    }
    if p.causal && p.tq != p.tk {
        return Err(not_implemented("causal attention with Tq != Tk"));
    }
    let dims = AttentionDims { batch: p.b, heads: p.h, q_len: p.tq, kv_len: p.tk, head_dim: p.d, scale: p.scale as f32, causal: p.causal, dropout: p.drop };
    let (qc, kc, vc) = (contiguous(q)?, contiguous(k)?, contiguous(v)?);
    let mask = match &opts.key_padding_mask {
        Some(m) => Some(contiguous(&m.detach().to_dtype(DType::F32)?)?),
        None => None,
    };
    let be = qc.backend().clone();
    let kernel = dims.kernel(be.arch(), q.dtype().as_str());
    let mut lse = out_buf::<f32>(&be, p.b * p.h * p.tq)?;
    let out = float_dispatch!(OP, q.dtype(), T => {
        let mut out = out_buf::<T>(&be, q.elem_count())?;
        let mv = mask.as_ref().map(|m| m.slice::<f32>(OP)).transpose()?.map(|s| s.slice(..));
        be.attention_fwd::<T>(
            &mut out.slice_mut(..), &mut lse.slice_mut(..), &qc.slice::<T>(OP)?.slice(..), &kc.slice::<T>(OP)?.slice(..),
            &vc.slice::<T>(OP)?.slice(..), mv.as_ref(), &dims, kernel,
        )?;
        Ok(CudaStorage::from_slice(out, &be))
    })?;
    let lse = CudaStorage::from_slice(lse, &be);
    let lse_t = Tensor::from_storage(Storage::Cuda(lse.clone()), &[p.b, p.h, p.tq])?;
    let saved = out.clone();
    let o = Tensor::from_storage(Storage::Cuda(out), q.shape())?.with_history(&[q, k, v], || {
        node(AttentionCudaBackward { q: q.clone(), k: k.clone(), v: v.clone(), mask, out: saved, lse, dims, kernel })
    });
    Ok((o, Some(lse_t)))
}
