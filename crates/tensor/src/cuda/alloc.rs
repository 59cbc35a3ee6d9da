//! A caching device allocator: freed blocks go back to a per-size-bucket free list and are reused
//! by later allocations of the same bucket, so the hot path never calls cuMemAlloc / cuMemFree.
//!
//! Blocks are stream-ordered on the backend's single stream: a block freed after enqueuing a
//! kernel that reads it can be handed out at once, because every later use is enqueued after that
//! kernel on the same stream. (Using a second stream would need events; kiln uses one.)
use crate::Result;
use cudarc::driver::{sys::CUdeviceptr, CudaSlice, CudaStream, DeviceRepr};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Allocation size actually reserved for a request of `bytes`: at least 512 bytes, then rounded
/// up to one of 4 steps per power of two (at most 25% waste), so sizes that recur share buckets.
pub fn bucket_size(bytes: usize) -> usize {
    if bytes <= 512 {
        return 512;
    }
    let log2 = (usize::BITS - 1 - bytes.leading_zeros()) as usize;
    let step = 1usize << (log2 - 2);
    bytes.div_ceil(step) * step
}

/// Counters of one allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes handed out and not yet returned.
    pub in_use_bytes: usize,
    /// Bytes sitting in free lists.
    pub cached_bytes: usize,
    /// High-water mark of `in_use_bytes` (peak device memory held by tensors).
    pub peak_bytes: usize,
    /// Requests served from a free list / by a fresh device allocation.
    pub hits: u64,
    pub misses: u64,
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<CUdeviceptr>>,
    stats: AllocStats,
}

/// The caching allocator of one stream.
pub struct CachingAllocator {
    stream: Arc<CudaStream>,
    pool: Mutex<Pool>,
}

impl std::fmt::Debug for CachingAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachingAllocator({:?})", self.stats())
    }
}

impl CachingAllocator {
    pub fn new(stream: Arc<CudaStream>) -> Arc<Self> {
        Arc::new(CachingAllocator { stream, pool: Mutex::new(Pool::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An uninitialised buffer of `len` elements of `T`.
    pub fn alloc<T: DeviceRepr>(self: &Arc<Self>, len: usize) -> Result<PooledSlice<T>> {
        let bytes = bucket_size(len * std::mem::size_of::<T>());
        let cached = {
            let mut p = self.lock();
            let ptr = p.free.get_mut(&bytes).and_then(|v| v.pop());
            if ptr.is_some() {
                p.stats.cached_bytes -= bytes;
                p.stats.hits += 1;
            } else {
                p.stats.misses += 1;
            }
            p.stats.in_use_bytes += bytes;
            p.stats.peak_bytes = p.stats.peak_bytes.max(p.stats.in_use_bytes);
            ptr
        };
        let ptr = match cached {
            Some(p) => p,
            None => match unsafe { self.stream.alloc::<u8>(bytes) } {
                Ok(s) => s.leak(),
                Err(_) => {
                    // Out of memory (most likely): give the cached blocks back and retry once.
                    self.empty_cache();
                    match unsafe { self.stream.alloc::<u8>(bytes) } {
                        Ok(s) => s.leak(),
                        Err(e) => {
                            self.lock().stats.in_use_bytes -= bytes;
                            return Err(e.into());
                        }
                    }
                }
            },
        };
        // SAFETY: `ptr` is a live allocation of `bytes >= len * size_of::<T>()` bytes owned by us.
        let slice = unsafe { self.stream.upgrade_device_ptr::<T>(ptr, len) };
        Ok(PooledSlice { slice: Some(slice), bytes, pool: self.clone() })
    }

    /// A zero-filled buffer of `len` elements of `T`.
    pub fn alloc_zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(self: &Arc<Self>, len: usize) -> Result<PooledSlice<T>> {
        let mut s = self.alloc::<T>(len)?;
        self.stream.memset_zeros(&mut *s)?;
        Ok(s)
    }

    fn give_back(&self, ptr: CUdeviceptr, bytes: usize) {
        let mut p = self.lock();
        p.free.entry(bytes).or_default().push(ptr);
        p.stats.in_use_bytes -= bytes;
        p.stats.cached_bytes += bytes;
    }

    /// Frees every cached block (stream-ordered).
    pub fn empty_cache(&self) {
        let blocks: Vec<(usize, Vec<CUdeviceptr>)> = {
            let mut p = self.lock();
            p.stats.cached_bytes = 0;
            p.free.drain().collect()
        };
        for (bytes, ptrs) in blocks {
            for ptr in ptrs {
                // SAFETY: the block came from `stream.alloc` and is no longer referenced; dropping
                // the re-wrapped slice frees it on the stream.
                drop(unsafe { self.stream.upgrade_device_ptr::<u8>(ptr, bytes) });
            }
        }
    }

    pub fn stats(&self) -> AllocStats {
        self.lock().stats
    }

    /// Restarts the high-water mark from the bytes held now (like `torch.cuda.reset_peak_memory_stats`).
    pub fn reset_peak(&self) {
        let mut p = self.lock();
        p.stats.peak_bytes = p.stats.in_use_bytes;
    }
}

impl Drop for CachingAllocator {
    fn drop(&mut self) {
        self.empty_cache();
    }
}

/// A device buffer that returns to its allocator's free list when dropped. Derefs to the
/// cudarc [`CudaSlice`] (its `len()` is the requested length, not the bucket size).
pub struct PooledSlice<T> {
    slice: Option<CudaSlice<T>>,
    bytes: usize,
    pool: Arc<CachingAllocator>,
}

impl<T> Deref for PooledSlice<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        self.slice.as_ref().expect("PooledSlice used after drop")
    }
}

impl<T> DerefMut for PooledSlice<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        self.slice.as_mut().expect("PooledSlice used after drop")
    }
}

impl<T> std::fmt::Debug for PooledSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PooledSlice(len {}, {} bytes)", self.slice.as_ref().map_or(0, |s| s.len()), self.bytes)
    }
}

impl<T> Drop for PooledSlice<T> {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.give_back(s.leak(), self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_size;

    #[test]
    fn buckets_round_up_by_at_most_a_quarter() {
        assert_eq!(bucket_size(0), 512);
        assert_eq!(bucket_size(512), 512);
        assert_eq!(bucket_size(513), 640);
        assert_eq!(bucket_size(4096), 4096);
        assert_eq!(bucket_size(4097), 5120);
        for b in [700usize, 3000, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let s = bucket_size(b);
            assert!(s >= b && (s - b) * 4 <= b, "{b} -> {s}");
            assert_eq!(bucket_size(s), s, "bucket sizes are fixed points");
        }
    }
}
