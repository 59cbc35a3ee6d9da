//! Row-major (batched) matmul through cuBLAS: `C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b]`.
use super::device::CudaBackend;
use super::launch::{check_min_len, to_i32, KernelFloat};
use crate::Result;
use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaView, CudaViewMut};

/// One row-major GEMM (or a strided batch of them). `op(A)` is `[m, k]`, `op(B)` is `[k, n]`,
/// `C` is `[m, n]`; `trans_a` means A is stored `[k, m]` (likewise B). Strides are in elements
/// between consecutive batch entries (0 broadcasts one matrix, e.g. a weight).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl GemmSpec {
    /// A single `C = A @ B` with no transposes.
    pub fn new(m: usize, n: usize, k: usize) -> GemmSpec {
        GemmSpec { m, n, k, trans_a: false, trans_b: false, batch: 1, stride_a: m * k, stride_b: k * n, stride_c: m * n, alpha: 1.0, beta: 0.0 }
    }
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl CudaBackend {
    /// Row-major GEMM via column-major cuBLAS: computes `C^T = op(B)^T op(A)^T`, i.e. swaps the
    /// operands and passes (n, m, k). f32 is strict FP32 (cuBLAS default math mode) unless TF32 is
    /// allowed ([`super::set_tf32`]); bf16 / f16 accumulate in f32.
    pub fn gemm<T: KernelFloat>(&self, c: &mut CudaViewMut<T>, a: &CudaView<T>, b: &CudaView<T>, s: &GemmSpec) -> Result<()>
    where
        CudaBlas: Gemm<T>,
    {
        let name = "gemm";
        let last = s.batch.saturating_sub(1);
        check_min_len(name, a.len(), last * s.stride_a + s.m * s.k)?;
        check_min_len(name, b.len(), last * s.stride_b + s.k * s.n)?;
        check_min_len(name, c.len(), last * s.stride_c + s.m * s.n)?;
        if s.batch == 0 || s.m * s.n == 0 {
            return Ok(());
        }
        let (m, n, k) = (to_i32(name, s.m)?, to_i32(name, s.n)?, to_i32(name, s.k)?);
        let cfg = GemmConfig {
            transa: op(s.trans_b),
            transb: op(s.trans_a),
            m: n,
            n: m,
            k,
            alpha: T::from_f32(s.alpha),
            lda: if s.trans_b { k } else { n },
            ldb: if s.trans_a { m } else { k },
            beta: T::from_f32(s.beta),
            ldc: n,
        };
        let blas = self.blas()?;
        if T::DTYPE == crate::DType::F32 {
            // strict FP32 unless TF32 is allowed (super::set_tf32); a host-side flag of the handle
            use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasStatus_t};
            let mode = if super::tf32_enabled() { cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { cublasMath_t::CUBLAS_DEFAULT_MATH };
            let st = unsafe { cublasSetMathMode(*blas.handle(), mode) };
            if st != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(crate::Error::Cuda(format!("{name}: cublasSetMathMode({mode:?}) failed: {st:?}")));
            }
        }
        if s.batch == 1 {
            unsafe { blas.gemm(cfg, b, a, c) }?;
        } else {
            let batched = StridedBatchedConfig {
                gemm: cfg,
                batch_size: to_i32(name, s.batch)?,
                stride_a: s.stride_b as i64,
                stride_b: s.stride_a as i64,
                stride_c: s.stride_c as i64,
            };
            unsafe { blas.gemm_strided_batched(batched, b, a, c) }?;
        }
        Ok(())
    }
}
