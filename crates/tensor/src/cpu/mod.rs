//! CPU helpers: SIMD with runtime dispatch, the GEMM wrapper, threading.
pub mod gemm;
pub mod simd;
pub mod strided;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vf32;
