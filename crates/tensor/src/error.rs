//! The one error type of kiln. Every fallible call returns [`Result`].
use crate::{DType, Device};

/// Everything that can go wrong in kiln-tensor. Shape, dtype and device errors name the op.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    #[error("{op}: invalid shape {shape:?}: {msg}")]
    Shape { op: &'static str, shape: Vec<usize>, msg: String },
    #[error("{op}: dtype mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: dtype {dtype:?} is not supported here")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: device mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },
    #[error("{op}: dim {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange { op: &'static str, dim: i64, rank: usize },
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange { op: &'static str, index: i64, size: usize },
    #[error("{op}: expected {expected} elements, got {got}")]
    ElementCount { op: &'static str, expected: usize, got: usize },
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("backward: {0}")]
    Backward(String),
    #[error("i/o error on {path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    /// A tensor buffer that cannot be allocated: its size overflows, or the allocator refused it
    /// (see [`crate::mem`]).
    #[error("{op}: cannot allocate a {dtype} tensor of shape {shape:?}{}: {reason}", .bytes.map(|b| format!(" ({})", crate::mem::human_bytes(b))).unwrap_or_default())]
    Alloc { op: &'static str, shape: Vec<usize>, dtype: DType, bytes: Option<u128>, reason: String },
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A free-form error; prefer the structured variants where one fits.
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }
}

/// `bail!("...")`: return early with an [`Error::Msg`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::Msg(format!($($arg)*))) };
}
