//! RMSNorm over the last dim (T5, LLaMA; Zhang & Sennrich 2019) with an optional elementwise weight:
//! per row `y = x·rstd·weight`, `rstd = 1/√(mean(x²) + eps)` (no centring, no bias). The forward
//! saves `rstd` per row; the fused backward computes dx and dweight in one pass over the rows
//! (deterministic column sums). The CPU half is [`cpu`], the CUDA half `cuda.rs` with its kernels in
//! `rms_norm.cu` beside them (emulator test: `rms_norm_emu.cpp`).
use crate::autograd::{backward_io, node, BackwardOp};
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};
use crate::storage::Storage;
use crate::{Result, Tensor};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

const OP: &str = "rms_norm";

/// The CUDA kernels of this op (`rms_norm.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "rms_norm" / "rms_norm", ALL_FLOATS, ["rms_norm_fwd", "rms_norm_bwd", "rms_norm_bwd_reduce"]);

/// The one autograd node: the saved `rstd`'s storage says which half runs.
struct RmsNormBackward {
    x: Tensor,
    w: Option<Tensor>,
    /// Per-row rstd: the compute dtype on the CPU, f32 on CUDA.
    rstd: Storage,
}

impl BackwardOp for RmsNormBackward {
    backward_io!(|s| OP, [s.x], opt [s.w]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match &self.rstd {
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => cuda::backward(self, g),
            _ => cpu::backward(self, g),
        }
    }
}

impl Tensor {
    /// RMSNorm over the last dim: per row `y = x / √(mean(x²) + eps) · weight` (as
    /// `torch.nn.functional.rms_norm` and transformers' T5/LLaMA norms). `weight` is optional and
    /// must have shape `[D]` (`D` = last dim) and `self`'s dtype and device. Float dtypes; bf16/f16
    /// are computed in f32. Differentiable in `self` and `weight` with one fused backward (on CUDA
    /// the composed ops unless `KILN_RMS_NORM_KERNEL=1`: see [`cuda_kernels_enabled`]).
    /// Errors: integer dtype, rank 0, a weight shape other than `[D]`, dtype or device mismatch,
    /// `eps` negative or not finite.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let _range = crate::nvtx::range(OP);
        super::check_norm_args(OP, self, &[weight], eps)?;
        if self.device().is_cuda() && !cuda_kernels_enabled() {
            return composed(self, weight, eps);
        }
        let (y, rstd) = on_device!(self, cuda => cuda::forward(self, weight, eps)?, cpu => cpu::forward(self, weight, eps)?);
        let inputs: Vec<&Tensor> = [Some(self), weight].into_iter().flatten().collect();
        Ok(y.with_history(&inputs, || node(RmsNormBackward { x: self.clone(), w: weight.cloned(), rstd })))
    }
}

/// Whether RMSNorm on a CUDA tensor runs `rms_norm.cu` (`KILN_RMS_NORM_KERNEL=1`). Off by default:
/// the kernels have passed the CPU emulator and NVRTC but not yet a GPU (docs/GPU-LOG.md item 16), so
/// until then CUDA tensors take the composed ops ([`composed`]), each with its GPU-checked kernel.
pub fn cuda_kernels_enabled() -> bool {
    std::env::var("KILN_RMS_NORM_KERNEL").is_ok_and(|v| v == "1")
}

/// RMSNorm composed from primitive ops (mul, mean, add, sqrt, recip), as an unfused engine runs it:
/// the reference [`Tensor::rms_norm`] is tested and benchmarked against.
pub fn composed(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let y = x.mul(&x.mul(x)?.mean(-1, true)?.add_scalar(eps)?.sqrt()?.recip()?)?;
    match weight {
        Some(w) => y.mul(w),
        None => Ok(y),
    }
}

/// The bench's and the generic tests' view (see [`super::RowOp`]): `x`, `weight`, eps 1e-6.
pub const ROW_OP: super::RowOp = super::RowOp {
    name: OP,
    params: 1,
    fused: |t| t[0].rms_norm(Some(&t[1]), 1e-6),
    composed: Some(|t| composed(&t[0], Some(&t[1]), 1e-6)),
    // fwd: x, w read; y written, rstd (f32) saved. bwd: dy, x, rstd, w read; dx, dw written.
    bytes: |fwd, r, d, e| if fwd { (2 * r * d + d) * e + r * 4 } else { (3 * r * d + 2 * d) * e + r * 4 },
    row_kernels: false,
    torch: "torch.nn.functional.rms_norm(x, (d,), p[0], 1e-6)",
};
