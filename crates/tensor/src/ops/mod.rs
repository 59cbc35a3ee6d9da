//! Every op, one name per op across layers (see docs/ADDING_AN_OP.md).
//! `ops/<op>.rs` is composed from other ops or is a simple CPU loop; `ops/<op>/` has its own kernels:
//! `mod.rs` (the method, the autograd node, the composed reference, the declarations `KERNELS` and
//! `ROW_OP`), `cpu.rs`, `cuda.rs`, `<op>.cu` and its emulator test `<op>_emu.cpp`. This module
//! collects the declarations: [`KERNEL_FILES`], [`ROW_OPS`].
/// `$cuda` when tensor `$t` lives on a CUDA device (and the `cuda` feature is on), else `$cpu`: an
/// op's choice of half, written once. Without the feature `$cuda` is not compiled.
macro_rules! on_device {
    ($t:expr, cuda => $cuda:expr, cpu => $cpu:expr $(,)?) => {{
        #[cfg(feature = "cuda")]
        let r = if $t.device().is_cuda() { $cuda } else { $cpu };
        #[cfg(not(feature = "cuda"))]
        let r = $cpu;
        r
    }};
}

pub mod adamw;
pub mod attention;
pub mod binary;
pub mod cmp;
pub mod concat;
pub mod cross_entropy;
pub mod dropout;
pub mod gelu;
pub mod index_select;
pub mod layer_norm;
pub mod matmul;
pub mod reduce;
pub mod reduce_max;
pub mod rms_norm;
pub mod softmax;
pub mod unary;
pub mod view;
pub mod where_cond;

use crate::cuda::kernels::{KernelFile, SHARED};
use crate::{Error, Result, Tensor};

/// A row-wise op as the benches and the generic tests see it: `x` (`[..., d]`) and `params`
/// parameter tensors of shape `[d]` (all differentiable) in, one tensor of `x`'s shape out. Each op
/// declares its own beside its code (`ROW_OP`); [`ROW_OPS`] collects them: `kiln bench`'s
/// memory-bound rows, `kiln bench --list` (scripts/torch_bench.py's `--row-ops`) and
/// tests/row_ops.rs (gradcheck, composed reference, SIMD levels, threads, errors, CUDA vs CPU) read
/// that list and nothing else.
pub struct RowOp {
    /// The bench id's stem (`<name>_fwd`, `<name>_bwd`); the op's error name may be shorter.
    pub name: &'static str,
    /// Number of `[d]` parameters after `x`.
    pub params: usize,
    /// The fused op on `[x, params...]`.
    pub fused: fn(&[Tensor]) -> Result<Tensor>,
    /// The same composed from primitive ops, where there is one.
    pub composed: Option<fn(&[Tensor]) -> Result<Tensor>>,
    /// Bytes moved at `rows` × `d` with `elem`-byte elements by the forward (`true`) or the
    /// backward: inputs read once, outputs and saved statistics written once.
    pub bytes: fn(bool, u64, u64, u64) -> u64,
    /// On CUDA, also time the block-per-row kernels (`cuda-block`) beside the warp-per-row default.
    pub row_kernels: bool,
    /// The PyTorch forward, a Python expression of `x`, `p` (the parameters) and `d`, timed and
    /// differentiated by scripts/torch_bench.py for ops its own table does not know.
    pub torch: &'static str,
}

/// Bytes of an elementwise op (`x` read, `y` written; backward: `x`, `dy` read, `dx` written).
pub(crate) fn elementwise_bytes(fwd: bool, rows: u64, d: u64, elem: u64) -> u64 {
    (if fwd { 2 } else { 3 }) * rows * d * elem
}

/// Every op's own CUDA kernel file (each declared in its folder as `KERNELS`).
pub(crate) const KERNELS: &[KernelFile] = &[
    adamw::KERNELS,
    cross_entropy::KERNELS,
    dropout::KERNELS,
    index_select::KERNELS,
    gelu::KERNELS,
    layer_norm::KERNELS,
    reduce::KERNELS,
    rms_norm::KERNELS,
    softmax::KERNELS,
];

/// `a` then `b`, in an array of `N = a.len() + b.len()` (at compile time).
const fn concat<const N: usize>(a: &[KernelFile], b: &[KernelFile]) -> [KernelFile; N] {
    let mut out = [a[0]; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < a.len() { a[i] } else { b[i - a.len()] };
        i += 1;
    }
    out
}
const ALL_KERNELS: [KernelFile; SHARED.len() + KERNELS.len()] = concat(SHARED, KERNELS);

/// Every CUDA kernel file, in a fixed order (the shared ones of `kernels/`, then the ops'), with the
/// entry points it must define: the catalogue `kiln kernels` and tests/kernels_compile.rs read
/// (the NVRTC runtime compiles whichever file a launcher names).
pub const KERNEL_FILES: &[KernelFile] = &ALL_KERNELS;

/// The kernel file with this stem (`"layer_norm"`, `"elementwise"`, ...).
pub fn kernel_file(stem: &str) -> Option<&'static KernelFile> {
    KERNEL_FILES.iter().find(|f| f.stem == stem)
}

/// Every row-wise op, in bench order.
pub const ROW_OPS: &[RowOp] = &[gelu::ROW_OP_ERF, gelu::ROW_OP_TANH, layer_norm::ROW_OP, softmax::ROW_OP, rms_norm::ROW_OP];

/// The checks of a normalisation over the last dim (`layer_norm`, `rms_norm`): a float `x` of rank
/// ≥ 1, `eps` finite and ≥ 0, each parameter of shape `[d]` on `x`'s device and dtype; returns `d`.
pub(crate) fn check_norm_args(op: &'static str, x: &Tensor, params: &[Option<&Tensor>], eps: f64) -> Result<usize> {
    x.check_float(op)?;
    if x.rank() == 0 {
        return Err(Error::Shape { op, shape: vec![], msg: "needs at least one dim (normalizes the last)".into() });
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::msg(format!("{op}: eps must be finite and >= 0, got {eps}")));
    }
    let d = x.shape()[x.rank() - 1];
    for p in params.iter().flatten() {
        x.check_same(op, p)?;
        if p.shape() != [d] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: p.shape().to_vec() });
        }
    }
    Ok(d)
}
