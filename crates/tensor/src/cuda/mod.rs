//! The CUDA backend: kernel sources ([`kernels`]), the NVRTC pipeline ([`nvrtc`], [`report`]) and,
//! with the `cuda` feature (on by default), the runtime pieces: [`device::CudaBackend`] (context,
//! stream, module cache, caching allocator, cuBLAS), the launch conventions (`launch`, `rows`) and
//! the launchers of the shared kernels. An op's own launchers live in its folder (`ops/<op>/cuda.rs`).
//!
//! Everything is loaded at run time (cudarc `dynamic-loading`): the crate builds with no CUDA
//! toolkit, and every probe here answers `false` / `Err` instead of panicking when libcuda or
//! libnvrtc is missing.
//!
//! [`storage::CudaStorage`] holds device buffers; [`ops`] has the adapter helpers every op's CUDA half
//! uses and the dispatch of copies, casts and elementwise ops.
use crate::{Device, Error, Result};

pub mod kernels;
#[cfg(feature = "cuda")]
pub mod alloc;
#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "cuda")]
pub mod launch;
#[cfg(feature = "cuda")]
pub mod blas;
#[cfg(feature = "cuda")]
pub mod nvrtc;
#[cfg(feature = "cuda")]
pub mod report;
#[cfg(feature = "cuda")]
pub mod rows;

#[cfg(feature = "cuda")]
pub mod ops;
#[cfg(feature = "cuda")]
pub mod storage;
#[cfg(feature = "cuda")]
pub use storage::CudaStorage;

/// Device buffers (stand-in without the `cuda` feature: no value of this type can exist, so the
/// `Storage::Cuda` match arms need no `#[cfg]`).
#[cfg(not(feature = "cuda"))]
#[derive(Debug, Clone)]
pub struct CudaStorage {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "cuda"))]
impl CudaStorage {
    pub fn device(&self) -> Device {
        match self.never {}
    }
    pub fn dtype(&self) -> crate::DType {
        match self.never {}
    }
    pub fn len(&self) -> usize {
        match self.never {}
    }
}

/// Number of CUDA devices usable in this process: 0 when the `cuda` feature is off, libcuda
/// cannot be loaded, or the driver reports no device. Probed once; never panics.
pub fn device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *COUNT.get_or_init(|| {
            // Without libcuda every driver call panics: check that it loads first.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return 0;
            }
            match cudarc::driver::CudaContext::device_count() {
                Ok(n) if n > 0 => n as usize,
                _ => 0,
            }
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// The GPU's name as the driver reports it (e.g. "NVIDIA H200"); `None` for the CPU, a device that
/// cannot be opened, or a build without the `cuda` feature.
pub fn device_name(device: Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    return backend_of(device).and_then(|b| b.name().ok());
    #[cfg(not(feature = "cuda"))]
    no_backend(device)
}

/// The backend of `device` when it is a CUDA device that exists and opens (the rule of the
/// `Option`-returning queries here).
#[cfg(feature = "cuda")]
fn backend_of(device: Device) -> Option<std::sync::Arc<device::CudaBackend>> {
    match device {
        Device::Cuda(n) if n < device_count() => device::CudaBackend::get(n).ok(),
        _ => None,
    }
}
#[cfg(not(feature = "cuda"))]
fn no_backend<R>(_: Device) -> Option<R> {
    None
}

/// The architecture kiln compiles kernels for on `device` (e.g. "sm_90"); `None` as for
/// [`device_name`].
pub fn device_arch(device: Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    return backend_of(device).map(|b| b.arch().to_string());
    #[cfg(not(feature = "cuda"))]
    no_backend(device)
}

/// Peak bytes held by tensors on `device` (the caching allocator's high-water mark), or `None`
/// for the CPU or a device that was never used.
pub fn peak_memory_bytes(device: Device) -> Option<usize> {
    #[cfg(feature = "cuda")]
    return backend_of(device).map(|b| b.allocator().stats().peak_bytes);
    #[cfg(not(feature = "cuda"))]
    no_backend(device)
}

/// `(free, total)` bytes of `device`'s memory as the driver reports them, or `None` for the CPU, a
/// device that cannot be opened, or a build without the `cuda` feature.
pub fn memory_info(device: Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    return backend_of(device).and_then(|b| b.context().mem_get_info().ok()).map(|(free, total)| (free as u64, total as u64));
    #[cfg(not(feature = "cuda"))]
    no_backend(device)
}

thread_local! {
    /// None until this thread sets it or first asks (then `KILN_TF32`).
    static TF32: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Lets f32 matmuls on CUDA use TF32 tensor cores (inputs rounded to 10 mantissa bits, f32
/// accumulation: much faster, ~1e-3 relative error). Off by default (strict FP32, what the CPU
/// computes); `KILN_TF32=1` turns it on for every thread, `kiln train --tf32` too. Applies to the
/// calling thread (kiln queues CUDA work from the thread that calls the op, so a training loop
/// sets it once); bf16 / f16 matmuls are not affected.
pub fn set_tf32(on: bool) {
    TF32.with(|c| c.set(Some(on)));
}

/// Whether f32 matmuls on CUDA called from this thread may use TF32 (see [`set_tf32`]).
pub fn tf32_enabled() -> bool {
    TF32.with(|c| {
        let on = c.get().unwrap_or_else(|| std::env::var("KILN_TF32").is_ok_and(|v| v == "1"));
        c.set(Some(on));
        on
    })
}

/// The CUDA kernels the row-wise ops (softmax, log_softmax, LayerNorm; forward and backward) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKernel {
    /// One warp per row, the row held in registers: each element read once and written once with
    /// 16-byte accesses (`*_warp<E>` kernels, E elements per lane, the smallest that holds the
    /// row). The default where it applies: the row length a multiple of 16 bytes, every row
    /// pointer 16-byte aligned, and rows of at most 2048 elements (1536 for the LayerNorm
    /// backward); elsewhere `Block` runs.
    Warp,
    /// One block of 256 threads per row (the LayerNorm backward: per group of rows), scalar
    /// accesses, any row length: the reference variant, `kiln bench`'s `cuda-block`.
    Block,
}

thread_local! {
    static ROW_OVERRIDE: std::cell::Cell<Option<RowKernel>> = const { std::cell::Cell::new(None) };
}

/// `KILN_ROW_KERNEL=block|warp`: the process-wide choice where no thread has forced one (read once;
/// another value is reported on stderr and ignored). `block` switches every row op back to the
/// block kernels without a rebuild, e.g. on a GPU where the warp kernels have not yet been checked.
fn env_row_kernel() -> Option<RowKernel> {
    static ENV: std::sync::OnceLock<Option<RowKernel>> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| env_choice("KILN_ROW_KERNEL", &[("block", RowKernel::Block), ("warp", RowKernel::Warp)]))
}

/// The value named by environment variable `var` among `choices` (`None` when unset or empty; a
/// name not among them is reported on stderr and ignored). Read it once, behind a `OnceLock`.
pub(crate) fn env_choice<T: Copy>(var: &str, choices: &[(&str, T)]) -> Option<T> {
    let v = std::env::var(var).ok().filter(|v| !v.is_empty())?;
    let hit = choices.iter().find(|(name, _)| *name == v).map(|&(_, t)| t);
    if hit.is_none() {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        eprintln!("kiln: {var}={v:?} is not one of {}; ignored", names.join(", "));
    }
    hit
}

/// On this thread, makes later CUDA softmax / log_softmax / LayerNorm launches run `kernel`
/// (`None`: the default choice, `KILN_ROW_KERNEL` if set; `Warp` still only where it applies).
/// For `kiln bench`'s variants and the GPU tests; thread-local like `ops::attention::force_attention_kernel`.
pub fn force_row_kernel(kernel: Option<RowKernel>) {
    ROW_OVERRIDE.with(|c| c.set(kernel));
}

/// The row-kernel choice in force on this thread: its [`force_row_kernel`], else
/// `KILN_ROW_KERNEL`, else `None` (the default). A forward records it, and its backward runs
/// under the same choice ([`with_row_kernel`]), as an attention backward keeps its forward's kernel.
pub fn row_kernel_override() -> Option<RowKernel> {
    ROW_OVERRIDE.with(|c| c.get()).or_else(env_row_kernel)
}

/// Runs `f` with this thread's row-kernel choice set to `kernel`, then restores the previous one.
pub fn with_row_kernel<R>(kernel: Option<RowKernel>, f: impl FnOnce() -> R) -> R {
    let before = ROW_OVERRIDE.with(|c| c.get());
    force_row_kernel(kernel);
    let r = f();
    force_row_kernel(before);
    r
}

/// Restarts the peak reported by [`peak_memory_bytes`] from what `device` holds now (no-op on the CPU
/// or a device never used).
pub fn reset_peak_memory(device: Device) {
    #[cfg(feature = "cuda")]
    if let Some(b) = backend_of(device) {
        b.allocator().reset_peak();
    }
    let _ = device;
}

/// Whether a CUDA device can be used in this process.
pub fn is_available() -> bool {
    device_count() > 0
}

/// Whether NVRTC (the run-time CUDA compiler) can be loaded; never panics.
pub fn nvrtc_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        nvrtc::nvrtc_available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// Checks that `device` can be used, with a clear error when it cannot (no CUDA feature, no
/// driver / device, or an ordinal past the device count). Never panics.
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(n) if !cfg!(feature = "cuda") => Err(Error::CudaUnavailable(format!(
            "device cuda:{n} requested, but this build of kiln has no CUDA backend (feature `cuda` is off); use --device cpu"
        ))),
        Device::Cuda(n) => match device_count() {
            0 => Err(Error::CudaUnavailable(format!(
                "device cuda:{n} requested, but no CUDA device was found (no CUDA driver: libcuda.so.1 not loadable, or no GPU); use --device cpu"
            ))),
            count if n >= count => Err(Error::CudaUnavailable(format!("device cuda:{n} requested, but only {count} CUDA device(s) exist"))),
            _ => Ok(()),
        },
    }
}

/// Waits until every queued operation on `device` has finished (a no-op on the CPU).
pub fn synchronize(device: Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(n) = device {
        check_device(device)?;
        return device::CudaBackend::get(n)?.synchronize();
    }
    let _ = device;
    Ok(())
}

/// Queues about `cycles` SM clock cycles of GPU idling on `device`'s stream (a no-op on the CPU), so
/// that calls queued after it run back to back once it ends: benchmarks use it to time kernels
/// without the host's launch gaps between them.
pub fn gpu_sleep(device: Device, cycles: i64) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(n) = device {
        check_device(device)?;
        return device::CudaBackend::get(n)?.sleep_cycles(cycles);
    }
    let _ = (device, cycles);
    Ok(())
}

/// Runs `f` and returns its result with the time it took in milliseconds: on a CUDA device the
/// time between two events recorded on the device's stream before and after `f` (the GPU work `f`
/// queued, plus any gaps while the host was still launching it); on the CPU, wall-clock time.
/// For benchmarks; call [`synchronize`] first so earlier work is not counted.
pub fn time_ms<R>(device: Device, f: impl FnOnce() -> Result<R>) -> Result<(R, f64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(n) = device {
        check_device(device)?;
        let b = device::CudaBackend::get(n)?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = b.stream().record_event(flags)?;
        let r = f()?;
        let end = b.stream().record_event(flags)?;
        let ms = start.elapsed_ms(&end)?;
        return Ok((r, ms as f64));
    }
    let _ = device;
    let t = std::time::Instant::now();
    let r = f()?;
    Ok((r, t.elapsed().as_secs_f64() * 1e3))
}

/// The error of an op reached with CUDA tensors that has no CUDA path yet.
pub fn not_implemented(op: &str) -> Error {
    Error::Cuda(format!("op {op} is not implemented on CUDA yet"))
}

#[cfg(feature = "cuda")]
impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(format!("driver: {e:?}"))
    }
}

#[cfg(feature = "cuda")]
impl From<cudarc::cublas::result::CublasError> for Error {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        Error::Cuda(format!("cublas: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_never_panic() {
        // On a machine without a GPU these are false / errors; with one they must agree.
        let n = device_count();
        assert_eq!(is_available(), n > 0);
        assert!(check_device(Device::Cpu).is_ok());
        let e = check_device(Device::Cuda(0));
        assert_eq!(e.is_ok(), n > 0, "{e:?}");
        if n == 0 {
            assert!(matches!(e, Err(Error::CudaUnavailable(_))), "{e:?}");
        }
        assert!(check_device(Device::Cuda(n)).is_err());
        let _ = nvrtc_available();
    }

    #[test]
    fn tf32_follows_the_environment_then_the_thread() {
        let env_on = std::env::var("KILN_TF32").is_ok_and(|v| v == "1");
        assert_eq!(super::tf32_enabled(), env_on, "the default is KILN_TF32 (off when unset)");
        super::set_tf32(!env_on);
        assert_eq!(super::tf32_enabled(), !env_on);
        std::thread::spawn(move || assert_eq!(super::tf32_enabled(), env_on, "another thread keeps the default")).join().unwrap();
        super::set_tf32(env_on);
        assert_eq!(super::tf32_enabled(), env_on);
    }
}
