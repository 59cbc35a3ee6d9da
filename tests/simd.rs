//! Every SIMD primitive at every level this machine runs, against an f64 reference, on seeded random
//! inputs of odd lengths (tails) and on special values.
//!
//! Documented tolerances (what the primitives promise):
//! - exp: relative error ≤ 3e-7 (≈ 2.5 ulp) for normal results; subnormal results within 2 units
//!   of the smallest subnormal; exp(-inf) = 0, exp(x ≥ 88.73) = inf, NaN → NaN.
//! - tanh: relative error ≤ 5e-7; tanh(±inf) = ±1.
//! - log: relative error ≤ 3e-7; log(±0) = -inf, log(x < 0) = NaN, log(inf) = inf; subnormals.
//! - sum, dot: |err| ≤ 1e-6 · Σ|terms| up to 1023 elements, ≤ 1e-5 · Σ|terms| for millions
//!   (vector partial sums inside pairwise blocks).
//! - max: exact; NaN when any element is NaN.
//! - exp_sub_sum: each value as exp; the sum within 1e-6 relative.
//! - add, sub, mul, div, scale: exact (correctly rounded); axpy: within 1 ulp of |αx| + |y|.
use kiln::tensor::cpu::simd::{self, Level};

const LENS: [usize; 8] = [0, 1, 7, 16, 17, 33, 1000, 1023];

/// splitmix64: a tiny seeded generator so the inputs are the same on every machine.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

fn levels() -> Vec<Level> {
    let l = simd::available_levels();
    assert_eq!(l[0], Level::Scalar);
    l
}

/// Checks `f` (an in-place map) against `reference` elementwise; returns the worst error seen.
fn check_map(name: &str, f: fn(&mut [f32]), reference: fn(f64) -> f64, xs: &[f32], err: impl Fn(f64, f64) -> f64, tol: f64) -> f64 {
    let mut worst = 0.0f64;
    for l in levels() {
        let mut y = xs.to_vec();
        simd::with_level(l, || f(&mut y));
        for (i, (&x, &v)) in xs.iter().zip(&y).enumerate() {
            let r = reference(x as f64);
            if r.is_nan() {
                assert!(v.is_nan(), "{name} {l:?}: f({x}) = {v}, expected NaN");
                continue;
            }
            if (r as f32).is_infinite() || v.is_infinite() {
                assert_eq!(v, r as f32, "{name} {l:?}: f({x}) at {i}");
                continue;
            }
            let e = err(v as f64, r);
            worst = worst.max(e);
            assert!(e <= tol, "{name} {l:?}: f({x}) = {v}, reference {r}, error {e:.3e} > {tol:.1e} (index {i} of {})", xs.len());
        }
    }
    worst
}

fn rel(v: f64, r: f64) -> f64 {
    (v - r).abs() / r.abs().max(f64::MIN_POSITIVE)
}

fn exp_err(v: f64, r: f64) -> f64 {
    // Normal results: relative error. Subnormal results: error in units of the smallest subnormal,
    // scaled so that 2 units map to the relative tolerance.
    if r.abs() < f32::MIN_POSITIVE as f64 {
        (v - r).abs() / 2f64.powi(-149) * 1.5e-7
    } else {
        rel(v, r)
    }
}

#[test]
fn exp_all_levels() {
    let mut rng = Rng(1);
    let mut worst = 0.0f64;
    for &n in &LENS {
        for (lo, hi) in [(-1.0, 1.0), (-20.0, 20.0), (-104.0, 89.0)] {
            worst = worst.max(check_map("exp", simd::exp_inplace, f64::exp, &rng.vec(n, lo, hi), exp_err, 3e-7));
        }
    }
    let special = [0.0, -0.0, 1.0, -1.0, 88.72, 88.73, 89.0, 1e10, -87.0, -87.4, -95.0, -103.0, -103.9, -104.5, -110.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-30, -1e-30, f32::MAX, f32::MIN];
    check_map("exp special", simd::exp_inplace, f64::exp, &special, exp_err, 3e-7);
    for l in levels() {
        let mut v = vec![f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.0, 89.0, -200.0, 88.0];
        simd::with_level(l, || simd::exp_inplace(&mut v));
        assert_eq!(v[0], 0.0, "{l:?}");
        assert_eq!(v[1], f32::INFINITY, "{l:?}");
        assert!(v[2].is_nan(), "{l:?}");
        assert_eq!(v[3], 1.0, "{l:?}");
        assert_eq!(v[4], f32::INFINITY, "{l:?}");
        assert_eq!(v[5], 0.0, "{l:?}");
        assert!(v[6].is_finite(), "{l:?}");
    }
    eprintln!("exp: worst relative error {worst:.3e}");
}

#[test]
fn tanh_all_levels() {
    let mut rng = Rng(2);
    let mut worst = 0.0f64;
    for &n in &LENS {
        for (lo, hi) in [(-0.6, 0.6), (-3.0, 3.0), (-12.0, 12.0), (-1e-3, 1e-3)] {
            worst = worst.max(check_map("tanh", simd::tanh_inplace, f64::tanh, &rng.vec(n, lo, hi), rel, 5e-7));
        }
    }
    let special = [0.0, -0.0, 0.5, -0.5, 0.4999999, 0.5000001, 9.0, 10.0, 50.0, 1e-30, -1e-38, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN];
    check_map("tanh special", simd::tanh_inplace, f64::tanh, &special, rel, 5e-7);
    for l in levels() {
        let mut v = vec![f32::INFINITY, f32::NEG_INFINITY, -0.0];
        simd::with_level(l, || simd::tanh_inplace(&mut v));
        assert_eq!(v[..2], [1.0, -1.0], "{l:?}");
        assert!(v[2] == 0.0 && v[2].is_sign_negative(), "{l:?}: tanh(-0) = {}", v[2]);
    }
    eprintln!("tanh: worst relative error {worst:.3e}");
}

#[test]
fn log_all_levels() {
    let mut rng = Rng(6);
    let mut worst = 0.0f64;
    for &n in &LENS {
        // log-uniform over the whole positive range, subnormals included, and near 1
        let wide: Vec<f32> = rng.vec(n, -103.0, 88.7).iter().map(|&u| (u as f64).exp() as f32).collect();
        worst = worst.max(check_map("log", simd::log_inplace, f64::ln, &wide, rel, 3e-7));
        worst = worst.max(check_map("log", simd::log_inplace, f64::ln, &rng.vec(n, 0.5, 2.0), rel, 3e-7));
        worst = worst.max(check_map("log", simd::log_inplace, f64::ln, &rng.vec(n, 0.999, 1.001), rel, 3e-7));
    }
    let special = [1.0, 2.0, 0.5, std::f32::consts::SQRT_2, 1.414_213_4, 1.000_000_1, 0.999_999_94, 1e-45, 1e-40, f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, f32::NAN, -1.0, -1e-30, f32::NEG_INFINITY];
    check_map("log special", simd::log_inplace, f64::ln, &special, rel, 3e-7);
    for l in levels() {
        let mut v = vec![0.0, -0.0, -2.0, f32::INFINITY, 1.0];
        simd::with_level(l, || simd::log_inplace(&mut v));
        assert_eq!(v[..2], [f32::NEG_INFINITY, f32::NEG_INFINITY], "{l:?}");
        assert!(v[2].is_nan(), "{l:?}");
        assert_eq!(v[3..], [f32::INFINITY, 0.0], "{l:?}");
    }
    eprintln!("log: worst relative error {worst:.3e}");
}

#[test]
fn exp_sub_sum_all_levels() {
    let mut rng = Rng(11);
    for &n in &LENS {
        let mut x = rng.vec(n, -30.0, 5.0);
        for i in (0..n).step_by(5) {
            x[i] = f32::NEG_INFINITY;
        }
        let m = 2.5f32;
        let want: Vec<f64> = x.iter().map(|&v| ((v - m) as f64).exp()).collect();
        let want_sum: f64 = want.iter().sum();
        for l in levels() {
            let mut got = x.clone();
            let s = simd::with_level(l, || simd::exp_sub_sum(&mut got, m));
            assert!((s as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1e-30), "{l:?} n={n}: sum {s} vs {want_sum}");
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!((g as f64 - w).abs() <= 3e-7 * w, "{l:?} n={n} i={i}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn reductions_all_levels() {
    let mut rng = Rng(4);
    for l in levels() {
        for &n in &LENS {
            let a = rng.vec(n, -3.0, 3.0);
            let b = rng.vec(n, -3.0, 3.0);
            let (s, m, d) = simd::with_level(l, || (simd::sum(&a), simd::max(&a), simd::dot(&a, &b)));
            let rs: f64 = a.iter().map(|&v| v as f64).sum();
            let bound: f64 = a.iter().map(|&v| (v as f64).abs()).sum::<f64>() * 1e-6 + 1e-30;
            assert!((s as f64 - rs).abs() <= bound, "sum {l:?} n={n}: {s} vs {rs}");
            let rm = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(m, rm, "max {l:?} n={n}");
            let rd: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let bound: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum::<f64>() * 1e-6 + 1e-30;
            assert!((d as f64 - rd).abs() <= bound, "dot {l:?} n={n}: {d} vs {rd}");
        }
        // max: NaN anywhere (body, tail) gives NaN; empty gives -inf; the max may sit in the tail.
        for &n in &[1usize, 7, 17, 64, 1023] {
            for pos in [0, n / 2, n - 1] {
                let mut a = rng.vec(n, -1.0, 1.0);
                a[pos] = f32::NAN;
                assert!(simd::with_level(l, || simd::max(&a)).is_nan(), "max {l:?} NaN at {pos} of {n}");
                a[pos] = 5.0;
                assert_eq!(simd::with_level(l, || simd::max(&a)), 5.0, "max {l:?} at {pos} of {n}");
            }
        }
        assert_eq!(simd::with_level(l, || simd::max(&[])), f32::NEG_INFINITY);
        assert_eq!(simd::with_level(l, || simd::max(&[f32::NEG_INFINITY; 19])), f32::NEG_INFINITY);
        assert_eq!(simd::with_level(l, || simd::sum(&[])), 0.0);
        // long constant runs: rounding errors all go the same way, the worst case for a sum
        for n in [100_003usize, 1 << 22] {
            let c = vec![0.1f32; n];
            let (s, d) = simd::with_level(l, || (simd::sum(&c), simd::dot(&c, &c)));
            let (rs, rd) = (n as f64 * 0.1f32 as f64, n as f64 * (0.1f32 as f64).powi(2));
            assert!((s as f64 - rs).abs() <= 1e-5 * rs, "sum {l:?} n={n}: {s} vs {rs}");
            assert!((d as f64 - rd).abs() <= 1e-5 * rd, "dot {l:?} n={n}: {d} vs {rd}");
        }
    }
}

#[test]
fn elementwise_all_levels() {
    let mut rng = Rng(5);
    for l in levels() {
        for &n in &LENS {
            let a = rng.vec(n, -4.0, 4.0);
            let b: Vec<f32> = rng.vec(n, 0.5, 4.0).iter().enumerate().map(|(i, &v)| if i % 2 == 0 { v } else { -v }).collect();
            let ops: [(&str, fn(&[f32], &[f32], &mut [f32]), fn(f64, f64) -> f64); 4] = [
                ("add", simd::add, |x, y| x + y),
                ("sub", simd::sub, |x, y| x - y),
                ("mul", simd::mul, |x, y| x * y),
                ("div", simd::div, |x, y| x / y),
            ];
            for (name, f, r) in ops {
                let mut out = vec![f32::NAN; n];
                simd::with_level(l, || f(&a, &b, &mut out));
                for i in 0..n {
                    assert_eq!(out[i], r(a[i] as f64, b[i] as f64) as f32, "{name} {l:?} n={n} i={i}");
                }
            }
            let mut y = b.clone();
            simd::with_level(l, || simd::axpy(-1.7, &a, &mut y));
            for i in 0..n {
                let r = -1.7f32 as f64 * a[i] as f64 + b[i] as f64;
                let ulp = ((1.7 * a[i]).abs() + b[i].abs()) as f64 * f32::EPSILON as f64;
                assert!((y[i] as f64 - r).abs() <= ulp, "axpy {l:?} n={n} i={i}: {} vs {r}", y[i]);
            }
            let mut s = a.clone();
            simd::with_level(l, || simd::scale(&mut s, 0.3));
            for i in 0..n {
                assert_eq!(s[i], a[i] * 0.3, "scale {l:?} n={n} i={i}");
            }
        }
        // division by zero and NaN behave as IEEE at every level (tails included)
        let a = [1.0f32, -1.0, 0.0, f32::NAN, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [0.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let mut out = [0f32; 9];
        simd::with_level(l, || simd::div(&a, &b, &mut out));
        assert_eq!(out[0], f32::INFINITY);
        assert_eq!(out[1], f32::NEG_INFINITY);
        assert!(out[2].is_nan() && out[3].is_nan());
        assert_eq!(out[8], f32::INFINITY);
    }
}

#[test]
#[should_panic(expected = "length mismatch")]
fn length_mismatch_panics() {
    simd::add(&[1.0, 2.0], &[1.0], &mut [0.0, 0.0]);
}

#[test]
fn levels_are_ordered_and_forcing_is_restored() {
    let l = simd::available_levels();
    assert!(l.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*l.last().unwrap(), simd::detected());
    simd::with_level(Level::Scalar, || assert_eq!(simd::level(), Level::Scalar));
    assert_eq!(simd::level(), simd::detected());
}

/// The blocked GEMM's kernel follows the forced level: none (matrixmultiply) at scalar, AVX2 at
/// AVX2, and at AVX-512 the table's choice, which `with_kernel` overrides either way.
#[test]
fn gemm_kernel_follows_the_level() {
    use kiln::tensor::cpu::gemm::{kernel, with_kernel, GemmKernel};
    assert_eq!(simd::with_level(Level::Scalar, kernel), None);
    if simd::detected() >= Level::Avx2 {
        assert_eq!(simd::with_level(Level::Avx2, kernel), Some(GemmKernel::Avx2));
    }
    if simd::detected() >= Level::Avx512 {
        assert_eq!(with_kernel(GemmKernel::Avx512, kernel), Some(GemmKernel::Avx512));
        assert_eq!(with_kernel(GemmKernel::Avx2, kernel), Some(GemmKernel::Avx2));
        assert!(simd::with_level(Level::Avx512, kernel).is_some());
    }
}
