//! Softmax and log-softmax over the last dim, numerically stable (max-subtracted), with fused
//! backward kernels that use the saved output. The CPU kernels are [`cpu`]; the CUDA half is
//! `cuda.rs` (adapter and launchers) with `softmax.cu` beside it.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::{Result, Tensor};
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`softmax.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "softmax" / "softmax", ALL_FLOATS, ["softmax_fwd", "softmax_bwd", "log_softmax_fwd", "log_softmax_bwd", "softmax_fwd_warp8", "softmax_bwd_warp8", "log_softmax_fwd_warp8", "log_softmax_bwd_warp8", "softmax_fwd_warp16", "softmax_bwd_warp16", "log_softmax_fwd_warp16", "log_softmax_bwd_warp16", "softmax_fwd_warp24", "softmax_bwd_warp24", "log_softmax_fwd_warp24", "log_softmax_bwd_warp24", "softmax_fwd_warp32", "softmax_bwd_warp32", "log_softmax_fwd_warp32", "log_softmax_bwd_warp32", "softmax_fwd_warp48", "softmax_bwd_warp48", "log_softmax_fwd_warp48", "log_softmax_bwd_warp48", "softmax_fwd_warp64", "softmax_bwd_warp64", "log_softmax_fwd_warp64", "log_softmax_bwd_warp64"]);


pub(crate) fn name(log: bool) -> &'static str {
    if log {
        "log_softmax"
    } else {
        "softmax"
    }
}

struct SoftmaxBackward {
    input: Tensor,
    /// The output in the compute dtype (f32 or f64), without history.
    y: Tensor,
    log: bool,
    /// On CUDA: the forward's row-kernel override, kept for the backward.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: Option<crate::cuda::RowKernel>,
}

impl BackwardOp for SoftmaxBackward {
    backward_io!(|s| name(s.log), [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (y, log) = (&self.y, self.log);
        let dx = on_device!(y,
            cuda => crate::cuda::with_row_kernel(self.kernel, || cuda::backward(y, g, log))?,
            cpu => cpu::backward(y, g, log, self.input.dtype())?,
        );
        Ok(vec![Some(Tensor::from_storage(dx, self.input.shape())?)])
    }
}

fn softmax_impl(x: &Tensor, log: bool) -> Result<Tensor> {
    x.check_float(name(log))?;
    let (out, saved, kernel) = on_device!(x,
        cuda => {
            // the kernels compute in f32 and the backward reads the saved output in x's dtype
            let out = Tensor::from_storage(cuda::forward(x, log)?, x.shape())?;
            let y = out.detach();
            (out, Some(y), crate::cuda::row_kernel_override())
        },
        cpu => {
            let (out, saved) = cpu::forward(x, log)?;
            (out, saved, None)
        },
    );
    Ok(out.with_history(&[x], || node(SoftmaxBackward { input: x.clone(), y: saved.expect("recorded only with grad"), log, kernel })))
}

impl Tensor {
    /// Softmax over the last dim: `y = e^(x - max) / Σ e^(x - max)` per row. Any rank (a 0-d tensor
    /// is one row); float dtypes (bf16/f16 computed in f32). `-inf` entries (masks) get 0; a row
    /// that is entirely `-inf` gives NaN, as in PyTorch. Differentiable (fused backward
    /// `dx = y·(dy - Σ dy·y)`). Errors: integer dtype.
    pub fn softmax_last_dim(&self) -> Result<Tensor> {
        let _range = crate::nvtx::range("softmax");
        softmax_impl(self, false)
    }

    /// Log-softmax over the last dim: `y = x - max - ln Σ e^(x - max)` per row. Same shapes, dtypes
    /// and `-inf` behaviour as [`Tensor::softmax_last_dim`] (masked entries give `-inf`).
    /// Differentiable (fused backward `dx = dy - softmax(x)·Σ dy`). Errors: integer dtype.
    pub fn log_softmax_last_dim(&self) -> Result<Tensor> {
        softmax_impl(self, true)
    }
}

/// Softmax over the last dim composed from primitive ops (max, sub, exp, sum, div), as an unfused
/// engine runs it: the reference of `kiln bench`'s `composed` variant. Differentiable through those
/// ops (the max is a constant shift, detached).
pub fn composed(x: &Tensor) -> Result<Tensor> {
    let e = x.sub(&x.max(-1, true)?.detach())?.exp()?;
    e.div(&e.sum(-1, true)?)
}

/// The bench's and the generic tests' view (see [`super::RowOp`]).
pub const ROW_OP: super::RowOp = super::RowOp {
    name: "softmax",
    params: 0,
    fused: |t| t[0].softmax_last_dim(),
    composed: Some(|t| composed(&t[0])),
    bytes: super::elementwise_bytes,
    row_kernels: true,
    torch: "torch.softmax(x, -1)",
};
