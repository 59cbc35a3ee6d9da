//! kiln: a tensor engine with hand-written kernels, autograd, and BERT / GPT-2 stacks.
//! This facade re-exports the workspace crates.
pub use kiln_model as model;
pub use kiln_tensor as tensor;

pub mod lab;
pub use kiln_tensor::{DType, Device, Error, Result, Tensor};
