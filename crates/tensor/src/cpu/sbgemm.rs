//! bf16 GEMM on CPUs with AVX512_BF16: `C = A·B` from bf16 operands with f32 accumulation
//! (`vdpbf16ps`), C written as f32 or bf16 (rounded once, to nearest even, from the f32 sum).
//!
//! `vdpbf16ps` multiplies the bf16 pairs of two registers lane by lane (each 32-bit lane holds two
//! consecutive steps of k) and adds both products to the f32 lane of the accumulator; a bf16 × bf16
//! product is exact in f32, so each element of C is an f32 sum of exact products, the same
//! arithmetic as widening the operands to f32 and multiplying there, in another order (and with
//! denormals flushed, as the instruction does). Packing, both in k pairs (k padded to even):
//!
//! * B: 32-column panels, all of k deep, `panel[p2·32 + j]` = the u32 pair (B[2·p2][j], B[2·p2+1][j]);
//!   packed once per call by all threads together (a row-major B interleaves two rows; a transposed
//!   B, whose pairs are contiguous, goes through 8 × 8 transposes of 32-bit lanes);
//! * A: each task packs its rows into 12-row strips per block of `KC` steps of k,
//!   `strip[p2·12 + i]` = the pair (A[i][2·p2], A[i][2·p2+1]).
//!
//! Register block: 12 rows × 32 columns = 24 zmm accumulators; per pair of k steps two loads of B,
//! 12 broadcasts of A and 24 `vdpbf16ps` (twice the multiply-adds of an f32 FMA per instruction).
//! Tasks are those of the f32 blocked GEMM (`sgemm.rs`): `MC` rows of A × a group of panels, each
//! running all of k so its tile of C stays in its core's L2; with a bf16 C the task sums into an f32
//! tile and rounds it once at the end. Every element's sum is the same sequence of operations
//! whatever the thread count.
use super::gemm::Bf16Out as OutElem;
use super::gemm256::transpose8;
use half::bf16;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows per register block (and per packed strip of A).
const MR: usize = 12;
/// Columns per panel (two zmm vectors of 16 f32 lanes).
const NR: usize = 32;
/// Steps of k per block (even: blocks start on a pair); a panel block is KC/2 · 32 · 4 = 16 KB.
const KC: usize = 256;
/// Rows of A per task (a multiple of MR): 72 KB of packed A per block of k.
const MC: usize = 144;
/// u32 pairs of packed B per block of columns (8 MB).
const B_PAIRS: usize = 1 << 21;

/// True when this CPU can run the kernel (detected, whatever is forced).
pub(crate) fn detected() -> bool {
    std::is_x86_feature_detected!("avx512bf16")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}

/// True when [`round_row`] may run: AVX-512 F/BW/VL detected and the SIMD level not forced below
/// AVX-512.
pub(crate) fn round_available() -> bool {
    super::simd::level() >= super::simd::Level::Avx512 && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl")
}

#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// The calling thread's packed B (grown, never shrunk: at most B_PAIRS + 16).
    static BPACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A task's packed strips of A for one block of k.
    static APACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A task's f32 tile of C when C is bf16.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `C = A·B` with `A[i][p] = a[i·rsa + p·csa]`, `B[p][j] = b[p·rsb + j·csb]`, `C[i][j] =
/// c[i·ldc + j]`; every element of C is written, none is read. `parallel`: split across rayon's
/// threads.
///
/// # Safety
/// [`detected`]; every addressed element of A and B (when k > 0) and of C is in bounds; C's rows do
/// not overlap (`ldc ≥ n` or m ≤ 1) and C does not alias A or B.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sbgemm<O: OutElem>(m: usize, k: usize, n: usize, a: *const bf16, rsa: isize, csa: isize, b: *const bf16, rsb: isize, csb: isize, c: *mut O, ldc: usize, parallel: bool) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // all-zero bits are 0.0 in f32 and bf16
            std::ptr::write_bytes(c.add(i * ldc), 0, n);
        }
        return;
    }
    let nt = if parallel { rayon::current_num_threads() } else { 1 };
    let (a, b, c) = (Ptr(a as *mut u16), Ptr(b as *mut u16), Ptr(c));
    let kp = k.div_ceil(2);
    let mut buf = BPACK.with_borrow_mut(std::mem::take);
    let nc_blk = (B_PAIRS / kp / NR).max(1) * NR;
    for jc in (0..n).step_by(nc_blk) {
        let nc = nc_blk.min(n - jc);
        let np = nc.div_ceil(NR);
        let pstride = kp * NR;
        buf.resize(np * pstride + 16, 0);
        let skip = buf.as_ptr().align_offset(64).min(16);
        let bb = Ptr(b.get().offset(jc as isize * csb));
        let pack = |(jp, dst): (usize, &mut [u32])| {
            // SAFETY: panel jp covers columns jc + 32·jp .. (at most 32) and all k rows of B
            unsafe { pack_pairs::<NR>(NR.min(nc - jp * NR), k, bb.get().offset((jp * NR) as isize * csb), csb, rsb, dst.as_mut_ptr()) }
        };
        let packed = &mut buf[skip..skip + np * pstride];
        if nt > 1 && np > 1 {
            packed.par_chunks_mut(pstride).enumerate().for_each(pack);
        } else {
            packed.chunks_mut(pstride).enumerate().for_each(pack);
        }
        let panels = Ptr(packed.as_ptr() as *mut u32);
        let strips = m.div_ceil(MR);
        let rb = (nt * strips.div_ceil(nt * (MC / MR))).min(strips);
        let groups = if rb >= 2 * nt { 1 } else { (2 * nt).div_ceil(rb).min(np) };
        let task = |t: usize| {
            let (r, g) = (t / groups, t % groups);
            let (i0, i1) = ((r * strips / rb) * MR, ((r + 1) * strips / rb * MR).min(m));
            let (jp0, jp1) = (g * np / groups, (g + 1) * np / groups);
            let cols = (jp1 * NR).min(nc) - jp0 * NR;
            let rows = i1 - i0;
            let c0 = unsafe { c.get().add(i0 * ldc + jc + jp0 * NR) };
            let run = |dst: *mut f32, ld: usize| {
                for pc in (0..k).step_by(KC) {
                    // SAFETY: rows i0..i1 of A, the task's panels from pair pc/2 on, and the task's
                    // tile of `dst` (in bounds: the caller's C or a tile of rows × cols)
                    unsafe {
                        let a0 = a.get().offset(i0 as isize * rsa + pc as isize * csa);
                        let bp = panels.get().add(jp0 * pstride + pc / 2 * NR);
                        run_task(rows, cols, KC.min(k - pc), a0, rsa, csa, bp, pstride, pc > 0, dst, ld);
                    }
                }
            };
            if O::BF16 {
                TILE.with_borrow_mut(|tile| {
                    tile.resize(rows * cols, 0.0);
                    run(tile.as_mut_ptr(), cols);
                    for i in 0..rows {
                        // SAFETY: row i of the task's tile of C (bf16, cols elements)
                        unsafe { round_row(tile.as_ptr().add(i * cols), c0.add(i * ldc) as *mut u16, cols) };
                    }
                });
            } else {
                run(c0 as *mut f32, ldc);
            }
        };
        if nt > 1 && rb * groups > 1 {
            (0..rb * groups).into_par_iter().for_each(task);
        } else {
            (0..rb * groups).for_each(task);
        }
    }
    BPACK.with_borrow_mut(|slot| {
        if slot.capacity() < buf.capacity() {
            *slot = buf;
        }
    });
}

/// Packs `lines` ≤ W lines of `X[l][p] = x[l·ls + p·ks]` (p < k) in k pairs: `dst[p2·W + l]` = the
/// u32 whose low half is X[l][2·p2] and high half X[l][2·p2 + 1] (0 past k), zeros for lines ≥
/// `lines`. Pairs contiguous in memory (`ks == 1`: a row-major A, a transposed B) go through 8 × 8
/// transposes of 32-bit lanes; lines contiguous (`ls == 1`) are interleaved 16 at a time.
///
/// # Safety
/// avx512f/bw/vl + avx2; X's lines × k elements in bounds; `dst` holds ceil(k/2)·W u32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pack_pairs<const W: usize>(lines: usize, k: usize, x: *const u16, ls: isize, ks: isize, dst: *mut u32) {
    let kp = k.div_ceil(2);
    let get = |l: usize, p: usize| -> u32 { if l < lines && p < k { *x.offset(l as isize * ls + p as isize * ks) as u32 } else { 0 } };
    let mut p2 = 0;
    if ks == 1 && ls != 1 {
        // 8 pairs (16 steps of k) of 8 lines at a time, as 8 × 8 floats (bits only: shuffles)
        let z = _mm256_setzero_ps();
        while 2 * (p2 + 8) <= k {
            for l0 in (0..W).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|i| if l0 + i < lines { _mm256_loadu_ps(x.offset((l0 + i) as isize * ls + 2 * p2 as isize) as *const f32) } else { z });
                for (q, v) in transpose8(r).iter().enumerate() {
                    let o = dst.add((p2 + q) * W + l0) as *mut f32;
                    if W - l0 >= 8 {
                        _mm256_storeu_ps(o, *v);
                    } else {
                        // W = 12: the last group holds 4 lines; a wider store would reach the next pair
                        _mm_storeu_ps(o, _mm256_castps256_ps128(*v));
                    }
                }
            }
            p2 += 8;
        }
    } else if ls == 1 {
        // per pair, two runs of lines: zero-extend both to 32 bits, the odd step shifted up
        while p2 < kp {
            let r0 = x.offset(2 * p2 as isize * ks);
            let has1 = 2 * p2 + 1 < k;
            let r1 = x.offset((2 * p2 + 1) as isize * ks);
            for l0 in (0..W).step_by(16) {
                let cnt = lines.saturating_sub(l0).min(16);
                let mask: __mmask16 = if cnt >= 16 { 0xFFFF } else { ((1u32 << cnt) - 1) as __mmask16 };
                let lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, r0.add(l0) as *const i16));
                let hi = if has1 { _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, r1.add(l0) as *const i16)) } else { _mm512_setzero_si512() };
                let wm: __mmask16 = if W - l0 >= 16 { 0xFFFF } else { ((1u32 << (W - l0)) - 1) as __mmask16 };
                _mm512_mask_storeu_epi32(dst.add(p2 * W + l0) as *mut i32, wm, _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi)));
            }
            p2 += 1;
        }
        return;
    }
    for p2 in p2..kp {
        for l in 0..W {
            *dst.add(p2 * W + l) = get(l, 2 * p2) | (get(l, 2 * p2 + 1) << 16);
        }
    }
}

/// One task's block of k: its `rows` of A (`kc` steps from `a`) packed into 12-row strips, then
/// every 32-column panel swept by the register block, strip by strip (the panel's block stays in
/// L1 while the strips pass over it). `acc`: add to C instead of overwriting it.
///
/// # Safety
/// As for [`sbgemm`], restricted to the task's rows and columns; `panels` at the block's first pair.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
unsafe fn run_task(rows: usize, cols: usize, kc: usize, a: *const u16, rsa: isize, csa: isize, panels: *const u32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
    let kp = kc.div_ceil(2);
    APACK.with_borrow_mut(|buf| {
        let strips = rows.div_ceil(MR);
        buf.resize(strips * MR * kp + 16, 0);
        let d = buf.as_mut_ptr();
        let d = d.add(d.align_offset(64).min(16));
        for s in 0..strips {
            pack_pairs::<MR>(MR.min(rows - s * MR), kc, a.offset((s * MR) as isize * rsa), rsa, csa, d.add(s * MR * kp));
        }
        for jp in 0..cols.div_ceil(NR) {
            let (bp, w) = (panels.add(jp * pstride), NR.min(cols - jp * NR));
            for s in 0..strips {
                let (ai, ci) = (d.add(s * MR * kp) as *const u32, c.add(s * MR * ldc + jp * NR));
                match MR.min(rows - s * MR) {
                    12 => block::<12>(kp, ai, bp, acc, ci, ldc, w),
                    11 => block::<11>(kp, ai, bp, acc, ci, ldc, w),
                    10 => block::<10>(kp, ai, bp, acc, ci, ldc, w),
                    9 => block::<9>(kp, ai, bp, acc, ci, ldc, w),
                    8 => block::<8>(kp, ai, bp, acc, ci, ldc, w),
                    7 => block::<7>(kp, ai, bp, acc, ci, ldc, w),
                    6 => block::<6>(kp, ai, bp, acc, ci, ldc, w),
                    5 => block::<5>(kp, ai, bp, acc, ci, ldc, w),
                    4 => block::<4>(kp, ai, bp, acc, ci, ldc, w),
                    3 => block::<3>(kp, ai, bp, acc, ci, ldc, w),
                    2 => block::<2>(kp, ai, bp, acc, ci, ldc, w),
                    _ => block::<1>(kp, ai, bp, acc, ci, ldc, w),
                }
            }
        }
    })
}

/// One `R` × 32 block of C (`w` ≤ 32 of its columns inside C) from a packed strip of A and a
/// packed panel of B, `kp` pairs deep: `C = sum (+ C when acc)`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
unsafe fn block<const R: usize>(kp: usize, a: *const u32, bp: *const u32, acc: bool, c: *mut f32, ldc: usize, w: usize) {
    let z = _mm512_setzero_ps();
    let (mut lo, mut hi) = ([z; R], [z; R]);
    let (mut ap, mut bq) = (a, bp);
    for _ in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bq.add(16) as *const _));
        for r in 0..R {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
            lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
            hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
        }
        ap = ap.add(MR);
        bq = bq.add(NR);
    }
    let m0: __mmask16 = if w >= 16 { 0xFFFF } else { ((1u32 << w) - 1) as __mmask16 };
    let m1: __mmask16 = if w >= 32 { 0xFFFF } else if w > 16 { ((1u32 << (w - 16)) - 1) as __mmask16 } else { 0 };
    for r in 0..R {
        let cr = c.add(r * ldc);
        let (mut x0, mut x1) = (lo[r], hi[r]);
        if acc {
            x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, cr));
            x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, cr.add(16)));
        }
        _mm512_mask_storeu_ps(cr, m0, x0);
        _mm512_mask_storeu_ps(cr.add(16), m1, x1);
    }
}

/// `dst[j] = bf16(src[j])` for j < n, rounded to nearest even (NaN stays a quiet NaN): the bits of
/// `half::bf16::from_f32`.
///
/// # Safety
/// avx512f/bw/vl; `src` holds n floats and `dst` n u16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn round_row(src: *const f32, dst: *mut u16, n: usize) {
    let (one, bias, quiet) = (_mm512_set1_epi32(1), _mm512_set1_epi32(0x7FFF), _mm512_set1_epi32(0x40));
    let mut j = 0;
    while j < n {
        let cnt = (n - j).min(16);
        let mask: __mmask16 = if cnt == 16 { 0xFFFF } else { ((1u32 << cnt) - 1) as __mmask16 };
        let x = _mm512_maskz_loadu_ps(mask, src.add(j));
        let bits = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, _mm512_add_epi32(bias, lsb)));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        let v = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(_mm512_srli_epi32::<16>(bits), quiet));
        _mm256_mask_storeu_epi16(dst.add(j) as *mut i16, mask, _mm512_cvtepi32_epi16(v));
        j += cnt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector rounding gives `half::bf16::from_f32`'s bits: ties to even, NaN kept quiet,
    /// infinities, overflow to infinity, denormals, any tail length.
    #[test]
    fn round_row_matches_half() {
        if !detected() {
            eprintln!("NOT RUN: no AVX512_BF16 on this CPU");
            return;
        }
        let mut xs: Vec<f32> = vec![0.0, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, f32::MIN, 1e-40, -3e-39, f32::MIN_POSITIVE];
        xs.extend([0x3F80_8000u32, 0x3F81_8000, 0x3F80_8001, 0x3F80_7FFF, 0x7F7F_FFFF, 0x7FC0_0001, 0x7F80_0001, 0xFF80_0001].map(f32::from_bits));
        xs.extend((0..1000).map(|i| ((i * 2654435761u64) % 100_000) as f32 * 1.37e-3 - 60.0));
        for len in [0, 1, 15, 16, 17, xs.len()] {
            let mut out = vec![0u16; len];
            unsafe { round_row(xs.as_ptr(), out.as_mut_ptr(), len) };
            for (x, o) in xs.iter().zip(&out) {
                assert_eq!(*o, bf16::from_f32(*x).to_bits(), "{x:e} ({:#010x})", x.to_bits());
            }
        }
    }
}
