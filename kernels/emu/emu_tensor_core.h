// CPU emulation of kernels/tensor_core.cuh (included by it when KILN_EMU is defined, after
// common.cuh): mma.sync m16n8k16, ldmatrix (.trans), cp.async and the packed conversions, with the
// PTX fragment layouts. A warp's lanes meet at the warp barrier of emu.h to exchange fragments.
#pragma once
#include <array>
#include <cstdio>

inline std::vector<std::array<std::array<u32, 6>, 32>> g_frag(64);

inline float emu_h2f(unsigned short bits, bf16) { return __uint_as_float(((u32)bits) << 16); }
inline float emu_h2f(unsigned short bits, f16) { _Float16 h; memcpy(&h, &bits, 2); return (float)h; }
inline unsigned short emu_f2h(float x, bf16) { return from_f32<bf16>(x).bits; }
inline unsigned short emu_f2h(float x, f16) { _Float16 h = (_Float16)x; unsigned short b; memcpy(&b, &h, 2); return b; }

template <typename T> inline void emu_mma(float* d, const u32* a, const u32* b) {
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    auto& F = g_frag[w];
    for (int i = 0; i < 4; ++i) F[lane][i] = a[i];
    F[lane][4] = b[0]; F[lane][5] = b[1];
    g_warp_bar[w]->arrive_and_wait();
    float A[16][16], Bm[16][8];
    auto lo = [](u32 r) { return emu_h2f((unsigned short)(r & 0xffff), T{}); };
    auto hi = [](u32 r) { return emu_h2f((unsigned short)(r >> 16), T{}); };
    for (int l = 0; l < 32; ++l) {
        int g = l >> 2, c = l & 3;
        const auto& f = F[l];
        A[g][2 * c] = lo(f[0]);         A[g][2 * c + 1] = hi(f[0]);
        A[g + 8][2 * c] = lo(f[1]);     A[g + 8][2 * c + 1] = hi(f[1]);
        A[g][2 * c + 8] = lo(f[2]);     A[g][2 * c + 9] = hi(f[2]);
        A[g + 8][2 * c + 8] = lo(f[3]); A[g + 8][2 * c + 9] = hi(f[3]);
        Bm[2 * c][g] = lo(f[4]);        Bm[2 * c + 1][g] = hi(f[4]);
        Bm[2 * c + 8][g] = lo(f[5]);    Bm[2 * c + 9][g] = hi(f[5]);
    }
    g_warp_bar[w]->arrive_and_wait();
    int g = lane >> 2, c = lane & 3;
    for (int e = 0; e < 4; ++e) {
        int row = g + (e >> 1) * 8, col = 2 * c + (e & 1);
        float acc = 0.f;
        for (int k = 0; k < 16; ++k) acc += A[row][k] * Bm[k][col];
        d[e] += acc;
    }
}
inline void mma_16816(float* d, const u32* a, const u32* b, bf16) { emu_mma<bf16>(d, a, b); }
inline void mma_16816(float* d, const u32* a, const u32* b, f16) { emu_mma<f16>(d, a, b); }

inline void emu_ldmatrix(u32* r, const void* row_addr, bool trans) {
    int w = threadIdx.x >> 5, t = threadIdx.x & 31;
    g_warp_slot[w][t] = (uint64_t)row_addr;
    g_warp_bar[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        if (!trans) {
            const unsigned short* row = (const unsigned short*)g_warp_slot[w][8 * i + t / 4];
            r[i] = (u32)row[2 * (t % 4)] | ((u32)row[2 * (t % 4) + 1] << 16);
        } else {
            const unsigned short* r0 = (const unsigned short*)g_warp_slot[w][8 * i + 2 * (t % 4)];
            const unsigned short* r1 = (const unsigned short*)g_warp_slot[w][8 * i + 2 * (t % 4) + 1];
            r[i] = (u32)r0[t / 4] | ((u32)r1[t / 4] << 16);
        }
    }
    g_warp_bar[w]->arrive_and_wait();
}
inline void ldmatrix_x4(u32* r, const void* row_addr) { emu_ldmatrix(r, row_addr, false); }
inline void ldmatrix_x4_trans(u32* r, const void* row_addr) { emu_ldmatrix(r, row_addr, true); }

// cp.async is asynchronous: what lands in dst is defined only after this thread's wait (and other
// threads see it only after a barrier that follows the wait). The emulation writes NaN bytes into
// dst at issue and the data at the wait, so a read before the wait sees NaN, and under
// KILN_EMU_TSAN=1 (ThreadSanitizer) a write at either end that no barrier orders against another
// thread's access of the same bytes is reported as a data race, as racecheck would on the GPU.
struct EmuCpAsync { void* dst; const void* src; bool valid; };
inline thread_local std::vector<EmuCpAsync> g_cp_pending;
// a thread that exits with copies in flight is a kernel bug (they would land in the next block's
// shared memory on the GPU)
struct EmuCpCheck { ~EmuCpCheck() { if (!g_cp_pending.empty()) { fprintf(stderr, "cp.async: thread exited with %zu copies in flight\n", g_cp_pending.size()); abort(); } } };
inline thread_local EmuCpCheck g_cp_check;
inline void cp_async16(void* dst, const void* src, bool valid) {
    memset(dst, 0xff, 16);  // NaN in f32, bf16 and f16 alike
    g_cp_pending.push_back({dst, src, valid});  // constructed before the check below, so destroyed after it
    (void)&g_cp_check;                          // registers the exit check for this thread
}
inline void cp_async_commit() {}
inline void cp_async_wait_all() {
    for (const auto& c : g_cp_pending) {
        if (c.valid) memcpy(c.dst, c.src, 16); else memset(c.dst, 0, 16);
    }
    g_cp_pending.clear();
}

inline u32 pack2(float lo, float hi, bf16) { return (u32)emu_f2h(lo, bf16{}) | ((u32)emu_f2h(hi, bf16{}) << 16); }
inline u32 pack2(float lo, float hi, f16) { return (u32)emu_f2h(lo, f16{}) | ((u32)emu_f2h(hi, f16{}) << 16); }
