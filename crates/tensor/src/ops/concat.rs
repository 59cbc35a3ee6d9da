//! Joining and splitting along a dim: cat, stack, split, chunk.
use crate::autograd::{backward_io, node, BackwardOp};
use crate::storage::{CpuStorage, Storage};
use crate::{Dim, Error, Result, Tensor};

struct Cat {
    inputs: Vec<Tensor>,
    dim: usize,
}
impl BackwardOp for Cat {
    backward_io!(|s| "cat", inputs = s.inputs.clone());
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(self.inputs.len());
        for t in &self.inputs {
            let len = t.shape()[self.dim];
            out.push(if t.requires_grad() { Some(g.narrow(self.dim, start, len)?) } else { None });
            start += len;
        }
        Ok(out)
    }
}

#[cfg(feature = "cuda")]
fn cuda_cat(tensors: &[Tensor], d: usize, shape: &[usize]) -> Result<Storage> {
    Ok(Storage::Cuda(crate::cuda::ops::cat(tensors, d, shape)?))
}
#[cfg(not(feature = "cuda"))]
fn cuda_cat(tensors: &[Tensor], _: usize, _: &[usize]) -> Result<Storage> {
    Err(crate::cuda::check_device(tensors[0].device()).unwrap_err())
}

impl Tensor {
    /// Concatenates along `dim`; all other dims must match.
    pub fn cat<D: Dim>(tensors: &[Tensor], dim: D) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::msg("cat: no tensors given"))?;
        let d = dim.resolve(first.rank(), "cat")?;
        let mut shape = first.shape().to_vec();
        shape[d] = 0;
        for t in tensors {
            first.check_same("cat", t)?;
            let ok = t.rank() == first.rank() && (0..t.rank()).all(|i| i == d || t.shape()[i] == first.shape()[i]);
            if !ok {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
            }
            shape[d] += t.shape()[d];
        }
        let inputs: Vec<&Tensor> = tensors.iter().collect();
        if let crate::Device::Cuda(_) = first.device() {
            let out = cuda_cat(tensors, d, &shape)?;
            return Tensor::from_op(out, &shape, &inputs, || node(Cat { inputs: tensors.to_vec(), dim: d }));
        }
        let outer: usize = shape[..d].iter().product();
        let inner: usize = shape[d + 1..].iter().product();
        let windows: Vec<CpuStorage> = tensors.iter().map(|t| t.storage_window()).collect::<Result<_>>()?;
        // Gather plan: for each outer index, each input contributes a contiguous block.
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (input, start) per block
        let mut lens = Vec::new();
        for o in 0..outer {
            for (i, t) in tensors.iter().enumerate() {
                let blk = t.shape()[d] * inner;
                plan.push((i, o * blk));
                lens.push(blk);
            }
        }
        let out = concat_blocks(&windows, &plan, &lens, first.dtype());
        Tensor::from_op(Storage::Cpu(out), &shape, &inputs, || node(Cat { inputs: tensors.to_vec(), dim: d }))
    }

    /// Stacks equal-shaped tensors along a new dim.
    pub fn stack(tensors: &[Tensor], dim: usize) -> Result<Tensor> {
        let ts: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<_>>()?;
        Tensor::cat(&ts, dim)
    }

    /// Splits along `dim` into pieces of the given sizes (views).
    pub fn split<D: Dim>(&self, sizes: &[usize], dim: D) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.rank(), "split")?;
        if sizes.iter().sum::<usize>() != self.shape()[d] {
            return Err(Error::Shape { op: "split", shape: self.shape().to_vec(), msg: format!("sizes {sizes:?} do not add up to dim {d}") });
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let t = self.narrow(d, start, s);
                start += s;
                t
            })
            .collect()
    }

    /// Splits along `dim` into `n` equal pieces.
    pub fn chunk<D: Dim>(&self, n: usize, dim: D) -> Result<Vec<Tensor>> {
        let d = dim.resolve(self.rank(), "chunk")?;
        if n == 0 || !self.shape()[d].is_multiple_of(n) {
            return Err(Error::Shape { op: "chunk", shape: self.shape().to_vec(), msg: format!("dim {d} does not split into {n} equal parts") });
        }
        self.split(&vec![self.shape()[d] / n; n], d)
    }
}

fn concat_blocks(windows: &[CpuStorage], plan: &[(usize, usize)], lens: &[usize], dtype: crate::DType) -> CpuStorage {
    macro_rules! go {
        ($v:ident) => {{
            let total: usize = lens.iter().sum();
            let mut out = Vec::with_capacity(total);
            for (&(i, s), &l) in plan.iter().zip(lens) {
                let CpuStorage::$v(src) = &windows[i] else { unreachable!("cat: dtypes were checked") };
                out.extend_from_slice(&src[s..s + l]);
            }
            CpuStorage::$v(out)
        }};
    }
    match dtype {
        crate::DType::F32 => go!(F32),
        crate::DType::F64 => go!(F64),
        crate::DType::BF16 => go!(BF16),
        crate::DType::F16 => go!(F16),
        crate::DType::I64 => go!(I64),
    }
}
