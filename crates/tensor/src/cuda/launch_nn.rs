//! Launchers for cross_entropy.cu and reduce.cu.
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{check_len, grid_rows, to_i32, KernelFloat, BLOCK, NULL_PTR};
use super::rows::row_parts;
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

impl CudaBackend {
    /// Per-row cross-entropy losses (0 on `ignore_index` rows) and the saved logsumexp.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_fwd<T: KernelFloat>(
        &self, losses: &mut CudaViewMut<f32>, lse: &mut CudaViewMut<f32>, logits: &CudaView<T>, targets: &CudaView<i64>,
        rows: usize, vocab: usize, ignore_index: i64,
    ) -> Result<()> {
        check_len("cross_entropy_fwd", logits.len(), rows * vocab)?;
        for len in [losses.len(), lse.len(), targets.len()] {
            check_len("cross_entropy_fwd", len, rows)?;
        }
        if rows * vocab == 0 {
            return Ok(());
        }
        let f = self.function("cross_entropy", &format!("cross_entropy_fwd_{}", T::SUFFIX))?;
        let (r, v) = (to_i32("cross_entropy_fwd", rows)?, to_i32("cross_entropy_fwd", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(losses).arg(lse).arg(logits).arg(targets).arg(&r).arg(&v).arg(&ignore_index);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }

    /// `dlogits = dloss * (softmax(logits) - onehot(target))`; `dloss` has `rows` entries, or 1
    /// entry broadcast to every row (e.g. `1 / n_valid` for a mean loss).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_bwd<T: KernelFloat>(
        &self, dlogits: &mut CudaViewMut<T>, lse: &CudaView<f32>, dloss: &CudaView<f32>, logits: &CudaView<T>,
        targets: &CudaView<i64>, rows: usize, vocab: usize, ignore_index: i64,
    ) -> Result<()> {
        check_len("cross_entropy_bwd", dlogits.len(), rows * vocab)?;
        check_len("cross_entropy_bwd", logits.len(), rows * vocab)?;
        check_len("cross_entropy_bwd", lse.len(), rows)?;
        check_len("cross_entropy_bwd", targets.len(), rows)?;
        let stride: i32 = if dloss.len() == 1 { 0 } else { 1 };
        if stride == 1 {
            check_len("cross_entropy_bwd", dloss.len(), rows)?;
        }
        if rows * vocab == 0 {
            return Ok(());
        }
        let f = self.function("cross_entropy", &format!("cross_entropy_bwd_{}", T::SUFFIX))?;
        let (r, v) = (to_i32("cross_entropy_bwd", rows)?, to_i32("cross_entropy_bwd", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dlogits).arg(lse).arg(dloss).arg(logits).arg(targets).arg(&r).arg(&v).arg(&stride).arg(&ignore_index);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }

    /// `out[r] = sum_c inp[r, c]`.
    pub fn reduce_sum_last<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, rows: usize, cols: usize) -> Result<()> {
        check_len("reduce_sum_last", inp.len(), rows * cols)?;
        check_len("reduce_sum_last", out.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("reduce", &format!("reduce_sum_last_{}", T::SUFFIX))?;
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
        let f = self.function("reduce", &format!("reduce_max_last_{}", T::SUFFIX))?;
        let (r, c) = (to_i32("reduce_max_last", rows)?, to_i32("reduce_max_last", cols)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out);
        match argmax {
            Some(a) => b.arg(a),
            None => b.arg(&NULL_PTR),
        };
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
        let f = self.function("reduce", &format!("reduce_sum_rows_partial_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&mut *part).arg(inp).arg(&r).arg(&c);
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, parts as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        let f = self.function("reduce", &format!("reduce_sum_rows_finish_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(&*part).arg(&p).arg(&c);
        // 32 columns per block (block_col_sum in kernels/common.cuh)
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
