//! AVX2 + FMA f32 tile GEMM for the attention kernels, the AVX2 counterpart of `gemm512.rs`:
//! `C (=|+=) alpha·A·B` with B's rows contiguous (any row stride) and A read by broadcasting
//! single elements (any strides). Register blocks of up to 6 rows × 16 columns (12 ymm
//! accumulators + 2 for B + 1 broadcast, of the 16 registers). B's rows are usually 256 or 512
//! bytes apart, so a 16-column panel read in place falls into a few L1 sets and evicts itself;
//! when more than one row block reuses a panel it is first copied into a contiguous, zero-padded
//! k × 16 buffer. Ragged C edges use masked loads/stores (slow on some cores, so only there).
use std::arch::x86_64::*;

/// Rows per register block.
const MR: usize = 6;
/// Columns per register block (two 8-lane vectors).
const NR: usize = 16;

std::thread_local! {
    /// The packed B panel (per thread: the attention kernels call this inside rayon tasks).
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Clone, Copy)]
struct Args {
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    ldb: usize,
    /// B is padded to whole vectors: its loads need no mask.
    b_padded: bool,
    acc: bool,
    c: *mut f32,
    ldc: usize,
    /// Lanes of the last 8-wide column vector that are inside C (1..=8).
    last: i32,
}

/// `C[i][j] = alpha·Σ_p A[i][p]·B[p][j] (+ C[i][j] when acc)` for i < m, j < n, where
/// `A[i][p] = a[i·rsa + p·csa]`, `B[p][j] = b[p·ldb + j]`, `C[i][j] = c[i·ldc + j]`.
///
/// # Safety
/// The CPU supports avx2 and fma; every addressed element is in bounds; C does not alias A or B.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sgemm(m: usize, n: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, ldb: usize, acc: bool, c: *mut f32, ldc: usize) {
    PANEL.with(|cell| {
        let mut panel = cell.borrow_mut();
        let mut j = 0;
        while j < n {
            let nc = (n - j).min(NR);
            let nv = nc.div_ceil(8);
            let last = (nc - (nv - 1) * 8) as i32;
            let mut g = Args { k, alpha, a, rsa, csa, b: b.add(j), ldb, b_padded: false, acc, c: c.add(j), ldc, last };
            if m > MR {
                panel.clear();
                panel.resize(k * NR, 0.0);
                for p in 0..k {
                    // SAFETY: row p of the panel holds nc <= NR elements; B's are in bounds (caller).
                    std::ptr::copy_nonoverlapping(b.add(p * ldb + j), panel.as_mut_ptr().add(p * NR), nc);
                }
                (g.b, g.ldb, g.b_padded) = (panel.as_ptr(), NR, true);
            }
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                let gi = Args { a: a.offset(i as isize * rsa), c: g.c.add(i * ldc), ..g };
                match (mr, nv) {
                    (1, 1) => block::<1, 1>(&gi),
                    (2, 1) => block::<2, 1>(&gi),
                    (3, 1) => block::<3, 1>(&gi),
                    (4, 1) => block::<4, 1>(&gi),
                    (5, 1) => block::<5, 1>(&gi),
                    (_, 1) => block::<MR, 1>(&gi),
                    (1, _) => block::<1, 2>(&gi),
                    (2, _) => block::<2, 2>(&gi),
                    (3, _) => block::<3, 2>(&gi),
                    (4, _) => block::<4, 2>(&gi),
                    (5, _) => block::<5, 2>(&gi),
                    _ => block::<MR, 2>(&gi),
                }
                i += mr;
            }
            j += nc;
        }
    })
}

/// The lane mask of the first `n` lanes (n in 0..=8).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn lanes(n: i32) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// One R × 8·V block of C, accumulated in registers over all of k.
#[allow(clippy::needless_range_loop)] // indexed loops over the register arrays unroll cleanly
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const R: usize, const V: usize>(g: &Args) {
    let mask = lanes(g.last);
    // vector v of a row is whole in C unless it is the last one and C ends inside it
    let whole_c = |v: usize| v + 1 < V || g.last == 8;
    let whole_b = |v: usize| g.b_padded || whole_c(v);
    let mut arow = [g.a; R];
    for (r, p) in arow.iter_mut().enumerate() {
        *p = g.a.offset(r as isize * g.rsa);
    }
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    let mut bp = g.b;
    let mut ao = 0isize;
    for _ in 0..g.k {
        let mut bv = [_mm256_setzero_ps(); V];
        for v in 0..V {
            bv[v] = if whole_b(v) { _mm256_loadu_ps(bp.add(8 * v)) } else { _mm256_maskload_ps(bp.add(8 * v), mask) };
        }
        for r in 0..R {
            let av = _mm256_broadcast_ss(&*arow[r].offset(ao));
            for v in 0..V {
                acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
            }
        }
        bp = bp.add(g.ldb);
        ao += g.csa;
    }
    let alpha = _mm256_set1_ps(g.alpha);
    for r in 0..R {
        for v in 0..V {
            let cp = g.c.add(r * g.ldc + 8 * v);
            if whole_c(v) {
                let x = if g.acc { _mm256_fmadd_ps(alpha, acc[r][v], _mm256_loadu_ps(cp)) } else { _mm256_mul_ps(alpha, acc[r][v]) };
                _mm256_storeu_ps(cp, x);
            } else {
                let x = if g.acc { _mm256_fmadd_ps(alpha, acc[r][v], _mm256_maskload_ps(cp, mask)) } else { _mm256_mul_ps(alpha, acc[r][v]) };
                _mm256_maskstore_ps(cp, mask, x);
            }
        }
    }
}
