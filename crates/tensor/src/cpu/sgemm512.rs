//! AVX-512F pieces of the blocked f32 GEMM (`cpu/sgemm.rs`): a 12 × 32 register block over B
//! packed into 32-column panels and A packed into 12-row strips.
//!
//! Register block: 12 rows × 32 columns = 24 zmm accumulators, two zmm of B and one broadcast of A
//! per row (27 of the 32 zmm registers). Each step of k issues 24 FMAs against 2 loads of B and 12
//! broadcasts of A, so the two FMA ports, not the loads, bound it. (6 × 64 needs the same 24
//! accumulators with fewer loads, but its 64-column panel, 64 KB at KC = 256, no longer fits the
//! 48 KB L1d of the machine this was tuned on; 14 × 32 leaves too few registers to hold both B
//! vectors and a broadcast.)
//!
//! Cache blocking, for the machine this was measured on (Intel Xeon, family 6 model 0xCF, Emerald
//! Rapids class; `lscpu`/sysfs: L1d 48 KB 12-way, L2 2 MB 16-way per core, L3 260 MB shared):
//!
//! | level | holds | size |
//! |---|---|---|
//! | L1d (48 KB) | one B panel block, KC × 32 (32 KB at KC = 256) + the A strip streaming past it (12 KB) | 44 KB |
//! | L2 (2 MB) | the task's packed A, MC × KC (144 KB at MC = 144), and its tile of C, MC × ≤ 2048 (≤ 1.2 MB) | ≤ 1.3 MB |
//! | L3 | all of packed B, KC-deep blocks of up to 8 MB | |
//!
//! Per element of C the operations are exactly those of the AVX2 6 × 16 kernel (`gemm256.rs`): an
//! FMA chain from zero over the `KC` steps of a block in order of p, then `alpha·sum`, then `+ C`
//! (a separate add, not an FMA). With the same `KC` the two kernels give the same bits.
use super::gemm256::{transpose8, BElem};
use std::arch::x86_64::*;

/// Rows per register block (and per packed strip of A).
pub(crate) const MR: usize = 12;
/// Columns per panel (two zmm vectors).
pub(crate) const NR: usize = 32;

/// Packs one panel of B: `dst[p·32 + j] = B[p][j]` (as f32) for p < k, j < w, zeros for
/// w ≤ j < 32, with `B[p][j] = b[p·rsb + j·csb]`. A transposed B (`rsb == 1`) goes through 8 × 8
/// register transposes.
///
/// # Safety
/// avx512f + avx2 + fma; B's k × w elements in bounds; `dst` holds k·32 floats.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn pack_panel<E: BElem>(k: usize, w: usize, b: *const E, rsb: isize, csb: isize, dst: *mut f32) {
    let d = dst;
    if csb == 1 && w == NR {
        for p in 0..k {
            let s = b.offset(p as isize * rsb);
            let o = d.add(p * NR);
            _mm256_storeu_ps(o, E::load8(s));
            _mm256_storeu_ps(o.add(8), E::load8(s.add(8)));
            _mm256_storeu_ps(o.add(16), E::load8(s.add(16)));
            _mm256_storeu_ps(o.add(24), E::load8(s.add(24)));
        }
        return;
    }
    let mut p0 = 0;
    if rsb == 1 && csb != 1 {
        while p0 + 8 <= k {
            let mut j0 = 0;
            while j0 + 8 <= w {
                let r: [__m256; 8] = std::array::from_fn(|i| E::load8(b.offset((j0 + i) as isize * csb + p0 as isize)));
                for (q, v) in transpose8(r).iter().enumerate() {
                    _mm256_storeu_ps(d.add((p0 + q) * NR + j0), *v);
                }
                j0 += 8;
            }
            for p in p0..p0 + 8 {
                for j in j0..NR {
                    *d.add(p * NR + j) = if j < w { E::get(b.offset(p as isize + j as isize * csb)) } else { 0.0 };
                }
            }
            p0 += 8;
        }
    }
    for p in p0..k {
        let s = b.offset(p as isize * rsb);
        for j in 0..NR {
            *d.add(p * NR + j) = if j < w { E::get(s.offset(j as isize * csb)) } else { 0.0 };
        }
    }
}

/// Packs `r` ≤ 12 rows of A, `kc` deep, into one strip: `dst[p·12 + i] = A[i][p]` for i < r (the
/// slots of missing rows are left as they are: the kernel for r rows never reads them).
///
/// # Safety
/// avx512f + avx2 + fma; A's r × kc elements in bounds; `dst` holds kc·12 floats.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn pack_strip(r: usize, kc: usize, a: *const f32, rsa: isize, csa: isize, dst: *mut f32) {
    if csa == 1 && r == MR {
        // row-major A: 8 steps of k of rows 0-7, then of rows 8-11 (+ 4 zero rows), transposed in
        // registers: each step's 12 values are one 8-wide and one 4-wide store
        let z = _mm256_setzero_ps();
        let mut p0 = 0;
        while p0 + 8 <= kc {
            let lo: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(a.offset(i as isize * rsa).add(p0)));
            let hi: [__m256; 8] = std::array::from_fn(|i| if i < 4 { _mm256_loadu_ps(a.offset((8 + i) as isize * rsa).add(p0)) } else { z });
            let (tl, th) = (transpose8(lo), transpose8(hi));
            for q in 0..8 {
                let o = dst.add((p0 + q) * MR);
                _mm256_storeu_ps(o, tl[q]);
                _mm_storeu_ps(o.add(8), _mm256_castps256_ps128(th[q]));
            }
            p0 += 8;
        }
        for p in p0..kc {
            for i in 0..MR {
                *dst.add(p * MR + i) = *a.offset(i as isize * rsa).add(p);
            }
        }
    } else if rsa == 1 {
        // transposed A (a column of A is contiguous): one masked 12-lane copy per step of k
        let mask: __mmask16 = ((1u32 << r) - 1) as __mmask16;
        for p in 0..kc {
            let v = _mm512_maskz_loadu_ps(mask, a.offset(p as isize * csa));
            _mm512_mask_storeu_ps(dst.add(p * MR), mask, v);
        }
    } else if csa == 1 {
        for i in 0..r {
            let row = a.offset(i as isize * rsa);
            for p in 0..kc {
                *dst.add(p * MR + i) = *row.add(p);
            }
        }
    } else {
        for p in 0..kc {
            let col = a.offset(p as isize * csa);
            for i in 0..r {
                *dst.add(p * MR + i) = *col.offset(i as isize * rsa);
            }
        }
    }
}

/// One `r` × 32 block of C (`w` ≤ 32 of its columns inside C) from a packed strip of A (`a[p·12 +
/// i]`) and a packed panel of B (`bp[p·32 + j]`), `kc` deep: `C = alpha·sum (+ C when acc)`.
///
/// # Safety
/// avx512f; the strip and panel hold kc steps; C's r rows of `ldc`, w columns, in bounds.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn block_rows(r: usize, kc: usize, alpha: f32, a: *const f32, bp: *const f32, acc: bool, c: *mut f32, ldc: usize, w: usize) {
    match r {
        12 => block::<12>(kc, alpha, a, bp, acc, c, ldc, w),
        11 => block::<11>(kc, alpha, a, bp, acc, c, ldc, w),
        10 => block::<10>(kc, alpha, a, bp, acc, c, ldc, w),
        9 => block::<9>(kc, alpha, a, bp, acc, c, ldc, w),
        8 => block::<8>(kc, alpha, a, bp, acc, c, ldc, w),
        7 => block::<7>(kc, alpha, a, bp, acc, c, ldc, w),
        6 => block::<6>(kc, alpha, a, bp, acc, c, ldc, w),
        5 => block::<5>(kc, alpha, a, bp, acc, c, ldc, w),
        4 => block::<4>(kc, alpha, a, bp, acc, c, ldc, w),
        3 => block::<3>(kc, alpha, a, bp, acc, c, ldc, w),
        2 => block::<2>(kc, alpha, a, bp, acc, c, ldc, w),
        _ => block::<1>(kc, alpha, a, bp, acc, c, ldc, w),
    }
}

#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block<const R: usize>(kc: usize, alpha: f32, a: *const f32, bp: *const f32, acc: bool, c: *mut f32, ldc: usize, w: usize) {
    // C's tile is needed only after the k loop: start bringing its lines in now (from L2, where
    // the task's tile lives between blocks of k)
    if acc {
        for r in 0..R {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * ldc + 16) as *const i8);
        }
    }
    let z = _mm512_setzero_ps();
    let (mut lo, mut hi) = ([z; R], [z; R]);
    let (mut ap, mut bq) = (a, bp);
    for _ in 0..kc {
        let (b0, b1) = (_mm512_loadu_ps(bq), _mm512_loadu_ps(bq.add(16)));
        for r in 0..R {
            let av = _mm512_set1_ps(*ap.add(r));
            lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
        }
        ap = ap.add(MR);
        bq = bq.add(NR);
    }
    let al = _mm512_set1_ps(alpha);
    let m0: __mmask16 = if w >= 16 { 0xFFFF } else { ((1u32 << w) - 1) as __mmask16 };
    let m1: __mmask16 = if w >= 32 { 0xFFFF } else if w > 16 { ((1u32 << (w - 16)) - 1) as __mmask16 } else { 0 };
    for r in 0..R {
        let cr = c.add(r * ldc);
        let (mut x0, mut x1) = (_mm512_mul_ps(lo[r], al), _mm512_mul_ps(hi[r], al));
        if w == NR {
            if acc {
                x0 = _mm512_add_ps(x0, _mm512_loadu_ps(cr));
                x1 = _mm512_add_ps(x1, _mm512_loadu_ps(cr.add(16)));
            }
            _mm512_storeu_ps(cr, x0);
            _mm512_storeu_ps(cr.add(16), x1);
        } else {
            if acc {
                x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, cr));
                x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, cr.add(16)));
            }
            _mm512_mask_storeu_ps(cr, m0, x0);
            _mm512_mask_storeu_ps(cr.add(16), m1, x1);
        }
    }
}
