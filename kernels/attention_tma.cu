// attention_tma.cu — Hopper (sm_90a) fused attention forward with FlashAttention-3's producer /
// consumer structure: the `wgtma` variant. Same contract as attention_fwd_wg (attention_wgmma.cu),
// except that q, k and v arrive as TMA tensor maps instead of pointers, so the kernels of both
// files can be mixed (its backward is attention_bwd_wg).
//
// Structure:
//  - 384 threads: warpgroup 0 is the producer, warpgroups 1 and 2 the consumers (64 query rows
//    each, 128 per block). The producer gives its registers away (setmaxnreg 24) and one of its
//    threads issues every copy; the consumers take them (setmaxnreg 240) and never load anything.
//  - Q (128 rows), then K and V in 128-key tiles, arrive by TMA (tma.cuh) with the 128-byte swizzle,
//    two stages each, V one tile behind K. Each stage has a "full" barrier (the copy engine
//    completes it) and an "empty" barrier (all 256 consumer threads arrive once their wgmmas have
//    read it), so there is no __syncthreads in the loop.
//  - The consumers' loop is attention_fwd_wg's: S_j = Q K_j^T (SS wgmma, both K-major through
//    SWIZZLE_128B descriptors) issued together with O += P_{j-1} V_{j-1} (A from registers, V
//    MN-major), the softmax of tile j while P V runs, then the rescale of O.
//  - Causal blocks run longest first and stop at the diagonal tile; masks only where needed.
//
//   attention_fwd_wgtma_d{64,128}_{bf16,f16}(T* out, float* lse, TmaMap q, TmaMap k, TmaMap v,
//       const float* key_mask, int B, int H, int Tq, int Tk, int D, float scale, int causal)
//     q: a 3-D map over [B * H, Tq, D] (innermost first: D, Tq, B * H), box 64 x 128 x 1,
//     SWIZZLE_128B, zero fill; k and v the same over [B * H, Tk, D].
//     grid = (ceil(Tq / 128), B * H), block = 384,
//     dynamic smem = 5 * 128 * D * 2 + 72 + 1024 bytes (the 1024 align the swizzled tiles).
#include "common.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"
#include "tma.cuh"
#include "attention_wg_fwd.cuh"

#define WGTMA_THREADS 384
#define WGTMA_BQ 128  // query rows per block: 2 consumer warpgroups x 64
#define WGTMA_BK 128  // keys per K / V tile

// PINGPONG (FlashAttention-3's inter-warpgroup overlap): the two consumer warpgroups take turns
// issuing their wgmmas (named barriers 1 and 2 pass the turn), so that one warpgroup's softmax runs
// while the other's GEMMs occupy the tensor cores. Consumer 1 gives consumer 0 the first turn; the
// last turn it passes is never taken (a pending arrival when the block exits, as in FA3).
template <typename T, int D, bool PINGPONG>
__device__ void attention_fwd_wgtma(T* out, float* lse, const TmaMap* tq, const TmaMap* tk, const TmaMap* tv,
                                    const float* key_mask, int B, int H, int Tq, int Tk, float scale, int causal) {
    constexpr int BK = WGTMA_BK, SUB = D / 64;
    constexpr u32 SUBTILE = 128 * 128;    // bytes of 128 rows x 64 columns (one TMA box)
    constexpr u32 TILE = SUB * SUBTILE;   // bytes of a 128-row tile
    constexpr u32 SW_SBO = 1024;          // 8 rows of 128 bytes: one swizzle atom
    extern __shared__ float smem[];
    char* base = reinterpret_cast<char*>(smem) + ((1024u - (smem_addr(smem) & 1023u)) & 1023u);
    char* sQ = base;
    char* sK = sQ + TILE;      // two stages
    char* sV = sK + 2 * TILE;  // two stages
    u64* bars = reinterpret_cast<u64*>(sV + 2 * TILE);
    u64 *full_q = bars, *full_k = bars + 1, *full_v = bars + 3, *empty_k = bars + 5, *empty_v = bars + 7;

    const int bh = blockIdx.y, b = bh / H;
    const int qblk = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int q0 = qblk * WGTMA_BQ;
    const int k_end = causal ? min(Tk, q0 + WGTMA_BQ) : Tk;
    const int tiles = (k_end + BK - 1) / BK;
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x >> 7, 0);  // warp-uniform, as wgmma needs

    if (threadIdx.x == 0) {
        mbar_init(full_q, 1);
        for (int s = 0; s < 2; ++s) {
            mbar_init(full_k + s, 1);
            mbar_init(full_v + s, 1);
            mbar_init(empty_k + s, 2 * 128);
            mbar_init(empty_v + s, 2 * 128);
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {  // the producer
        setmaxnreg_dec<24>();
        if (threadIdx.x == 0 && tiles > 0) {
            mbar_arrive_expect_tx(full_q, TILE);
#pragma unroll
            for (int s = 0; s < SUB; ++s) tma_load_3d(sQ + s * SUBTILE, tq, 64 * s, q0, bh, full_q);
            // tile j into stage j & 1, once the consumers released tile j - 2 from it
            auto load = [&](const TmaMap* map, char* stages, u64* full, u64* empty, int j) {
                const int st = j & 1;
                if (j >= 2) mbar_wait(empty + st, ((j >> 1) - 1) & 1);
                mbar_arrive_expect_tx(full + st, TILE);
#pragma unroll
                for (int s = 0; s < SUB; ++s) tma_load_3d(stages + st * TILE + s * SUBTILE, map, 64 * s, j * BK, bh, full + st);
            };
            load(tk, sK, full_k, empty_k, 0);
            for (int j = 1; j <= tiles; ++j) {  // in the order the consumers need them: K_j, V_{j-1}
                if (j < tiles) load(tk, sK, full_k, empty_k, j);
                load(tv, sV, full_v, empty_v, j - 1);
            }
        }
    } else {  // the consumers
        setmaxnreg_inc<240>();
        const int cw = wg - 1;
        // this warpgroup's turn to issue wgmmas, and passing it on
        auto my_turn = [&]() { if constexpr (PINGPONG) named_bar_sync(1 + cw, 256); };
        if (PINGPONG && cw == 1 && tiles > 0) named_bar_arrive(1, 256);  // consumer 0 goes first
        auto wait_v = [&](int j) { mbar_wait(full_v + (j & 1), (j >> 1) & 1); };
        auto ready_s = [&](int j) {
            if (j == 0) mbar_wait(full_q, 0);
            mbar_wait(full_k + (j & 1), (j >> 1) & 1);
            // with turns, both tiles must be in before the turn is taken; without, S_j may start
            // while V_{j-1} (requested after K_j) lands
            if (PINGPONG && j > 0) wait_v(j - 1);
            my_turn();
        };
        auto ready_pv = [&](int j, bool alone) {
            if (alone || !PINGPONG) wait_v(j);
            if (alone) my_turn();
        };
        // S = Q K_j^T: 16 dims per wgmma, stepping 32 bytes inside a swizzle atom's rows; O += P V_j:
        // 16 keys (two atoms of 8 rows) per wgmma, V MN-major, the 64-column halves of D = 128 one
        // box apart
        auto dim_off = [](int ks) { return (u32)((ks >> 2) * SUBTILE + (ks & 3) * 32); };
        wg_fwd_rows<T, D, BK, true>(
            out, lse, key_mask, b, bh, Tq, Tk, scale, causal, q0 + 64 * cw, tiles,
            [&](int ks) { return wg_desc_sw128(sQ + dim_off(ks) + cw * 64 * 128, 16, SW_SBO); },
            [&](int j, int ks) { return wg_desc_sw128(sK + (j & 1) * TILE + dim_off(ks), 16, SW_SBO); },
            [&](int j, int kk) { return wg_desc_sw128(sV + (j & 1) * TILE + kk * 16 * 128, SUBTILE, SW_SBO); },
            ready_s, ready_pv,
            [&]() { if constexpr (PINGPONG) named_bar_arrive(2 - cw, 256); },  // the other's turn
            [&](int j) { mbar_arrive(empty_k + (j & 1)); },
            [&](int j) { mbar_arrive(empty_v + (j & 1)); });
    }
}

#define ATT_WGTMA_KERNEL(T, S, DIM)                                                                 \
    extern "C" __global__ void __launch_bounds__(WGTMA_THREADS, 1) attention_fwd_wgtma_d##DIM##_##S( \
        T* out, float* lse, const __grid_constant__ TmaMap q, const __grid_constant__ TmaMap k,     \
        const __grid_constant__ TmaMap v, const float* key_mask, int B, int H, int Tq, int Tk, int D, \
        float scale, int causal) {                                                                 \
        attention_fwd_wgtma<T, DIM, false>(out, lse, &q, &k, &v, key_mask, B, H, Tq, Tk, scale, causal); \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(WGTMA_THREADS, 1) attention_fwd_wgtma_pp_d##DIM##_##S( \
        T* out, float* lse, const __grid_constant__ TmaMap q, const __grid_constant__ TmaMap k,     \
        const __grid_constant__ TmaMap v, const float* key_mask, int B, int H, int Tq, int Tk, int D, \
        float scale, int causal) {                                                                 \
        attention_fwd_wgtma<T, DIM, true>(out, lse, &q, &k, &v, key_mask, B, H, Tq, Tk, scale, causal); \
    }
ATT_WGTMA_KERNEL(bf16, bf16, 64)
ATT_WGTMA_KERNEL(bf16, bf16, 128)
ATT_WGTMA_KERNEL(f16, f16, 64)
ATT_WGTMA_KERNEL(f16, f16, 128)
