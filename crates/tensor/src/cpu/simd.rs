//! SIMD primitives with run-time dispatch: AVX-512F, AVX2+FMA, or scalar.
//!
//! `level()` is detected once (`is_x86_feature_detected!`); tests may force a lower level with
//! [`force_level`] to check every path against the scalar one. Each primitive has a scalar body here
//! and a vector body written once in `simd/body.rs`, generic over the crate-private `VF32` trait
//! (`vf32.rs`: `F512` for AVX-512F, `F256` for AVX2+FMA, and the math functions `exp`, `tanh`,
//! `log`), instantiated below inside one `#[target_feature]` function per level.
//!
//! Accuracy (f32, measured against an f64 reference in `tests/simd.rs`):
//! - `exp_inplace`: ≤ ~2 ulp, subnormal results round once, `exp(-inf) = 0`, `exp(x > 88.73) = inf`,
//!   NaN propagates (see `VF32::exp`). The scalar body calls `f32::exp`.
//! - `tanh_inplace`: relative error ≤ ~3e-7; `tanh(±inf) = ±1`.
//! - `log_inplace`: ≤ ~2 ulp, subnormals included. The scalar body calls `f32::ln`.
//! - `max` returns NaN when any element is NaN (like PyTorch's max), at every level.
//! (The one vector erf is GELU's, in `ops/gelu/cpu.rs`.)
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
pub(crate) mod body;

/// One module of `#[target_feature]` entry points per SIMD level, all calling the generic bodies.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_level {
    ($m:ident, $feat:literal, $V:ty) => {
        mod $m {
            use super::body;
            use crate::cpu::vf32::VF32;
            type V = $V;
            #[target_feature(enable = $feat)]
            pub unsafe fn exp_inplace(x: &mut [f32]) {
                body::map_inplace::<V>(x, |v| v.exp())
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn tanh_inplace(x: &mut [f32]) {
                body::map_inplace::<V>(x, |v| v.tanh())
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn log_inplace(x: &mut [f32]) {
                body::map_inplace::<V>(x, |v| v.log())
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn scale(x: &mut [f32], alpha: f32) {
                let k = V::splat(alpha);
                body::map_inplace::<V>(x, |v| v.mul(k))
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
                let p = x.as_mut_ptr();
                body::exp_sum_row::<V>(p, x.len(), m, Some(p))
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn sum(x: &[f32]) -> f32 {
                body::sum::<V>(x)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn max(x: &[f32]) -> f32 {
                body::max::<V>(x)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
                body::dot::<V>(a, b)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
                body::axpy::<V>(alpha, x, y)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
                body::zip_map::<V>(a, b, out, |x, y| x.add(y))
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
                body::zip_map::<V>(a, b, out, |x, y| x.sub(y))
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
                body::zip_map::<V>(a, b, out, |x, y| x.mul(y))
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn div(a: &[f32], b: &[f32], out: &mut [f32]) {
                body::zip_map::<V>(a, b, out, |x, y| x.div(y))
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
simd_level!(avx512, "avx512f", crate::cpu::vf32::F512);
#[cfg(target_arch = "x86_64")]
simd_level!(avx2, "avx2,fma", crate::cpu::vf32::F256);

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

/// Serializes [`with_level`] and `gemm::with_kernel`.
pub(crate) static FORCE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` with the level forced to `l`, restoring afterwards. Serialized by a global lock so
/// concurrent tests do not see each other's forced level.
pub fn with_level<R>(l: Level, f: impl FnOnce() -> R) -> R {
    let _g = FORCE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
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

/// `x[i] = exp(x[i] - m)`, returning the sum of the new values (`x[i] = -inf` gives 0). The row
/// step of every online / two-pass softmax.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    dispatch!(exp_sub_sum(x, m))
}

/// `x[i] = ln(x[i])` (≤ ~2 ulp; `ln(±0) = -inf`, negative → NaN, `ln(inf) = inf`, subnormals exact-range).
pub fn log_inplace(x: &mut [f32]) {
    dispatch!(log_inplace(x))
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

// ----- scalar bodies -----------------------------------------------------------------------------
pub(crate) mod scalar {
    use crate::cpu::vf32::{TANH_C, TANH_SMALL};

    pub fn exp_inplace(x: &mut [f32]) {
        for v in x {
            *v = v.exp();
        }
    }

    pub fn log_inplace(x: &mut [f32]) {
        for v in x {
            *v = v.ln();
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

    pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        let mut s = 0.0;
        for v in x {
            *v = (*v - m).exp();
            s += *v;
        }
        s
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
