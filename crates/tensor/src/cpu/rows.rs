//! Drivers for kernels over the rows of a `[rows, d]` input, shared by the normalisation ops
//! (`layer_norm`, `rms_norm`): rows go in blocks whose size depends only on the shape, blocks run in
//! parallel for large inputs, and a backward's per-block column partials (dweight, dbias) are added
//! in block order, so every result is the same for any thread count or schedule.
use crate::cpu::PAR_MIN;
use crate::storage::CpuSlice;
use crate::{CpuFloat, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per block: a function of the shape only (see the module docs).
pub(crate) fn block_rows(rows: usize, d: usize) -> usize {
    rows.div_ceil(64).max((1 << 13) / d.max(1)).max(1)
}

/// Runs `k(x_block, y_block)` on the blocks of rows of `x` (`rows·d` elements) and `y`,
/// in parallel for large inputs; the results in block order (a forward returns its per-row
/// statistics this way).
pub(crate) fn fwd_blocks<T: Send + Sync, R: Send>(
    x: &[T],
    y: &mut [MaybeUninit<T>],
    d: usize,
    k: impl Fn(&[T], &mut [MaybeUninit<T>]) -> R + Sync,
) -> Vec<R> {
    let rows = x.len().checked_div(d).unwrap_or(0);
    let br = block_rows(rows, d);
    let run = |(x, y): (&[T], &mut [MaybeUninit<T>])| k(x, y);
    if d == 0 || x.is_empty() {
        Vec::new()
    } else if x.len() >= PAR_MIN {
        x.par_chunks(br * d).zip(y.par_chunks_mut(br * d)).map(run).collect()
    } else {
        x.chunks(br * d).zip(y.chunks_mut(br * d)).map(run).collect()
    }
}

/// A backward over `rows` rows of `d`: runs `k(rows_range, dx_block, partials)` per block, where
/// `partials` holds `sums` zeroed column sums of `d` each (`[sums, d]`, e.g. dweight then dbias) that
/// `k` accumulates into; returns `dx` (`rows·d`) and the partials added up in block order.
/// `k` must write every element of its `dx` block.
pub(crate) fn bwd_blocks<T: CpuFloat>(
    rows: usize,
    d: usize,
    sums: usize,
    k: impl Fn(std::ops::Range<usize>, &mut [MaybeUninit<T>], &mut [T]) + Sync,
) -> (Vec<T>, Vec<T>) {
    if d == 0 || rows == 0 {
        return (vec![T::zero(); rows * d], vec![T::zero(); sums * d]);
    }
    let br = block_rows(rows, d);
    let run = |(i, dx): (usize, &mut [MaybeUninit<T>])| {
        let mut part = vec![T::zero(); sums * d];
        k(i * br..(i * br + br).min(rows), dx, &mut part);
        part
    };
    let mut parts: Vec<Vec<T>> = Vec::new();
    let fill = |dx: &mut [MaybeUninit<T>]| {
        parts = if rows * d >= PAR_MIN {
            dx.par_chunks_mut(br * d).enumerate().map(run).collect()
        } else {
            dx.chunks_mut(br * d).enumerate().map(run).collect()
        };
    };
    // SAFETY: `k` writes every element of each block (its contract), and the blocks cover `dx`.
    let dx = unsafe { super::uninit_vec(rows * d, fill) };
    let mut total = vec![T::zero(); sums * d];
    for p in &parts {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    (dx, total)
}

/// The elements of a parameter tensor (any layout, converted to `T`'s dtype) as a `Vec<T>`.
pub(crate) fn param<T: CpuSlice>(t: &Tensor) -> Result<Vec<T>> {
    t.detach().to_dtype(T::DTYPE)?.with_slice::<T, _>(|s| s.to_vec())
}
