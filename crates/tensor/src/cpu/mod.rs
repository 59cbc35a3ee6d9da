//! CPU helpers: SIMD with runtime dispatch, the GEMM wrapper, threading.
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemm256;
#[cfg(target_arch = "x86_64")]
mod sgemm;
pub mod simd;
pub mod strided;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vf32;
