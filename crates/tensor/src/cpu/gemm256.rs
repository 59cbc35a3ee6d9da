//! AVX2 + FMA f32 tile GEMM: `C (=|+=) alpha·A·B`, B with contiguous rows (any row stride), A with
//! any strides, C with rows of stride `ldc`. The attention kernels call it on their tiles; the
//! blocked matmul GEMM (`cpu/sgemm.rs`) calls [`sgemm_panels`] on its packed blocks.
//!
//! B is copied into panels of 16 columns (`panel[p·16 + j]`, zero-padded past `n`) in a per-thread
//! buffer, then a 6 × 16 register block (12 ymm accumulators, two B loads and six broadcasts of A
//! per step of k) sweeps each panel. Only B is packed: k·n copies against m·n·k multiply-adds, where
//! matrixmultiply packs both operands on every call (12% of the attention forward's time went to
//! its packing). The panel layout also keeps B's rows out of one another's L1 sets: read in place, a
//! key tile's rows lie 512 bytes apart and all land in 8 of the 64 sets, which is what made an
//! earlier unpacked 6 × 16 kernel run at 42 GFLOP/s per core.
//! Every element of C is one sequential sum over p, as in the naive loop.
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows per register block.
const MR: usize = 6;
/// Columns per panel (two ymm vectors).
const NR: usize = 16;

thread_local! {
    /// The B panels of the current call (grown, never shrunk; a few tens of KB per thread).
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `C[i][j] = alpha·Σ_p A[i][p]·B[p][j] (+ C[i][j] when acc)` for i < m, j < n, where
/// `A[i][p] = a[i·rsa + p·csa]`, `B[p][j] = b[p·ldb + j]`, `C[i][j] = c[i·ldc + j]`.
///
/// # Safety
/// The CPU supports avx2 and fma; every addressed element is in bounds; C does not alias A or B.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sgemm(m: usize, n: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, ldb: usize, acc: bool, c: *mut f32, ldc: usize) {
    if m == 0 || n == 0 || k == 0 {
        // nothing to pack; sgemm_panels handles these without reading B
        return sgemm_panels(m, n, k, alpha, a, rsa, csa, std::ptr::null(), 0, acc, c, ldc);
    }
    PANELS.with_borrow_mut(|buf| {
        pack_panels(k, n, b, ldb as isize, 1, buf);
        sgemm_panels(m, n, k, alpha, a, rsa, csa, buf.as_ptr(), k * NR, acc, c, ldc);
    })
}

/// [`sgemm`] with B already in panels (see [`pack_panels`]): panel `jp` (columns `16·jp ..`) starts
/// at `panels + jp·pstride` and holds its rows `p = 0..k` at `+ 16·p`, so a panel layout packed
/// for more rows serves any run of them by offsetting `panels`.
///
/// # Safety
/// As for [`sgemm`]; the panels cover k rows and n columns (zero-padded to a multiple of 16).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sgemm_panels(m: usize, n: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::ptr::write_bytes(c.add(i * ldc), 0, n);
            }
        }
        return;
    }
    for jp in 0..n.div_ceil(NR) {
        let (bp, w) = (panels.add(jp * pstride), NR.min(n - jp * NR));
        let cj = c.add(jp * NR);
        let mut i = 0;
        while i < m {
            let r = MR.min(m - i);
            let (ai, ci) = (a.offset(i as isize * rsa), cj.add(i * ldc));
            block_rows(r, k, alpha, ai, rsa, csa, bp, acc, ci, ldc, w);
            i += r;
        }
    }
}

/// An element type B may have on the few-rows paths: f32, or bf16 widened exactly to f32 as it is
/// loaded (decoding with bf16 weights reads half the bytes).
pub(crate) trait BElem: Copy + Send + Sync {
    /// Eight consecutive elements as f32.
    ///
    /// # Safety
    /// avx2; `p..p + 8` readable.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One element as f32.
    ///
    /// # Safety
    /// `p` readable.
    unsafe fn get(p: *const Self) -> f32;
}

impl BElem for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn get(p: *const f32) -> f32 {
        *p
    }
}

impl BElem for half::bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const half::bf16) -> __m256 {
        // a bf16 is the high half of an f32: widen the 16-bit lanes and shift them up
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))))
    }
    #[inline(always)]
    unsafe fn get(p: *const half::bf16) -> f32 {
        (*p).to_f32()
    }
}

/// Packs the k × n matrix `B[p][j] = b[p·rsb + j·csb]` into `dst` as `ceil(n / 16)` panels of
/// k × 16 (zero-filled past `n`): the layout [`sgemm_panels`] reads, with `pstride = 16·k`.
///
/// # Safety
/// Every element of B is in bounds; the CPU supports avx2.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_panels<E: BElem>(k: usize, n: usize, b: *const E, rsb: isize, csb: isize, dst: &mut Vec<f32>) {
    let np = n.div_ceil(NR);
    if dst.len() < np * k * NR {
        dst.resize(np * k * NR, 0.0);
    }
    for (jp, panel) in dst[..np * k * NR].chunks_mut((k * NR).max(1)).enumerate() {
        pack_panel(k, NR.min(n - jp * NR), b.offset((jp * NR) as isize * csb), rsb, csb, panel);
    }
}

/// Packs one panel: `dst[p·16 + j] = B[p][j]` (as f32) for p < k, j < w, zeros for w ≤ j < 16. A
/// transposed B (contiguous columns) goes through 8 × 8 register transposes.
///
/// # Safety
/// avx2; B's k × w elements are in bounds; `dst` holds k·16 floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_panel<E: BElem>(k: usize, w: usize, b: *const E, rsb: isize, csb: isize, dst: &mut [f32]) {
    assert!(dst.len() >= k * NR);
    let d = dst.as_mut_ptr();
    if csb == 1 && w == NR {
        for p in 0..k {
            let s = b.offset(p as isize * rsb);
            _mm256_storeu_ps(d.add(p * NR), E::load8(s));
            _mm256_storeu_ps(d.add(p * NR + 8), E::load8(s.add(8)));
        }
        return;
    }
    let mut p0 = 0;
    if rsb == 1 {
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

/// The transpose of 8 rows of 8 floats: output q holds element q of every input row.
#[inline(always)]
pub(crate) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // columns (0|4), (1|5), (2|6), (3|7) of rows 0-3, then of rows 4-7
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// [`block`] for `r` (1..=6) rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn block_rows(r: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, bp: *const f32, acc: bool, c: *mut f32, ldc: usize, w: usize) {
    match r {
        6 => block::<6>(k, alpha, a, rsa, csa, bp, acc, c, ldc, w),
        5 => block::<5>(k, alpha, a, rsa, csa, bp, acc, c, ldc, w),
        4 => block::<4>(k, alpha, a, rsa, csa, bp, acc, c, ldc, w),
        3 => block::<3>(k, alpha, a, rsa, csa, bp, acc, c, ldc, w),
        2 => block::<2>(k, alpha, a, rsa, csa, bp, acc, c, ldc, w),
        _ => block::<1>(k, alpha, a, rsa, csa, bp, acc, c, ldc, w),
    }
}

/// One `R` × 16 block of C (`w` ≤ 16 of its columns inside C) from R rows of A and one B panel.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<const R: usize>(k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, bp: *const f32, acc: bool, c: *mut f32, ldc: usize, w: usize) {
    let z = _mm256_setzero_ps();
    let (mut lo, mut hi) = ([z; R], [z; R]);
    let rows: [*const f32; R] = std::array::from_fn(|r| a.offset(r as isize * rsa));
    for p in 0..k {
        let (b0, b1) = (_mm256_loadu_ps(bp.add(p * NR)), _mm256_loadu_ps(bp.add(p * NR + 8)));
        let off = p as isize * csa;
        for r in 0..R {
            let av = _mm256_broadcast_ss(&*rows[r].offset(off));
            lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
            hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
        }
    }
    let al = _mm256_set1_ps(alpha);
    for r in 0..R {
        let cr = c.add(r * ldc);
        let (mut x0, mut x1) = (_mm256_mul_ps(lo[r], al), _mm256_mul_ps(hi[r], al));
        if w == NR {
            if acc {
                x0 = _mm256_add_ps(x0, _mm256_loadu_ps(cr));
                x1 = _mm256_add_ps(x1, _mm256_loadu_ps(cr.add(8)));
            }
            _mm256_storeu_ps(cr, x0);
            _mm256_storeu_ps(cr.add(8), x1);
        } else {
            let mut t = [0f32; NR];
            _mm256_storeu_ps(t.as_mut_ptr(), x0);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), x1);
            for (j, &v) in t.iter().enumerate().take(w) {
                *cr.add(j) = if acc { v + *cr.add(j) } else { v };
            }
        }
    }
}
