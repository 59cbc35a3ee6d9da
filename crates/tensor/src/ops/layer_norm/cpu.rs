//! LayerNorm on the CPU: the kernels over rows of length `d`, forward and fused backward, and their
//! tensor-level glue (`forward`, `backward`).
//!
//! Forward, per row: `mean`, `var = mean((x - mean)²)` (biased, two passes in L1),
//! `rstd = 1/√(var + eps)`, `y = (x - mean)·rstd·w + b`; `mean` and `rstd` are saved.
//! Backward, per row, with `x̂ = (x - mean)·rstd` and `g = dy·w`:
//! `dx = rstd·(g - mean(g) - x̂·mean(g·x̂))`, `dw += dy·x̂`, `db += dy` — one pass for the two row
//! sums and one that writes `dx` and accumulates `dw`, `db`. Rows are split into blocks that depend
//! only on the shape; each block sums its own `dw`/`db` partials and the partials are added in block
//! order, so the result does not depend on the thread count or scheduling.
use crate::cpu::simd::{self, Level};
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::body::{acc4, ld, prefetch_line, st, sum};
#[cfg(target_arch = "x86_64")]
use crate::cpu::vf32::{F256, F512, VF32};
use crate::cpu::rows;
use crate::ops::softmax::cpu::sum64;
use super::LayerNormBackward;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Device, Error, Result, Tensor};
use std::mem::MaybeUninit;

type Out<T> = MaybeUninit<T>;

/// Forward outputs: `y`, and per row `mean` and `rstd`.
pub struct LnForward<T> {
    pub y: Vec<T>,
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
}

/// Backward outputs: `dx`, `dw`, `db` (`dw`/`db` have `d` elements).
pub struct LnBackward<T> {
    pub dx: Vec<T>,
    pub dw: Vec<T>,
    pub db: Vec<T>,
}

/// Signature of the forward kernels: `(x, weight, bias, d, eps)`.
pub type FwdFn<T> = fn(&[T], Option<&[T]>, Option<&[T]>, usize, f64) -> LnForward<T>;
/// Signature of the backward kernels: `(x, dy, weight, mean, rstd, d)`.
pub type BwdFn<T> = fn(&[T], &[T], Option<&[T]>, &[T], &[T], usize) -> LnBackward<T>;

/// The forward over blocks of rows ([`rows::fwd_blocks`]): `k(x, y, mean, rstd)` fills a block's
/// rows and their statistics.
fn fwd_driver<T: CpuFloat>(x: &[T], d: usize, k: impl Fn(&[T], &mut [Out<T>], &mut [T], &mut [T]) + Sync) -> LnForward<T> {
    let (y, [mean, rstd]) = rows::fwd_blocks(x, d, |x, y, [m, r]: &mut [Vec<T>; 2]| k(x, y, m, r));
    LnForward { y, mean, rstd }
}

fn ones_zeros<T: CpuFloat>(w: Option<&[T]>, b: Option<&[T]>, d: usize) -> (Vec<T>, Vec<T>) {
    (w.map_or_else(|| vec![T::one(); d], <[T]>::to_vec), b.map_or_else(|| vec![T::zero(); d], <[T]>::to_vec))
}

/// Generic forward (f64, and f32 at the scalar level). `x` has `rows·d` elements.
pub fn layer_norm_fwd<T: CpuFloat>(x: &[T], w: Option<&[T]>, b: Option<&[T]>, d: usize, eps: f64) -> LnForward<T> {
    let (w, b) = ones_zeros(w, b, d);
    let (inv_d, eps) = (T::one() / T::from_f64(d as f64), T::from_f64(eps));
    let k = |x: &[T], y: &mut [Out<T>], m: &mut [T], r: &mut [T]| {
        for (i, (x, y)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
            let mu = sum64(x.iter().copied()) * inv_d;
            let var = sum64(x.iter().map(|&v| (v - mu) * (v - mu))) * inv_d;
            let rs = T::one() / (var + eps).sqrt();
            for j in 0..d {
                y[j].write((x[j] - mu) * rs * w[j] + b[j]);
            }
            (m[i], r[i]) = (mu, rs);
        }
    };
    fwd_driver(x, d, k)
}

/// Generic fused backward.
pub fn layer_norm_bwd<T: CpuFloat>(x: &[T], dy: &[T], w: Option<&[T]>, mean: &[T], rstd: &[T], d: usize) -> LnBackward<T> {
    let (w, _) = ones_zeros(w, None, d);
    let inv_d = T::one() / T::from_f64(d as f64);
    bwd_driver(x, dy, mean, rstd, d, |x, dy, dx, m, r, dw, db| {
        for (i, ((x, dy), dx)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)).enumerate() {
            let (mu, rs) = (m[i], r[i]);
            let a = sum64((0..d).map(|j| dy[j] * w[j])) * inv_d;
            let c = sum64((0..d).map(|j| dy[j] * w[j] * (x[j] - mu) * rs)) * inv_d;
            for j in 0..d {
                let xh = (x[j] - mu) * rs;
                dx[j].write(rs * (dy[j] * w[j] - a - xh * c));
                dw[j] += dy[j] * xh;
                db[j] += dy[j];
            }
        }
    })
}

/// Runs `k(x, dy, dx, mean, rstd, dw_partial, db_partial)` per block of rows
/// ([`rows::bwd_blocks`]: the partials summed in block order). `k` must write every element of its
/// `dx` block.
fn bwd_driver<T: CpuFloat>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    d: usize,
    k: impl Fn(&[T], &[T], &mut [Out<T>], &[T], &[T], &mut [T], &mut [T]) + Sync,
) -> LnBackward<T> {
    let (dx, mut sums) = rows::bwd_blocks(mean.len(), d, 2, |r, dx, part| {
        let (dw, db) = part.split_at_mut(d);
        k(&x[r.start * d..r.end * d], &dy[r.start * d..r.end * d], dx, &mean[r.clone()], &rstd[r], dw, db);
    });
    let db = sums.split_off(d);
    LnBackward { dx, dw: sums, db }
}

/// f32 forward with the best SIMD level.
pub fn layer_norm_fwd_f32(x: &[f32], w: Option<&[f32]>, b: Option<&[f32]>, d: usize, eps: f64) -> LnForward<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar || d == 0 {
        return layer_norm_fwd(x, w, b, d, eps);
    }
    let (w, b) = ones_zeros(w, b, d);
    let k = |x: &[f32], y: &mut [Out<f32>], m: &mut [f32], r: &mut [f32]| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { fwd_avx512(x, y, m, r, &w, &b, eps as f32) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { fwd_avx2(x, y, m, r, &w, &b, eps as f32) },
        _ => unreachable!(),
    };
    // (the SIMD bodies write every row of each block)
    fwd_driver(x, d, k)
}

/// f32 fused backward with the best SIMD level.
pub fn layer_norm_bwd_f32(x: &[f32], dy: &[f32], w: Option<&[f32]>, mean: &[f32], rstd: &[f32], d: usize) -> LnBackward<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar || d == 0 {
        return layer_norm_bwd(x, dy, w, mean, rstd, d);
    }
    let (w, _) = ones_zeros(w, None, d);
    bwd_driver(x, dy, mean, rstd, d, |x, dy, dx, m, r, dw, db| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { bwd_avx512(x, dy, dx, m, r, &w, dw, db) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { bwd_avx2(x, dy, dx, m, r, &w, dw, db) },
        _ => unreachable!(),
    })
}

// ----- SIMD bodies ----------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fwd_rows<V: VF32>(x: &[f32], y: &mut [Out<f32>], m: &mut [f32], r: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    for (i, (x, y)) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        let (xp, main) = (x.as_ptr(), d / V::LANES * V::LANES);
        let mu = sum::<V>(x) * inv_d;
        let muv = V::splat(mu);
        let mut q = acc4::<V>(main, |j, a| {
            let c = V::load(xp.add(j)).sub(muv);
            c.fma(c, a)
        });
        if main < d {
            // the padded lanes hold `mu`, so they add 0
            let c = V::load_tail(&x[main..], mu).sub(muv);
            q = c.fma(c, q);
        }
        let rs = 1.0 / (q.hsum() * inv_d + eps).sqrt();
        let (rsv, sh) = (V::splat(rs), V::splat(-mu * rs));
        let yp: *mut f32 = y.as_mut_ptr().cast();
        for j in (0..d).step_by(V::LANES) {
            prefetch_line(xp.wrapping_add(d), j);
            let xh = ld::<V>(x, j).fma(rsv, sh);
            st(xh.fma(ld::<V>(w, j), ld::<V>(b, j)), yp, d, j);
        }
        (m[i], r[i]) = (mu, rs);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bwd_rows<V: VF32>(x: &[f32], dy: &[f32], dx: &mut [Out<f32>], m: &[f32], r: &[f32], w: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let d = w.len();
    let rows = m.len();
    let dxp: *mut f32 = dx.as_mut_ptr().cast();
    // two rows at a time: each vector of `w`, `dw`, `db` is loaded (and `dw`, `db` stored) once
    // per pair instead of once per row; an odd last row goes alone
    let mut i = 0;
    while i + 2 <= rows {
        bwd_group::<V, 2>(x.as_ptr().add(i * d), dy.as_ptr().add(i * d), dxp.add(i * d), &m[i..i + 2], &r[i..i + 2], w, dw, db);
        i += 2;
    }
    if i < rows {
        bwd_group::<V, 1>(x.as_ptr().add(i * d), dy.as_ptr().add(i * d), dxp.add(i * d), &m[i..], &r[i..], w, dw, db);
    }
}

/// The backward of `R` consecutive rows starting at `x`, `dy`, `dx` (rows of `w.len()` floats).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bwd_group<V: VF32, const R: usize>(x: *const f32, dy: *const f32, dx: *mut f32, m: &[f32], r: &[f32], w: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let d = w.len();
    let inv_d = 1.0 / d as f32;
    let row = |p: *const f32, k: usize| std::slice::from_raw_parts(p.add(k * d), d);
    let rsv: [V; R] = std::array::from_fn(|k| V::splat(r[k]));
    let sh: [V; R] = std::array::from_fn(|k| V::splat(-m[k] * r[k]));
    // per row Σg and Σg·x̂ (g = dy·w); the R rows' sums are independent chains
    let z = V::splat(0.0);
    let (mut a, mut c) = ([z; R], [z; R]);
    for j in (0..d).step_by(V::LANES) {
        let wv = ld::<V>(w, j);
        for k in 0..R {
            let g = ld::<V>(row(dy, k), j).mul(wv);
            let xh = ld::<V>(row(x, k), j).fma(rsv[k], sh[k]);
            a[k] = a[k].add(g);
            c[k] = g.fma(xh, c[k]);
        }
    }
    let av: [V; R] = std::array::from_fn(|k| V::splat(a[k].hsum() * inv_d));
    let cv: [V; R] = std::array::from_fn(|k| V::splat(c[k].hsum() * inv_d));
    let next = R * d;
    for j in (0..d).step_by(V::LANES) {
        let wv = ld::<V>(w, j);
        let (mut dwv, mut dbv) = (ld::<V>(dw, j), ld::<V>(db, j));
        for k in 0..R {
            prefetch_line(x.wrapping_add(next + k * d), j);
            prefetch_line(dy.wrapping_add(next + k * d), j);
            let g = ld::<V>(row(dy, k), j);
            let xh = ld::<V>(row(x, k), j).fma(rsv[k], sh[k]);
            let t = xh.fnma(cv[k], g.mul(wv).sub(av[k]));
            st(t.mul(rsv[k]), dx.add(k * d), d, j);
            dwv = g.fma(xh, dwv);
            dbv = dbv.add(g);
        }
        st(dwv, dw.as_mut_ptr(), d, j);
        st(dbv, db.as_mut_ptr(), d, j);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_avx512(x: &[f32], y: &mut [Out<f32>], m: &mut [f32], r: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    fwd_rows::<F512>(x, y, m, r, w, b, eps)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_avx2(x: &[f32], y: &mut [Out<f32>], m: &mut [f32], r: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    fwd_rows::<F256>(x, y, m, r, w, b, eps)
}
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_avx512(x: &[f32], dy: &[f32], dx: &mut [Out<f32>], m: &[f32], r: &[f32], w: &[f32], dw: &mut [f32], db: &mut [f32]) {
    bwd_rows::<F512>(x, dy, dx, m, r, w, dw, db)
}
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_avx2(x: &[f32], dy: &[f32], dx: &mut [Out<f32>], m: &[f32], r: &[f32], w: &[f32], dw: &mut [f32], db: &mut [f32]) {
    bwd_rows::<F256>(x, dy, dx, m, r, w, dw, db)
}

fn fwd<T: CpuFloat + CpuSlice>(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64, k: FwdFn<T>) -> Result<(Tensor, Storage, Storage)> {
    let d = x.shape().last().copied().unwrap_or(1);
    let xc = x.detach().to_dtype(T::DTYPE)?;
    let ws = w.map(rows::param::<T>).transpose()?;
    let bs = b.map(rows::param::<T>).transpose()?;
    let r = xc.with_slice::<T, _>(|xs| k(xs, ws.as_deref(), bs.as_deref(), d, eps))?;
    let y = Tensor::from_storage(Storage::Cpu(T::into_storage(r.y).into_dtype(x.dtype())), x.shape())?;
    Ok((y, Storage::Cpu(T::into_storage(r.mean)), Storage::Cpu(T::into_storage(r.rstd))))
}

/// The forward on the CPU (inputs validated by `Tensor::layer_norm`): `(y, mean, rstd)`, the
/// statistics in the compute dtype.
pub(super) fn forward(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<(Tensor, Storage, Storage)> {
    match x.dtype().cpu_compute() {
        DType::F32 => fwd::<f32>(x, w, b, eps, layer_norm_fwd_f32),
        DType::F64 => fwd::<f64>(x, w, b, eps, layer_norm_fwd::<f64>),
        dt => Err(Error::UnsupportedDType { op: super::OP, dtype: dt }),
    }
}

fn bwd<T: CpuFloat + CpuSlice>(node: &LayerNormBackward, mean: &CpuStorage, rstd: &CpuStorage, g: &Tensor, k: BwdFn<T>) -> Result<Vec<Option<Tensor>>> {
    let d = node.x.shape().last().copied().unwrap_or(1);
    let (xc, gc) = (node.x.detach().to_dtype(T::DTYPE)?, g.to_dtype(T::DTYPE)?);
    let w = node.w.as_ref().map(rows::param::<T>).transpose()?;
    let (mean, rstd) = (mean.as_slice::<T>()?, rstd.as_slice::<T>()?);
    let r = xc.with_slice::<T, _>(|x| gc.with_slice::<T, _>(|dy| k(x, dy, w.as_deref(), mean, rstd, d)))??;
    let wrap = |v: Vec<T>, like: &Tensor| -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(T::into_storage(v).into_dtype(like.dtype())), like.shape())
    };
    let mut out = vec![Some(wrap(r.dx, &node.x)?)];
    if let Some(w) = &node.w {
        out.push(Some(wrap(r.dw, w)?));
    }
    if let Some(b) = &node.b {
        out.push(Some(wrap(r.db, b)?));
    }
    Ok(out)
}

/// The fused backward on the CPU, from the saved statistics.
pub(super) fn backward(node: &LayerNormBackward, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let (mean, rstd) = match (&node.mean, &node.rstd) {
        (Storage::Cpu(m), Storage::Cpu(r)) => (m, r),
        _ => return Err(Error::DeviceMismatch { op: super::OP, lhs: Device::Cpu, rhs: node.x.device() }),
    };
    match mean.dtype() {
        DType::F32 => bwd::<f32>(node, mean, rstd, g, layer_norm_bwd_f32),
        DType::F64 => bwd::<f64>(node, mean, rstd, g, layer_norm_bwd::<f64>),
        dt => Err(Error::UnsupportedDType { op: super::OP, dtype: dt }),
    }
}
