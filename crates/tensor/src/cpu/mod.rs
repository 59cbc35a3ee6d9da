//! CPU helpers: SIMD with runtime dispatch, the GEMM wrapper, strided copies, threading, and
//! buffers written once without a zero-fill (`uninit_vec`).
pub(crate) mod cast;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm256;
#[cfg(target_arch = "x86_64")]
mod sbgemm;
#[cfg(target_arch = "x86_64")]
mod sgemm;
#[cfg(target_arch = "x86_64")]
mod sgemm512;
pub(crate) mod rows;
pub mod simd;
pub mod strided;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vf32;

use crate::Result;

/// Parallel grain: below this many elements, stay on one thread.
pub(crate) const PAR_MIN: usize = 1 << 15;
use std::mem::MaybeUninit;

/// A `Vec` of `n` elements written by `f`, without the zero-fill pass of `vec![0; n]` (an extra
/// write of the whole output, significant for these memory-bound kernels). Infallible: for
/// outputs the size of an input already in memory (elementwise kernels, their gradients); buffers
/// whose size is chosen elsewhere (products, broadcasts, copies of views) use [`try_uninit_vec`].
///
/// # Safety
/// `f` must initialize every element of the slice it is given.
pub(crate) unsafe fn uninit_vec<T>(n: usize, f: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    f(&mut v.spare_capacity_mut()[..n]);
    v.set_len(n);
    v
}

/// [`uninit_vec`] for the buffer of a tensor of `shape` (`n` elements), reserved
/// fallibly: memory the allocator refuses is an [`crate::Error::Alloc`] naming `op`, not an
/// abort. `f` may fail too; on `Err` nothing is read and the buffer is freed.
///
/// # Safety
/// When `f` returns `Ok`, it must have initialized every element of the slice it was given.
pub(crate) unsafe fn try_uninit_vec<T: crate::WithDType>(
    op: &'static str,
    shape: &[usize],
    n: usize,
    f: impl FnOnce(&mut [MaybeUninit<T>]) -> Result<()>,
) -> Result<Vec<T>> {
    let mut v = crate::mem::try_vec(op, shape, n)?;
    f(&mut v.spare_capacity_mut()[..n])?;
    v.set_len(n);
    Ok(v)
}
