//! GELU, exact (erf; BERT's `"gelu"`) and tanh approximation (GPT-2's `"gelu_new"`), with a fused
//! backward. The CPU kernels are [`cpu`]; the CUDA half is `cuda.rs` (adapter and launchers) with
//! `gelu.cu` beside it.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::{Result, Tensor};
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`gelu.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "gelu" / "gelu", ALL_FLOATS, ["gelu_fwd", "gelu_bwd"]);

/// Which GELU formula: one enum for the CPU and CUDA halves (the discriminant is the `int` the
/// kernels of `gelu.cu` take).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluApprox {
    /// `0.5·x·(1 + erf(x/√2))` (PyTorch `approximate="none"`; BERT's `gelu`).
    Erf = 0,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (PyTorch `approximate="tanh"`; GPT-2's `gelu_new`).
    Tanh = 1,
}

impl GeluApprox {
    pub(crate) fn name(self) -> &'static str {
        match self {
            GeluApprox::Erf => "gelu",
            GeluApprox::Tanh => "gelu_tanh",
        }
    }
}

struct GeluBackward {
    input: Tensor,
    approx: GeluApprox,
}

impl BackwardOp for GeluBackward {
    backward_io!(|s| s.approx.name(), [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let x = &self.input;
        let dx = on_device!(x, cuda => cuda::backward(&x.detach(), g, self.approx)?, cpu => cpu::backward(x, g, self.approx)?);
        Ok(vec![Some(Tensor::from_storage(dx, x.shape())?)])
    }
}

fn gelu_impl(x: &Tensor, approx: GeluApprox) -> Result<Tensor> {
    let _range = crate::nvtx::range(if approx == GeluApprox::Tanh { "gelu_tanh" } else { "gelu" });
    x.check_float(approx.name())?;
    let y = on_device!(x, cuda => cuda::forward(x, approx)?, cpu => cpu::forward(x, approx)?);
    Tensor::from_op(y, x.shape(), &[x], || node(GeluBackward { input: x.clone(), approx }))
}

impl Tensor {
    /// GELU with the exact erf form, `0.5·x·(1 + erf(x/√2))`, elementwise (any shape; float dtypes,
    /// bf16/f16 computed in f32). This is BERT's `"gelu"`. Differentiable (fused backward).
    /// Errors: integer dtype.
    pub fn gelu(&self) -> Result<Tensor> {
        gelu_impl(self, GeluApprox::Erf)
    }

    /// GELU with the tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, elementwise.
    /// This is GPT-2's `"gelu_new"`. Differentiable (fused backward). Errors: integer dtype.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        gelu_impl(self, GeluApprox::Tanh)
    }

    /// GELU of either form (see [`Tensor::gelu`] and [`Tensor::gelu_tanh`]).
    pub fn gelu_with(&self, approx: GeluApprox) -> Result<Tensor> {
        gelu_impl(self, approx)
    }
}

/// GELU's tanh form composed from primitive ops (mul, add, tanh: one kernel each, as an unfused
/// engine runs it): the reference the fused op is tested and benchmarked against (`tests/nn_ops.rs`,
/// `kiln bench`'s `composed` variant). Differentiable through those ops.
pub fn composed_tanh(x: &Tensor) -> Result<Tensor> {
    let x3 = x.mul(x)?.mul(x)?;
    let u = x.add(&x3.mul_scalar(0.044715)?)?.mul_scalar((2.0 / std::f64::consts::PI).sqrt())?;
    x.mul(&u.tanh()?.add_scalar(1.0)?)?.mul_scalar(0.5)
}

/// The bench's and the generic tests' view of the exact GELU (see [`super::RowOp`]).
pub const ROW_OP_ERF: super::RowOp = super::RowOp {
    name: "gelu",
    params: 0,
    fused: |t| t[0].gelu_with(GeluApprox::Erf),
    composed: None,
    bytes: super::elementwise_bytes,
    row_kernels: false,
    torch: "torch.nn.functional.gelu(x)",
};
/// The same for the tanh approximation, with its composed reference.
pub const ROW_OP_TANH: super::RowOp = super::RowOp {
    name: "gelu_tanh",
    fused: |t| t[0].gelu_with(GeluApprox::Tanh),
    composed: Some(|t| composed_tanh(&t[0])),
    torch: "torch.nn.functional.gelu(x, approximate='tanh')",
    ..ROW_OP_ERF
};
