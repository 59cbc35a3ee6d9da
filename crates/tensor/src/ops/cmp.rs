//! Elementwise comparisons: eq, ne, lt, le, gt, ge, tensor-tensor (numpy broadcasting) and
//! tensor-scalar. The result is a 0/1 tensor of the input dtype with no gradient (comparisons are
//! piecewise constant). NaN compares unequal to everything, itself included (IEEE).
use crate::shape::broadcast_shapes;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Result, Tensor};
use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }
    #[inline(always)]
    fn apply<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

fn kernel<T: CpuSlice + PartialOrd>(op: CmpOp, a: &Tensor, b: &Tensor) -> Result<CpuStorage> {
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    let out = a.with_slice::<T, _>(|a| {
        b.with_slice::<T, _>(|b| a.iter().zip(b).map(|(&x, &y)| if op.apply(x, y) { one } else { zero }).collect::<Vec<T>>())
    })??;
    Ok(T::into_storage(out))
}

fn scalar_kernel<T: CpuSlice>(op: CmpOp, a: &Tensor, v: f64) -> Result<CpuStorage> {
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    let out = a.with_slice::<T, _>(|a| a.iter().map(|&x| if op.apply(x.to_f64(), v) { one } else { zero }).collect::<Vec<T>>())?;
    Ok(T::into_storage(out))
}

fn cmp(op: CmpOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.check_same(op.name(), b)?;
    let shape = broadcast_shapes(op.name(), a.shape(), b.shape())?;
    let (a, b) = (a.detach().broadcast_as(&shape)?, b.detach().broadcast_as(&shape)?);
    let out = match a.dtype() {
        DType::F32 => kernel::<f32>(op, &a, &b)?,
        DType::F64 => kernel::<f64>(op, &a, &b)?,
        DType::BF16 => kernel::<bf16>(op, &a, &b)?,
        DType::F16 => kernel::<f16>(op, &a, &b)?,
        DType::I64 => kernel::<i64>(op, &a, &b)?,
    };
    Tensor::from_storage(Storage::Cpu(out), &shape)
}

fn cmp_scalar(op: CmpOp, a: &Tensor, v: f64) -> Result<Tensor> {
    let a = a.detach();
    if a.device().is_cuda() {
        return cmp_scalar_cuda(op, &a, v);
    }
    // Compared in f64, so `lt_scalar(2.5)` on an i64 tensor means `x < 2.5`, not `x < 2`.
    let out = match a.dtype() {
        DType::F32 => scalar_kernel::<f32>(op, &a, v)?,
        DType::F64 => scalar_kernel::<f64>(op, &a, v)?,
        DType::BF16 => scalar_kernel::<bf16>(op, &a, v)?,
        DType::F16 => scalar_kernel::<f16>(op, &a, v)?,
        DType::I64 => scalar_kernel::<i64>(op, &a, v)?,
    };
    Tensor::from_storage(Storage::Cpu(out), a.shape())
}

impl Tensor {
    /// `self == rhs` elementwise with broadcasting, as 0/1 in the input dtype (any dtype; both
    /// operands must share dtype and device). No gradient.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        cmp(CmpOp::Eq, self, rhs)
    }
    /// `self != rhs` elementwise with broadcasting (see [`Tensor::eq`]).
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        cmp(CmpOp::Ne, self, rhs)
    }
    /// `self < rhs` elementwise with broadcasting (see [`Tensor::eq`]).
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        cmp(CmpOp::Lt, self, rhs)
    }
    /// `self <= rhs` elementwise with broadcasting (see [`Tensor::eq`]).
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        cmp(CmpOp::Le, self, rhs)
    }
    /// `self > rhs` elementwise with broadcasting (see [`Tensor::eq`]).
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        cmp(CmpOp::Gt, self, rhs)
    }
    /// `self >= rhs` elementwise with broadcasting (see [`Tensor::eq`]).
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        cmp(CmpOp::Ge, self, rhs)
    }
    /// `self == v` elementwise (compared in f64), as 0/1 in the input dtype. No gradient.
    pub fn eq_scalar(&self, v: f64) -> Result<Tensor> {
        cmp_scalar(CmpOp::Eq, self, v)
    }
    /// `self != v` elementwise (see [`Tensor::eq_scalar`]).
    pub fn ne_scalar(&self, v: f64) -> Result<Tensor> {
        cmp_scalar(CmpOp::Ne, self, v)
    }
    /// `self < v` elementwise (see [`Tensor::eq_scalar`]).
    pub fn lt_scalar(&self, v: f64) -> Result<Tensor> {
        cmp_scalar(CmpOp::Lt, self, v)
    }
    /// `self <= v` elementwise (see [`Tensor::eq_scalar`]).
    pub fn le_scalar(&self, v: f64) -> Result<Tensor> {
        cmp_scalar(CmpOp::Le, self, v)
    }
    /// `self > v` elementwise (see [`Tensor::eq_scalar`]).
    pub fn gt_scalar(&self, v: f64) -> Result<Tensor> {
        cmp_scalar(CmpOp::Gt, self, v)
    }
    /// `self >= v` elementwise (see [`Tensor::eq_scalar`]).
    pub fn ge_scalar(&self, v: f64) -> Result<Tensor> {
        cmp_scalar(CmpOp::Ge, self, v)
    }
}

/// `==` / `!=` against a scalar for i64 tensors on CUDA (token ids vs a padding id), composed from
/// device kernels: for integers `relu(1 - |x - v|)` is exactly 1 where `x == v` and 0 elsewhere
/// (exact in f32 for |x|, |v| < 2^24). The other comparisons and dtypes have no CUDA arm yet.
fn cmp_scalar_cuda(op: CmpOp, a: &Tensor, v: f64) -> Result<Tensor> {
    let exact = a.dtype() == DType::I64 && v.fract() == 0.0 && v.abs() < (1u64 << 24) as f64;
    if !(exact && matches!(op, CmpOp::Eq | CmpOp::Ne)) {
        return Err(crate::cuda::not_implemented(&format!("{} (scalar compare of a {} tensor)", op.name(), a.dtype())));
    }
    let eq = a.to_dtype(DType::F32)?.add_scalar(-v)?.abs()?.neg()?.add_scalar(1.0)?.relu()?;
    let m = if op == CmpOp::Eq { eq } else { eq.neg()?.add_scalar(1.0)? };
    m.to_dtype(DType::I64)
}
