//! CPU helpers: SIMD with runtime dispatch, the GEMM wrapper, threading.
pub mod gemm;
pub mod simd;
