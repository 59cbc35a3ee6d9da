//! The wgmma probe's adapter and launcher (attention_wgmma.cu's `wgmma_probe_bf16`).
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::check_len;
use crate::cuda::ops::contiguous;
use crate::cuda::storage::{out_buf, CudaStorage};
use crate::{Error, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// See [`super::wgmma_probe`]: `a` [64, 16] and `b` [16, 64] bf16 CUDA tensors (any layout).
pub(super) fn run(a: &Tensor, b: &Tensor, form: i32) -> Result<CudaStorage> {
    let (ca, cb) = (contiguous(a)?, contiguous(b)?);
    let be = ca.backend().clone();
    let mut out = out_buf::<f32>(&be, 64 * 64)?;
    be.wgmma_probe(&mut out.slice_mut(..), &ca.slice::<bf16>("wgmma_probe")?.slice(..), &cb.slice::<bf16>("wgmma_probe")?.slice(..), form)?;
    Ok(CudaStorage::from_slice(out, &be))
}

impl CudaBackend {
    /// Diagnostic for attention_wgmma.cu's operand layouts (sm_90 only): `d [64, 64] = a [64, 16] ·
    /// b [16, 64]` (bf16 in, f32 out, row-major) through one wgmma in operand form `form`: 0 = both
    /// operands K-major from shared memory (S = Q K^T), 1 = A from registers and B MN-major (O +=
    /// P V), 2 = both MN-major (dQ = dS K). See `wgmma_probe_bf16` in the kernel file.
    pub fn wgmma_probe(&self, d: &mut CudaViewMut<f32>, a: &CudaView<half::bf16>, b: &CudaView<half::bf16>, form: i32) -> Result<()> {
        let op = "wgmma_probe";
        check_len(op, d.len(), 64 * 64)?;
        check_len(op, a.len(), 64 * 16)?;
        check_len(op, b.len(), 16 * 64)?;
        if !(0..5).contains(&form) {
            return Err(Error::msg(format!("{op}: operand form {form} is not 0 to 4")));
        }
        let f = self.function(&crate::cuda::kernels::ATTENTION_WGMMA, "wgmma_probe_bf16")?;
        let mut lb = self.stream().launch_builder(&f);
        lb.arg(d).arg(a).arg(b).arg(&form);
        unsafe { lb.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 17 * 1024 }) }?;
        Ok(())
    }
}
