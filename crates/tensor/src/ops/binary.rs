//! Elementwise binary ops with numpy broadcasting (add, sub, mul, div) and scalar affine maps.
use crate::cpu::PAR_MIN;
use crate::autograd::{backward_io, node, sum_to_shape, BackwardOp};
use crate::cpu::simd;
use crate::shape::broadcast_shapes;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
    #[inline(always)]
    fn apply<T: CpuFloat>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
}


/// Elements per rayon task in the contiguous path.
const CHUNK: usize = 1 << 14;

/// `out = a op b` over equal-length unit-stride slices; f32 uses the SIMD primitives.
trait BinaryElem: CpuFloat + CpuSlice {
    fn slices(op: BinaryOp, a: &[Self], b: &[Self], out: &mut [Self]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = op.apply(x, y);
        }
    }
}
impl BinaryElem for f64 {}
impl BinaryElem for f32 {
    fn slices(op: BinaryOp, a: &[f32], b: &[f32], out: &mut [f32]) {
        match op {
            BinaryOp::Add => simd::add(a, b, out),
            BinaryOp::Sub => simd::sub(a, b, out),
            BinaryOp::Mul => simd::mul(a, b, out),
            BinaryOp::Div => simd::div(a, b, out),
        }
    }
}

/// A new buffer of `n` elements written chunk by chunk by `f(start, chunk)`, in parallel when
/// `n >= PAR_MIN`. Each chunk is zero-filled right before `f` sees it, while it is in cache: unlike
/// `vec![0; n]` this costs no separate pass over memory. For outputs the size of an input; see
/// [`try_build_chunks`] for sizes chosen by broadcasting.
pub(crate) fn build_chunks<T: CpuFloat>(n: usize, chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) -> Vec<T> {
    // SAFETY: `fill_chunks` initializes every element of every chunk, and the chunks cover the buffer.
    unsafe { crate::cpu::uninit_vec(n, |spare| fill_chunks(spare, chunk, &f)) }
}

/// [`build_chunks`] for the buffer of a tensor of `shape` (`n` elements), reserved fallibly: memory
/// the allocator refuses is an [`crate::Error::Alloc`] naming `op`. `prepare` runs once the buffer
/// is reserved and returns the chunk writer (so that its own tables are built only then).
pub(crate) fn try_build_chunks<T: CpuFloat, F: Fn(usize, &mut [T]) + Sync + Send>(
    op: &'static str,
    shape: &[usize],
    n: usize,
    chunk: usize,
    prepare: impl FnOnce() -> F,
) -> Result<Vec<T>> {
    // SAFETY: `fill_chunks` initializes every element of every chunk, and the chunks cover the buffer.
    unsafe {
        crate::cpu::try_uninit_vec(op, shape, n, |spare| {
            fill_chunks(spare, chunk, &prepare());
            Ok(())
        })
    }
}

fn fill_chunks<T: CpuFloat>(spare: &mut [MaybeUninit<T>], chunk: usize, f: &(impl Fn(usize, &mut [T]) + Sync + Send)) {
    let chunk = chunk.max(1);
    let body = |(c, dst): (usize, &mut [MaybeUninit<T>])| {
        for d in dst.iter_mut() {
            d.write(T::zero());
        }
        // SAFETY: every element of `dst` was initialized just above; MaybeUninit<T> has T's layout.
        let dst = unsafe { &mut *(dst as *mut [MaybeUninit<T>] as *mut [T]) };
        f(c * chunk, dst);
    };
    if spare.len() >= PAR_MIN {
        spare.par_chunks_mut(chunk).enumerate().for_each(body);
    } else {
        spare.chunks_mut(chunk).enumerate().for_each(body);
    }
}

fn kernel<T: BinaryElem>(op: BinaryOp, a: &Tensor, b: &Tensor, shape: &[usize]) -> Result<CpuStorage> {
    let n = crate::mem::elem_count(op.name(), shape, T::DTYPE)?;
    let (sa, sb) = (a.storage(), b.storage());
    let (va, vb) = (sa.as_cpu()?.as_slice::<T>()?, sb.as_cpu()?.as_slice::<T>()?);
    let (la, lb) = (a.layout(), b.layout());
    if la.is_contiguous() && lb.is_contiguous() && a.shape() == shape && b.shape() == shape {
        let (va, vb) = (&va[la.offset()..la.offset() + n], &vb[lb.offset()..lb.offset() + n]);
        let out = build_chunks(n, CHUNK, |s, o: &mut [T]| T::slices(op, &va[s..s + o.len()], &vb[s..s + o.len()], o));
        return Ok(T::into_storage(out));
    }
    // General path: walk rows of the broadcast output; the last dim is strided per operand.
    let a_full = a.broadcast_as(shape)?;
    let b_full = b.broadcast_as(shape)?;
    let last = *shape.last().unwrap_or(&1);
    let rows = n.checked_div(last).unwrap_or(0);
    let (sa_last, sb_last) = match shape.len() {
        0 => (0, 0),
        r => (a_full.strides()[r - 1], b_full.strides()[r - 1]),
    };
    let row_offsets = |t: &Tensor| -> Vec<usize> {
        if t.rank() == 0 {
            return vec![t.layout().offset()];
        }
        let r = t.rank();
        let l = crate::shape::Layout::new(t.shape()[..r - 1].to_vec(), t.strides()[..r - 1].to_vec(), t.layout().offset());
        l.indices().collect()
    };
    // the output is reserved first: a broadcast can ask for far more than its operands hold
    let prepare = || {
        let (ra, rb) = (row_offsets(&a_full), row_offsets(&b_full));
        move |start: usize, o: &mut [T]| {
            let r = start / last;
            let (oa, ob) = (ra[r], rb[r]);
            if sa_last == 1 && sb_last == 1 {
                // rows that are unit-stride in both operands (e.g. a bias row broadcast over a batch)
                return T::slices(op, &va[oa..oa + last], &vb[ob..ob + last], o);
            }
            for (j, x) in o.iter_mut().enumerate() {
                *x = op.apply(va[oa + j * sa_last], vb[ob + j * sb_last]);
            }
        }
    };
    let out = if rows > 0 { try_build_chunks(op.name(), shape, n, last, prepare)? } else { Vec::new() };
    Ok(T::into_storage(out))
}

struct Binary {
    op: BinaryOp,
    a: Tensor,
    b: Tensor,
}

impl BackwardOp for Binary {
    backward_io!(|s| s.op.name(), [s.a, s.b]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&self.a, &self.b);
        let (ga, gb) = match self.op {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (g.clone(), g.neg()?),
            BinaryOp::Mul => (
                if a.requires_grad() { g.mul(b)? } else { g.clone() },
                if b.requires_grad() { g.mul(a)? } else { g.clone() },
            ),
            BinaryOp::Div => {
                let ga = g.div(b)?;
                let gb = if b.requires_grad() { ga.mul(a)?.div(b)?.neg()? } else { g.clone() };
                (ga, gb)
            }
        };
        Ok(vec![
            if a.requires_grad() { Some(sum_to_shape(&ga, a.shape())?) } else { None },
            if b.requires_grad() { Some(sum_to_shape(&gb, b.shape())?) } else { None },
        ])
    }
}

/// Runs `op` on a CPU float tensor computed in its CPU compute dtype (half types go through f32).
pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.check_same(op.name(), b)?;
    a.check_float(op.name())?;
    let shape = broadcast_shapes(op.name(), a.shape(), b.shape())?;
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() {
        let k = crate::cuda::launch::ElementwiseOp::binary(op.name()).ok_or_else(|| crate::cuda::not_implemented(op.name()))?;
        let out = crate::cuda::ops::binary(op.name(), a, b, &shape, k)?;
        return Tensor::from_op(Storage::Cuda(out), &shape, &[a, b], || node(Binary { op, a: a.clone(), b: b.clone() }));
    }
    let dt = a.dtype();
    let (ac, bc) = (a.to_dtype(dt.cpu_compute())?.detach(), b.to_dtype(dt.cpu_compute())?.detach());
    let out = match dt.cpu_compute() {
        DType::F32 => kernel::<f32>(op, &ac, &bc, &shape)?,
        DType::F64 => kernel::<f64>(op, &ac, &bc, &shape)?,
        d => return Err(Error::UnsupportedDType { op: op.name(), dtype: d }),
    };
    let out = Tensor::from_storage(Storage::Cpu(out.into_dtype(dt)), &shape)?;
    Ok(out.with_history(&[a, b], || node(Binary { op, a: a.clone(), b: b.clone() })))
}

struct Affine {
    input: Tensor,
    mul: f64,
}
impl BackwardOp for Affine {
    backward_io!(|s| "affine", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.affine(self.mul, 0.0)?)])
    }
}

fn affine_kernel<T: CpuFloat + CpuSlice>(x: &[T], mul: f64, add: f64) -> CpuStorage {
    let (m, a) = (T::from_f64(mul), T::from_f64(add));
    let out: Vec<T> = if x.len() >= PAR_MIN {
        x.par_iter().map(|&v| v * m + a).collect()
    } else {
        x.iter().map(|&v| v * m + a).collect()
    };
    T::into_storage(out)
}

impl Tensor {
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Add, self, rhs)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Sub, self, rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Mul, self, rhs)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(BinaryOp::Div, self, rhs)
    }
    /// `self * mul + add`, elementwise.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.check_float("affine")?;
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let out = crate::cuda::ops::affine(self, mul, add)?;
            return Tensor::from_op(Storage::Cuda(out), self.shape(), &[self], || node(Affine { input: self.clone(), mul }));
        }
        let dt = self.dtype();
        let x = self.to_dtype(dt.cpu_compute())?;
        let out = match dt.cpu_compute() {
            DType::F32 => x.with_slice::<f32, _>(|v| affine_kernel(v, mul, add))?,
            DType::F64 => x.with_slice::<f64, _>(|v| affine_kernel(v, mul, add))?,
            d => return Err(Error::UnsupportedDType { op: "affine", dtype: d }),
        };
        let out = Tensor::from_storage(Storage::Cpu(out.into_dtype(dt)), self.shape())?;
        Ok(out.with_history(&[self], || node(Affine { input: self.clone(), mul })))
    }
    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }
}
