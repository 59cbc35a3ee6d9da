//! Tensor buffers whose allocation may fail. A shape whose element count or byte size overflows
//! `usize`, or a buffer the allocator cannot provide, is an [`Error::Alloc`] naming the op, the
//! shape and the bytes, never an abort (Rust's `vec![0; n]` and `Vec::with_capacity` abort the
//! process with `memory allocation of N bytes failed`).
//!
//! These cost what the infallible forms cost: one reservation (`try_reserve_exact`) or one zeroed
//! allocation (`alloc_zeroed`, which the allocator serves with fresh zero pages for large buffers,
//! as `vec![0; n]` does), and no extra pass over the data.
//!
//! Note that on Linux, with the default memory overcommit, an allocation that the kernel accepts
//! can still run out of memory later, when its pages are first written; what fails here is what
//! the allocator refuses up front (sizes past the address space, or past what the kernel will
//! promise). `kiln_model::limits` checks the sizes a user asks for against the machine's memory
//! before anything is allocated.
use crate::{DType, Error, Result, WithDType};

/// Bytes in binary units (as `free -h` shows memory), three significant digits: `"512 B"`,
/// `"1.50 GiB"`, `"2.73 PiB"`.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1023.5 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let digits = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}", UNITS[u])
}

/// The number of elements of `shape`, or an [`Error::Alloc`] when the product overflows `usize`.
pub fn elem_count(op: &'static str, shape: &[usize], dtype: DType) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| Error::Alloc {
        op,
        shape: shape.to_vec(),
        dtype,
        bytes: None,
        reason: "its element count overflows usize".into(),
    })
}

/// Bytes of `n` elements of `size_of::<T>()`, as a [`Layout`](std::alloc::Layout) would take them:
/// an error when they exceed `isize::MAX` (no allocation can be that large).
fn byte_size<T: WithDType>(op: &'static str, shape: &[usize], n: usize) -> Result<usize> {
    let dtype = T::DTYPE;
    match n.checked_mul(std::mem::size_of::<T>()) {
        Some(b) if b <= isize::MAX as usize => Ok(b),
        _ => Err(Error::Alloc {
            op,
            shape: shape.to_vec(),
            dtype,
            bytes: Some(n as u128 * std::mem::size_of::<T>() as u128),
            reason: "more than the address space can hold".into(),
        }),
    }
}

fn out_of_memory(op: &'static str, shape: &[usize], dtype: DType, bytes: usize) -> Error {
    Error::Alloc { op, shape: shape.to_vec(), dtype, bytes: Some(bytes as u128), reason: "out of memory".into() }
}

/// An empty `Vec` with room for exactly `n` elements (the buffer of a tensor of `shape`, named in
/// the error with `op`), or an [`Error::Alloc`].
pub fn try_vec<T: WithDType>(op: &'static str, shape: &[usize], n: usize) -> Result<Vec<T>> {
    let bytes = byte_size::<T>(op, shape, n)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| out_of_memory(op, shape, T::DTYPE, bytes))?;
    Ok(v)
}

/// `n` zeros (all-zero bits: `0.0`, `0`), allocated zeroed, or an [`Error::Alloc`].
pub fn try_zeros<T: WithDType + bytemuck::Zeroable>(op: &'static str, shape: &[usize], n: usize) -> Result<Vec<T>> {
    let bytes = byte_size::<T>(op, shape, n)?;
    bytemuck::allocation::try_zeroed_vec(n).map_err(|_| out_of_memory(op, shape, T::DTYPE, bytes))
}

/// `n` elements of `it` in a buffer reserved up front, or an [`Error::Alloc`]. `it` must yield at
/// least `n` items; only the first `n` are taken.
pub fn try_collect<T: WithDType>(op: &'static str, shape: &[usize], n: usize, it: impl Iterator<Item = T>) -> Result<Vec<T>> {
    let mut v = try_vec(op, shape, n)?;
    v.extend(it.take(n));
    Ok(v)
}

/// A global allocator that counts the heap bytes live in the process and their high-water mark,
/// around another allocator (`System`, mimalloc, ...), to measure peak memory exactly: unlike the
/// resident set, the count does not depend on what the allocator keeps cached or on page reuse,
/// and unlike a count of tensor buffers it includes everything an op or the graph holds (dropout
/// masks, attention statistics). Install it in a binary or test with
/// `#[global_allocator] static A: CountingAlloc<std::alloc::System> = CountingAlloc::new(std::alloc::System);`
/// then read [`live_bytes`] / [`peak_bytes`] and start a measurement with [`reset_peak`].
/// The counters are process-wide (all threads); two relaxed atomic adds per allocation.
pub struct CountingAlloc<A>(A);

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl<A> CountingAlloc<A> {
    pub const fn new(inner: A) -> Self {
        CountingAlloc(inner)
    }
}

fn grew(n: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the inner allocator unchanged; only the counters are added.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = self.0.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = self.0.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        self.0.dealloc(ptr, layout);
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = self.0.realloc(ptr, layout, new_size);
        if !p.is_null() {
            match new_size >= layout.size() {
                true => grew(new_size - layout.size()),
                false => shrank(layout.size() - new_size),
            }
        }
        p
    }
}

/// Heap bytes live now, as counted by an installed [`CountingAlloc`] (0 without one).
pub fn live_bytes() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The most heap bytes live at once since the last [`reset_peak`] (or the start), as counted by an
/// installed [`CountingAlloc`] (0 without one).
pub fn peak_bytes() -> usize {
    PEAK.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts a new peak measurement: the peak becomes the bytes live now, which are returned.
pub fn reset_peak() -> usize {
    let now = live_bytes();
    PEAK.store(now, std::sync::atomic::Ordering::Relaxed);
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_like_a_person_writes_it() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(1536 << 20), "1.50 GiB");
        assert_eq!(human_bytes(24 << 30), "24.0 GiB");
        assert_eq!(human_bytes(999 << 10), "999 KiB");
        assert_eq!(human_bytes(3_072_000_000_000_000), "2.73 PiB");
        assert_eq!(human_bytes(u64::MAX as u128), "16.0 EiB");
    }

    #[test]
    fn overflowing_counts_and_sizes_are_errors() {
        let e = elem_count("zeros", &[1 << 40, 1 << 40], DType::F32).unwrap_err().to_string();
        assert!(e.contains("zeros") && e.contains("[1099511627776, 1099511627776]") && e.contains("overflows"), "{e}");
        let e = try_vec::<f32>("t", &[usize::MAX / 2], usize::MAX / 2).unwrap_err().to_string();
        assert!(e.contains("address space"), "{e}");
    }

    #[test]
    fn a_buffer_the_allocator_refuses_is_an_error() {
        // 2^50 f32 = 4 PiB: no machine has it, and the allocator says so up front
        let n = 1usize << 50;
        let e = try_zeros::<f32>("zeros", &[1 << 40, 1 << 10], n).unwrap_err().to_string();
        assert!(e.contains("4.00 PiB") && e.contains("[1099511627776, 1024]") && e.contains("out of memory"), "{e}");
        let e = try_vec::<f64>("randn", &[n], n).unwrap_err().to_string();
        assert!(e.contains("8.00 PiB") && e.contains("randn"), "{e}");
        // and small ones work
        assert_eq!(try_zeros::<f32>("zeros", &[3], 3).unwrap(), vec![0.0; 3]);
        assert_eq!(try_collect("c", &[4], 4, 0i64..).unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn huge_tensors_are_errors_not_aborts() {
        use crate::{Device, Tensor};
        let cpu = Device::Cpu;
        // 2^50 f32 = 4 PiB
        let e = Tensor::zeros(&[1 << 40, 1 << 10], DType::F32, cpu).unwrap_err().to_string();
        assert_eq!(e, "zeros: cannot allocate a f32 tensor of shape [1099511627776, 1024] (4.00 PiB): out of memory");
        // 2^80 elements: the count overflows before any allocation
        let e = Tensor::zeros(&[1 << 40, 1 << 40], DType::F32, cpu).unwrap_err().to_string();
        assert_eq!(e, "zeros: cannot allocate a f32 tensor of shape [1099511627776, 1099511627776]: its element count overflows usize");
        // 2^62 f32 = 2^64 bytes: the count fits, its bytes do not
        let e = Tensor::zeros(&[1 << 62], DType::F32, cpu).unwrap_err().to_string();
        assert!(e.contains("16.0 EiB") && e.contains("address space"), "{e}");
        for (op, r) in [
            ("randn", Tensor::randn(0, &[1 << 40, 1 << 10], 0.0, 1.0, DType::F32, cpu)),
            ("rand_uniform", Tensor::rand_uniform(0, &[1 << 40, 1 << 10], 0.0, 1.0, DType::BF16, cpu)),
            ("full", Tensor::full(1.0, &[1 << 40, 1 << 10], DType::F64, cpu)),
            ("full", Tensor::ones(&[1 << 40, 1 << 10], DType::I64, cpu)),
            ("arange", Tensor::arange(0.0, 1e300, 1.0, DType::F32, cpu)),
        ] {
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(&format!("{op}: cannot allocate")), "{e}");
        }
        // from a buffer whose shape's count overflows
        let e = Tensor::from_vec(vec![0f32; 4], &[1 << 40, 1 << 40]).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
        // outputs larger than their inputs: a broadcast made contiguous, a broadcasting add and an
        // outer product, each 2^48 elements (1 PiB of f32) from inputs of 64 MiB
        let col = Tensor::zeros(&[1 << 24, 1], DType::F32, cpu).unwrap();
        let row = Tensor::zeros(&[1, 1 << 24], DType::F32, cpu).unwrap();
        let e = col.broadcast_as(&[1 << 24, 1 << 24]).unwrap().contiguous().unwrap_err().to_string();
        assert!(e.starts_with("contiguous: cannot allocate a f32 tensor of shape [16777216, 16777216] (1.00 PiB)"), "{e}");
        let e = col.add(&row).unwrap_err().to_string();
        assert!(e.starts_with("add: cannot allocate a f32 tensor of shape [16777216, 16777216] (1.00 PiB)"), "{e}");
        let e = col.matmul(&row).unwrap_err().to_string();
        assert!(e.starts_with("matmul: cannot allocate a f32 tensor of shape [16777216, 16777216] (1.00 PiB)"), "{e}");
    }
}
