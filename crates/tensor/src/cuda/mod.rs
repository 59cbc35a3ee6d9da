//! The CUDA backend. Until it lands, `CudaStorage` cannot be constructed and every request for a
//! CUDA device returns [`Error::CudaUnavailable`](crate::Error::CudaUnavailable).
use crate::{DType, Device, Error, Result};

/// Device buffers (placeholder: no value of this type can exist without the CUDA backend).
#[derive(Debug, Clone)]
pub struct CudaStorage {
    never: std::convert::Infallible,
}

impl CudaStorage {
    pub fn device(&self) -> Device {
        match self.never {}
    }
    pub fn dtype(&self) -> DType {
        match self.never {}
    }
    pub fn len(&self) -> usize {
        match self.never {}
    }
}

/// Whether a CUDA device can be used in this process.
pub fn is_available() -> bool {
    false
}

/// Checks that `device` can be used, with a clear error when it cannot.
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(n) => Err(Error::CudaUnavailable(format!(
            "device cuda:{n} requested, but this build of kiln has no CUDA backend; use --device cpu"
        ))),
    }
}
