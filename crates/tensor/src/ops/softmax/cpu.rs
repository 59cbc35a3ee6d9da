//! CPU kernels of softmax / log-softmax over rows of length `d` (the last dim), forward and fused
//! backward. Rows are independent: chunks of rows run in parallel, each row in three L1-resident
//! passes (max; exp-and-sum; normalise), so memory sees one read of `x` and one write of `y`.
//!
//! - softmax:     `y = e^(x-m) / Σ e^(x-m)`;          backward `dx = y·(dy - Σ dy·y)`
//! - log-softmax: `y = (x - m) - ln Σ e^(x-m)`;        backward `dx = dy - e^y·Σ dy`
//!
//! A row of all `-inf` has no defined softmax: like PyTorch, its outputs are NaN.
use crate::cpu::simd::{self, Level};
#[cfg(target_arch = "x86_64")]
use crate::cpu::vf32::{F256, F512, VF32};
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::body::{dot, exp_sum_row, prefetch_line, sum};
use crate::cpu::uninit_vec;
use crate::cpu::PAR_MIN;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel task (rounded to whole rows).
const CHUNK: usize = 1 << 14;


/// Runs `k` on matching chunks of whole rows of `a` and `out` (and `b` when given), in parallel
/// for large inputs.
pub(crate) fn par_rows<T: Send + Sync, U: Send>(d: usize, a: &[T], b: Option<&[T]>, out: &mut [U], k: impl Fn(&[T], &[T], &mut [U]) + Sync) {
    if d == 0 || out.is_empty() {
        return;
    }
    let step = (CHUNK / d).max(1) * d;
    let b = b.unwrap_or(&[]);
    let bc = |i: usize| if b.is_empty() { &b[..0] } else { &b[i * step..((i + 1) * step).min(b.len())] };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(step).zip(a.par_chunks(step)).enumerate().for_each(|(i, (o, a))| k(a, bc(i), o));
    } else {
        out.chunks_mut(step).zip(a.chunks(step)).enumerate().for_each(|(i, (o, a))| k(a, bc(i), o));
    }
}

/// Sum accumulated in f64: the generic kernels are the scalar reference, so they avoid the error
/// of long sequential f32 sums.
pub(crate) fn sum64<T: CpuFloat>(it: impl Iterator<Item = T>) -> T {
    T::from_f64(it.map(|v| v.to_f64()).sum())
}

/// Generic forward (f64, and f32 at the scalar level).
pub fn softmax_fwd<T: CpuFloat>(x: &[T], d: usize, log: bool) -> Vec<T> {
    let k = |x: &[T], _: &[T], y: &mut [MaybeUninit<T>]| {
        for (x, y) in x.chunks(d).zip(y.chunks_mut(d)) {
            let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
            let s = sum64(x.iter().map(|&v| (v - m).exp()));
            let (ls, inv) = (s.ln(), T::one() / s);
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(if log { (x - m) - ls } else { (x - m).exp() * inv });
            }
        }
    };
    // SAFETY: `k` writes every element of each chunk of whole rows.
    unsafe { uninit_vec(x.len(), |y| par_rows(d, x, None, y, k)) }
}

/// Generic fused backward from the saved output `y` and the incoming gradient `dy`.
pub fn softmax_bwd<T: CpuFloat>(y: &[T], dy: &[T], d: usize, log: bool) -> Vec<T> {
    let k = |y: &[T], dy: &[T], dx: &mut [MaybeUninit<T>]| {
        for ((y, dy), dx) in y.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
            let s = if log { sum64(dy.iter().copied()) } else { sum64(y.iter().zip(dy).map(|(&a, &b)| a * b)) };
            for i in 0..d {
                dx[i].write(if log { dy[i] - y[i].exp() * s } else { y[i] * (dy[i] - s) });
            }
        }
    };
    // SAFETY: `k` writes every element of each chunk of whole rows.
    unsafe { uninit_vec(y.len(), |dx| par_rows(d, y, Some(dy), dx, k)) }
}

/// f32 forward with the best SIMD level.
pub fn softmax_fwd_f32(x: &[f32], d: usize, log: bool) -> Vec<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar {
        return softmax_fwd(x, d, log);
    }
    let k = |x: &[f32], _: &[f32], y: &mut [MaybeUninit<f32>]| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { fwd_avx512(x, y, d, log) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { fwd_avx2(x, y, d, log) },
        _ => unreachable!(),
    };
    // SAFETY: the SIMD bodies write every element of each chunk of whole rows.
    unsafe { uninit_vec(x.len(), |y| par_rows(d, x, None, y, k)) }
}

/// f32 fused backward with the best SIMD level.
pub fn softmax_bwd_f32(y: &[f32], dy: &[f32], d: usize, log: bool) -> Vec<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar {
        return softmax_bwd(y, dy, d, log);
    }
    let k = |y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { bwd_avx512(y, dy, dx, d, log) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { bwd_avx2(y, dy, dx, d, log) },
        _ => unreachable!(),
    };
    // SAFETY: the SIMD bodies write every element of each chunk of whole rows.
    unsafe { uninit_vec(y.len(), |dx| par_rows(d, y, Some(dy), dx, k)) }
}

// ----- SIMD row bodies (shared with cross_entropy) ------------------------------------------------

/// Max of a row (-inf for an empty row).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn max_row<V: VF32>(x: &[f32]) -> f32 {
    let (n, l) = (x.len(), V::LANES);
    let (mut m0, mut m1) = (V::splat(f32::NEG_INFINITY), V::splat(f32::NEG_INFINITY));
    let mut i = 0;
    while i + 2 * l <= n {
        m0 = V::load(x.as_ptr().add(i)).max(m0);
        m1 = V::load(x.as_ptr().add(i + l)).max(m1);
        i += 2 * l;
    }
    if i + l <= n {
        m0 = V::load(x.as_ptr().add(i)).max(m0);
        i += l;
    }
    if i < n {
        m1 = V::load_tail(&x[i..], f32::NEG_INFINITY).max(m1);
    }
    m0.max(m1).hmax()
}

/// `y *= a` over a row of `n` (initialized) floats, prefetching the row at `next`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scale_row<V: VF32>(y: *mut f32, n: usize, a: f32, next: *const f32) {
    let (l, av) = (V::LANES, V::splat(a));
    let mut i = 0;
    while i + l <= n {
        prefetch_line(next, i);
        V::load(y.add(i)).mul(av).store(y.add(i));
        i += l;
    }
    if i < n {
        V::load_part(y.add(i), n - i, 0.0).mul(av).store_part(y.add(i), n - i);
    }
}

/// `y = (x - m) - c` over a row (in this order: exact for the max element even when `m` is huge),
/// prefetching the row at `next`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn shift_row<V: VF32>(x: &[f32], y: *mut f32, m: f32, c: f32, next: *const f32) {
    let (n, l, mv, cv) = (x.len(), V::LANES, V::splat(m), V::splat(c));
    let mut i = 0;
    while i + l <= n {
        prefetch_line(next, i);
        V::load(x.as_ptr().add(i)).sub(mv).sub(cv).store(y.add(i));
        i += l;
    }
    if i < n {
        V::load_tail(&x[i..], 0.0).sub(mv).sub(cv).store_part(y.add(i), n - i);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fwd_rows<V: VF32>(x: &[f32], y: &mut [MaybeUninit<f32>], d: usize, log: bool) {
    for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let yp = y.as_mut_ptr().cast::<f32>();
        let m = max_row::<V>(x);
        let next = x.as_ptr().wrapping_add(d);
        if log {
            let ls = exp_sum_row::<V>(x.as_ptr(), x.len(), m, None).ln();
            shift_row::<V>(x, yp, m, ls, next);
        } else {
            let s = exp_sum_row::<V>(x.as_ptr(), x.len(), m, Some(yp));
            scale_row::<V>(yp, d, 1.0 / s, next);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_rows<V: VF32>(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], d: usize, log: bool) {
    let l = V::LANES;
    for ((y, dy), dx) in y.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let main = d / l * l;
        let (yp, gp, op) = (y.as_ptr(), dy.as_ptr(), dx.as_mut_ptr().cast::<f32>());
        // s = Σ dy (log) or Σ dy·y (softmax)
        let s = V::splat(if log { sum::<V>(dy) } else { dot::<V>(dy, y) });
        let (yt, gt) = (V::load_tail(&y[main..], 0.0), V::load_tail(&dy[main..], 0.0));
        let mut i = 0;
        while i < main {
            prefetch_line(yp.wrapping_add(d), i);
            prefetch_line(gp.wrapping_add(d), i);
            bwd_elem(V::load(yp.add(i)), V::load(gp.add(i)), s, log).store(op.add(i));
            i += l;
        }
        if main < d {
            bwd_elem(yt, gt, s, log).store_part(op.add(main), d - main);
        }
    }
}

/// One vector of the backward: `dy - e^y·s` (log) or `y·(dy - s)`. (A function, not a closure:
/// closures are not always inlined, and an outlined one would not get the target features.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_elem<V: VF32>(y: V, g: V, s: V, log: bool) -> V {
    if log {
        y.exp().fnma(s, g)
    } else {
        y.mul(g.sub(s))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_avx512(x: &[f32], y: &mut [MaybeUninit<f32>], d: usize, log: bool) {
    fwd_rows::<F512>(x, y, d, log)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_avx2(x: &[f32], y: &mut [MaybeUninit<f32>], d: usize, log: bool) {
    fwd_rows::<F256>(x, y, d, log)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_avx512(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], d: usize, log: bool) {
    bwd_rows::<F512>(y, dy, dx, d, log)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_avx2(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], d: usize, log: bool) {
    bwd_rows::<F256>(y, dy, dx, d, log)
}

/// Calls `f` with both tensors' elements as contiguous slices and wraps the result.
fn with2<T: CpuSlice>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[T], &[T]) -> Vec<T>) -> Result<CpuStorage> {
    a.with_slice::<T, _>(|a| b.with_slice::<T, _>(|b| T::into_storage(f(a, b))))?
}

/// Length of the rows the op works on (a 0-d tensor is one row of one element).
fn last_dim(t: &Tensor) -> usize {
    t.shape().last().copied().unwrap_or(1)
}

/// The forward on the CPU: the output in `x`'s dtype and, when a backward will be recorded, the
/// output in the compute dtype that the backward reads (`out` itself, or an f32 copy for half types).
pub(super) fn forward(x: &Tensor, log: bool) -> Result<(Tensor, Option<Tensor>)> {
    let op = super::name(log);
    let (dt, d) = (x.dtype(), last_dim(x));
    let xc = x.detach().to_dtype(dt.cpu_compute())?;
    let y = match dt.cpu_compute() {
        DType::F32 => xc.with_slice::<f32, _>(|v| CpuStorage::F32(softmax_fwd_f32(v, d, log)))?,
        DType::F64 => xc.with_slice::<f64, _>(|v| CpuStorage::F64(softmax_fwd(v, d, log)))?,
        c => return Err(Error::UnsupportedDType { op, dtype: c }),
    };
    let (out, y) = if dt == dt.cpu_compute() { (y, None) } else { (y.to_dtype(dt), Some(y)) };
    let out = Tensor::from_storage(Storage::Cpu(out), x.shape())?;
    let saved = match y {
        _ if !(crate::is_grad_enabled() && x.requires_grad()) => None,
        None => Some(out.detach()),
        Some(y) => Some(Tensor::from_storage(Storage::Cpu(y), x.shape())?),
    };
    Ok((out, saved))
}

/// The fused backward on the CPU from the saved output `y` (compute dtype), in dtype `dt`.
pub(super) fn backward(y: &Tensor, g: &Tensor, log: bool, dt: DType) -> Result<Storage> {
    let d = last_dim(y);
    let g = g.to_dtype(y.dtype())?;
    let dx = match y.dtype() {
        DType::F32 => with2::<f32>(y, &g, |y, g| softmax_bwd_f32(y, g, d, log))?,
        DType::F64 => with2::<f64>(y, &g, |y, g| softmax_bwd(y, g, d, log))?,
        other => return Err(Error::UnsupportedDType { op: super::name(log), dtype: other }),
    };
    Ok(Storage::Cpu(dx.into_dtype(dt)))
}
