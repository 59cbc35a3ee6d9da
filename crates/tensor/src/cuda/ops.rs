//! Tensor-level CUDA dispatch: each op's forward (and fused backward) calls one of these when its
//! inputs live on a CUDA device. They take tensors (any layout), launch the kernels of
//! `launch*.rs` and return a fresh contiguous [`CudaStorage`]; the op wraps it in a `Tensor` and
//! records the same backward node as on the CPU. f32 / bf16 / f16 only (the kernels' types);
//! f64 on CUDA is an `UnsupportedDType` error naming the op.
use super::launch::{self, KLayout, KernelCopy};
use super::device::CudaBackend;
use super::storage::{out_buf, CudaElem, CudaStorage};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut};
use half::{bf16, f16};
use std::sync::Arc;

/// Runs `$body` with `$T` bound to the kernel float type of `$dt` (f32 / bf16 / f16).
macro_rules! float_dispatch {
    ($op:expr, $dt:expr, $T:ident => $body:expr) => {
        match $dt {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            $crate::DType::F16 => {
                type $T = half::f16;
                $body
            }
            d => Err($crate::Error::UnsupportedDType { op: $op, dtype: d }),
        }
    };
}
pub(crate) use float_dispatch;

/// The adapter sequence of an op's CUDA half, once: `float_out!(op, dtype, &be, n, |T, out| launch)`
/// dispatches on the float `dtype` (binding `T`), allocates a fresh `n`-element output of `T` on
/// `be`, runs `launch` (a `Result<()>` writing `out: &mut CudaViewMut<T>`) and returns the output
/// as a [`CudaStorage`]. Inputs come from [`contiguous_on`].
macro_rules! float_out {
    ($op:expr, $dt:expr, $be:expr, $n:expr, |$T:ident, $out:ident| $launch:expr) => {
        $crate::cuda::ops::float_dispatch!($op, $dt, $T => $crate::cuda::ops::write_out::<$T>($be, $n, |$out| $launch))
    };
}
pub(crate) use float_out;

/// A fresh `n`-element output of `T` on `be` (see [`out_buf`]), written by `launch`, as a storage.
pub fn write_out<T: CudaElem>(be: &Arc<CudaBackend>, n: usize, launch: impl FnOnce(&mut CudaViewMut<T>) -> Result<()>) -> Result<CudaStorage> {
    let mut out = out_buf::<T>(be, n)?;
    launch(&mut out.slice_mut(..))?;
    Ok(CudaStorage::from_slice(out, be))
}

/// The contiguous storages of `ts` (which must share one device: else `DeviceMismatch` naming
/// `op`) and their backend: the head of an op's CUDA adapter.
pub fn contiguous_on<const N: usize>(op: &'static str, ts: [&Tensor; N]) -> Result<(Arc<CudaBackend>, [CudaStorage; N])> {
    same_device(op, &ts)?;
    let cs: Vec<CudaStorage> = ts.iter().map(|t| contiguous(t)).collect::<Result<_>>()?;
    let cs: [CudaStorage; N] = cs.try_into().map_err(|_| Error::msg("contiguous_on: count"))?;
    let be = match cs.first() {
        Some(c) => c.backend().clone(),
        None => return Err(Error::msg(format!("{op}: no CUDA inputs"))),
    };
    Ok((be, cs))
}

/// `c`'s buffer as a `CudaView<T>` of all its elements, or a dtype error naming `op`.
pub fn view<'a, T: CudaElem>(c: &'a CudaStorage, op: &'static str) -> Result<CudaView<'a, T>> {
    Ok(c.slice::<T>(op)?.slice(..))
}

/// The CUDA storage of `t`, or a device error naming `op`.
pub fn storage_of(op: &'static str, t: &Tensor) -> Result<CudaStorage> {
    match &*t.storage() {
        Storage::Cuda(c) => Ok(c.clone()),
        Storage::Cpu(_) => Err(Error::DeviceMismatch { op, lhs: t.device(), rhs: Device::Cpu }),
    }
}

/// Errors with `DeviceMismatch` (naming `op` and both devices) unless all tensors share a device.
pub fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if let Some(first) = ts.first() {
        for t in &ts[1..] {
            if t.device() != first.device() {
                return Err(Error::DeviceMismatch { op, lhs: first.device(), rhs: t.device() });
            }
        }
    }
    Ok(())
}

fn copy_t<T: CudaElem + KernelCopy>(t: &Tensor, c: &CudaStorage) -> Result<CudaStorage> {
    let b = c.backend();
    let src = c.slice::<T>("contiguous")?;
    let kl = KLayout::from_layout(t.layout())?;
    write_out::<T>(b, t.elem_count(), |out| b.copy::<T>(out, &src.slice(t.layout().offset()..), &kl))
}

/// A contiguous copy of `t` (the storage itself when `t` already covers it exactly).
pub fn contiguous(t: &Tensor) -> Result<CudaStorage> {
    let c = storage_of("contiguous", t)?;
    if t.is_contiguous() && t.layout().offset() == 0 && c.len() == t.elem_count() {
        return Ok(c);
    }
    match t.dtype() {
        DType::F32 => copy_t::<f32>(t, &c),
        DType::F64 => copy_t::<f64>(t, &c),
        DType::BF16 => copy_t::<bf16>(t, &c),
        DType::F16 => copy_t::<f16>(t, &c),
        DType::I64 => copy_t::<i64>(t, &c),
    }
}

fn cat_t<T: CudaElem + KernelCopy>(tensors: &[Tensor], d: usize, shape: &[usize]) -> Result<CudaStorage> {
    let first = storage_of("cat", &tensors[0])?;
    let b = first.backend();
    let mut out = out_buf::<T>(b, shape.iter().product())?;
    let strides = crate::shape::contiguous_strides(shape);
    let mut at = 0usize; // position along dim d
    for t in tensors {
        if t.elem_count() > 0 {
            let src = contiguous(t)?;
            // t's block of the output: t's shape, the output's strides, starting at `at` along d
            let dst = KLayout::new(t.shape(), &strides)?;
            b.copy_to_strided::<T>(&mut out.slice_mut(at * strides[d]..), &src.slice::<T>("cat")?.slice(..), &dst)?;
        }
        at += t.shape()[d];
    }
    Ok(CudaStorage::from_slice(out, b))
}

/// Concatenation along `d` of same-dtype CUDA tensors into a new contiguous `shape` (checked by
/// the caller): one strided scatter per input, each output element written exactly once.
pub fn cat(tensors: &[Tensor], d: usize, shape: &[usize]) -> Result<CudaStorage> {
    match tensors.first().map(|t| t.dtype()) {
        None => Err(Error::msg("cat: no tensors given")),
        Some(DType::F32) => cat_t::<f32>(tensors, d, shape),
        Some(DType::F64) => cat_t::<f64>(tensors, d, shape),
        Some(DType::BF16) => cat_t::<bf16>(tensors, d, shape),
        Some(DType::F16) => cat_t::<f16>(tensors, d, shape),
        Some(DType::I64) => cat_t::<i64>(tensors, d, shape),
    }
}

/// Uploads a CPU tensor's elements (row-major) to `cuda:ordinal`.
pub fn upload(t: &Tensor, ordinal: usize) -> Result<CudaStorage> {
    CudaStorage::from_cpu(&t.storage_window()?, ordinal)
}

/// Downloads a CUDA tensor's elements (row-major).
pub fn download(t: &Tensor) -> Result<CpuStorage> {
    contiguous(t)?.to_cpu()
}

fn cast_t<A: launch::KernelFloat + CudaElem, B: launch::KernelFloat + CudaElem>(c: &CudaStorage) -> Result<CudaStorage> {
    let b = c.backend();
    write_out::<B>(b, c.len(), |out| b.cast::<A, B>(out, &view(c, "to_dtype")?))
}

/// `t` converted to `dtype` on its device. Float <-> float and i64 -> f32 run as kernels; the
/// other pairs (f64, to i64) go through the host (a transfer, not a compute fallback).
pub fn cast(t: &Tensor, dtype: DType) -> Result<CudaStorage> {
    let c = contiguous(t)?;
    let (from, to) = (t.dtype(), dtype);
    let kernel_type = |d: DType| matches!(d, DType::F32 | DType::BF16 | DType::F16);
    if kernel_type(from) && kernel_type(to) {
        return float_dispatch!("to_dtype", from, A => float_dispatch!("to_dtype", to, B => cast_t::<A, B>(&c)));
    }
    if from == DType::I64 && to == DType::F32 {
        let b = c.backend();
        return write_out::<f32>(b, c.len(), |out| b.cast_i64_f32(out, &view(&c, "to_dtype")?));
    }
    CudaStorage::from_cpu(&c.to_cpu()?.to_dtype(to), c.backend().ordinal())
}

/// `op(x)` elementwise (any layout in, contiguous out).
pub fn unary(name: &'static str, x: &Tensor, op: launch::ElementwiseOp) -> Result<CudaStorage> {
    let c = storage_of(name, x)?;
    let b = c.backend().clone();
    let kl = KLayout::from_layout(x.layout())?;
    float_out!(name, x.dtype(), &b, x.elem_count(), |T, out| b.unary_fwd::<T>(out, &c.slice::<T>(name)?.slice(x.layout().offset()..), &kl, op))
}

/// `g * op'(x)` given the saved input `x` and output `y` (all the same shape).
pub fn unary_bwd(name: &'static str, g: &Tensor, x: &Tensor, y: &Tensor, op: launch::ElementwiseOp) -> Result<CudaStorage> {
    let (b, [gc, xc, yc]) = contiguous_on(name, [g, x, y])?;
    float_out!(name, x.dtype(), &b, x.elem_count(), |T, out| b.unary_bwd::<T>(out, &view(&xc, name)?, &view(&yc, name)?, &view(&gc, name)?, op))
}

/// `a op b` with numpy broadcasting to `shape`.
pub fn binary(name: &'static str, a: &Tensor, b_: &Tensor, shape: &[usize], op: launch::ElementwiseOp) -> Result<CudaStorage> {
    same_device(name, &[a, b_])?;
    let (ca, cb) = (storage_of(name, a)?, storage_of(name, b_)?);
    let (fa, fb) = (a.broadcast_as(shape)?, b_.broadcast_as(shape)?);
    let (la, lb) = (KLayout::from_layout(fa.layout())?, KLayout::from_layout(fb.layout())?);
    let be = ca.backend().clone();
    let n: usize = shape.iter().product();
    float_out!(name, a.dtype(), &be, n, |T, out| {
        let (sa, sb) = (ca.slice::<T>(name)?, cb.slice::<T>(name)?);
        be.binary_fwd::<T>(out, &sa.slice(fa.layout().offset()..), &la, &sb.slice(fb.layout().offset()..), &lb, op)
    })
}

/// `x * mul + add`.
pub fn affine(x: &Tensor, mul: f64, add: f64) -> Result<CudaStorage> {
    let (b, [c]) = contiguous_on("affine", [x])?;
    float_out!("affine", x.dtype(), &b, x.elem_count(), |T, out| b.affine_fwd::<T>(out, &view(&c, "affine")?, mul as f32, add as f32))
}

/// `t` as `[rows, cols]` over its last dim (a scalar is one 1-element row; no columns, no rows).
pub(crate) fn rows_cols(t: &Tensor) -> (usize, usize) {
    let cols = t.shape().last().copied().unwrap_or(1);
    (t.elem_count().checked_div(cols).unwrap_or(0), cols)
}
