// attention_wgmma.cu — Hopper (sm_90a) fused attention on wgmma, forward and backward: the `wg`
// variant of the tensor-core attention. Same contracts as attention_fwd_tc / _tc2 and
// attention_bwd_tc2 in attention_tc.cu (q [B, H, Tq, D], k / v [B, H, Tk, D], out [B, H, Tq, D]
// contiguous; lse [B, H, Tq] f32, natural log, -inf and out = 0 for a query that sees no key;
// key_mask [B, Tk] f32 or null; causal top-left aligned), so the kernels of both files can be
// mixed. Compiled only for sm_90a (kiln builds it when the device is sm_90); the general kernels
// stay the fallback everywhere else.
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
#include "attention_wg_fwd.cuh"

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
    constexpr int TILE = BK * D;
    constexpr u32 ROW_LBO = 128, ROW_SBO = 16 * D;  // K-major [rows, D] tile: k along D
    extern __shared__ float smem[];
    T* sQ = reinterpret_cast<T*>(smem);  // [128][D]
    T* sK = sQ + WG_BQ * D;               // two stages of [BK][D]
    T* sV = sK + 2 * TILE;                // two stages of [BK][D]
    const int wg = threadIdx.x >> 7;
    const int bh = blockIdx.y, b = bh / H;
    const int qblk = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int q0 = qblk * WG_BQ, r0 = q0 + 64 * wg;  // the block's and this warpgroup's first row
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;
    const int k_end = causal ? min(Tk, q0 + WG_BQ) : Tk;
    const int tiles = (k_end + BK - 1) / BK;

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
    // one barrier per tile: K_j (and V_{j-1}; without OVERLAP V_j) landed, and the next tiles'
    // copies start into the stages the previous step finished with
    auto ready_s = [&](int j) {
        tiles_landed();
        load_k(j + 1);
        load_v(OVERLAP ? j : j + 1);
        cp_async_commit();
    };
    auto ready_pv = [&](int, bool alone) { if (alone) tiles_landed(); };  // the last V
    wg_fwd_rows<T, D, BK, OVERLAP>(
        out, lse, key_mask, b, bh, Tq, Tk, scale, causal, r0, tiles,
        [&](int ks) { return wg_desc(sQ + wg_tile_offset<D>(64 * wg, 16 * ks), ROW_LBO, ROW_SBO); },
        [&](int j, int ks) { return wg_desc(sK + (j & 1) * TILE + wg_tile_offset<D>(0, 16 * ks), ROW_LBO, ROW_SBO); },
        [&](int j, int kk) { return wg_desc(sV + (j & 1) * TILE + wg_tile_offset<D>(16 * kk, 0), ROW_SBO, ROW_LBO); },
        ready_s, ready_pv, WgNoHook{}, WgNoHook{}, WgNoHook{});
    cp_async_wait_all();  // nothing may be in flight into shared memory when the block exits
}

// ---------------------------------------------------------------------------------------------
// attention_bwd_wg: the backward on wgmma, one pass over the queries per 128-key block (the
// structure of attention_bwd_tc2: dK and dV stay in registers, dQ is added into an f32 buffer with
// atomics and then scaled and converted by attention_tc.cu's attention_bwd_dq_convert, so dQ's last
// bits depend on the order the atomics land in). Warpgroup w owns keys k0 + 64 w .. + 63; 64-query
// tiles of Q and dO (with their lse and delta) stream through two stages. Per tile:
//   S^T = K Q^T and dP^T = V dO^T        (m64n64k16, both operands by descriptor, K-major)
//   P^T = exp2(S^T scale log2 e - lse2), dS^T = P^T (dP^T - delta)   (registers)
//   dV += P^T dO, dK += dS^T Q          (m64nDk16, A from registers, B MN-major)
//   dS^T staged in shared memory; dQ (64 queries x D) = dS K, each warpgroup D / 2 columns
//                                        (m64n{D/2}k16, A = dS MN-major, B = K MN-major)
//   attention_bwd_wg_d{64,128}_{bf16,f16}(float* dq_accum, T* dk, T* dv, <the arguments of
//       attention_bwd_tc2 after dv>)   dq_accum [B, H, Tq, D] f32 zeroed first;
//     grid = (ceil(Tk / 128), B * H), block = 256,
//     dynamic smem = (512 D + 128 * 64) * 2 + 4 * 64 * 4 bytes (81 KB at D = 64, 145 KB at
//     D = 128: opt in with cudaFuncSetAttribute(MaxDynamicSharedMemorySize)).
#define WG_BKEY 128  // keys per block (64 per warpgroup)
#define WG_BQT 64    // queries per streamed tile

template <typename T, int D>
__device__ void attention_bwd_wg(float* dq_accum, T* dk, T* dv, const float* lse, const float* delta, const T* q,
                                 const T* k, const T* v, const T* dout, const float* key_mask, int H, int Tq,
                                 int Tk, float scale, int causal) {
    constexpr int NT = WG_BQT / 8, DT = D / 8, KS = D / 16, QK = WG_BQT / 16, DH = D / 2, QTILE = WG_BQT * D;
    constexpr u32 ROW_LBO = 128, ROW_SBO = 16 * D;        // K-major [rows, D] tiles
    constexpr u32 DS_LBO = 16 * WG_BQT, DS_SBO = 128;     // dS^T [keys][64 queries] read as MN-major dS
    extern __shared__ float smem[];
    T* sK = reinterpret_cast<T*>(smem);  // [128][D]
    T* sV = sK + WG_BKEY * D;             // [128][D]
    T* sQ = sV + WG_BKEY * D;             // two stages of [64][D]
    T* sO = sQ + 2 * QTILE;               // two stages of [64][D]: dO
    T* sS = sO + 2 * QTILE;               // [128][64]: dS^T of the tile
    float* sL = reinterpret_cast<float*>(sS + WG_BKEY * WG_BQT);  // two stages of [64]: lse2
    float* sD = sL + 2 * WG_BQT;                                   // two stages of [64]: delta
    const int wg = threadIdx.x >> 7, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int bh = blockIdx.y, b = bh / H;
    const int k0 = blockIdx.x * WG_BKEY, jl = 64 * wg + 16 * warp + g, j0 = k0 + jl;  // this thread's keys: j0, j0 + 8
    const float sl2 = scale * 1.4426950408889634f;
    const T* qb = q + (i64)bh * Tq * D;
    const T* ob = dout + (i64)bh * Tq * D;
    // causal (top-left): queries before k0 see none of this block's keys
    const int i_start = causal ? (k0 / WG_BQT) * WG_BQT : 0;
    const int tiles = Tq > i_start ? (Tq - i_start + WG_BQT - 1) / WG_BQT : 0;

    float dka[DT][4], dva[DT][4], s[NT][4], dp[NT][4], dqa[DH / 8][4];
#pragma unroll
    for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[t][e] = dva[t][e] = 0.f;
    float(&dk_acc)[DT * 4] = reinterpret_cast<float(&)[DT * 4]>(dka);
    float(&dv_acc)[DT * 4] = reinterpret_cast<float(&)[DT * 4]>(dva);
    float(&s_acc)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(s);
    float(&dp_acc)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(dp);
    float(&dq_acc)[DH / 2] = reinterpret_cast<float(&)[DH / 2]>(dqa);
    u32 pp[QK][4], pds[QK][4];  // P^T and dS^T as 16-bit A fragments

    // stage (i & 1) <- query tile i: Q, dO (cp.async) and lse2, delta (plain stores)
    auto load_q = [&](int i) {
        const int qt = i_start + i * WG_BQT, st = i & 1;
        wg_load_tile<T, D, WG_BQT>(sQ + st * QTILE, qb, qt, Tq);
        wg_load_tile<T, D, WG_BQT>(sO + st * QTILE, ob, qt, Tq);
        if (threadIdx.x < WG_BQT) {
            const int qi = qt + threadIdx.x;
            sL[st * WG_BQT + threadIdx.x] = qi < Tq ? tc_lse2(lse[(i64)bh * Tq + qi]) : KILN_INF;
            sD[st * WG_BQT + threadIdx.x] = qi < Tq ? delta[(i64)bh * Tq + qi] : 0.f;
        }
    };
    wg_load_tile<T, D, WG_BKEY>(sK, k + (i64)bh * Tk * D, k0, Tk);
    wg_load_tile<T, D, WG_BKEY>(sV, v + (i64)bh * Tk * D, k0, Tk);
    if (tiles > 0) load_q(0);
    cp_async_commit();

    for (int i = 0; i < tiles; ++i) {
        const int qt = i_start + i * WG_BQT, st = i & 1;
        const T* sQt = sQ + st * QTILE;
        const T* sOt = sO + st * QTILE;
        cp_async_wait_all();       // this thread's copies of tile i (and K, V) landed ...
        fence_proxy_async_smem();  // ... are visible to wgmma's operand reads ...
        __syncthreads();           // ... for every thread; tile i - 1 (its stage and dS^T) is done
        if (i + 1 < tiles) load_q(i + 1);
        cp_async_commit();

        // S^T = K Q^T, dP^T = V dO^T (64 keys x 64 queries per warpgroup)
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
            wg_mma_ss(s_acc, wg_desc(sK + wg_tile_offset<D>(64 * wg, 16 * ks), ROW_LBO, ROW_SBO),
                      wg_desc(sQt + wg_tile_offset<D>(0, 16 * ks), ROW_LBO, ROW_SBO), ks > 0, T{});
#pragma unroll
        for (int ks = 0; ks < KS; ++ks)
            wg_mma_ss(dp_acc, wg_desc(sV + wg_tile_offset<D>(64 * wg, 16 * ks), ROW_LBO, ROW_SBO),
                      wg_desc(sOt + wg_tile_offset<D>(0, 16 * ks), ROW_LBO, ROW_SBO), ks > 0, T{});
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(s_acc);
        wgmma_fence_operand(dp_acc);

        // P^T and dS^T: element e of n-tile t is key j0 + 8 (e / 2), query qt + 8 t + 2 c + e % 2
        const bool need_mask = key_mask != nullptr || qt + WG_BQT > Tq || k0 + WG_BKEY > Tk || (causal && qt < k0 + WG_BKEY);
        tc_bwd_pt_dst<NT>(s, dp, need_mask, key_mask, b, Tq, Tk, qt, j0, c, causal, sl2, sL + st * WG_BQT, sD + st * WG_BQT);
        tc_pack_p<T, NT>(pp, s);
        tc_pack_p<T, NT>(pds, dp);

        // dV += P^T dO, dK += dS^T Q (B: the query tile read MN-major)
        wgmma_fence_operand(dv_acc);
        wgmma_fence_operand(dk_acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < QK; ++kk)
            wg_mma_rs_tb(dv_acc, pp[kk], wg_desc(sOt + wg_tile_offset<D>(16 * kk, 0), ROW_SBO, ROW_LBO), 1, T{});
#pragma unroll
        for (int kk = 0; kk < QK; ++kk)
            wg_mma_rs_tb(dk_acc, pds[kk], wg_desc(sQt + wg_tile_offset<D>(16 * kk, 0), ROW_SBO, ROW_LBO), 1, T{});
        wgmma_commit();
        // stage dS^T (the fragments just packed) for the dQ product, meanwhile
#pragma unroll
        for (int kk = 0; kk < QK; ++kk)
#pragma unroll
            for (int h = 0; h < 4; ++h)  // fragment register h: key row + 8 (h & 1), query column + 8 (h >> 1)
                *reinterpret_cast<u32*>(sS + wg_tile_offset<WG_BQT>(jl + 8 * (h & 1), 16 * kk + 8 * (h >> 1) + 2 * c)) = pds[kk][h];
        fence_proxy_async_smem();
        wgmma_wait<0>();
        wgmma_fence_operand(dv_acc);
        wgmma_fence_operand(dk_acc);
        __syncthreads();  // every warpgroup's dS^T rows are staged

        // dQ (64 queries x this warpgroup's D / 2 columns) = dS (64 x 128 keys) K (128 x D)
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < WG_BKEY / 16; ++kk)
            wg_mma_ss_tt(dq_acc, wg_desc(sS + wg_tile_offset<WG_BQT>(16 * kk, 0), DS_LBO, DS_SBO),
                         wg_desc(sK + wg_tile_offset<D>(16 * kk, wg * DH), ROW_SBO, ROW_LBO), kk > 0, T{});
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_fence_operand(dq_acc);
        float* dqb = dq_accum + (i64)bh * Tq * D + wg * DH;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int qi = qt + 16 * warp + g + 8 * r;
            if (qi >= Tq) continue;
#pragma unroll
            for (int t = 0; t < DH / 8; ++t) {
                red_add_f32(dqb + (i64)qi * D + 8 * t + 2 * c, dqa[t][2 * r]);
                red_add_f32(dqb + (i64)qi * D + 8 * t + 2 * c + 1, dqa[t][2 * r + 1]);
            }
        }
    }
    cp_async_wait_all();  // the K / V copies, when no query tile ran
    tc_store_dkdv<T, D>(dk, dv, dka, dva, bh, Tk, j0, c, scale);
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
// ---------------------------------------------------------------------------------------------
// wgmma_probe_bf16: a diagnostic for the operand layouts above, one warpgroup, one instruction
// sequence: d [64, 64] f32 = a [64, 16] b [16, 64] (bf16, row-major in global memory), with the
// operands staged exactly as the attention kernels stage theirs:
//   mode 0: wg_mma_ss, A and B K-major (as Q and K in S = Q K^T; B staged as b^T [64][16])
//   mode 1: wg_mma_rs_tb, A from registers, B MN-major (as P and V in O += P V; b as [16][64])
//   mode 2: wg_mma_ss_tt, A and B MN-major (as dS^T and K in dQ = dS K; a staged as a^T [16][64])
//   mode 3: as mode 0 through SWIZZLE_128B descriptors, rows of 128 bytes in the TMA box layout
//           (as Q and K in attention_tma.cu's S = Q K^T)
//   mode 4: as mode 1 with B MN-major through a SWIZZLE_128B descriptor (as V in attention_tma.cu)
// If an attention kernel is wrong on a GPU, tests/gpu_ops.rs's `wgmma_operand_layouts` says which
// form is misread. grid = 1, block = 128, dynamic smem 17 KB (two 8 KB tiles, 1 KB to align them).
extern "C" __global__ void __launch_bounds__(128) wgmma_probe_bf16(float* d, const bf16* a, const bf16* b, int mode) {
    extern __shared__ float smem[];
    char* base = reinterpret_cast<char*>(smem) + ((1024u - (smem_addr(smem) & 1023u)) & 1023u);
    bf16* sA = reinterpret_cast<bf16*>(base);         // 8 KB (2 KB in modes 0-2)
    bf16* sB = reinterpret_cast<bf16*>(base + 8192);  // 8 KB (2 KB in modes 0-2)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    // element (row, col) of a 128-byte-swizzled tile of 64-element rows, as a TMA box lands
    auto sw = [](int row, int col) { return (row * 64 + col) ^ ((row & 7) << 3); };
    for (int i = threadIdx.x; i < 64 * 16; i += 128) {
        const int m = i / 16, kk = i % 16;  // a[m][kk]; b viewed as [kk][n] with the same i split
        const int bk = i / 64, bn = i % 64;
        if (mode == 2) sA[wg_tile_offset<64>(kk, m)] = a[i];  // a^T [16][64]
        else if (mode == 3) sA[sw(m, kk)] = a[i];             // a [64][16], 128-byte rows
        else sA[wg_tile_offset<16>(m, kk)] = a[i];            // a [64][16]
        if (mode == 0) sB[wg_tile_offset<16>(bn, bk)] = b[i];  // b^T [64][16]
        else if (mode == 3) sB[sw(bn, bk)] = b[i];             // b^T [64][16], 128-byte rows
        else if (mode == 4) sB[sw(bk, bn)] = b[i];             // b [16][64], 128-byte rows
        else sB[wg_tile_offset<64>(bk, bn)] = b[i];            // b [16][64]
    }
    fence_proxy_async_smem();
    __syncthreads();
    float acc[8][4];
    float(&dacc)[32] = reinterpret_cast<float(&)[32]>(acc);
    wgmma_fence();
    if (mode == 0) {
        wg_mma_ss(dacc, wg_desc(sA, 128, 256), wg_desc(sB, 128, 256), 0, bf16{});
    } else if (mode == 3) {
        wg_mma_ss(dacc, wg_desc_sw128(sA, 16, 1024), wg_desc_sw128(sB, 16, 1024), 0, bf16{});
    } else if (mode == 1 || mode == 4) {
        u32 af[4];
#pragma unroll
        for (int h = 0; h < 4; ++h) {  // fragment register h: row + 8 (h & 1), column + 8 (h >> 1)
            const bf16* p = a + (16 * warp + g + 8 * (h & 1)) * 16 + 8 * (h >> 1) + 2 * c;
            af[h] = (u32)p[0].bits | ((u32)p[1].bits << 16);
        }
        if (mode == 1) wg_mma_rs_tb(dacc, af, wg_desc(sB, 1024, 128), 0, bf16{});
        else wg_mma_rs_tb(dacc, af, wg_desc_sw128(sB, 8192, 1024), 0, bf16{});
    } else {
        wg_mma_ss_tt(dacc, wg_desc(sA, 1024, 128), wg_desc(sB, 1024, 128), 0, bf16{});
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operand(dacc);
#pragma unroll
    for (int t = 0; t < 8; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) d[(16 * warp + g + 8 * (e >> 1)) * 64 + 8 * t + 2 * c + (e & 1)] = acc[t][e];
}

#define ATT_WG_BWD_KERNEL(T, S, DIM)                                                                \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) attention_bwd_wg_d##DIM##_##S(     \
        float* dq_accum, T* dk, T* dv, const float* lse, const float* delta, const T* q,           \
        const T* k, const T* v, const T* dout, const float* key_mask, int B, int H, int Tq,        \
        int Tk, int D, float scale, int causal) {                                                  \
        attention_bwd_wg<T, DIM>(dq_accum, dk, dv, lse, delta, q, k, v, dout, key_mask, H, Tq, Tk, \
                                 scale, causal);                                                   \
    }
ATT_WG_BWD_KERNEL(bf16, bf16, 64)
ATT_WG_BWD_KERNEL(bf16, bf16, 128)
ATT_WG_BWD_KERNEL(f16, f16, 64)
ATT_WG_BWD_KERNEL(f16, f16, 128)
ATT_WG_KERNEL(bf16, bf16, 64)
ATT_WG_KERNEL(bf16, bf16, 128)
ATT_WG_KERNEL(f16, f16, 64)
ATT_WG_KERNEL(f16, f16, 128)
