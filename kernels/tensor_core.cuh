// tensor_core.cuh — warp-level tensor-core primitives (sm_80+): mma.sync m16n8k16 with f32
// accumulation, ldmatrix, cp.async, packed f32 -> bf16x2 / f16x2 conversion. Inline PTX only (no
// CUDA headers). kernels/emu/emu.h defines KILN_EMU and provides CPU emulations of the same
// functions with the same fragment layouts, so kernels using them can be tested without a GPU.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), g = lane / 4, c = lane % 4:
//   A (16x16, row):  a0 = A[g][2c..2c+1]  a1 = A[g+8][2c..]  a2 = A[g][2c+8..]  a3 = A[g+8][2c+8..]
//   B (16x8, col):   b0 = B[2c..2c+1][g]  b1 = B[2c+8..2c+9][g]
//   C/D (16x8, f32): d0,d1 = C[g][2c..2c+1]  d2,d3 = C[g+8][2c..2c+1]
// ldmatrix .x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i (16 bytes per row); lane t
// receives M_i[t/4][2(t%4)..+1] in register i (with .trans: M_i[2(t%4)..+1][t/4]).
#pragma once
#include "common.cuh"

#ifndef KILN_EMU
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// d += a * b, one m16n8k16 tile, 16-bit inputs, f32 accumulators.
__device__ __forceinline__ void mma_16816(float* d, const u32* a, const u32* b, bf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_16816(float* d, const u32* a, const u32* b, f16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void ldmatrix_x4(u32* r, const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row_addr)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32* r, const void* row_addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row_addr)));
}

// 16-byte global -> shared copy that bypasses the registers (and L1); zero-fills when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// (lo, hi) -> one register holding two 16-bit values, lo in the low half (round to nearest even).
__device__ __forceinline__ u32 pack2(float lo, float hi, bf16) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u32 pack2(float lo, float hi, f16) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#else
#include "emu_tensor_core.h"  // kernels/emu/: the same functions, emulated on the CPU
#endif
