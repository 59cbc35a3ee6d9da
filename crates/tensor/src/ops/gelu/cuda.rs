//! GELU on CUDA: the adapter and the launchers of `gelu.cu` (elementwise, grid-stride). The kernels
//! take the form as `int`: [`GeluApprox`]'s discriminant.
use super::GeluApprox;
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{check_len, grid_1d, KernelFloat};
use crate::cuda::ops::{contiguous_on, float_out, view};
use crate::storage::Storage;
use crate::{Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

/// GELU forward.
pub(super) fn forward(x: &Tensor, approx: GeluApprox) -> Result<Storage> {
    let (b, [c]) = contiguous_on("gelu", [x])?;
    float_out!("gelu", x.dtype(), &b, x.elem_count(), |T, out| b.gelu_fwd::<T>(out, &view(&c, "gelu")?, approx)).map(Storage::Cuda)
}

/// GELU backward: `dx = g * gelu'(x)` (fused kernel).
pub(super) fn backward(x: &Tensor, g: &Tensor, approx: GeluApprox) -> Result<Storage> {
    let op = "gelu_bwd";
    let (b, [xc, gc]) = contiguous_on(op, [x, g])?;
    float_out!(op, x.dtype(), &b, x.elem_count(), |T, out| b.gelu_bwd::<T>(out, &view(&xc, op)?, &view(&gc, op)?, approx)).map(Storage::Cuda)
}

impl CudaBackend {
    /// `out = gelu(inp)` over contiguous buffers.
    pub fn gelu_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, approx: GeluApprox) -> Result<()> {
        let n = inp.len();
        check_len("gelu_fwd", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("gelu_fwd_{}", T::SUFFIX))?;
        let (n64, a) = (n as i64, approx as i32);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n64).arg(&a);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }

    /// `dinp = dout * gelu'(inp)`.
    pub fn gelu_bwd<T: KernelFloat>(&self, dinp: &mut CudaViewMut<T>, inp: &CudaView<T>, dout: &CudaView<T>, approx: GeluApprox) -> Result<()> {
        let n = inp.len();
        check_len("gelu_bwd", dinp.len(), n)?;
        check_len("gelu_bwd", dout.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("gelu_bwd_{}", T::SUFFIX))?;
        let (n64, a) = (n as i64, approx as i32);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dinp).arg(inp).arg(dout).arg(&n64).arg(&a);
        unsafe { b.launch(grid_1d(n)) }?;
        Ok(())
    }
}
