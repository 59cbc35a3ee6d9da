//! kiln: a tensor engine with hand-written kernels, autograd, and BERT / GPT-2 stacks.
//! This facade re-exports the workspace crates.
pub use kiln_model as model;
pub use kiln_tensor as tensor;

pub mod lab;
pub use kiln_tensor::{DType, Device, Error, Result, Tensor};

/// With mimalloc as the global allocator (feature `mimalloc`): never hand freed pages back to the
/// OS. By default mimalloc purges (decommits) freed memory after 10 ms, so the buffers a training
/// step frees (logits, their gradients, activations) are page-faulted and zeroed by the kernel again
/// in the next step: ~25 000 page faults and 3% of the CPU time in `clear_page` over a 20-step GPT
/// benchmark, 500 faults with purging off, for +7 MB of peak RSS. The `kiln` binary and the lab bench
/// call this first thing; a library user with mimalloc as their allocator can do the same (it only
/// sets an option; it does nothing with another allocator).
#[cfg(feature = "mimalloc")]
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h's mi_option_t (v2 and v3 alike; the bindings have no
    // constant for it): delay in ms before freed memory is purged, -1 = never.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one integer option; called before the program starts its threads.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
