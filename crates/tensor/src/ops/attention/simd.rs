//! Element types of the attention kernels: single-threaded tile GEMMs (matrixmultiply) and the
//! row primitives of the online softmax (max, fused `exp(x - m)` with its sum; for f32 the shared
//! SIMD primitives of [`crate::cpu::simd`], chosen at run time by its level).
use crate::cpu::simd::{level, Level};
use crate::storage::CpuSlice;
use crate::CpuFloat;

/// matrixmultiply runs one GEMM on its own thread pool when `m·k + k·n ≥ 2·2^14`; the tile GEMMs
/// are called from inside rayon tasks, so [`AttnFloat::gemm`] splits calls to stay below this size
/// and therefore always runs on the calling thread.
const ST_LIMIT: usize = 2 * (1 << 14) - 1;

/// A float the attention kernels run in (f32 fast path, f64 for gradchecks).
pub(crate) trait AttnFloat: CpuFloat + CpuSlice {
    /// `C = alpha·A·B + beta·C` with strides in elements (matrixmultiply's contract: A is m×k,
    /// B is k×n, C must not alias A or B; when beta is 0, C may hold anything).
    ///
    /// # Safety
    /// Every addressed element of A, B and C must be in bounds.
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_gemm(m: usize, k: usize, n: usize, alpha: Self, a: *const Self, rsa: isize, csa: isize, b: *const Self, rsb: isize, csb: isize, beta: Self, c: *mut Self, rsc: isize, csc: isize);
    /// `x[i] = exp(x[i] - m)`, returning the sum of the new values. `x[i] = -inf` gives 0;
    /// `m` must be finite.
    fn exp_sub_sum(x: &mut [Self], m: Self) -> Self;
    /// The largest element (-inf for an empty slice or one of only -inf).
    fn row_max(x: &[Self]) -> Self;

    /// The tile GEMM of the kernels: `C (=|+=) alpha·A·B`, B with contiguous rows of stride `ldb`
    /// (`B[p][j] = b[p·ldb + j]`), C with rows of stride `ldc`, A with any strides. f32 uses the
    /// register-blocked kernels of `gemm512.rs` (AVX-512) and `gemm256.rs` (AVX2 + FMA, B packed
    /// into 16-column panels: 12% faster attention than matrixmultiply, which packs both operands
    /// on every call); f64 and the scalar level go through matrixmultiply.
    ///
    /// # Safety
    /// As for [`AttnFloat::raw_gemm`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn tile(m: usize, n: usize, k: usize, alpha: Self, a: *const Self, rsa: isize, csa: isize, b: *const Self, ldb: usize, acc: bool, c: *mut Self, ldc: usize) {
        let beta = if acc { Self::one() } else { Self::zero() };
        Self::gemm(m, k, n, alpha, a, rsa, csa, b, ldb as isize, 1, beta, c, ldc as isize, 1)
    }

    /// B (`B[p][j] = b[p·rsb + j·csb]`, k × n) packed once for many [`AttnFloat::tile_panels`] calls,
    /// or None where this type and SIMD level have no packed-B kernel (then use [`AttnFloat::tile`]).
    ///
    /// # Safety
    /// Every element of B is in bounds.
    unsafe fn pack_panels(_k: usize, _n: usize, _b: *const Self, _rsb: isize, _csb: isize) -> Option<Vec<Self>> {
        None
    }

    /// [`AttnFloat::tile`] with B from [`AttnFloat::pack_panels`]: `panels` points at row `p0` of
    /// the 16-column panel holding column `j0` (`packed + (j0 / 16)·pstride + 16·p0`, `j0` a
    /// multiple of 16), `pstride` is 16 × the packed row count.
    ///
    /// # Safety
    /// As for [`AttnFloat::tile`]; only call with panels this type packed.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_panels(_m: usize, _n: usize, _k: usize, _alpha: Self, _a: *const Self, _rsa: isize, _csa: isize, _panels: *const Self, _pstride: usize, _acc: bool, _c: *mut Self, _ldc: usize) {
        unreachable!("tile_panels without pack_panels")
    }

    /// [`AttnFloat::raw_gemm`], split into pieces small enough that matrixmultiply never threads.
    ///
    /// # Safety
    /// As for [`AttnFloat::raw_gemm`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn gemm(m: usize, k: usize, n: usize, alpha: Self, a: *const Self, rsa: isize, csa: isize, b: *const Self, rsb: isize, csb: isize, beta: Self, c: *mut Self, rsc: isize, csc: isize) {
        if m * k + k * n <= ST_LIMIT || k == 0 {
            return Self::raw_gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
        }
        let (mb, nb) = (m.min(256), n.min(256));
        let kb = (ST_LIMIT / (mb + nb)).max(1);
        for i in (0..m).step_by(mb) {
            let mi = mb.min(m - i);
            for j in (0..n).step_by(nb) {
                let nj = nb.min(n - j);
                for p in (0..k).step_by(kb) {
                    let kp = kb.min(k - p);
                    let (i, j, p) = (i as isize, j as isize, p as isize);
                    let beta = if p == 0 { beta } else { Self::one() };
                    Self::raw_gemm(mi, kp, nj, alpha, a.offset(i * rsa + p * csa), rsa, csa, b.offset(p * rsb + j * csb), rsb, csb, beta, c.offset(i * rsc + j * csc), rsc, csc);
                }
            }
        }
    }
}

impl AttnFloat for f64 {
    unsafe fn raw_gemm(m: usize, k: usize, n: usize, alpha: f64, a: *const f64, rsa: isize, csa: isize, b: *const f64, rsb: isize, csb: isize, beta: f64, c: *mut f64, rsc: isize, csc: isize) {
        matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    fn exp_sub_sum(x: &mut [f64], m: f64) -> f64 {
        let mut s = 0.0;
        for v in x {
            *v = (*v - m).exp();
            s += *v;
        }
        s
    }
    fn row_max(x: &[f64]) -> f64 {
        x.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

impl AttnFloat for f32 {
    unsafe fn raw_gemm(m: usize, k: usize, n: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, rsb: isize, csb: isize, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
        matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
    unsafe fn tile(m: usize, n: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, b: *const f32, ldb: usize, acc: bool, c: *mut f32, ldc: usize) {
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx512 {
            return super::gemm512::sgemm(m, n, k, alpha, a, rsa, csa, b, ldb, acc, c, ldc);
        }
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx2 {
            return crate::cpu::gemm256::sgemm(m, n, k, alpha, a, rsa, csa, b, ldb, acc, c, ldc);
        }
        Self::gemm(m, k, n, alpha, a, rsa, csa, b, ldb as isize, 1, if acc { 1.0 } else { 0.0 }, c, ldc as isize, 1)
    }
    unsafe fn pack_panels(k: usize, n: usize, b: *const f32, rsb: isize, csb: isize) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if level() == Level::Avx2 {
            let mut v = Vec::new();
            crate::cpu::gemm256::pack_panels(k, n, b, rsb, csb, &mut v);
            return Some(v);
        }
        None
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_panels(m: usize, n: usize, k: usize, alpha: f32, a: *const f32, rsa: isize, csa: isize, panels: *const f32, pstride: usize, acc: bool, c: *mut f32, ldc: usize) {
        crate::cpu::gemm256::sgemm_panels(m, n, k, alpha, a, rsa, csa, panels, pstride, acc, c, ldc)
    }
    fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        crate::cpu::simd::exp_sub_sum(x, m)
    }
    fn row_max(x: &[f32]) -> f32 {
        crate::cpu::simd::max(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{available_levels, with_level};

    #[test]
    fn exp_and_max_match_scalar_at_every_level() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 33, 64, 65] {
            let x: Vec<f32> = (0..n).map(|i| if i % 5 == 3 { f32::NEG_INFINITY } else { ((i * 37 % 23) as f32 - 11.0) * 0.9 }).collect();
            let m = 3.5f32;
            let mut want = x.clone();
            let want_sum = with_level(crate::cpu::simd::Level::Scalar, || f32::exp_sub_sum(&mut want, m));
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for l in available_levels() {
                let (got, sum, mx) = with_level(l, || {
                    let mut g = x.clone();
                    let s = f32::exp_sub_sum(&mut g, m);
                    (g, s, f32::row_max(&x))
                });
                assert_eq!(mx.to_bits(), want_max.to_bits(), "max at {l:?}, n {n}");
                assert!((sum - want_sum).abs() <= 1e-6 * want_sum.max(1.0), "sum at {l:?}, n {n}: {sum} vs {want_sum}");
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 4e-7 * b.abs(), "exp at {l:?}, n {n}, i {i}: {a} vs {b}");
                }
            }
        }
        // far below the underflow threshold and exactly at zero
        for l in available_levels() {
            let mut x = vec![-200.0f32, -87.0, 0.0, -1e-3, 10.0];
            with_level(l, || f32::exp_sub_sum(&mut x, 0.0));
            assert_eq!(x[0], 0.0);
            assert_eq!(x[2], 1.0, "exp(0) at {l:?}");
            assert!((x[1] / (-87.0f32).exp() - 1.0).abs() < 1e-5 && (x[4] / 10f32.exp() - 1.0).abs() < 1e-6, "{l:?}: {x:?}");
        }
    }

    #[test]
    fn tile_gemm_matches_naive_at_every_level() {
        for &(m, n, k) in &[(1usize, 1usize, 1usize), (6, 64, 64), (7, 17, 5), (64, 64, 64), (13, 130, 33), (5, 3, 0)] {
            // A read transposed with a padded stride, B with a padded row stride, C likewise
            let (rsa, csa, ldb, ldc) = (1isize, m as isize + 3, n + 5, n + 2);
            let a: Vec<f32> = (0..(m + 3) * k.max(1)).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25).collect();
            let b: Vec<f32> = (0..ldb * k.max(1)).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5).collect();
            let c0: Vec<f32> = (0..ldc * m).map(|i| (i % 7) as f32).collect();
            for acc in [false, true] {
                let want: Vec<f32> = (0..ldc * m)
                    .map(|x| {
                        let (i, j) = (x / ldc, x % ldc);
                        if j >= n {
                            return c0[x];
                        }
                        let s: f32 = (0..k).map(|p| a[i * rsa as usize + p * csa as usize] * b[p * ldb + j]).sum();
                        1.5 * s + if acc { c0[x] } else { 0.0 }
                    })
                    .collect();
                for l in available_levels() {
                    let mut c = c0.clone();
                    with_level(l, || unsafe { f32::tile(m, n, k, 1.5, a.as_ptr(), rsa, csa, b.as_ptr(), ldb, acc, c.as_mut_ptr(), ldc) });
                    for (x, (g, w)) in c.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{l:?} m {m} n {n} k {k} acc {acc} at {x}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn split_gemm_matches_unsplit() {
        // m·k + k·n above the single-thread limit forces the split path
        let (m, k, n) = (70, 300, 90);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) - 5.0).collect();
        let mut c = vec![1.0f64; m * n];
        unsafe { f64::gemm(m, k, n, 2.0, a.as_ptr(), k as isize, 1, b.as_ptr(), 1, k as isize, 0.5, c.as_mut_ptr(), n as isize, 1) };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = 0.5 + 2.0 * (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f64>();
                assert_eq!(c[i * n + j], want, "({i}, {j})");
            }
        }
    }
}
