//! Cross-entropy loss from logits `[N, C]` and i64 class targets `[N]`: fused log-softmax + NLL
//! (the per-row log-sum-exp is saved) with a fused backward. The CPU kernels are [`cpu`]; the CUDA
//! half is `cuda.rs` (adapter and launchers) with `cross_entropy.cu` beside it.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Tensor};
use std::sync::Arc;
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`cross_entropy.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "cross_entropy" / "cross_entropy", ALL_FLOATS, ["cross_entropy_fwd", "cross_entropy_bwd"]);

const OP: &str = "cross_entropy";

/// What the backward keeps, per device: the targets and the per-row log-sum-exp.
enum Saved {
    /// The targets on the host, the lse in the compute dtype.
    Cpu { targets: Arc<Vec<i64>>, lse: CpuStorage },
    /// The targets and the f32 lse on the device.
    #[cfg(feature = "cuda")]
    Cuda { targets: Tensor, lse: crate::cuda::CudaStorage },
}

/// The one autograd node, on either device.
struct CrossEntropyBackward {
    logits: Tensor,
    saved: Saved,
    count: usize,
    ignore: i64,
}

impl BackwardOp for CrossEntropyBackward {
    backward_io!(|s| OP, [s.logits]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        match &self.saved {
            Saved::Cpu { targets, lse } => cpu::backward(self, targets, lse, g),
            #[cfg(feature = "cuda")]
            Saved::Cuda { targets, lse } => cuda::backward(self, targets, lse, g),
        }
    }
}

impl Tensor {
    /// Mean cross-entropy of logits `self` (`[N, C]`, float) against class indices `targets`
    /// (`[N]`, i64): `mean over rows with target != ignore_index of (logsumexp(x_i) - x_i[t_i])`,
    /// as a 0-d tensor of `self`'s dtype (PyTorch's `F.cross_entropy(x, t, ignore_index=...)`
    /// with `reduction="mean"`; use -100 for PyTorch's default ignore index).
    ///
    /// - Only rank-2 logits are accepted: flatten leading dims first (`reshape(&[B*T, C])`).
    /// - If every row is ignored the loss is NaN (the mean of nothing) and the gradient is 0, as in
    ///   PyTorch; the trainer skips such batches before computing them.
    /// - Differentiable in `self` (fused backward `(softmax - onehot)/count`, 0 on ignored rows).
    ///
    /// Errors: logits not rank 2 or not float, targets not i64 or not `[N]`, device mismatch, a
    /// target outside `0..C` that is not `ignore_index` (`IndexOutOfRange`).
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: i64) -> Result<Tensor> {
        let _range = crate::nvtx::range("cross_entropy");
        self.check_float(OP)?;
        if self.rank() != 2 {
            return Err(Error::Shape { op: OP, shape: self.shape().to_vec(), msg: "logits must be [N, C] (flatten leading dims first)".into() });
        }
        if targets.dtype() != DType::I64 {
            return Err(Error::DTypeMismatch { op: OP, lhs: targets.dtype(), rhs: DType::I64 });
        }
        if self.device() != targets.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: targets.device() });
        }
        let (n, c) = (self.shape()[0], self.shape()[1]);
        if targets.shape() != [n] {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: targets.shape().to_vec() });
        }
        let t = targets.to_vec::<i64>()?;
        let mut count = 0;
        for &v in &t {
            if v == ignore_index {
                continue;
            }
            if v < 0 || v as usize >= c {
                return Err(Error::IndexOutOfRange { op: OP, index: v, size: c });
            }
            count += 1;
        }
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let (loss, saved) = cuda::forward(self, targets, ignore_index, count)?;
            return Ok(loss.with_history(&[self], || node(CrossEntropyBackward { logits: self.clone(), saved, count, ignore: ignore_index })));
        }
        let (out, lse) = cpu::forward(self, &t, ignore_index, count)?;
        Ok(out.with_history(&[self], || node(CrossEntropyBackward { logits: self.clone(), saved: Saved::Cpu { targets: Arc::new(t), lse }, count, ignore: ignore_index })))
    }
}
