//! CUDA AdamW step (adamw.cu through cuda/launch_train.rs): the update of one f32 parameter and its
//! moments into fresh buffers.
//! CUDA forward + fused backward of the training ops: embedding / index_select along dim 0
//! (deterministic scatter-add backward), and AdamW's step. index_select returns the result `Tensor`
//! with its backward node recorded, like the CPU path.
use super::ops::{contiguous, float_dispatch, same_device};
use super::storage::{out_buf, CudaStorage};
use crate::{DType, Result, Tensor};

/// One AdamW step of a CUDA f32 parameter (see [`super::adamw_step`]): the new parameter and
/// moments, as fresh storages (the caller assigns them; the kernel could also run in place).
pub fn adamw(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, s: &super::AdamWScalars) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let op = "adamw_step";
    same_device(op, &[param, grad, m, v])?;
    for t in [param, m, v] {
        if t.dtype() != DType::F32 {
            return Err(crate::Error::DTypeMismatch { op, lhs: t.dtype(), rhs: DType::F32 });
        }
    }
    let n = param.elem_count();
    for t in [grad, m, v] {
        if t.elem_count() != n {
            return Err(crate::Error::ElementCount { op, expected: n, got: t.elem_count() });
        }
    }
    let (pc, gc, mc, vc) = (contiguous(param)?, contiguous(grad)?, contiguous(m)?, contiguous(v)?);
    let be = pc.backend().clone();
    let (mut po, mut mo, mut vo) = (out_buf::<f32>(&be, n)?, out_buf::<f32>(&be, n)?, out_buf::<f32>(&be, n)?);
    let (ps, ms, vs) = (pc.slice::<f32>(op)?.slice(..), mc.slice::<f32>(op)?.slice(..), vc.slice::<f32>(op)?.slice(..));
    float_dispatch!(op, grad.dtype(), G => {
        be.adamw_step::<G>(&mut po.slice_mut(..), &mut mo.slice_mut(..), &mut vo.slice_mut(..), &ps, &ms, &vs, &gc.slice::<G>(op)?.slice(..), s)
    })?;
    Ok((CudaStorage::from_slice(po, &be), CudaStorage::from_slice(mo, &be), CudaStorage::from_slice(vo, &be)))
}
