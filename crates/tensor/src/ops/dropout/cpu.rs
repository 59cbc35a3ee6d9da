//! Dropout on the CPU: the mask drawn chunk by chunk (rayon for large inputs) with the contract's
//! [`super::keep`], kept for the backward.
use super::{keep, threshold};
use crate::cpu::PAR_MIN;
use crate::storage::{CpuSlice, CpuStorage};
use crate::{CpuFloat, Result, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub(super) fn fwd_kernel<T: CpuFloat>(x: &[T], seed: u64, p: f64) -> (Vec<T>, Vec<u8>) {
    let (key, thr, scale) = (seed, threshold(p), T::from_f64(1.0 / (1.0 - p)));
    let mut y = vec![T::zero(); x.len()];
    let mut mask = vec![0u8; x.len()];
    let run = |(k, (y, m)): (usize, (&mut [T], &mut [u8]))| {
        let base = (k * CHUNK) as u64;
        for i in 0..y.len() {
            let kp = keep(key, base + i as u64, thr);
            m[i] = kp as u8;
            y[i] = if kp { x[k * CHUNK + i] * scale } else { T::zero() };
        }
    };
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(CHUNK).zip(mask.par_chunks_mut(CHUNK)).enumerate().for_each(run);
    } else {
        y.chunks_mut(CHUNK).zip(mask.chunks_mut(CHUNK)).enumerate().for_each(run);
    }
    (y, mask)
}

pub(super) fn bwd_kernel<T: CpuFloat>(g: &[T], mask: &[u8], scale: f64) -> Vec<T> {
    let s = T::from_f64(scale);
    let f = |(&g, &m): (&T, &u8)| if m != 0 { g * s } else { T::zero() };
    if g.len() >= PAR_MIN {
        g.par_iter().zip(mask.par_iter()).map(f).collect()
    } else {
        g.iter().zip(mask).map(f).collect()
    }
}

pub(super) fn run<T: CpuFloat + CpuSlice>(xc: &Tensor, seed: u64, p: f64) -> Result<(CpuStorage, Vec<u8>)> {
    let (y, m) = xc.with_slice::<T, _>(|x| fwd_kernel(x, seed, p))?;
    Ok((T::into_storage(y), m))
}

