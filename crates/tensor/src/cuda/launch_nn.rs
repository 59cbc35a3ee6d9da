//! Launchers for gelu.cu, layer_norm.cu, softmax.cu, cross_entropy.cu and reduce.cu.
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{allow_smem, check_len, grid_1d, grid_rows, to_i32, KernelFloat, BLOCK, NULL_PTR};
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

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
        let f = self.function("layer_norm", &format!("layer_norm_fwd_{}", T::SUFFIX))?;
        let (r, c) = (to_i32("layer_norm_fwd", rows)?, to_i32("layer_norm_fwd", cols)?);
        let mut b = self.stream().launch_builder(&f);
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
        unsafe { b.launch(grid_rows(rows)) }?;
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
        let parts = row_parts(rows);
        let (r, c, p) = (to_i32("layer_norm_bwd", rows)?, to_i32("layer_norm_bwd", cols)?, parts as i32);
        let mut dw_part = self.alloc::<f32>(parts * cols)?;
        let mut db_part = self.alloc::<f32>(parts * cols)?;
        let smem = ((2 * cols + 32) * 4) as u32;
        let f = self.function("layer_norm", &format!("layer_norm_bwd_{}", T::SUFFIX))?;
        allow_smem(&f, smem)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(dinp).arg(&mut *dw_part).arg(&mut *db_part).arg(mean).arg(rstd).arg(dout).arg(inp);
        match weight {
            Some(w) => b.arg(w),
            None => b.arg(&NULL_PTR),
        };
        b.arg(&r).arg(&c);
        let cfg = LaunchConfig { grid_dim: (parts as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: smem };
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
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(BLOCK as usize) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
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
        let name = format!("{}softmax_fwd_{}", if log { "log_" } else { "" }, T::SUFFIX);
        let f = self.function("softmax", &name)?;
        let (r, c) = (to_i32("softmax_fwd", rows)?, to_i32("softmax_fwd", cols)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&r).arg(&c);
        unsafe { b.launch(grid_rows(rows)) }?;
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
        let name = format!("{}softmax_bwd_{}", if log { "log_" } else { "" }, T::SUFFIX);
        let f = self.function("softmax", &name)?;
        let (r, c) = (to_i32("softmax_bwd", rows)?, to_i32("softmax_bwd", cols)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dinp).arg(out).arg(dout).arg(&r).arg(&c);
        unsafe { b.launch(grid_rows(rows)) }?;
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
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(BLOCK as usize) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
