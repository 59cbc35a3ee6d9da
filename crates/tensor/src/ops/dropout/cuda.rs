//! Dropout on CUDA: the adapter and the launchers of `dropout.cu` (grid-stride; the mask is
//! regenerated from `(seed, index)`, never stored).
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{check_len, grid_1d, KernelFloat};
use crate::cuda::ops::{contiguous_on, float_out, view};
use crate::cuda::storage::CudaStorage;
use crate::{Error, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

/// Inverted dropout of `x` (`0 < p < 1`, validated), or its backward applied to a gradient when
/// `bwd`: the same mask and scale.
pub(super) fn run(x: &Tensor, p: f64, seed: u64, bwd: bool) -> Result<CudaStorage> {
    let (be, [xc]) = contiguous_on("dropout", [x])?;
    float_out!("dropout", x.dtype(), &be, x.elem_count(), |T, out| {
        let i = &view::<T>(&xc, "dropout")?;
        if bwd { be.dropout_bwd::<T>(out, i, p as f32, seed) } else { be.dropout_fwd::<T>(out, i, p as f32, seed) }
    })
}

impl CudaBackend {
    /// Inverted dropout with the counter-based RNG of docs/KERNELS.md (no mask is stored).
    pub fn dropout_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, p: f32, seed: u64) -> Result<()> {
        self.dropout_launch("dropout_fwd", out, inp, p, seed)
    }

    /// Dropout backward: the same mask and scale applied to `dout`.
    pub fn dropout_bwd<T: KernelFloat>(&self, dinp: &mut CudaViewMut<T>, dout: &CudaView<T>, p: f32, seed: u64) -> Result<()> {
        self.dropout_launch("dropout_bwd", dinp, dout, p, seed)
    }

    fn dropout_launch<T: KernelFloat>(&self, op: &'static str, out: &mut CudaViewMut<T>, inp: &CudaView<T>, p: f32, seed: u64) -> Result<()> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::msg(format!("{op}: probability {p} is outside [0, 1]")));
        }
        let n = inp.len();
        check_len(op, out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("{op}_{}", T::SUFFIX))?;
        let n64 = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n64).arg(&p).arg(&seed);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }
}
