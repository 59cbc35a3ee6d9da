//! Matrix product with numpy `matmul` rules: 2-D, batched with broadcast batch dims, 1-D operands.
//!
//! The CPU kernel hands every operand's strides straight to [`crate::cpu::gemm`], so transposed,
//! permuted, narrowed or broadcast operands are read in place. The only copy is for a matrix whose last
//! two dims both have a stride other than 0 or 1 (e.g. a view permuted so both of its matrix dims come
//! from outer dims): it is made contiguous first so packing reads whole rows.
//!
//! Batched products choose one of three plans:
//! - **fold**: when B is the same matrix for every batch and A's batch dims merge with its rows (the
//!   linear-layer case `[B, T, C] x [C, N]`), the batch becomes rows of one big GEMM;
//! - **rayon over batches** (single-threaded GEMMs) when there are many batches or small matrices;
//! - **one threaded GEMM per batch**, in order, when there are few large ones.
//!
//! Backward: `dA = dC·Bᵀ`, `dB = Aᵀ·dC` (transposes are stride views). A gradient whose operand was
//! broadcast over the batch is summed: when the operand has no batch dims of its own the sum is folded
//! into the contraction (`dW = Σ_b X_bᵀ·dY_b` as one GEMM over `B·T`), otherwise with `sum_to_shape`.
//! The CUDA half (cuBLAS) is `cuda.rs`.
#[cfg(feature = "cuda")]
mod cuda;

use crate::autograd::{node, sum_to_shape, BackwardOp};
use crate::cpu::try_uninit_vec;
use crate::cpu::gemm::{gemm, gemm_bias_uninit, gemm_uninit, GemmFloat, Mat, MatMut, Threads, PAR_FLOPS};
use crate::shape::{broadcast_shapes, Layout};
use crate::storage::{CpuSlice, Storage};
use crate::{DType, Error, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// One operand as the kernel sees it: a matrix (rows, cols, strides) repeated over the output batch.
struct Operand {
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    /// One stride per output batch dim (0 where this operand is broadcast).
    bstrides: Vec<usize>,
}

impl Operand {
    fn new(t: &Tensor, batch: &[usize]) -> Operand {
        let (sh, st, r) = (t.shape(), t.strides(), t.rank());
        let extra = batch.len() - (r - 2);
        let bstrides = (0..batch.len())
            .map(|i| if i < extra || sh[i - extra] == 1 { 0 } else { st[i - extra] })
            .collect();
        Operand { offset: t.layout().offset(), rows: sh[r - 2], cols: sh[r - 1], rs: st[r - 2], cs: st[r - 1], bstrides }
    }
    fn offsets(&self, batch: &[usize]) -> Vec<usize> {
        Layout::new(batch.to_vec(), self.bstrides.clone(), self.offset).indices().collect()
    }
    fn mat<'a, T>(&self, data: &'a [T], offset: usize) -> Mat<'a, T> {
        Mat { data, offset, rows: self.rows, cols: self.cols, rs: self.rs as isize, cs: self.cs as isize }
    }
    /// (size, stride) of every batch dim followed by `last`.
    fn with_batch(&self, batch: &[usize], last: (usize, usize)) -> Vec<(usize, usize)> {
        batch.iter().copied().zip(self.bstrides.iter().copied()).chain([last]).collect()
    }
}

/// The stride of `dims` merged into one dim in row-major order, if they merge.
fn fold(dims: &[(usize, usize)]) -> Option<usize> {
    let live: Vec<(usize, usize)> = dims.iter().copied().filter(|d| d.0 != 1).collect();
    if live.windows(2).any(|w| w[0].1 != w[1].1 * w[1].0) {
        return None;
    }
    Some(live.last().map_or(0, |d| d.1))
}

/// A matrix both of whose dims are strided (neither stride 0 nor 1) is copied; anything else is read
/// in place.
fn regular(t: &Tensor) -> Result<Tensor> {
    let (sh, st, r) = (t.shape(), t.strides(), t.rank());
    let ok = sh[r - 2] <= 1 || sh[r - 1] <= 1 || st[r - 2] <= 1 || st[r - 1] <= 1;
    if ok {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// `C[batch, m, n] = A @ B` (or, with `reduce`, `C[m, n] = Σ_batch A @ B`) for rank ≥ 2 operands.
fn kernel<T: GemmFloat + CpuSlice>(a: &Tensor, b: &Tensor, batch: &[usize], reduce: bool) -> Result<Vec<T>> {
    let (sa, sb) = (a.storage(), b.storage());
    let (da, db) = (sa.as_cpu()?.as_slice::<T>()?, sb.as_cpu()?.as_slice::<T>()?);
    let (oa, ob) = (Operand::new(a, batch), Operand::new(b, batch));
    let (m, k, n) = (oa.rows, oa.cols, ob.cols);
    let nb: usize = batch.iter().product();
    let out_shape: Vec<usize> = if reduce { vec![m, n] } else { batch.iter().copied().chain([m, n]).collect() };
    let out_shape = &out_shape[..];
    let len = crate::mem::elem_count("matmul", out_shape, T::DTYPE)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let (one, zero) = (T::one(), T::zero());
    if reduce {
        // Σ_b A_b B_b = [A_0 | A_1 | ...] · [B_0; B_1; ...] when the batch merges with k on both sides.
        if let (Some(sa_k), Some(sb_k)) = (fold(&oa.with_batch(batch, (k, oa.cs))), fold(&ob.with_batch(batch, (k, ob.rs)))) {
            let am = Mat { cols: nb * k, cs: sa_k as isize, ..oa.mat(da, oa.offset) };
            let bm = Mat { rows: nb * k, rs: sb_k as isize, ..ob.mat(db, ob.offset) };
            return fresh(out_shape, |c| gemm_uninit(one, am, bm, c, Threads::Auto));
        }
        let mut out = crate::mem::try_collect("matmul", out_shape, len, std::iter::repeat(zero))?;
        let (pa, pb) = (oa.offsets(batch), ob.offsets(batch));
        for i in 0..nb {
            let beta = if i == 0 { zero } else { one };
            gemm(one, oa.mat(da, pa[i]), ob.mat(db, pb[i]), beta, MatMut::row_major(&mut out, m, n), Threads::Auto)?;
        }
        return Ok(out);
    }
    if nb > 1 && ob.bstrides.iter().all(|&s| s == 0) {
        if let Some(s) = fold(&oa.with_batch(batch, (m, oa.rs))) {
            let am = Mat { rows: nb * m, rs: s as isize, ..oa.mat(da, oa.offset) };
            return fresh(out_shape, |c| gemm_uninit(one, am, ob.mat(db, ob.offset), c, Threads::Auto));
        }
    }
    let (pa, pb) = (oa.offsets(batch), ob.offsets(batch));
    let flops = 2.0 * (m * n) as f64 * k as f64;
    let one_gemm = |i: usize, c: &mut [MaybeUninit<T>], threads: Threads| gemm_uninit(one, oa.mat(da, pa[i]), ob.mat(db, pb[i]), c, threads);
    fresh(out_shape, |out| {
        if nb > 1 && (flops < 4.0 * PAR_FLOPS || nb >= 2 * rayon::current_num_threads()) {
            let grain = (PAR_FLOPS / flops.max(1.0)).ceil() as usize;
            out.par_chunks_mut(m * n).with_min_len(grain.max(1)).enumerate().try_for_each(|(i, c)| one_gemm(i, c, Threads::Single))
        } else {
            out.chunks_mut(m * n).enumerate().try_for_each(|(i, c)| one_gemm(i, c, Threads::Auto))
        }
    })
}

/// The buffer of a product of `shape`, written once by the GEMMs of `fill`: each caller's GEMMs
/// (β = 0) write every element of their disjoint blocks, which cover the buffer, so no zero-fill
/// comes first. A size that overflows or that the allocator refuses is an [`Error::Alloc`].
fn fresh<T: crate::WithDType>(shape: &[usize], fill: impl FnOnce(&mut [MaybeUninit<T>]) -> Result<()>) -> Result<Vec<T>> {
    let len = crate::mem::elem_count("matmul", shape, T::DTYPE)?;
    // SAFETY: on Ok, `fill` wrote every element (see above).
    unsafe { try_uninit_vec("matmul", shape, len, fill) }
}

/// Validates rank ≥ 2 operands; returns (batch shape, m, k, n). Errors name the op and both shapes.
fn shapes(a: &[usize], b: &[usize], lhs: &[usize], rhs: &[usize]) -> Result<(Vec<usize>, usize, usize, usize)> {
    let err = || Error::ShapeMismatch { op: "matmul", lhs: lhs.to_vec(), rhs: rhs.to_vec() };
    let (ra, rb) = (a.len(), b.len());
    if a[ra - 1] != b[rb - 2] {
        return Err(err());
    }
    let batch = broadcast_shapes("matmul", &a[..ra - 2], &b[..rb - 2]).map_err(|_| err())?;
    Ok((batch, a[ra - 2], a[ra - 1], b[rb - 1]))
}

/// The product of rank ≥ 2 operands without autograd history (forward and backward both use it).
fn mm(a: &Tensor, b: &Tensor, reduce: bool) -> Result<Tensor> {
    let (batch, m, k, n) = shapes(a.shape(), b.shape(), a.shape(), b.shape())?;
    #[cfg(feature = "cuda")]
    if a.device().is_cuda() {
        let mut shape = batch.clone();
        shape.extend([m, n]);
        let out = Tensor::from_storage(Storage::Cuda(cuda::matmul(a, b, &batch, m, k, n)?), &shape)?;
        return if reduce && !batch.is_empty() { out.sum_dims(&(0..batch.len()).collect::<Vec<_>>(), false) } else { Ok(out) };
    }
    let dt = a.dtype();
    if dt == DType::BF16 && !(batch.is_empty() && m <= FEW_ROWS) && crate::cpu::gemm::bf16_gemm() == crate::cpu::gemm::Bf16Gemm::Native {
        if let Some(out) = kernel_bf16(a, b, &batch, reduce, m, n)? {
            return Ok(out);
        }
    }
    if dt == DType::BF16 && batch.is_empty() {
        if let Some(out) = bf16_b(a, b, m, k, n)? {
            return Ok(out);
        }
    }
    let cd = dt.cpu_compute();
    let (a, b) = (regular(&a.to_dtype(cd)?.detach())?, regular(&b.to_dtype(cd)?.detach())?);
    let out = match cd {
        DType::F32 => f32::into_storage(kernel::<f32>(&a, &b, &batch, reduce)?),
        DType::F64 => f64::into_storage(kernel::<f64>(&a, &b, &batch, reduce)?),
        d => return Err(Error::UnsupportedDType { op: "matmul", dtype: d }),
    };
    let mut shape = if reduce { Vec::new() } else { batch };
    shape.extend([m, n]);
    // (`CpuStorage::to_dtype` copies even when the dtype already matches.)
    let out = if cd == dt { out } else { out.to_dtype(dt) };
    Tensor::from_storage(Storage::Cpu(out), &shape)
}

/// Up to this many rows a 2-D bf16 product streams its B through [`bf16_b`] (decoding a token:
/// packing B for the native kernel would cost more than the product).
const FEW_ROWS: usize = 6;

/// A bf16 × bf16 product on AVX512_BF16 ([`crate::cpu::gemm::gemm_bf16`]: bf16 pairs multiplied
/// exactly, summed in f32, the result rounded to bf16 once), with the plans of [`kernel`]. `None`
/// for a batch-reduced product whose batch does not merge with k (the widening path takes it).
fn kernel_bf16(a: &Tensor, b: &Tensor, batch: &[usize], reduce: bool, m: usize, n: usize) -> Result<Option<Tensor>> {
    use crate::cpu::gemm::gemm_bf16;
    use half::bf16;
    let (a, b) = (regular(&a.detach())?, regular(&b.detach())?);
    let (sa, sb) = (a.storage(), b.storage());
    let (da, db) = (sa.as_cpu()?.as_slice::<bf16>()?, sb.as_cpu()?.as_slice::<bf16>()?);
    let (oa, ob) = (Operand::new(&a, batch), Operand::new(&b, batch));
    let k = oa.cols;
    let nb: usize = batch.iter().product();
    let mut shape: Vec<usize> = if reduce { Vec::new() } else { batch.to_vec() };
    shape.extend([m, n]);
    let out: Vec<bf16> = if reduce {
        // Σ_b A_b B_b = [A_0 | A_1 | ...] · [B_0; B_1; ...] when the batch merges with k on both sides
        let (Some(sa_k), Some(sb_k)) = (fold(&oa.with_batch(batch, (k, oa.cs))), fold(&ob.with_batch(batch, (k, ob.rs)))) else {
            return Ok(None);
        };
        let am = Mat { cols: nb * k, cs: sa_k as isize, ..oa.mat(da, oa.offset) };
        let bm = Mat { rows: nb * k, rs: sb_k as isize, ..ob.mat(db, ob.offset) };
        fresh(&shape, |c| gemm_bf16(am, bm, c, Threads::Auto))?
    } else if let (true, Some(s)) = (nb > 1 && ob.bstrides.iter().all(|&s| s == 0), fold(&oa.with_batch(batch, (m, oa.rs)))) {
        let am = Mat { rows: nb * m, rs: s as isize, ..oa.mat(da, oa.offset) };
        fresh(&shape, |c| gemm_bf16(am, ob.mat(db, ob.offset), c, Threads::Auto))?
    } else {
        let (pa, pb) = (oa.offsets(batch), ob.offsets(batch));
        let flops = 2.0 * (m * n) as f64 * k as f64;
        let one_gemm = |i: usize, c: &mut [MaybeUninit<bf16>], threads: Threads| gemm_bf16(oa.mat(da, pa[i]), ob.mat(db, pb[i]), c, threads);
        fresh(&shape, |out| {
            if m * n == 0 {
                Ok(())
            } else if nb > 1 && (flops < 4.0 * PAR_FLOPS || nb >= 2 * rayon::current_num_threads()) {
                let grain = (PAR_FLOPS / flops.max(1.0)).ceil() as usize;
                out.par_chunks_mut(m * n).with_min_len(grain.max(1)).enumerate().try_for_each(|(i, c)| one_gemm(i, c, Threads::Single))
            } else {
                out.chunks_mut(m * n).enumerate().try_for_each(|(i, c)| one_gemm(i, c, Threads::Auto))
            }
        })?
    };
    Ok(Some(Tensor::from_storage(Storage::Cpu(bf16::into_storage(out)), &shape)?))
}

/// A 2-D bf16 product with B (the weight, in a linear layer) read as stored by
/// [`crate::cpu::gemm::gemm_bf16_b`]: A widened to f32, the f32 result rounded to bf16 once (the
/// same bits as widening both). `None` where that path does not run (no AVX2 + FMA).
fn bf16_b(a: &Tensor, b: &Tensor, m: usize, k: usize, n: usize) -> Result<Option<Tensor>> {
    if !crate::cpu::gemm::bf16_b_supported() {
        return Ok(None);
    }
    let b = regular(&b.detach())?;
    let ob = Operand::new(&b, &[]);
    let af = a.detach().to_dtype(DType::F32)?.contiguous()?;
    let (sa, sb) = (af.storage(), b.storage());
    let da = &sa.as_cpu()?.as_slice::<f32>()?[af.layout().offset()..];
    let db = sb.as_cpu()?.as_slice::<half::bf16>()?;
    let am = Mat { data: da, offset: 0, rows: m, cols: k, rs: k as isize, cs: 1 };
    let c = fresh(&[m, n], |c| crate::cpu::gemm::gemm_bf16_b(am, ob.mat(db, ob.offset), c))?;
    Ok(Some(Tensor::from_vec(c, &[m, n])?.to_dtype(DType::BF16)?))
}

struct MatMul {
    a: Tensor,
    b: Tensor,
}

impl MatMul {
    /// The gradient for `x` (the `a` or `b` operand) from the product `p @ q` whose batch covers the output.
    fn grad(x: &Tensor, p: &Tensor, q: &Tensor, out_batch: usize) -> Result<Tensor> {
        let own_batch: usize = x.shape()[..x.rank() - 2].iter().product();
        if own_batch == 1 && out_batch > 1 {
            mm(p, q, true)?.reshape(x.shape())
        } else {
            sum_to_shape(&mm(p, q, false)?, x.shape())
        }
    }
}

impl BackwardOp for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (a, b) = (&self.a, &self.b);
        let out_batch: usize = g.shape()[..g.rank() - 2].iter().product();
        let ga = if a.requires_grad() { Some(Self::grad(a, g, &b.t()?, out_batch)?) } else { None };
        let gb = if b.requires_grad() { Some(Self::grad(b, &a.t()?, g, out_batch)?) } else { None };
        Ok(vec![ga, gb])
    }
}

/// `x @ w + bias` for 2-D f32/f64 CPU operands of one dtype: one GEMM that adds the bias inside.
fn mm_bias<T: GemmFloat + CpuSlice>(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (x, w) = (regular(&x.detach())?, regular(&w.detach())?);
    let bias = bias.contiguous()?;
    let (sx, sw, sb) = (x.storage(), w.storage(), bias.storage());
    let (dx, dw) = (sx.as_cpu()?.as_slice::<T>()?, sw.as_cpu()?.as_slice::<T>()?);
    let db = &sb.as_cpu()?.as_slice::<T>()?[bias.layout().offset()..];
    let (ox, ow) = (Operand::new(&x, &[]), Operand::new(&w, &[]));
    let (m, n) = (ox.rows, ow.cols);
    let out = fresh(&[m, n], |c| gemm_bias_uninit(T::one(), ox.mat(dx, ox.offset), ow.mat(dw, ow.offset), &db[..n], c, Threads::Auto))?;
    Tensor::from_storage(Storage::Cpu(T::into_storage(out)), &[m, n])
}

/// Autograd of [`Tensor::matmul_bias`]: matmul's gradients, and the bias gradient summed over rows.
struct MatMulBias {
    mm: MatMul,
    bias: Tensor,
}

impl BackwardOp for MatMulBias {
    fn name(&self) -> &'static str {
        "matmul_bias"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.mm.a.clone(), self.mm.b.clone(), self.bias.clone()]
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut grads = self.mm.backward(g)?;
        grads.push(if self.bias.requires_grad() { Some(g.sum_dims(&[0], false)?) } else { None });
        Ok(grads)
    }
}

impl Tensor {
    /// `self @ w + bias` for `self` `[m, k]`, `w` `[k, n]` and `bias` `[n]` (added to every row): a
    /// linear layer. On the CPU in f32/f64 the bias is added by the GEMM itself, on tiles of the
    /// output that are in cache, instead of a second pass over the output; its backward is
    /// matmul's plus the bias gradient `Σ_rows dY`. Other dtypes and devices compose
    /// `matmul` + `add`. Shapes, dtypes and devices are checked as for [`Tensor::matmul`] and `add`.
    pub fn matmul_bias(&self, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let _range = crate::nvtx::range("matmul_bias");
        self.check_same("matmul_bias", w)?;
        self.check_same("matmul_bias", bias)?;
        self.check_float("matmul_bias")?;
        let (sx, sw) = (self.shape(), w.shape());
        if sx.len() != 2 || sw.len() != 2 || sx[1] != sw[0] || bias.shape() != [sw[1]] {
            return Err(Error::Shape {
                op: "matmul_bias",
                shape: sx.to_vec(),
                msg: format!("needs x [m, k], w [k, n], bias [n]; got w {sw:?}, bias {:?}", bias.shape()),
            });
        }
        let out = match (self.device().is_cuda(), self.dtype()) {
            (false, DType::F32) => mm_bias::<f32>(self, w, bias)?,
            (false, DType::F64) => mm_bias::<f64>(self, w, bias)?,
            _ => return self.matmul(w)?.add(bias),
        };
        Ok(out.with_history(&[self, w, bias], || node(MatMulBias { mm: MatMul { a: self.clone(), b: w.clone() }, bias: bias.clone() })))
    }

    /// Matrix product with numpy `matmul` semantics.
    ///
    /// - `[m, k] @ [k, n] -> [m, n]`;
    /// - batched `[..., m, k] @ [..., k, n] -> [..., m, n]`, batch dims broadcast (`[B, T, C] @ [C, N]`
    ///   is one GEMM of `B·T` rows);
    /// - a 1-D left operand `[k]` acts as `[1, k]` and a 1-D right operand `[k]` as `[k, 1]`, and that
    ///   dim is removed from the result (`[k] @ [k]` is a 0-d dot product).
    ///
    /// Strided views (transposes, permutes, narrows, broadcasts) are read without copies. f32 and f64
    /// compute natively; bf16 on a CPU with AVX512_BF16 multiplies bf16 pairs and sums them in f32
    /// (`cpu::gemm::gemm_bf16`); elsewhere bf16/f16 compute in f32 and round the result. Differentiable in both operands.
    ///
    /// Errors: a 0-d operand, mismatched inner dims or non-broadcastable batch dims give
    /// `ShapeMismatch` naming `matmul` and both shapes; differing dtypes or devices, or integer dtypes,
    /// are errors too.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let _range = crate::nvtx::range("matmul");
        self.check_same("matmul", rhs)?;
        self.check_float("matmul")?;
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra == 0 || rb == 0 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.shape().to_vec(), rhs: rhs.shape().to_vec() });
        }
        let a = if ra == 1 { self.unsqueeze(0)? } else { self.clone() };
        let b = if rb == 1 { rhs.unsqueeze(1)? } else { rhs.clone() };
        shapes(a.shape(), b.shape(), self.shape(), rhs.shape())?;
        let out = mm(&a, &b, false)?.with_history(&[&a, &b], || node(MatMul { a: a.clone(), b: b.clone() }));
        match (ra, rb) {
            (1, 1) => out.reshape(&[]),
            (1, _) => out.squeeze(-2),
            (_, 1) => out.squeeze(-1),
            _ => Ok(out),
        }
    }
}
