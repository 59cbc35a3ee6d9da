//! AVX-512 f32 tile GEMM for the attention kernels: `C (=|+=) alpha·A·B` with B's rows contiguous
//! (any row stride) and A read by broadcasting single elements (any strides), so no operand is
//! packed per call. Register blocks of up to 6 rows × 64 columns (24 zmm accumulators); ragged
//! column edges use masked loads/stores, ragged row edges smaller blocks.
use std::arch::x86_64::*;

/// Rows per register block.
const MR: usize = 6;

#[derive(Clone, Copy)]
struct Args {
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    ldb: usize,
    acc: bool,
    c: *mut f32,
    ldc: usize,
    /// Lanes of the last 16-wide column vector that are inside C.
    last: u16,
}

/// `C[i][j] = alpha·Σ_p A[i][p]·B[p][j] (+ C[i][j] when acc)` for i < m, j < n, where
/// `A[i][p] = a[i·rsa + p·csa]`, `B[p][j] = b[p·ldb + j]`, `C[i][j] = c[i·ldc + j]`.
///
/// # Safety
/// The CPU supports avx512f; every addressed element is in bounds; C does not alias A or B.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn sgemm(m: usize, n: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, ldb: usize, acc: bool, c: *mut f32, ldc: usize) {
    let mut j = 0;
    while j < n {
        let nc = (n - j).min(64);
        let nv = nc.div_ceil(16);
        let rem = nc - (nv - 1) * 16;
        let last = if rem == 16 { u16::MAX } else { (1u16 << rem) - 1 };
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            let g = Args { k, alpha, a: a.offset(i as isize * rsa), rsa, csa, b: b.add(j), ldb, acc, c: c.add(i * ldc + j), ldc, last };
            match mr {
                1 => rows::<1>(nv, &g),
                2 => rows::<2>(nv, &g),
                3 => rows::<3>(nv, &g),
                4 => rows::<4>(nv, &g),
                5 => rows::<5>(nv, &g),
                _ => rows::<MR>(nv, &g),
            }
            i += mr;
        }
        j += nc;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn rows<const R: usize>(nv: usize, g: &Args) {
    match nv {
        1 => block::<R, 1>(g),
        2 => block::<R, 2>(g),
        3 => block::<R, 3>(g),
        _ => block::<R, 4>(g),
    }
}

/// One R × 16·V block of C, accumulated in registers over all of k.
#[allow(clippy::needless_range_loop)] // indexed loops over the register arrays unroll cleanly
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const V: usize>(g: &Args) {
    let mut masks = [u16::MAX; V];
    masks[V - 1] = g.last;
    let mut arow = [g.a; R];
    for (r, p) in arow.iter_mut().enumerate() {
        *p = g.a.offset(r as isize * g.rsa);
    }
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut bp = g.b;
    let mut ao = 0isize;
    for _ in 0..g.k {
        let mut bv = [_mm512_setzero_ps(); V];
        for v in 0..V {
            bv[v] = _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v));
        }
        for r in 0..R {
            let av = _mm512_set1_ps(*arow[r].offset(ao));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
            }
        }
        bp = bp.add(g.ldb);
        ao += g.csa;
    }
    let alpha = _mm512_set1_ps(g.alpha);
    for r in 0..R {
        for v in 0..V {
            let cp = g.c.add(r * g.ldc + 16 * v);
            let x = if g.acc { _mm512_fmadd_ps(alpha, acc[r][v], _mm512_maskz_loadu_ps(masks[v], cp)) } else { _mm512_mul_ps(alpha, acc[r][v]) };
            _mm512_mask_storeu_ps(cp, masks[v], x);
        }
    }
}
