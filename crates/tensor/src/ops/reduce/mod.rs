//! Reductions over dims: sum, mean (max lives in `reduce_max`). The CUDA half is `cuda.rs` with
//! `reduce.cu` beside it.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::cpu::simd;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Dim, Error, Result, Tensor};
use rayon::prelude::*;
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`reduce.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "reduce" / "reduce", ALL_FLOATS, ["reduce_sum_last", "reduce_max_last", "reduce_sum_rows_partial", "reduce_sum_rows_finish"]);

/// Validates and sorts `dims`; returns (kept-dims shape, output shape).
pub(crate) fn reduce_shapes(op: &'static str, shape: &[usize], dims: &[usize], keepdim: bool) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut keep_shape = shape.to_vec();
    for &d in dims {
        if d >= shape.len() {
            return Err(Error::DimOutOfRange { op, dim: d as i64, rank: shape.len() });
        }
        keep_shape[d] = 1;
    }
    let out: Vec<usize> = if keepdim {
        keep_shape.clone()
    } else {
        shape.iter().enumerate().filter(|(i, _)| !dims.contains(i)).map(|(_, &s)| s).collect()
    };
    Ok((keep_shape, out))
}

/// Moves `dims` to the end and returns a contiguous view [outer, inner] of the input.
pub(crate) fn rows_for(x: &Tensor, dims: &[usize]) -> Result<(Tensor, usize, usize)> {
    let mut perm: Vec<usize> = (0..x.rank()).filter(|d| !dims.contains(d)).collect();
    perm.extend(dims.iter().copied());
    let inner: usize = dims.iter().map(|&d| x.shape()[d]).product();
    let outer = if inner == 0 { x.shape().iter().enumerate().filter(|(i, _)| !dims.contains(i)).map(|(_, &s)| s).product() } else { x.elem_count() / inner };
    let xp = x.detach().permute(&perm)?.contiguous()?;
    Ok((xp, outer, inner))
}

/// Row sums; f32 overrides the row kernel with the SIMD sum.
trait SumElem: CpuFloat + CpuSlice {
    fn row_sum(row: &[Self]) -> Self {
        // 8 partial sums for accuracy and speed.
        let mut acc = [Self::zero(); 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
        let mut s = chunks.remainder().iter().copied().sum::<Self>();
        for a in acc {
            s += a;
        }
        s
    }
    /// `acc += row`.
    fn acc_row(acc: &mut [Self], row: &[Self]) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += x;
        }
    }
}
impl SumElem for f64 {}
impl SumElem for f32 {
    fn row_sum(row: &[f32]) -> f32 {
        simd::sum(row)
    }
    fn acc_row(acc: &mut [f32], row: &[f32]) {
        simd::axpy(1.0, row, acc)
    }
}

/// Fixed block length for splitting one long row over threads (fixed, so results are deterministic).
const SUM_BLOCK: usize = 1 << 16;

fn sum_rows<T: SumElem>(x: &[T], outer: usize, inner: usize) -> CpuStorage {
    let out: Vec<T> = if outer == 1 && inner >= 2 * SUM_BLOCK {
        let parts: Vec<T> = x.par_chunks(SUM_BLOCK).map(T::row_sum).collect();
        vec![parts.into_iter().fold(T::zero(), |a, b| a + b)]
    } else if outer * inner >= crate::cpu::PAR_MIN && outer > 1 {
        x.par_chunks(inner).map(T::row_sum).collect()
    } else {
        (0..outer).map(|r| T::row_sum(&x[r * inner..(r + 1) * inner])).collect()
    };
    T::into_storage(out)
}

/// Sum over the leading `rows` of a contiguous [rows, cols] buffer (column sums): rows are added
/// into per-block accumulators in fixed blocks (deterministic), then the blocks are added in order.
fn sum_leading<T: SumElem>(x: &[T], rows: usize, cols: usize) -> CpuStorage {
    const BLOCK_ROWS: usize = 64;
    let block = |rs: &[T]| -> Vec<T> {
        let mut acc = vec![T::zero(); cols];
        for r in rs.chunks_exact(cols) {
            T::acc_row(&mut acc, r);
        }
        acc
    };
    let x = &x[..rows * cols];
    let parts: Vec<Vec<T>> = if rows * cols >= crate::cpu::PAR_MIN && rows > BLOCK_ROWS {
        x.par_chunks(BLOCK_ROWS * cols).map(block).collect()
    } else {
        vec![block(x)]
    };
    let mut out = vec![T::zero(); cols];
    for p in &parts {
        T::acc_row(&mut out, p);
    }
    T::into_storage(out)
}

struct Sum {
    input: Tensor,
    keep_shape: Vec<usize>,
}
impl BackwardOp for Sum {
    backward_io!(|s| "sum", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(&self.keep_shape)?.broadcast_as(self.input.shape())?)])
    }
}

impl Tensor {
    /// Sum over `dims` (each given as a non-negative index).
    pub fn sum_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.check_float("sum")?;
        let mut dims = dims.to_vec();
        dims.sort_unstable();
        dims.dedup();
        let (keep_shape, out_shape) = reduce_shapes("sum", self.shape(), &dims, keepdim)?;
        #[cfg(feature = "cuda")]
        if self.device().is_cuda() {
            let out = cuda::sum_dims(self, &dims)?;
            return Tensor::from_op(Storage::Cuda(out), &out_shape, &[self], || node(Sum { input: self.clone(), keep_shape }));
        }
        let dt = self.dtype();
        let xc = self.to_dtype(dt.cpu_compute())?;
        let k = dims.len();
        let out = if xc.is_contiguous() && k > 0 && k < xc.rank() && dims[k - 1] == k - 1 && xc.elem_count() > 0 {
            // leading dims of a contiguous input (bias gradients): column sums, no transpose copy
            let rows: usize = xc.shape()[..k].iter().product();
            let cols = xc.elem_count() / rows;
            match dt.cpu_compute() {
                DType::F32 => xc.with_slice::<f32, _>(|v| sum_leading(v, rows, cols))?,
                DType::F64 => xc.with_slice::<f64, _>(|v| sum_leading(v, rows, cols))?,
                d => return Err(Error::UnsupportedDType { op: "sum", dtype: d }),
            }
        } else {
            let (xp, outer, inner) = rows_for(&xc, &dims)?;
            match dt.cpu_compute() {
                DType::F32 => xp.with_slice::<f32, _>(|v| sum_rows(v, outer, inner))?,
                DType::F64 => xp.with_slice::<f64, _>(|v| sum_rows(v, outer, inner))?,
                d => return Err(Error::UnsupportedDType { op: "sum", dtype: d }),
            }
        };
        let out = Tensor::from_storage(Storage::Cpu(out.into_dtype(dt)), &out_shape)?;
        Ok(out.with_history(&[self], || node(Sum { input: self.clone(), keep_shape })))
    }
    /// Sum over one dim.
    pub fn sum<D: Dim>(&self, dim: D, keepdim: bool) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "sum")?;
        self.sum_dims(&[d], keepdim)
    }
    /// Sum of all elements (0-d).
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.sum_dims(&dims, false)
    }
    /// Mean over `dims`.
    pub fn mean_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let n: usize = dims.iter().filter(|&&d| d < self.rank()).map(|&d| self.shape()[d]).product();
        self.sum_dims(dims, keepdim)?.mul_scalar(1.0 / n.max(1) as f64)
    }
    /// Mean over one dim.
    pub fn mean<D: Dim>(&self, dim: D, keepdim: bool) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "mean")?;
        self.mean_dims(&[d], keepdim)
    }
    /// Mean of all elements (0-d).
    pub fn mean_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.mean_dims(&dims, false)
    }
}
