//! Launchers for embedding.cu, dropout.cu and adamw.cu.
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{allow_smem, check_len, grid_1d, to_i32, KernelFloat, BLOCK, NULL_PTR};
use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// Hyper-parameters of one AdamW step (PyTorch semantics; `step` counts from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
    /// Multiplies the gradient first (e.g. the clip-by-global-norm factor; 1.0 otherwise).
    pub grad_scale: f32,
}

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

    /// Inverted dropout with the counter-based RNG of docs/KERNELS.md (no mask is stored).
    pub fn dropout_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, p: f32, seed: u64) -> Result<()> {
        self.dropout_launch("dropout_fwd", out, inp, p, seed)
    }

    /// Dropout backward: the same mask and scale applied to `dout`.
    pub fn dropout_bwd<T: KernelFloat>(&self, dinp: &mut CudaViewMut<T>, dout: &CudaView<T>, p: f32, seed: u64) -> Result<()> {
        self.dropout_launch("dropout_bwd", dinp, dout, p, seed)
    }

    fn dropout_launch<T: KernelFloat>(&self, op: &'static str, out: &mut CudaViewMut<T>, inp: &CudaView<T>, p: f32, seed: u64) -> Result<()> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::msg(format!("{op}: probability {p} is outside [0, 1]")));
        }
        let n = inp.len();
        check_len(op, out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function("dropout", &format!("{op}_{}", T::SUFFIX))?;
        let n64 = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n64).arg(&p).arg(&seed);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }

    /// One fused AdamW step on f32 master weights `param` with moments `m`, `v`; `grad` (and the
    /// optional working copy `param_copy`, updated to the new weights) have dtype `G`.
    pub fn adamw_step<G: KernelFloat>(
        &self, param: &mut CudaViewMut<f32>, param_copy: Option<&mut CudaViewMut<G>>, m: &mut CudaViewMut<f32>,
        v: &mut CudaViewMut<f32>, grad: &CudaView<G>, h: &AdamWStep,
    ) -> Result<()> {
        let n = param.len();
        for len in [m.len(), v.len(), grad.len()] {
            check_len("adamw_step", len, n)?;
        }
        if let Some(c) = &param_copy {
            check_len("adamw_step", c.len(), n)?;
        }
        if h.step == 0 {
            return Err(Error::msg("adamw_step: step counts from 1"));
        }
        if n == 0 {
            return Ok(());
        }
        let t = h.step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (h.beta1 as f64).powi(t);
        let bc2 = 1.0 - (h.beta2 as f64).powi(t);
        let (bc1, bc2, n64) = (bc1 as f32, bc2 as f32, n as i64);
        let f = self.function("adamw", &format!("adamw_step_{}", G::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(param);
        match param_copy {
            Some(c) => b.arg(c),
            None => b.arg(&NULL_PTR),
        };
        b.arg(m).arg(v).arg(grad).arg(&n64);
        b.arg(&h.lr).arg(&h.beta1).arg(&h.beta2).arg(&h.eps).arg(&h.weight_decay).arg(&bc1).arg(&bc2).arg(&h.grad_scale);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }
}
