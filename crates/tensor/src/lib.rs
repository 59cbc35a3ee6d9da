//! kiln-tensor: tensors, reverse-mode autograd, and the op kernels (CPU: rayon + runtime-dispatched
//! SIMD; CUDA: hand-written kernels compiled with NVRTC).
//!
//! ```
//! use kiln_tensor::{Tensor, DType, Device};
//! let x = Tensor::randn(0, &[2, 3], 0.0, 1.0, DType::F32, Device::Cpu)?.var();
//! let y = x.mul(&x)?.sum_all()?;
//! y.backward()?;
//! assert_eq!(x.grad().unwrap().shape(), &[2, 3]);
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
pub mod autograd;
pub mod checkpoint;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod mem;
pub mod nvtx;
pub mod ops;
pub mod shape;
pub mod storage;
mod tensor;
pub mod testing;

pub use autograd::{is_grad_enabled, no_grad, no_grad_guard, BackwardOp};
pub use checkpoint::checkpoint;
pub use device::Device;
pub use dtype::{CpuFloat, DType, WithDType};
pub use error::{Error, Result};
pub use shape::{Dim, Layout};
pub use storage::{CpuStorage, Storage};
pub use tensor::{Tensor, TensorId};
/// The `half` crate, whose `bf16` / `f16` the public API uses (e.g. `cpu::gemm::gemm_bf16`).
pub use half;
