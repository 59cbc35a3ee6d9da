//! Sums on CUDA: the adapter of `sum_dims` and the launchers of `reduce.cu` (row sums, row max with
//! argmax, and the deterministic column sums that bias and LayerNorm gradients use).
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{check_len, grid_rows, to_i32, KernelFloat, PushOptArg, BLOCK};
use crate::cuda::ops::{contiguous, float_out, storage_of, view};
use crate::cuda::rows::row_parts;
use crate::cuda::storage::CudaStorage;
use crate::{Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// Sum of `x` over the sorted, deduplicated `dims` (row-major output of the kept dims).
pub(super) fn sum_dims(x: &Tensor, dims: &[usize]) -> Result<CudaStorage> {
    let k = dims.len();
    let b = storage_of("sum", x)?.backend().clone();
    if k > 0 && k < x.rank() && dims[k - 1] == k - 1 && x.elem_count() > 0 {
        // leading dims (bias gradients): deterministic column sums of a contiguous [rows, cols]
        let xc = contiguous(x)?;
        let rows: usize = x.shape()[..k].iter().product();
        let cols = x.elem_count() / rows;
        return float_out!("sum", x.dtype(), &b, cols, |T, out| b.reduce_sum_rows::<T>(out, &view(&xc, "sum")?, rows, cols));
    }
    let (xp, outer, inner) = super::rows_for(x, dims)?;
    let xc = contiguous(&xp)?;
    float_out!("sum", x.dtype(), &b, outer, |T, out| {
        if inner == 0 {
            b.fill::<T>(out, 0.0)
        } else {
            b.reduce_sum_last::<T>(out, &view(&xc, "sum")?, outer, inner)
        }
    })
}

impl CudaBackend {
    /// `out[r] = sum_c inp[r, c]`.
    pub fn reduce_sum_last<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, rows: usize, cols: usize) -> Result<()> {
        check_len("reduce_sum_last", inp.len(), rows * cols)?;
        check_len("reduce_sum_last", out.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("reduce_sum_last_{}", T::SUFFIX))?;
        let (r, c) = (to_i32("reduce_sum_last", rows)?, to_i32("reduce_sum_last", cols)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&r).arg(&c);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }

    /// `out[r] = max_c inp[r, c]` and, when given, the first index of the max.
    pub fn reduce_max_last<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, argmax: Option<&mut CudaViewMut<i64>>, inp: &CudaView<T>, rows: usize, cols: usize) -> Result<()> {
        check_len("reduce_max_last", inp.len(), rows * cols)?;
        check_len("reduce_max_last", out.len(), rows)?;
        if let Some(a) = &argmax {
            check_len("reduce_max_last", a.len(), rows)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("reduce_max_last_{}", T::SUFFIX))?;
        let (r, c) = (to_i32("reduce_max_last", rows)?, to_i32("reduce_max_last", cols)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out);
        b.arg_opt(argmax);
        b.arg(inp).arg(&r).arg(&c);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }

    /// Column sums `out[c] = sum_r inp[r, c]` (e.g. a bias gradient), deterministic.
    pub fn reduce_sum_rows<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, rows: usize, cols: usize) -> Result<()> {
        check_len("reduce_sum_rows", inp.len(), rows * cols)?;
        check_len("reduce_sum_rows", out.len(), cols)?;
        if cols == 0 {
            return Ok(());
        }
        let parts = row_parts(rows);
        let (r, c, p) = (to_i32("reduce_sum_rows", rows)?, to_i32("reduce_sum_rows", cols)?, parts as i32);
        let mut part = self.alloc::<f32>(parts * cols)?;
        let f = self.function(&super::KERNELS, &format!("reduce_sum_rows_partial_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&mut *part).arg(inp).arg(&r).arg(&c);
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, parts as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        let f = self.function(&super::KERNELS, &format!("reduce_sum_rows_finish_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(&*part).arg(&p).arg(&c);
        // 32 columns per block (block_col_sum in kernels/common.cuh)
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
