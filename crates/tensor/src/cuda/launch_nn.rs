//! Launchers for gelu.cu, layer_norm.cu, softmax.cu, cross_entropy.cu and reduce.cu.
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{allow_smem, check_len, grid_1d, grid_rows, to_i32, KernelFloat, BLOCK, NULL_PTR};
use super::{row_kernel_override, RowKernel};
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};

/// Which GELU: the exact erf form (BERT `gelu`) or the tanh approximation (GPT-2 `gelu_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluApprox {
    Erf = 0,
    Tanh = 1,
}

/// Number of row-blocks whose partial column sums layer_norm_bwd / reduce_sum_rows write: a
/// function of the shape only, so results do not depend on the GPU model.
fn row_parts(rows: usize) -> usize {
    rows.div_ceil(32).clamp(1, 512)
}

/// Blocks of `layer_norm_bwd_warp` (4 warps each, at least 8 rows per warp): also a function of the
/// shape only. Up to 1024, to keep enough warps in flight on a large GPU at [B·T, 768].
fn warp_row_parts(rows: usize) -> usize {
    rows.div_ceil(32).clamp(1, 1024)
}

/// Elements per lane the `*_warp<E>` forward and softmax kernels exist for (`KILN_ROW_E` in
/// kernels/common.cuh): rows of up to 32 E elements.
const ROW_WARP_E: [usize; 6] = [8, 16, 24, 32, 48, 64];
/// The same for `layer_norm_bwd_warp<E>` (it holds two rows and two column sums per lane).
const LN_BWD_WARP_E: [usize; 5] = [8, 16, 24, 32, 48];

/// Whether the warp-per-row kernels take rows of `cols` elements of `T` at these addresses, with at
/// most `per_lane` elements per lane (see [`RowKernel::Warp`]).
fn warp_rows<T>(cols: usize, per_lane: usize, ptrs: &[u64]) -> bool {
    let pack = 16 / std::mem::size_of::<T>();
    row_kernel_override() != Some(RowKernel::Block) && cols.is_multiple_of(pack) && cols <= 32 * per_lane && ptrs.iter().all(|p| p % 16 == 0)
}

/// The `_warp<E>` kernel (E out of `es`) for rows of `cols` elements of `T` at these addresses: the
/// fewest elements per lane that hold the row (fewer registers, more warps per SM), or `None`
/// where the block kernel must run.
fn warp_e<T>(es: &[usize], cols: usize, ptrs: &[u64]) -> Option<usize> {
    es.iter().copied().find(|&e| 32 * e >= cols).filter(|&e| warp_rows::<T>(cols, e, ptrs))
}

/// A row kernel's name: `{base}_{T}` or `{base}_warp{E}_{T}`.
fn row_kernel_name<T: KernelFloat>(base: &str, e: Option<usize>) -> String {
    match e {
        Some(e) => format!("{base}_warp{e}_{}", T::SUFFIX),
        None => format!("{base}_{}", T::SUFFIX),
    }
}

/// The launch of the `*_warp` kernels: one warp per row, 8 rows per block.
fn grid_warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

impl CudaBackend {
    /// `out = gelu(inp)` over contiguous buffers.
    pub fn gelu_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, approx: GeluApprox) -> Result<()> {
        let n = inp.len();
        check_len("gelu_fwd", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("gelu", &format!("gelu_fwd_{}", T::SUFFIX))?;
        let (n64, a) = (n as i64, approx as i32);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n64).arg(&a);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }

    /// `dinp = dout * gelu'(inp)`.
    pub fn gelu_bwd<T: KernelFloat>(&self, dinp: &mut CudaViewMut<T>, inp: &CudaView<T>, dout: &CudaView<T>, approx: GeluApprox) -> Result<()> {
        let n = inp.len();
        check_len("gelu_bwd", dinp.len(), n)?;
        check_len("gelu_bwd", dout.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("gelu", &format!("gelu_bwd_{}", T::SUFFIX))?;
        let (n64, a) = (n as i64, approx as i32);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dinp).arg(inp).arg(dout).arg(&n64).arg(&a);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }

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
        let f = self.function("layer_norm", &row_kernel_name::<T>("layer_norm_fwd", e))?;
        let (r, c) = (to_i32("layer_norm_fwd", rows)?, to_i32("layer_norm_fwd", cols)?);
        let mut b = stream.launch_builder(&f);
        b.arg(out);
        match mean {
            Some(m) => b.arg(m),
            None => b.arg(&NULL_PTR),
        };
        match rstd {
            Some(m) => b.arg(m),
            None => b.arg(&NULL_PTR),
        };
        b.arg(inp);
        match weight {
            Some(w) => b.arg(w),
            None => b.arg(&NULL_PTR),
        };
        match bias {
            Some(w) => b.arg(w),
            None => b.arg(&NULL_PTR),
        };
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
        let f = self.function("layer_norm", &row_kernel_name::<T>("layer_norm_bwd", per_lane))?;
        allow_smem(&f, smem)?;
        let mut b = stream.launch_builder(&f);
        b.arg(dinp).arg(&mut *dw_part).arg(&mut *db_part).arg(mean).arg(rstd).arg(dout).arg(inp);
        match weight {
            Some(w) => b.arg(w),
            None => b.arg(&NULL_PTR),
        };
        b.arg(&r).arg(&c);
        // the warp kernel in blocks of 4 warps: at 122-160 registers (E 24-32) an SM then holds 12-16
        // of its warps where 256-thread blocks would leave 8-16
        let threads = if per_lane.is_some() { 128 } else { BLOCK };
        let cfg = LaunchConfig { grid_dim: (parts as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem };
        unsafe { b.launch(cfg) }?;
        if weight.is_none() || (dweight.is_none() && dbias.is_none()) {
            return Ok(());
        }
        let f = self.function("layer_norm", &format!("layer_norm_bwd_reduce_{}", T::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        match dweight {
            Some(w) => b.arg(w),
            None => b.arg(&NULL_PTR),
        };
        match dbias {
            Some(w) => b.arg(w),
            None => b.arg(&NULL_PTR),
        };
        b.arg(&*dw_part).arg(&*db_part).arg(&p).arg(&c);
        // 32 columns per block (block_col_sum in kernels/common.cuh)
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Softmax (or log_softmax when `log`) over the last dim of `[rows, cols]`.
    pub fn softmax_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, rows: usize, cols: usize, log: bool) -> Result<()> {
        check_len("softmax_fwd", inp.len(), rows * cols)?;
        check_len("softmax_fwd", out.len(), rows * cols)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let e = warp_e::<T>(&ROW_WARP_E, cols, &[out.device_ptr(stream).0, inp.device_ptr(stream).0]);
        let f = self.function("softmax", &row_kernel_name::<T>(if log { "log_softmax_fwd" } else { "softmax_fwd" }, e))?;
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
        let f = self.function("softmax", &row_kernel_name::<T>(if log { "log_softmax_bwd" } else { "softmax_bwd" }, e))?;
        let (r, c) = (to_i32("softmax_bwd", rows)?, to_i32("softmax_bwd", cols)?);
        let mut b = stream.launch_builder(&f);
        b.arg(dinp).arg(out).arg(dout).arg(&r).arg(&c);
        unsafe { b.launch(if e.is_some() { grid_warp_rows(rows) } else { grid_rows(rows) }) }?;
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::{force_row_kernel, with_row_kernel};
    use half::bf16;

    #[test]
    fn warp_row_kernels_apply_where_their_contract_holds() {
        force_row_kernel(None);
        let ok = [256u64, 4096];
        // whole 16-byte packs, 16-byte aligned rows, the fewest elements per lane that hold the row
        let fwd = |cols| warp_e::<bf16>(&ROW_WARP_E, cols, &ok);
        assert_eq!([fwd(8), fwd(256), fwd(264), fwd(768), fwd(1024), fwd(1536), fwd(2048), fwd(2056)], [Some(8), Some(8), Some(16), Some(24), Some(32), Some(48), Some(64), None]);
        assert_eq!(fwd(1030), None, "1030 is not whole packs of 8");
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 1028, &ok), Some(48));
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 1030, &ok), None, "1030 f32 is not whole packs of 4");
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 768, &[256, 4100]), None, "an unaligned row pointer");
        // the LayerNorm backward stops at 48 per lane
        let bwd = |cols| warp_e::<bf16>(&LN_BWD_WARP_E, cols, &ok);
        assert_eq!([bwd(768), bwd(1536), bwd(1544)], [Some(24), Some(48), None]);
        assert_eq!(row_kernel_name::<bf16>("layer_norm_bwd", Some(24)), "layer_norm_bwd_warp24_bf16");
        assert_eq!(row_kernel_name::<f32>("log_softmax_fwd", None), "log_softmax_fwd_f32");
        // the override, and with_row_kernel restoring the previous choice
        with_row_kernel(Some(RowKernel::Block), || {
            assert_eq!(warp_e::<f32>(&ROW_WARP_E, 768, &ok), None);
            assert_eq!(warp_e::<f32>(&LN_BWD_WARP_E, 768, &ok), None);
        });
        assert_eq!(row_kernel_override(), None);
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 768, &ok), Some(24));
    }
}
