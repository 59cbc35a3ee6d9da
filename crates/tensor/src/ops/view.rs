//! Views that share storage: reshape, transpose/permute, narrow, broadcast, (un)squeeze.
use crate::autograd::{backward_io, node, sum_to_shape, BackwardOp};
use crate::shape::{contiguous_strides, view_strides, Layout};
use crate::cpu::PAR_MIN;
use crate::cpu::uninit_vec;
use crate::storage::{CpuStorage, Storage};
use crate::{CpuFloat, DType, Device, Dim, Error, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

struct Reshape {
    input: Tensor,
}
impl BackwardOp for Reshape {
    backward_io!(|s| "reshape", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(self.input.shape())?)])
    }
}

struct Permute {
    input: Tensor,
    perm: Vec<usize>,
}
impl BackwardOp for Permute {
    backward_io!(|s| "permute", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut inv = vec![0; self.perm.len()];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(vec![Some(g.permute(&inv)?)])
    }
}

struct Narrow {
    input: Tensor,
    dim: usize,
    start: usize,
}
impl BackwardOp for Narrow {
    backward_io!(|s| "narrow", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let full = self.input.shape()[self.dim];
        let len = g.shape()[self.dim];
        Ok(vec![Some(g.pad_dim(self.dim, self.start, full - self.start - len)?)])
    }
    /// Splits (q, k, v out of one projection, ...) send several narrows' gradients to one input:
    /// after the first (padded with zeros), each further one is added into its window of the sum in
    /// place, instead of being padded to the full shape and added over all of it.
    fn accumulate(&self, g: &Tensor, acc: &mut Option<Tensor>) -> Result<bool> {
        let Some(prev) = acc.as_ref() else { return Ok(false) };
        if g.device() != Device::Cpu || prev.device() != Device::Cpu || prev.dtype() != g.dtype() || !matches!(g.dtype(), DType::F32 | DType::F64) {
            return Ok(false);
        }
        let prev = acc.take().expect("checked above");
        // Only a sum no other handle can see is written in place (another input may hold the very
        // same gradient tensor, e.g. both sides of an add); anything else is copied first.
        let owned = Arc::strong_count(&prev.0) == 1 && prev.is_contiguous() && prev.layout().offset() == 0 && prev.storage().len() == prev.elem_count();
        let sum = if owned { prev } else { Tensor::from_storage(Storage::Cpu(prev.storage_window()?), prev.shape())? };
        let g = g.contiguous()?;
        let gs = g.storage();
        let w = Window::new(sum.shape(), self.dim, self.start, g.shape()[self.dim]);
        sum.update_storage(|s| {
            match (s.as_cpu_mut()?, gs.as_cpu()?) {
                (CpuStorage::F32(a), CpuStorage::F32(b)) => w.add(&b[g.layout().offset()..], a),
                (CpuStorage::F64(a), CpuStorage::F64(b)) => w.add(&b[g.layout().offset()..], a),
                _ => unreachable!("dtypes checked above"),
            }
            Ok(())
        })?;
        *acc = Some(sum);
        Ok(true)
    }
}

/// A window `start..start+len` along one dim of a row-major `shape`: `outer` rows of `row`
/// elements, the window being `win` elements at `off` in each.
struct Window {
    outer: usize,
    row: usize,
    off: usize,
    win: usize,
}

impl Window {
    fn new(shape: &[usize], dim: usize, start: usize, len: usize) -> Self {
        let inner: usize = shape[dim + 1..].iter().product();
        Window { outer: shape[..dim].iter().product(), row: shape[dim] * inner, off: start * inner, win: len * inner }
    }
    /// `acc[window] += g` (g: the window's elements, row-major).
    fn add<T: CpuFloat>(&self, g: &[T], acc: &mut [T]) {
        if self.win == 0 {
            return;
        }
        let body = |(a, b): (&mut [T], &[T])| {
            for (x, &y) in a[self.off..self.off + self.win].iter_mut().zip(b) {
                *x += y;
            }
        };
        let (acc, g) = (&mut acc[..self.outer * self.row], &g[..self.outer * self.win]);
        if g.len() >= PAR_MIN && self.outer > 1 {
            acc.par_chunks_mut(self.row).zip(g.par_chunks(self.win)).for_each(body);
        } else {
            acc.chunks_mut(self.row).zip(g.chunks(self.win)).for_each(body);
        }
    }
    /// A new buffer of `outer · row` elements: zeros outside the window, `g` in it, in one pass.
    fn pad<T: CpuFloat>(&self, g: &[T]) -> Vec<T> {
        let n = self.outer * self.row;
        if self.win == 0 {
            return vec![T::zero(); n];
        }
        let body = |(o, src): (&mut [MaybeUninit<T>], &[T])| {
            let (before, rest) = o.split_at_mut(self.off);
            let (mid, after) = rest.split_at_mut(self.win);
            for x in before.iter_mut().chain(after.iter_mut()) {
                x.write(T::zero());
            }
            for (x, &y) in mid.iter_mut().zip(src) {
                x.write(y);
            }
        };
        let g = &g[..self.outer * self.win];
        // SAFETY: `body` writes each of the `outer` rows of `row` elements in full (zeros around the
        // window, `g` inside it).
        unsafe {
            uninit_vec(n, |spare| {
                if n >= PAR_MIN && self.outer > 1 {
                    spare.par_chunks_mut(self.row).zip(g.par_chunks(self.win)).for_each(body);
                } else {
                    spare.chunks_mut(self.row).zip(g.chunks(self.win)).for_each(body);
                }
            })
        }
    }
}

struct Broadcast {
    input: Tensor,
}
impl BackwardOp for Broadcast {
    backward_io!(|s| "broadcast_as", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(sum_to_shape(g, self.input.shape())?)])
    }
}

impl Tensor {
    /// Same elements, new shape (use [`Tensor::reshape_infer`] for -1).
    /// A view whenever the new shape can be addressed with strides over the same storage (always for
    /// a contiguous tensor; for a strided one when only dims that are contiguous with respect to each
    /// other are merged, e.g. splitting the last dim of a narrowed `[B, T, 3C]` into heads), otherwise
    /// a copy, as PyTorch's `reshape` does.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().to_vec(), rhs: shape.to_vec() });
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        if let Some(strides) = view_strides(self.shape(), self.strides(), shape) {
            let layout = Layout::new(shape.to_vec(), strides, self.layout().offset());
            return Ok(self.view_with(layout, || node(Reshape { input: self.clone() })));
        }
        let src = self.contiguous()?;
        let layout = Layout::new(shape.to_vec(), contiguous_strides(shape), src.layout().offset());
        Ok(src.view_with(layout, || node(Reshape { input: src.clone() })))
    }

    /// Reshape where one entry may be -1 (inferred).
    pub fn reshape_infer(&self, shape: &[i64]) -> Result<Tensor> {
        let known: i64 = shape.iter().filter(|&&d| d != -1).product();
        let n_infer = shape.iter().filter(|&&d| d == -1).count();
        let bad = || Error::Shape { op: "reshape", shape: self.shape().to_vec(), msg: format!("cannot reshape to {shape:?}") };
        if n_infer > 1 || shape.iter().any(|&d| d < -1) || known == 0 && n_infer == 1 {
            return Err(bad());
        }
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| if d == -1 { self.elem_count() / known as usize } else { d as usize })
            .collect();
        self.reshape(&dims)
    }

    /// Reorders dims: output dim i is input dim `perm[i]`. A view.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::Shape { op: "permute", shape: self.shape().to_vec(), msg: format!("invalid permutation {perm:?}") });
        }
        let shape = perm.iter().map(|&p| self.shape()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides()[p]).collect();
        let layout = Layout::new(shape, strides, self.layout().offset());
        Ok(self.view_with(layout, || node(Permute { input: self.clone(), perm: perm.to_vec() })))
    }

    /// Swaps two dims. A view.
    pub fn transpose<D1: Dim, D2: Dim>(&self, a: D1, b: D2) -> Result<Tensor> {
        let a = a.resolve(self.rank(), "transpose")?;
        let b = b.resolve(self.rank(), "transpose")?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of the last two dims.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::Shape { op: "t", shape: self.shape().to_vec(), msg: "need rank >= 2".into() });
        }
        self.transpose(-2, -1)
    }

    /// Elements `start..start+len` along `dim`. A view.
    pub fn narrow<D: Dim>(&self, dim: D, start: usize, len: usize) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "narrow")?;
        let size = self.shape()[d];
        if start.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::Shape {
                op: "narrow",
                shape: self.shape().to_vec(),
                msg: format!("range {start}..{} out of bounds for dim {d} of size {size}", start.saturating_add(len)),
            });
        }
        let mut shape = self.shape().to_vec();
        shape[d] = len;
        let offset = self.layout().offset() + start * self.strides()[d];
        let layout = Layout::new(shape, self.strides().to_vec(), offset);
        Ok(self.view_with(layout, || node(Narrow { input: self.clone(), dim: d, start })))
    }

    /// Broadcasts to `shape` (numpy rules, new dims in front). A view with zero strides.
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let err = || Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape().to_vec(), rhs: shape.to_vec() };
        if shape.len() < self.rank() {
            return Err(err());
        }
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.rank() {
            let (s, t) = (self.shape()[i], shape[extra + i]);
            strides[extra + i] = if s == t {
                self.strides()[i]
            } else if s == 1 {
                0
            } else {
                return Err(err());
            };
        }
        let layout = Layout::new(shape.to_vec(), strides, self.layout().offset());
        Ok(self.view_with(layout, || node(Broadcast { input: self.clone() })))
    }

    /// Inserts a size-1 dim at `dim` (0..=rank). Always a view.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim: dim as i64, rank: self.rank() });
        }
        let mut shape = self.shape().to_vec();
        shape.insert(dim, 1);
        self.reshape(&shape)
    }

    /// Removes a size-1 dim. Always a view.
    pub fn squeeze<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "squeeze")?;
        if self.shape()[d] != 1 {
            return Err(Error::Shape { op: "squeeze", shape: self.shape().to_vec(), msg: format!("dim {d} is not of size 1") });
        }
        let mut shape = self.shape().to_vec();
        shape.remove(d);
        self.reshape(&shape)
    }

    /// Merges all dims into one.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])
    }

    /// Zero-pads `before` and `after` elements around dim `d` (used by narrow's backward).
    pub fn pad_dim(&self, d: usize, before: usize, after: usize) -> Result<Tensor> {
        if before == 0 && after == 0 {
            return Ok(self.clone());
        }
        if self.device() == Device::Cpu && matches!(self.dtype(), DType::F32 | DType::F64) {
            let mut shape = self.shape().to_vec();
            shape[d] += before + after;
            let w = Window::new(&shape, d, before, self.shape()[d]);
            let g = self.contiguous()?;
            let st = g.storage();
            let out = match st.as_cpu()? {
                CpuStorage::F32(v) => CpuStorage::F32(w.pad(&v[g.layout().offset()..])),
                CpuStorage::F64(v) => CpuStorage::F64(w.pad(&v[g.layout().offset()..])),
                _ => unreachable!("dtype checked above"),
            };
            return Tensor::from_storage(Storage::Cpu(out), &shape);
        }
        let mut parts = Vec::new();
        let mut zshape = self.shape().to_vec();
        if before > 0 {
            zshape[d] = before;
            parts.push(Tensor::zeros(&zshape, self.dtype(), self.device())?);
        }
        parts.push(self.clone());
        if after > 0 {
            zshape[d] = after;
            parts.push(Tensor::zeros(&zshape, self.dtype(), self.device())?);
        }
        Tensor::cat(&parts, d)
    }
}
