//! Strided copies on the CPU: a view's elements gathered into a new row-major buffer
//! (`contiguous()`, `reshape` of a permuted view, ...).
//!
//! The layout is first coalesced (size-1 dims dropped, dims that are contiguous with respect to each
//! other merged), so a narrow or a head permute becomes a loop over a few long runs: unit-stride runs
//! are `memcpy`s, the rest a strided loop. Large copies are split into blocks of whole runs across
//! rayon's threads; each block finds its starting index once and then steps an odometer.
use crate::shape::Layout;
use crate::{Result, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Copies at or above this many elements are split across threads.
const PAR_MIN: usize = 1 << 15;
/// Elements per parallel block (rounded to whole runs).
const BLOCK: usize = 1 << 14;

/// `(shape, strides)` of `layout` with size-1 dims dropped and mergeable neighbours merged, outermost
/// first. Empty for a single element.
pub fn coalesce(layout: &Layout) -> (Vec<usize>, Vec<usize>) {
    let mut shape: Vec<usize> = Vec::with_capacity(layout.rank());
    let mut strides: Vec<usize> = Vec::with_capacity(layout.rank());
    for (&n, &s) in layout.shape().iter().zip(layout.strides()) {
        if n == 1 {
            continue;
        }
        match (shape.last_mut(), strides.last_mut()) {
            // the previous dim steps exactly over one whole run of this one: merge them
            (Some(pn), Some(ps)) if *ps == n * s => {
                *pn *= n;
                *ps = s;
            }
            _ => {
                shape.push(n);
                strides.push(s);
            }
        }
    }
    (shape, strides)
}

/// The elements of the view `layout` over `src`, row-major, in a new buffer. A buffer the
/// allocator refuses (say a large broadcast view) is an [`crate::Error::Alloc`].
pub fn gather<T: WithDType>(src: &[T], layout: &Layout) -> Result<Vec<T>> {
    let n = crate::mem::elem_count("contiguous", layout.shape(), T::DTYPE)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let (shape, strides) = coalesce(layout);
    let base = layout.offset();
    let (run, run_stride) = match (shape.last(), strides.last()) {
        (Some(&r), Some(&s)) => (r, s),
        _ => (1, 1),
    };
    let outer = &shape[..shape.len().saturating_sub(1)];
    let outer_strides = &strides[..strides.len().saturating_sub(1)];
    // the last element read must be in bounds (indexing below checks each run too)
    let last = base + shape.iter().zip(&strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
    assert!(last < src.len(), "strided gather: view ends at {last}, storage has {}", src.len());

    let fill = |first_run: usize, dst: &mut [MaybeUninit<T>]| {
        // odometer over the outer dims, started at run `first_run`
        let mut idx = vec![0usize; outer.len()];
        let mut rem = first_run;
        let mut off = base;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
            off += idx[d] * outer_strides[d];
        }
        for row in dst.chunks_mut(run) {
            if run_stride == 1 {
                for (o, &x) in row.iter_mut().zip(&src[off..off + run]) {
                    o.write(x);
                }
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    o.write(src[off + j * run_stride]);
                }
            }
            next_run(&mut idx, &mut off, outer, outer_strides);
        }
    };
    // SAFETY: `fill` writes every element (chunks of `run` cover the buffer exactly, since `run`
    // divides `n`).
    unsafe {
        super::try_uninit_vec("contiguous", layout.shape(), n, |spare| {
            if n >= PAR_MIN && rayon::current_num_threads() > 1 {
                let runs_per_block = (BLOCK / run).max(1);
                spare.par_chunks_mut(runs_per_block * run).enumerate().for_each(|(b, dst)| fill(b * runs_per_block, dst));
            } else {
                fill(0, spare);
            }
            Ok(())
        })
    }
}

/// Writes `src` (the view's elements, row-major) into the view `layout` of `dst`: [`gather`]'s
/// inverse, over the same coalesced runs (unit-stride runs are `copy_from_slice`s). Serial: it
/// serves small in-place writes (a key/value cache's new positions).
///
/// Panics if the view reaches past `dst` or `src` does not hold exactly its elements.
pub fn scatter<T: Copy>(dst: &mut [T], layout: &Layout, src: &[T]) {
    let n = layout.elem_count();
    assert_eq!(src.len(), n, "strided scatter: {} elements for a view of {n}", src.len());
    if n == 0 {
        return;
    }
    let (shape, strides) = coalesce(layout);
    let (run, run_stride) = match (shape.last(), strides.last()) {
        (Some(&r), Some(&s)) => (r, s),
        _ => (1, 1),
    };
    let outer = &shape[..shape.len().saturating_sub(1)];
    let outer_strides = &strides[..strides.len().saturating_sub(1)];
    let mut idx = vec![0usize; outer.len()];
    let mut off = layout.offset();
    for row in src.chunks(run) {
        if run_stride == 1 {
            dst[off..off + run].copy_from_slice(row);
        } else {
            for (j, &x) in row.iter().enumerate() {
                dst[off + j * run_stride] = x;
            }
        }
        next_run(&mut idx, &mut off, outer, outer_strides);
    }
}

/// Steps the odometer `idx` over the outer dims (`outer`, `outer_strides`) to the next run, keeping
/// `off` (the run's first element) in step.
fn next_run(idx: &mut [usize], off: &mut usize, outer: &[usize], outer_strides: &[usize]) {
    for d in (0..outer.len()).rev() {
        idx[d] += 1;
        *off += outer_strides[d];
        if idx[d] < outer[d] {
            return;
        }
        *off -= outer[d] * outer_strides[d];
        idx[d] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_inverts_gather() {
        for l in [
            Layout::contiguous(&[7, 11]),
            Layout::new(vec![11, 7], vec![1, 11], 0),                // transpose
            Layout::new(vec![2, 3, 4, 5], vec![240, 80, 5, 1], 15),  // a narrow of dim 2 ([2, 3, 16, 5], from 3)
            Layout::new(vec![4, 9, 5], vec![135, 15, 1], 10),         // narrow of the last dim
            Layout::new(vec![1], vec![1], 4999),
            Layout::new(vec![3, 0, 2], vec![2, 2, 1], 0),
        ] {
            let src: Vec<f32> = (0..l.elem_count()).map(|i| i as f32 + 0.5).collect();
            let mut dst = vec![-1f32; 5000];
            scatter(&mut dst, &l, &src);
            assert_eq!(gather(&dst, &l).unwrap(), src, "{l:?}");
            // nothing outside the view was written
            let inside: std::collections::HashSet<usize> = l.indices().collect();
            assert!(dst.iter().enumerate().all(|(i, &x)| inside.contains(&i) || x == -1.0), "{l:?}");
        }
    }

    fn reference(src: &[f32], l: &Layout) -> Vec<f32> {
        l.indices().map(|i| src[i]).collect()
    }

    #[test]
    fn coalesce_merges_and_drops() {
        // [2, 3, 4] contiguous → one run of 24
        assert_eq!(coalesce(&Layout::contiguous(&[2, 3, 4])), (vec![24], vec![1]));
        // a narrow along the last dim keeps two dims
        assert_eq!(coalesce(&Layout::new(vec![2, 3, 2], vec![12, 4, 1], 1)), (vec![6, 2], vec![4, 1]));
        // size-1 dims vanish; a single element has no dims
        assert_eq!(coalesce(&Layout::new(vec![1, 1], vec![7, 3], 5)), (vec![], vec![]));
    }

    #[test]
    fn gather_matches_the_index_walk() {
        let src: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let cases = [
            Layout::contiguous(&[7, 11]),
            Layout::new(vec![11, 7], vec![1, 11], 0),                 // transpose
            Layout::new(vec![3, 5, 2, 7], vec![210, 7, 105, 1], 3),   // head permute of [3, 2, 5, 7] + offset
            Layout::new(vec![4, 9, 5], vec![135, 15, 1], 10),          // narrow of the last dim
            Layout::new(vec![6, 1, 5], vec![0, 9, 1], 2),              // broadcast row
            Layout::new(vec![1], vec![1], 4999),                       // single element at the end
            Layout::new(vec![3, 0, 2], vec![2, 2, 1], 0),              // empty
        ];
        for l in &cases {
            assert_eq!(gather(&src, l).unwrap(), reference(&src, l), "{l:?}");
        }
    }

    #[test]
    fn gather_parallel_blocks_and_short_runs() {
        // big enough to split across threads; runs of 3 do not divide the block size
        let src: Vec<f32> = (0..300_000).map(|i| (i % 9973) as f32).collect();
        let l = Layout::new(vec![40, 700, 3], vec![3 * 2500, 3, 1], 17);
        assert_eq!(gather(&src, &l).unwrap(), reference(&src, &l));
        let t = Layout::new(vec![500, 600], vec![1, 500], 0); // stride-500 inner loop, 300k elements
        assert_eq!(gather(&src, &t).unwrap(), reference(&src, &t));
    }

    #[test]
    #[should_panic(expected = "strided gather")]
    fn gather_refuses_out_of_bounds_views() {
        let src = [0f32; 10];
        let _ = gather(&src, &Layout::new(vec![2, 5], vec![5, 1], 1));
    }
}
