//! SIMD primitives with run-time dispatch: AVX-512F, AVX2+FMA, or scalar.
//!
//! `level()` is detected once (`is_x86_feature_detected!`); tests may force a lower level with
//! [`force_level`] to check every path against the scalar one. Each primitive has a scalar body here
//! and `#[target_feature]` bodies in `simd/avx2.rs` and `simd/avx512.rs`.
//!
//! Accuracy (f32, measured against an f64 reference in `tests/simd.rs`):
//! - `exp_inplace`: range reduction `x = n·ln2 + r`, degree-7 polynomial for `e^r`, scaling by `2^n`
//!   in two steps (so results that underflow to subnormals round once); ≤ ~2 ulp. `exp(-inf) = 0`,
//!   `exp(x > 88.73) = inf`, NaN propagates. The scalar body calls `f32::exp`.
//! - `tanh_inplace`: odd polynomial for `|x| < 0.5`, `1 - 2/(e^{2|x|} + 1)` above; relative error
//!   ≤ ~3e-7; `tanh(±inf) = ±1`.
//! - `erf_inplace`: `x + x·P(x²)` for `|x| < 1` and `1 - e^{-x²}·Q(1/(1 + x/2))` up to 4 (beyond that
//!   erf rounds to ±1); both polynomials fitted by us (relative-error minimax-like fit, degree 6 and
//!   7); absolute error ≤ ~1.5e-7. The scalar body uses the same polynomials.
//! - `max` returns NaN when any element is NaN (like PyTorch's max), at every level.
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar = 1,
    Avx2 = 2,
    Avx512 = 3,
}

static FORCED: AtomicU8 = AtomicU8::new(0);

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Level::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
    }
    Level::Scalar
}

/// The level kernels use now: the detected one, or a lower one forced by [`force_level`].
pub fn level() -> Level {
    let d = detected();
    match FORCED.load(Ordering::Relaxed) {
        1 => Level::Scalar,
        2 => Level::Avx2.min(d),
        3 => Level::Avx512.min(d),
        _ => d,
    }
}

/// Forces kernels to use at most `l` (None: back to the detected level). Process-wide; for tests
/// and benchmarks of each path.
pub fn force_level(l: Option<Level>) {
    FORCED.store(l.map(|l| l as u8).unwrap_or(0), Ordering::Relaxed);
}

/// Every level this machine can run, lowest first (for tests that compare paths).
pub fn available_levels() -> Vec<Level> {
    [Level::Scalar, Level::Avx2, Level::Avx512].into_iter().filter(|&l| l <= detected()).collect()
}

/// Runs `f` with the level forced to `l`, restoring afterwards. Serialized by a global lock so
/// concurrent tests do not see each other's forced level.
pub fn with_level<R>(l: Level, f: impl FnOnce() -> R) -> R {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    force_level(Some(l));
    let r = f();
    force_level(None);
    r
}

/// Calls the AVX-512 body, the AVX2 body, or the scalar body, by `level()`.
macro_rules! dispatch {
    ($name:ident ( $($arg:expr),* )) => {{
        match level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level()` only reports Avx512 when avx512f, avx2 and fma were detected.
            Level::Avx512 => unsafe { avx512::$name($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `level()` only reports Avx2 when avx2 and fma were detected.
            Level::Avx2 => unsafe { avx2::$name($($arg),*) },
            _ => scalar::$name($($arg),*),
        }
    }};
}

// ----- public primitives (f32) -----------------------------------------------------------------

/// `x[i] = exp(x[i])`.
pub fn exp_inplace(x: &mut [f32]) {
    dispatch!(exp_inplace(x))
}

/// `x[i] = tanh(x[i])`.
pub fn tanh_inplace(x: &mut [f32]) {
    dispatch!(tanh_inplace(x))
}

/// `x[i] = erf(x[i])` (absolute error ≤ ~1.5e-7).
pub fn erf_inplace(x: &mut [f32]) {
    dispatch!(erf_inplace(x))
}

/// Pairwise blocks for `sum` and `dot`: a block is summed with vector partial sums, longer inputs
/// are halved recursively (at block multiples), so the error grows with log2(len / PAIR_BLOCK).
const PAIR_BLOCK: usize = 1024;

/// Sum of all elements (vector partial sums inside pairwise blocks: the rounding error stays
/// ≲ 1e-5 · Σ|x| even for millions of elements).
pub fn sum(x: &[f32]) -> f32 {
    if x.len() > PAIR_BLOCK {
        let mid = x.len().div_ceil(2 * PAIR_BLOCK) * PAIR_BLOCK;
        return sum(&x[..mid]) + sum(&x[mid..]);
    }
    dispatch!(sum(x))
}

/// Maximum element (-inf for an empty slice; NaN when any element is NaN).
pub fn max(x: &[f32]) -> f32 {
    dispatch!(max(x))
}

/// Dot product of equal-length slices (panics when the lengths differ).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "simd::dot: length mismatch");
    if a.len() > PAIR_BLOCK {
        let mid = a.len().div_ceil(2 * PAIR_BLOCK) * PAIR_BLOCK;
        return dot(&a[..mid], &b[..mid]) + dot(&a[mid..], &b[mid..]);
    }
    dispatch!(dot(a, b))
}

/// `y += alpha * x` (panics when the lengths differ).
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "simd::axpy: length mismatch");
    dispatch!(axpy(alpha, x, y))
}

/// `x *= alpha`.
pub fn scale(x: &mut [f32], alpha: f32) {
    dispatch!(scale(x, alpha))
}

/// `out = a + b` elementwise (panics when the lengths differ).
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    check3("add", a, b, out);
    dispatch!(add(a, b, out))
}

/// `out = a - b` elementwise (panics when the lengths differ).
pub fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
    check3("sub", a, b, out);
    dispatch!(sub(a, b, out))
}

/// `out = a * b` elementwise (panics when the lengths differ).
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    check3("mul", a, b, out);
    dispatch!(mul(a, b, out))
}

/// `out = a / b` elementwise (panics when the lengths differ).
pub fn div(a: &[f32], b: &[f32], out: &mut [f32]) {
    check3("div", a, b, out);
    dispatch!(div(a, b, out))
}

fn check3(name: &str, a: &[f32], b: &[f32], out: &[f32]) {
    assert!(a.len() == b.len() && a.len() == out.len(), "simd::{name}: length mismatch ({}, {}, {})", a.len(), b.len(), out.len());
}

// ----- shared constants ------------------------------------------------------------------------

/// exp: inputs are clamped to [EXP_LO, EXP_HI] (outside, the result is 0 or inf anyway).
pub(crate) const EXP_LO: f32 = -104.0;
pub(crate) const EXP_HI: f32 = 88.8;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^15 (Cody–Waite).
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor coefficients 1/k! for k = 7 down to 0: e^r by Horner's rule, |r| ≤ ln2/2
/// (truncation error 5e-9 relative).
pub(crate) const EXP_C: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

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

/// erf(x) = x + x·P(x²) for |x| < 1; coefficients of P from the highest power down.
pub(crate) const ERF_SMALL_C: [f32; 7] =
    [7.854_221_6e-5, -8.010_311_3e-4, 5.188_342_6e-3, -2.685_382e-2, 1.128_358_5e-1, -3.761_262_6e-1, 1.283_791_7e-1];
/// erf(x) = 1 - e^{-x²}·Q(t), t = 1/(1 + x/2), for 1 ≤ x ≤ 4; coefficients of Q from the highest down.
pub(crate) const ERF_LARGE_C: [f32; 8] =
    [1.191_563_8e-1, -4.706_195e-1, 5.625_353e-1, -1.031_085_3e-1, 3.476_000_4e-1, 2.597_358_5e-1, 2.849_062_4e-1, -1.538_312_2e-4];
pub(crate) const ERF_CLAMP: f32 = 4.0;

// ----- scalar bodies -----------------------------------------------------------------------------
pub(crate) mod scalar {
    use super::*;

    pub fn exp_inplace(x: &mut [f32]) {
        for v in x {
            *v = v.exp();
        }
    }

    pub fn tanh_one(x: f32) -> f32 {
        let a = x.abs();
        if a < TANH_SMALL {
            let s = x * x;
            let mut p = TANH_C[0];
            for &c in &TANH_C[1..] {
                p = p * s + c;
            }
            // on |x|, then the sign, so that tanh(-0) = -0
            (a + (a * s) * p).copysign(x)
        } else {
            let e = (2.0 * a).exp();
            (1.0 - 2.0 / (e + 1.0)).copysign(x)
        }
    }

    pub fn tanh_inplace(x: &mut [f32]) {
        for v in x {
            *v = tanh_one(*v);
        }
    }

    pub fn erf_one(x: f32) -> f32 {
        let a = x.abs();
        if a < 1.0 {
            let s = x * x;
            let mut p = ERF_SMALL_C[0];
            for &c in &ERF_SMALL_C[1..] {
                p = p * s + c;
            }
            return x + x * p;
        }
        if a.is_nan() {
            return x;
        }
        let a = a.min(ERF_CLAMP);
        let t = 1.0 / (0.5 * a + 1.0);
        let mut q = ERF_LARGE_C[0];
        for &c in &ERF_LARGE_C[1..] {
            q = q * t + c;
        }
        (1.0 - (-a * a).exp() * q).copysign(x)
    }

    pub fn erf_inplace(x: &mut [f32]) {
        for v in x {
            *v = erf_one(*v);
        }
    }

    pub fn sum(x: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
        let mut s = 0.0;
        for v in chunks.remainder() {
            s += v;
        }
        acc.iter().sum::<f32>() + s
    }

    pub fn max(x: &[f32]) -> f32 {
        let mut m = f32::NEG_INFINITY;
        for &v in x {
            if v.is_nan() {
                return v;
            }
            if v > m {
                m = v;
            }
        }
        m
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for k in 0..8 {
                acc[k] += x[k] * y[k];
            }
        }
        let mut s = 0.0;
        for (x, y) in ra.iter().zip(rb) {
            s += x * y;
        }
        acc.iter().sum::<f32>() + s
    }

    pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
    }

    pub fn scale(x: &mut [f32], alpha: f32) {
        for v in x {
            *v *= alpha;
        }
    }

    pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    }
    pub fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = x - y;
        }
    }
    pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = x * y;
        }
    }
    pub fn div(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = x / y;
        }
    }
}
