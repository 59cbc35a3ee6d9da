//! matmul's CUDA half: cuBLAS / cuBLASLt through `cuda::blas` (adapter conventions: `cuda::ops`).
use crate::cuda::blas::GemmSpec;
use crate::cuda::ops::{float_out, same_device, storage_of};
use crate::cuda::storage::CudaStorage;
use crate::{Result, Tensor};

/// `(trans, batch_stride)` when `t = [batch.., r, c]` is a strided batch of tightly packed
/// matrices (row-major, or the transpose of one); `None` when it needs a copy first.
fn gemm_operand(t: &Tensor) -> Option<(bool, usize)> {
    let (sh, st, r) = (t.shape(), t.strides(), t.rank());
    let (rows, cols, rs, cs) = (sh[r - 2], sh[r - 1], st[r - 2], st[r - 1]);
    let trans = if (cs == 1 || cols <= 1) && (rs == cols || rows <= 1) {
        false
    } else if (rs == 1 || rows <= 1) && (cs == rows || cols <= 1) {
        true
    } else {
        return None;
    };
    let live: Vec<(usize, usize)> = sh[..r - 2].iter().copied().zip(st[..r - 2].iter().copied()).filter(|d| d.0 != 1).collect();
    if live.is_empty() {
        return Some((trans, rows * cols));
    }
    if live.iter().all(|d| d.1 == 0) {
        return Some((trans, 0));
    }
    if live.windows(2).any(|w| w[0].1 != w[1].1 * w[1].0) {
        return None;
    }
    let s = live.last().map_or(0, |d| d.1);
    (s >= rows * cols).then_some((trans, s))
}

/// `[batch.., m, k] @ [batch.., k, n]` (operands already broadcast to the output batch), a fresh
/// contiguous `[batch.., m, n]`. f32 is strict FP32 (cuBLAS default math mode).
pub fn matmul(a: &Tensor, b: &Tensor, batch: &[usize], m: usize, k: usize, n: usize) -> Result<CudaStorage> {
    same_device("matmul", &[a, b])?;
    let mut full = batch.to_vec();
    full.extend([m, k]);
    let mut a = a.detach().broadcast_as(&full)?;
    full.truncate(batch.len());
    full.extend([k, n]);
    let mut b = b.detach().broadcast_as(&full)?;
    let (oa, ob) = loop {
        match (gemm_operand(&a), gemm_operand(&b)) {
            (Some(x), Some(y)) => break (x, y),
            (None, _) => a = a.contiguous()?,
            (_, None) => b = b.contiguous()?,
        }
    };
    let nb: usize = batch.iter().product();
    let mut spec = GemmSpec { m, n, k, trans_a: oa.0, trans_b: ob.0, batch: nb, stride_a: oa.1, stride_b: ob.1, stride_c: m * n, alpha: 1.0, beta: 0.0 };
    if nb > 1 && !oa.0 && oa.1 == m * k && ob.1 == 0 {
        // a contiguous batch times one matrix (activations @ weight): a single GEMM of nb·m rows
        spec = GemmSpec { m: nb * m, batch: 1, stride_a: nb * m * k, stride_c: nb * m * n, ..spec };
    }
    let (ca, cb) = (storage_of("matmul", &a)?, storage_of("matmul", &b)?);
    let be = ca.backend().clone();
    let (offa, offb) = (a.layout().offset(), b.layout().offset());
    float_out!("matmul", a.dtype(), &be, nb * m * n, |T, out| {
        let (sa, sb) = (ca.slice::<T>("matmul")?, cb.slice::<T>("matmul")?);
        be.gemm::<T>(out, &sa.slice(offa..), &sb.slice(offb..), &spec)
    })
}
