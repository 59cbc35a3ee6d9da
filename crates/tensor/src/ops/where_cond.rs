//! Selection by a mask: `mask.where_cond(on_true, on_false)` and `x.masked_fill(mask, value)`.
//! Masks may have any dtype; an element is true when it is nonzero (NaN counts as true).
use crate::autograd::{backward_io, node, sum_to_shape, BackwardOp};
use crate::shape::broadcast_shapes;
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{DType, Error, Result, Tensor};
use half::{bf16, f16};

/// The mask broadcast to `shape`, as booleans in row-major order.
fn mask_bits(mask: &Tensor, shape: &[usize]) -> Result<Vec<bool>> {
    fn bits<T: CpuSlice>(m: &Tensor) -> Result<Vec<bool>> {
        let zero = T::from_f64(0.0).to_f64();
        m.with_slice::<T, _>(|s| s.iter().map(|v| v.to_f64() != zero).collect())
    }
    let m = mask.detach().broadcast_as(shape)?;
    match m.dtype() {
        DType::F32 => bits::<f32>(&m),
        DType::F64 => bits::<f64>(&m),
        DType::BF16 => bits::<bf16>(&m),
        DType::F16 => bits::<f16>(&m),
        DType::I64 => bits::<i64>(&m),
    }
}

fn select<T: CpuSlice>(mask: &[bool], t: &Tensor, f: &Tensor) -> Result<CpuStorage> {
    let out = t.with_slice::<T, _>(|t| f.with_slice::<T, _>(|f| mask.iter().zip(t.iter().zip(f)).map(|(&m, (&a, &b))| if m { a } else { b }).collect::<Vec<T>>()))??;
    Ok(T::into_storage(out))
}

fn fill<T: CpuSlice>(mask: &[bool], x: &Tensor, value: f64) -> Result<CpuStorage> {
    let v = T::from_f64(value);
    let out = x.with_slice::<T, _>(|x| mask.iter().zip(x).map(|(&m, &a)| if m { v } else { a }).collect::<Vec<T>>())?;
    Ok(T::into_storage(out))
}

/// `out[i] = mask[i] ? on_true[i] : on_false[i]`, all three already broadcast to one shape.
fn select_any(mask: &[bool], t: &Tensor, f: &Tensor) -> Result<CpuStorage> {
    match t.dtype() {
        DType::F32 => select::<f32>(mask, t, f),
        DType::F64 => select::<f64>(mask, t, f),
        DType::BF16 => select::<bf16>(mask, t, f),
        DType::F16 => select::<f16>(mask, t, f),
        DType::I64 => select::<i64>(mask, t, f),
    }
}

struct WhereCond {
    mask: Tensor,
    on_true: Tensor,
    on_false: Tensor,
}

impl BackwardOp for WhereCond {
    backward_io!(|s| "where_cond", [s.on_true, s.on_false]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let zero = Tensor::zeros(&[], g.dtype(), g.device())?;
        let gt = if self.on_true.requires_grad() { Some(sum_to_shape(&self.mask.where_cond(g, &zero)?, self.on_true.shape())?) } else { None };
        let gf = if self.on_false.requires_grad() { Some(sum_to_shape(&self.mask.where_cond(&zero, g)?, self.on_false.shape())?) } else { None };
        Ok(vec![gt, gf])
    }
}

struct MaskedFill {
    input: Tensor,
    mask: Tensor,
}

impl BackwardOp for MaskedFill {
    backward_io!(|s| "masked_fill", [s.input]);
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.masked_fill(&self.mask, 0.0)?)])
    }
}

impl Tensor {
    /// Elementwise select: where `self` (the mask, any dtype, true = nonzero) is true take `on_true`,
    /// else `on_false`. All three broadcast together (numpy rules); the result has the broadcast
    /// shape and the dtype of `on_true`, which must equal that of `on_false`. Gradients flow to
    /// `on_true` and `on_false` (zero where the other branch was taken), none to the mask.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        on_true.check_same("where_cond", on_false)?;
        if self.device() != on_true.device() {
            return Err(Error::DeviceMismatch { op: "where_cond", lhs: self.device(), rhs: on_true.device() });
        }
        let shape = broadcast_shapes("where_cond", on_true.shape(), on_false.shape())?;
        let shape = broadcast_shapes("where_cond", self.shape(), &shape)?;
        let mask = mask_bits(self, &shape)?;
        let t = on_true.detach().broadcast_as(&shape)?;
        let f = on_false.detach().broadcast_as(&shape)?;
        let out = Tensor::from_storage(Storage::Cpu(select_any(&mask, &t, &f)?), &shape)?;
        Ok(out.with_history(&[on_true, on_false], || {
            node(WhereCond { mask: self.detach(), on_true: on_true.clone(), on_false: on_false.clone() })
        }))
    }

    /// A copy of `self` with `value` written where `mask` (any dtype, true = nonzero) is true. The
    /// mask broadcasts to `self`'s shape (a mask that would grow the result is a `ShapeMismatch`).
    /// The gradient is zero at filled positions.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        if self.device() != mask.device() {
            return Err(Error::DeviceMismatch { op: "masked_fill", lhs: self.device(), rhs: mask.device() });
        }
        let shape = broadcast_shapes("masked_fill", self.shape(), mask.shape())?;
        if shape != self.shape() {
            return Err(Error::ShapeMismatch { op: "masked_fill", lhs: self.shape().to_vec(), rhs: mask.shape().to_vec() });
        }
        let bits = mask_bits(mask, &shape)?;
        let x = self.detach();
        let out = match x.dtype() {
            DType::F32 => fill::<f32>(&bits, &x, value)?,
            DType::F64 => fill::<f64>(&bits, &x, value)?,
            DType::BF16 => fill::<bf16>(&bits, &x, value)?,
            DType::F16 => fill::<f16>(&bits, &x, value)?,
            DType::I64 => fill::<i64>(&bits, &x, value)?,
        };
        let out = Tensor::from_storage(Storage::Cpu(out), &shape)?;
        Ok(out.with_history(&[self], || node(MaskedFill { input: self.clone(), mask: mask.detach() })))
    }
}
