//! index_select along dim 0 on CUDA (the embedding lookup): the adapter and the launchers of
//! `embedding.cu` (the backward is a deterministic scatter-add, no atomics).
use crate::cuda::device::CudaBackend;
use crate::cuda::launch::{allow_smem, check_len, to_i32, KernelFloat, BLOCK};
use crate::cuda::ops::{contiguous_on, float_out, storage_of, view};
use crate::cuda::storage::CudaStorage;
use crate::storage::CpuStorage;
use crate::{Result, Tensor};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// Rows `ids` (on the host, validated) of `x` along dim 0: the output storage, its shape, and the
/// ids uploaded for the backward. Other dims are not implemented on CUDA yet.
pub(super) fn forward(op: &'static str, x: &Tensor, dim: usize, ids: &[usize]) -> Result<(CudaStorage, Vec<usize>, CudaStorage)> {
    if dim != 0 {
        return Err(crate::cuda::not_implemented(&format!("{op} along dim {dim} (only dim 0)")));
    }
    let size = x.shape()[0];
    let inner: usize = x.shape()[1..].iter().product();
    let host = CpuStorage::I64(ids.iter().map(|&i| i as i64).collect());
    let ids = CudaStorage::from_cpu(&host, storage_of(op, x)?.backend().ordinal())?;
    let (be, [xc]) = contiguous_on(op, [x])?;
    let out = float_out!(op, x.dtype(), &be, ids.len() * inner, |T, out| be.embedding_fwd::<T>(out, &view(&xc, op)?, &view(&ids, op)?, inner, size))?;
    let mut shape = x.shape().to_vec();
    shape[0] = ids.len();
    Ok((out, shape, ids))
}

/// The backward: the rows of `g` summed into a zero gradient of `input`'s shape at `ids`.
pub(super) fn backward(op: &'static str, input: &Tensor, ids: &CudaStorage, g: &Tensor) -> Result<CudaStorage> {
    let shape = input.shape();
    let size = shape[0];
    let inner: usize = shape[1..].iter().product();
    let (be, [gc]) = contiguous_on(op, [g])?;
    float_out!(op, g.dtype(), &be, size * inner, |T, out| be.embedding_bwd::<T>(out, &view(&gc, op)?, &view(ids, op)?, inner, size))
}

/// Shared memory budget the embedding backward aims for (fits the default 48 KiB).
const EMB_SMEM: usize = 46 * 1024;

impl CudaBackend {
    /// `out[i, :] = weight[ids[i], :]` for `weight: [vocab, dim]`, `out: [ids.len(), dim]`.
    pub fn embedding_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, weight: &CudaView<T>, ids: &CudaView<i64>, dim: usize, vocab: usize) -> Result<()> {
        let n = ids.len();
        check_len("embedding_fwd", weight.len(), vocab * dim)?;
        check_len("embedding_fwd", out.len(), n * dim)?;
        if n * dim == 0 {
            return Ok(());
        }
        let f = self.function(&super::KERNELS, &format!("embedding_fwd_{}", T::SUFFIX))?;
        let (ni, d, v) = (to_i32("embedding_fwd", n)?, to_i32("embedding_fwd", dim)?, to_i32("embedding_fwd", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(weight).arg(ids).arg(&ni).arg(&d).arg(&v);
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `dweight[v, :] = sum_{i: ids[i] == v} dout[i, :]` — deterministic (no atomics), written.
    pub fn embedding_bwd<T: KernelFloat>(&self, dweight: &mut CudaViewMut<T>, dout: &CudaView<T>, ids: &CudaView<i64>, dim: usize, vocab: usize) -> Result<()> {
        let n = ids.len();
        check_len("embedding_bwd", dweight.len(), vocab * dim)?;
        check_len("embedding_bwd", dout.len(), n * dim)?;
        if vocab * dim == 0 {
            return Ok(());
        }
        let fixed = 8 * BLOCK as usize + 4 * 32 + 4;
        let rows_per_block = (EMB_SMEM.saturating_sub(fixed) / (4 * dim)).clamp(1, 32);
        let smem = (4 * ((rows_per_block * dim).div_ceil(2) * 2) + fixed) as u32;
        let f = self.function(&super::KERNELS, &format!("embedding_bwd_{}", T::SUFFIX))?;
        allow_smem(&f, smem)?;
        let (ni, d, v, r) = (to_i32("embedding_bwd", n)?, to_i32("embedding_bwd", dim)?, to_i32("embedding_bwd", vocab)?, rows_per_block as i32);
        let mut b = self.stream().launch_builder(&f);
        b.arg(dweight).arg(dout).arg(ids).arg(&ni).arg(&d).arg(&v).arg(&r);
        let cfg = LaunchConfig { grid_dim: (vocab.div_ceil(rows_per_block) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: smem };
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
