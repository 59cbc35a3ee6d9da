//! LayerNorm on CUDA: the forward saves the per-row mean / rstd on the device (f32) and the
//! backward runs the fused kernel (`kernels/layer_norm.cu`).
use crate::autograd::{backward_io, node, BackwardOp};
use crate::cuda::{ops_nn, row_kernel_override, with_row_kernel, CudaStorage, RowKernel};
use crate::storage::Storage;
use crate::{Result, Tensor};

struct LayerNormCudaBackward {
    x: Tensor,
    w: Option<Tensor>,
    b: Option<Tensor>,
    mean: CudaStorage,
    rstd: CudaStorage,
    /// The forward's row-kernel override, kept for the backward.
    kernel: Option<RowKernel>,
}

impl BackwardOp for LayerNormCudaBackward {
    backward_io!(|s| super::OP, [s.x], opt [s.w, s.b]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (dx, dw, db) = with_row_kernel(self.kernel, || ops_nn::layer_norm_bwd(&self.x.detach(), self.w.as_ref(), self.b.is_some(), &self.mean, &self.rstd, g))?;
        let mut out = vec![Some(Tensor::from_storage(Storage::Cuda(dx), self.x.shape())?)];
        if let (Some(w), Some(dw)) = (&self.w, dw) {
            out.push(Some(Tensor::from_storage(Storage::Cuda(dw), w.shape())?));
        }
        if let (Some(b), Some(db)) = (&self.b, db) {
            out.push(Some(Tensor::from_storage(Storage::Cuda(db), b.shape())?));
        }
        Ok(out)
    }
}

/// The CUDA forward (inputs already validated by `Tensor::layer_norm`).
pub(super) fn layer_norm(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let (y, mean, rstd) = ops_nn::layer_norm(x, w, b, eps)?;
    let inputs: Vec<&Tensor> = [Some(x), w, b].into_iter().flatten().collect();
    Ok(Tensor::from_storage(Storage::Cuda(y), x.shape())?
        .with_history(&inputs, || node(LayerNormCudaBackward { x: x.clone(), w: w.cloned(), b: b.cloned(), mean, rstd, kernel: row_kernel_override() })))
}
