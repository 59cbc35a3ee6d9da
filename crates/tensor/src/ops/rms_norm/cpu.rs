//! RMSNorm on the CPU: the kernels over rows of length `d`, forward and fused backward, and their
//! tensor-level glue (`forward`, `backward`).
//!
//! Forward, per row: `rstd = 1/√(mean(x²) + eps)`, `y = x·rstd·w`; `rstd` is saved.
//! Backward, per row, with `x̂ = x·rstd` and `g = dy·w`: `dx = rstd·(g - x̂·mean(g·x̂))`,
//! `dw += dy·x̂` — one pass for the row sum and one that writes `dx` and accumulates `dw`. Rows go in
//! blocks ([`crate::cpu::rows`]): the `dw` partials are added in block order, so the result does
//! not depend on the thread count.
use super::RmsNormBackward;
use crate::cpu::rows::{self, bwd_blocks, fwd_blocks};
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::body::{acc4, ld, prefetch_line, st};
use crate::cpu::simd::{self, Level};
#[cfg(target_arch = "x86_64")]
use crate::cpu::vf32::{F256, F512, VF32};
use crate::ops::softmax::cpu::sum64;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Device, Error, Result, Tensor};
use std::mem::MaybeUninit;

type Out<T> = MaybeUninit<T>;

/// Forward outputs: `y` and the per-row `rstd`.
pub struct RmsForward<T> {
    pub y: Vec<T>,
    pub rstd: Vec<T>,
}

/// Backward outputs: `dx`, and `dw` (`d` elements; zeros without a weight).
pub struct RmsBackward<T> {
    pub dx: Vec<T>,
    pub dw: Vec<T>,
}

/// Signature of the forward kernels: `(x, weight, d, eps)`.
pub type FwdFn<T> = fn(&[T], Option<&[T]>, usize, f64) -> RmsForward<T>;
/// Signature of the backward kernels: `(x, dy, weight, rstd, d)`.
pub type BwdFn<T> = fn(&[T], &[T], Option<&[T]>, &[T], usize) -> RmsBackward<T>;

fn ones<T: CpuFloat>(w: Option<&[T]>, d: usize) -> Vec<T> {
    w.map_or_else(|| vec![T::one(); d], <[T]>::to_vec)
}

/// The forward over blocks of rows ([`fwd_blocks`]): `k(x, y, rstd)` fills a block's rows and their
/// `rstd`.
fn fwd_driver<T: CpuFloat>(x: &[T], d: usize, k: impl Fn(&[T], &mut [Out<T>], &mut [T]) + Sync) -> RmsForward<T> {
    let (y, [rstd]) = fwd_blocks(x, d, |x, y, [r]: &mut [Vec<T>; 1]| k(x, y, r));
    RmsForward { y, rstd }
}

/// The backward over blocks of rows: `k(x, dy, dx, rstd, dw_partial)` per block.
fn bwd_driver<T: CpuFloat>(
    x: &[T],
    dy: &[T],
    rstd: &[T],
    d: usize,
    k: impl Fn(&[T], &[T], &mut [Out<T>], &[T], &mut [T]) + Sync,
) -> RmsBackward<T> {
    let (dx, dw) = bwd_blocks(rstd.len(), d, 1, |r, dx, dw| k(&x[r.start * d..r.end * d], &dy[r.start * d..r.end * d], dx, &rstd[r], dw));
    RmsBackward { dx, dw }
}

/// Generic forward (f64, and f32 at the scalar level). `x` has `rows·d` elements.
pub fn rms_norm_fwd<T: CpuFloat>(x: &[T], w: Option<&[T]>, d: usize, eps: f64) -> RmsForward<T> {
    let w = ones(w, d);
    let (inv_d, eps) = (T::one() / T::from_f64(d as f64), T::from_f64(eps));
    fwd_driver(x, d, |x, y, r| {
        for (i, (x, y)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
            let rs = T::one() / (sum64(x.iter().map(|&v| v * v)) * inv_d + eps).sqrt();
            for j in 0..d {
                y[j].write(x[j] * rs * w[j]);
            }
            r[i] = rs;
        }
    })
}

/// Generic fused backward.
pub fn rms_norm_bwd<T: CpuFloat>(x: &[T], dy: &[T], w: Option<&[T]>, rstd: &[T], d: usize) -> RmsBackward<T> {
    let w = ones(w, d);
    let inv_d = T::one() / T::from_f64(d as f64);
    bwd_driver(x, dy, rstd, d, |x, dy, dx, r, dw| {
        for (i, ((x, dy), dx)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).enumerate() {
            let rs = r[i];
            let c = sum64((0..d).map(|j| dy[j] * w[j] * x[j] * rs)) * inv_d;
            for j in 0..d {
                let xh = x[j] * rs;
                dx[j].write(rs * (dy[j] * w[j] - xh * c));
                dw[j] += dy[j] * xh;
            }
        }
    })
}

/// f32 forward with the best SIMD level.
pub fn rms_norm_fwd_f32(x: &[f32], w: Option<&[f32]>, d: usize, eps: f64) -> RmsForward<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar || d == 0 {
        return rms_norm_fwd(x, w, d, eps);
    }
    let w = ones(w, d);
    fwd_driver(x, d, |x, y, r| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { fwd_avx512(x, y, r, &w, eps as f32) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { fwd_avx2(x, y, r, &w, eps as f32) },
        _ => unreachable!(),
    })
}

/// f32 fused backward with the best SIMD level.
pub fn rms_norm_bwd_f32(x: &[f32], dy: &[f32], w: Option<&[f32]>, rstd: &[f32], d: usize) -> RmsBackward<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar || d == 0 {
        return rms_norm_bwd(x, dy, w, rstd, d);
    }
    let w = ones(w, d);
    bwd_driver(x, dy, rstd, d, |x, dy, dx, r, dw| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { bwd_avx512(x, dy, dx, r, &w, dw) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { bwd_avx2(x, dy, dx, r, &w, dw) },
        _ => unreachable!(),
    })
}

// ----- SIMD bodies ----------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fwd_rows<V: VF32>(x: &[f32], y: &mut [Out<f32>], r: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    for (i, (x, y)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        let (xp, main) = (x.as_ptr(), d / V::LANES * V::LANES);
        let mut q = acc4::<V>(main, |j, a| {
            let v = V::load(xp.add(j));
            v.fma(v, a)
        });
        if main < d {
            let v = V::load_tail(&x[main..], 0.0);
            q = v.fma(v, q);
        }
        let rs = 1.0 / (q.hsum() * inv_d + eps).sqrt();
        let rsv = V::splat(rs);
        let yp: *mut f32 = y.as_mut_ptr().cast();
        for j in (0..d).step_by(V::LANES) {
            prefetch_line(xp.wrapping_add(d), j);
            st(ld::<V>(x, j).mul(rsv).mul(ld::<V>(w, j)), yp, d, j);
        }
        r[i] = rs;
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_rows<V: VF32>(x: &[f32], dy: &[f32], dx: &mut [Out<f32>], r: &[f32], w: &[f32], dw: &mut [f32]) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    let dxp: *mut f32 = dx.as_mut_ptr().cast();
    for (i, (x, dy)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).enumerate() {
        let rsv = V::splat(r[i]);
        // Σ g·x̂ with g = dy·w
        let mut c = V::splat(0.0);
        for j in (0..d).step_by(V::LANES) {
            let g = ld::<V>(dy, j).mul(ld::<V>(w, j));
            c = g.fma(ld::<V>(x, j).mul(rsv), c);
        }
        let cv = V::splat(c.hsum() * inv_d);
        let row = dxp.add(i * d);
        for j in (0..d).step_by(V::LANES) {
            prefetch_line(x.as_ptr().wrapping_add(d), j);
            prefetch_line(dy.as_ptr().wrapping_add(d), j);
            let (g, xh) = (ld::<V>(dy, j), ld::<V>(x, j).mul(rsv));
            st(xh.fnma(cv, g.mul(ld::<V>(w, j))).mul(rsv), row, d, j);
            st(g.fma(xh, ld::<V>(dw, j)), dw.as_mut_ptr(), d, j);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_avx512(x: &[f32], y: &mut [Out<f32>], r: &mut [f32], w: &[f32], eps: f32) {
    fwd_rows::<F512>(x, y, r, w, eps)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_avx2(x: &[f32], y: &mut [Out<f32>], r: &mut [f32], w: &[f32], eps: f32) {
    fwd_rows::<F256>(x, y, r, w, eps)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_avx512(x: &[f32], dy: &[f32], dx: &mut [Out<f32>], r: &[f32], w: &[f32], dw: &mut [f32]) {
    bwd_rows::<F512>(x, dy, dx, r, w, dw)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_avx2(x: &[f32], dy: &[f32], dx: &mut [Out<f32>], r: &[f32], w: &[f32], dw: &mut [f32]) {
    bwd_rows::<F256>(x, dy, dx, r, w, dw)
}

fn fwd<T: CpuFloat + CpuSlice>(x: &Tensor, w: Option<&Tensor>, eps: f64, k: FwdFn<T>) -> Result<(Tensor, Storage)> {
    let d = x.shape().last().copied().unwrap_or(1);
    let xc = x.detach().to_dtype(T::DTYPE)?;
    let ws = w.map(rows::param::<T>).transpose()?;
    let r = xc.with_slice::<T, _>(|xs| k(xs, ws.as_deref(), d, eps))?;
    let y = Tensor::from_storage(Storage::Cpu(T::into_storage(r.y).into_dtype(x.dtype())), x.shape())?;
    Ok((y, Storage::Cpu(T::into_storage(r.rstd))))
}

/// The forward on the CPU (inputs validated by `Tensor::rms_norm`): `(y, rstd)`, `rstd` in the
/// compute dtype.
pub(super) fn forward(x: &Tensor, w: Option<&Tensor>, eps: f64) -> Result<(Tensor, Storage)> {
    match x.dtype().cpu_compute() {
        DType::F32 => fwd::<f32>(x, w, eps, rms_norm_fwd_f32),
        DType::F64 => fwd::<f64>(x, w, eps, rms_norm_fwd::<f64>),
        dt => Err(Error::UnsupportedDType { op: super::OP, dtype: dt }),
    }
}

fn bwd<T: CpuFloat + CpuSlice>(node: &RmsNormBackward, rstd: &CpuStorage, g: &Tensor, k: BwdFn<T>) -> Result<Vec<Option<Tensor>>> {
    let d = node.x.shape().last().copied().unwrap_or(1);
    let (xc, gc) = (node.x.detach().to_dtype(T::DTYPE)?, g.to_dtype(T::DTYPE)?);
    let w = node.w.as_ref().map(rows::param::<T>).transpose()?;
    let rstd = rstd.as_slice::<T>()?;
    let r = xc.with_slice::<T, _>(|x| gc.with_slice::<T, _>(|dy| k(x, dy, w.as_deref(), rstd, d)))??;
    let wrap = |v: Vec<T>, like: &Tensor| Tensor::from_storage(Storage::Cpu(T::into_storage(v).into_dtype(like.dtype())), like.shape());
    let mut out = vec![Some(wrap(r.dx, &node.x)?)];
    if let Some(w) = &node.w {
        out.push(Some(wrap(r.dw, w)?));
    }
    Ok(out)
}

/// The fused backward on the CPU, from the saved `rstd`.
pub(super) fn backward(node: &RmsNormBackward, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let Storage::Cpu(rstd) = &node.rstd else {
        return Err(Error::DeviceMismatch { op: super::OP, lhs: Device::Cpu, rhs: node.x.device() });
    };
    match rstd.dtype() {
        DType::F32 => bwd::<f32>(node, rstd, g, rms_norm_bwd_f32),
        DType::F64 => bwd::<f64>(node, rstd, g, rms_norm_bwd::<f64>),
        dt => Err(Error::UnsupportedDType { op: super::OP, dtype: dt }),
    }
}
