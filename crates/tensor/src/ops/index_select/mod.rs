//! Integer-indexed reads and their scatter-add backward: `index_select`, `embedding`, `gather`,
//! `scatter_add`.
//!
//! Ids are i64 tensors; a negative or too-large id is `Error::IndexOutOfRange` naming the op (checked
//! before any read). Backward passes are deterministic scatter-adds: for `index_select`/`embedding` the
//! ids are bucketed by target row (a counting sort) and each target row is owned by one rayon task that
//! adds its source rows in increasing id position; for `gather`/`scatter_add` each outer slab of the
//! destination is owned by one task that walks its indices in row-major order. No atomics, no races,
//! and the summation order never depends on the thread count.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::cpu::PAR_MIN;
use crate::shape::{contiguous_strides, Layout};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Dim, Error, Result, Tensor};
use rayon::prelude::*;
use std::sync::Arc;
use crate::cuda::kernels::{kernel_file, KernelFile, ALL_FLOATS};

#[cfg(feature = "cuda")]
mod cuda;

/// The CUDA kernels of this op (`embedding.cu`; `ops::KERNEL_FILES` lists them all).
pub(crate) const KERNELS: KernelFile = kernel_file!(op "index_select" / "embedding", ALL_FLOATS, ["embedding_fwd", "embedding_bwd"]);

/// Reads i64 ids, checking the dtype and the range `0..size`.
fn read_ids(op: &'static str, ids: &Tensor, size: usize) -> Result<Vec<usize>> {
    if ids.dtype() != DType::I64 {
        return Err(Error::msg(format!("{op}: indices must have dtype i64, got {} (shape {:?})", ids.dtype(), ids.shape())));
    }
    ids.to_vec::<i64>()?
        .into_iter()
        .map(|i| if i >= 0 && (i as u64) < size as u64 { Ok(i as usize) } else { Err(Error::IndexOutOfRange { op, index: i, size }) })
        .collect()
}

/// (outer, size, inner) around `dim`.
fn split3(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

/// Runs `f` on `x`'s elements as a contiguous slice of its own dtype; wraps the Vec it returns.
macro_rules! per_dtype {
    ($x:expr, |$s:ident| $body:expr) => {
        match $x.dtype() {
            DType::F32 => f32::into_storage($x.with_slice::<f32, _>(|$s| $body)?),
            DType::F64 => f64::into_storage($x.with_slice::<f64, _>(|$s| $body)?),
            DType::BF16 => half::bf16::into_storage($x.with_slice::<half::bf16, _>(|$s| $body)?),
            DType::F16 => half::f16::into_storage($x.with_slice::<half::f16, _>(|$s| $body)?),
            DType::I64 => i64::into_storage($x.with_slice::<i64, _>(|$s| $body)?),
        }
    };
}

// ----- index_select / embedding ------------------------------------------------------------------

fn select_rows<T: Copy + Send + Sync + Default>(x: &[T], (outer, size, inner): (usize, usize, usize), ids: &[usize]) -> Vec<T> {
    let n = ids.len();
    let mut out = vec![T::default(); outer * n * inner];
    if out.is_empty() {
        return out;
    }
    let row = |(q, o): (usize, &mut [T])| {
        let src = ((q / n) * size + ids[q % n]) * inner;
        o.copy_from_slice(&x[src..src + inner]);
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(inner).enumerate().for_each(row);
    } else {
        out.chunks_mut(inner).enumerate().for_each(row);
    }
    out
}

/// `dx[o, r, :] = Σ_{j: ids[j] = r} g[o, j, :]`, summed in increasing j.
fn select_backward<T: Copy + Send + Sync + Default + std::ops::AddAssign>(g: &[T], (outer, size, inner): (usize, usize, usize), ids: &[usize]) -> Vec<T> {
    let mut dx = vec![T::default(); outer * size * inner];
    if dx.is_empty() {
        return dx;
    }
    // Counting sort of positions j by target row: rows[start[r]..start[r + 1]] are the js with ids[j] == r.
    let mut start = vec![0usize; size + 1];
    for &r in ids {
        start[r + 1] += 1;
    }
    for r in 0..size {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut rows = vec![0usize; ids.len()];
    for (j, &r) in ids.iter().enumerate() {
        rows[fill[r]] = j;
        fill[r] += 1;
    }
    let n = ids.len();
    let body = |(q, d): (usize, &mut [T])| {
        let (o, r) = (q / size, q % size);
        for &j in &rows[start[r]..start[r + 1]] {
            let s = &g[(o * n + j) * inner..(o * n + j + 1) * inner];
            for (d, &s) in d.iter_mut().zip(s) {
                *d += s;
            }
        }
    };
    if dx.len() >= PAR_MIN {
        dx.par_chunks_mut(inner).enumerate().for_each(body);
    } else {
        dx.chunks_mut(inner).enumerate().for_each(body);
    }
    dx
}

/// The selected positions the backward scatters into: on the host, or uploaded on CUDA.
enum Ids {
    Cpu(Arc<Vec<usize>>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

/// The one autograd node of index_select / embedding, on either device.
struct IndexSelect {
    op: &'static str,
    input: Tensor,
    dim: usize,
    ids: Ids,
}

impl BackwardOp for IndexSelect {
    backward_io!(|s| s.op, [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let shape = self.input.shape();
        let ids = match &self.ids {
            Ids::Cpu(ids) => ids,
            #[cfg(feature = "cuda")]
            Ids::Cuda(ids) => return Ok(vec![Some(Tensor::from_storage(Storage::Cuda(cuda::backward(self.op, &self.input, ids, g)?), shape)?)]),
        };
        let dims = split3(shape, self.dim);
        let dt = g.dtype();
        let gc = g.to_dtype(dt.cpu_compute())?;
        let dx = match dt.cpu_compute() {
            DType::F32 => f32::into_storage(gc.with_slice::<f32, _>(|s| select_backward(s, dims, ids))?),
            DType::F64 => f64::into_storage(gc.with_slice::<f64, _>(|s| select_backward(s, dims, ids))?),
            d => return Err(Error::UnsupportedDType { op: self.op, dtype: d }),
        };
        Ok(vec![Some(Tensor::from_storage(Storage::Cpu(dx.into_dtype(dt)), shape)?)])
    }
}

fn index_select_impl(op: &'static str, x: &Tensor, dim: usize, ids: Vec<usize>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let (out, shape, ids) = cuda::forward(op, x, dim, &ids)?;
        return Tensor::from_op(Storage::Cuda(out), &shape, &[x], || node(IndexSelect { op, input: x.clone(), dim, ids: Ids::Cuda(ids) }));
    }
    let dims = split3(x.shape(), dim);
    let out = per_dtype!(x, |s| select_rows(s, dims, &ids));
    let mut shape = x.shape().to_vec();
    shape[dim] = ids.len();
    let ids = Arc::new(ids);
    Tensor::from_op(Storage::Cpu(out), &shape, &[x], || node(IndexSelect { op, input: x.clone(), dim, ids: Ids::Cpu(ids.clone()) }))
}

// ----- gather / scatter_add -----------------------------------------------------------------------

/// Where `gather`/`scatter_add` indices point: for index element (o, j, i) (outer, along dim, inner
/// of the index shape) the data element is `o_off[o] + idx * stride + i_off[i]` of a contiguous tensor.
struct Scatter {
    o_off: Vec<usize>,
    i_off: Vec<usize>,
    n: usize,
    stride: usize,
}

impl Scatter {
    /// Validates rank, dtype, sizes and values of `index` against `x_shape`.
    fn new(op: &'static str, x_shape: &[usize], dim: usize, index: &Tensor) -> Result<(Scatter, Vec<usize>)> {
        let ishape = index.shape();
        if ishape.len() != x_shape.len() || ishape.iter().zip(x_shape).enumerate().any(|(d, (i, x))| d != dim && i > x) {
            return Err(Error::Shape {
                op,
                shape: ishape.to_vec(),
                msg: format!("index must have the rank of the input {x_shape:?} and no larger size outside dim {dim}"),
            });
        }
        let idx = read_ids(op, index, x_shape[dim])?;
        let xs = contiguous_strides(x_shape);
        let o_off = Layout::new(ishape[..dim].to_vec(), xs[..dim].to_vec(), 0).indices().collect();
        let i_off = Layout::new(ishape[dim + 1..].to_vec(), xs[dim + 1..].to_vec(), 0).indices().collect();
        Ok((Scatter { o_off, i_off, n: ishape[dim], stride: xs[dim] }, idx))
    }
    fn src_index(&self, o: usize, j: usize, i: usize) -> usize {
        (o * self.n + j) * self.i_off.len() + i
    }
}

fn gather_kernel<T: Copy + Default>(x: &[T], sc: &Scatter, idx: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len());
    for (o, &oo) in sc.o_off.iter().enumerate() {
        for j in 0..sc.n {
            for (i, &io) in sc.i_off.iter().enumerate() {
                out.push(x[oo + idx[sc.src_index(o, j, i)] * sc.stride + io]);
            }
        }
    }
    out
}

/// `dst[o_off[o] + idx*stride + i_off[i]] += src[o, j, i]`; one task per outer slab of `dst`.
fn scatter_kernel<T: Copy + Send + Sync + std::ops::AddAssign>(dst: &mut [T], slab: usize, sc: &Scatter, idx: &[usize], src: &[T]) {
    if dst.is_empty() || slab == 0 || idx.is_empty() {
        return;
    }
    // The index's outer element o owns destination slab o_off[o] / slab (distinct for distinct o).
    let mut owner = vec![usize::MAX; dst.len() / slab];
    for (o, &oo) in sc.o_off.iter().enumerate() {
        owner[oo / slab] = o;
    }
    let body = |(s, d): (usize, &mut [T])| {
        let o = owner[s];
        if o == usize::MAX {
            return;
        }
        let base = sc.o_off[o] - s * slab;
        for j in 0..sc.n {
            for (i, &io) in sc.i_off.iter().enumerate() {
                let q = sc.src_index(o, j, i);
                d[base + idx[q] * sc.stride + io] += src[q];
            }
        }
    };
    if src.len() >= PAR_MIN {
        dst.par_chunks_mut(slab).enumerate().for_each(body);
    } else {
        dst.chunks_mut(slab).enumerate().for_each(body);
    }
}

struct Gather {
    input: Tensor,
    dim: usize,
    index: Tensor,
}

impl BackwardOp for Gather {
    backward_io!(|s| "gather", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(self.input.zeros_like()?.scatter_add(self.dim, &self.index, g)?)])
    }
}

struct ScatterAdd {
    input: Tensor,
    src: Tensor,
    dim: usize,
    index: Tensor,
}

impl BackwardOp for ScatterAdd {
    backward_io!(|s| "scatter_add", [s.input, s.src]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gs = if self.src.requires_grad() { Some(g.gather(self.dim, &self.index)?) } else { None };
        Ok(vec![Some(g.clone()), gs])
    }
}

impl Tensor {
    /// Picks entries along `dim` by position: `out` has this tensor's shape with `shape[dim]` replaced
    /// by `ids.len()`, and `out[.., j, ..] = self[.., ids[j], ..]`. Ids may repeat.
    ///
    /// `ids`: a 1-D i64 tensor. Errors: a non-i64 or non-1-D `ids`, an id outside `0..shape[dim]`
    /// (`IndexOutOfRange` naming `index_select`), a bad `dim`. Works for every dtype; differentiable in
    /// `self` (the gradient is a deterministic scatter-add of rows).
    pub fn index_select<D: Dim>(&self, dim: D, ids: &Tensor) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "index_select")?;
        if ids.rank() != 1 {
            return Err(Error::Shape { op: "index_select", shape: ids.shape().to_vec(), msg: "indices must be 1-D".into() });
        }
        let ids = read_ids("index_select", ids, self.shape()[d])?;
        index_select_impl("index_select", self, d, ids)
    }

    /// Embedding lookup: `ids` (i64, any shape) picks rows of `weight` (`[vocab, dim]`); the result has
    /// shape `[..ids.shape, dim]`. Errors: `weight` not 2-D or not float, non-i64 ids, an id outside
    /// `0..vocab` (`IndexOutOfRange` naming `embedding`). Differentiable in `weight`.
    pub fn embedding(ids: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let _range = crate::nvtx::range("embedding");
        if weight.rank() != 2 {
            return Err(Error::Shape { op: "embedding", shape: weight.shape().to_vec(), msg: "weight must be [vocab, dim]".into() });
        }
        weight.check_float("embedding")?;
        let rows = read_ids("embedding", ids, weight.shape()[0])?;
        let mut shape = ids.shape().to_vec();
        shape.push(weight.shape()[1]);
        index_select_impl("embedding", weight, 0, rows)?.reshape(&shape)
    }

    /// Like `torch.gather`: `out[p] = self[p with p[dim] replaced by index[p]]`, `out` has `index`'s shape.
    /// `index`: i64 of the same rank as `self`, no larger than `self` outside `dim`, values in
    /// `0..shape[dim]` (else `IndexOutOfRange` naming `gather`). Differentiable in `self`.
    pub fn gather<D: Dim>(&self, dim: D, index: &Tensor) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "gather")?;
        let (sc, idx) = Scatter::new("gather", self.shape(), d, index)?;
        let out = per_dtype!(self, |s| gather_kernel(s, &sc, &idx));
        Tensor::from_op(Storage::Cpu(out), index.shape(), &[self], || node(Gather { input: self.clone(), dim: d, index: index.clone() }))
    }

    /// Out-of-place scatter-add: a copy of `self` with `src[p]` added at `p with p[dim] replaced by
    /// index[p]` (repeated targets accumulate, in row-major order of `index`). `index` (i64) and `src`
    /// have the same shape, `index` as in [`Tensor::gather`]. Differentiable in `self` and `src`;
    /// i64 tensors add exactly.
    pub fn scatter_add<D: Dim>(&self, dim: D, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "scatter_add")?;
        self.check_same("scatter_add", src)?;
        if src.shape() != index.shape() {
            return Err(Error::ShapeMismatch { op: "scatter_add", lhs: index.shape().to_vec(), rhs: src.shape().to_vec() });
        }
        let (sc, idx) = Scatter::new("scatter_add", self.shape(), d, index)?;
        let (_, size, inner) = split3(self.shape(), d);
        let dt = self.dtype();
        let cd = dt.cpu_compute();
        let mut dst = self.to_dtype(cd)?.storage_window()?;
        let src_c = src.to_dtype(cd)?;
        match &mut dst {
            CpuStorage::F32(v) => src_c.with_slice::<f32, _>(|s| scatter_kernel(v, size * inner, &sc, &idx, s))?,
            CpuStorage::F64(v) => src_c.with_slice::<f64, _>(|s| scatter_kernel(v, size * inner, &sc, &idx, s))?,
            CpuStorage::I64(v) => src_c.with_slice::<i64, _>(|s| scatter_kernel(v, size * inner, &sc, &idx, s))?,
            _ => return Err(Error::UnsupportedDType { op: "scatter_add", dtype: cd }),
        }
        let (x, index, src) = (self.clone(), index.clone(), src.clone());
        Tensor::from_op(Storage::Cpu(dst.into_dtype(dt)), x.shape(), &[&x, &src], || node(ScatterAdd { input: x.clone(), src: src.clone(), dim: d, index }))
    }
}
