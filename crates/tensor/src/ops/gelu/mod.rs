//! GELU, exact (erf; BERT's `"gelu"`) and tanh approximation (GPT-2's `"gelu_new"`), with a fused
//! backward. The CPU kernels are [`cpu`]; the CUDA half is `cuda.rs` (adapter and launchers) with
//! `gelu.cu` beside it.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Error, Result, Tensor};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

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
    fn name(self) -> &'static str {
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
        let op = self.approx.name();
        let x = &self.input;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let dx = cuda::backward(&x.detach(), g, self.approx)?;
            return Ok(vec![Some(Tensor::from_storage(Storage::Cuda(dx), x.shape())?)]);
        }
        let dt = x.dtype();
        let (xc, gc) = (x.detach().to_dtype(dt.cpu_compute())?, g.to_dtype(dt.cpu_compute())?);
        let dx = match dt.cpu_compute() {
            DType::F32 => with2::<f32>(&xc, &gc, |x, g| cpu::gelu_bwd_f32(x, g, self.approx))?,
            DType::F64 => with2::<f64>(&xc, &gc, |x, g| cpu::gelu_bwd(x, g, self.approx))?,
            d => return Err(Error::UnsupportedDType { op, dtype: d }),
        };
        Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx.into_dtype(dt)), x.shape())?)])
    }
}

/// Calls `f` with both tensors' elements as contiguous slices and wraps the result.
fn with2<T: CpuSlice>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[T], &[T]) -> Vec<T>) -> Result<CpuStorage> {
    a.with_slice::<T, _>(|a| b.with_slice::<T, _>(|b| T::into_storage(f(a, b))))?
}

fn gelu_impl(x: &Tensor, approx: GeluApprox) -> Result<Tensor> {
    let _range = crate::nvtx::range(if approx == GeluApprox::Tanh { "gelu_tanh" } else { "gelu" });
    let op = approx.name();
    x.check_float(op)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let y = cuda::forward(x, approx)?;
        return Tensor::from_op(Storage::Cuda(y), x.shape(), &[x], || node(GeluBackward { input: x.clone(), approx }));
    }
    let dt = x.dtype();
    let xc = x.detach().to_dtype(dt.cpu_compute())?;
    let y = match dt.cpu_compute() {
        DType::F32 => xc.with_slice::<f32, _>(|v| CpuStorage::F32(cpu::gelu_fwd_f32(v, approx)))?,
        DType::F64 => xc.with_slice::<f64, _>(|v| CpuStorage::F64(cpu::gelu_fwd(v, approx)))?,
        d => return Err(Error::UnsupportedDType { op, dtype: d }),
    };
    Tensor::from_op(Storage::Cpu(y.into_dtype(dt)), x.shape(), &[x], || node(GeluBackward { input: x.clone(), approx }))
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
