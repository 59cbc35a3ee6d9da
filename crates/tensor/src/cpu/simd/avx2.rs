//! AVX2 + FMA bodies (8 lanes) of the primitives in `simd.rs`. Tails are processed through an
//! 8-lane stack buffer so that every element goes through the same vector code.
//!
//! Safety: every function here requires avx2 and fma; `simd.rs` only calls them when detected.
use super::{ERF_CLAMP, ERF_LARGE_C, ERF_SMALL_C, EXP_C, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, TANH_C, TANH_SMALL};
use std::arch::x86_64::*;

const W: usize = 8;

#[inline]
#[target_feature(enable = "avx2,fma")]
fn splat(v: f32) -> __m256 {
    _mm256_set1_ps(v)
}

/// e^x for 8 lanes (see the module docs of `simd.rs` for the method and the accuracy).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp_v(x: __m256) -> __m256 {
    // max(LO, x) and min(HI, .) return x itself when x is NaN (the second operand wins).
    let x = _mm256_min_ps(splat(EXP_HI), _mm256_max_ps(splat(EXP_LO), x));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, splat(LOG2E)));
    let r = _mm256_fnmadd_ps(n, splat(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, splat(LN2_LO), r);
    let mut p = splat(EXP_C[0]);
    for &c in &EXP_C[1..] {
        p = _mm256_fmadd_ps(p, r, splat(c));
    }
    // 2^n in two factors so that subnormal results round once and overflow gives inf.
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(ni);
    let n2 = _mm256_sub_epi32(ni, n1);
    let bias = _mm256_set1_epi32(127);
    let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
    let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
    _mm256_mul_ps(_mm256_mul_ps(p, s1), s2)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn tanh_v(x: __m256) -> __m256 {
    let sign_bit = splat(-0.0);
    let sign = _mm256_and_ps(x, sign_bit);
    let a = _mm256_andnot_ps(sign_bit, x);
    // both branches on |x|, then the sign (so tanh(-0) = -0)
    // |x| < 0.5: a + a·s·P(s)
    let s = _mm256_mul_ps(x, x);
    let mut p = splat(TANH_C[0]);
    for &c in &TANH_C[1..] {
        p = _mm256_fmadd_ps(p, s, splat(c));
    }
    let small = _mm256_fmadd_ps(_mm256_mul_ps(a, s), p, a);
    // otherwise: 1 - 2/(e^{2|x|} + 1)
    let e = exp_v(_mm256_add_ps(a, a));
    let large = _mm256_sub_ps(splat(1.0), _mm256_div_ps(splat(2.0), _mm256_add_ps(e, splat(1.0))));
    let m = _mm256_cmp_ps::<_CMP_LT_OQ>(a, splat(TANH_SMALL));
    _mm256_or_ps(_mm256_blendv_ps(large, small, m), sign)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn erf_v(x: __m256) -> __m256 {
    let sign_bit = splat(-0.0);
    let sign = _mm256_and_ps(x, sign_bit);
    let a = _mm256_andnot_ps(sign_bit, x);
    // |x| < 1: x + x·P(x²)
    let s = _mm256_mul_ps(x, x);
    let mut p = splat(ERF_SMALL_C[0]);
    for &c in &ERF_SMALL_C[1..] {
        p = _mm256_fmadd_ps(p, s, splat(c));
    }
    let small = _mm256_fmadd_ps(x, p, x);
    // 1 ≤ |x|: 1 - e^{-x²}·Q(1/(1 + |x|/2)), |x| clamped to 4 (NaN stays NaN: min returns it)
    let a = _mm256_min_ps(splat(ERF_CLAMP), a);
    let t = _mm256_div_ps(splat(1.0), _mm256_fmadd_ps(splat(0.5), a, splat(1.0)));
    let mut q = splat(ERF_LARGE_C[0]);
    for &c in &ERF_LARGE_C[1..] {
        q = _mm256_fmadd_ps(q, t, splat(c));
    }
    let e = exp_v(_mm256_xor_ps(_mm256_mul_ps(a, a), sign_bit));
    let large = _mm256_or_ps(_mm256_fnmadd_ps(e, q, splat(1.0)), sign);
    let m = _mm256_cmp_ps::<_CMP_LT_OQ>(a, splat(1.0));
    _mm256_blendv_ps(large, small, m)
}

/// Applies a lane function in place, the tail through a padded buffer.
macro_rules! map_inplace {
    ($x:expr, $f:expr) => {{
        let x: &mut [f32] = $x;
        let mut chunks = x.chunks_exact_mut(W);
        for c in &mut chunks {
            let v = _mm256_loadu_ps(c.as_ptr());
            _mm256_storeu_ps(c.as_mut_ptr(), $f(v));
        }
        let rem = chunks.into_remainder();
        if !rem.is_empty() {
            let mut buf = [0f32; W];
            buf[..rem.len()].copy_from_slice(rem);
            let v = _mm256_loadu_ps(buf.as_ptr());
            _mm256_storeu_ps(buf.as_mut_ptr(), $f(v));
            rem.copy_from_slice(&buf[..rem.len()]);
        }
    }};
}

/// `out[i] = f(a[i], b[i])`, the tail through padded buffers (padding 1.0 keeps division finite).
macro_rules! zip_map {
    ($a:expr, $b:expr, $out:expr, $f:expr) => {{
        let (a, b, out): (&[f32], &[f32], &mut [f32]) = ($a, $b, $out);
        let n = out.len();
        let full = n - n % W;
        let mut i = 0;
        while i < full {
            let v = $f(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
            i += W;
        }
        if full < n {
            let (mut ba, mut bb, mut bo) = ([1f32; W], [1f32; W], [0f32; W]);
            ba[..n - full].copy_from_slice(&a[full..]);
            bb[..n - full].copy_from_slice(&b[full..]);
            _mm256_storeu_ps(bo.as_mut_ptr(), $f(_mm256_loadu_ps(ba.as_ptr()), _mm256_loadu_ps(bb.as_ptr())));
            out[full..].copy_from_slice(&bo[..n - full]);
        }
    }};
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_inplace(x: &mut [f32]) {
    map_inplace!(x, exp_v)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn tanh_inplace(x: &mut [f32]) {
    map_inplace!(x, tanh_v)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn erf_inplace(x: &mut [f32]) {
    map_inplace!(x, erf_v)
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn scale(x: &mut [f32], alpha: f32) {
    let k = splat(alpha);
    map_inplace!(x, |v| _mm256_mul_ps(v, k))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Loads `rem` (shorter than W) into a vector padded with `pad`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_tail(rem: &[f32], pad: f32) -> __m256 {
    let mut buf = [pad; W];
    buf[..rem.len()].copy_from_slice(rem);
    _mm256_loadu_ps(buf.as_ptr())
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn sum(x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut chunks = x.chunks_exact(4 * W);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(c.as_ptr().add(k * W)));
        }
    }
    let mut rest = chunks.remainder().chunks_exact(W);
    for c in &mut rest {
        acc[0] = _mm256_add_ps(acc[0], _mm256_loadu_ps(c.as_ptr()));
    }
    acc[1] = _mm256_add_ps(acc[1], load_tail(rest.remainder(), 0.0));
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn max(x: &[f32]) -> f32 {
    let mut acc = [splat(f32::NEG_INFINITY); 4];
    let mut nan = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact(4 * W);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = _mm256_loadu_ps(c.as_ptr().add(k * W));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            *a = _mm256_max_ps(*a, v);
        }
    }
    let mut rest = chunks.remainder().chunks_exact(W);
    for c in &mut rest {
        let v = _mm256_loadu_ps(c.as_ptr());
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        acc[0] = _mm256_max_ps(acc[0], v);
    }
    let v = load_tail(rest.remainder(), f32::NEG_INFINITY);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    acc[1] = _mm256_max_ps(acc[1], v);
    if _mm256_movemask_ps(nan) != 0 {
        return f32::NAN;
    }
    hmax(_mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i + 4 * W <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + k * W)), _mm256_loadu_ps(pb.add(i + k * W)), *s);
        }
        i += 4 * W;
    }
    while i + W <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += W;
    }
    acc[1] = _mm256_fmadd_ps(load_tail(&a[i..], 0.0), load_tail(&b[i..], 0.0), acc[1]);
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let k = splat(alpha);
    let n = y.len();
    let full = n - n % W;
    let mut i = 0;
    while i < full {
        let v = _mm256_fmadd_ps(k, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(y.as_ptr().add(i)));
        _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
        i += W;
    }
    for j in full..n {
        y[j] = alpha.mul_add(x[j], y[j]);
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm256_add_ps(x, y))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm256_sub_ps(x, y))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm256_mul_ps(x, y))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn div(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm256_div_ps(x, y))
}
