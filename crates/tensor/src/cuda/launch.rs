//! Launch conventions shared by every launcher, and the launchers of the utility kernels
//! (elementwise.cu, copy.cu, reduce.cu). Arguments follow the kernels (llm.c order): outputs,
//! then saved statistics, then inputs, then dims / scalars. Each launcher checks buffer lengths
//! (an [`Error`], never an out-of-bounds write), skips empty launches and returns launch errors.
//! Launches are asynchronous on the backend's stream; nothing here synchronizes.
use super::device::CudaBackend;
use crate::{DType, Error, Layout, Result};
use cudarc::driver::{CudaFunction, CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};

/// A float type the kernels are instantiated for: f32, bf16, f16 (kernel suffix `_f32`, ...).
pub trait KernelFloat: DeviceRepr + Copy + Send + Sync + 'static {
    const SUFFIX: &'static str;
    const DTYPE: DType;
    fn from_f32(v: f32) -> Self;
}
impl KernelFloat for f32 {
    const SUFFIX: &'static str = "f32";
    const DTYPE: DType = DType::F32;
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl KernelFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const DTYPE: DType = DType::BF16;
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}
impl KernelFloat for half::f16 {
    const SUFFIX: &'static str = "f16";
    const DTYPE: DType = DType::F16;
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// A type copy.cu moves (f32, bf16, f16, f64, i64).
pub trait KernelCopy: DeviceRepr + Copy + 'static {
    const SUFFIX: &'static str;
}
impl KernelCopy for f32 {
    const SUFFIX: &'static str = "f32";
}
impl KernelCopy for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl KernelCopy for half::f16 {
    const SUFFIX: &'static str = "f16";
}
impl KernelCopy for f64 {
    const SUFFIX: &'static str = "f64";
}
impl KernelCopy for i64 {
    const SUFFIX: &'static str = "i64";
}

/// Largest rank a strided kernel handles (after merging dims that are contiguous together).
pub const MAX_RANK: usize = 6;

/// The kernels' `Layout` struct (common.cuh): shape, element strides (0 = broadcast), rank and a
/// contiguous flag. The base offset is not part of it: pass a view that starts at the offset.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KLayout {
    pub shape: [i64; MAX_RANK],
    pub stride: [i64; MAX_RANK],
    pub rank: i32,
    pub contiguous: i32,
}
unsafe impl DeviceRepr for KLayout {}

impl KLayout {
    /// From a shape and element strides. Size-1 dims are dropped and dims that are contiguous
    /// with their neighbour are merged, so rank > 6 only fails when it cannot be reduced.
    pub fn new(shape: &[usize], strides: &[usize]) -> Result<KLayout> {
        if shape.len() != strides.len() {
            return Err(Error::ShapeMismatch { op: "cuda layout", lhs: shape.to_vec(), rhs: strides.to_vec() });
        }
        let mut dims: Vec<(usize, usize)> = Vec::new(); // (size, stride), outermost first
        for (&n, &s) in shape.iter().zip(strides) {
            if n == 1 {
                continue;
            }
            match dims.last_mut() {
                Some(last) if last.1 == s * n => *last = (last.0 * n, s),
                _ => dims.push((n, s)),
            }
        }
        if dims.len() > MAX_RANK {
            return Err(Error::Shape { op: "cuda layout", shape: shape.to_vec(), msg: format!("rank {} after merging dims exceeds {MAX_RANK}", dims.len()) });
        }
        let mut l = KLayout { shape: [1; MAX_RANK], stride: [0; MAX_RANK], rank: dims.len() as i32, contiguous: 0 };
        for (d, &(n, s)) in dims.iter().enumerate() {
            l.shape[d] = n as i64;
            l.stride[d] = s as i64;
        }
        let mut expect = 1i64;
        let mut contiguous = true;
        for d in (0..dims.len()).rev() {
            contiguous &= l.stride[d] == expect;
            expect *= l.shape[d];
        }
        l.contiguous = contiguous as i32;
        Ok(l)
    }
    /// The layout of a kiln view (its offset must be applied to the buffer by the caller).
    pub fn from_layout(layout: &Layout) -> Result<KLayout> {
        Self::new(layout.shape(), layout.strides())
    }
    pub fn contiguous(shape: &[usize]) -> KLayout {
        Self::new(shape, &crate::shape::contiguous_strides(shape)).expect("contiguous layouts merge to rank <= 1")
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape[..self.rank as usize].iter().product::<i64>() as usize
    }
    /// One past the largest element offset it reaches (the buffer length it needs).
    pub fn span(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        1 + (0..self.rank as usize).map(|d| (self.shape[d] - 1) * self.stride[d]).sum::<i64>() as usize
    }
}

/// An op code of elementwise.cu's `UnaryOp` or `BinaryOp` enum. The .cu file's enum is the one
/// list: a code is looked up by the op's name (`"exp"` → `U_EXP`, `"add"` → `B_ADD`), so the Rust
/// side keeps no mirrored copy to fall out of order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementwiseOp(i32);

impl ElementwiseOp {
    /// The code of unary op `name` (kiln's op name, as `ops::unary::UnaryOp::name` gives it), or
    /// `None` when elementwise.cu has no kernel for it.
    pub fn unary(name: &str) -> Option<Self> {
        Self::lookup("UnaryOp", "U_", name)
    }

    /// The code of binary op `name` (`"add"`, `"sub"`, `"mul"`, `"div"`, ...), or `None`.
    pub fn binary(name: &str) -> Option<Self> {
        Self::lookup("BinaryOp", "B_", name)
    }

    fn lookup(kind: &str, prefix: &str, name: &str) -> Option<Self> {
        let src = super::kernels::ELEMENTWISE.source;
        let head = format!("enum {kind} {{");
        let body = &src[src.find(&head)? + head.len()..];
        let body = &body[..body.find('}')?];
        let want = format!("{prefix}{}", name.to_ascii_uppercase());
        body.split(',').position(|e| e.trim() == want).map(|i| Self(i as i32))
    }

    /// The kernels' `int op` argument.
    pub fn code(self) -> i32 {
        self.0
    }
}

#[cfg(test)]
mod op_code_tests {
    use super::ElementwiseOp;

    #[test]
    fn op_codes_come_from_elementwise_cu() {
        let unary: Vec<i32> = ["exp", "log", "sqrt", "tanh", "sqr", "recip", "abs", "relu"]
            .iter()
            .map(|op| ElementwiseOp::unary(op).unwrap_or_else(|| panic!("every CPU unary op but powf has a kernel: {op}")).code())
            .collect();
        let binary: Vec<i32> = ["add", "sub", "mul", "div"].iter().map(|op| ElementwiseOp::binary(op).unwrap_or_else(|| panic!("{op}")).code()).collect();
        for codes in [&unary, &binary] {
            let mut sorted = codes.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), codes.len(), "distinct ops, distinct codes: {codes:?}");
        }
        // U_NEG is the first unary entry and not a kiln op name: no code 0 among these
        assert!(!unary.contains(&0), "{unary:?}");
        assert_eq!(ElementwiseOp::unary("powf"), None);
        assert_eq!(ElementwiseOp::unary("ex"), None, "a prefix is not a match");
        assert_eq!(ElementwiseOp::binary("exp"), None, "unary names are not binary codes");
    }
}

/// `Some((rows, cols))` when `lhs op rhs` is a contiguous `[rows, cols]` matrix with a contiguous
/// `[cols]` vector broadcast down its rows (`rhs` strides `[0, 1]`) that binary_rows_fwd takes:
/// whole 16-byte packs per row (cols < 2^31) and 16-byte aligned pointers.
fn row_broadcast<T>(lhs: &KLayout, rhs: &KLayout, ptrs: &[u64]) -> Option<(usize, usize)> {
    let pack = 16 / std::mem::size_of::<T>() as i64;
    let (rows, cols) = (rhs.shape[0], rhs.shape[1]);
    let ok = lhs.contiguous == 1
        && rhs.rank == 2
        && rhs.stride[..2] == [0, 1]
        && cols % pack == 0
        && cols <= i32::MAX as i64
        && ptrs.iter().all(|p| p % 16 == 0);
    ok.then_some((rows as usize, cols as usize))
}

/// Threads per block of the 1-D grid-stride kernels.
pub const BLOCK: u32 = 256;

/// A 1-D grid-stride launch over `n` items (grid capped; the kernels loop).
pub fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block of `BLOCK` threads per row.
pub fn grid_rows(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Errors unless a buffer holds exactly `want` elements.
pub fn check_len(op: &'static str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::ElementCount { op, expected: want, got });
    }
    Ok(())
}

/// Errors unless a buffer holds at least `want` elements.
pub fn check_min_len(op: &'static str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(Error::ElementCount { op, expected: want, got });
    }
    Ok(())
}

/// Errors unless a dim fits the kernels' `int` parameters.
pub fn to_i32(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::msg(format!("{op}: size {v} exceeds the kernels' 32-bit dims")))
}

/// Allows `bytes` of dynamic shared memory (opting in above the 48 KiB default).
pub fn allow_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    if bytes > 48 * 1024 {
        use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)?;
    }
    Ok(())
}

/// The null device pointer, for the kernels' optional (nullable) pointer arguments.
pub static NULL_PTR: u64 = 0;

/// Pushes an optional pointer argument: the buffer, or [`NULL_PTR`] when there is none.
pub trait PushOptArg<T> {
    fn arg_opt(&mut self, v: Option<T>) -> &mut Self;
}

impl<'a, T> PushOptArg<T> for LaunchArgs<'a>
where
    LaunchArgs<'a>: PushKernelArg<T> + PushKernelArg<&'a u64>,
{
    fn arg_opt(&mut self, v: Option<T>) -> &mut Self {
        match v {
            Some(v) => self.arg(v),
            None => self.arg(&NULL_PTR),
        }
    }
}

impl CudaBackend {
    /// `out = op(inp)`; `inp` is read through `layout` (any strides), `out` is contiguous.
    pub fn unary_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, layout: &KLayout, op: ElementwiseOp) -> Result<()> {
        let n = layout.numel();
        check_len("unary_fwd", out.len(), n)?;
        check_min_len("unary_fwd", inp.len(), layout.span())?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("unary_fwd_{}", T::SUFFIX))?;
        let (n, op) = (n as i64, op.code());
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(layout).arg(&n).arg(&op);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// `dinp = dout * op'(inp)` (all contiguous, same length; `out` = the saved forward output).
    pub fn unary_bwd<T: KernelFloat>(&self, dinp: &mut CudaViewMut<T>, inp: &CudaView<T>, out: &CudaView<T>, dout: &CudaView<T>, op: ElementwiseOp) -> Result<()> {
        let n = dinp.len();
        for len in [inp.len(), out.len(), dout.len()] {
            check_len("unary_bwd", len, n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("unary_bwd_{}", T::SUFFIX))?;
        let (n, op) = (n as i64, op.code());
        let mut b = self.stream().launch_builder(&f);
        b.arg(dinp).arg(inp).arg(out).arg(dout).arg(&n).arg(&op);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// `out = lhs op rhs` with broadcasting: both layouts carry the output shape (stride 0 on
    /// broadcast dims); `out` is contiguous.
    pub fn binary_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, lhs: &CudaView<T>, lhs_layout: &KLayout, rhs: &CudaView<T>, rhs_layout: &KLayout, op: ElementwiseOp) -> Result<()> {
        let n = lhs_layout.numel();
        if rhs_layout.numel() != n {
            let shape = |l: &KLayout| l.shape[..l.rank as usize].iter().map(|&s| s as usize).collect::<Vec<_>>();
            return Err(Error::ShapeMismatch { op: "binary_fwd", lhs: shape(lhs_layout), rhs: shape(rhs_layout) });
        }
        check_len("binary_fwd", out.len(), n)?;
        check_min_len("binary_fwd", lhs.len(), lhs_layout.span())?;
        check_min_len("binary_fwd", rhs.len(), rhs_layout.span())?;
        if n == 0 {
            return Ok(());
        }
        let ptrs = [out.device_ptr(self.stream()).0, lhs.device_ptr(self.stream()).0, rhs.device_ptr(self.stream()).0];
        if let Some((rows, cols)) = row_broadcast::<T>(lhs_layout, rhs_layout, &ptrs) {
            // a [rows, cols] matrix with a [cols] vector (a bias): binary_rows_fwd
            let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("binary_rows_fwd_{}", T::SUFFIX))?;
            let packs = cols / (16 / std::mem::size_of::<T>());
            let threads = packs.next_multiple_of(32).min(BLOCK as usize);
            let grid = (packs.div_ceil(threads) as u32, rows.min(65_535) as u32, 1);
            let (r, c, op) = (rows as i64, cols as i32, op.code());
            let mut b = self.stream().launch_builder(&f);
            b.arg(out).arg(lhs).arg(rhs).arg(&r).arg(&c).arg(&op);
            unsafe { b.launch(LaunchConfig { grid_dim: grid, block_dim: (threads as u32, 1, 1), shared_mem_bytes: 0 }) }?;
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("binary_fwd_{}", T::SUFFIX))?;
        let (n, op) = (n as i64, op.code());
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(lhs).arg(rhs).arg(lhs_layout).arg(rhs_layout).arg(&n).arg(&op);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// `out = inp * mul + add` (contiguous).
    pub fn affine_fwd<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, mul: f32, add: f32) -> Result<()> {
        let n = inp.len();
        check_len("affine_fwd", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("affine_fwd_{}", T::SUFFIX))?;
        let n = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n).arg(&mul).arg(&add);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// Sets every element to `value` (e.g. NaN to poison an output before a test launch).
    pub fn fill<T: KernelFloat>(&self, out: &mut CudaViewMut<T>, value: f32) -> Result<()> {
        let n = out.len();
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("fill_{}", T::SUFFIX))?;
        let n = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(&n).arg(&value);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// Queues a kernel that spins for about `cycles` SM clock cycles (see `sleep_cycles` in
    /// elementwise.cu): benchmarks put it before their timed calls.
    pub fn sleep_cycles(&self, cycles: i64) -> Result<()> {
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, "sleep_cycles")?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&cycles);
        unsafe { b.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(())
    }

    /// Converts between float dtypes (round to nearest even); same dtype is a device copy.
    pub fn cast<A: KernelFloat, B: KernelFloat>(&self, out: &mut CudaViewMut<B>, inp: &CudaView<A>) -> Result<()> {
        let n = inp.len();
        check_len("cast", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        if A::DTYPE == B::DTYPE {
            // SAFETY: A and B are the same type here (same DTYPE), so the bits are valid.
            let src = unsafe { inp.transmute::<B>(n) }.ok_or_else(|| Error::msg("cast: view transmute failed"))?;
            self.stream().memcpy_dtod(&src, out)?;
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, &format!("cast_{}_{}", A::SUFFIX, B::SUFFIX))?;
        let n = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// i64 -> f32 (e.g. an HF attention mask to the f32 key mask of attention).
    pub fn cast_i64_f32(&self, out: &mut CudaViewMut<f32>, inp: &CudaView<i64>) -> Result<()> {
        let n = inp.len();
        check_len("cast_i64_f32", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::ELEMENTWISE, "cast_i64_f32")?;
        let n = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(&n);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// Gathers `inp` read through `src` (permute / narrow / broadcast view) into contiguous `out`.
    pub fn copy<T: KernelCopy>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, src: &KLayout) -> Result<()> {
        let n = src.numel();
        check_len("copy", out.len(), n)?;
        check_min_len("copy", inp.len(), src.span())?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::COPY, &format!("copy_{}", T::SUFFIX))?;
        let n = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(src).arg(&n);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }

    /// Scatters contiguous `inp` into `out` read/written through `dst` (e.g. a narrow of a bigger
    /// buffer, for cat). `dst` must not map two elements to one offset.
    pub fn copy_to_strided<T: KernelCopy>(&self, out: &mut CudaViewMut<T>, inp: &CudaView<T>, dst: &KLayout) -> Result<()> {
        if (0..dst.rank as usize).any(|d| dst.stride[d] == 0) {
            return Err(Error::msg("copy_to_strided: destination layout has a zero (broadcast) stride"));
        }
        let n = dst.numel();
        check_len("copy_to_strided", inp.len(), n)?;
        check_min_len("copy_to_strided", out.len(), dst.span())?;
        if n == 0 {
            return Ok(());
        }
        let f = self.function(&crate::cuda::kernels::COPY, &format!("copy_to_strided_{}", T::SUFFIX))?;
        let n = n as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(inp).arg(dst).arg(&n);
        unsafe { b.launch(grid_1d(n as usize)) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_merge_and_flag_contiguity() {
        let c = KLayout::contiguous(&[2, 3, 4]);
        assert_eq!((c.rank, c.contiguous, c.numel(), c.span()), (1, 1, 24, 24));
        // transpose of [3, 4]: strides (1, 4) -> not mergeable, not contiguous
        let t = KLayout::new(&[4, 3], &[1, 4]).unwrap();
        assert_eq!((t.rank, t.contiguous, t.numel(), t.span()), (2, 0, 12, 12));
        // broadcast [5] over [2, 5]: stride 0 on dim 0
        let b = KLayout::new(&[2, 5], &[0, 1]).unwrap();
        assert_eq!((b.rank, b.contiguous, b.span()), (2, 0, 5));
        // a narrow of the last dim (4 of 6 columns) keeps rank 2
        let n = KLayout::new(&[3, 4], &[6, 1]).unwrap();
        assert_eq!((n.rank, n.span()), (2, 16));
        // rank 8 that merges down to 2, and size-1 dims dropped
        let m = KLayout::new(&[2, 1, 2, 2, 2, 2, 2, 3], &[96, 7, 48, 24, 12, 6, 3, 1]).unwrap();
        assert_eq!((m.rank, m.contiguous), (1, 1));
        assert!(KLayout::new(&[2; 7], &[1, 4, 16, 64, 256, 1024, 4096]).is_err());
        assert_eq!(std::mem::size_of::<KLayout>(), 104, "must match common.cuh's struct Layout");
    }
}
