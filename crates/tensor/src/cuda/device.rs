//! One CUDA device: context, its default stream, the per-arch module cache (kernels compiled by
//! NVRTC on first use), the caching allocator and a cuBLAS handle.
use super::kernels::KernelFile;
use super::alloc::{CachingAllocator, PooledSlice};
use super::nvrtc::{self, KernelImage};
use crate::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The CUDA backend of one device. Get the shared instance with [`CudaBackend::get`].
pub struct CudaBackend {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    alloc: Arc<CachingAllocator>,
    blas: Mutex<Option<Arc<CudaBlas>>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend(cuda:{}, {})", self.ordinal, self.arch)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CudaBackend {
    /// The process-wide backend of device `ordinal` (created on first use).
    pub fn get(ordinal: usize) -> Result<Arc<CudaBackend>> {
        static ALL: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
        let mut all = lock(ALL.get_or_init(Default::default));
        if let Some(b) = all.get(&ordinal) {
            return Ok(b.clone());
        }
        let b = Arc::new(Self::new(ordinal)?);
        all.insert(ordinal, b.clone());
        Ok(b)
    }

    /// A new backend on device `ordinal`. Errors (never panics) when no driver / device exists.
    /// The kernels are compiled for the device's exact arch (`sm_XY`), or `KILN_CUDA_ARCH`.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let count = super::device_count();
        if ordinal >= count {
            return Err(Error::CudaUnavailable(format!("cuda:{ordinal} requested, {count} CUDA device(s) found")));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream, stream-ordered reuse: cudarc's per-allocation events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability()?;
        let arch = std::env::var("KILN_CUDA_ARCH").ok().filter(|a| !a.is_empty()).unwrap_or(format!("sm_{major}{minor}"));
        nvrtc::validate_arch(&arch)?;
        let stream = ctx.default_stream();
        let alloc = CachingAllocator::new(stream.clone());
        Ok(CudaBackend {
            ordinal,
            ctx,
            stream,
            arch,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            alloc,
            blas: Mutex::new(None),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The arch the kernels are compiled for, e.g. `"sm_90"`.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }
    pub fn name(&self) -> Result<String> {
        Ok(self.ctx.name()?)
    }
    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> Result<u32> {
        Ok(self.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32)
    }

    /// An uninitialised device buffer from the caching allocator.
    pub fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<PooledSlice<T>> {
        self.alloc.alloc(len)
    }
    /// A zero-filled device buffer from the caching allocator.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<PooledSlice<T>> {
        self.alloc.alloc_zeros(len)
    }

    /// The module of the kernel file `file` for this device (compiled + loaded on first use).
    pub fn module(&self, file: &KernelFile) -> Result<Arc<CudaModule>> {
        let stem = file.stem;
        if let Some(m) = lock(&self.modules).get(stem) {
            return Ok(m.clone());
        }
        let compiled = nvrtc::compile(file, &self.arch)?;
        let ptx = match compiled.image {
            KernelImage::Cubin(bin) => Ptx::from_binary(bin),
            KernelImage::Ptx(src) => Ptx::from_src(src),
        };
        let module = self.ctx.load_module(ptx)?;
        lock(&self.modules).insert(stem.to_string(), module.clone());
        Ok(module)
    }

    /// The entry point `name` of the kernel file `file` (e.g. `(&gelu::KERNELS, "gelu_fwd_bf16")`).
    pub fn function(&self, file: &KernelFile, name: &str) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module(file)?
            .load_function(name)
            .map_err(|e| Error::Cuda(format!("kernel {name} not found in {}: {e:?}", file.path)))?;
        lock(&self.functions).insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// The cuBLAS handle, bound to this backend's stream (created on first use; errors when
    /// libcublas.so.13 cannot be loaded).
    pub fn blas(&self) -> Result<Arc<CudaBlas>> {
        let mut slot = lock(&self.blas);
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        let present = unsafe { cudarc::cublas::sys::is_culib_present() && cudarc::cublaslt::sys::is_culib_present() };
        if !present {
            return Err(Error::CudaUnavailable("cuBLAS (libcublas.so.13 / libcublasLt.so.13) not found on LD_LIBRARY_PATH".into()));
        }
        let b = Arc::new(CudaBlas::new(self.stream.clone())?);
        *slot = Some(b.clone());
        Ok(b)
    }

    /// Waits for all queued work and surfaces any error recorded asynchronously (e.g. in a free).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        self.ctx.check_err()?;
        Ok(())
    }
}
