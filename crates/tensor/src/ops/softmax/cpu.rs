//! CPU kernels of softmax / log-softmax over rows of length `d` (the last dim), forward and fused
//! backward. Rows are independent: chunks of rows run in parallel, each row in three L1-resident
//! passes (max; exp-and-sum; normalise), so memory sees one read of `x` and one write of `y`.
//!
//! - softmax:     `y = e^(x-m) / Σ e^(x-m)`;          backward `dx = y·(dy - Σ dy·y)`
//! - log-softmax: `y = (x - m) - ln Σ e^(x-m)`;        backward `dx = dy - e^y·Σ dy`
//!
//! A row of all `-inf` has no defined softmax: like PyTorch, its outputs are NaN.
#[cfg(target_arch = "x86_64")]
use crate::cpu::vf32::{F256, F512, VF32};
use crate::cpu::simd::{self, Level};
use crate::ops::binary::PAR_MIN;
use crate::CpuFloat;
use rayon::prelude::*;

/// Elements per parallel task (rounded to whole rows).
const CHUNK: usize = 1 << 14;

/// Runs `k` on matching chunks of whole rows of `a` and `out` (and `b` when given), in parallel
/// for large inputs.
pub(crate) fn par_rows<T: Send + Sync>(d: usize, a: &[T], b: Option<&[T]>, out: &mut [T], k: impl Fn(&[T], &[T], &mut [T]) + Sync) {
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
    let mut y = vec![T::zero(); x.len()];
    par_rows(d, x, None, &mut y, |x, _, y| {
        for (x, y) in x.chunks(d).zip(y.chunks_mut(d)) {
            let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
            if log {
                let ls = sum64(x.iter().map(|&v| (v - m).exp())).ln();
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = (x - m) - ls);
            } else {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = (x - m).exp();
                }
                let inv = T::one() / sum64(y.iter().copied());
                y.iter_mut().for_each(|y| *y *= inv);
            }
        }
    });
    y
}

/// Generic fused backward from the saved output `y` and the incoming gradient `dy`.
pub fn softmax_bwd<T: CpuFloat>(y: &[T], dy: &[T], d: usize, log: bool) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    par_rows(d, y, Some(dy), &mut dx, |y, dy, dx| {
        for ((y, dy), dx) in y.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)) {
            if log {
                let s = sum64(dy.iter().copied());
                for i in 0..d {
                    dx[i] = dy[i] - y[i].exp() * s;
                }
            } else {
                let s = sum64(y.iter().zip(dy).map(|(&a, &b)| a * b));
                for i in 0..d {
                    dx[i] = y[i] * (dy[i] - s);
                }
            }
        }
    });
    dx
}

/// f32 forward with the best SIMD level.
pub fn softmax_fwd_f32(x: &[f32], d: usize, log: bool) -> Vec<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar {
        return softmax_fwd(x, d, log);
    }
    let mut y = vec![0f32; x.len()];
    par_rows(d, x, None, &mut y, |x, _, y| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { fwd_avx512(x, y, d, log) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { fwd_avx2(x, y, d, log) },
        _ => unreachable!(),
    });
    y
}

/// f32 fused backward with the best SIMD level.
pub fn softmax_bwd_f32(y: &[f32], dy: &[f32], d: usize, log: bool) -> Vec<f32> {
    let lvl = simd::level();
    if lvl == Level::Scalar {
        return softmax_bwd(y, dy, d, log);
    }
    let mut dx = vec![0f32; y.len()];
    par_rows(d, y, Some(dy), &mut dx, |y, dy, dx| match lvl {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { bwd_avx512(y, dy, dx, d, log) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { bwd_avx2(y, dy, dx, d, log) },
        _ => unreachable!(),
    });
    dx
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

/// `Σ e^(x-m)` over a row; with `y`, also stores each `e^(x-m)` there.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn exp_sum_row<V: VF32>(x: &[f32], m: f32, mut y: Option<&mut [f32]>) -> f32 {
    let (n, l) = (x.len(), V::LANES);
    let mv = V::splat(m);
    let mut acc = V::splat(0.0);
    let mut i = 0;
    while i + l <= n {
        let e = V::load(x.as_ptr().add(i)).sub(mv).exp();
        if let Some(y) = y.as_deref_mut() {
            e.store(y.as_mut_ptr().add(i));
        }
        acc = acc.add(e);
        i += l;
    }
    if i < n {
        let e = V::load_tail(&x[i..], f32::NEG_INFINITY).sub(mv).exp();
        if let Some(y) = y.as_deref_mut() {
            e.store_tail(&mut y[i..]);
        }
        acc = acc.add(e);
    }
    acc.hsum()
}

/// `y *= a` over a row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scale_row<V: VF32>(y: &mut [f32], a: f32) {
    let (n, l, av) = (y.len(), V::LANES, V::splat(a));
    let mut i = 0;
    while i + l <= n {
        V::load(y.as_ptr().add(i)).mul(av).store(y.as_mut_ptr().add(i));
        i += l;
    }
    if i < n {
        V::load_tail(&y[i..], 0.0).mul(av).store_tail(&mut y[i..]);
    }
}

/// `y = (x - m) - c` over a row (in this order: exact for the max element even when `m` is huge).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn shift_row<V: VF32>(x: &[f32], y: &mut [f32], m: f32, c: f32) {
    let (n, l, mv, cv) = (y.len(), V::LANES, V::splat(m), V::splat(c));
    let mut i = 0;
    while i + l <= n {
        V::load(x.as_ptr().add(i)).sub(mv).sub(cv).store(y.as_mut_ptr().add(i));
        i += l;
    }
    if i < n {
        V::load_tail(&x[i..], 0.0).sub(mv).sub(cv).store_tail(&mut y[i..]);
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fwd_rows<V: VF32>(x: &[f32], y: &mut [f32], d: usize, log: bool) {
    for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let m = max_row::<V>(x);
        if log {
            let ls = exp_sum_row::<V>(x, m, None).ln();
            shift_row::<V>(x, y, m, ls);
        } else {
            let s = exp_sum_row::<V>(x, m, Some(y));
            scale_row::<V>(y, 1.0 / s);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_rows<V: VF32>(y: &[f32], dy: &[f32], dx: &mut [f32], d: usize, log: bool) {
    let l = V::LANES;
    for ((y, dy), dx) in y.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let main = d / l * l;
        let (yp, gp, op) = (y.as_ptr(), dy.as_ptr(), dx.as_mut_ptr());
        // s = Σ dy (log) or Σ dy·y (softmax)
        let mut acc = V::splat(0.0);
        let mut i = 0;
        while i < main {
            let g = V::load(gp.add(i));
            acc = if log { acc.add(g) } else { g.fma(V::load(yp.add(i)), acc) };
            i += l;
        }
        let (yt, gt) = (V::load_tail(&y[main..], 0.0), V::load_tail(&dy[main..], 0.0));
        if main < d {
            acc = if log { acc.add(gt) } else { gt.fma(yt, acc) };
        }
        let s = V::splat(acc.hsum());
        let f = |yv: V, g: V| if log { yv.exp().fnma(s, g) } else { yv.mul(g.sub(s)) };
        let mut i = 0;
        while i < main {
            f(V::load(yp.add(i)), V::load(gp.add(i))).store(op.add(i));
            i += l;
        }
        if main < d {
            f(yt, gt).store_tail(&mut dx[main..]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_avx512(x: &[f32], y: &mut [f32], d: usize, log: bool) {
    fwd_rows::<F512>(x, y, d, log)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_avx2(x: &[f32], y: &mut [f32], d: usize, log: bool) {
    fwd_rows::<F256>(x, y, d, log)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_avx512(y: &[f32], dy: &[f32], dx: &mut [f32], d: usize, log: bool) {
    bwd_rows::<F512>(y, dy, dx, d, log)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_avx2(y: &[f32], dy: &[f32], dx: &mut [f32], d: usize, log: bool) {
    bwd_rows::<F256>(y, dy, dx, d, log)
}
