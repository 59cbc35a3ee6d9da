//! One fused AdamW step: the CPU element loop over f32 slices ([`adamw_update`], `cpu.rs`) and, for
//! an f32 parameter on a CUDA device, one kernel with the same bits ([`adamw_step`]: `cuda.rs` with
//! `adamw.cu` beside it). `kiln-model`'s optimizer calls them; the bookkeeping (moments, steps,
//! no-decay parameters) is its own.
use crate::Result;
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`adamw.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "adamw" / "adamw", ALL_FLOATS, ["adamw_step"]);

pub use cpu::adamw_update;

/// The per-step scalars of one AdamW update, in f32 as kiln's CPU loop uses them (PyTorch's
/// `torch.optim.AdamW` single-tensor order): `p = p·decay`, `m = lerp(m, g, w1)`,
/// `v = v·beta2 + (one_minus_beta2·g)·g`, `p = p + (neg_step_size·m) / (√v / bc2_sqrt + eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// `1 − lr·weight_decay`; exactly 1 for no decay.
    pub decay: f32,
    /// `1 − beta1`.
    pub w1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `√(1 − beta2ᵗ)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
    /// `−lr / (1 − beta1ᵗ)`.
    pub neg_step_size: f32,
}

/// One AdamW step on the device for an f32 CUDA parameter: returns the new parameter and moments
/// `(param, m, v)` (f32, `param`'s shape for the first, flat for the moments), the same bits as
/// kiln's CPU loop gives for the same inputs. `grad` may be f32, bf16 or f16; `m`, `v` are f32 with
/// `param`'s element count. Errors on other dtypes, sizes or devices, and without CUDA.
pub fn adamw_step(param: &crate::Tensor, grad: &crate::Tensor, m: &crate::Tensor, v: &crate::Tensor, s: &AdamWScalars) -> Result<(crate::Tensor, crate::Tensor, crate::Tensor)> {
    #[cfg(feature = "cuda")]
    {
        let (p, mo, vo) = cuda::adamw(param, grad, m, v, s)?;
        use crate::storage::Storage;
        let n = m.elem_count();
        Ok((crate::Tensor::from_storage(Storage::Cuda(p), param.shape())?, crate::Tensor::from_storage(Storage::Cuda(mo), &[n])?, crate::Tensor::from_storage(Storage::Cuda(vo), &[n])?))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (param, grad, m, v, s);
        Err(crate::Error::CudaUnavailable("adamw_step: kiln was built without the cuda feature".into()))
    }
}
