//! Softmax and log-softmax over the last dim, numerically stable (max-subtracted), with fused
//! backward kernels that use the saved output. The CPU kernels are [`cpu`]; the CUDA half is
//! `cuda.rs` (adapter and launchers) with `softmax.cu` beside it.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Error, Result, Tensor};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;


fn name(log: bool) -> &'static str {
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
        #[cfg(feature = "cuda")]
        if y.device().is_cuda() {
            let dx = crate::cuda::with_row_kernel(self.kernel, || cuda::backward(y, g, log))?;
            return Ok(vec![Some(Tensor::from_storage(Storage::Cuda(dx), self.input.shape())?)]);
        }
        let d = last_dim(y);
        let g = g.to_dtype(y.dtype())?;
        let dx = match y.dtype() {
            DType::F32 => with2::<f32>(y, &g, |y, g| cpu::softmax_bwd_f32(y, g, d, log))?,
            DType::F64 => with2::<f64>(y, &g, |y, g| cpu::softmax_bwd(y, g, d, log))?,
            dt => return Err(Error::UnsupportedDType { op: name(log), dtype: dt }),
        };
        let dx = dx.into_dtype(self.input.dtype());
        Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx), self.input.shape())?)])
    }
}

fn with2<T: CpuSlice>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[T], &[T]) -> Vec<T>) -> Result<CpuStorage> {
    a.with_slice::<T, _>(|a| b.with_slice::<T, _>(|b| T::into_storage(f(a, b))))?
}

/// Length of the rows the op works on (a 0-d tensor is one row of one element).
fn last_dim(t: &Tensor) -> usize {
    t.shape().last().copied().unwrap_or(1)
}

fn softmax_impl(x: &Tensor, log: bool) -> Result<Tensor> {
    let op = name(log);
    x.check_float(op)?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        // the kernels compute in f32 and the backward reads the saved output in x's dtype
        let out = Tensor::from_storage(Storage::Cuda(cuda::forward(x, log)?), x.shape())?;
        let y = out.detach();
        return Ok(out.with_history(&[x], || node(SoftmaxBackward { input: x.clone(), y, log, kernel: crate::cuda::row_kernel_override() })));
    }
    let (dt, d) = (x.dtype(), last_dim(x));
    let xc = x.detach().to_dtype(dt.cpu_compute())?;
    let y = match dt.cpu_compute() {
        DType::F32 => xc.with_slice::<f32, _>(|v| CpuStorage::F32(cpu::softmax_fwd_f32(v, d, log)))?,
        DType::F64 => xc.with_slice::<f64, _>(|v| CpuStorage::F64(cpu::softmax_fwd(v, d, log)))?,
        c => return Err(Error::UnsupportedDType { op, dtype: c }),
    };
    let (out, y) = if dt == dt.cpu_compute() { (y, None) } else { (y.to_dtype(dt), Some(y)) };
    let out = Tensor::from_storage(Storage::Cpu(out), x.shape())?;
    // backward needs the output in the compute dtype: `out` itself, or the f32 copy for half types
    let saved = match y {
        _ if !(crate::is_grad_enabled() && x.requires_grad()) => None,
        None => Some(out.detach()),
        Some(y) => Some(Tensor::from_storage(Storage::Cpu(y), x.shape())?),
    };
    Ok(out.with_history(&[x], || node(SoftmaxBackward { input: x.clone(), y: saved.expect("recorded only with grad"), log, kernel: None })))
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
