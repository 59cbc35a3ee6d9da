//! max / min / argmax / argmin over one dim, and max_all. Any dtype (compared natively, no upcast).
//! NaN wins (the first NaN of a row is its max and its min, as PyTorch). Backward routes each
//! output's gradient to the FIRST extremal element of its row (deterministic), zero elsewhere.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::cpu::simd;
use crate::cpu::PAR_MIN;
use crate::ops::reduce::{reduce_shapes, rows_for};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Dim, Error, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Element types with a per-row arg-extremum; f32 finds the max with SIMD first.
trait ArgExt: CpuSlice + PartialOrd {
    /// Index of the first max (`max = true`) or min of a non-empty row; the first NaN if any.
    fn arg_ext(row: &[Self], max: bool) -> usize {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            #[allow(clippy::eq_op)]
            if v != v {
                return i;
            }
            if (max && v > row[best]) || (!max && v < row[best]) {
                best = i;
            }
        }
        best
    }
}
impl ArgExt for f64 {}
impl ArgExt for bf16 {}
impl ArgExt for f16 {}
impl ArgExt for i64 {}
impl ArgExt for f32 {
    fn arg_ext(row: &[f32], max: bool) -> usize {
        if !max {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    return i;
                }
                if v < row[best] {
                    best = i;
                }
            }
            return best;
        }
        let m = simd::max(row);
        if m.is_nan() {
            row.iter().position(|v| v.is_nan()).unwrap_or(0)
        } else {
            row.iter().position(|&v| v == m).unwrap_or(0)
        }
    }
}

/// Per-row arg-extremum indices and the values there.
fn rows_ext<T: ArgExt>(x: &[T], outer: usize, inner: usize, max: bool) -> (Vec<usize>, CpuStorage) {
    let f = |r: usize| T::arg_ext(&x[r * inner..(r + 1) * inner], max);
    let idx: Vec<usize> = if outer * inner >= PAR_MIN && outer > 1 { (0..outer).into_par_iter().map(f).collect() } else { (0..outer).map(f).collect() };
    let vals: Vec<T> = idx.iter().enumerate().map(|(r, &i)| x[r * inner + i]).collect();
    (idx, T::into_storage(vals))
}

/// Reduces `x` over `dim`: (arg index per row, values, output shape).
fn ext(x: &Tensor, dim: usize, keepdim: bool, max: bool, op: &'static str) -> Result<(Vec<usize>, CpuStorage, Vec<usize>)> {
    let (_, out_shape) = reduce_shapes(op, x.shape(), &[dim], keepdim)?;
    if x.shape()[dim] == 0 {
        return Err(Error::Shape { op, shape: x.shape().to_vec(), msg: format!("cannot reduce over dim {dim} of size 0") });
    }
    let (xp, outer, inner) = rows_for(x, &[dim])?;
    let (idx, vals) = match xp.dtype() {
        DType::F32 => xp.with_slice::<f32, _>(|v| rows_ext(v, outer, inner, max))?,
        DType::F64 => xp.with_slice::<f64, _>(|v| rows_ext(v, outer, inner, max))?,
        DType::BF16 => xp.with_slice::<bf16, _>(|v| rows_ext(v, outer, inner, max))?,
        DType::F16 => xp.with_slice::<f16, _>(|v| rows_ext(v, outer, inner, max))?,
        DType::I64 => xp.with_slice::<i64, _>(|v| rows_ext(v, outer, inner, max))?,
    };
    Ok((idx, vals, out_shape))
}

struct MaxMin {
    name: &'static str,
    input: Tensor,
    dim: usize,
    /// Position along `dim` of the chosen element, per output element (row-major).
    idx: Vec<usize>,
}

fn scatter<T: CpuSlice>(g: &Tensor, idx: &[usize], inner: usize) -> Result<CpuStorage> {
    let mut out = vec![T::default(); idx.len() * inner];
    g.with_slice::<T, _>(|gs| {
        for (r, &i) in idx.iter().enumerate() {
            out[r * inner + i] = gs[r];
        }
    })?;
    Ok(T::into_storage(out))
}

impl BackwardOp for MaxMin {
    backward_io!(|s| s.name, [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let shape = self.input.shape();
        let (rank, d) = (shape.len(), self.dim);
        let inner = shape[d];
        let s = match g.dtype() {
            DType::F32 => scatter::<f32>(g, &self.idx, inner)?,
            DType::F64 => scatter::<f64>(g, &self.idx, inner)?,
            DType::BF16 => scatter::<bf16>(g, &self.idx, inner)?,
            DType::F16 => scatter::<f16>(g, &self.idx, inner)?,
            dt => return Err(Error::UnsupportedDType { op: self.name, dtype: dt }),
        };
        // The rows were laid out as [other dims..., dim]; move `dim` back into place.
        let mut moved: Vec<usize> = (0..rank).filter(|&j| j != d).map(|j| shape[j]).collect();
        moved.push(inner);
        let inv: Vec<usize> = (0..rank).map(|j| if j < d { j } else if j == d { rank - 1 } else { j - 1 }).collect();
        let gx = Tensor::from_storage(Storage::Cpu(s), &moved)?.permute(&inv)?.contiguous()?;
        Ok(vec![Some(gx)])
    }
}

fn max_min<D: Dim>(x: &Tensor, dim: D, keepdim: bool, max: bool) -> Result<Tensor> {
    let name = if max { "max" } else { "min" };
    let d = dim.resolve(x.rank(), name)?;
    let (idx, vals, out_shape) = ext(x, d, keepdim, max, name)?;
    let out = Tensor::from_storage(Storage::Cpu(vals), &out_shape)?;
    Ok(out.with_history(&[x], || node(MaxMin { name, input: x.clone(), dim: d, idx })))
}

fn arg<D: Dim>(x: &Tensor, dim: D, keepdim: bool, max: bool) -> Result<Tensor> {
    let name = if max { "argmax" } else { "argmin" };
    let d = dim.resolve(x.rank(), name)?;
    let (idx, _, out_shape) = ext(x, d, keepdim, max, name)?;
    Tensor::from_vec(idx.into_iter().map(|i| i as i64).collect::<Vec<i64>>(), &out_shape)
}

impl Tensor {
    /// Maximum over `dim` (negative counts from the end); keeps it as size 1 when `keepdim`.
    /// Any dtype; NaN propagates. Errors on an empty dim. The gradient goes to the first maximum.
    pub fn max<D: Dim>(&self, dim: D, keepdim: bool) -> Result<Tensor> {
        max_min(self, dim, keepdim, true)
    }
    /// Minimum over `dim` (see [`Tensor::max`]); the gradient goes to the first minimum.
    pub fn min<D: Dim>(&self, dim: D, keepdim: bool) -> Result<Tensor> {
        max_min(self, dim, keepdim, false)
    }
    /// Index (I64) of the first maximum over `dim` (a NaN counts as the maximum). No gradient.
    pub fn argmax<D: Dim>(&self, dim: D, keepdim: bool) -> Result<Tensor> {
        arg(self, dim, keepdim, true)
    }
    /// Index (I64) of the first minimum over `dim` (a NaN counts as the minimum). No gradient.
    pub fn argmin<D: Dim>(&self, dim: D, keepdim: bool) -> Result<Tensor> {
        arg(self, dim, keepdim, false)
    }
    /// Maximum of all elements (0-d); the gradient goes to the first maximum in row-major order.
    /// Errors on an empty tensor.
    pub fn max_all(&self) -> Result<Tensor> {
        self.flatten_all()?.max(0usize, false)
    }
    /// Minimum of all elements (0-d); see [`Tensor::max_all`].
    pub fn min_all(&self) -> Result<Tensor> {
        self.flatten_all()?.min(0usize, false)
    }
}
