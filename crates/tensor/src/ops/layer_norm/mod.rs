//! LayerNorm over the last dim with optional elementwise weight and bias. The forward saves the
//! per-row mean and rstd; the fused backward computes dx, dweight and dbias in one kernel
//! (deterministic reduction over rows). The CPU half is [`cpu`], the CUDA half `cuda.rs` (adapter
//! and launchers) with its kernels in `layer_norm.cu` beside them.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::cuda::RowKernel;
use crate::storage::Storage;
use crate::{Result, Tensor};
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`layer_norm.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "layer_norm" / "layer_norm", ALL_FLOATS, ["layer_norm_fwd", "layer_norm_bwd", "layer_norm_bwd_reduce", "layer_norm_fwd_warp8", "layer_norm_fwd_warp16", "layer_norm_fwd_warp24", "layer_norm_fwd_warp32", "layer_norm_fwd_warp48", "layer_norm_fwd_warp64", "layer_norm_bwd_warp8", "layer_norm_bwd_warp16", "layer_norm_bwd_warp24", "layer_norm_bwd_warp32", "layer_norm_bwd_warp48"]);

const OP: &str = "layer_norm";

/// The one autograd node, on either device: the saved statistics' storage says which half runs.
struct LayerNormBackward {
    x: Tensor,
    w: Option<Tensor>,
    b: Option<Tensor>,
    /// Per-row mean and rstd: the compute dtype on the CPU, f32 on CUDA.
    mean: Storage,
    rstd: Storage,
    /// On CUDA: the forward's row-kernel override, kept for the backward.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: Option<RowKernel>,
}

impl BackwardOp for LayerNormBackward {
    backward_io!(|s| OP, [s.x], opt [s.w, s.b]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match &self.mean {
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => cuda::backward(self, g),
            _ => cpu::backward(self, g),
        }
    }
}

impl Tensor {
    /// LayerNorm over the last dim: per row, `y = (x - mean)/√(var + eps)·weight + bias` with the
    /// biased variance (as PyTorch). `weight` and `bias` are optional and must have shape `[D]`
    /// (`D` = last dim) and `self`'s dtype. Float dtypes; bf16/f16 are computed in f32 (statistics
    /// in f32). Differentiable in `self`, `weight` and `bias` with one fused backward kernel.
    /// Errors: integer dtype, rank 0, a weight/bias shape other than `[D]`, dtype or device
    /// mismatch, `eps` negative or not finite.
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let _range = crate::nvtx::range("layer_norm");
        super::check_norm_args(OP, self, &[weight, bias], eps)?;
        #[cfg(feature = "cuda")]
        let forward = if self.device().is_cuda() { cuda::forward } else { cpu::forward };
        #[cfg(not(feature = "cuda"))]
        let forward = cpu::forward;
        let (y, mean, rstd) = forward(self, weight, bias, eps)?;
        let kernel = self.device().is_cuda().then(crate::cuda::row_kernel_override).flatten();
        let inputs: Vec<&Tensor> = [Some(self), weight, bias].into_iter().flatten().collect();
        Ok(y.with_history(&inputs, || node(LayerNormBackward { x: self.clone(), w: weight.cloned(), b: bias.cloned(), mean, rstd, kernel })))
    }
}

/// LayerNorm composed from primitive ops (mean, sub, mul, sqrt, recip, add), as an unfused engine
/// runs it: the reference [`Tensor::layer_norm`] is tested and benchmarked against
/// (`tests/nn_ops.rs`, `kiln bench`'s `composed` variant). Differentiable through those ops.
pub fn composed(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let xc = x.sub(&x.mean(-1, true)?)?;
    let rstd = xc.mul(&xc)?.mean(-1, true)?.add_scalar(eps)?.sqrt()?.recip()?;
    let mut y = xc.mul(&rstd)?;
    if let Some(w) = weight {
        y = y.mul(w)?;
    }
    match bias {
        Some(b) => y.add(b),
        None => Ok(y),
    }
}

/// The bench's and the generic tests' view (see [`super::RowOp`]): `x`, `weight`, `bias`, eps 1e-5.
pub const ROW_OP: super::RowOp = super::RowOp {
    name: OP,
    params: 2,
    fused: |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
    composed: Some(|t| composed(&t[0], Some(&t[1]), Some(&t[2]), 1e-5)),
    // fwd: x, w, b read; y written, mean and rstd (f32) saved. bwd: dy, x, mean, rstd, w read; dx, dw, db written.
    bytes: |fwd, r, d, e| if fwd { (2 * r * d + 2 * d) * e + 2 * r * 4 } else { (3 * r * d + 3 * d) * e + 2 * r * 4 },
    row_kernels: true,
    torch: "torch.nn.functional.layer_norm(x, (d,), p[0], p[1], 1e-5)",
};
