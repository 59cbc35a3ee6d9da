//! LayerNorm on CUDA: the adapter (tensors → contiguous device buffers → kernels) and the launchers
//! of `layer_norm.cu`. The forward saves the per-row mean / rstd on the device (f32); the backward
//! runs the fused kernel, then the deterministic column sums of dweight / dbias.
use super::LayerNormBackward;
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{allow_smem, check_len, grid_rows, to_i32, KernelFloat, PushOptArg, BLOCK};
use crate::cuda::ops::{contiguous, contiguous_on, float_dispatch, rows_cols, view, write_out};
use crate::cuda::rows::{grid_warp_rows, row_kernel_name, row_parts, warp_e, ROW_WARP_E};
use crate::cuda::storage::{out_buf, CudaStorage};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};

const OP: &str = super::OP;

/// The forward (inputs validated by `Tensor::layer_norm`): `(y, mean, rstd)`, `mean` / `rstd` f32,
/// one per row.
pub(super) fn forward(x: &Tensor, w: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<(Tensor, Storage, Storage)> {
    let ts: Vec<&Tensor> = [Some(x), w, bias].into_iter().flatten().collect();
    crate::cuda::ops::same_device(OP, &ts)?;
    let (rows, cols) = rows_cols(x);
    let (be, [xc]) = contiguous_on(OP, [x])?;
    let wc = w.map(contiguous).transpose()?;
    let bc = bias.map(contiguous).transpose()?;
    let mut mean = out_buf::<f32>(&be, rows)?;
    let mut rstd = out_buf::<f32>(&be, rows)?;
    let y = float_dispatch!(OP, x.dtype(), T => {
        let ws = wc.as_ref().map(|c| view::<T>(c, OP)).transpose()?;
        let bs = bc.as_ref().map(|c| view::<T>(c, OP)).transpose()?;
        write_out::<T>(&be, x.elem_count(), |out| {
            be.layer_norm_fwd::<T>(out, Some(&mut mean.slice_mut(..)), Some(&mut rstd.slice_mut(..)), &view(&xc, OP)?, ws.as_ref(), bs.as_ref(), rows, cols, eps as f32)
        })
    })?;
    let y = Tensor::from_storage(Storage::Cuda(y), x.shape())?;
    Ok((y, Storage::Cuda(CudaStorage::from_slice(mean, &be)), Storage::Cuda(CudaStorage::from_slice(rstd, &be))))
}

/// The backward (fused kernel): dx, then dweight and dbias for the inputs that are there (dbias
/// from the kernel with a weight, as column sums of `g` without one).
pub(super) fn backward(node: &LayerNormBackward, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    crate::cuda::with_row_kernel(node.kernel, || backward_kernels(node, g))
}

fn backward_kernels(node: &LayerNormBackward, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let op = "layer_norm_bwd";
    let (mean, rstd) = match (&node.mean, &node.rstd) {
        (Storage::Cuda(m), Storage::Cuda(r)) => (m, r),
        _ => return Err(Error::DeviceMismatch { op, lhs: node.x.device(), rhs: crate::Device::Cpu }),
    };
    let x = node.x.detach();
    let (w, want_db) = (node.w.as_ref(), node.b.is_some());
    let (rows, cols) = rows_cols(&x);
    let (be, [xc, gc]) = contiguous_on(op, [&x, g])?;
    let wc = w.map(contiguous).transpose()?;
    if x.dtype() != g.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: x.dtype(), rhs: g.dtype() });
    }
    let (dx, dw, db) = float_dispatch!(op, x.dtype(), T => {
        let mut dx = out_buf::<T>(&be, x.elem_count())?;
        let mut dw = match &wc { Some(_) => Some(out_buf::<T>(&be, cols)?), None => None };
        let mut db = match (&wc, want_db) { (Some(_), true) => Some(out_buf::<T>(&be, cols)?), _ => None };
        let ws = wc.as_ref().map(|c| view::<T>(c, op)).transpose()?;
        let mut dwv = dw.as_mut().map(|s| s.slice_mut(..));
        let mut dbv = db.as_mut().map(|s| s.slice_mut(..));
        be.layer_norm_bwd::<T>(
            &mut dx.slice_mut(..), dwv.as_mut(), dbv.as_mut(), &view(mean, op)?, &view(rstd, op)?, &view(&gc, op)?, &view(&xc, op)?, ws.as_ref(), rows, cols,
        )?;
        drop((dwv, dbv));
        let db = match (db, want_db) {
            (Some(d), _) => Some(CudaStorage::from_slice(d, &be)),
            (None, true) => Some(write_out::<T>(&be, cols, |d| be.reduce_sum_rows::<T>(d, &view(&gc, op)?, rows, cols))?),
            (None, false) => None,
        };
        Ok((CudaStorage::from_slice(dx, &be), dw.map(|d| CudaStorage::from_slice(d, &be)), db))
    })?;
    let mut out = vec![Some(Tensor::from_storage(Storage::Cuda(dx), node.x.shape())?)];
    if let (Some(w), Some(dw)) = (&node.w, dw) {
        out.push(Some(Tensor::from_storage(Storage::Cuda(dw), w.shape())?));
    }
    if let (Some(b), Some(db)) = (&node.b, db) {
        out.push(Some(Tensor::from_storage(Storage::Cuda(db), b.shape())?));
    }
    Ok(out)
}

/// Blocks of `layer_norm_bwd_warp` (4 warps each, at least 8 rows per warp): also a function of the
/// shape only. Up to 1024, to keep enough warps in flight on a large GPU at [B·T, 768].
fn warp_row_parts(rows: usize) -> usize {
    rows.div_ceil(32).clamp(1, 1024)
}

/// The same for `layer_norm_bwd_warp<E>` (it holds two rows and two column sums per lane).
pub(crate) const LN_BWD_WARP_E: [usize; 5] = [8, 16, 24, 32, 48];

impl CudaBackend {
    /// LayerNorm over the last dim of `[rows, cols]`; saves `mean` / `rstd` (`[rows]` f32) when given.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_fwd<T: KernelFloat>(
        &self, out: &mut CudaViewMut<T>, mean: Option<&mut CudaViewMut<f32>>, rstd: Option<&mut CudaViewMut<f32>>,
        inp: &CudaView<T>, weight: Option<&CudaView<T>>, bias: Option<&CudaView<T>>, rows: usize, cols: usize, eps: f32,
    ) -> Result<()> {
        check_len("layer_norm_fwd", inp.len(), rows * cols)?;
        check_len("layer_norm_fwd", out.len(), rows * cols)?;
        for s in [mean.as_ref().map(|m| m.len()), rstd.as_ref().map(|m| m.len())].into_iter().flatten() {
            check_len("layer_norm_fwd", s, rows)?;
        }
        for s in [weight.map(|w| w.len()), bias.map(|w| w.len())].into_iter().flatten() {
            check_len("layer_norm_fwd", s, cols)?;
        }
        if rows * cols == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let mut ptrs = vec![out.device_ptr(stream).0, inp.device_ptr(stream).0];
        ptrs.extend(weight.iter().chain(bias.iter()).map(|v| v.device_ptr(stream).0));
        let e = warp_e::<T>(&ROW_WARP_E, cols, &ptrs);
        let f = self.function(&super::KERNELS, &row_kernel_name::<T>("layer_norm_fwd", e))?;
        let (r, c) = (to_i32("layer_norm_fwd", rows)?, to_i32("layer_norm_fwd", cols)?);
        let mut b = stream.launch_builder(&f);
        b.arg(out);
        b.arg_opt(mean);
        b.arg_opt(rstd);
        b.arg(inp);
        b.arg_opt(weight);
        b.arg_opt(bias);
        b.arg(&r).arg(&c).arg(&eps);
        unsafe { b.launch(if e.is_some() { grid_warp_rows(rows) } else { grid_rows(rows) }) }?;
        Ok(())
    }

    /// LayerNorm backward: writes `dinp`, and `dweight` / `dbias` when `weight` is given
    /// (deterministic two-stage column sums through f32 partials).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_bwd<T: KernelFloat>(
        &self, dinp: &mut CudaViewMut<T>, dweight: Option<&mut CudaViewMut<T>>, dbias: Option<&mut CudaViewMut<T>>,
        mean: &CudaView<f32>, rstd: &CudaView<f32>, dout: &CudaView<T>, inp: &CudaView<T>, weight: Option<&CudaView<T>>,
        rows: usize, cols: usize,
    ) -> Result<()> {
        for len in [dinp.len(), dout.len(), inp.len()] {
            check_len("layer_norm_bwd", len, rows * cols)?;
        }
        check_len("layer_norm_bwd", mean.len(), rows)?;
        check_len("layer_norm_bwd", rstd.len(), rows)?;
        for s in [weight.map(|w| w.len()), dweight.as_ref().map(|w| w.len()), dbias.as_ref().map(|w| w.len())].into_iter().flatten() {
            check_len("layer_norm_bwd", s, cols)?;
        }
        if rows * cols == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let mut ptrs = vec![dinp.device_ptr(stream).0, dout.device_ptr(stream).0, inp.device_ptr(stream).0];
        ptrs.extend(weight.iter().map(|v| v.device_ptr(stream).0));
        // the warp kernel with the fewest elements per lane that holds the row, where it applies
        let per_lane = warp_e::<T>(&LN_BWD_WARP_E, cols, &ptrs);
        let parts = if per_lane.is_some() { warp_row_parts(rows) } else { row_parts(rows) };
        let (r, c, p) = (to_i32("layer_norm_bwd", rows)?, to_i32("layer_norm_bwd", cols)?, parts as i32);
        let mut dw_part = self.alloc::<f32>(parts * cols)?;
        let mut db_part = self.alloc::<f32>(parts * cols)?;
        let smem = match per_lane {
            Some(_) if weight.is_some() => 2 * cols * 4,
            Some(_) => 0,
            None => (2 * cols + 32) * 4,
        } as u32;
        let f = self.function(&super::KERNELS, &row_kernel_name::<T>("layer_norm_bwd", per_lane))?;
        allow_smem(&f, smem)?;
        let mut b = stream.launch_builder(&f);
        b.arg(dinp).arg(&mut *dw_part).arg(&mut *db_part).arg(mean).arg(rstd).arg(dout).arg(inp);
        b.arg_opt(weight);
        b.arg(&r).arg(&c);
        // the warp kernel in blocks of 4 warps: at 122-160 registers (E 24-32) an SM then holds 12-16
        // of its warps where 256-thread blocks would leave 8-16
        let threads = if per_lane.is_some() { 128 } else { BLOCK };
        let cfg = LaunchConfig { grid_dim: (parts as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem };
        unsafe { b.launch(cfg) }?;
        if weight.is_none() || (dweight.is_none() && dbias.is_none()) {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("layer_norm_bwd_reduce_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg_opt(dweight);
        b.arg_opt(dbias);
        b.arg(&*dw_part).arg(&*db_part).arg(&p).arg(&c);
        // 32 columns per block (block_col_sum in kernels/common.cuh)
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::{force_row_kernel, with_row_kernel, RowKernel};
    use half::bf16;

    #[test]
    fn the_backward_warp_kernels_stop_at_48_per_lane() {
        force_row_kernel(None);
        let ok = [256u64, 4096];
        let bwd = |cols| warp_e::<bf16>(&LN_BWD_WARP_E, cols, &ok);
        assert_eq!([bwd(768), bwd(1536), bwd(1544)], [Some(24), Some(48), None]);
        with_row_kernel(Some(RowKernel::Block), || assert_eq!(warp_e::<f32>(&LN_BWD_WARP_E, 768, &ok), None));
    }
}
