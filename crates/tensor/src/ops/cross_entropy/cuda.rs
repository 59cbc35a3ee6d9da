//! Cross-entropy on CUDA: the adapter and the launchers of `cross_entropy.cu` (one block per row;
//! the forward saves the per-row log-sum-exp in f32, the backward reads it).
use super::{CrossEntropyBackward, Saved};
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{check_len, grid_rows, to_i32, KernelFloat};
use crate::cuda::ops::{contiguous, contiguous_on, float_dispatch, float_out, storage_of, view};
use crate::cuda::storage::{out_buf, CudaStorage};
use crate::storage::Storage;
use crate::{DType, Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

const OP: &str = super::OP;

/// Mean cross-entropy of `[N, C]` logits over the `count` non-ignored targets (validated on the
/// host by the caller): a 0-d tensor of the logits' dtype on the device, without history, and what
/// the backward needs.
pub(super) fn forward(logits: &Tensor, targets: &Tensor, ignore: i64, count: usize) -> Result<(Tensor, Saved)> {
    let (rows, vocab) = (logits.shape()[0], logits.shape()[1]);
    let (be, [xc, tc]) = contiguous_on(OP, [logits, targets])?;
    let mut losses = out_buf::<f32>(&be, rows)?;
    let mut lse = out_buf::<f32>(&be, rows)?;
    float_dispatch!(OP, logits.dtype(), T => {
        be.cross_entropy_fwd::<T>(&mut losses.slice_mut(..), &mut lse.slice_mut(..), &view(&xc, OP)?, &view(&tc, OP)?, rows, vocab, ignore)
    })?;
    let losses = Tensor::from_storage(Storage::Cuda(CudaStorage::from_slice(losses, &be)), &[rows])?;
    // the mean of no rows is NaN, as on the CPU and in PyTorch
    let (scale, bias) = if count == 0 { (0.0, f64::NAN) } else { (1.0 / count as f64, 0.0) };
    let loss = crate::no_grad(|| losses.sum_all()?.affine(scale, bias)?.to_dtype(logits.dtype()))?;
    let loss = Tensor::from_storage(Storage::Cuda(storage_of(OP, &loss)?), &[])?;
    Ok((loss, Saved::Cuda { targets: targets.detach(), lse: CudaStorage::from_slice(lse, &be) }))
}

/// The fused backward: `dlogits = g / count · (softmax(logits) - onehot(target))`, 0 on ignored rows.
pub(super) fn backward(node: &CrossEntropyBackward, targets: &Tensor, lse: &CudaStorage, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let x = &node.logits;
    let (rows, vocab) = (x.shape()[0], x.shape()[1]);
    let scale = if node.count == 0 { 0.0 } else { 1.0 / node.count as f64 };
    // dloss = g / count, one f32 broadcast to every row (stays on the device: no sync)
    let dloss = contiguous(&g.to_dtype(DType::F32)?.affine(scale, 0.0)?)?;
    let (xc, tc) = (contiguous(&x.detach())?, contiguous(targets)?);
    let be = xc.backend().clone();
    let ignore = node.ignore;
    let dx = float_out!(OP, x.dtype(), &be, rows * vocab, |T, out| {
        be.cross_entropy_bwd::<T>(out, &view(lse, OP)?, &view(&dloss, OP)?, &view(&xc, OP)?, &view(&tc, OP)?, rows, vocab, ignore)
    })?;
    Ok(vec![Some(Tensor::from_storage(Storage::Cuda(dx), x.shape())?)])
}

impl CudaBackend {
    /// Per-row cross-entropy losses (0 on `ignore_index` rows) and the saved logsumexp.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_fwd<T: KernelFloat>(
        &self, losses: &mut CudaViewMut<f32>, lse: &mut CudaViewMut<f32>, logits: &CudaView<T>, targets: &CudaView<i64>,
        rows: usize, vocab: usize, ignore_index: i64,
    ) -> Result<()> {
        check_len("cross_entropy_fwd", logits.len(), rows * vocab)?;
        for len in [losses.len(), lse.len(), targets.len()] {
            check_len("cross_entropy_fwd", len, rows)?;
        }
        if rows * vocab == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("cross_entropy_fwd_{}", T::SUFFIX))?;
        let (r, v) = (to_i32("cross_entropy_fwd", rows)?, to_i32("cross_entropy_fwd", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(losses).arg(lse).arg(logits).arg(targets).arg(&r).arg(&v).arg(&ignore_index);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }

    /// `dlogits = dloss * (softmax(logits) - onehot(target))`; `dloss` has `rows` entries, or 1
    /// entry broadcast to every row (e.g. `1 / n_valid` for a mean loss).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_bwd<T: KernelFloat>(
        &self, dlogits: &mut CudaViewMut<T>, lse: &CudaView<f32>, dloss: &CudaView<f32>, logits: &CudaView<T>,
        targets: &CudaView<i64>, rows: usize, vocab: usize, ignore_index: i64,
    ) -> Result<()> {
        check_len("cross_entropy_bwd", dlogits.len(), rows * vocab)?;
        check_len("cross_entropy_bwd", logits.len(), rows * vocab)?;
        check_len("cross_entropy_bwd", lse.len(), rows)?;
        check_len("cross_entropy_bwd", targets.len(), rows)?;
        let stride: i32 = if dloss.len() == 1 { 0 } else { 1 };
        if stride == 1 {
            check_len("cross_entropy_bwd", dloss.len(), rows)?;
        }
        if rows * vocab == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("cross_entropy_bwd_{}", T::SUFFIX))?;
        let (r, v) = (to_i32("cross_entropy_bwd", rows)?, to_i32("cross_entropy_bwd", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dlogits).arg(lse).arg(dloss).arg(logits).arg(targets).arg(&r).arg(&v).arg(&stride).arg(&ignore_index);
        unsafe { b.launch(grid_rows(rows)) }?;
        Ok(())
    }
}
