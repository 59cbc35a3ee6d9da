// tma.cuh — Hopper's bulk tensor copy engine (TMA) and the shared-memory barriers it completes on
// (sm_90; the kernels that use it are also wgmma kernels, so sm_90a), for kernels whose tiles
// arrive by TMA instead of per-thread cp.async. Inline PTX only. Under KILN_EMU (kernels/emu) the
// same functions are emulated on the CPU (emu_tma.h): a TMA copy lands when its producer issues it
// and completes its barrier's transaction count; a consumer that reads a tile before waiting on
// the barrier, or a producer that overwrites a stage before the consumers released it, is a data
// race that the ThreadSanitizer build reports.
//
// Tensor maps (built by the host with cuTensorMapEncodeTiled, passed by value as
// `const __grid_constant__ TmaMap` kernel parameters): kiln's attention maps are 3-D, innermost
// first (head dim, sequence, batch * heads), boxes of 64 x ROWS x 1 elements with the 128-byte
// swizzle: box row r, 16-byte chunk c lands at byte r * 128 + ((c ^ (r % 8)) * 16) of a
// 1024-byte-aligned destination; rows past the sequence's end are zero-filled. wgmma reads such a
// tile through a SWIZZLE_128B descriptor (wg_desc_sw128).
//
// mbarrier phases: a barrier completes a phase when its expected arrivals have arrived and its
// expected transaction bytes have landed; mbar_wait(bar, parity) returns once the phase of that
// parity has completed (phase 0 first, then 1, 0, ...).
#pragma once
#include "common.cuh"
#include "tensor_core.cuh"

#ifndef KILN_EMU
// The driver's CUtensorMap (128 opaque bytes); its contents are the driver's business.
struct alignas(64) TmaMap {
    unsigned long long opaque[16];
};

__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// Makes barrier initializations visible to the other threads and to the copy engine (then a
// __syncthreads before first use).
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
// One arrival that also announces `bytes` of copies that will complete on this barrier.
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(u64* bar, u32 parity) {
    u32 done;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
    return done != 0;
}
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
// A 3-D box at element coordinates (c0 innermost, c1, c2) of `map` into shared memory at dst,
// completing `bar`'s transaction count by the box's bytes.
__device__ __forceinline__ void tma_load_3d(void* dst, const TmaMap* map, int c0, int c1, int c2, u64* bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
        ::"r"(smem_addr(dst)), "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
        : "memory");
}
// Named barrier `id` (1..15; 0 is __syncthreads) of `n` threads: sync waits for the phase, arrive
// counts towards it without waiting (FlashAttention-3's pingpong between consumer warpgroups).
__device__ __forceinline__ void named_bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void named_bar_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(n) : "memory"); }
// Register budgets per warpgroup (the kernel needs __launch_bounds__(threads, 1)): the producer
// gives registers back, the consumers take them.
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N)); }
#else
#include "emu_tma.h"  // kernels/emu/: the same functions, emulated on the CPU
#endif
