// CPU emulation of kernels/tma.cuh (included by it under KILN_EMU): mbarriers with phases,
// arrival counts and transaction bytes, and TMA tile loads with out-of-bounds zero fill and the
// 128-byte swizzle. The tensor map is the emulator's own struct (the test fills in what
// cuTensorMapEncodeTiled would encode); kernels only pass it along.
//
// Memory ordering, as on the GPU: an arrival releases, a wait that sees its phase complete
// acquires, and a TMA copy's bytes are written before it completes its barrier's transactions.
// The barrier's state is one atomic word in the barrier's own 8 bytes of shared memory, so under
// ThreadSanitizer (KILN_EMU_TSAN=1) only those edges order threads: a consumer that reads a stage
// before waiting for it, or a producer that refills a stage before the consumers' "empty" arrivals,
// is a reported data race.
#pragma once
#include <atomic>
#include <cassert>
#include <thread>
#define __grid_constant__

struct TmaMap {
    const void* base;       // global address
    int elem;               // bytes per element
    long long dims[3];      // innermost first
    long long strides[2];   // bytes, of dims 1 and 2
    int box[3];
    bool swizzle128;
};

// state: bits 0-11 expected arrivals, 12-23 pending arrivals, 24-47 pending transaction bytes,
// 48-63 completed phases
inline u64 emu_mbar_pack(u64 expected, u64 pending, u64 tx, u64 done) { return expected | pending << 12 | tx << 24 | done << 48; }
// the word a waiter sleeps on: the state's upper half (transaction bytes' top and the phase count)
inline const void* emu_mbar_word(const u64* bar) { return (const char*)bar + 4; }
inline void mbar_init(u64* bar, u32 count) {
    assert(count > 0 && count < 4096);
    std::atomic_ref<u64>(*bar).store(emu_mbar_pack(count, count, 0, 0), std::memory_order_relaxed);
}
inline void mbar_init_fence() {}
// arrivals (-1 each) and transaction bytes (+expect, -complete) in one release step; the phase
// completes when both reach 0
inline void emu_mbar_update(u64* bar, int arrivals, long long tx) {
    std::atomic_ref<u64> a(*bar);
    u64 v = a.load(std::memory_order_relaxed), n;
    do {
        u64 expected = v & 0xfff, pending = (v >> 12) & 0xfff, bytes = (v >> 24) & 0xffffff, done = v >> 48;
        assert(pending >= (u64)arrivals && "more arrivals than the barrier expects");
        assert((long long)bytes + tx >= 0 && "a copy completed bytes nobody announced");
        pending -= arrivals;
        bytes = (u64)((long long)bytes + tx);
        if (pending == 0 && bytes == 0) { pending = expected; ++done; }
        n = emu_mbar_pack(expected, pending, bytes, done);
    } while (!a.compare_exchange_weak(v, n, std::memory_order_release, std::memory_order_relaxed));
    emu_futex_wake(emu_mbar_word(bar));
}
inline void mbar_arrive(u64* bar) { emu_mbar_update(bar, 1, 0); }
inline void mbar_arrive_expect_tx(u64* bar, u32 bytes) { emu_mbar_update(bar, 1, bytes); }
inline bool mbar_try_wait(u64* bar, u32 parity) {
    return ((std::atomic_ref<u64>(*bar).load(std::memory_order_acquire) >> 48) & 1) != parity;
}
inline void mbar_wait(u64* bar, u32 parity) {
    std::atomic_ref<u64> a(*bar);
    for (u64 v = a.load(std::memory_order_acquire); ((v >> 48) & 1) == parity; v = a.load(std::memory_order_acquire))
        emu_futex_wait(emu_mbar_word(bar), (u32)(v >> 32));
}

inline void tma_load_3d(void* dst, const TmaMap* map, int c0, int c1, int c2, u64* bar) {
    const int row_bytes = map->box[0] * map->elem;
    const size_t at = (size_t)((const char*)dst - (const char*)smem);
    if (map->swizzle128) assert(row_bytes == 128 && at % 1024 == 0 && "SWIZZLE_128B: 128-byte rows, 1024-byte-aligned destination");
    else assert(at % 128 == 0);
    u32 bytes = 0;
    for (int r2 = 0; r2 < map->box[2]; ++r2)
        for (int r1 = 0; r1 < map->box[1]; ++r1)
            for (int e = 0; e < map->box[0]; ++e) {
                const long long x0 = c0 + e, x1 = c1 + r1, x2 = c2 + r2;
                u32 off = (u32)((r2 * map->box[1] + r1) * (map->swizzle128 ? 128 : row_bytes) + e * map->elem);
                if (map->swizzle128) off ^= ((off >> 7) & 7) << 4;
                char* d = (char*)dst + off;
                assert(at + off + map->elem <= sizeof(smem));
                if (x0 >= 0 && x0 < map->dims[0] && x1 >= 0 && x1 < map->dims[1] && x2 >= 0 && x2 < map->dims[2])
                    memcpy(d, (const char*)map->base + x2 * map->strides[1] + x1 * map->strides[0] + x0 * map->elem, map->elem);
                else
                    memset(d, 0, map->elem);
                bytes += map->elem;
            }
    emu_mbar_update(bar, 0, -(long long)bytes);
}
// named barriers: emu.h's EmuBarrier g_named (reset by launch for each block), n per call
inline void named_bar_arrive(int id, int n) {
    assert(id > 0 && id < 16 && n % 32 == 0);
    uint32_t ph;
    g_named[id].arrive((uint32_t)n, &ph);
}
inline void named_bar_sync(int id, int n) {
    assert(id > 0 && id < 16 && n % 32 == 0);
    g_named[id].arrive_and_wait((uint32_t)n);
}
template <int N> inline void setmaxnreg_dec() { static_assert(N % 8 == 0 && N >= 24 && N <= 256); }
template <int N> inline void setmaxnreg_inc() { static_assert(N % 8 == 0 && N >= 24 && N <= 256); }
