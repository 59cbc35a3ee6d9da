// wgmma.cuh — warpgroup-level tensor-core primitives of Hopper (sm_90a only): wgmma.mma_async
// with f32 accumulators, shared-memory matrix descriptors, and the fences around them. Inline PTX
// only. Under KILN_EMU (kernels/emu) the same functions are emulated on the CPU (emu_wgmma.h), with
// the asynchronous semantics: an MMA is carried out only at the wgmma_wait that retires its group,
// so a kernel that reads an accumulator early, or overwrites an operand before the wait, computes
// wrong results there.
//
// A warpgroup is 4 consecutive warps (threads 128w .. 128w + 127); every function here must be
// called by all 128 threads of the warpgroup together (".sync.aligned").
//
// Operands (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
//  - D (64 x N, f32), thread t of the warpgroup, warp w = t / 32, g = (t % 32) / 4, c = t % 4:
//      d[4j + e] = D[16w + g + 8(e / 2)][8j + 2c + (e % 2)]   (the mma.m16n8 C layout per 8 columns)
//  - A from registers (64 x 16): warp w holds rows 16w..16w+15 in the mma.m16n8k16 A layout.
//  - A or B from shared memory: a descriptor for the "interleaved" (no swizzle) canonical layout,
//    made of 8 x 8 core matrices of 128 contiguous bytes (8 rows of 16 bytes):
//      K-major (K contiguous): element (mn, k) at start + (mn / 8) * SBO + (k / 8) * LBO
//                              + (mn % 8) * 16 + (k % 8) * 2
//      MN-major (".trans", MN contiguous): element (mn, k) at start + (mn / 8) * SBO
//                              + (k / 8) * LBO + (k % 8) * 16 + (mn % 8) * 2
//    i.e. LBO steps between core matrices along K, SBO along M / N.
//
// kiln's tiles use one shared-memory layout for a [rows, D] tile: element (r, x) at element offset
// wg_tile_offset<D>(r, x) = ((r / 8) * (D / 8) + x / 8) * 64 + (r % 8) * 8 + x % 8, so one 16-byte
// chunk per core-matrix row and 16 consecutive threads' cp.async writes are contiguous. With it,
// a tile is K-major with (LBO, SBO) = (128, 16 D) when D is the reduction dimension (Q, K in
// S = Q K^T) and MN-major with (LBO, SBO) = (16 D, 128) when rows are the reduction dimension
// (V in O = P V).
#pragma once
#include "common.cuh"
#include "tensor_core.cuh"

template <int D> __device__ __forceinline__ int wg_tile_offset(int r, int x) {
    return ((r >> 3) * (D >> 3) + (x >> 3)) * 64 + (r & 7) * 8 + (x & 7);
}

#ifndef KILN_EMU
// A shared-memory matrix descriptor: start address, LBO and SBO (bytes, multiples of 16), no
// swizzle, base offset 0.
__device__ __forceinline__ u64 wg_desc(const void* p, u32 lbo, u32 sbo) {
    return (u64)((smem_addr(p) & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32);
}
// Orders this thread's earlier register writes (accumulators, A fragments) before the next wgmma.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Waits until at most N committed groups are still pending.
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async after its wait)
// visible to the async proxy that wgmma reads its descriptors' operands through.
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// Keeps the compiler from moving reads / writes of accumulator registers across a wgmma / wait.
template <int R> __device__ __forceinline__ void wgmma_fence_operand(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int R> __device__ __forceinline__ void wgmma_fence_operand(u32 (&a)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

#define WG_D8(o) "+f"(d[o]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3]), "+f"(d[o + 4]), "+f"(d[o + 5]), "+f"(d[o + 6]), "+f"(d[o + 7])
#define WG_D16 WG_D8(0), WG_D8(8)
#define WG_D32 WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24)
#define WG_D64 WG_D32, WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
// the accumulator operand lists %0 .. %(R - 1) of the asm statements below
#define WG_R16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define WG_R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_R64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (64 x N) = [d +] A B, k = 16, N = 2 * len(d); acc = 0 ignores d's old value.
//   wg_mma_ss:    A and B from shared memory, both K-major
//   wg_mma_rs_tb: A from registers, B from shared memory MN-major (".trans")
//   wg_mma_ss_tt: A and B from shared memory, both MN-major
// R accumulators; the operand numbers after them (A, B descriptors or A's four registers, B's
// descriptor, the scale-d flag) are passed spelled out, since the preprocessor cannot add.
#define WG_MMA_SS(NAME, TY, R, N, TA, TB, OA, OB, OP)                                              \
    __device__ __forceinline__ void NAME(float (&d)[R], u64 da, u64 db, int acc, TY) {             \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #OP ", 0;\n"                              \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " " WG_R##R      \
                     ", %" #OA ", %" #OB ", p, 1, 1, " #TA ", " #TB ";\n}\n"                        \
                     : WG_D##R                                                                    \
                     : "l"(da), "l"(db), "r"(acc));                                               \
    }
#define WG_MMA_RS_TB(TY, R, N, A0, A1, A2, A3, OB, OP)                                             \
    __device__ __forceinline__ void wg_mma_rs_tb(float (&d)[R], const u32 (&a)[4], u64 db, int acc, TY) { \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #OP ", 0;\n"                              \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " " WG_R##R      \
                     ", {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #OB ", p, 1, 1, 1;\n}\n"            \
                     : WG_D##R                                                                    \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));            \
    }
#define WG_MMA_ALL(TY)                                                                              \
    WG_MMA_SS(wg_mma_ss, TY, 32, 64, 0, 0, 32, 33, 34)                                             \
    WG_MMA_SS(wg_mma_ss, TY, 64, 128, 0, 0, 64, 65, 66)                                            \
    WG_MMA_SS(wg_mma_ss_tt, TY, 16, 32, 1, 1, 16, 17, 18)                                          \
    WG_MMA_SS(wg_mma_ss_tt, TY, 32, 64, 1, 1, 32, 33, 34)                                          \
    WG_MMA_RS_TB(TY, 32, 64, 32, 33, 34, 35, 36, 37)                                               \
    WG_MMA_RS_TB(TY, 64, 128, 64, 65, 66, 67, 68, 69)
WG_MMA_ALL(bf16)
WG_MMA_ALL(f16)
#undef WG_MMA_ALL
#undef WG_MMA_SS
#undef WG_MMA_RS_TB
#undef WG_R16
#undef WG_R32
#undef WG_R64
#undef WG_D8
#undef WG_D16
#undef WG_D32
#undef WG_D64
#else
#include "emu_wgmma.h"  // kernels/emu/: the same functions, emulated on the CPU
#endif

// A SWIZZLE_128B descriptor (layout type 1, base offset 0) for tiles the copy engine wrote with the
// 128-byte swizzle (tma.cuh), in 1024-byte-aligned atoms of 8 rows x 128 bytes. Element (mn, k) of
// 16-bit data sits at the pre-swizzle byte address
//   K-major:  start + (mn % 8) * 128 + (mn / 8) * SBO + k * 2        (k < 64; LBO unused)
//   MN-major: start + (mn % 64) * 2 + (mn / 64) * LBO + (k % 8) * 128 + (k / 8) * SBO
// and the hardware XORs address bits [4, 7) with bits [7, 10). A K step of 16 inside an atom is
// start + 32 bytes.
__device__ __forceinline__ u64 wg_desc_sw128(const void* p, u32 lbo, u32 sbo) { return wg_desc(p, lbo, sbo) | (1ull << 62); }
