//! CUDA forward + fused backward of the training ops: embedding / index_select along dim 0
//! (deterministic scatter-add backward), and AdamW's step. index_select returns the result `Tensor`
//! with its backward node recorded, like the CPU path.
use super::ops::{contiguous, contiguous_on, float_dispatch, float_out, same_device, storage_of, view};
use super::storage::{out_buf, CudaStorage};
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Result, Tensor};

/// Rows `ids` of `x` viewed as `[size, inner]` (select along dim 0): `[ids.len(), inner]`.
fn select_rows(op: &'static str, x: &Tensor, ids: &CudaStorage, size: usize, inner: usize) -> Result<CudaStorage> {
    let (be, [xc]) = contiguous_on(op, [x])?;
    float_out!(op, x.dtype(), &be, ids.len() * inner, |T, out| be.embedding_fwd::<T>(out, &view(&xc, op)?, &view(ids, op)?, inner, size))
}

struct SelectRowsBackward {
    op: &'static str,
    input: Tensor,
    ids: CudaStorage,
}

impl BackwardOp for SelectRowsBackward {
    backward_io!(|s| s.op, [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let shape = self.input.shape();
        let size = shape[0];
        let inner: usize = shape[1..].iter().product();
        let op = self.op;
        let (be, [gc]) = contiguous_on(op, [g])?;
        let dx = float_out!(op, g.dtype(), &be, size * inner, |T, out| be.embedding_bwd::<T>(out, &view(&gc, op)?, &view(&self.ids, op)?, inner, size))?;
        Ok(vec![Some(Tensor::from_storage(Storage::Cuda(dx), shape)?)])
    }
}

/// `index_select(0, ids)` of a CUDA tensor (the ids were validated on the host). Other dims are
/// not implemented on CUDA yet.
pub fn index_select(op: &'static str, x: &Tensor, dim: usize, ids: &[usize]) -> Result<Tensor> {
    if dim != 0 {
        return Err(super::not_implemented(&format!("{op} along dim {dim} (only dim 0)")));
    }
    let size = x.shape()[0];
    let inner: usize = x.shape()[1..].iter().product();
    let host = CpuStorage::I64(ids.iter().map(|&i| i as i64).collect());
    let ids = CudaStorage::from_cpu(&host, storage_of(op, x)?.backend().ordinal())?;
    let out = select_rows(op, x, &ids, size, inner)?;
    let mut shape = x.shape().to_vec();
    shape[0] = ids.len();
    Tensor::from_op(Storage::Cuda(out), &shape, &[x], || node(SelectRowsBackward { op, input: x.clone(), ids }))
}

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
