//! Dropout with a counter-based RNG: whether element `i` (row-major index) is kept depends only on
//! `(seed, i)`, so any device, thread count or chunking produces the same mask.
//!
//! The generator is SplitMix64 evaluated at a counter: `key = mix64(seed)`,
//! `h = mix64(key + (i + 1)·0x9E3779B97F4A7C15)` (wrapping), `u = h >> 32`; the element is kept
//! when `u >= threshold(p) = min(round(p·2³²), 2³² - 1)`, i.e. with probability `1 - p`, and kept
//! values are scaled by `1/(1 - p)`. `mix64` is the SplitMix64 finalizer (see [`mix64`]).
use crate::autograd::{node, BackwardOp};
use crate::ops::binary::PAR_MIN;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const OP: &str = "dropout";
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const CHUNK: usize = 1 << 14;

/// The SplitMix64 output function (a bijective 64-bit mixer).
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 32-bit threshold for drop probability `p` in [0, 1).
pub fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// Whether element `index` is kept for `seed` and threshold `thr` (see the module docs).
#[inline(always)]
pub fn keep(seed: u64, index: u64, thr: u32) -> bool {
    keep_with_key(mix64(seed), index, thr)
}

#[inline(always)]
fn keep_with_key(key: u64, index: u64, thr: u32) -> bool {
    (mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN))) >> 32) as u32 >= thr
}

fn fwd_kernel<T: CpuFloat>(x: &[T], seed: u64, p: f64) -> (Vec<T>, Vec<u8>) {
    let (key, thr, scale) = (mix64(seed), threshold(p), T::from_f64(1.0 / (1.0 - p)));
    let mut y = vec![T::zero(); x.len()];
    let mut mask = vec![0u8; x.len()];
    let run = |(k, (y, m)): (usize, (&mut [T], &mut [u8]))| {
        let base = (k * CHUNK) as u64;
        for i in 0..y.len() {
            let kp = keep_with_key(key, base + i as u64, thr);
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
    fn name(&self) -> &'static str {
        OP
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dt = self.input.dtype();
        let gc = g.to_dtype(dt.cpu_compute())?;
        let dx = match dt.cpu_compute() {
            DType::F32 => gc.with_slice::<f32, _>(|g| CpuStorage::F32(bwd_kernel(g, &self.mask, self.scale)))?,
            DType::F64 => gc.with_slice::<f64, _>(|g| CpuStorage::F64(bwd_kernel(g, &self.mask, self.scale)))?,
            d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
        };
        Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx.to_dtype(dt)), self.input.shape())?)])
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
        self.check_float(OP)?;
        if !(0.0..1.0).contains(&p) {
            return Err(Error::msg(format!("dropout: p must be in [0, 1), got {p}")));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let dt = self.dtype();
        let xc = self.detach().to_dtype(dt.cpu_compute())?;
        let (y, mask) = match dt.cpu_compute() {
            DType::F32 => run::<f32>(&xc, seed, p)?,
            DType::F64 => run::<f64>(&xc, seed, p)?,
            d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
        };
        let scale = 1.0 / (1.0 - p);
        Tensor::from_op(Storage::Cpu(y.to_dtype(dt)), self.shape(), &[self], || {
            node(DropoutBackward { input: self.clone(), mask: Arc::new(mask), scale })
        })
    }
}
