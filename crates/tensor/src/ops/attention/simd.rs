//! Element types of the attention kernels: single-threaded tile GEMMs (matrixmultiply) and the
//! row primitives of the online softmax (max, fused `exp(x - m)` with its sum), with AVX-512 /
//! AVX2+FMA bodies for f32 chosen at run time by [`crate::cpu::simd::level`].
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
    fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        match level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level()` only reports levels the CPU supports.
            Level::Avx512 => unsafe { x86::exp_sub_sum_avx512(x, m) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::exp_sub_sum_avx2(x, m) },
            _ => exp_sub_sum_scalar(x, m),
        }
    }
    fn row_max(x: &[f32]) -> f32 {
        match level() {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { x86::max_avx512(x) },
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { x86::max_avx2(x) },
            _ => x.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        }
    }
}

fn exp_sub_sum_scalar(x: &mut [f32], m: f32) -> f32 {
    let mut s = 0.0;
    for v in x {
        *v = (*v - m).exp();
        s += *v;
    }
    s
}

/// Cephes-style expf: `exp(x) = 2^n · exp(r)`, `r = x - n·ln2` in [-ln2/2, ln2/2], a degree-7
/// polynomial for `exp(r)` (≈ 1 ulp). Inputs below ln(FLT_MIN) (including -inf) give 0.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const LO: f32 = -87.336_55;
    const HI: f32 = 88.376_26;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(LO));
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(LO)), _mm512_set1_ps(HI));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_maskz_mov_ps(!under, _mm512_scalef_ps(y, n))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_sub_sum_avx512(x: &mut [f32], m: f32) -> f32 {
        let (n, p) = (x.len(), x.as_mut_ptr());
        let mv = _mm512_set1_ps(m);
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), mv));
            _mm512_storeu_ps(p.add(i), e);
            acc = _mm512_add_ps(acc, e);
            i += 16;
        }
        if i < n {
            let k: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as u16;
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), mv));
            let e = _mm512_maskz_mov_ps(k, e);
            _mm512_mask_storeu_ps(p.add(i), k, e);
            acc = _mm512_add_ps(acc, e);
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_avx512(x: &[f32]) -> f32 {
        let (n, p) = (x.len(), x.as_ptr());
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut acc = ninf;
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_max_ps(acc, _mm512_loadu_ps(p.add(i)));
            i += 16;
        }
        if i < n {
            let k: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as u16;
            acc = _mm512_max_ps(acc, _mm512_mask_loadu_ps(ninf, k, p.add(i)));
        }
        _mm512_reduce_max_ps(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO));
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
        _mm256_andnot_ps(under, _mm256_mul_ps(y, pow2))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_sum_avx2(x: &mut [f32], m: f32) -> f32 {
        let (n, p) = (x.len(), x.as_mut_ptr());
        let mv = _mm256_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        if i < n {
            // the tail through a buffer padded with -inf (exp gives 0 there)
            let mut buf = [f32::NEG_INFINITY; 8];
            buf[..n - i].copy_from_slice(&x[i..]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), mv));
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
            x[i..].copy_from_slice(&buf[..n - i]);
        }
        hsum8(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn max_avx2(x: &[f32]) -> f32 {
        let (n, p) = (x.len(), x.as_ptr());
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_max_ps(acc, _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().chain(&x[i..]).copied().fold(f32::NEG_INFINITY, f32::max)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
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
            let want_sum = exp_sub_sum_scalar(&mut want, m);
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
