//! AdamW on CUDA: the adapter and the launcher of `adamw.cu` (one fused step of an f32 parameter and
//! its moments into fresh buffers).
use super::AdamWScalars;
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{check_len, grid_1d, KernelFloat};
use crate::cuda::ops::{contiguous, float_dispatch, same_device};
use crate::cuda::storage::{out_buf, CudaStorage};
use crate::{DType, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

/// One AdamW step of a CUDA f32 parameter (see [`super::adamw_step`]): the new parameter and
/// moments, as fresh storages (the caller assigns them; the kernel could also run in place).
pub(super) fn adamw(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, s: &AdamWScalars) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
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

impl CudaBackend {
    /// One fused AdamW step on f32 master weights: `param_out`, `m_out`, `v_out` from `param`,
    /// `m`, `v` and `grad` (dtype `G`), with the CPU loop's operations and roundings (adamw.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step<G: KernelFloat>(
        &self, param_out: &mut CudaViewMut<f32>, m_out: &mut CudaViewMut<f32>, v_out: &mut CudaViewMut<f32>, param: &CudaView<f32>,
        m: &CudaView<f32>, v: &CudaView<f32>, grad: &CudaView<G>, s: &AdamWScalars,
    ) -> Result<()> {
        let n = param.len();
        for len in [param_out.len(), m_out.len(), v_out.len(), m.len(), v.len(), grad.len()] {
            check_len("adamw_step", len, n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        let f = self.function(&super::KERNELS, &format!("adamw_step_{}", G::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(param_out).arg(m_out).arg(v_out).arg(param).arg(m).arg(v).arg(grad).arg(&n64);
        b.arg(&s.decay).arg(&s.w1).arg(&s.beta2).arg(&s.one_minus_beta2).arg(&s.bc2_sqrt).arg(&s.eps).arg(&s.neg_step_size);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }
}
