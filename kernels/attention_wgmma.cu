// attention_wgmma.cu — Hopper (sm_90a) fused attention forward on wgmma: the `wg` variant of the
// tensor-core attention. Same contract as attention_fwd_tc / _tc2 in attention_tc.cu (q [B, H, Tq,
// D], k / v [B, H, Tk, D], out [B, H, Tq, D] contiguous; lse [B, H, Tq] f32, natural log, -inf and
// out = 0 for a query that sees no key; key_mask [B, Tk] f32 or null; causal top-left aligned), so
// the tc backward consumes its lse. Compiled only for sm_90a (kiln builds it when the device is
// sm_90); the general kernels stay the fallback everywhere else.
//
// Structure (FlashAttention-3's consumer loop without its producer warps):
//  - a block owns 128 query rows: 2 warpgroups x 64 rows, 256 threads;
//  - K and V stream through shared memory in 128-key tiles, double-buffered: every thread issues
//    cp.async copies of tile j + 1 while tile j is computed, one barrier per tile;
//  - S = Q K^T is one m64n128k16 wgmma per 16 dims, with Q and K read by descriptor from shared
//    memory (no ldmatrix, no register copies of the operands);
//  - the online softmax runs on the accumulator registers (attention_tile.cuh), P is re-packed to
//    16 bits in registers and O += P V is one m64nDk16 wgmma per 16 keys, A = P from registers and
//    B = V from shared memory, transposed by the descriptor;
//  - masks only on tiles that need them; a warpgroup skips a tile its causal rows cannot see;
//    causal blocks run longest first.
// Shared-memory tiles use the no-swizzle core-matrix layout of wgmma.cuh (wg_tile_offset), which
// the cp.async copies write with 16 consecutive threads on 256 contiguous bytes.
//
//   attention_fwd_wg_d{64,128}_{bf16,f16}(<the arguments of attention_fwd_tc>)
//     grid = (ceil(Tq / 128), B * H), block = 256,
//     dynamic smem = (128 + 4 * 128) * D * 2 bytes (80 KB at D = 64, 160 KB at D = 128: opt in
//     with cudaFuncSetAttribute(MaxDynamicSharedMemorySize)).
#include "common.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"
#include "attention_tile.cuh"

#define WG_THREADS 256
#define WG_BQ 128  // query rows per block: 2 warpgroups x 64

// Copies rows [row0, row0 + ROWS) of a [rows, D] 16-bit matrix into the wg_tile_offset layout
// (zero-filling rows past `rows`) with 16-byte cp.async copies; thread idx writes the chunk at
// element idx * 8, which is row (idx / 8 / (D / 8)) * 8 + idx % 8, columns ((idx / 8) % (D / 8)) * 8.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void wg_load_tile(T* dst, const T* src, int row0, int rows) {
    constexpr int CH = D / 8;
#pragma unroll
    for (int idx = threadIdx.x; idx < ROWS * CH; idx += WG_THREADS) {
        const int cm = idx >> 3, rb = cm / CH, ch = cm - rb * CH;
        const int gr = row0 + rb * 8 + (idx & 7);
        const bool ok = gr < rows;
        cp_async16(dst + idx * 8, src + (ok ? (i64)gr * D + ch * 8 : 0), ok);
    }
}

// OVERLAP (FlashAttention-3's intra-warpgroup overlap): tile j's S = Q K_j^T and the previous
// tile's O += P V run on the tensor cores together, and the softmax of tile j runs while P V is
// still computing; O is rescaled after P V completes. V runs one tile behind K, and P is held for
// one tile. Without OVERLAP each tile runs S, softmax, P V in turn.
// No wgmma sits under a condition that ptxas cannot prove uniform (it would serialize them, which
// tests/kernels_compile.rs rejects): with 128-key tiles and 128-row blocks every tile a causal
// block visits holds keys that both warpgroups see (the last one starts at or before q0), so there
// are no per-warpgroup skips, and the only branches around wgmma depend on Tk and blockIdx.
template <typename T, int D, int BK, bool OVERLAP>
__device__ void attention_fwd_wg(T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,
                                 int B, int H, int Tq, int Tk, float scale, int causal) {
    static_assert(BK == WG_BQ, "the causal schedule above needs key tiles as long as the block");
    constexpr int NT = BK / 8, DT = D / 8, KS = D / 16, PK = BK / 16, TILE = BK * D;
    constexpr u32 ROW_LBO = 128, ROW_SBO = 16 * D;  // K-major [rows, D] tile: k along D
    extern __shared__ float smem[];
    T* sQ = reinterpret_cast<T*>(smem);  // [128][D]
    T* sK = sQ + WG_BQ * D;               // two stages of [BK][D]
    T* sV = sK + 2 * TILE;                // two stages of [BK][D]
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int bh = blockIdx.y, b = bh / H;
    const int qblk = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int q0 = qblk * WG_BQ, r0 = q0 + 64 * wg;  // the block's and this warpgroup's first row
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;
    const float sl2 = scale * 1.4426950408889634f;
    const int k_end = causal ? min(Tk, q0 + WG_BQ) : Tk;
    const int tiles = (k_end + BK - 1) / BK;

    float m[2] = {-KILN_INF, -KILN_INF}, l[2] = {0.f, 0.f}, o[DT][4], s[NT][4], alpha[2];
    u32 pf[PK][4];
#pragma unroll
    for (int t = 0; t < DT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    // the accumulators as wgmma sees them: 64 x N per warpgroup, N / 2 registers per thread
    float(&s_acc)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(s);
    float(&o_acc)[DT * 4] = reinterpret_cast<float(&)[DT * 4]>(o);
    // S = Q K_j^T, operands from shared memory (committed by the caller)
    auto issue_s = [&](int j) {
        const T* kt = sK + (j & 1) * TILE;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
            wg_mma_ss(s_acc, wg_desc(sQ + wg_tile_offset<D>(64 * wg, 16 * ks), ROW_LBO, ROW_SBO),
                      wg_desc(kt + wg_tile_offset<D>(0, 16 * ks), ROW_LBO, ROW_SBO), ks > 0, T{});
    };
    // O += P V_j: P (64 x BK) as 16-bit A fragments from registers, V [BK, D] MN-major
    auto issue_pv = [&](int j) {
        const T* vt = sV + (j & 1) * TILE;
        wgmma_fence_operand(o_acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < PK; ++kk)
            wg_mma_rs_tb(o_acc, pf[kk], wg_desc(vt + wg_tile_offset<D>(16 * kk, 0), ROW_SBO, ROW_LBO), 1, T{});
    };
    auto softmax = [&](int j) {  // P_j = exp2(S - m) in s, m / l updated, alpha for O
        const int k0 = j * BK;
        const bool need_mask = key_mask != nullptr || k0 + BK > Tk || (causal && k0 + BK - 1 > r0);
        tc_softmax_stats<NT>(s, m, l, alpha, need_mask, key_mask, b, Tq, Tk, r0 + 16 * warp + g, k0, c, causal, sl2);
    };
    // Waits for this thread's copies, makes them visible to wgmma's operand reads, and for every
    // thread (the barrier also says every warpgroup is done with the previous step's buffers).
    auto tiles_landed = [&]() {
        cp_async_wait_all();
        fence_proxy_async_smem();
        __syncthreads();
    };
    // stage (j & 1) of K / V <- tile j, if it exists
    auto load_k = [&](int j) { if (j < tiles) wg_load_tile<T, D, BK>(sK + (j & 1) * TILE, kb, j * BK, Tk); };
    auto load_v = [&](int j) { if (j < tiles) wg_load_tile<T, D, BK>(sV + (j & 1) * TILE, vb, j * BK, Tk); };

    wg_load_tile<T, D, WG_BQ>(sQ, q + (i64)bh * Tq * D, q0, Tq);
    load_k(0);
    if (!OVERLAP) load_v(0);
    cp_async_commit();
    if (tiles > 0) {  // Tk > 0 (uniform)
        if constexpr (OVERLAP) {
            tiles_landed();  // Q, K_0
            load_k(1);
            load_v(0);
            cp_async_commit();
            issue_s(0);
            wgmma_commit();
            wgmma_wait<0>();
            wgmma_fence_operand(s_acc);
            softmax(0);  // alpha is 0 or 1 and O is 0: no rescale
            tc_pack_p<T, NT>(pf, s);
            for (int j = 1; j < tiles; ++j) {
                tiles_landed();  // K_j, V_{j-1}
                load_k(j + 1);
                load_v(j);
                cp_async_commit();
                issue_s(j);
                wgmma_commit();
                issue_pv(j - 1);
                wgmma_commit();
                wgmma_wait<1>();  // S_j done; P_{j-1} V_{j-1} may still run
                wgmma_fence_operand(s_acc);
                softmax(j);
                wgmma_wait<0>();  // P_{j-1} V_{j-1} done: its P and O are free
                wgmma_fence_operand(o_acc);
                tc_rescale<DT>(o, alpha);
                tc_pack_p<T, NT>(pf, s);
            }
            tiles_landed();  // V_{tiles-1}
            issue_pv(tiles - 1);
            wgmma_commit();
            wgmma_wait<0>();
            wgmma_fence_operand(o_acc);
        } else {
            for (int j = 0; j < tiles; ++j) {
                tiles_landed();  // K_j, V_j
                load_k(j + 1);
                load_v(j + 1);
                cp_async_commit();
                issue_s(j);
                wgmma_commit();
                wgmma_wait<0>();
                wgmma_fence_operand(s_acc);
                softmax(j);
                tc_rescale<DT>(o, alpha);
                tc_pack_p<T, NT>(pf, s);
                issue_pv(j);
                wgmma_commit();
                wgmma_wait<0>();
                wgmma_fence_operand(o_acc);
            }
        }
    }
    cp_async_wait_all();  // nothing may be in flight into shared memory when the block exits

    tc_store_rows<T, D>(out, lse, o, m, l, bh, Tq, r0 + 16 * warp + g, c);
}

#define ATT_WG_KERNEL(T, S, DIM)                                                                    \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)                                    \
        attention_fwd_wg_d##DIM##_##S(T* out, float* lse, const T* q, const T* k, const T* v,      \
                                      const float* key_mask, int B, int H, int Tq, int Tk, int D,  \
                                      float scale, int causal) {                                   \
        attention_fwd_wg<T, DIM, 128, true>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, scale,      \
                                            causal);                                               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)                                    \
        attention_fwd_wg_serial_d##DIM##_##S(T* out, float* lse, const T* q, const T* k,           \
                                             const T* v, const float* key_mask, int B, int H,      \
                                             int Tq, int Tk, int D, float scale, int causal) {     \
        attention_fwd_wg<T, DIM, 128, false>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, scale,     \
                                             causal);                                              \
    }
ATT_WG_KERNEL(bf16, bf16, 64)
ATT_WG_KERNEL(bf16, bf16, 128)
ATT_WG_KERNEL(f16, f16, 64)
ATT_WG_KERNEL(f16, f16, 128)
