//! An f32 SIMD vector trait for the fused nn kernels (GELU, softmax, LayerNorm, cross-entropy).
//!
//! A kernel body is written once, generic over [`VF32`], as an `#[inline(always)] unsafe fn`, and
//! instantiated inside `#[target_feature(enable = "avx512f")]` (with [`F512`], 16 lanes) and
//! `#[target_feature(enable = "avx2,fma")]` (with [`F256`], 8 lanes) functions. Every method is
//! `#[inline(always)]`, so it becomes bare instructions once inlined into such a caller.
//!
//! Safety: the methods may only run on a CPU with the features of the implementing type (callers
//! check [`super::simd::level`]); pointer methods read or write `LANES` floats.
#![allow(clippy::missing_safety_doc)]
use std::arch::x86_64::*;

/// Lane-wise f32 operations. Comparisons and `max`/`min` follow the x86 rule: when an operand is
/// NaN, `a.max(b)` returns `b`.
pub trait VF32: Copy {
    const LANES: usize;
    type Mask: Copy;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    unsafe fn min(self, o: Self) -> Self;
    /// `self * b + c`, fused.
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    /// `c - self * b`, fused.
    unsafe fn fnma(self, b: Self, c: Self) -> Self;
    unsafe fn abs(self) -> Self;
    /// `|self|` with the sign bit of `s`.
    unsafe fn copysign(self, s: Self) -> Self;
    /// Round to nearest (ties to even).
    unsafe fn round(self) -> Self;
    /// Truncation toward zero.
    unsafe fn trunc(self) -> Self;
    /// `2^self` for integral `self` in [-126, 127].
    unsafe fn pow2i(self) -> Self;
    unsafe fn lt(self, o: Self) -> Self::Mask;
    /// Lane-wise `m ? t : f`.
    unsafe fn select(m: Self::Mask, t: Self, f: Self) -> Self;
    /// `table[self]` per lane, for integral `self` in 0..8.
    unsafe fn lookup8(self, table: &[f32; 8]) -> Self;
    unsafe fn hsum(self) -> f32;
    unsafe fn hmax(self) -> f32;

    /// Loads `s` (`s.len() < LANES`) and fills the remaining lanes with `fill`.
    #[inline(always)]
    unsafe fn load_tail(s: &[f32], fill: f32) -> Self {
        let mut b = [fill; 16];
        b[..s.len()].copy_from_slice(s);
        Self::load(b.as_ptr())
    }
    /// Stores the first `d.len()` (< LANES) lanes into `d`.
    #[inline(always)]
    unsafe fn store_tail(self, d: &mut [f32]) {
        let mut b = [0.0f32; 16];
        self.store(b.as_mut_ptr());
        let n = d.len();
        d.copy_from_slice(&b[..n]);
    }

    /// `e^self`, relative error ≲ 2 ulp. Inputs below ln(f32::MIN_POSITIVE) ≈ -87.34 (and -inf) give
    /// exactly 0 (no subnormals), inputs above ln(f32::MAX) give +inf, NaN stays NaN.
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let x = Self::splat(88.0).min(Self::splat(-87.3).max(self));
        let n = x.mul(Self::splat(std::f32::consts::LOG2_E)).round();
        let r = n.fnma(Self::splat(LN2_HI), x);
        let r = n.fnma(Self::splat(LN2_LO), r);
        let mut p = Self::splat(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = p.fma(r, Self::splat(c));
        }
        let y = p.mul(n.pow2i());
        let y = Self::select(Self::splat(88.722_84).lt(self), Self::splat(f32::INFINITY), y);
        Self::select(self.lt(Self::splat(-87.336)), Self::splat(0.0), y)
    }
}

/// ln 2 split for Cody–Waite range reduction (hi is ln 2 rounded to f32; lo the remainder).
const LN2_HI: f32 = 0.693_147_2;
const LN2_LO: f32 = -1.904_654_2e-9;
/// e^r on [-ln2/2, ln2/2], degree 6, highest power first (Chebyshev fit, max rel. error 2e-9).
const EXP_POLY: [f32; 7] = [
    1.394_110_8e-3,
    8.375_126e-3,
    4.166_635_3e-2,
    0.166_664_16,
    0.500_000_0,
    1.000_000_0,
    1.0,
];

/// 16 lanes, AVX-512F.
#[derive(Clone, Copy)]
pub struct F512(pub __m512);
/// 8 lanes, AVX2 + FMA.
#[derive(Clone, Copy)]
pub struct F256(pub __m256);

impl VF32 for F512 {
    const LANES: usize = 16;
    type Mask = __mmask16;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        F512(_mm512_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F512(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F512(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F512(_mm512_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F512(_mm512_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        F512(_mm512_div_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        F512(_mm512_max_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        F512(_mm512_min_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        F512(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn fnma(self, b: Self, c: Self) -> Self {
        F512(_mm512_fnmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        F512(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(self.0), _mm512_set1_epi32(0x7fff_ffff))))
    }
    #[inline(always)]
    unsafe fn copysign(self, s: Self) -> Self {
        let sign = _mm512_and_si512(_mm512_castps_si512(s.0), _mm512_set1_epi32(i32::MIN));
        F512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(self.abs().0), sign)))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        F512(_mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0))
    }
    #[inline(always)]
    unsafe fn trunc(self) -> Self {
        F512(_mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(self.0))
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(self.0), _mm512_set1_epi32(127));
        F512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0)
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, t: Self, f: Self) -> Self {
        F512(_mm512_mask_blend_ps(m, f.0, t.0))
    }
    #[inline(always)]
    unsafe fn lookup8(self, table: &[f32; 8]) -> Self {
        let t = _mm512_castps256_ps512(_mm256_loadu_ps(table.as_ptr()));
        F512(_mm512_permutexvar_ps(_mm512_cvttps_epi32(self.0), t))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        _mm512_reduce_add_ps(self.0)
    }
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        _mm512_reduce_max_ps(self.0)
    }
}

impl VF32 for F256 {
    const LANES: usize = 8;
    type Mask = __m256;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        F256(_mm256_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F256(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F256(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F256(_mm256_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F256(_mm256_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        F256(_mm256_div_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        F256(_mm256_max_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        F256(_mm256_min_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        F256(_mm256_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn fnma(self, b: Self, c: Self) -> Self {
        F256(_mm256_fnmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        F256(_mm256_and_ps(self.0, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff))))
    }
    #[inline(always)]
    unsafe fn copysign(self, s: Self) -> Self {
        let sign = _mm256_and_ps(s.0, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN)));
        F256(_mm256_or_ps(self.abs().0, sign))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        F256(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0))
    }
    #[inline(always)]
    unsafe fn trunc(self) -> Self {
        F256(_mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(self.0))
    }
    #[inline(always)]
    unsafe fn pow2i(self) -> Self {
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(self.0), _mm256_set1_epi32(127));
        F256(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)))
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0)
    }
    #[inline(always)]
    unsafe fn select(m: __m256, t: Self, f: Self) -> Self {
        F256(_mm256_blendv_ps(f.0, t.0, m))
    }
    #[inline(always)]
    unsafe fn lookup8(self, table: &[f32; 8]) -> Self {
        F256(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table.as_ptr()), _mm256_cvttps_epi32(self.0)))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}
