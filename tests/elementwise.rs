//! Elementwise math (unary, pow), comparisons, where_cond / masked_fill, max/min/argmax, and the
//! SIMD fast paths of the binary ops and sums: gradchecks in f64 (odd shapes, non-contiguous views),
//! values against f64 references at every SIMD level, semantics, and error cases.
use kiln::tensor::cpu::simd;
use kiln::tensor::testing::{assert_close, gradcheck, rand_var};
use kiln::{DType, Device, Tensor};

fn uniform_var(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    Tensor::rand_uniform(seed, shape, lo, hi, DType::F64, Device::Cpu).unwrap().var()
}

fn t64(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape).unwrap()
}

fn t32(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape).unwrap()
}

// ----- unary ---------------------------------------------------------------------------------------

#[test]
fn unary_gradchecks_any_sign() {
    // odd shapes, plus a transposed and a narrowed (non-contiguous) view of the same leaf
    let a = rand_var(11, &[3, 5]);
    let b = rand_var(12, &[2, 3, 7]);
    type F = fn(&Tensor) -> kiln::Result<Tensor>;
    let ops: [(&str, F); 5] = [("exp", Tensor::exp), ("tanh", Tensor::tanh), ("sqr", Tensor::sqr), ("abs", Tensor::abs), ("relu", Tensor::relu)];
    for (name, f) in ops {
        gradcheck(name, &[a.clone()], |x| f(&x[0])).unwrap();
        gradcheck(name, &[a.clone()], |x| f(&x[0].t()?)).unwrap();
        gradcheck(name, &[b.clone()], |x| f(&x[0].narrow(2, 1, 5)?.transpose(0, 1)?)).unwrap();
        gradcheck(name, &[rand_var(13, &[])], |x| f(&x[0])).unwrap();
    }
}

#[test]
fn unary_gradchecks_positive_domain() {
    let a = uniform_var(21, &[3, 5], 0.3, 2.5);
    let b = uniform_var(22, &[4, 3, 5], 0.3, 2.5);
    type F = fn(&Tensor) -> kiln::Result<Tensor>;
    let ops: [(&str, F); 3] = [("log", Tensor::log), ("sqrt", Tensor::sqrt), ("recip", Tensor::recip)];
    for (name, f) in ops {
        gradcheck(name, &[a.clone()], |x| f(&x[0])).unwrap();
        gradcheck(name, &[b.clone()], |x| f(&x[0].permute(&[2, 0, 1])?.narrow(1, 1, 2)?)).unwrap();
    }
    for e in [2.0, 3.0, 0.5, -1.5, 1.0, 0.0] {
        gradcheck("powf", &[a.clone()], |x| x[0].powf(e)).unwrap();
        gradcheck("powf", &[b.clone()], |x| x[0].t()?.powf(e)).unwrap();
    }
    // integer exponents work for negative bases too
    gradcheck("powf neg base", &[rand_var(23, &[3, 4])], |x| x[0].powf(3.0)).unwrap();
}

#[test]
fn pow_tensor_exponent_broadcast_grads_to_both() {
    let base = uniform_var(31, &[3, 1, 4], 0.4, 2.0);
    let ex = rand_var(32, &[5, 1]);
    gradcheck("pow", &[base.clone(), ex.clone()], |x| x[0].pow(&x[1])).unwrap();
    gradcheck("pow T", &[base.clone(), rand_var(33, &[4, 1, 3])], |x| x[0].pow(&x[1].transpose(0, 2)?)).unwrap();
    // values: x^e, broadcast shape
    let z = base.pow(&ex).unwrap();
    assert_eq!(z.shape(), &[3, 5, 4]);
    let zr = base.log().unwrap().mul(&ex).unwrap().exp().unwrap();
    assert_close("pow values", &z, &zr, 1e-12);
    // x = 0, e ≥ 0: the exponent gradient is 0 (not NaN), as PyTorch
    let x = t64(&[0.0, 0.0, 2.0], &[3]).var();
    let e = t64(&[2.0, 0.0, 3.0], &[3]).var();
    x.pow(&e).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(e.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 0.0, 8.0 * 2f64.ln()]);
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 0.0, 12.0]);
}

#[test]
fn unary_kinks_follow_pytorch() {
    let x = t64(&[-1.0, 0.0, 2.0], &[3]).var();
    x.abs().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![-1.0, 0.0, 1.0]);
    x.zero_grad();
    x.relu().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 0.0, 1.0]);
    x.zero_grad();
    x.powf(0.0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 0.0, 0.0]);
    let y = t32(&[-1.0, 0.0, f32::NAN, 3.0], &[4]).relu().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(y[..2], [0.0, 0.0]);
    assert!(y[2].is_nan() && y[3] == 3.0);
    let l = t32(&[0.0, -1.0, 1.0], &[3]).log().unwrap().to_vec::<f32>().unwrap();
    assert!(l[0] == f32::NEG_INFINITY && l[1].is_nan() && l[2] == 0.0);
}

/// f32 values of the SIMD-backed ops vs f64, at every SIMD level, on inputs large enough to take
/// the parallel path, with an odd length (tails) and a non-contiguous input.
#[test]
fn unary_f32_values_every_level() {
    let n = 40_001;
    let x = Tensor::rand_uniform(41, &[n], -12.0, 12.0, DType::F32, Device::Cpu).unwrap();
    let xs = x.to_vec::<f32>().unwrap();
    let xt = Tensor::rand_uniform(42, &[101, 397], -3.0, 3.0, DType::F32, Device::Cpu).unwrap().t().unwrap();
    let xts = xt.contiguous().unwrap().to_vec::<f32>().unwrap();
    type F = fn(&Tensor) -> kiln::Result<Tensor>;
    let ops: [(&str, F, fn(f64) -> f64, f64); 8] = [
        ("exp", Tensor::exp, f64::exp, 3e-7),
        ("tanh", Tensor::tanh, f64::tanh, 5e-7),
        ("sqr", Tensor::sqr, |v| v * v, 2e-7),
        ("abs", Tensor::abs, f64::abs, 0.0),
        ("relu", Tensor::relu, |v| v.max(0.0), 0.0),
        ("sqrt", |t| t.abs()?.sqrt(), |v| v.abs().sqrt(), 2e-7),
        ("log", |t| t.abs()?.log(), |v| v.abs().ln(), 2e-7),
        ("recip", Tensor::recip, |v| 1.0 / v, 2e-7),
    ];
    for l in simd::available_levels() {
        for (name, f, r, tol) in ops {
            for (t, v) in [(&x, &xs), (&xt, &xts)] {
                let y = simd::with_level(l, || f(t)).unwrap();
                assert_eq!(y.shape(), t.shape());
                let y = y.to_vec::<f32>().unwrap();
                for (i, (&a, &b)) in y.iter().zip(v.iter()).enumerate() {
                    let e = r(b as f64);
                    let err = (a as f64 - e).abs() / e.abs().max(1e-30);
                    assert!(err <= tol.max(1e-300), "{name} {l:?}: f({b}) = {a}, expected {e} (index {i}, rel {err:.2e})");
                }
            }
        }
    }
}

#[test]
fn unary_half_and_errors() {
    let x = Tensor::randn(51, &[7, 9], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let y = x.to_dtype(dt).unwrap().exp().unwrap();
        assert_eq!(y.dtype(), dt);
        let r = x.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap().exp().unwrap();
        assert_close("exp half", &y.to_dtype(DType::F32).unwrap(), &r, 1e-2);
        // gradients flow back in the input dtype
        let v = x.to_dtype(dt).unwrap().var();
        v.tanh().unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(v.grad().unwrap().dtype(), dt);
    }
    let i = Tensor::zeros(&[3], DType::I64, Device::Cpu).unwrap();
    let e = i.exp().unwrap_err().to_string();
    assert!(e.contains("exp") && e.contains("I64"), "{e}");
    assert!(i.log().unwrap_err().to_string().contains("log"));
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let e = a.pow(&b).unwrap_err().to_string();
    assert!(e.contains("pow") && e.contains("[2, 3]"), "{e}");
    let c = Tensor::zeros(&[2, 3], DType::F64, Device::Cpu).unwrap();
    assert!(a.pow(&c).unwrap_err().to_string().contains("dtype"));
}

// ----- comparisons -----------------------------------------------------------------------------------

#[test]
fn cmp_semantics_broadcast_and_dtypes() {
    let a = t32(&[1.0, 2.0, 3.0, f32::NAN, 5.0, 6.0], &[2, 3]);
    let b = t32(&[2.0, 2.0, f32::NAN], &[3]);
    let cases: [(&str, fn(&Tensor, &Tensor) -> kiln::Result<Tensor>, [f32; 6]); 6] = [
        ("eq", Tensor::eq, [0., 1., 0., 0., 0., 0.]),
        ("ne", Tensor::ne, [1., 0., 1., 1., 1., 1.]),
        ("lt", Tensor::lt, [1., 0., 0., 0., 0., 0.]),
        ("le", Tensor::le, [1., 1., 0., 0., 0., 0.]),
        ("gt", Tensor::gt, [0., 0., 0., 0., 1., 0.]),
        ("ge", Tensor::ge, [0., 1., 0., 0., 1., 0.]),
    ];
    for (name, f, want) in cases {
        let y = f(&a, &b).unwrap();
        assert_eq!(y.dtype(), DType::F32, "{name}");
        assert_eq!(y.shape(), &[2, 3], "{name}");
        assert_eq!(y.to_vec::<f32>().unwrap(), want, "{name}");
    }
    // scalar variants, i64 compared in f64 (2 < 2.5)
    let i = Tensor::from_slice(&[1i64, 2, 3], &[3]).unwrap();
    assert_eq!(i.lt_scalar(2.5).unwrap().to_vec::<i64>().unwrap(), vec![1, 1, 0]);
    assert_eq!(i.ge_scalar(2.0).unwrap().to_vec::<i64>().unwrap(), vec![0, 1, 1]);
    assert_eq!(i.eq_scalar(3.0).unwrap().to_vec::<i64>().unwrap(), vec![0, 0, 1]);
    assert_eq!(i.ne_scalar(3.0).unwrap().to_vec::<i64>().unwrap(), vec![1, 1, 0]);
    assert_eq!(i.le_scalar(1.0).unwrap().to_vec::<i64>().unwrap(), vec![1, 0, 0]);
    assert_eq!(i.gt_scalar(1.0).unwrap().to_vec::<i64>().unwrap(), vec![0, 1, 1]);
    // i64 tensor-tensor, broadcast both ways, and a transposed operand
    let j = Tensor::from_slice(&[2i64, 0], &[2, 1]).unwrap();
    let y = i.gt(&j).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(y.to_vec::<i64>().unwrap(), vec![0, 0, 1, 1, 1, 1]);
    let m = Tensor::arange(0.0, 6.0, 1.0, DType::F64, Device::Cpu).unwrap().reshape(&[2, 3]).unwrap();
    let y = m.t().unwrap().ge_scalar(2.0).unwrap();
    assert_eq!(y.to_vec::<f64>().unwrap(), vec![0.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    // bf16 keeps its dtype; NaN scalar never equal
    let h = a.to_dtype(DType::BF16).unwrap().eq_scalar(f64::NAN).unwrap();
    assert_eq!(h.dtype(), DType::BF16);
    assert_eq!(h.to_vec_f64().unwrap(), vec![0.0; 6]);
    // no gradient through comparisons
    let v = rand_var(61, &[3]);
    assert!(!v.gt_scalar(0.0).unwrap().requires_grad());
    assert!(!v.lt(&v).unwrap().requires_grad());
}

#[test]
fn cmp_errors_name_the_op() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let e = a.lt(&Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("lt") && e.contains("[4]"), "{e}");
    let e = a.eq(&Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("eq") && e.contains("dtype"), "{e}");
}

// ----- where_cond / masked_fill ----------------------------------------------------------------------

#[test]
fn where_cond_semantics_and_broadcast() {
    // mask [2,1,3] (i64), on_true [4,1], on_false [] (scalar) → [2,4,3]
    let mask = Tensor::from_slice(&[1i64, 0, 2, 0, -1, 0], &[2, 1, 3]).unwrap();
    let on_t = t32(&[10.0, 20.0, 30.0, 40.0], &[4, 1]);
    let on_f = t32(&[-1.0], &[]);
    let y = mask.where_cond(&on_t, &on_f).unwrap();
    assert_eq!(y.shape(), &[2, 4, 3]);
    let v = y.to_vec::<f32>().unwrap();
    assert_eq!(v[..6], [10.0, -1.0, 10.0, 20.0, -1.0, 20.0]);
    assert_eq!(v[12..15], [-1.0, 10.0, -1.0]);
    // float mask: NaN counts as true, -0.0 as false
    let fm = t32(&[f32::NAN, -0.0, 0.5], &[3]);
    let y = fm.where_cond(&t32(&[1.0, 1.0, 1.0], &[3]), &t32(&[0.0], &[1])).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 0.0, 1.0]);
    // i64 branches work (no grad)
    let y = fm.where_cond(&Tensor::from_slice(&[7i64], &[1]).unwrap(), &Tensor::from_slice(&[8i64, 9, 10], &[3]).unwrap()).unwrap();
    assert_eq!(y.to_vec::<i64>().unwrap(), vec![7, 9, 7]);
}

#[test]
fn where_cond_gradcheck() {
    let mask = Tensor::randn(71, &[2, 3, 4], 0.0, 1.0, DType::F64, Device::Cpu).unwrap().gt_scalar(0.0).unwrap();
    let a = rand_var(72, &[3, 1]);
    let b = rand_var(73, &[4, 3]);
    gradcheck("where_cond", &[a.clone(), b.clone()], |x| mask.where_cond(&x[0], &x[1].t()?)).unwrap();
    let c = rand_var(74, &[2, 3, 4]);
    gradcheck("where_cond same", &[c.clone(), rand_var(75, &[4])], |x| mask.where_cond(&x[0], &x[1])).unwrap();
    // only on_false needs grad
    let d = rand_var(76, &[2, 3, 4]);
    let y = mask.where_cond(&a.detach(), &d).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    let want: Vec<f64> = mask.to_vec::<f64>().unwrap().iter().map(|m| 1.0 - m).collect();
    assert_eq!(d.grad().unwrap().to_vec::<f64>().unwrap(), want);
}

#[test]
fn masked_fill_semantics_grad_and_errors() {
    let x = rand_var(81, &[3, 4]);
    let mask = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0], &[4]).unwrap();
    let y = x.masked_fill(&mask, -1e9).unwrap();
    let (xv, yv) = (x.to_vec::<f64>().unwrap(), y.to_vec::<f64>().unwrap());
    for i in 0..12 {
        assert_eq!(yv[i], if i % 4 == 0 || i % 4 == 3 { -1e9 } else { xv[i] });
    }
    gradcheck("masked_fill", &[x.clone()], |t| t[0].masked_fill(&mask, 3.0)).unwrap();
    gradcheck("masked_fill T", &[rand_var(82, &[4, 3])], |t| t[0].t()?.masked_fill(&mask, 0.0)).unwrap();
    x.zero_grad();
    y.sum_all().unwrap().backward().unwrap();
    let g = x.grad().unwrap().to_vec::<f64>().unwrap();
    assert_eq!(g[..4], [0.0, 1.0, 1.0, 0.0]);
    // a mask that would grow the result is an error naming the op
    let big = Tensor::zeros(&[2, 3, 4], DType::F64, Device::Cpu).unwrap();
    let e = x.masked_fill(&big, 0.0).unwrap_err().to_string();
    assert!(e.contains("masked_fill"), "{e}");
    let e = x.masked_fill(&Tensor::zeros(&[5], DType::I64, Device::Cpu).unwrap(), 0.0).unwrap_err().to_string();
    assert!(e.contains("masked_fill"), "{e}");
    // i64 and bf16 inputs keep their dtype
    let i = Tensor::from_slice(&[1i64, 2, 3], &[3]).unwrap().masked_fill(&Tensor::from_slice(&[0i64, 1, 0], &[3]).unwrap(), -7.0).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, -7, 3]);
    let h = x.detach().to_dtype(DType::BF16).unwrap().masked_fill(&mask, 0.0).unwrap();
    assert_eq!(h.dtype(), DType::BF16);
    // where_cond errors: on_true / on_false dtype mismatch, incompatible shapes
    let f = Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap();
    let e = mask.where_cond(&x, &f).unwrap_err().to_string();
    assert!(e.contains("where_cond") && e.contains("dtype"), "{e}");
    let e = mask.where_cond(&x, &Tensor::zeros(&[3], DType::F64, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("where_cond"), "{e}");
}

// ----- max / min / argmax ------------------------------------------------------------------------------

#[test]
fn max_min_argmax_values() {
    let x = t32(&[1.0, 3.0, 3.0, 2.0, -1.0, -5.0, -5.0, 0.0], &[2, 4]);
    assert_eq!(x.max(1, false).unwrap().to_vec::<f32>().unwrap(), vec![3.0, 0.0]);
    assert_eq!(x.min(-1, false).unwrap().to_vec::<f32>().unwrap(), vec![1.0, -5.0]);
    assert_eq!(x.argmax(1, false).unwrap().to_vec::<i64>().unwrap(), vec![1, 3]);
    assert_eq!(x.argmin(1, false).unwrap().to_vec::<i64>().unwrap(), vec![0, 1]);
    let k = x.argmax(0, true).unwrap();
    assert_eq!((k.shape(), k.dtype()), (&[1usize, 4][..], DType::I64));
    assert_eq!(k.to_vec::<i64>().unwrap(), vec![0, 0, 0, 0]);
    assert_eq!(x.max(0, true).unwrap().shape(), &[1, 4]);
    assert_eq!(x.max_all().unwrap().to_scalar().unwrap(), 3.0);
    assert_eq!(x.min_all().unwrap().to_scalar().unwrap(), -5.0);
    assert_eq!(x.max_all().unwrap().shape(), &[] as &[usize]);
    // NaN wins, first NaN's index
    let n = t32(&[1.0, f32::NAN, 9.0, f32::NAN], &[4]);
    assert!(n.max(0, false).unwrap().to_scalar().unwrap().is_nan());
    assert!(n.min(0, false).unwrap().to_scalar().unwrap().is_nan());
    assert_eq!(n.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), vec![1]);
    // non-contiguous input, i64 and bf16 dtypes
    let m = Tensor::arange(0.0, 12.0, 1.0, DType::I64, Device::Cpu).unwrap().reshape(&[3, 4]).unwrap();
    assert_eq!(m.t().unwrap().max(1, false).unwrap().to_vec::<i64>().unwrap(), vec![8, 9, 10, 11]);
    assert_eq!(m.t().unwrap().argmin(1, false).unwrap().to_vec::<i64>().unwrap(), vec![0, 0, 0, 0]);
    let b = x.to_dtype(DType::BF16).unwrap().max(1, false).unwrap();
    assert_eq!((b.dtype(), b.to_vec_f64().unwrap()), (DType::BF16, vec![3.0, 0.0]));
    // large rows take the SIMD/parallel path: compare with a scalar scan, every level
    let big = Tensor::randn(91, &[37, 2051], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let v = big.to_vec::<f32>().unwrap();
    for l in simd::available_levels() {
        let (mx, am) = simd::with_level(l, || (big.max(1, false).unwrap(), big.argmax(1, false).unwrap()));
        let (mx, am) = (mx.to_vec::<f32>().unwrap(), am.to_vec::<i64>().unwrap());
        for r in 0..37 {
            let row = &v[r * 2051..(r + 1) * 2051];
            let (mut bi, mut bv) = (0, row[0]);
            for (i, &x) in row.iter().enumerate() {
                if x > bv {
                    (bi, bv) = (i, x);
                }
            }
            assert_eq!((mx[r], am[r]), (bv, bi as i64), "{l:?} row {r}");
        }
    }
}

#[test]
fn max_min_gradcheck_and_first_index_rule() {
    let a = rand_var(101, &[3, 5, 7]);
    for d in [0i32, 1, -1] {
        gradcheck("max", &[a.clone()], |x| x[0].max(d, false)).unwrap();
        gradcheck("min keepdim", &[a.clone()], |x| x[0].min(d, true)).unwrap();
    }
    gradcheck("max T", &[a.clone()], |x| x[0].transpose(0, 2)?.narrow(1, 1, 3)?.max(1, false)).unwrap();
    gradcheck("max_all", &[a.clone()], |x| x[0].permute(&[1, 2, 0])?.max_all()).unwrap();
    // ties: the whole gradient goes to the first maximum
    let x = t64(&[1.0, 3.0, 3.0, 2.0, 3.0, 3.0], &[2, 3]).var();
    x.max(1, false).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
    x.zero_grad();
    x.max_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    x.zero_grad();
    x.t().unwrap().max(0, false).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
    // no gradient through argmax
    assert!(!a.argmax(0, false).unwrap().requires_grad());
}

#[test]
fn max_errors() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let e = a.max(2usize, false).unwrap_err().to_string();
    assert!(e.contains("max") && e.contains("rank 2"), "{e}");
    assert!(a.argmax(-3, false).unwrap_err().to_string().contains("argmax"));
    let z = Tensor::zeros(&[2, 0], DType::F32, Device::Cpu).unwrap();
    assert!(z.max(1, false).unwrap_err().to_string().contains("max"));
    assert!(Tensor::zeros(&[0], DType::F32, Device::Cpu).unwrap().max_all().is_err());
    // reducing a non-empty dim of a tensor with another empty dim is fine
    assert_eq!(z.max(0, false).unwrap().shape(), &[0]);
}

// ----- SIMD fast paths of binary ops and sums ----------------------------------------------------------

#[test]
fn binary_fast_paths_match_scalar_exactly() {
    let a = Tensor::randn(111, &[97, 513], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let b = Tensor::rand_uniform(112, &[97, 513], 0.5, 2.0, DType::F32, Device::Cpu).unwrap();
    let row = Tensor::randn(113, &[513], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let (av, bv, rv) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), row.to_vec::<f32>().unwrap());
    type F = fn(&Tensor, &Tensor) -> kiln::Result<Tensor>;
    let ops: [(F, fn(f32, f32) -> f32); 4] = [(Tensor::add, |x, y| x + y), (Tensor::sub, |x, y| x - y), (Tensor::mul, |x, y| x * y), (Tensor::div, |x, y| x / y)];
    for l in simd::available_levels() {
        for (f, r) in ops {
            let same = simd::with_level(l, || f(&a, &b)).unwrap().to_vec::<f32>().unwrap();
            let bcast = simd::with_level(l, || f(&a, &row)).unwrap().to_vec::<f32>().unwrap();
            for i in 0..av.len() {
                assert_eq!(same[i], r(av[i], bv[i]), "{l:?} same-shape i={i}");
                assert_eq!(bcast[i], r(av[i], rv[i % 513]), "{l:?} row-broadcast i={i}");
            }
        }
    }
}

#[test]
fn sum_fast_paths_match_f64() {
    let x = Tensor::randn(121, &[3, 301, 257], 1.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let x64 = x.to_dtype(DType::F64).unwrap();
    for l in simd::available_levels() {
        for dims in [vec![2usize], vec![0], vec![0, 1], vec![1], vec![0, 1, 2]] {
            let s = simd::with_level(l, || x.sum_dims(&dims, false)).unwrap();
            let r = x64.sum_dims(&dims, false).unwrap();
            assert_close(&format!("sum {dims:?} {l:?}"), &s.to_dtype(DType::F64).unwrap(), &r, 2e-6);
        }
        let big = Tensor::rand_uniform(122, &[300_001], -1.0, 1.0, DType::F32, Device::Cpu).unwrap();
        let s = simd::with_level(l, || big.sum_all()).unwrap().to_scalar().unwrap();
        let r: f64 = big.to_vec::<f32>().unwrap().iter().map(|&v| v as f64).sum();
        assert!((s - r).abs() < 1e-2, "sum_all {l:?}: {s} vs {r}");
    }
    // the leading-dims path keeps gradients and f64 exactness on small inputs
    gradcheck("sum leading", &[rand_var(123, &[4, 3, 5])], |t| t[0].sum_dims(&[0, 1], false)).unwrap();
}
