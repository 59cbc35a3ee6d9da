//! The launcher of adamw.cu.
//! Conventions: see launch.rs (outputs → saved stats → inputs → dims; lengths checked; async).
use super::device::CudaBackend;
use super::launch::{check_len, grid_1d, KernelFloat};
use super::AdamWScalars;
use crate::Result;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

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
        let f = self.function("adamw", &format!("adamw_step_{}", G::SUFFIX))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(param_out).arg(m_out).arg(v_out).arg(param).arg(m).arg(v).arg(grad).arg(&n64);
        b.arg(&s.decay).arg(&s.w1).arg(&s.beta2).arg(&s.one_minus_beta2).arg(&s.bc2_sqrt).arg(&s.eps).arg(&s.neg_step_size);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }
}
