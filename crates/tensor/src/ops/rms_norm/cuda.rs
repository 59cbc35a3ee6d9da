//! RMSNorm on CUDA: the adapter (tensors → contiguous device buffers → kernels) and the launchers of
//! `rms_norm.cu`. The forward saves the per-row rstd on the device (f32); the backward runs the
//! fused kernel, then the deterministic column sums of dweight.
use super::RmsNormBackward;
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{allow_smem, check_len, grid_rows, to_i32, KernelFloat, PushOptArg, BLOCK};
use crate::cuda::ops::{contiguous, contiguous_on, float_dispatch, rows_cols, view, write_out};
use crate::cuda::rows::row_parts;
use crate::cuda::storage::{out_buf, CudaStorage};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

const OP: &str = super::OP;

/// The forward (inputs validated by `Tensor::rms_norm`): `(y, rstd)`, `rstd` f32, one per row.
pub(super) fn forward(x: &Tensor, w: Option<&Tensor>, eps: f64) -> Result<(Tensor, Storage)> {
    let ts: Vec<&Tensor> = [Some(x), w].into_iter().flatten().collect();
    crate::cuda::ops::same_device(OP, &ts)?;
    let (rows, cols) = rows_cols(x);
    let (be, [xc]) = contiguous_on(OP, [x])?;
    let wc = w.map(contiguous).transpose()?;
    let mut rstd = out_buf::<f32>(&be, rows)?;
    let y = float_dispatch!(OP, x.dtype(), T => {
        let ws = wc.as_ref().map(|c| view::<T>(c, OP)).transpose()?;
        write_out::<T>(&be, x.elem_count(), |out| be.rms_norm_fwd::<T>(out, Some(&mut rstd.slice_mut(..)), &view(&xc, OP)?, ws.as_ref(), rows, cols, eps as f32))
    })?;
    Ok((Tensor::from_storage(Storage::Cuda(y), x.shape())?, Storage::Cuda(CudaStorage::from_slice(rstd, &be))))
}

/// The backward (fused kernel): dx, and dweight when there is a weight.
pub(super) fn backward(node: &RmsNormBackward, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let op = "rms_norm_bwd";
    let Storage::Cuda(rstd) = &node.rstd else {
        return Err(Error::DeviceMismatch { op, lhs: node.x.device(), rhs: crate::Device::Cpu });
    };
    let x = node.x.detach();
    if x.dtype() != g.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: x.dtype(), rhs: g.dtype() });
    }
    let (rows, cols) = rows_cols(&x);
    let (be, [xc, gc]) = contiguous_on(op, [&x, g])?;
    let wc = node.w.as_ref().map(contiguous).transpose()?;
    let (dx, dw) = float_dispatch!(op, x.dtype(), T => {
        let mut dx = out_buf::<T>(&be, x.elem_count())?;
        let mut dw = match &wc { Some(_) => Some(out_buf::<T>(&be, cols)?), None => None };
        let ws = wc.as_ref().map(|c| view::<T>(c, op)).transpose()?;
        let mut dwv = dw.as_mut().map(|s| s.slice_mut(..));
        be.rms_norm_bwd::<T>(&mut dx.slice_mut(..), dwv.as_mut(), &view(rstd, op)?, &view(&gc, op)?, &view(&xc, op)?, ws.as_ref(), rows, cols)?;
        drop(dwv);
        Ok((CudaStorage::from_slice(dx, &be), dw.map(|d| CudaStorage::from_slice(d, &be))))
    })?;
    let mut out = vec![Some(Tensor::from_storage(Storage::Cuda(dx), node.x.shape())?)];
    if let (Some(w), Some(dw)) = (&node.w, dw) {
        out.push(Some(Tensor::from_storage(Storage::Cuda(dw), w.shape())?));
    }
    Ok(out)
}

impl CudaBackend {
    /// RMSNorm over the last dim of `[rows, cols]`; saves `rstd` (`[rows]` f32) when given.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_fwd<T: KernelFloat>(
        &self, out: &mut CudaViewMut<T>, rstd: Option<&mut CudaViewMut<f32>>, inp: &CudaView<T>, weight: Option<&CudaView<T>>, rows: usize, cols: usize, eps: f32,
    ) -> Result<()> {
        let op = "rms_norm_fwd";
        check_len(op, inp.len(), rows * cols)?;
        check_len(op, out.len(), rows * cols)?;
        if let Some(r) = &rstd {
            check_len(op, r.len(), rows)?;
        }
        if let Some(w) = weight {
            check_len(op, w.len(), cols)?;
        }
        if rows * cols == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("{op}_{}", T::SUFFIX))?;
        let (r, c) = (to_i32(op, rows)?, to_i32(op, cols)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out);
        b.arg_opt(rstd);
        b.arg(inp);
        b.arg_opt(weight);
        b.arg(&r).arg(&c).arg(&eps);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }

    /// RMSNorm backward: writes `dinp`, and `dweight` when `weight` and `dweight` are given
    /// (deterministic two-stage column sums through f32 partials).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_bwd<T: KernelFloat>(
        &self, dinp: &mut CudaViewMut<T>, dweight: Option<&mut CudaViewMut<T>>, rstd: &CudaView<f32>, dout: &CudaView<T>, inp: &CudaView<T>,
        weight: Option<&CudaView<T>>, rows: usize, cols: usize,
    ) -> Result<()> {
        let op = "rms_norm_bwd";
        for len in [dinp.len(), dout.len(), inp.len()] {
            check_len(op, len, rows * cols)?;
        }
        check_len(op, rstd.len(), rows)?;
        for s in [weight.map(|w| w.len()), dweight.as_ref().map(|w| w.len())].into_iter().flatten() {
            check_len(op, s, cols)?;
        }
        if cols == 0 {
            return Ok(());
        }
        // (no rows: one part of zeros, so dweight is written as zeros)
        let parts = row_parts(rows);
        let (r, c, p) = (to_i32(op, rows)?, to_i32(op, cols)?, parts as i32);
        let mut dw_part = self.alloc::<f32>(parts * cols)?;
        let smem = ((cols + 32) * 4) as u32;
        let f = self.function(&super::KERNELS, &format!("{op}_{}", T::SUFFIX))?;
        allow_smem(&f, smem)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(dinp).arg(&mut *dw_part).arg(rstd).arg(dout).arg(inp);
        b.arg_opt(weight);
        b.arg(&r).arg(&c);
        unsafe { b.launch(LaunchConfig { grid_dim: (parts as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: smem }) }?;
        let (Some(dweight), Some(_)) = (dweight, weight) else { return Ok(()) };
        let f = self.function(&super::KERNELS, &format!("rms_norm_bwd_reduce_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(dweight).arg(&*dw_part).arg(&p).arg(&c);
        // 32 columns per block (block_col_sum in kernels/common.cuh)
        unsafe { b.launch(LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(())
    }
}
