//! Views that share storage: reshape, transpose/permute, narrow, broadcast, (un)squeeze.
use crate::autograd::{node, sum_to_shape, BackwardOp};
use crate::shape::{contiguous_strides, Layout};
use crate::{Dim, Error, Result, Tensor};

struct Reshape {
    input: Tensor,
}
impl BackwardOp for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.reshape(self.input.shape())?)])
    }
}

struct Permute {
    input: Tensor,
    perm: Vec<usize>,
}
impl BackwardOp for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
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
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let full = self.input.shape()[self.dim];
        let len = g.shape()[self.dim];
        Ok(vec![Some(g.pad_dim(self.dim, self.start, full - self.start - len)?)])
    }
}

struct Broadcast {
    input: Tensor,
}
impl BackwardOp for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast_as"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.input.clone()]
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(sum_to_shape(g, self.input.shape())?)])
    }
}

impl Tensor {
    /// Same elements, new shape (one dim may be `usize::MAX`... use [`Tensor::reshape_infer`] for -1).
    /// A view when contiguous, otherwise a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().to_vec(), rhs: shape.to_vec() });
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let src = if self.is_contiguous() { self.clone() } else { self.contiguous()? };
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

    /// Inserts a size-1 dim at `dim` (0..=rank).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim: dim as i64, rank: self.rank() });
        }
        let mut shape = self.shape().to_vec();
        shape.insert(dim, 1);
        self.reshape_view_or_copy(&shape)
    }

    /// Removes a size-1 dim.
    pub fn squeeze<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.resolve(self.rank(), "squeeze")?;
        if self.shape()[d] != 1 {
            return Err(Error::Shape { op: "squeeze", shape: self.shape().to_vec(), msg: format!("dim {d} is not of size 1") });
        }
        let mut shape = self.shape().to_vec();
        shape.remove(d);
        self.reshape_view_or_copy(&shape)
    }

    /// Merges all dims into one.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])
    }

    // Inserting/removing size-1 dims never needs a copy: keep strides of the other dims.
    fn reshape_view_or_copy(&self, shape: &[usize]) -> Result<Tensor> {
        let mut strides = Vec::with_capacity(shape.len());
        let mut src = self.shape().iter().zip(self.strides()).filter(|(&d, _)| d != 1).map(|(_, &s)| s);
        for &d in shape {
            strides.push(if d == 1 { 0 } else { src.next().unwrap_or(0) });
        }
        let layout = Layout::new(shape.to_vec(), strides, self.layout().offset());
        Ok(self.view_with(layout, || node(Reshape { input: self.clone() })))
    }

    /// Zero-pads `before` and `after` elements around dim `d` (used by narrow's backward).
    pub fn pad_dim(&self, d: usize, before: usize, after: usize) -> Result<Tensor> {
        if before == 0 && after == 0 {
            return Ok(self.clone());
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
