//! AVX-512F bodies (16 lanes) of the primitives in `simd.rs`. Tails use masked loads and stores.
//! Only AVX-512F instructions are used (bitwise float ops go through the integer forms, which
//! AVX-512F has; `_mm512_and_ps` would need AVX-512DQ).
//!
//! Safety: every function here requires avx512f (and `simd.rs` also checks avx2 and fma).
use super::{ERF_CLAMP, ERF_LARGE_C, ERF_SMALL_C, EXP_C, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, TANH_C, TANH_SMALL};
use std::arch::x86_64::*;

const W: usize = 16;
const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(v: f32) -> __m512 {
    _mm512_set1_ps(v)
}

/// The lanes of `x` whose sign bit is set, and |x|.
#[inline]
#[target_feature(enable = "avx512f")]
fn sign_abs(x: __m512) -> (__m512i, __m512) {
    let xi = _mm512_castps_si512(x);
    let sign = _mm512_and_epi32(xi, _mm512_set1_epi32(i32::MIN));
    (sign, _mm512_castsi512_ps(_mm512_andnot_epi32(_mm512_set1_epi32(i32::MIN), xi)))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn with_sign(v: __m512, sign: __m512i) -> __m512 {
    _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(v), sign))
}

/// e^x for 16 lanes. `scalef` computes p·2^n with one rounding, including subnormal results
/// and overflow to inf.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp_v(x: __m512) -> __m512 {
    let x = _mm512_min_ps(splat(EXP_HI), _mm512_max_ps(splat(EXP_LO), x));
    let n = _mm512_roundscale_ps::<ROUND>(_mm512_mul_ps(x, splat(LOG2E)));
    let r = _mm512_fnmadd_ps(n, splat(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, splat(LN2_LO), r);
    let mut p = splat(EXP_C[0]);
    for &c in &EXP_C[1..] {
        p = _mm512_fmadd_ps(p, r, splat(c));
    }
    _mm512_scalef_ps(p, n)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn tanh_v(x: __m512) -> __m512 {
    let (sign, a) = sign_abs(x);
    let s = _mm512_mul_ps(x, x);
    let mut p = splat(TANH_C[0]);
    for &c in &TANH_C[1..] {
        p = _mm512_fmadd_ps(p, s, splat(c));
    }
    // both branches on |x|, then the sign (so tanh(-0) = -0)
    let small = _mm512_fmadd_ps(_mm512_mul_ps(a, s), p, a);
    let e = exp_v(_mm512_add_ps(a, a));
    let large = _mm512_sub_ps(splat(1.0), _mm512_div_ps(splat(2.0), _mm512_add_ps(e, splat(1.0))));
    let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, splat(TANH_SMALL));
    with_sign(_mm512_mask_blend_ps(m, large, small), sign)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn erf_v(x: __m512) -> __m512 {
    let (sign, a) = sign_abs(x);
    let s = _mm512_mul_ps(x, x);
    let mut p = splat(ERF_SMALL_C[0]);
    for &c in &ERF_SMALL_C[1..] {
        p = _mm512_fmadd_ps(p, s, splat(c));
    }
    let small = _mm512_fmadd_ps(x, p, x);
    let a = _mm512_min_ps(splat(ERF_CLAMP), a);
    let t = _mm512_div_ps(splat(1.0), _mm512_fmadd_ps(splat(0.5), a, splat(1.0)));
    let mut q = splat(ERF_LARGE_C[0]);
    for &c in &ERF_LARGE_C[1..] {
        q = _mm512_fmadd_ps(q, t, splat(c));
    }
    let e = exp_v(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
    let large = with_sign(_mm512_fnmadd_ps(e, q, splat(1.0)), sign);
    let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, splat(1.0));
    _mm512_mask_blend_ps(m, large, small)
}

#[inline]
fn tail_mask(len: usize) -> __mmask16 {
    ((1u32 << len) - 1) as __mmask16
}

/// Applies a lane function in place; the tail with masked loads/stores.
macro_rules! map_inplace {
    ($x:expr, $f:expr) => {{
        let x: &mut [f32] = $x;
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i + W <= n {
            _mm512_storeu_ps(p.add(i), $f(_mm512_loadu_ps(p.add(i))));
            i += W;
        }
        if i < n {
            let m = tail_mask(n - i);
            _mm512_mask_storeu_ps(p.add(i), m, $f(_mm512_maskz_loadu_ps(m, p.add(i))));
        }
    }};
}

/// `out[i] = f(a[i], b[i])`; masked-off tail lanes read 1.0 so division stays quiet.
macro_rules! zip_map {
    ($a:expr, $b:expr, $out:expr, $f:expr) => {{
        let (a, b, out): (&[f32], &[f32], &mut [f32]) = ($a, $b, $out);
        let n = out.len();
        let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + W <= n {
            _mm512_storeu_ps(po.add(i), $f(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i))));
            i += W;
        }
        if i < n {
            let m = tail_mask(n - i);
            let one = splat(1.0);
            let v = $f(_mm512_mask_loadu_ps(one, m, pa.add(i)), _mm512_mask_loadu_ps(one, m, pb.add(i)));
            _mm512_mask_storeu_ps(po.add(i), m, v);
        }
    }};
}

#[target_feature(enable = "avx512f")]
pub unsafe fn exp_inplace(x: &mut [f32]) {
    map_inplace!(x, exp_v)
}

#[target_feature(enable = "avx512f")]
pub unsafe fn tanh_inplace(x: &mut [f32]) {
    map_inplace!(x, tanh_v)
}

#[target_feature(enable = "avx512f")]
pub unsafe fn erf_inplace(x: &mut [f32]) {
    map_inplace!(x, erf_v)
}

#[target_feature(enable = "avx512f")]
pub unsafe fn scale(x: &mut [f32], alpha: f32) {
    let k = splat(alpha);
    map_inplace!(x, |v| _mm512_mul_ps(v, k))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn sum(x: &[f32]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let n = x.len();
    let p = x.as_ptr();
    let mut i = 0;
    while i + 4 * W <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, _mm512_loadu_ps(p.add(i + k * W)));
        }
        i += 4 * W;
    }
    while i + W <= n {
        acc[0] = _mm512_add_ps(acc[0], _mm512_loadu_ps(p.add(i)));
        i += W;
    }
    if i < n {
        acc[1] = _mm512_add_ps(acc[1], _mm512_maskz_loadu_ps(tail_mask(n - i), p.add(i)));
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn max(x: &[f32]) -> f32 {
    let ninf = splat(f32::NEG_INFINITY);
    let mut acc = [ninf; 4];
    let mut nan: __mmask16 = 0;
    let n = x.len();
    let p = x.as_ptr();
    let mut i = 0;
    while i + 4 * W <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = _mm512_loadu_ps(p.add(i + k * W));
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            *a = _mm512_max_ps(*a, v);
        }
        i += 4 * W;
    }
    while i + W <= n {
        let v = _mm512_loadu_ps(p.add(i));
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        acc[0] = _mm512_max_ps(acc[0], v);
        i += W;
    }
    if i < n {
        let v = _mm512_mask_loadu_ps(ninf, tail_mask(n - i), p.add(i));
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        acc[1] = _mm512_max_ps(acc[1], v);
    }
    if nan != 0 {
        return f32::NAN;
    }
    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i + 4 * W <= n {
        for (k, s) in acc.iter_mut().enumerate() {
            *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + k * W)), _mm512_loadu_ps(pb.add(i + k * W)), *s);
        }
        i += 4 * W;
    }
    while i + W <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
        i += W;
    }
    if i < n {
        let m = tail_mask(n - i);
        acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc[1]);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let k = splat(alpha);
    let n = y.len();
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + W <= n {
        _mm512_storeu_ps(py.add(i), _mm512_fmadd_ps(k, _mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(py.add(i))));
        i += W;
    }
    if i < n {
        let m = tail_mask(n - i);
        let v = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(m, px.add(i)), _mm512_maskz_loadu_ps(m, py.add(i)));
        _mm512_mask_storeu_ps(py.add(i), m, v);
    }
}

#[target_feature(enable = "avx512f")]
pub unsafe fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm512_add_ps(x, y))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm512_sub_ps(x, y))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm512_mul_ps(x, y))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn div(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map!(a, b, out, |x, y| _mm512_div_ps(x, y))
}
