//! `CudaStorage`: one device buffer (from the caching allocator) + its dtype, behind an `Arc`, so
//! cloning a tensor's storage is cheap. Transfers (host <-> device), allocation (optionally
//! poisoned with NaN for tests) and typed access for the launchers live here.
use super::alloc::PooledSlice;
use super::device::CudaBackend;
use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result};
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::{bf16, f16};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The typed buffer behind a [`CudaStorage`].
pub enum CudaBuf {
    F32(PooledSlice<f32>),
    F64(PooledSlice<f64>),
    BF16(PooledSlice<bf16>),
    F16(PooledSlice<f16>),
    I64(PooledSlice<i64>),
}

/// A device buffer of one dtype. `Clone` shares the buffer (an `Arc`): never write through a
/// storage that another tensor may hold; ops always write fresh buffers.
#[derive(Clone)]
pub struct CudaStorage {
    buf: Arc<CudaBuf>,
    backend: Arc<CudaBackend>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage(cuda:{}, {}, len {})", self.backend.ordinal(), self.dtype(), self.len())
    }
}

/// Element types with a [`CudaBuf`] variant.
pub trait CudaElem: DeviceRepr + Copy + Default + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(s: PooledSlice<Self>) -> CudaBuf;
    fn get(b: &CudaBuf) -> Option<&PooledSlice<Self>>;
}

macro_rules! cuda_elem {
    ($t:ty, $v:ident) => {
        impl CudaElem for $t {
            const DTYPE: DType = DType::$v;
            fn wrap(s: PooledSlice<Self>) -> CudaBuf {
                CudaBuf::$v(s)
            }
            fn get(b: &CudaBuf) -> Option<&PooledSlice<Self>> {
                match b {
                    CudaBuf::$v(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
cuda_elem!(f32, F32);
cuda_elem!(f64, F64);
cuda_elem!(bf16, BF16);
cuda_elem!(f16, F16);
cuda_elem!(i64, I64);

static POISON: AtomicBool = AtomicBool::new(false);

/// Fill every new float buffer handed to an op with NaN (tests: an element a kernel forgets to
/// write shows up as NaN). Also on when the env var `KILN_CUDA_POISON=1` is set.
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}
/// Whether new buffers are poisoned (see [`set_poison`]).
pub fn poison_enabled() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    POISON.load(Ordering::Relaxed) || *ENV.get_or_init(|| std::env::var("KILN_CUDA_POISON").is_ok_and(|v| v == "1"))
}

/// A fresh output buffer of `len` elements of `T` (NaN-poisoned for floats when enabled).
pub fn out_buf<T: CudaElem>(backend: &CudaBackend, len: usize) -> Result<PooledSlice<T>> {
    let mut s = backend.alloc::<T>(len)?;
    if poison_enabled() && len > 0 {
        let v: &mut CudaSlice<T> = &mut s;
        let bad = || Error::msg("out_buf: view transmute failed");
        // SAFETY (all three arms): T is exactly the transmuted type (checked by DTYPE).
        match T::DTYPE {
            DType::F32 => backend.fill::<f32>(&mut unsafe { v.transmute_mut::<f32>(len) }.ok_or_else(bad)?, f32::NAN)?,
            DType::BF16 => backend.fill::<bf16>(&mut unsafe { v.transmute_mut::<bf16>(len) }.ok_or_else(bad)?, f32::NAN)?,
            DType::F16 => backend.fill::<f16>(&mut unsafe { v.transmute_mut::<f16>(len) }.ok_or_else(bad)?, f32::NAN)?,
            _ => {}
        }
    }
    Ok(s)
}

impl CudaStorage {
    pub fn new(buf: CudaBuf, backend: Arc<CudaBackend>) -> CudaStorage {
        CudaStorage { buf: Arc::new(buf), backend }
    }
    /// Wraps a freshly written buffer.
    pub fn from_slice<T: CudaElem>(s: PooledSlice<T>, backend: &Arc<CudaBackend>) -> CudaStorage {
        Self::new(T::wrap(s), backend.clone())
    }
    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.backend
    }
    pub fn device(&self) -> Device {
        Device::Cuda(self.backend.ordinal())
    }
    pub fn dtype(&self) -> DType {
        match &*self.buf {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::F64(_) => DType::F64,
            CudaBuf::BF16(_) => DType::BF16,
            CudaBuf::F16(_) => DType::F16,
            CudaBuf::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        match &*self.buf {
            CudaBuf::F32(s) => s.len(),
            CudaBuf::F64(s) => s.len(),
            CudaBuf::BF16(s) => s.len(),
            CudaBuf::F16(s) => s.len(),
            CudaBuf::I64(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The buffer as `CudaSlice<T>`, or a dtype error naming `op`.
    pub fn slice<T: CudaElem>(&self, op: &'static str) -> Result<&CudaSlice<T>> {
        T::get(&self.buf).map(|s| &**s).ok_or(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: T::DTYPE })
    }

    /// Uploads a host buffer to device `ordinal`.
    pub fn from_cpu(cpu: &CpuStorage, ordinal: usize) -> Result<CudaStorage> {
        let backend = CudaBackend::get(ordinal)?;
        fn up<T: CudaElem>(b: &Arc<CudaBackend>, v: &[T]) -> Result<CudaStorage> {
            let mut s = b.alloc::<T>(v.len())?;
            if !v.is_empty() {
                b.stream().memcpy_htod(v, &mut *s)?;
            }
            Ok(CudaStorage::from_slice(s, b))
        }
        match cpu {
            CpuStorage::F32(v) => up(&backend, v),
            CpuStorage::F64(v) => up(&backend, v),
            CpuStorage::BF16(v) => up(&backend, v),
            CpuStorage::F16(v) => up(&backend, v),
            CpuStorage::I64(v) => up(&backend, v),
        }
    }

    /// Downloads the whole buffer (waits for queued work on the stream).
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        fn down<T: CudaElem>(b: &CudaBackend, s: &CudaSlice<T>) -> Result<Vec<T>> {
            let mut v = vec![T::default(); s.len()];
            if !v.is_empty() {
                b.stream().memcpy_dtoh(s, &mut v[..])?;
            }
            b.synchronize()?;
            Ok(v)
        }
        let b = &*self.backend;
        Ok(match &*self.buf {
            CudaBuf::F32(s) => CpuStorage::F32(down(b, s)?),
            CudaBuf::F64(s) => CpuStorage::F64(down(b, s)?),
            CudaBuf::BF16(s) => CpuStorage::BF16(down(b, s)?),
            CudaBuf::F16(s) => CpuStorage::F16(down(b, s)?),
            CudaBuf::I64(s) => CpuStorage::I64(down(b, s)?),
        })
    }
}
