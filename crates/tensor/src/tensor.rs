//! The `Tensor`: a cheap-to-clone handle on {storage, layout, dtype, device, autograd node}.
use crate::autograd::{self, BackwardOp};
use crate::shape::{contiguous_strides, Layout};
use crate::storage::{CpuSlice, CpuStorage, Storage};
use crate::{cuda, DType, Device, Error, Result, WithDType};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A unique id per tensor (views get their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct Inner {
    id: TensorId,
    /// Shared between views; copy-on-write when a parameter is updated in place while shared.
    storage: RwLock<Arc<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    requires_grad: bool,
    /// The op that produced this tensor (None for leaves, or once backward has freed the graph).
    pub(crate) node: Mutex<Option<Arc<dyn BackwardOp>>>,
    /// Accumulated gradient (leaves that require grad).
    pub(crate) grad: Mutex<Option<Tensor>>,
    /// Set once backward has consumed `node` (a second backward through it is an error).
    pub(crate) freed: std::sync::atomic::AtomicBool,
}

/// An n-dimensional array with reverse-mode autograd. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}{}]", self.shape(), self.dtype(), self.device(), if self.requires_grad() { ", grad" } else { "" })
    }
}

impl Tensor {
    // ----- construction -------------------------------------------------------------------
    pub(crate) fn from_parts(storage: Arc<Storage>, layout: Layout, requires_grad: bool, node: Option<Arc<dyn BackwardOp>>) -> Tensor {
        let dtype = storage.dtype();
        let device = storage.device();
        Tensor(Arc::new(Inner {
            id: TensorId::new(),
            storage: RwLock::new(storage),
            layout,
            dtype,
            device,
            requires_grad,
            node: Mutex::new(node),
            grad: Mutex::new(None),
            freed: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// A contiguous tensor owning `storage` with no autograd history.
    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        // the strides multiply the non-zero dims: an empty `[0, 2^32, 2^32]` would overflow them
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1))).is_none() {
            return Err(Error::msg(format!("from_storage: shape {shape:?} is too large (its dimensions' product overflows)")));
        }
        let n = crate::mem::elem_count("from_storage", shape, storage.dtype())?;
        let len = storage.len();
        if n != len {
            return Err(Error::ElementCount { op: "from_storage", expected: n, got: len });
        }
        Ok(Self::from_parts(Arc::new(storage), Layout::contiguous(shape), false, None))
    }

    /// The result of an op: records `op` in the graph when grad mode is on and an input needs a gradient.
    /// `make_op` is only called when the node is recorded.
    pub fn from_op<F>(storage: Storage, shape: &[usize], inputs: &[&Tensor], make_op: F) -> Result<Tensor>
    where
        F: FnOnce() -> Arc<dyn BackwardOp>,
    {
        let t = Self::from_storage(storage, shape)?;
        Ok(t.with_history(inputs, make_op))
    }

    /// Attaches history to a freshly computed tensor (see [`Tensor::from_op`]).
    pub fn with_history<F>(self, inputs: &[&Tensor], make_op: F) -> Tensor
    where
        F: FnOnce() -> Arc<dyn BackwardOp>,
    {
        if !autograd::is_grad_enabled() {
            crate::checkpoint::note(inputs);
            self
        } else if inputs.iter().any(|t| t.requires_grad()) {
            let storage = self.storage();
            Self::from_parts(storage, self.layout().clone(), true, Some(make_op()))
        } else {
            self
        }
    }

    /// A view of this tensor's storage with another layout (shares data), recording `make_op`.
    pub(crate) fn view_with<F>(&self, layout: Layout, make_op: F) -> Tensor
    where
        F: FnOnce() -> Arc<dyn BackwardOp>,
    {
        let grad = autograd::is_grad_enabled();
        if !grad {
            crate::checkpoint::note(&[self]);
        }
        let track = grad && self.requires_grad();
        Self::from_parts(self.storage(), layout, track, if track { Some(make_op()) } else { None })
    }

    pub fn from_vec<T: WithDType + CpuSlice>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Self::from_storage(Storage::Cpu(T::into_storage(data)), shape)
    }
    pub fn from_slice<T: WithDType + CpuSlice>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Self::from_vec(data.to_vec(), shape)
    }
    /// A 0-d tensor.
    pub fn scalar<T: WithDType + CpuSlice>(v: T) -> Tensor {
        Self::from_parts(Arc::new(Storage::Cpu(T::into_storage(vec![v]))), Layout::contiguous(&[]), false, None)
    }
    /// A tensor of `shape` filled with `v`. Like every constructor here, a shape whose size
    /// overflows or that memory cannot hold is an [`Error::Alloc`], not an abort.
    pub fn full(v: f64, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let s = CpuStorage::try_from_f64_iter("full", dtype, shape, std::iter::repeat(v))?;
        Self::from_storage(Storage::Cpu(s), shape)?.to_device(device)
    }
    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        cuda::check_device(device)?;
        Self::from_storage(Storage::Cpu(CpuStorage::zeros("zeros", dtype, shape)?), shape)?.to_device(device)
    }
    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Self::full(1.0, shape, dtype, device)
    }
    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape(), self.dtype(), self.device())
    }
    pub fn ones_like(&self) -> Result<Tensor> {
        Self::ones(self.shape(), self.dtype(), self.device())
    }
    /// `[start, start+step, ...)` below `end`, 1-d.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() {
            return Err(Error::msg("arange: step must be finite and non-zero"));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let s = CpuStorage::try_from_f64_iter("arange", dtype, &[n], (0..n).map(|i| start + i as f64 * step))?;
        Self::from_storage(Storage::Cpu(s), &[n])?.to_device(device)
    }
    /// Normal(mean, std) samples from a seeded ChaCha8 generator (deterministic across runs and machines).
    pub fn randn(seed: u64, shape: &[usize], mean: f64, std: f64, dtype: DType, device: Device) -> Result<Tensor> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dist = rand_distr::Normal::new(mean, std).map_err(|e| Error::msg(format!("randn: {e}")))?;
        let s = CpuStorage::try_from_f64_iter("randn", dtype, shape, std::iter::repeat_with(|| dist.sample(&mut rng)))?;
        Self::from_storage(Storage::Cpu(s), shape)?.to_device(device)
    }
    /// Uniform[lo, hi) samples from a seeded ChaCha8 generator.
    pub fn rand_uniform(seed: u64, shape: &[usize], lo: f64, hi: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if !(lo < hi) {
            return Err(Error::msg(format!("rand_uniform: need lo < hi, got {lo} and {hi}")));
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dist = rand_distr::Uniform::new(lo, hi).map_err(|e| Error::msg(format!("rand_uniform: {e}")))?;
        let s = CpuStorage::try_from_f64_iter("rand_uniform", dtype, shape, std::iter::repeat_with(|| dist.sample(&mut rng)))?;
        Self::from_storage(Storage::Cpu(s), shape)?.to_device(device)
    }

    // ----- accessors ----------------------------------------------------------------------
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }
    pub fn rank(&self) -> usize {
        self.shape().len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    /// Size of dim `d` (negative counts from the end).
    pub fn dim<D: crate::Dim>(&self, d: D) -> Result<usize> {
        Ok(self.shape()[d.resolve(self.rank(), "dim")?])
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn strides(&self) -> &[usize] {
        self.0.layout.strides()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }
    /// True for tensors with no recorded op (created directly, or detached).
    pub fn is_leaf(&self) -> bool {
        self.0.node.lock().unwrap().is_none() && !self.0.freed.load(Ordering::Relaxed)
    }
    /// The shared storage handle.
    pub fn storage(&self) -> Arc<Storage> {
        self.0.storage.read().unwrap().clone()
    }

    // ----- autograd handles -----------------------------------------------------------------
    /// A leaf that shares this tensor's data and accumulates gradients in `.grad()`.
    pub fn requires_grad_(&self, on: bool) -> Tensor {
        Self::from_parts(self.storage(), self.layout().clone(), on && self.dtype().is_float(), None)
    }
    /// Alias of `requires_grad_(true)`: a trainable leaf.
    pub fn var(&self) -> Tensor {
        self.requires_grad_(true)
    }
    /// Same data, no history, no gradient.
    pub fn detach(&self) -> Tensor {
        Self::from_parts(self.storage(), self.layout().clone(), false, None)
    }
    /// The gradient accumulated on this leaf by `backward()`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap().clone()
    }
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap() = None;
    }
    /// Replaces the accumulated gradient (e.g. after clipping).
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap() = g;
    }

    /// Overwrites this tensor's data in place (optimizer updates, loading weights). Shapes and dtypes
    /// must match; views made earlier keep the old data (copy-on-write).
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "assign", lhs: self.shape().to_vec(), rhs: src.shape().to_vec() });
        }
        if src.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: "assign", lhs: self.dtype(), rhs: src.dtype() });
        }
        if src.device() != self.device() {
            return Err(Error::DeviceMismatch { op: "assign", lhs: self.device(), rhs: src.device() });
        }
        let src = src.contiguous()?;
        if self.device().is_cuda() {
            return self.assign_cuda(&src);
        }
        self.write_view(self.layout().clone(), &src)
    }

    /// Writes `src`'s elements (row-major) into the view `view` of this tensor's storage, copying
    /// the storage first if another tensor shares it (CPU).
    fn write_view(&self, view: Layout, src: &Tensor) -> Result<()> {
        self.update_storage(|s| {
            // (src's elements in place when it is contiguous; a shared storage was copied above)
            macro_rules! put {
                ($a:ident) => {
                    src.with_slice(|d| crate::cpu::strided::scatter($a, &view, d))?
                };
            }
            match s.as_cpu_mut()? {
                CpuStorage::F32(a) => put!(a),
                CpuStorage::F64(a) => put!(a),
                CpuStorage::BF16(a) => put!(a),
                CpuStorage::F16(a) => put!(a),
                CpuStorage::I64(a) => put!(a),
            }
            Ok(())
        })
    }

    /// Overwrites the window `narrow(dim, start, len)` of this tensor with `src` (`len` = `src`'s
    /// size along `dim`; its other dims must equal this tensor's), in place: like [`Tensor::assign`],
    /// not recorded by autograd, and views taken earlier keep the old data (copy-on-write). On the
    /// CPU only the window is written; on CUDA, where buffers are immutable, the tensor gets a new
    /// buffer (whole-size copy), and it must be contiguous.
    pub fn assign_narrow<D: crate::Dim>(&self, dim: D, start: usize, src: &Tensor) -> Result<()> {
        const OP: &str = "assign_narrow";
        let d = dim.resolve(self.rank(), OP)?;
        let len = if src.rank() == self.rank() { src.shape()[d] } else { 0 };
        let mut want = self.shape().to_vec();
        want[d] = len;
        if src.rank() != self.rank() || src.shape() != want.as_slice() {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: src.shape().to_vec() });
        }
        if start + len > self.shape()[d] {
            return Err(Error::Shape { op: OP, shape: self.shape().to_vec(), msg: format!("window {start}..{} out of bounds for dim {d} of size {}", start + len, self.shape()[d]) });
        }
        if src.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: src.dtype() });
        }
        if src.device() != self.device() {
            return Err(Error::DeviceMismatch { op: OP, lhs: self.device(), rhs: src.device() });
        }
        if len == 0 {
            return Ok(());
        }
        if self.device().is_cuda() {
            // a new buffer: the parts before and after the window around `src`
            let size = self.shape()[d];
            let mut parts = Vec::with_capacity(3);
            if start > 0 {
                parts.push(self.narrow(d, 0, start)?);
            }
            parts.push(src.clone());
            if start + len < size {
                parts.push(self.narrow(d, start + len, size - start - len)?);
            }
            let whole = crate::no_grad(|| Tensor::cat(&parts, d))?;
            drop(parts);
            return self.assign_cuda(&whole);
        }
        // the window's layout, computed here: a narrowed view would share the storage and make the
        // write copy it
        let mut shape = self.shape().to_vec();
        shape[d] = len;
        self.write_view(Layout::new(shape, self.strides().to_vec(), self.layout().offset() + start * self.strides()[d]), src)
    }

    /// Runs `f` on this tensor's storage, copying it first if another tensor shares it.
    pub fn update_storage<R>(&self, f: impl FnOnce(&mut Storage) -> Result<R>) -> Result<R> {
        let mut guard = self.0.storage.write().unwrap();
        f(Arc::make_mut(&mut guard))
    }

    // ----- data movement ------------------------------------------------------------------
    /// The contiguous element range of this tensor's storage (copies when not contiguous).
    /// For CPU kernels: the result has exactly `elem_count()` elements in row-major order.
    pub fn storage_window(&self) -> Result<CpuStorage> {
        // a contiguous layout coalesces into one run: a (threaded) memcpy
        self.storage().as_cpu()?.gather_view(self.layout())
    }

    /// Calls `f` with this tensor's elements as a contiguous `&[T]` without copying when possible.
    pub fn with_slice<T: CpuSlice, R>(&self, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        let s = self.storage();
        let cpu = s.as_cpu()?;
        if self.is_contiguous() {
            let all = cpu.as_slice::<T>()?;
            let o = self.layout().offset();
            Ok(f(&all[o..o + self.elem_count()]))
        } else {
            let g = cpu.gather_view(self.layout())?;
            Ok(f(g.as_slice::<T>()?))
        }
    }

    /// All elements, row-major, as `T` (the dtype must be `T`'s).
    pub fn to_vec<T: CpuSlice>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::DTypeMismatch { op: "to_vec", lhs: self.dtype(), rhs: T::DTYPE });
        }
        self.to_device(Device::Cpu)?.with_slice::<T, _>(|s| s.to_vec())
    }
    /// All elements converted to f64 (any dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let w = self.to_device(Device::Cpu)?.storage_window()?;
        Ok((0..w.len()).map(|i| w.get_f64(i)).collect())
    }
    /// The value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::Shape { op: "to_scalar", shape: self.shape().to_vec(), msg: "expected exactly one element".into() });
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// A contiguous copy (or `self` when already contiguous). Differentiable.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() && self.layout().offset() == 0 && self.storage_len() == self.elem_count() {
            return Ok(self.clone());
        }
        let w = self.device_storage(|t| Ok(Storage::Cpu(t.storage_window()?)), cuda_contiguous)?;
        let out = Self::from_storage(w, self.shape())?;
        Ok(out.with_history(&[self], || Arc::new(autograd::Identity { input: self.clone() })))
    }

    fn storage_len(&self) -> usize {
        self.storage().len()
    }

    /// Converts to another dtype. Differentiable between float dtypes.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let w = self.device_storage(|t| Ok(Storage::Cpu(t.storage_window()?.to_dtype(dtype))), |t| cuda_cast(t, dtype))?;
        let out = Self::from_storage(w, self.shape())?;
        if !(dtype.is_float() && self.dtype().is_float()) {
            return Ok(out);
        }
        let from = self.dtype();
        Ok(out.with_history(&[self], || Arc::new(autograd::Cast { input: self.clone(), from })))
    }

    /// Moves to `device` (a no-op when already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        cuda::check_device(device)?;
        let storage = match (self.device(), device) {
            (Device::Cpu, Device::Cuda(n)) => cuda_upload(self, n)?,
            (Device::Cuda(_), Device::Cpu) => cuda_download(self)?,
            // cuda:a -> cuda:b goes through the host.
            (Device::Cuda(_), Device::Cuda(n)) => cuda_upload(&self.to_device(Device::Cpu)?, n)?,
            (Device::Cpu, Device::Cpu) => unreachable!("same device returned above"),
        };
        Ok(Self::from_storage(storage, self.shape())?.with_history(&[self], || Arc::new(autograd::ToDevice { input: self.clone() })))
    }

    /// Runs `cpu` or `cuda` depending on where this tensor lives (the storage-level dispatch of
    /// the data-movement methods above).
    fn device_storage(&self, cpu: impl FnOnce(&Tensor) -> Result<Storage>, cuda: impl FnOnce(&Tensor) -> Result<Storage>) -> Result<Storage> {
        match self.device() {
            Device::Cpu => cpu(self),
            Device::Cuda(_) => cuda(self),
        }
    }

    /// Errors unless `other` has the same dtype and device (names `op`).
    pub fn check_same(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: other.dtype() });
        }
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: other.device() });
        }
        Ok(())
    }
    /// Errors unless the tensor has a float dtype.
    pub fn check_float(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_float() {
            Ok(())
        } else {
            Err(Error::UnsupportedDType { op, dtype: self.dtype() })
        }
    }
    /// Row-major strides of this tensor's shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        contiguous_strides(self.shape())
    }
}

// ----- CUDA data movement (stand-ins that error when the `cuda` feature is off) -----------------
#[cfg(feature = "cuda")]
fn cuda_contiguous(t: &Tensor) -> Result<Storage> {
    Ok(Storage::Cuda(cuda::ops::contiguous(t)?))
}
#[cfg(feature = "cuda")]
fn cuda_cast(t: &Tensor, dtype: DType) -> Result<Storage> {
    Ok(Storage::Cuda(cuda::ops::cast(t, dtype)?))
}
#[cfg(feature = "cuda")]
fn cuda_upload(t: &Tensor, ordinal: usize) -> Result<Storage> {
    Ok(Storage::Cuda(cuda::ops::upload(t, ordinal)?))
}
#[cfg(feature = "cuda")]
fn cuda_download(t: &Tensor) -> Result<Storage> {
    Ok(Storage::Cpu(cuda::ops::download(t)?))
}
#[cfg(not(feature = "cuda"))]
fn cuda_contiguous(_: &Tensor) -> Result<Storage> {
    Err(cuda::check_device(Device::Cuda(0)).unwrap_err())
}
#[cfg(not(feature = "cuda"))]
fn cuda_cast(_: &Tensor, _: DType) -> Result<Storage> {
    Err(cuda::check_device(Device::Cuda(0)).unwrap_err())
}
#[cfg(not(feature = "cuda"))]
fn cuda_upload(_: &Tensor, n: usize) -> Result<Storage> {
    Err(cuda::check_device(Device::Cuda(n)).unwrap_err())
}
#[cfg(not(feature = "cuda"))]
fn cuda_download(_: &Tensor) -> Result<Storage> {
    Err(cuda::check_device(Device::Cuda(0)).unwrap_err())
}

impl Tensor {
    /// `assign` for a CUDA tensor: the new data replaces the storage handle (other holders of the
    /// old storage keep the old data, as with the CPU copy-on-write). Only whole, contiguous
    /// tensors (parameters) can be assigned on CUDA.
    fn assign_cuda(&self, src: &Tensor) -> Result<()> {
        if !(self.is_contiguous() && self.layout().offset() == 0 && self.storage_len() == self.elem_count()) {
            return Err(cuda::not_implemented("assign into a CUDA view"));
        }
        let new = src.contiguous()?.storage();
        *self.0.storage.write().unwrap() = new;
        Ok(())
    }
}
