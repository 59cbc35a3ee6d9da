//! The fused nn ops: gelu / gelu_tanh, softmax / log_softmax, layer_norm, dropout, cross_entropy.
//! Each: f64 gradchecks on odd and non-contiguous shapes, values against a reference composed from
//! simpler ops (f32 and f64), every SIMD level against the scalar one, edge and error cases.
use kiln::tensor::cpu::simd::{self, Level};
use kiln::tensor::ops::{cross_entropy::cpu as ce, dropout, gelu::cpu as gk, gelu::GeluApprox, layer_norm::cpu as ln, softmax::cpu as sm};
use kiln::tensor::testing::{assert_close, gradcheck, max_rel_err, rand_var};
use kiln::{DType, Device, Error, Tensor};
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

fn randn(seed: u64, shape: &[usize], std: f64, dt: DType) -> Tensor {
    Tensor::randn(seed, shape, 0.0, std, dt, Device::Cpu).unwrap()
}
fn vec32(seed: u64, n: usize, std: f64) -> Vec<f32> {
    randn(seed, &[n], std, DType::F32).to_vec::<f32>().unwrap()
}
/// Applies `f` to every element (in f64), keeping shape and dtype. Not differentiable.
fn map(t: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    let v: Vec<f64> = t.to_vec_f64().unwrap().into_iter().map(f).collect();
    Tensor::from_vec(v, t.shape()).unwrap().to_dtype(t.dtype()).unwrap()
}
fn t32(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() != y.is_nan() {
                f32::INFINITY
            } else if x.is_nan() {
                0.0
            } else {
                (x - y).abs() / y.abs().max(1.0)
            }
        })
        .fold(0.0, f32::max)
}
/// Runs `f` at every SIMD level and checks each result against the scalar level's.
fn each_level_vs_scalar(what: &str, tol: f32, f: impl Fn() -> Vec<f32>) {
    let base = simd::with_level(Level::Scalar, &f);
    for l in simd::available_levels() {
        let e = max_abs_diff(&simd::with_level(l, &f), &base);
        assert!(e <= tol, "{what}: level {l:?} vs scalar: max rel err {e:.3e} > {tol:.1e}");
    }
}

/// erf by composite Simpson on [0, |x|] (independent of the library's series).
fn erf_ref(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let (a, n) = (x.abs().min(8.0), 2000);
    let h = a / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(a);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    (s * h / 3.0 * FRAC_2_SQRT_PI).copysign(x)
}

// ----- GELU -----------------------------------------------------------------------------------------

fn gelu_reference(x: &Tensor, approx: GeluApprox) -> Tensor {
    let inner = match approx {
        GeluApprox::Erf => map(&x.mul_scalar(FRAC_1_SQRT_2).unwrap(), erf_ref),
        // the library's composed tanh form (mul, add, tanh)
        GeluApprox::Tanh => return kiln::tensor::ops::gelu::composed_tanh(x).unwrap(),
    };
    x.mul(&inner.add_scalar(1.0).unwrap()).unwrap().mul_scalar(0.5).unwrap()
}

#[test]
fn gelu_gradcheck_odd_and_noncontiguous() {
    for approx in [GeluApprox::Erf, GeluApprox::Tanh] {
        for (i, shape) in [vec![3, 7], vec![5, 1], vec![2, 3, 17]].iter().enumerate() {
            gradcheck("gelu", &[rand_var(10 + i as u64, shape)], |x| x[0].gelu_with(approx)).unwrap();
        }
        gradcheck("gelu transposed", &[rand_var(20, &[7, 3])], |x| x[0].t()?.gelu_with(approx)).unwrap();
        gradcheck("gelu narrowed", &[rand_var(21, &[4, 9])], |x| x[0].narrow(1, 2, 5)?.gelu_with(approx)).unwrap();
    }
}

#[test]
fn gelu_matches_composed_reference() {
    for approx in [GeluApprox::Erf, GeluApprox::Tanh] {
        for (dt, tol) in [(DType::F32, 2e-6), (DType::F64, 1e-9)] {
            let x = randn(30, &[6, 37], 3.0, dt);
            assert_close(&format!("gelu {approx:?} {dt}"), &x.gelu_with(approx).unwrap(), &gelu_reference(&x, approx), tol);
            let xt = randn(31, &[37, 6], 3.0, dt).t().unwrap();
            assert_close("gelu of a transposed view", &xt.gelu_with(approx).unwrap(), &gelu_reference(&xt, approx), tol);
        }
        // f32 backward against the f64 backward on the same inputs
        let x = randn(32, &[5, 41], 3.0, DType::F32);
        let dy = randn(33, &[5, 41], 1.0, DType::F32);
        let g32 = t32(gk::gelu_bwd_f32(&x.to_vec().unwrap(), &dy.to_vec().unwrap(), approx), &[5, 41]);
        let g64 = gk::gelu_bwd(&x.to_vec_f64().unwrap(), &dy.to_vec_f64().unwrap(), approx);
        assert_close("gelu bwd f32 vs f64", &g32, &Tensor::from_vec(g64, &[5, 41]).unwrap(), 2e-6);
    }
}

#[test]
fn erf_accuracy() {
    let mut xs: Vec<f32> = (-6000..=6000).map(|i| i as f32 * 1e-3).collect();
    xs.extend([0.0, -0.0, 1e-30, 3.999_999_8, 4.0, 7.0, 1e30, f32::INFINITY, f32::NEG_INFINITY]);
    let want: Vec<f64> = xs.iter().map(|&x| erf_ref(x as f64)).collect();
    for &x in &[-5.5, -1.3, -0.2, 0.0, 0.7, 2.9, 5.9] {
        assert!((gk::erf_f64(x) - erf_ref(x)).abs() < 1e-9, "erf_f64({x})");
    }
    for l in simd::available_levels() {
        let got = simd::with_level(l, || gk::erf_f32(&xs));
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= 2e-7, "{l:?}: erf({}) = {g} vs {w}", xs[i]);
        }
        assert!(simd::with_level(l, || gk::erf_f32(&[f32::NAN]))[0].is_nan());
    }
}

#[test]
fn gelu_erf_backward_is_accurate_everywhere() {
    // the SIMD backward takes the Gaussian density from the derivative of erf's polynomial (no exp):
    // gelu'(x) against the f64 formula on a dense grid, tails and edges included
    let mut xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 * 1e-3).collect();
    xs.extend([5.656_854, 5.656_855, -5.656_854, 1e-30, 40.0, -40.0]);
    let ones = vec![1.0f32; xs.len()];
    let want = gk::gelu_bwd(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>(), &vec![1.0; xs.len()], GeluApprox::Erf);
    for l in simd::available_levels() {
        let got = simd::with_level(l, || gk::gelu_bwd_f32(&xs, &ones, GeluApprox::Erf));
        let (mut worst, mut at) = (0f64, 0f32);
        for ((&g, &w), &x) in got.iter().zip(&want).zip(&xs) {
            let e = (g as f64 - w).abs();
            if e > worst {
                (worst, at) = (e, x);
            }
        }
        assert!(worst <= 4e-7, "{l:?}: gelu'(x) off by {worst:.2e} at x = {at}");
    }
}

#[test]
fn gelu_every_simd_level_matches_scalar() {
    for approx in [GeluApprox::Erf, GeluApprox::Tanh] {
        for n in [1, 7, 16, 45, 40_000] {
            let (x, dy) = (vec32(40, n, 4.0), vec32(41, n, 1.0));
            each_level_vs_scalar("gelu fwd", 1e-6, || gk::gelu_fwd_f32(&x, approx));
            // dx = dy·gelu'(x): the absolute error of gelu' (a few f32 ulps of 1) is scaled by |dy|
            each_level_vs_scalar("gelu bwd", 3e-6, || gk::gelu_bwd_f32(&x, &dy, approx));
        }
    }
}

#[test]
fn gelu_edge_values_dtypes_and_errors() {
    let x = t32(vec![0.0, -0.0, 1e-20, -30.0, 30.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN], &[8]);
    for l in simd::available_levels() {
        for approx in [GeluApprox::Erf, GeluApprox::Tanh] {
            let y = simd::with_level(l, || x.gelu_with(approx).unwrap().to_vec::<f32>().unwrap());
            assert_eq!(&y[..5], &[0.0, 0.0, 5e-21, 0.0, 30.0], "{l:?} {approx:?}");
            assert!(y[5] == f32::INFINITY && y[7].is_nan(), "{l:?} {approx:?}: {y:?}");
        }
    }
    // half types compute in f32 and return their dtype, gradients too
    let x = randn(50, &[4, 9], 2.0, DType::F32);
    for dt in [DType::BF16, DType::F16] {
        let xh = x.to_dtype(dt).unwrap().var();
        let y = xh.gelu().unwrap();
        assert_eq!(y.dtype(), dt);
        assert!(max_rel_err(&y, &x.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap().gelu().unwrap()).unwrap() < 1e-2);
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(xh.grad().unwrap().dtype(), dt);
    }
    let e = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap().gelu_tanh().unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType { op: "gelu_tanh", .. }), "{e}");
}

// ----- softmax ----------------------------------------------------------------------------------------

/// Row-wise softmax in f64 (values only).
fn softmax_reference(x: &Tensor, log: bool) -> Tensor {
    let d = *x.shape().last().unwrap();
    let v = x.to_vec_f64().unwrap();
    let mut out = Vec::new();
    for row in v.chunks(d) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|&a| (a - m).exp()).sum();
        out.extend(row.iter().map(|&a| if log { a - m - s.ln() } else { (a - m).exp() / s }));
    }
    Tensor::from_vec(out, x.shape()).unwrap().to_dtype(x.dtype()).unwrap()
}

#[test]
fn softmax_gradcheck_odd_and_noncontiguous() {
    for log in [false, true] {
        let f = move |t: &Tensor| if log { t.log_softmax_last_dim() } else { t.softmax_last_dim() };
        for (i, shape) in [vec![3, 7], vec![5, 1], vec![2, 3, 17]].iter().enumerate() {
            gradcheck("softmax", &[rand_var(60 + i as u64, shape)], |x| f(&x[0])).unwrap();
        }
        gradcheck("softmax transposed", &[rand_var(63, &[7, 3])], |x| f(&x[0].t()?)).unwrap();
        gradcheck("softmax permuted", &[rand_var(64, &[3, 4, 5])], |x| f(&x[0].permute(&[2, 0, 1])?)).unwrap();
    }
}

#[test]
fn softmax_matches_reference_and_simd_levels() {
    for log in [false, true] {
        for (dt, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-12)] {
            let x = randn(70, &[4, 3, 19], 4.0, dt);
            let got = if log { x.log_softmax_last_dim() } else { x.softmax_last_dim() }.unwrap();
            assert_close(&format!("softmax log={log} {dt}"), &got, &softmax_reference(&x, log), tol);
        }
        for d in [1, 5, 8, 16, 23, 768] {
            let (x, dy) = (vec32(71, 12 * d, 5.0), vec32(72, 12 * d, 1.0));
            let y = sm::softmax_fwd_f32(&x, d, log);
            // the scalar level sums rows sequentially in f32 (error grows with d), SIMD in lanes
            each_level_vs_scalar("softmax fwd", 3e-6, || sm::softmax_fwd_f32(&x, d, log));
            each_level_vs_scalar("softmax bwd", 3e-6, || sm::softmax_bwd_f32(&y, &dy, d, log));
            let want = softmax_reference(&t32(x.clone(), &[12, d]), log).to_vec::<f32>().unwrap();
            for l in simd::available_levels() {
                let e = max_abs_diff(&simd::with_level(l, || sm::softmax_fwd_f32(&x, d, log)), &want);
                assert!(e < 3e-6, "softmax {l:?} vs f64 reference, d={d}: {e:.2e}");
            }
            let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
            let dy64: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
            let want: Vec<f32> = sm::softmax_bwd(&y64, &dy64, d, log).into_iter().map(|v| v as f32).collect();
            assert!(max_abs_diff(&sm::softmax_bwd_f32(&y, &dy, d, log), &want) < 1e-5, "softmax bwd f32 vs f64, d={d}");
        }
    }
}

#[test]
fn softmax_masks_and_edge_rows() {
    let ninf = f32::NEG_INFINITY;
    let x = t32(vec![1.0, ninf, 3.0, ninf, /* fully masked */ ninf, ninf, ninf, ninf, /* huge */ 1e30, 0.0, -1e30, 1e30], &[3, 4]);
    for l in simd::available_levels() {
        let (y, ly) = simd::with_level(l, || {
            (x.softmax_last_dim().unwrap().to_vec::<f32>().unwrap(), x.log_softmax_last_dim().unwrap().to_vec::<f32>().unwrap())
        });
        assert!(y[1] == 0.0 && y[3] == 0.0 && ((y[0] + y[2]) - 1.0).abs() < 1e-6, "{l:?}: {y:?}");
        assert!(ly[1] == ninf && ly[3] == ninf);
        assert!(y[4..8].iter().chain(&ly[4..8]).all(|v| v.is_nan()), "fully -inf rows give NaN, like PyTorch: {y:?}");
        assert_eq!(&y[8..12], &[0.5, 0.0, 0.0, 0.5]);
        assert!((ly[8] + std::f32::consts::LN_2).abs() < 1e-6 && ly[9] == -1e30);
    }
    // rows of length 1, and gradients of masked entries are 0
    let one = rand_var(80, &[4, 1]);
    assert_eq!(one.softmax_last_dim().unwrap().to_vec::<f64>().unwrap(), vec![1.0; 4]);
    assert_eq!(one.log_softmax_last_dim().unwrap().to_vec::<f64>().unwrap(), vec![0.0; 4]);
    let xm = t32(vec![0.5, ninf, -0.5, 2.0], &[1, 4]).var();
    xm.softmax_last_dim().unwrap().mul(&t32(vec![1.0, 2.0, 3.0, 4.0], &[1, 4])).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(xm.grad().unwrap().to_vec::<f32>().unwrap()[1], 0.0);
    let e = Tensor::from_vec(vec![1i64], &[1]).unwrap().softmax_last_dim().unwrap_err();
    assert!(e.to_string().contains("softmax"), "{e}");
    let h = randn(81, &[3, 10], 2.0, DType::BF16);
    assert_eq!(h.log_softmax_last_dim().unwrap().dtype(), DType::BF16);
}

// ----- layer_norm ---------------------------------------------------------------------------------

/// The library's composed LayerNorm (`ops::layer_norm::composed`: mean, sub, mul, sqrt, recip, add).
fn layer_norm_reference(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Tensor {
    kiln::tensor::ops::layer_norm::composed(x, w, b, eps).unwrap()
}

#[test]
fn layer_norm_gradcheck_odd_and_noncontiguous() {
    for (i, shape) in [vec![3, 7], vec![5, 1], vec![2, 3, 17]].iter().enumerate() {
        let d = *shape.last().unwrap();
        let s = 90 + 3 * i as u64;
        let (x, w, b) = (rand_var(s, shape), rand_var(s + 1, &[d]), rand_var(s + 2, &[d]));
        gradcheck("layer_norm", &[x.clone(), w, b], |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)).unwrap();
        gradcheck("layer_norm no affine", &[x], |t| t[0].layer_norm(None, None, 1e-5)).unwrap();
    }
    let (x, w) = (rand_var(99, &[7, 4]), rand_var(100, &[9]));
    gradcheck("layer_norm transposed x, narrowed w", &[x, w], |t| t[0].t()?.layer_norm(Some(&t[1].narrow(0, 1, 7)?), None, 1e-5)).unwrap();
}

#[test]
fn layer_norm_matches_reference_and_simd_levels() {
    for (dt, tol) in [(DType::F32, 2e-5), (DType::F64, 1e-10)] {
        let (x, w, b) = (randn(110, &[3, 5, 33], 2.0, dt).add_scalar(3.0).unwrap(), randn(111, &[33], 1.0, dt), randn(112, &[33], 1.0, dt));
        assert_close(
            &format!("layer_norm {dt}"),
            &x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap(),
            &layer_norm_reference(&x, Some(&w), Some(&b), 1e-5),
            tol,
        );
        assert_close("layer_norm weight only", &x.layer_norm(Some(&w), None, 1e-12).unwrap(), &layer_norm_reference(&x, Some(&w), None, 1e-12), tol);
    }
    for d in [1, 7, 16, 17, 100, 768] {
        let (x, dy, w, b) = (vec32(113, 9 * d, 2.0), vec32(114, 9 * d, 1.0), vec32(115, d, 1.0), vec32(116, d, 1.0));
        let f = ln::layer_norm_fwd_f32(&x, Some(&w), Some(&b), d, 1e-5);
        each_level_vs_scalar("ln fwd", 2e-5, || ln::layer_norm_fwd_f32(&x, Some(&w), Some(&b), d, 1e-5).y);
        each_level_vs_scalar("ln fwd rstd", 2e-5, || ln::layer_norm_fwd_f32(&x, Some(&w), None, d, 1e-5).rstd);
        let bw = |k: usize| {
            let r = ln::layer_norm_bwd_f32(&x, &dy, Some(&w), &f.mean, &f.rstd, d);
            vec![r.dx, r.dw, r.db].swap_remove(k)
        };
        for k in 0..3 {
            each_level_vs_scalar("ln bwd", 2e-5, || bw(k));
        }
        // f32 backward against the f64 one
        let c = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let r64 = ln::layer_norm_bwd(&c(&x), &c(&dy), Some(&c(&w)), &c(&f.mean), &c(&f.rstd), d);
        let down = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
        assert!(max_abs_diff(&bw(0), &down(r64.dx)) < 1e-4 && max_abs_diff(&bw(1), &down(r64.dw)) < 1e-4, "ln bwd f32 vs f64, d={d}");
    }
}

#[test]
fn layer_norm_param_grads_are_deterministic_across_thread_counts() {
    let (x, dy, w) = (vec32(120, 300 * 200, 1.0), vec32(121, 300 * 200, 1.0), vec32(122, 200, 1.0));
    let f = ln::layer_norm_fwd_f32(&x, Some(&w), None, 200, 1e-5);
    let run = || ln::layer_norm_bwd_f32(&x, &dy, Some(&w), &f.mean, &f.rstd, 200);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(run);
    assert_eq!(one.dw, three.dw);
    assert_eq!(one.db, three.db);
    assert_eq!(one.dx, three.dx);
}

#[test]
fn layer_norm_errors_and_dtypes() {
    let x = randn(130, &[2, 4], 1.0, DType::F32);
    let e = x.layer_norm(Some(&randn(131, &[5], 1.0, DType::F32)), None, 1e-5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "layer_norm", .. }), "{e}");
    let e = x.layer_norm(None, Some(&randn(131, &[4], 1.0, DType::F64)), 1e-5).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { op: "layer_norm", .. }), "{e}");
    assert!(x.layer_norm(None, None, -1.0).unwrap_err().to_string().contains("layer_norm"));
    assert!(Tensor::scalar(1f32).layer_norm(None, None, 1e-5).unwrap_err().to_string().contains("layer_norm"));
    assert!(Tensor::from_vec(vec![1i64], &[1]).unwrap().layer_norm(None, None, 1e-5).is_err());
    // bf16: statistics in f32, output and all gradients in bf16
    let (xh, wh) = (x.to_dtype(DType::BF16).unwrap().var(), randn(132, &[4], 1.0, DType::BF16).var());
    let y = xh.layer_norm(Some(&wh), None, 1e-5).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!((xh.grad().unwrap().dtype(), wh.grad().unwrap().dtype()), (DType::BF16, DType::BF16));
}

// ----- dropout ----------------------------------------------------------------------------------------

#[test]
fn dropout_statistics_determinism_and_mask_contract() {
    let x = Tensor::ones(&[500, 400], DType::F32, Device::Cpu).unwrap();
    for p in [0.1, 0.5, 0.9] {
        let y = x.dropout(p, 7, true).unwrap().to_vec::<f32>().unwrap();
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((dropped - p).abs() < 0.005, "p={p}: dropped fraction {dropped}");
        let scale = (1.0 / (1.0 - p)) as f32;
        assert!(y.iter().all(|&v| v == 0.0 || v == scale));
        // the mask is the documented counter-based function of (seed, index)
        let thr = dropout::threshold(p);
        assert!(y.iter().enumerate().all(|(i, &v)| (v != 0.0) == dropout::keep(7, i as u64, thr)));
    }
    let a = x.dropout(0.5, 7, true).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, x.dropout(0.5, 7, true).unwrap().to_vec::<f32>().unwrap(), "same seed, same mask");
    let b = x.dropout(0.5, 8, true).unwrap().to_vec::<f32>().unwrap();
    let same = a.iter().zip(&b).filter(|(p, q)| p == q).count() as f64 / a.len() as f64;
    assert!((same - 0.5).abs() < 0.01, "masks of seeds 7 and 8 agree on {same} of the elements");
    // identity in eval mode or with p = 0; the mask follows the logical (row-major) index
    let r = randn(140, &[6, 5], 1.0, DType::F32);
    assert_eq!(r.dropout(0.5, 1, false).unwrap().to_vec::<f32>().unwrap(), r.to_vec::<f32>().unwrap());
    assert_eq!(r.dropout(0.0, 1, true).unwrap().to_vec::<f32>().unwrap(), r.to_vec::<f32>().unwrap());
    let rt = r.t().unwrap();
    assert_eq!(
        rt.dropout(0.3, 2, true).unwrap().to_vec::<f32>().unwrap(),
        rt.contiguous().unwrap().dropout(0.3, 2, true).unwrap().to_vec::<f32>().unwrap()
    );
    for p in [1.0, -0.1, f64::NAN, 2.0] {
        assert!(r.dropout(p, 1, true).unwrap_err().to_string().contains("dropout"), "p={p}");
    }
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let x = randn(150, &[64, 33], 1.0, DType::F32).var();
    let w = randn(151, &[64, 33], 1.0, DType::F32);
    let y = x.dropout(0.4, 99, true).unwrap();
    y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let (g, yv, wv, xv) =
        (x.grad().unwrap().to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    let thr = dropout::threshold(0.4);
    for i in 0..g.len() {
        let kept = dropout::keep(99, i as u64, thr);
        assert_eq!(yv[i], if kept { xv[i] * (1.0 / 0.6f64) as f32 } else { 0.0 });
        assert_eq!(g[i], if kept { wv[i] * (1.0 / 0.6f64) as f32 } else { 0.0 }, "element {i}");
    }
    gradcheck("dropout", &[rand_var(152, &[5, 7])], |t| t[0].t()?.dropout(0.3, 5, true)).unwrap();
}

// ----- cross_entropy --------------------------------------------------------------------------------

fn ce_reference(x: &Tensor, t: &[i64], ignore: i64) -> f64 {
    let c = x.shape()[1];
    let v = x.to_vec_f64().unwrap();
    let (mut s, mut n) = (0.0, 0);
    for (row, &ti) in v.chunks(c).zip(t) {
        if ti != ignore {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            s += m + row.iter().map(|&a| (a - m).exp()).sum::<f64>().ln() - row[ti as usize];
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn targets(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

#[test]
fn cross_entropy_gradcheck_and_reference() {
    let t = [2i64, -100, 0, 6, 3];
    gradcheck("cross_entropy", &[rand_var(160, &[5, 7])], |x| x[0].cross_entropy(&targets(&t), -100)).unwrap();
    gradcheck("cross_entropy transposed", &[rand_var(161, &[7, 5])], |x| x[0].t()?.cross_entropy(&targets(&t), -100)).unwrap();
    gradcheck("cross_entropy C=1", &[rand_var(162, &[3, 1])], |x| x[0].cross_entropy(&targets(&[0, 0, -1]), -1)).unwrap();
    for (dt, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-12)] {
        let x = randn(163, &[5, 7], 3.0, dt);
        let got = x.cross_entropy(&targets(&t), -100).unwrap();
        assert_eq!((got.shape(), got.dtype()), (&[][..], dt));
        let want = ce_reference(&x, &t, -100);
        assert!((got.to_scalar().unwrap() - want).abs() <= tol * want.abs().max(1.0), "{dt}");
    }
}

#[test]
fn cross_entropy_simd_levels_ignored_rows_and_errors() {
    let (n, c) = (40, 1003);
    let x = vec32(170, n * c, 3.0);
    let t: Vec<i64> = (0..n as i64).map(|i| if i % 5 == 0 { -100 } else { (i * 37) % c as i64 }).collect();
    let (_, lse) = ce::cross_entropy_fwd_f32(&x, &t, c, -100);
    each_level_vs_scalar("ce fwd", 1e-6, || vec![ce::cross_entropy_fwd_f32(&x, &t, c, -100).0 as f32]);
    each_level_vs_scalar("ce bwd", 1e-6, || ce::cross_entropy_bwd_f32(&x, &t, &lse, c, -100, 0.25));
    // ignored rows get exactly zero gradient; each other row of the gradient sums to ~0
    let xt = t32(x, &[n, c]).var();
    xt.cross_entropy(&targets(&t), -100).unwrap().backward().unwrap();
    let g = xt.grad().unwrap().to_vec::<f32>().unwrap();
    for (i, row) in g.chunks(c).enumerate() {
        if t[i] == -100 {
            assert!(row.iter().all(|&v| v == 0.0));
        } else {
            assert!(row.iter().sum::<f32>().abs() < 1e-6 && row[t[i] as usize] < 0.0);
        }
    }
    // all rows ignored: loss NaN (the mean of nothing) and zero gradient, as in PyTorch
    let z = randn(171, &[3, 4], 1.0, DType::F32).var();
    let l = z.cross_entropy(&targets(&[-100, -100, -100]), -100).unwrap();
    assert!(l.to_scalar().unwrap().is_nan());
    l.backward().unwrap();
    assert!(z.grad().unwrap().to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    // errors
    let x = randn(172, &[3, 4], 1.0, DType::F32);
    for bad in [4i64, -1] {
        let e = x.cross_entropy(&targets(&[0, bad, 1]), -100).unwrap_err();
        assert!(matches!(e, Error::IndexOutOfRange { op: "cross_entropy", index, size: 4 } if index == bad), "{e}");
    }
    assert!(matches!(x.cross_entropy(&targets(&[0, 1]), -100).unwrap_err(), Error::ShapeMismatch { op: "cross_entropy", .. }));
    assert!(matches!(x.cross_entropy(&randn(1, &[3], 1.0, DType::F32), -100).unwrap_err(), Error::DTypeMismatch { op: "cross_entropy", .. }));
    assert!(x.reshape(&[3, 2, 2]).unwrap().cross_entropy(&targets(&[0, 1, 2]), -100).unwrap_err().to_string().contains("cross_entropy"));
    let xb = x.to_dtype(DType::BF16).unwrap();
    let lb = xb.cross_entropy(&targets(&[0, 3, 1]), -100).unwrap();
    assert_eq!(lb.dtype(), DType::BF16);
    assert!((lb.to_scalar().unwrap() - ce_reference(&xb, &[0, 3, 1], -100)).abs() < 1e-2);
}
