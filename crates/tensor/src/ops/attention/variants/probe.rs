//! The wgmma operand probe: a diagnostic of the layouts attention_wgmma.cu and attention_tma.cu
//! give their warpgroup MMAs, for the GPU tests (`gpu_ops`). Launcher: `probe_launch.rs`.
use crate::{Error, Result};

/// Diagnostic for the Hopper attention kernels: `a [64, 16] · b [16, 64]` (bf16 tensors on one sm_90
/// CUDA device) computed by a single wgmma with its operands staged in operand form `form` (0: both
/// K-major from shared memory, as S = Q K^T; 1: A from registers, B MN-major, as O += P V; 2: both
/// MN-major, as dQ = dS K; 3 and 4: forms 0 and 1 through 128-byte-swizzle descriptors, as
/// attention_tma.cu reads its TMA tiles), as an f32 [64, 64] tensor. A wrong result names the
/// misread layout.
pub fn wgmma_probe(a: &crate::Tensor, b: &crate::Tensor, form: u32) -> Result<crate::Tensor> {
    let op = "wgmma_probe";
    if a.shape() != [64, 16] || b.shape() != [16, 64] {
        return Err(Error::msg(format!("{op}: expected a [64, 16] and b [16, 64], got {:?} and {:?}", a.shape(), b.shape())));
    }
    if a.dtype() != crate::DType::BF16 || b.dtype() != crate::DType::BF16 {
        return Err(Error::msg(format!("{op}: expected bf16 inputs, got {} and {}", a.dtype(), b.dtype())));
    }
    let dev = a.device();
    if b.device() != dev {
        return Err(Error::DeviceMismatch { op, lhs: dev, rhs: b.device() });
    }
    let arch = crate::cuda::device_arch(dev).ok_or_else(|| Error::msg(format!("{op}: needs a CUDA tensor, got {dev:?}")))?;
    if crate::cuda::kernels::arch_number(&arch) != 90 {
        return Err(Error::msg(format!("{op}: wgmma needs an sm_90 GPU, this one is {arch}")));
    }
    #[cfg(feature = "cuda")]
    {
        let s = super::probe_launch::run(a, b, form as i32)?;
        crate::Tensor::from_storage(crate::storage::Storage::Cuda(s), &[64, 64])
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = form;
        Err(Error::CudaUnavailable(format!("{op}: kiln was built without the cuda feature")))
    }
}
