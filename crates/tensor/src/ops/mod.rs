//! Every op, one name per op across layers (see docs/ADDING_AN_OP.md).
//! `ops/<op>.rs` is composed from other ops or is a simple CPU loop; `ops/<op>/{mod,cpu}.rs` has its
//! own kernels (and `kernels/<op>.cu` for CUDA).
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
pub mod softmax;
pub mod unary;
pub mod view;
pub mod where_cond;
