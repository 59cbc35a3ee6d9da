//! Elementwise math with autograd: exp, log, sqrt, tanh, sqr, recip, abs, relu, powf (scalar
//! exponent) and pow (tensor exponent with broadcasting).
//!
//! Forward: f32 goes through the SIMD primitives where one exists (exp, tanh, log), in rayon chunks for
//! large inputs; bf16/f16 compute in f32. Backward: one fused pass `dx = g · f'(x, y)` per op, using
//! the saved input `x` and output `y`.
use crate::autograd::{backward_io, node, sum_to_shape, BackwardOp};
use crate::cpu::simd;
use crate::cpu::PAR_MIN;
use crate::ops::binary::build_chunks;
use crate::shape::broadcast_shapes;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// One elementwise function of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sqr,
    Recip,
    Abs,
    Relu,
    Powf(f64),
}

impl UnaryOp {
    /// Its op code in elementwise.cu (looked up by name there; `powf` has none: an error).
    #[cfg(feature = "cuda")]
    fn kernel(self) -> Result<crate::cuda::launch::ElementwiseOp> {
        crate::cuda::launch::ElementwiseOp::unary(self.name()).ok_or_else(|| crate::cuda::not_implemented(self.name()))
    }

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Recip => "recip",
            UnaryOp::Abs => "abs",
            UnaryOp::Relu => "relu",
            UnaryOp::Powf(_) => "powf",
        }
    }

    #[inline(always)]
    fn f<T: CpuFloat>(self, x: T) -> T {
        match self {
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Recip => x.recip(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Relu => {
                if x > T::zero() || x.is_nan() {
                    x
                } else {
                    T::zero()
                }
            }
            UnaryOp::Powf(e) => {
                if e == 2.0 {
                    x * x
                } else {
                    x.powf(T::from_f64(e))
                }
            }
        }
    }

    /// d f(x) / dx, given `x` and `y = f(x)` (matches PyTorch's conventions at the kinks: abs'(0) = 0,
    /// relu'(0) = 0, d/dx x^0 = 0).
    #[inline(always)]
    fn df<T: CpuFloat>(self, x: T, y: T) -> T {
        let one = T::one();
        match self {
            UnaryOp::Exp => y,
            UnaryOp::Log => one / x,
            UnaryOp::Sqrt => T::from_f64(0.5) / y,
            UnaryOp::Tanh => one - y * y,
            UnaryOp::Sqr => x + x,
            UnaryOp::Recip => -(y * y),
            UnaryOp::Abs => {
                if x > T::zero() {
                    one
                } else if x < T::zero() {
                    -one
                } else if x.is_nan() {
                    x
                } else {
                    T::zero()
                }
            }
            UnaryOp::Relu => {
                if y > T::zero() {
                    one
                } else {
                    T::zero()
                }
            }
            UnaryOp::Powf(e) => {
                if e == 0.0 {
                    T::zero()
                } else {
                    T::from_f64(e) * x.powf(T::from_f64(e - 1.0))
                }
            }
        }
    }
}

/// Per-type kernels: f32 overrides `simd_map` with the vectorized primitives.
pub(crate) trait UnaryElem: CpuFloat + CpuSlice {
    /// Applies `op` in place with a SIMD primitive; false when there is none for this op/type.
    fn simd_map(_op: UnaryOp, _x: &mut [Self]) -> bool {
        false
    }
}
impl UnaryElem for f64 {}
impl UnaryElem for f32 {
    fn simd_map(op: UnaryOp, x: &mut [f32]) -> bool {
        match op {
            UnaryOp::Exp => simd::exp_inplace(x),
            UnaryOp::Tanh => simd::tanh_inplace(x),
            UnaryOp::Log => simd::log_inplace(x),
            _ => return false,
        }
        true
    }
}

/// Runs `$body` with `$o` bound to `$op` as a constant variant, so that the per-element `match`
/// inside `f` / `df` folds away and the loop in `$body` can be vectorized.
macro_rules! with_const_op {
    ($op:expr, |$o:ident| $body:expr) => {
        match $op {
            UnaryOp::Exp => { let $o = UnaryOp::Exp; $body }
            UnaryOp::Log => { let $o = UnaryOp::Log; $body }
            UnaryOp::Sqrt => { let $o = UnaryOp::Sqrt; $body }
            UnaryOp::Tanh => { let $o = UnaryOp::Tanh; $body }
            UnaryOp::Sqr => { let $o = UnaryOp::Sqr; $body }
            UnaryOp::Recip => { let $o = UnaryOp::Recip; $body }
            UnaryOp::Abs => { let $o = UnaryOp::Abs; $body }
            UnaryOp::Relu => { let $o = UnaryOp::Relu; $body }
            UnaryOp::Powf(e) => { let $o = UnaryOp::Powf(e); $body }
        }
    };
}

fn fwd_kernel<T: UnaryElem>(op: UnaryOp, x: &[T]) -> CpuStorage {
    let out = build_chunks(x.len(), CHUNK, |s, dst: &mut [T]| {
        dst.copy_from_slice(&x[s..s + dst.len()]);
        if !T::simd_map(op, dst) {
            with_const_op!(op, |o| for v in dst.iter_mut() {
                *v = o.f(*v);
            })
        }
    });
    T::into_storage(out)
}

fn bwd_kernel<T: UnaryElem>(op: UnaryOp, g: &[T], x: &[T], y: &[T]) -> CpuStorage {
    let out = build_chunks(g.len(), CHUNK, |s, o: &mut [T]| {
        let e = s + o.len();
        let (g, x, y) = (&g[s..e], &x[s..e], &y[s..e]);
        with_const_op!(op, |c| for (((d, &g), &x), &y) in o.iter_mut().zip(g).zip(x).zip(y) {
            *d = g * c.df(x, y);
        })
    });
    T::into_storage(out)
}

struct Unary {
    op: UnaryOp,
    x: Tensor,
    /// The forward output, detached (no history).
    y: Tensor,
}

impl BackwardOp for Unary {
    backward_io!(|s| s.op.name(), [s.x]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        #[cfg(feature = "cuda")]
        if self.x.device().is_cuda() {
            let k = self.op.kernel()?;
            let out = crate::cuda::ops::unary_bwd(self.op.name(), g, &self.x.detach(), &self.y, k)?;
            return Ok(vec![Some(Tensor::from_storage(Storage::Cuda(out), self.x.shape())?)]);
        }
        let dt = self.x.dtype();
        let cd = dt.cpu_compute();
        let (g, x, y) = (g.to_dtype(cd)?, self.x.detach().to_dtype(cd)?, self.y.to_dtype(cd)?);
        let op = self.op;
        let out = match cd {
            DType::F32 => g.with_slice::<f32, _>(|g| x.with_slice::<f32, _>(|x| y.with_slice::<f32, _>(|y| bwd_kernel(op, g, x, y))))???,
            DType::F64 => g.with_slice::<f64, _>(|g| x.with_slice::<f64, _>(|x| y.with_slice::<f64, _>(|y| bwd_kernel(op, g, x, y))))???,
            d => return Err(Error::UnsupportedDType { op: op.name(), dtype: d }),
        };
        Ok(vec![Some(Tensor::from_storage(Storage::Cpu(out.into_dtype(dt)), self.x.shape())?)])
    }
}

/// Runs `op` on a float CPU tensor (half types computed in f32) and records its backward.
pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    x.check_float(op.name())?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let k = op.kernel()?;
        let out = Tensor::from_storage(Storage::Cuda(crate::cuda::ops::unary(op.name(), x, k)?), x.shape())?;
        let y = out.detach();
        return Ok(out.with_history(&[x], || node(Unary { op, x: x.clone(), y })));
    }
    let dt = x.dtype();
    let xc = x.to_dtype(dt.cpu_compute())?;
    let out = match dt.cpu_compute() {
        DType::F32 => xc.with_slice::<f32, _>(|v| fwd_kernel(op, v))?,
        DType::F64 => xc.with_slice::<f64, _>(|v| fwd_kernel(op, v))?,
        d => return Err(Error::UnsupportedDType { op: op.name(), dtype: d }),
    };
    let out = Tensor::from_storage(Storage::Cpu(out.into_dtype(dt)), x.shape())?;
    let y = out.detach();
    Ok(out.with_history(&[x], || node(Unary { op, x: x.clone(), y })))
}

// ----- pow with a tensor exponent ----------------------------------------------------------------

struct Pow {
    base: Tensor,
    exponent: Tensor,
    /// The forward output (broadcast shape), detached.
    z: Tensor,
}

/// d(x^e)/dx = e·x^(e-1) (0 where e = 0); d(x^e)/de = x^e·ln x (0 where x = 0 and e ≥ 0), as PyTorch.
fn pow_bwd<T: CpuFloat + CpuSlice>(g: &[T], x: &[T], e: &[T], z: &[T]) -> (CpuStorage, CpuStorage) {
    let n = g.len();
    let (mut gx, mut ge) = (vec![T::zero(); n], vec![T::zero(); n]);
    for i in 0..n {
        let (x, e) = (x[i], e[i]);
        gx[i] = if e == T::zero() { T::zero() } else { g[i] * e * x.powf(e - T::one()) };
        ge[i] = if x == T::zero() && e >= T::zero() { T::zero() } else { g[i] * z[i] * x.ln() };
    }
    (T::into_storage(gx), T::into_storage(ge))
}

impl BackwardOp for Pow {
    backward_io!(|s| "pow", [s.base, s.exponent]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dt = self.base.dtype();
        let cd = dt.cpu_compute();
        let shape = self.z.shape().to_vec();
        let prep = |t: &Tensor| -> Result<Tensor> { t.detach().to_dtype(cd)?.broadcast_as(&shape)?.contiguous() };
        let (g, x, e, z) = (prep(g)?, prep(&self.base)?, prep(&self.exponent)?, prep(&self.z)?);
        let (gx, ge) = match cd {
            DType::F32 => pow_bwd::<f32>(&g.to_vec()?, &x.to_vec()?, &e.to_vec()?, &z.to_vec()?),
            DType::F64 => pow_bwd::<f64>(&g.to_vec()?, &x.to_vec()?, &e.to_vec()?, &z.to_vec()?),
            d => return Err(Error::UnsupportedDType { op: "pow", dtype: d }),
        };
        let finish = |s: CpuStorage, like: &Tensor| -> Result<Option<Tensor>> {
            if !like.requires_grad() {
                return Ok(None);
            }
            let full = Tensor::from_storage(Storage::Cpu(s.into_dtype(dt)), &shape)?;
            Ok(Some(sum_to_shape(&full, like.shape())?))
        };
        Ok(vec![finish(gx, &self.base)?, finish(ge, &self.exponent)?])
    }
}

fn pow_kernel<T: CpuFloat + CpuSlice>(x: &[T], e: &[T]) -> CpuStorage {
    let out: Vec<T> = if x.len() >= PAR_MIN {
        x.par_iter().zip(e.par_iter()).map(|(&x, &e)| x.powf(e)).collect()
    } else {
        x.iter().zip(e).map(|(&x, &e)| x.powf(e)).collect()
    };
    T::into_storage(out)
}

impl Tensor {
    /// `e^x`, elementwise. Float dtypes only (else `UnsupportedDType`).
    pub fn exp(&self) -> Result<Tensor> {
        unary(UnaryOp::Exp, self)
    }
    /// Natural logarithm, elementwise (`log(0) = -inf`, negative → NaN, as IEEE).
    pub fn log(&self) -> Result<Tensor> {
        unary(UnaryOp::Log, self)
    }
    /// Square root, elementwise (negative → NaN).
    pub fn sqrt(&self) -> Result<Tensor> {
        unary(UnaryOp::Sqrt, self)
    }
    /// Hyperbolic tangent, elementwise.
    pub fn tanh(&self) -> Result<Tensor> {
        unary(UnaryOp::Tanh, self)
    }
    /// `x²`, elementwise.
    pub fn sqr(&self) -> Result<Tensor> {
        unary(UnaryOp::Sqr, self)
    }
    /// `1/x`, elementwise.
    pub fn recip(&self) -> Result<Tensor> {
        unary(UnaryOp::Recip, self)
    }
    /// `|x|`, elementwise; the gradient at 0 is 0.
    pub fn abs(&self) -> Result<Tensor> {
        unary(UnaryOp::Abs, self)
    }
    /// `max(x, 0)`, elementwise (NaN stays NaN); the gradient at 0 is 0.
    pub fn relu(&self) -> Result<Tensor> {
        unary(UnaryOp::Relu, self)
    }
    /// `x^exponent`, elementwise, for a scalar exponent (d/dx is 0 everywhere when the exponent is 0).
    pub fn powf(&self, exponent: f64) -> Result<Tensor> {
        unary(UnaryOp::Powf(exponent), self)
    }

    /// `self^exponent`, elementwise with numpy broadcasting between base and exponent. Both must
    /// have the same float dtype and device. Gradients flow to both: `e·x^(e-1)` to the base and
    /// `x^e·ln x` to the exponent (0 where `x = 0` and `e ≥ 0`, as PyTorch).
    pub fn pow(&self, exponent: &Tensor) -> Result<Tensor> {
        self.check_same("pow", exponent)?;
        self.check_float("pow")?;
        let shape = broadcast_shapes("pow", self.shape(), exponent.shape())?;
        let dt = self.dtype();
        let cd = dt.cpu_compute();
        let x = self.detach().to_dtype(cd)?.broadcast_as(&shape)?;
        let e = exponent.detach().to_dtype(cd)?.broadcast_as(&shape)?;
        let out = match cd {
            DType::F32 => x.with_slice::<f32, _>(|x| e.with_slice::<f32, _>(|e| pow_kernel(x, e)))??,
            DType::F64 => x.with_slice::<f64, _>(|x| e.with_slice::<f64, _>(|e| pow_kernel(x, e)))??,
            d => return Err(Error::UnsupportedDType { op: "pow", dtype: d }),
        };
        let out = Tensor::from_storage(Storage::Cpu(out.into_dtype(dt)), &shape)?;
        let z = out.detach();
        Ok(out.with_history(&[self, exponent], || node(Pow { base: self.clone(), exponent: exponent.clone(), z })))
    }
}
