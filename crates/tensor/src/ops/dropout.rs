//! Dropout with a counter-based RNG: whether element `i` (row-major index) is kept depends only on
//! `(seed, i)`, so any device, thread count or chunking produces the same mask.
//!
//! The mask follows the contract shared with `kernels/dropout.cu` (docs/KERNELS.md), implemented once
//! in [`crate::cuda::kernels::dropout_uniform`]: a SplitMix64 finalizer of `seed + golden·(i + 1)`,
//! top 24 bits as a uniform `u` in [0, 1); the element is kept when `u >= p` (as f32), i.e. with
//! probability `1 - p`, and kept values are scaled by `1/(1 - p)`.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::ops::binary::PAR_MIN;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const OP: &str = "dropout";
const CHUNK: usize = 1 << 14;

/// The keep threshold for drop probability `p` in [0, 1) (the kernel compares in f32).
pub fn threshold(p: f64) -> f32 {
    p as f32
}

/// Whether element `index` is kept for `seed` and threshold `thr` (see the module docs).
#[inline(always)]
pub fn keep(seed: u64, index: u64, thr: f32) -> bool {
    crate::cuda::kernels::dropout_keep(seed, index, thr)
}

fn fwd_kernel<T: CpuFloat>(x: &[T], seed: u64, p: f64) -> (Vec<T>, Vec<u8>) {
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

fn bwd_kernel<T: CpuFloat>(g: &[T], mask: &[u8], scale: f64) -> Vec<T> {
    let s = T::from_f64(scale);
    let f = |(&g, &m): (&T, &u8)| if m != 0 { g * s } else { T::zero() };
    if g.len() >= PAR_MIN {
        g.par_iter().zip(mask.par_iter()).map(f).collect()
    } else {
        g.iter().zip(mask).map(f).collect()
    }
}

struct DropoutBackward {
    input: Tensor,
    mask: Arc<Vec<u8>>,
    scale: f64,
}

impl BackwardOp for DropoutBackward {
    backward_io!(|s| OP, [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dt = self.input.dtype();
        let gc = g.to_dtype(dt.cpu_compute())?;
        let dx = match dt.cpu_compute() {
            DType::F32 => gc.with_slice::<f32, _>(|g| CpuStorage::F32(bwd_kernel(g, &self.mask, self.scale)))?,
            DType::F64 => gc.with_slice::<f64, _>(|g| CpuStorage::F64(bwd_kernel(g, &self.mask, self.scale)))?,
            d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
        };
        Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx.into_dtype(dt)), self.input.shape())?)])
    }
}

fn run<T: CpuFloat + CpuSlice>(xc: &Tensor, seed: u64, p: f64) -> Result<(CpuStorage, Vec<u8>)> {
    let (y, m) = xc.with_slice::<T, _>(|x| fwd_kernel(x, seed, p))?;
    Ok((T::into_storage(y), m))
}

impl Tensor {
    /// Dropout: in training (`train` true and `p > 0`) zeroes each element with probability `p` and
    /// scales the rest by `1/(1-p)`; otherwise returns `self` unchanged. The mask depends only on
    /// `seed` and each element's row-major index (counter-based RNG, see [`crate::ops::dropout`]):
    /// the same seed gives the same mask. Float dtypes (bf16/f16 computed in f32). The mask is saved
    /// for the backward (`dx = dy·mask/(1-p)`).
    /// Errors: integer dtype, `p` outside [0, 1) (or NaN).
    pub fn dropout(&self, p: f64, seed: u64, train: bool) -> Result<Tensor> {
        let _range = crate::nvtx::range("dropout");
        self.check_float(OP)?;
        if !(0.0..1.0).contains(&p) {
            return Err(Error::msg(format!("dropout: p must be in [0, 1), got {p}")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            return crate::cuda::ops_train::dropout(self, p, seed);
        }
        let dt = self.dtype();
        let xc = self.detach().to_dtype(dt.cpu_compute())?;
        let (y, mask) = match dt.cpu_compute() {
            DType::F32 => run::<f32>(&xc, seed, p)?,
            DType::F64 => run::<f64>(&xc, seed, p)?,
            d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
        };
        let scale = 1.0 / (1.0 - p);
        Tensor::from_op(Storage::Cpu(y.into_dtype(dt)), self.shape(), &[self], || {
            node(DropoutBackward { input: self.clone(), mask: Arc::new(mask), scale })
        })
    }
}
