//! Reductions over dims: sum, mean (max lives in `reduce_max`).
use crate::autograd::{node, BackwardOp};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{CpuFloat, DType, Dim, Error, Result, Tensor};
use rayon::prelude::*;

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

fn sum_rows<T: CpuFloat + CpuSlice>(x: &[T], outer: usize, inner: usize) -> CpuStorage {
    let f = |r: usize| -> T {
        // f64-free pairwise-ish: accumulate in chunks of 8 lanes for accuracy and speed.
        let row = &x[r * inner..(r + 1) * inner];
        let mut acc = [T::zero(); 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
        let mut s = chunks.remainder().iter().copied().sum::<T>();
        for a in acc {
            s += a;
        }
        s
    };
    let out: Vec<T> = if outer * inner >= super::binary::PAR_MIN && outer > 1 {
        (0..outer).into_par_iter().map(f).collect()
    } else {
        (0..outer).map(f).collect()
    };
    T::into_storage(out)
}

struct Sum {
    input: Tensor,
    keep_shape: Vec<usize>,
}
impl BackwardOp for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
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
        let dt = self.dtype();
        let (xp, outer, inner) = rows_for(&self.to_dtype(dt.cpu_compute())?, &dims)?;
        let out = match dt.cpu_compute() {
            DType::F32 => xp.with_slice::<f32, _>(|v| sum_rows(v, outer, inner))?,
            DType::F64 => xp.with_slice::<f64, _>(|v| sum_rows(v, outer, inner))?,
            d => return Err(Error::UnsupportedDType { op: "sum", dtype: d }),
        };
        let out = Tensor::from_storage(Storage::Cpu(out.to_dtype(dt)), &out_shape)?;
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
