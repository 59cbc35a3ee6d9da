//! Softmax and log_softmax on CUDA: the adapter and the launchers of `softmax.cu` (one warp per
//! row where the row is whole aligned 16-byte packs of at most 2048 elements, a block per row
//! elsewhere: [`crate::cuda::RowKernel`]). The backward reads the saved output.
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{check_len, grid_rows, to_i32, KernelFloat};
use crate::cuda::ops::{contiguous_on, float_out, rows_cols, view};
use crate::cuda::rows::{grid_warp_rows, row_kernel_name, warp_e, ROW_WARP_E};
use crate::storage::Storage;
use crate::{Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, PushKernelArg};

/// (log-)softmax over the last dim.
pub(super) fn forward(x: &Tensor, log: bool) -> Result<Storage> {
    let (b, [c]) = contiguous_on("softmax", [x])?;
    let (rows, cols) = rows_cols(x);
    float_out!("softmax", x.dtype(), &b, x.elem_count(), |T, out| b.softmax_fwd::<T>(out, &view(&c, "softmax")?, rows, cols, log)).map(Storage::Cuda)
}

/// (log-)softmax backward from the saved output `y` (fused kernel).
pub(super) fn backward(y: &Tensor, g: &Tensor, log: bool) -> Result<Storage> {
    let op = "softmax_bwd";
    let (b, [yc, gc]) = contiguous_on(op, [y, g])?;
    let (rows, cols) = rows_cols(y);
    float_out!(op, y.dtype(), &b, y.elem_count(), |T, out| b.softmax_bwd::<T>(out, &view(&yc, op)?, &view(&gc, op)?, rows, cols, log)).map(Storage::Cuda)
}

impl CudaBackend {
    /// Softmax (or log_softmax when `log`) over the last dim of `[rows, cols]`.
    pub fn softmax_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, rows: usize, cols: usize, log: bool) -> Result<()> {
        check_len("softmax_fwd", inp.len(), rows * cols)?;
        check_len("softmax_fwd", out.len(), rows * cols)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let e = warp_e::<T>(&ROW_WARP_E, cols, &[out.device_ptr(stream).0, inp.device_ptr(stream).0]);
        let f = self.function(&super::KERNELS, &row_kernel_name::<T>(if log { "log_softmax_fwd" } else { "softmax_fwd" }, e))?;
        let (r, c) = (to_i32("softmax_fwd", rows)?, to_i32("softmax_fwd", cols)?);
        let mut b = stream.launch_builder(&f);
        b.arg(out).arg(inp).arg(&r).arg(&c);
        unsafe { b.launch(if e.is_some() { grid_warp_rows(rows) } else { grid_rows(rows) }) }?;
        Ok(())
    }

    /// Softmax / log_softmax backward from the saved forward output `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_bwd<T: KernelFloat>(&self, dinp: &mut CudaViewMut<T>, out: &CudaView<T>, dout: &CudaView<T>, rows: usize, cols: usize, log: bool) -> Result<()> {
        for len in [dinp.len(), out.len(), dout.len()] {
            check_len("softmax_bwd", len, rows * cols)?;
        }
        if rows * cols == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let ptrs = [dinp.device_ptr(stream).0, out.device_ptr(stream).0, dout.device_ptr(stream).0];
        let e = warp_e::<T>(&ROW_WARP_E, cols, &ptrs);
        let f = self.function(&super::KERNELS, &row_kernel_name::<T>(if log { "log_softmax_bwd" } else { "softmax_bwd" }, e))?;
        let (r, c) = (to_i32("softmax_bwd", rows)?, to_i32("softmax_bwd", cols)?);
        let mut b = stream.launch_builder(&f);
        b.arg(dinp).arg(out).arg(dout).arg(&r).arg(&c);
        unsafe { b.launch(if e.is_some() { grid_warp_rows(rows) } else { grid_rows(rows) }) }?;
        Ok(())
    }
}
