//! Dropout with a counter-based RNG: whether element `i` (row-major index) is kept depends only on
//! `(seed, i)`, so any device, thread count or chunking produces the same mask.
//!
//! The mask follows the contract shared with `dropout.cu` beside this file and the attention kernels
//! (docs/KERNELS.md), implemented once here, in [`dropout_uniform`]: a SplitMix64 finalizer of `seed + golden·(i + 1)`,
//! top 24 bits as a uniform `u` in [0, 1); the element is kept when `u >= p` (as f32), i.e. with
//! probability `1 - p`, and kept values are scaled by `1/(1 - p)`.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Error, Result, Tensor};
use std::sync::Arc;
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`dropout.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "dropout" / "dropout", ALL_FLOATS, ["dropout_fwd", "dropout_bwd"]);

const OP: &str = "dropout";

/// The keep threshold for drop probability `p` in [0, 1) (the kernel compares in f32).
pub fn threshold(p: f64) -> f32 {
    p as f32
}

/// The dropout RNG contract shared by `dropout.cu` (through `common.cuh`), the attention kernels and
/// the CPU: a uniform number in `[0, 1)` for element `idx` (row-major flat index) under `seed` (splitmix64 finaliser of
/// `seed + golden * (idx + 1)`, top 24 bits). See docs/KERNELS.md.
pub fn dropout_uniform(seed: u64, idx: u64) -> f32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(idx.wrapping_add(1)));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// Whether dropout with probability `p` keeps element `idx` (`u >= p`). A kept element is
/// multiplied by `1.0f32 / (1.0f32 - p)` (computed in f32), a dropped one becomes 0.
pub fn dropout_keep(seed: u64, idx: u64, p: f32) -> bool {
    dropout_uniform(seed, idx) >= p
}

/// Whether element `index` is kept for `seed` and threshold `thr` (see the module docs).
#[inline(always)]
pub fn keep(seed: u64, index: u64, thr: f32) -> bool {
    dropout_keep(seed, index, thr)
}

/// What the backward applies: the CPU's saved mask and scale, or on CUDA the `(p, seed)` the kernel
/// regenerates the mask from.
enum Mask {
    Cpu { mask: Arc<Vec<u8>>, scale: f64 },
    #[cfg(feature = "cuda")]
    Cuda { p: f64, seed: u64 },
}

/// The one autograd node, on either device.
struct DropoutBackward {
    input: Tensor,
    mask: Mask,
}

impl BackwardOp for DropoutBackward {
    backward_io!(|s| OP, [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dt = self.input.dtype();
        match &self.mask {
            Mask::Cpu { mask, scale } => {
                let gc = g.to_dtype(dt.cpu_compute())?;
                let dx = match dt.cpu_compute() {
                    DType::F32 => gc.with_slice::<f32, _>(|g| CpuStorage::F32(cpu::bwd_kernel(g, mask, *scale)))?,
                    DType::F64 => gc.with_slice::<f64, _>(|g| CpuStorage::F64(cpu::bwd_kernel(g, mask, *scale)))?,
                    d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
                };
                Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx.into_dtype(dt)), self.input.shape())?)])
            }
            #[cfg(feature = "cuda")]
            Mask::Cuda { p, seed } => {
                let dx = cuda::run(g, *p, *seed, true)?;
                Ok(vec![Some(Tensor::from_storage(Storage::Cuda(dx), self.input.shape())?)])
            }
        }
    }
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
            let y = cuda::run(self, p, seed, false)?;
            return Tensor::from_op(Storage::Cuda(y), self.shape(), &[self], || node(DropoutBackward { input: self.clone(), mask: Mask::Cuda { p, seed } }));
        }
        let dt = self.dtype();
        let xc = self.detach().to_dtype(dt.cpu_compute())?;
        let (y, mask) = match dt.cpu_compute() {
            DType::F32 => cpu::run::<f32>(&xc, seed, p)?,
            DType::F64 => cpu::run::<f64>(&xc, seed, p)?,
            d => return Err(Error::UnsupportedDType { op: OP, dtype: d }),
        };
        let scale = 1.0 / (1.0 - p);
        Tensor::from_op(Storage::Cpu(y.into_dtype(dt)), self.shape(), &[self], || {
            node(DropoutBackward { input: self.clone(), mask: Mask::Cpu { mask: Arc::new(mask), scale } })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::kernels::HEADERS;
    use crate::ops::KERNEL_FILES;

    #[test]
    fn dropout_contract_matches_the_kernel_source() {
        // one definition, in common.cuh, which dropout.cu and the attention kernels call
        let common = HEADERS.iter().find(|(n, _)| *n == "common.cuh").unwrap().1;
        for c in ["0x9E3779B97F4A7C15", "0xBF58476D1CE4E5B9", "0x94D049BB133111EB", "z >> 30", "z >> 27", "z >> 31", "z >> 40", "16777216", ") >= p;"] {
            assert!(common.contains(c), "common.cuh lost `{c}`");
        }
        assert!(KERNELS.source.contains("dropout_keep(seed, i, p)"));
        for f in KERNEL_FILES {
            assert!(!f.source.contains("float dropout_uniform("), "{} defines the dropout RNG a second time", f.stem);
        }
        // Known values: seed 0, idx 0 is splitmix64's first output for state 0 (0xE220A8397B1DCDAF).
        assert_eq!(dropout_uniform(0, 0), (0xE220_A839_7B1D_CDAFu64 >> 40) as f32 / 16_777_216.0);
        // Cross-checked against dropout.cu itself, run under kernels/emu (seed 42, idx 0..3).
        let want = [12_441_394u32, 2_682_851, 4_674_151].map(|k| k as f32 / 16_777_216.0);
        assert_eq!([0, 1, 2].map(|i| dropout_uniform(42, i)), want);
        let kept = (0..100_000u64).filter(|&i| dropout_keep(42, i, 0.1)).count();
        assert!((89_000..91_000).contains(&kept), "{kept}");
        assert!((0..1000u64).all(|i| dropout_keep(7, i, 0.0)) && !(0..1000u64).any(|i| dropout_keep(7, i, 1.0)));
    }
}
