//! LayerNorm over the last dim with optional elementwise weight and bias. The forward saves the
//! per-row mean and rstd; the fused backward computes dx, dweight and dbias in one kernel
//! (deterministic reduction over rows). Kernels in [`cpu`].
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

const OP: &str = "layer_norm";

struct LayerNormBackward {
    x: Tensor,
    w: Option<Tensor>,
    b: Option<Tensor>,
    /// Per-row mean and rstd in the compute dtype.
    mean: CpuStorage,
    rstd: CpuStorage,
}

/// The elements of `t` (converted to `T`'s dtype) as a `Vec<T>`.
fn data<T: CpuSlice>(t: &Tensor) -> Result<Vec<T>> {
    t.detach().to_dtype(T::DTYPE)?.with_slice::<T, _>(|s| s.to_vec())
}

fn bwd<T: CpuFloat + CpuSlice>(op: &LayerNormBackward, g: &Tensor, k: cpu::BwdFn<T>) -> Result<Vec<Option<Tensor>>> {
    let d = op.x.shape().last().copied().unwrap_or(1);
    let (xc, gc) = (op.x.detach().to_dtype(T::DTYPE)?, g.to_dtype(T::DTYPE)?);
    let w = op.w.as_ref().map(data::<T>).transpose()?;
    let (mean, rstd) = (op.mean.as_slice::<T>()?, op.rstd.as_slice::<T>()?);
    let r = xc.with_slice::<T, _>(|x| gc.with_slice::<T, _>(|dy| k(x, dy, w.as_deref(), mean, rstd, d)))??;
    let wrap = |v: Vec<T>, like: &Tensor| -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(T::into_storage(v).into_dtype(like.dtype())), like.shape())
    };
    let mut out = vec![Some(wrap(r.dx, &op.x)?)];
    if let Some(w) = &op.w {
        out.push(Some(wrap(r.dw, w)?));
    }
    if let Some(b) = &op.b {
        out.push(Some(wrap(r.db, b)?));
    }
    Ok(out)
}

impl BackwardOp for LayerNormBackward {
    backward_io!(|s| OP, [s.x], opt [s.w, s.b]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match self.mean.dtype() {
            DType::F32 => bwd::<f32>(self, g, cpu::layer_norm_bwd_f32),
            DType::F64 => bwd::<f64>(self, g, cpu::layer_norm_bwd::<f64>),
            dt => Err(Error::UnsupportedDType { op: OP, dtype: dt }),
        }
    }
}

fn check_param(x: &Tensor, p: Option<&Tensor>, d: usize) -> Result<()> {
    if let Some(p) = p {
        x.check_same(OP, p)?;
        if p.shape() != [d] {
            return Err(Error::ShapeMismatch { op: OP, lhs: x.shape().to_vec(), rhs: p.shape().to_vec() });
        }
    }
    Ok(())
}

fn fwd<T: CpuFloat + CpuSlice>(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64, k: cpu::FwdFn<T>) -> Result<Tensor> {
    let d = x.shape().last().copied().unwrap_or(1);
    let xc = x.detach().to_dtype(T::DTYPE)?;
    let ws = w.map(data::<T>).transpose()?;
    let bs = b.map(data::<T>).transpose()?;
    let r = xc.with_slice::<T, _>(|xs| k(xs, ws.as_deref(), bs.as_deref(), d, eps))?;
    let y = Tensor::from_storage(Storage::Cpu(T::into_storage(r.y).into_dtype(x.dtype())), x.shape())?;
    let inputs: Vec<&Tensor> = [Some(x), w, b].into_iter().flatten().collect();
    let (mean, rstd) = (T::into_storage(r.mean), T::into_storage(r.rstd));
    Ok(y.with_history(&inputs, || node(LayerNormBackward { x: x.clone(), w: w.cloned(), b: b.cloned(), mean, rstd })))
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
        self.check_float(OP)?;
        if self.rank() == 0 {
            return Err(Error::Shape { op: OP, shape: vec![], msg: "needs at least one dim (normalizes the last)".into() });
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::msg(format!("layer_norm: eps must be finite and >= 0, got {eps}")));
        }
        let d = self.shape()[self.rank() - 1];
        check_param(self, weight, d)?;
        check_param(self, bias, d)?;
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            return cuda::layer_norm(self, weight, bias, eps);
        }
        match self.dtype().cpu_compute() {
            DType::F32 => fwd::<f32>(self, weight, bias, eps, cpu::layer_norm_fwd_f32),
            DType::F64 => fwd::<f64>(self, weight, bias, eps, cpu::layer_norm_fwd::<f64>),
            dt => Err(Error::UnsupportedDType { op: OP, dtype: dt }),
        }
    }
}
