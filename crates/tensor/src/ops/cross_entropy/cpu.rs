//! CPU kernels of cross-entropy over logits `[N, C]` with integer targets: one pass per row for the
//! forward (max `m`, `ls = ln Σ e^(x-m)`, `loss = (m - x[target]) + ls`; `lse = m + ls` is saved) and one fused pass for the
//! backward (`dx = (e^(x - lse) - onehot(target))·scale`, zero rows where the target is ignored).
//! Targets must already be validated (in range or equal to `ignore`).
use crate::cpu::simd::{self, Level};
#[cfg(target_arch = "x86_64")]
use crate::cpu::vf32::{F256, F512, VF32};
use crate::cpu::PAR_MIN;
#[cfg(target_arch = "x86_64")]
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::body::exp_sum_row;
use crate::ops::softmax::cpu::max_row;
use crate::cpu::uninit_vec;
use crate::ops::softmax::cpu::sum64;
use super::CrossEntropyBackward;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Signature of the forward kernels: `(logits, targets, classes, ignore_index) -> (sum of losses, lse)`.
pub type FwdFn<T> = fn(&[T], &[i64], usize, i64) -> (f64, Vec<T>);

/// Rows per parallel task for rows of `c` elements.
fn task_rows(c: usize) -> usize {
    ((1 << 14) / c.max(1)).max(1)
}

fn is_big(n: usize, c: usize) -> bool {
    n * c >= PAR_MIN
}

/// Forward: returns (sum of the losses of non-ignored rows, in f64, summed in row order; the lse of
/// every row, 0 for ignored rows).
/// `max_ls(row)` returns the row's max `m` and `ln Σ e^(x-m)`.
fn fwd_driver<T: CpuFloat>(x: &[T], t: &[i64], c: usize, ignore: i64, max_ls: impl Fn(&[T]) -> (T, T) + Sync) -> (f64, Vec<T>) {
    let n = t.len();
    let mut lse = vec![T::zero(); n];
    let mut loss = vec![0f64; n];
    let tr = task_rows(c);
    let run = |(k, (lse, loss)): (usize, (&mut [T], &mut [f64]))| {
        for i in 0..lse.len() {
            let r = k * tr + i;
            if t[r] == ignore {
                continue;
            }
            let row = &x[r * c..(r + 1) * c];
            let (m, ls) = max_ls(row);
            lse[i] = m + ls;
            loss[i] = ((m - row[t[r] as usize]) + ls).to_f64();
        }
    };
    if is_big(n, c) {
        lse.par_chunks_mut(tr).zip(loss.par_chunks_mut(tr)).enumerate().for_each(run);
    } else {
        lse.chunks_mut(tr).zip(loss.chunks_mut(tr)).enumerate().for_each(run);
    }
    (loss.iter().sum(), lse)
}

/// Backward driver: `row(x_row, lse, dx_row)` must write all of `dx_row` with `e^(x - lse)·scale`;
/// the target entry is then reduced by `scale`; ignored rows are written with zeros.
fn bwd_driver<T: CpuFloat>(
    x: &[T],
    t: &[i64],
    lse: &[T],
    c: usize,
    ignore: i64,
    scale: T,
    row: impl Fn(&[T], T, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    if c == 0 {
        return Vec::new();
    }
    let tr = task_rows(c);
    let run = |(k, dx): (usize, &mut [MaybeUninit<T>])| {
        for (i, dx) in dx.chunks_exact_mut(c).enumerate() {
            let r = k * tr + i;
            if t[r] == ignore {
                dx.fill(MaybeUninit::new(T::zero()));
                continue;
            }
            row(&x[r * c..(r + 1) * c], lse[r], dx);
            // SAFETY: `row` initialized the whole row.
            unsafe { *dx[t[r] as usize].assume_init_mut() -= scale };
        }
    };
    let fill = |dx: &mut [MaybeUninit<T>]| {
        if is_big(t.len(), c) {
            dx.par_chunks_mut(tr * c).enumerate().for_each(run);
        } else {
            dx.chunks_mut(tr * c).enumerate().for_each(run);
        }
    };
    // SAFETY: every row is written, by `row` or with zeros.
    unsafe { uninit_vec(x.len(), fill) }
}

/// Generic forward (f64, and f32 at the scalar level).
pub fn cross_entropy_fwd<T: CpuFloat>(x: &[T], targets: &[i64], c: usize, ignore: i64) -> (f64, Vec<T>) {
    fwd_driver(x, targets, c, ignore, |row| {
        let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        (m, sum64(row.iter().map(|&v| (v - m).exp())).ln())
    })
}

/// Generic fused backward; `scale` is `dloss / count`.
pub fn cross_entropy_bwd<T: CpuFloat>(x: &[T], targets: &[i64], lse: &[T], c: usize, ignore: i64, scale: T) -> Vec<T> {
    bwd_driver(x, targets, lse, c, ignore, scale, |x, l, dx| {
        for (d, &v) in dx.iter_mut().zip(x) {
            d.write((v - l).exp() * scale);
        }
    })
}

/// f32 forward with the best SIMD level.
pub fn cross_entropy_fwd_f32(x: &[f32], targets: &[i64], c: usize, ignore: i64) -> (f64, Vec<f32>) {
    match simd::level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => fwd_driver(x, targets, c, ignore, |r| unsafe { max_ls_avx512(r) }),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => fwd_driver(x, targets, c, ignore, |r| unsafe { max_ls_avx2(r) }),
        _ => cross_entropy_fwd(x, targets, c, ignore),
    }
}

/// f32 fused backward with the best SIMD level.
pub fn cross_entropy_bwd_f32(x: &[f32], targets: &[i64], lse: &[f32], c: usize, ignore: i64, scale: f32) -> Vec<f32> {
    match simd::level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => bwd_driver(x, targets, lse, c, ignore, scale, |x, l, dx| unsafe { bwd_avx512(x, l, scale, dx) }),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => bwd_driver(x, targets, lse, c, ignore, scale, |x, l, dx| unsafe { bwd_avx2(x, l, scale, dx) }),
        _ => cross_entropy_bwd(x, targets, lse, c, ignore, scale),
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn max_ls_row<V: VF32>(x: &[f32]) -> (f32, f32) {
    let m = max_row::<V>(x);
    (m, exp_sum_row::<V>(x.as_ptr(), x.len(), m, None).ln())
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bwd_row<V: VF32>(x: &[f32], lse: f32, scale: f32, dx: &mut [MaybeUninit<f32>]) {
    let (n, l, op) = (x.len(), V::LANES, dx.as_mut_ptr().cast::<f32>());
    let (lv, sv) = (V::splat(lse), V::splat(scale));
    let mut i = 0;
    while i + l <= n {
        V::load(x.as_ptr().add(i)).sub(lv).exp().mul(sv).store(op.add(i));
        i += l;
    }
    if i < n {
        V::load_tail(&x[i..], 0.0).sub(lv).exp().mul(sv).store_part(op.add(i), n - i);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_ls_avx512(x: &[f32]) -> (f32, f32) {
    max_ls_row::<F512>(x)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_ls_avx2(x: &[f32]) -> (f32, f32) {
    max_ls_row::<F256>(x)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_avx512(x: &[f32], lse: f32, scale: f32, dx: &mut [MaybeUninit<f32>]) {
    bwd_row::<F512>(x, lse, scale, dx)
}
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bwd_avx2(x: &[f32], lse: f32, scale: f32, dx: &mut [MaybeUninit<f32>]) {
    bwd_row::<F256>(x, lse, scale, dx)
}

fn fwd<T: CpuFloat + CpuSlice>(xc: &Tensor, t: &[i64], c: usize, ignore: i64, k: FwdFn<T>) -> Result<(f64, CpuStorage)> {
    let (sum, lse) = xc.with_slice::<T, _>(|x| k(x, t, c, ignore))?;
    Ok((sum, T::into_storage(lse)))
}

/// The forward on the CPU (targets `t` validated, `count` of them not ignored): the mean loss as a
/// 0-d tensor of the logits' dtype, and the per-row lse in the compute dtype.
pub(super) fn forward(logits: &Tensor, t: &[i64], ignore: i64, count: usize) -> Result<(Tensor, CpuStorage)> {
    let (dt, c) = (logits.dtype(), logits.shape()[1]);
    let xc = logits.detach().to_dtype(dt.cpu_compute())?;
    let (sum, lse) = match dt.cpu_compute() {
        DType::F32 => fwd::<f32>(&xc, t, c, ignore, cross_entropy_fwd_f32)?,
        DType::F64 => fwd::<f64>(&xc, t, c, ignore, cross_entropy_fwd::<f64>)?,
        d => return Err(Error::UnsupportedDType { op: super::OP, dtype: d }),
    };
    let loss = if count == 0 { f64::NAN } else { sum / count as f64 };
    Ok((Tensor::from_storage(Storage::Cpu(CpuStorage::from_f64_iter(dt, std::iter::once(loss))), &[])?, lse))
}

/// The fused backward on the CPU.
pub(super) fn backward(node: &CrossEntropyBackward, targets: &[i64], lse: &CpuStorage, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let x = &node.logits;
    let c = x.shape()[1];
    let scale = if node.count == 0 { 0.0 } else { g.to_scalar()? / node.count as f64 };
    let (t, ig) = (targets, node.ignore);
    let xc = x.detach().to_dtype(x.dtype().cpu_compute())?;
    let dx = match lse.dtype() {
        DType::F32 => {
            let l = lse.as_slice::<f32>()?;
            xc.with_slice::<f32, _>(|x| CpuStorage::F32(cross_entropy_bwd_f32(x, t, l, c, ig, scale as f32)))?
        }
        DType::F64 => {
            let l = lse.as_slice::<f64>()?;
            xc.with_slice::<f64, _>(|x| CpuStorage::F64(cross_entropy_bwd(x, t, l, c, ig, scale)))?
        }
        dt => return Err(Error::UnsupportedDType { op: super::OP, dtype: dt }),
    };
    Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx.into_dtype(x.dtype())), x.shape())?)])
}

