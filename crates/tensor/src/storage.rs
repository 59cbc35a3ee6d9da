//! Where tensor data lives. One enum, dispatched once per op: `Storage::Cpu` or `Storage::Cuda`.
use crate::{cuda::CudaStorage, DType, Device, Error, Result, WithDType};
use half::{bf16, f16};

/// Host buffers, one variant per [`DType`].
#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A zero-filled buffer for a tensor of `shape` (allocated zeroed, no fill pass). A shape whose
    /// size overflows, or memory the allocator refuses, is an [`Error::Alloc`] naming `op`.
    pub fn zeros(op: &'static str, dtype: DType, shape: &[usize]) -> Result<Self> {
        use crate::mem::try_zeros;
        let n = crate::mem::elem_count(op, shape, dtype)?;
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(try_zeros(op, shape, n)?),
            DType::F64 => CpuStorage::F64(try_zeros(op, shape, n)?),
            DType::BF16 => CpuStorage::BF16(try_zeros(op, shape, n)?),
            DType::F16 => CpuStorage::F16(try_zeros(op, shape, n)?),
            DType::I64 => CpuStorage::I64(try_zeros(op, shape, n)?),
        })
    }
    /// The buffer of a tensor of `shape` filled from f64 values (the first `shape`'s element
    /// count of them), reserved up front: a size that overflows or that the allocator refuses is
    /// an [`Error::Alloc`] naming `op`.
    pub fn try_from_f64_iter(op: &'static str, dtype: DType, shape: &[usize], it: impl Iterator<Item = f64>) -> Result<Self> {
        use crate::mem::try_collect;
        let n = crate::mem::elem_count(op, shape, dtype)?;
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(try_collect(op, shape, n, it.map(|v| v as f32))?),
            DType::F64 => CpuStorage::F64(try_collect(op, shape, n, it)?),
            DType::BF16 => CpuStorage::BF16(try_collect(op, shape, n, it.map(bf16::from_f64))?),
            DType::F16 => CpuStorage::F16(try_collect(op, shape, n, it.map(f16::from_f64))?),
            DType::I64 => CpuStorage::I64(try_collect(op, shape, n, it.map(|v| v as i64))?),
        })
    }
    /// Builds a buffer of `dtype` from f64 values (creation helpers and tests).
    pub fn from_f64_iter(dtype: DType, it: impl Iterator<Item = f64>) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(it.map(|v| v as f32).collect()),
            DType::F64 => CpuStorage::F64(it.collect()),
            DType::BF16 => CpuStorage::BF16(it.map(bf16::from_f64).collect()),
            DType::F16 => CpuStorage::F16(it.map(f16::from_f64).collect()),
            DType::I64 => CpuStorage::I64(it.map(|v| v as i64).collect()),
        }
    }
    /// The buffer as a slice of `T`, or a dtype error.
    pub fn as_slice<T: CpuSlice>(&self) -> Result<&[T]> {
        T::cpu_slice(self).ok_or(Error::DTypeMismatch { op: "as_slice", lhs: self.dtype(), rhs: T::DTYPE })
    }
    pub fn as_mut_slice<T: CpuSlice>(&mut self) -> Result<&mut [T]> {
        let d = self.dtype();
        T::cpu_slice_mut(self).ok_or(Error::DTypeMismatch { op: "as_mut_slice", lhs: d, rhs: T::DTYPE })
    }
    /// Element `i` as f64.
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            CpuStorage::F32(v) => v[i] as f64,
            CpuStorage::F64(v) => v[i],
            CpuStorage::BF16(v) => v[i].to_f64(),
            CpuStorage::F16(v) => v[i].to_f64(),
            CpuStorage::I64(v) => v[i] as f64,
        }
    }
    /// The elements of the view `layout` (row-major) in a new buffer: a coalesced, threaded
    /// strided copy ([`crate::cpu::strided::gather`]). A buffer the allocator refuses (a large
    /// broadcast made contiguous) is an [`Error::Alloc`].
    pub fn gather_view(&self, layout: &crate::shape::Layout) -> Result<Self> {
        use crate::cpu::strided::gather;
        Ok(match self {
            CpuStorage::F32(v) => CpuStorage::F32(gather(v, layout)?),
            CpuStorage::F64(v) => CpuStorage::F64(gather(v, layout)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(gather(v, layout)?),
            CpuStorage::F16(v) => CpuStorage::F16(gather(v, layout)?),
            CpuStorage::I64(v) => CpuStorage::I64(gather(v, layout)?),
        })
    }
    /// Converts an owned buffer to `dtype`, without the copy [`CpuStorage::to_dtype`] makes when the
    /// dtype already matches (the common case: kernels computed in the tensor's own dtype).
    pub fn into_dtype(self, dtype: DType) -> Self {
        if dtype == self.dtype() {
            self
        } else {
            self.to_dtype(dtype)
        }
    }
    /// Converts to another dtype (round-to-nearest-even for half types; floats truncate to i64).
    pub fn to_dtype(&self, dtype: DType) -> Self {
        if dtype == self.dtype() {
            return self.clone();
        }
        match (self, dtype) {
            // threaded, and vectorized where the CPU allows (the same bits as `half`)
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(crate::cpu::cast::f32_to_bf16(v)),
            (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(crate::cpu::cast::bf16_to_f32(v)),
            (CpuStorage::F16(v), DType::F32) => CpuStorage::F32(v.iter().map(|x| x.to_f32()).collect()),
            _ => CpuStorage::from_f64_iter(dtype, (0..self.len()).map(|i| self.get_f64(i))),
        }
    }
}

/// Host element types that have a [`CpuStorage`] variant.
pub trait CpuSlice: WithDType {
    fn cpu_slice(s: &CpuStorage) -> Option<&[Self]>;
    fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn into_storage(v: Vec<Self>) -> CpuStorage;
}

macro_rules! cpu_slice {
    ($t:ty, $v:ident) => {
        impl CpuSlice for $t {
            fn cpu_slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn cpu_slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
        }
    };
}
cpu_slice!(f32, F32);
cpu_slice!(f64, F64);
cpu_slice!(bf16, BF16);
cpu_slice!(f16, F16);
cpu_slice!(i64, I64);

/// A tensor's buffer on some device.
#[derive(Debug, Clone)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => c.device(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
            Storage::Cuda(c) => c.dtype(),
        }
    }
    /// Number of elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(c) => c.len(),
            Storage::Cuda(c) => c.len(),
        }
    }
    pub fn as_cpu(&self) -> Result<&CpuStorage> {
        match self {
            Storage::Cpu(c) => Ok(c),
            Storage::Cuda(c) => Err(cpu_kernel_on_cuda(c.device())),
        }
    }
    pub fn as_cpu_mut(&mut self) -> Result<&mut CpuStorage> {
        match self {
            Storage::Cpu(c) => Ok(c),
            Storage::Cuda(c) => Err(cpu_kernel_on_cuda(c.device())),
        }
    }
}

/// The error a CPU kernel returns when it is handed a CUDA buffer: the op has no CUDA arm yet
/// (ops never copy to the host behind the caller's back).
fn cpu_kernel_on_cuda(device: Device) -> Error {
    Error::Cuda(format!("this op is not implemented on CUDA yet (a CPU kernel was reached with a tensor on {device}; move it with .to_device(Device::Cpu))"))
}
