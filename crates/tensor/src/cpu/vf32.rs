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
        Self::load_part(s.as_ptr(), s.len(), fill)
    }
    /// Loads `n < LANES` floats from `p` and fills the remaining lanes with `fill`.
    #[inline(always)]
    unsafe fn load_part(p: *const f32, n: usize, fill: f32) -> Self {
        let mut b = [fill; 16];
        std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), n);
        Self::load(b.as_ptr())
    }
    /// Stores the first `n < LANES` lanes at `p` (which may point to uninitialized memory).
    #[inline(always)]
    unsafe fn store_part(self, p: *mut f32, n: usize) {
        let mut b = [0.0f32; 16];
        self.store(b.as_mut_ptr());
        std::ptr::copy_nonoverlapping(b.as_ptr(), p, n);
    }

    /// `self · 2^n` for integral `n` in [-150, 128]: one rounding (subnormal results included),
    /// overflow gives inf.
    unsafe fn ldexp(self, n: Self) -> Self;
    /// `(e, m)` with `self = m · 2^e`, `m ∈ [1, 2)`, `e` integral, for finite positive `self`
    /// (subnormals included); other inputs give unspecified lanes.
    unsafe fn frexp(self) -> (Self, Self);
    /// Lanes that are NaN.
    unsafe fn is_nan(self) -> Self::Mask;

    /// `e^self`: range reduction `x = n·ln2 + r`, degree-7 polynomial for `e^r`, [`VF32::ldexp`];
    /// relative error ≤ ~2 ulp, subnormal results round once, `e^-inf = 0`, `e^(x ≥ 88.73) = inf`,
    /// NaN stays NaN. The one vector exp of kiln (softmax, cross-entropy, GELU, attention, `exp`).
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        // max(LO, x) and min(HI, .) return x itself when x is NaN (the second operand wins).
        let x = Self::splat(EXP_HI).min(Self::splat(EXP_LO).max(self));
        let n = x.mul(Self::splat(std::f32::consts::LOG2_E)).round();
        let r = n.fnma(Self::splat(LN2_HI), x);
        let r = n.fnma(Self::splat(LN2_LO), r);
        let mut p = Self::splat(EXP_C[0]);
        for &c in &EXP_C[1..] {
            p = p.fma(r, Self::splat(c));
        }
        p.ldexp(n)
    }

    /// `tanh(self)`: odd Taylor polynomial below |x| = 0.5, `1 - 2/(e^{2|x|} + 1)` above, then the
    /// sign (so `tanh(-0) = -0`); relative error ≤ ~3e-7, `tanh(±inf) = ±1`.
    #[inline(always)]
    unsafe fn tanh(self) -> Self {
        let a = self.abs();
        let s = self.mul(self);
        let mut p = Self::splat(TANH_C[0]);
        for &c in &TANH_C[1..] {
            p = p.fma(s, Self::splat(c));
        }
        let small = a.mul(s).fma(p, a);
        let e = a.add(a).exp();
        let one = Self::splat(1.0);
        let large = one.sub(Self::splat(2.0).div(e.add(one)));
        Self::select(a.lt(Self::splat(TANH_SMALL)), small, large).copysign(self)
    }

    /// `ln(self)`: `x = m·2^e`, `m ∈ [√½, √2)`, odd series in `f = (m-1)/(m+1)`; ≤ ~2 ulp,
    /// subnormals included; `ln(±0) = -inf`, negative → NaN, `ln(inf) = inf`, NaN stays NaN.
    #[inline(always)]
    unsafe fn log(self) -> Self {
        let (e, m) = self.frexp();
        let big = Self::splat(std::f32::consts::SQRT_2).lt(m);
        let m = Self::select(big, m.mul(Self::splat(0.5)), m);
        let e = Self::select(big, e.add(Self::splat(1.0)), e);
        let one = Self::splat(1.0);
        let f = m.sub(one).div(m.add(one));
        let s = f.mul(f);
        let mut p = Self::splat(LOG_C[0]);
        for &c in &LOG_C[1..] {
            p = p.fma(s, Self::splat(c));
        }
        let r = e.fma(Self::splat(LN2_HI_L), e.fma(Self::splat(LN2_LO_L), f.mul(p)));
        let zero = Self::splat(0.0);
        // |x| below the smallest subnormal means x = ±0
        let r = Self::select(self.abs().lt(Self::splat(f32::from_bits(1))), Self::splat(f32::NEG_INFINITY), r);
        let r = Self::select(self.lt(zero), Self::splat(f32::NAN), r);
        let r = Self::select(Self::splat(f32::MAX).lt(self), self, r);
        Self::select(self.is_nan(), self, r)
    }
}

// ----- constants of the vector math (also used by the scalar bodies in `simd.rs`) ---------------

/// exp: inputs are clamped to [EXP_LO, EXP_HI] (outside, the result is 0 or inf anyway).
pub(crate) const EXP_LO: f32 = -104.0;
pub(crate) const EXP_HI: f32 = 88.8;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^15 (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor coefficients 1/k! for k = 7 down to 0: e^r by Horner's rule, |r| ≤ ln2/2
/// (truncation error 5e-9 relative).
const EXP_C: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// log: ln(m) = 2f·(1 + f²/3 + f⁴/5 + ...), f = (m-1)/(m+1), m ∈ [√½, √2); coefficients 2/(2k+1)
/// from the highest down (|f| ≤ 0.1716, truncation error < 1e-10).
const LOG_C: [f32; 6] = [2.0 / 11.0, 2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0, 2.0];
/// ln 2 split for `e·ln2`: the high part has 16 significant bits so `e·LN2_HI_L` is exact.
const LN2_HI_L: f32 = 0.693_145_75;
const LN2_LO_L: f32 = 1.428_606_8e-6;

/// tanh: below this |x| the odd Taylor polynomial is used.
pub(crate) const TANH_SMALL: f32 = 0.5;
/// tanh(x) = x + x·s·P(s), s = x²; coefficients of P from the highest power down (Taylor series).
pub(crate) const TANH_C: [f32; 8] = [
    (6_404_582.0 / 10_854_718_875.0) as f32,
    (-929_569.0 / 638_512_875.0) as f32,
    (21_844.0 / 6_081_075.0) as f32,
    (-1_382.0 / 155_925.0) as f32,
    (62.0 / 2_835.0) as f32,
    (-17.0 / 315.0) as f32,
    (2.0 / 15.0) as f32,
    (-1.0 / 3.0) as f32,
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
    unsafe fn ldexp(self, n: Self) -> Self {
        F512(_mm512_scalef_ps(self.0, n.0))
    }
    #[inline(always)]
    unsafe fn frexp(self) -> (Self, Self) {
        (F512(_mm512_getexp_ps(self.0)), F512(_mm512_getmant_ps::<_MM_MANT_NORM_1_2, _MM_MANT_SIGN_ZERO>(self.0)))
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(self.0, self.0)
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
    unsafe fn ldexp(self, n: Self) -> Self {
        // 2^n in two factors so that subnormal results round once and overflow gives inf
        let ni = _mm256_cvtps_epi32(n.0);
        let n1 = _mm256_srai_epi32::<1>(ni);
        let n2 = _mm256_sub_epi32(ni, n1);
        let bias = _mm256_set1_epi32(127);
        let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        F256(_mm256_mul_ps(_mm256_mul_ps(self.0, s1), s2))
    }
    #[inline(always)]
    unsafe fn frexp(self) -> (Self, Self) {
        // subnormals: scale by 2^23 first (exact) and take 23 off the exponent
        let x = self.0;
        let sub = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(f32::MIN_POSITIVE));
        let xs = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(8_388_608.0)), sub);
        let bits = _mm256_castps_si256(xs);
        let e = _mm256_sub_epi32(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(127));
        let m = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)), _mm256_set1_epi32(0x3f80_0000));
        let e = _mm256_add_ps(_mm256_cvtepi32_ps(e), _mm256_and_ps(sub, _mm256_set1_ps(-23.0)));
        (F256(e), F256(_mm256_castsi256_ps(m)))
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> __m256 {
        _mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0)
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
