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

/// A forward over the rows of `x` (`rows·d` elements) that saves `N` statistics per row (LayerNorm:
/// mean and rstd; RMSNorm: rstd): `k(x_block, y_block, stats)` fills a block's rows of `y` and its
/// rows' entries of the `N` statistics (each zeroed, one entry per row of the block). Blocks run in
/// parallel for large inputs. Returns `y` and the statistics in row order. `k` must write every
/// element of its `y` block.
pub(crate) fn fwd_blocks<T: CpuFloat, const N: usize>(
    x: &[T],
    d: usize,
    k: impl Fn(&[T], &mut [MaybeUninit<T>], &mut [Vec<T>; N]) + Sync,
) -> (Vec<T>, [Vec<T>; N]) {
    let rows = x.len().checked_div(d).unwrap_or(0);
    let mut stats: [Vec<T>; N] = std::array::from_fn(|_| Vec::with_capacity(rows));
    let br = block_rows(rows, d);
    let run = |(x, y): (&[T], &mut [MaybeUninit<T>])| {
        let mut s: [Vec<T>; N] = std::array::from_fn(|_| vec![T::zero(); x.len() / d]);
        k(x, y, &mut s);
        s
    };
    let fill = |y: &mut [MaybeUninit<T>]| {
        let blocks: Vec<[Vec<T>; N]> = if d == 0 || x.is_empty() {
            Vec::new()
        } else if x.len() >= PAR_MIN {
            x.par_chunks(br * d).zip(y.par_chunks_mut(br * d)).map(run).collect()
        } else {
            x.chunks(br * d).zip(y.chunks_mut(br * d)).map(run).collect()
        };
        for b in blocks {
            for (all, part) in stats.iter_mut().zip(b) {
                all.extend(part);
            }
        }
    };
    // SAFETY: `k` writes every element of each block (its contract), and the blocks cover `y`
    // (d == 0 means no elements).
    let y = unsafe { super::uninit_vec(x.len(), fill) };
    (y, stats)
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
