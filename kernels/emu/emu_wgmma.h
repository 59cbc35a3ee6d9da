// CPU emulation of kernels/wgmma.cuh (included by it under KILN_EMU): wgmma.mma_async with the
// PTX operand layouts and shared-memory descriptors, and its asynchronous semantics. An MMA is
// queued at issue and carried out at the wgmma_wait that retires its group, reading its operands
// (shared memory through the descriptors, A registers through their address) and updating the
// accumulators then, not at issue. A kernel that reads an accumulator before the wait sees stale
// values; one that overwrites an operand between issue and wait feeds the MMA the new values.
// Both are races on the GPU; here they give wrong results that the tests catch.
#pragma once
#include <array>
#include <cassert>
#include <cstdio>
#include <vector>

inline u32 smem_addr(const void* p) { return (u32)((const char*)p - (const char*)smem); }
inline u64 wg_desc(const void* p, u32 lbo, u32 sbo) {
    return (u64)((smem_addr(p) & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32);
}

struct EmuWgmma {
    int n;            // N of m64nNk16
    bool a_reg;       // A from registers (else from shared memory)
    bool trans_a;     // A (from shared memory) MN-major
    bool trans_b;     // B MN-major
    bool is_bf16;
    u64 da, db;       // descriptors
    const u32* a;     // A fragment (a_reg)
    float* d;         // accumulators, n / 2 of them
    bool acc;
};
inline thread_local std::vector<EmuWgmma> g_wg_pending;    // issued, not yet carried out
inline thread_local std::vector<size_t> g_wg_group_end;    // committed groups: end index in pending

// element (mn, k) of a shared-memory operand under a no-swizzle or SWIZZLE_128B descriptor
// (wgmma.cuh's layouts; smem is 1024-byte aligned, so offsets in it swizzle as addresses do)
inline float emu_wg_smem(u64 desc, int mn, int k, bool mn_major, bool is_bf16) {
    const u32 layout = (u32)(desc >> 62);
    assert((layout == 0 || layout == 1) && ((desc >> 49) & 7) == 0 && "only the no-swizzle and 128-byte swizzle layouts are emulated");
    u32 start = (u32)(desc & 0x3FFF) << 4, lbo = (u32)((desc >> 16) & 0x3FFF) << 4, sbo = (u32)((desc >> 32) & 0x3FFF) << 4;
    u32 off;
    if (layout == 0) {
        off = start + (mn / 8) * sbo + (k / 8) * lbo + (mn_major ? (k % 8) * 16 + (mn % 8) * 2 : (mn % 8) * 16 + (k % 8) * 2);
    } else {
        off = mn_major ? start + (mn % 64) * 2 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo
                       : start + (mn % 8) * 128 + (mn / 8) * sbo + k * 2;
        off ^= ((off >> 7) & 7) << 4;
    }
    assert(off + 2 <= sizeof(smem));
    unsigned short bits; memcpy(&bits, (const char*)smem + off, 2);
    return is_bf16 ? emu_h2f(bits, bf16{}) : emu_h2f(bits, f16{});
}

inline void emu_wg_run(const EmuWgmma& op) {
    const int wt = (threadIdx.x & 127) >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    auto h2f = [&](unsigned short b) { return op.is_bf16 ? emu_h2f(b, bf16{}) : emu_h2f(b, f16{}); };
    // this thread's two rows of A (16w + g and + 8 within the 64-row tile), 16 k each
    float A[2][16];
    if (op.a_reg) {  // gather the warp's fragments: lane l holds rows l / 4 (+ 8), k 2(l % 4) (+ 1, + 8, + 9)
        auto& F = g_frag[w];
        for (int i = 0; i < 4; ++i) F[lane][i] = op.a[i];
        g_warp_bar[w]->arrive_and_wait();
        for (int cc = 0; cc < 4; ++cc) {
            const auto& f = F[g * 4 + cc];
            for (int r = 0; r < 2; ++r)
                for (int h = 0; h < 2; ++h) {
                    u32 reg = f[r + 2 * h];
                    A[r][2 * cc + 8 * h] = h2f((unsigned short)(reg & 0xffff));
                    A[r][2 * cc + 8 * h + 1] = h2f((unsigned short)(reg >> 16));
                }
        }
        g_warp_bar[w]->arrive_and_wait();
    } else {
        for (int r = 0; r < 2; ++r)
            for (int k = 0; k < 16; ++k) A[r][k] = emu_wg_smem(op.da, 16 * wt + g + 8 * r, k, op.trans_a, op.is_bf16);
    }
    for (int i = 0; i < op.n / 2; ++i) {
        int j = i / 4, e = i % 4, col = 8 * j + 2 * c + (e & 1);
        float acc = 0.f;
        for (int k = 0; k < 16; ++k) acc += A[e >> 1][k] * emu_wg_smem(op.db, col, k, op.trans_b, op.is_bf16);
        op.d[i] = (op.acc ? op.d[i] : 0.f) + acc;
    }
}

// a thread that exits with MMAs pending or uncommitted is a kernel bug (the GPU would lose them)
struct EmuWgCheck { ~EmuWgCheck() { if (!g_wg_pending.empty()) { fprintf(stderr, "wgmma: thread exited with %zu MMAs pending\n", g_wg_pending.size()); abort(); } } };
inline thread_local EmuWgCheck g_wg_check;

inline void wgmma_fence() {}
inline void fence_proxy_async_smem() {}
inline void wgmma_commit() { g_wg_group_end.push_back(g_wg_pending.size()); }
template <int N> inline void wgmma_wait() {
    // retire every committed group but the newest N, oldest first
    size_t groups = g_wg_group_end.size();
    if (groups <= (size_t)N) return;
    size_t upto = g_wg_group_end[groups - N - 1];
    for (size_t i = 0; i < upto; ++i) emu_wg_run(g_wg_pending[i]);
    g_wg_pending.erase(g_wg_pending.begin(), g_wg_pending.begin() + upto);
    g_wg_group_end.erase(g_wg_group_end.begin(), g_wg_group_end.end() - N);
    for (auto& e : g_wg_group_end) e -= upto;
}
template <int R> inline void wgmma_fence_operand(float (&)[R]) {}
template <int R> inline void wgmma_fence_operand(u32 (&)[R]) {}

template <int R, typename T> inline void emu_wg_issue(float (&d)[R], bool a_reg, const u32* a, u64 da, u64 db, bool trans_a, bool trans_b, int acc, T) {
    g_wg_pending.reserve(16);  // constructed before the check below, so destroyed after it
    (void)&g_wg_check;         // registers the exit check for this thread
    constexpr bool is_bf16 = std::is_same_v<T, bf16>;
    // The tensor cores may read the shared-memory operands at any time from issue to the wait: read
    // them here as well as at the wait, so that ThreadSanitizer (KILN_EMU_TSAN=1) sees both ends.
    float touch = 0.f;
    for (int k = 0; k < 16; ++k) {
        if (!a_reg) for (int m = 0; m < 64; ++m) touch += emu_wg_smem(da, m, k, trans_a, is_bf16);
        for (int n = 0; n < 2 * R; ++n) touch += emu_wg_smem(db, n, k, trans_b, is_bf16);
    }
    volatile float sink = touch; (void)sink;
    g_wg_pending.push_back({2 * R, a_reg, trans_a, trans_b, is_bf16, da, db, a, d, acc != 0});
}
template <int R, typename T> inline void wg_mma_ss(float (&d)[R], u64 da, u64 db, int acc, T t) { emu_wg_issue(d, false, nullptr, da, db, false, false, acc, t); }
template <int R, typename T> inline void wg_mma_rs_tb(float (&d)[R], const u32 (&a)[4], u64 db, int acc, T t) { emu_wg_issue(d, true, a, 0, db, false, true, acc, t); }
template <int R, typename T> inline void wg_mma_ss_tt(float (&d)[R], u64 da, u64 db, int acc, T t) { emu_wg_issue(d, false, nullptr, da, db, true, true, acc, t); }

