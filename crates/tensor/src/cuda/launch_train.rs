//! Launchers for embedding.cu and adamw.cu.
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{allow_smem, check_len, grid_1d, to_i32, KernelFloat, BLOCK};
use super::AdamWScalars;
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// Shared memory budget the embedding backward aims for (fits the default 48 KiB).
const EMB_SMEM: usize = 46 * 1024;

impl CudaBackend {
    /// `out[i, :] = weight[ids[i], :]` for `weight: [vocab, dim]`, `out: [ids.len(), dim]`.
    pub fn embedding_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, weight: &CudaView<T>, ids: &CudaView<i64>, dim: usize, vocab: usize) -> Result<()> {
        let n = ids.len();
        check_len("embedding_fwd", weight.len(), vocab * dim)?;
        check_len("embedding_fwd", out.len(), n * dim)?;
        if n * dim == 0 {
            return Ok(());
        }
        let f = self.function("embedding", &format!("embedding_fwd_{}", T::SUFFIX))?;
        let (ni, d, v) = (to_i32("embedding_fwd", n)?, to_i32("embedding_fwd", dim)?, to_i32("embedding_fwd", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(weight).arg(ids).arg(&ni).arg(&d).arg(&v);
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `dweight[v, :] = sum_{i: ids[i] == v} dout[i, :]` — deterministic (no atomics), written.
    pub fn embedding_bwd<T: KernelFloat>(&self, dweight: &mut CudaViewMut<T>, dout: &CudaView<T>, ids: &CudaView<i64>, dim: usize, vocab: usize) -> Result<()> {
        let n = ids.len();
        check_len("embedding_bwd", dweight.len(), vocab * dim)?;
        check_len("embedding_bwd", dout.len(), n * dim)?;
        if vocab * dim == 0 {
            return Ok(());
        }
        let fixed = 8 * BLOCK as usize + 4 * 32 + 4;
        let rows_per_block = (EMB_SMEM.saturating_sub(fixed) / (4 * dim)).clamp(1, 32);
        let smem = (4 * ((rows_per_block * dim).div_ceil(2) * 2) + fixed) as u32;
        let f = self.function("embedding", &format!("embedding_bwd_{}", T::SUFFIX))?;
        allow_smem(&f, smem)?;
        let (ni, d, v, r) = (to_i32("embedding_bwd", n)?, to_i32("embedding_bwd", dim)?, to_i32("embedding_bwd", vocab)?, rows_per_block as i32);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dweight).arg(dout).arg(ids).arg(&ni).arg(&d).arg(&v).arg(&r);
        let cfg = LaunchConfig { grid_dim: (vocab.div_ceil(rows_per_block) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: smem };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

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
        let f = self.function("adamw", &format!("adamw_step_{}", G::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(param_out).arg(m_out).arg(v_out).arg(param).arg(m).arg(v).arg(grad).arg(&n64);
        b.arg(&s.decay).arg(&s.w1).arg(&s.beta2).arg(&s.one_minus_beta2).arg(&s.bc2_sqrt).arg(&s.eps).arg(&s.neg_step_size);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }
}
