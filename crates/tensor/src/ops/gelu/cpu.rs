//! CPU kernels of GELU, forward and fused backward, for both forms:
//! - exact: `gelu(x) = x·Φ(x) = 0.5·x·(1 + erf(x/√2))`, `gelu'(x) = Φ(x) + x·φ(x)`;
//! - tanh: `gelu(x) = 0.5·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`, computed as
//!   `x·σ(2u)` (σ the logistic function), so `gelu'(x) = s + 2·x·s·(1 - s)·u'` with `s = σ(2u)`.
//!
//! f32 runs SIMD bodies (AVX-512F / AVX2+FMA, chosen by [`simd::level`]) over chunks in parallel;
//! the scalar level and f64 use the generic kernels, which evaluate erf in f64 ([`erf_f64`]).
//! The SIMD erf is a piecewise polynomial (8 intervals of width 0.5 on [0, 4), degree 7, chosen
//! per lane by a permute), max abs. error ≈ 1.5e-7; the SIMD exp is the shared one in `cpu::vf32`.
use super::GeluApprox;
use crate::cpu::simd::{self, Level};
#[cfg(target_arch = "x86_64")]
use crate::cpu::vf32::{F256, F512, VF32};
use crate::cpu::PAR_MIN;
use crate::cpu::uninit_vec;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const TANH_C: f64 = 0.044_715;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `erf(x)` in f64, abs. error ≲ 1e-15: the series `2/√π·e^{-x²}·Σ 2ⁿx^{2n+1}/(2n+1)!!` (all terms
/// positive) below 3, the continued fraction of erfc from 3 to 6, ±1 beyond.
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    if a.is_nan() {
        return x;
    }
    if a >= 6.0 {
        return 1f64.copysign(x);
    }
    let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
    let r = if a < 3.0 {
        let a2 = a * a;
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * a2 / (2.0 * n + 1.0);
            sum += term;
        }
        two_over_sqrt_pi * (-a2).exp() * sum
    } else {
        let mut f = a;
        for k in (1..=60).rev() {
            f = a + (k as f64 * 0.5) / f;
        }
        1.0 - (-a * a).exp() * (0.5 * two_over_sqrt_pi) / f
    };
    r.copysign(x)
}

#[inline(always)]
fn fwd_scalar<T: CpuFloat>(x: T, approx: GeluApprox) -> T {
    let c = |v: f64| T::from_f64(v);
    match approx {
        GeluApprox::Erf => {
            let e = erf_f64(x.to_f64() * std::f64::consts::FRAC_1_SQRT_2);
            x * (c(0.5) + c(0.5) * T::from_f64(e))
        }
        GeluApprox::Tanh => {
            let u = x * (c(SQRT_2_OVER_PI) + c(SQRT_2_OVER_PI * TANH_C) * x * x);
            x / (T::one() + (-(u + u)).exp())
        }
    }
}

#[inline(always)]
fn bwd_scalar<T: CpuFloat>(x: T, dy: T, approx: GeluApprox) -> T {
    let c = |v: f64| T::from_f64(v);
    match approx {
        GeluApprox::Erf => {
            let cdf = c(0.5) + c(0.5) * T::from_f64(erf_f64(x.to_f64() * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = (c(-0.5) * x * x).exp() * c(INV_SQRT_2PI);
            dy * (cdf + x * pdf)
        }
        GeluApprox::Tanh => {
            let x2 = x * x;
            let u = x * (c(SQRT_2_OVER_PI) + c(SQRT_2_OVER_PI * TANH_C) * x2);
            let du = c(SQRT_2_OVER_PI) + c(3.0 * SQRT_2_OVER_PI * TANH_C) * x2;
            let s = T::one() / (T::one() + (-(u + u)).exp());
            dy * (s + (x + x) * s * (T::one() - s) * du)
        }
    }
}

/// Generic forward (f64, and f32 at the scalar level).
pub fn gelu_fwd<T: CpuFloat>(x: &[T], approx: GeluApprox) -> Vec<T> {
    let k = |x: &[T], y: &mut [MaybeUninit<T>]| {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(fwd_scalar(x, approx));
        }
    };
    // SAFETY: `k` writes every element of each chunk.
    unsafe { uninit_vec(x.len(), |y| par_zip2(x, y, k)) }
}

/// Generic fused backward: `dx = dy · gelu'(x)`.
pub fn gelu_bwd<T: CpuFloat>(x: &[T], dy: &[T], approx: GeluApprox) -> Vec<T> {
    let k = |x: &[T], dy: &[T], dx: &mut [MaybeUninit<T>]| {
        for i in 0..dx.len() {
            dx[i].write(bwd_scalar(x[i], dy[i], approx));
        }
    };
    // SAFETY: `k` writes every element of each chunk.
    unsafe { uninit_vec(x.len(), |dx| par_zip3(x, dy, dx, k)) }
}

/// f32 forward with the best SIMD level.
pub fn gelu_fwd_f32(x: &[f32], approx: GeluApprox) -> Vec<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar {
        return gelu_fwd(x, approx);
    }
    // SAFETY: the SIMD bodies write every element.
    unsafe { uninit_vec(x.len(), |y| par_zip2(x, y, |x, y| simd_fwd(lvl, x, y, approx))) }
}

/// f32 fused backward with the best SIMD level.
pub fn gelu_bwd_f32(x: &[f32], dy: &[f32], approx: GeluApprox) -> Vec<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar {
        return gelu_bwd(x, dy, approx);
    }
    // SAFETY: the SIMD bodies write every element.
    unsafe { uninit_vec(x.len(), |dx| par_zip3(x, dy, dx, |x, dy, dx| simd_bwd(lvl, x, dy, dx, approx))) }
}

/// SIMD `erf` of each element (the same code the f32 GELU kernels use), for tests of its accuracy.
pub fn erf_f32(x: &[f32]) -> Vec<f32> {
    let k = |y: &mut [MaybeUninit<f32>]| match simd::level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { erf_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { erf_avx2(x, y) },
        _ => y.iter_mut().zip(x).for_each(|(y, &x)| {
            y.write(erf_f64(x as f64) as f32);
        }),
    };
    // SAFETY: every branch writes every element.
    unsafe { uninit_vec(x.len(), k) }
}

fn par_zip2<T: Send + Sync, U: Send>(x: &[T], y: &mut [U], k: impl Fn(&[T], &mut [U]) + Sync) {
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| k(x, y));
    } else {
        k(x, y);
    }
}

fn par_zip3<T: Send + Sync, U: Send>(x: &[T], dy: &[T], dx: &mut [U], k: impl Fn(&[T], &[T], &mut [U]) + Sync) {
    if x.len() >= PAR_MIN {
        dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| k(x, dy, dx));
    } else {
        k(x, dy, dx);
    }
}

// ----- SIMD bodies --------------------------------------------------------------------------------

#[allow(unused_variables)]
fn simd_fwd(lvl: Level, x: &[f32], y: &mut [MaybeUninit<f32>], approx: GeluApprox) {
    match (lvl, approx) {
        #[cfg(target_arch = "x86_64")]
        (Level::Avx512, GeluApprox::Erf) => unsafe { fwd_erf_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        (Level::Avx512, GeluApprox::Tanh) => unsafe { fwd_tanh_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2, GeluApprox::Erf) => unsafe { fwd_erf_avx2(x, y) },
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2, GeluApprox::Tanh) => unsafe { fwd_tanh_avx2(x, y) },
        _ => unreachable!("gelu: no SIMD body for {lvl:?}"),
    }
}

#[allow(unused_variables)]
fn simd_bwd(lvl: Level, x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], approx: GeluApprox) {
    match (lvl, approx) {
        #[cfg(target_arch = "x86_64")]
        (Level::Avx512, GeluApprox::Erf) => unsafe { bwd_erf_avx512(x, dy, dx) },
        #[cfg(target_arch = "x86_64")]
        (Level::Avx512, GeluApprox::Tanh) => unsafe { bwd_tanh_avx512(x, dy, dx) },
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2, GeluApprox::Erf) => unsafe { bwd_erf_avx2(x, dy, dx) },
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2, GeluApprox::Tanh) => unsafe { bwd_tanh_avx2(x, dy, dx) },
        _ => unreachable!("gelu: no SIMD body for {lvl:?}"),
    }
}

/// `ERF_POLY[j][k]`: coefficient of `t^(7-j)` on interval k (`|x| ∈ [k/2, k/2 + 1/2)`), in the
/// local variable `t = 2|x| - k - 1/2 ∈ [-1/2, 1/2)`. Chebyshev fits of erf, max error 1.2e-9.
#[cfg(target_arch = "x86_64")]
const ERF_POLY: [[f32; 8]; 8] = [
    [-1.237_746_8e-4, 1.402_019_3e-4, 2.915_821e-5, -4.646_133_7e-5, -5.593_203e-6, 4.976_328e-6, 1.353_120_6e-6, 1.331_812_2e-7],
    [-6.146_930_4e-4, -4.153_573_5e-4, 3.218_366_5e-4, 1.414e-4, -4.343_064_6e-5, -2.606_037_4e-5, -4.277_468e-6, -3.233_091_4e-7],
    [2.501_269_3e-3, -1.663_240_4e-3, -1.474_535_8e-3, 2.068_749_7e-4, 3.331_077e-4, 8.613_015e-5, 9.802_259e-6, 5.731_476e-7],
    [7.933_408e-3, 9.417_227e-3, -3.832_510_6e-4, -3.006_596e-3, -1.193_016_1e-3, -2.036_068_2e-4, -1.788_559_2e-5, -8.615_918e-7],
    [-3.864_633e-2, 3.348_569_6e-3, 2.094_198e-2, 1.126_966_7e-2, 2.715_566_4e-3, 3.450_480_3e-4, 2.447_640_9e-5, 9.962_494e-7],
    [-6.625_074e-2, -0.120_549_54, -7.391_293e-2, -2.308_905_1e-2, -4.017_539_3e-3, -4.030_668_6e-4, -2.371_733_4e-5, -8.265_174e-7],
    [0.530_007_06, 0.321_465_52, 0.118_260_56, 2.638_749_8e-2, 3.571_159_4e-3, 2.931_386_4e-4, 1.459_451_1e-5, 4.407_157_2e-7],
    [0.276_326_4, 0.711_155_65, 0.922_900_1, 0.986_671_7, 0.998_537_3, 0.999_899_4, 0.999_995_7, 0.999_999_9],
];

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn erf_v<V: VF32>(x: V) -> V {
    // the derivative's extra FMAs and select are dead here and compiled away
    erf_deriv_v(x).0
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn cdf_v<V: VF32>(x: V) -> V {
    erf_v(x.mul(V::splat(std::f32::consts::FRAC_1_SQRT_2))).fma(V::splat(0.5), V::splat(0.5))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fwd_erf_v<V: VF32>(x: V) -> V {
    x.mul(cdf_v(x))
}

/// `(erf(z), erf'(z))` from one pass over the piecewise polynomial: Horner's rule for p(t) and p'(t)
/// together (`t` moves 2 per unit of |z|), so the backward needs no `exp` for the Gaussian density.
/// Where |z| ≥ 4 (erf is ±1 to f32 precision) the derivative is 0; the true value there is at most
/// 1.3e-7. The derivative of the 1.2e-9 fit is off by ≤ 2.4e-7 (Markov's inequality, degree 7).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn erf_deriv_v<V: VF32>(z: V) -> (V, V) {
    let s = V::splat(7.999_999_5).min(z.abs().add(z.abs()));
    let k = s.trunc();
    let t = s.sub(k).sub(V::splat(0.5));
    let mut p = k.lookup8(&ERF_POLY[0]);
    let mut dp = V::splat(0.0);
    for row in &ERF_POLY[1..] {
        dp = dp.fma(t, p);
        p = p.fma(t, k.lookup8(row));
    }
    let inside = z.abs().lt(V::splat(4.0));
    (p.copysign(z), V::select(inside, dp.add(dp), V::splat(0.0)))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_erf_v<V: VF32>(x: V, dy: V) -> V {
    // Φ(x) = ½ + ½·erf(x/√2), φ(x) = Φ'(x) = erf'(x/√2) / (2√2)
    let (e, de) = erf_deriv_v(x.mul(V::splat(std::f32::consts::FRAC_1_SQRT_2)));
    let cdf = e.fma(V::splat(0.5), V::splat(0.5));
    let pdf = de.mul(V::splat(0.5 * std::f32::consts::FRAC_1_SQRT_2));
    dy.mul(x.fma(pdf, cdf))
}

/// `(x, s)` with `s = σ(2u)` of the tanh form.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tanh_sig_v<V: VF32>(x: V) -> V {
    let x2 = x.mul(x);
    let m2u = x.mul(x2.fma(V::splat((-2.0 * SQRT_2_OVER_PI * TANH_C) as f32), V::splat((-2.0 * SQRT_2_OVER_PI) as f32)));
    let one = V::splat(1.0);
    one.div(one.add(m2u.exp()))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fwd_tanh_v<V: VF32>(x: V) -> V {
    x.mul(tanh_sig_v(x))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_tanh_v<V: VF32>(x: V, dy: V) -> V {
    let s = tanh_sig_v(x);
    let du2 = x.mul(x).fma(V::splat((6.0 * SQRT_2_OVER_PI * TANH_C) as f32), V::splat((2.0 * SQRT_2_OVER_PI) as f32));
    // s + x·s·(1-s)·2u'
    let t = x.mul(s).mul(V::splat(1.0).sub(s));
    dy.mul(t.fma(du2, s))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
/// `y = f(x)` lane-wise; `f` is an `#[inline(always)]` fn item (closures may stay outlined).
unsafe fn map1<V: VF32>(x: &[f32], y: &mut [MaybeUninit<f32>], f: unsafe fn(V) -> V) {
    let (n, l, yp) = (x.len(), V::LANES, y.as_mut_ptr().cast::<f32>());
    let mut i = 0;
    while i + l <= n {
        f(V::load(x.as_ptr().add(i))).store(yp.add(i));
        i += l;
    }
    if i < n {
        f(V::load_tail(&x[i..], 0.0)).store_part(yp.add(i), n - i);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn map2<V: VF32>(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], f: unsafe fn(V, V) -> V) {
    let (n, l, op) = (x.len(), V::LANES, dx.as_mut_ptr().cast::<f32>());
    let mut i = 0;
    while i + l <= n {
        f(V::load(x.as_ptr().add(i)), V::load(dy.as_ptr().add(i))).store(op.add(i));
        i += l;
    }
    if i < n {
        f(V::load_tail(&x[i..], 0.0), V::load_tail(&dy[i..], 0.0)).store_part(op.add(i), n - i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_erf_avx512(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    map1::<F512>(x, y, fwd_erf_v::<F512>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_tanh_avx512(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    map1::<F512>(x, y, fwd_tanh_v::<F512>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_erf_avx512(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    map2::<F512>(x, dy, dx, bwd_erf_v::<F512>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_tanh_avx512(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    map2::<F512>(x, dy, dx, bwd_tanh_v::<F512>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn erf_avx512(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    map1::<F512>(x, y, erf_v::<F512>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_erf_avx2(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    map1::<F256>(x, y, fwd_erf_v::<F256>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_tanh_avx2(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    map1::<F256>(x, y, fwd_tanh_v::<F256>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_erf_avx2(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    map2::<F256>(x, dy, dx, bwd_erf_v::<F256>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_tanh_avx2(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    map2::<F256>(x, dy, dx, bwd_tanh_v::<F256>)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn erf_avx2(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    map1::<F256>(x, y, erf_v::<F256>)
}

/// The forward on the CPU: `gelu(x)` in `x`'s dtype (bf16/f16 computed in f32).
pub(super) fn forward(x: &Tensor, approx: GeluApprox) -> Result<Storage> {
    let dt = x.dtype();
    let xc = x.detach().to_dtype(dt.cpu_compute())?;
    let y = match dt.cpu_compute() {
        DType::F32 => xc.with_slice::<f32, _>(|v| CpuStorage::F32(gelu_fwd_f32(v, approx)))?,
        DType::F64 => xc.with_slice::<f64, _>(|v| CpuStorage::F64(gelu_fwd(v, approx)))?,
        d => return Err(Error::UnsupportedDType { op: approx.name(), dtype: d }),
    };
    Ok(Storage::Cpu(y.into_dtype(dt)))
}

/// The fused backward on the CPU: `g · gelu'(x)` in `x`'s dtype.
pub(super) fn backward(x: &Tensor, g: &Tensor, approx: GeluApprox) -> Result<Storage> {
    let dt = x.dtype();
    let (xc, gc) = (x.detach().to_dtype(dt.cpu_compute())?, g.to_dtype(dt.cpu_compute())?);
    let dx = match dt.cpu_compute() {
        DType::F32 => with2::<f32>(&xc, &gc, |x, g| gelu_bwd_f32(x, g, approx))?,
        DType::F64 => with2::<f64>(&xc, &gc, |x, g| gelu_bwd(x, g, approx))?,
        d => return Err(Error::UnsupportedDType { op: approx.name(), dtype: d }),
    };
    Ok(Storage::Cpu(dx.into_dtype(dt)))
}

/// Calls `f` with both tensors' elements as contiguous slices and wraps the result.
fn with2<T: CpuSlice>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[T], &[T]) -> Vec<T>) -> Result<CpuStorage> {
    a.with_slice::<T, _>(|a| b.with_slice::<T, _>(|b| T::into_storage(f(a, b))))?
}
