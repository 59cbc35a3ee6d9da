//! CPU helpers: SIMD with runtime dispatch, the GEMM wrapper, strided copies, threading, and
//! buffers written once without a zero-fill (`uninit_vec`).
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm256;
#[cfg(target_arch = "x86_64")]
mod sgemm;
pub mod simd;
pub mod strided;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vf32;

use crate::Result;
use std::mem::MaybeUninit;

/// A `Vec` of `n` elements written by `f`, without the zero-fill pass of `vec![0; n]` (an extra
/// write of the whole output, significant for these memory-bound kernels).
///
/// # Safety
/// `f` must initialize every element of the slice it is given.
pub(crate) unsafe fn uninit_vec<T>(n: usize, f: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let filled: Result<Vec<T>> = try_uninit_vec(n, |s| {
        f(s);
        Ok(())
    });
    filled.unwrap_or_else(|_| unreachable!("the fill cannot fail"))
}

/// [`uninit_vec`] with a fill that may fail; on `Err` nothing is read and the buffer is freed.
///
/// # Safety
/// When `f` returns `Ok`, it must have initialized every element of the slice it was given.
pub(crate) unsafe fn try_uninit_vec<T>(n: usize, f: impl FnOnce(&mut [MaybeUninit<T>]) -> Result<()>) -> Result<Vec<T>> {
    let mut v = Vec::with_capacity(n);
    f(&mut v.spare_capacity_mut()[..n])?;
    v.set_len(n);
    Ok(v)
}
