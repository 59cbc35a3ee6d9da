//! matmul: values against a naive triple loop (f32, f64, bf16), every layout/plan of the CPU kernel
//! (2-D, threaded panels, folded batches, rayon over batches, broadcast batch dims, transposed /
//! narrowed / permuted / broadcast operands, the copy path), f64 gradchecks, and shape errors.
use kiln::tensor::testing::{assert_close, gradcheck, rand_var};
use kiln::{DType, Device, Tensor};

fn randn(seed: u64, shape: &[usize], dt: DType) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, dt, Device::Cpu).unwrap()
}

/// Naive matmul in f64 of rank ≥ 2 operands with numpy batch broadcasting.
fn naive(a: &Tensor, b: &Tensor) -> Tensor {
    let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
    let (ra, rb) = (sa.len(), sb.len());
    let (m, k, n) = (sa[ra - 2], sa[ra - 1], sb[rb - 1]);
    assert_eq!(sb[rb - 2], k);
    let r = ra.max(rb);
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, r - s.len()).chain(s[..s.len() - 2].iter().copied()).collect() };
    let (ba, bb) = (pad(&sa), pad(&sb));
    let batch: Vec<usize> = ba.iter().zip(&bb).map(|(&x, &y)| if x == 1 { y } else { x }).collect();
    let nb: usize = batch.iter().product();
    let (va, vb) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let mut out = vec![0.0; nb * m * n];
    for q in 0..nb {
        // multi-index of batch q, then the linear batch index into each operand
        let (mut rem, mut ia, mut ib, mut sa_acc, mut sb_acc) = (q, 0, 0, 1, 1);
        for d in (0..batch.len()).rev() {
            let c = rem % batch[d];
            rem /= batch[d];
            ia += if ba[d] == 1 { 0 } else { c * sa_acc };
            ib += if bb[d] == 1 { 0 } else { c * sb_acc };
            sa_acc *= ba[d];
            sb_acc *= bb[d];
        }
        for i in 0..m {
            for j in 0..n {
                out[(q * m + i) * n + j] = (0..k).map(|p| va[(ia * m + i) * k + p] * vb[(ib * k + p) * n + j]).sum();
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Tensor::from_vec(out, &shape).unwrap()
}

fn check(what: &str, a: &Tensor, b: &Tensor) {
    let got = a.matmul(b).unwrap();
    let want = naive(a, b);
    assert_eq!(got.shape(), want.shape(), "{what}");
    let tol = if a.dtype() == DType::F64 { 1e-11 } else { 1e-4 };
    assert_close(&format!("{what} ({})", a.dtype()), &got.to_dtype(DType::F64).unwrap(), &want, tol);
}

#[test]
fn two_d_odd_sizes_against_naive() {
    for dt in [DType::F32, DType::F64] {
        for (i, &(m, k, n)) in [(1, 1, 1), (1, 7, 1), (3, 7, 13), (13, 1, 7), (7, 13, 3), (17, 33, 65), (0, 3, 2), (3, 0, 2)].iter().enumerate() {
            let a = randn(10 + i as u64, &[m, k], dt);
            let b = randn(20 + i as u64, &[k, n], dt);
            check(&format!("{m}x{k}x{n}"), &a, &b);
        }
        // big enough for the threaded panel split, along m (m >= n) and along n
        check("panels m", &randn(1, &[300, 170], dt), &randn(2, &[170, 150], dt));
        check("panels n", &randn(3, &[150, 170], dt), &randn(4, &[170, 300], dt));
    }
}

#[test]
fn strided_operands_against_naive() {
    for dt in [DType::F32, DType::F64] {
        let (m, k, n) = (7, 13, 5);
        let at = randn(1, &[k, m], dt).t().unwrap(); // column-major A
        let bt = randn(2, &[n, k], dt).t().unwrap(); // column-major B
        let an = randn(3, &[m, k + 4], dt).narrow(1, 2, k).unwrap(); // row stride k+4
        let bn = randn(4, &[k + 1, n + 3], dt).narrow(0, 1, k).unwrap().narrow(1, 3, n).unwrap();
        let b = randn(5, &[k, n], dt);
        check("A transposed", &at, &b);
        check("B transposed", &an, &bt);
        check("both transposed", &at, &bt);
        check("narrowed", &an, &bn);
        // no unit stride in either matrix dim: the copy path
        let ai = randn(6, &[m, k, 3], dt).narrow(2, 1, 1).unwrap().squeeze(2).unwrap();
        assert!(ai.strides()[0] != 1 && ai.strides()[1] != 1);
        check("irregular A", &ai, &bt);
        // zero strides inside the matrix (a broadcast row / column)
        let ab = randn(7, &[1, k], dt).broadcast_as(&[m, k]).unwrap();
        let bb = randn(8, &[k, 1], dt).broadcast_as(&[k, n]).unwrap();
        check("broadcast rows", &ab, &bb);
    }
}

#[test]
fn batched_and_broadcast_against_naive() {
    for dt in [DType::F32, DType::F64] {
        // rayon over batches (many small), per-batch threaded GEMMs (few large)
        check("batched small", &randn(1, &[6, 5, 7], dt), &randn(2, &[6, 7, 3], dt));
        check("batched large", &randn(3, &[3, 160, 150], dt), &randn(4, &[3, 150, 170], dt));
        // linear layer: [B, T, C] @ [C, N] folds into one GEMM; a permuted input cannot fold
        check("fold", &randn(5, &[4, 9, 6], dt), &randn(6, &[6, 5], dt));
        let xp = randn(7, &[9, 4, 6], dt).permute(&[1, 0, 2]).unwrap();
        check("no fold (permuted batch)", &xp, &randn(8, &[6, 5], dt));
        // broadcast batch dims on both sides, and a rank difference
        check("broadcast batch", &randn(9, &[2, 1, 3, 4], dt), &randn(10, &[3, 4, 5], dt));
        check("broadcast both", &randn(11, &[2, 1, 3, 4], dt), &randn(12, &[1, 3, 4, 2], dt));
        check("left broadcast", &randn(13, &[3, 4], dt), &randn(14, &[2, 3, 4, 5], dt));
        // attention-shaped: q @ kᵀ with k a transposed view of [B, H, T, d]
        let q = randn(15, &[2, 3, 8, 4], dt);
        let kt = randn(16, &[2, 3, 8, 4], dt).transpose(-2, -1).unwrap();
        check("q @ k^T", &q, &kt);
        check("empty batch", &randn(17, &[0, 3, 4], dt), &randn(18, &[4, 2], dt));
    }
}

#[test]
fn one_d_operands() {
    let v = randn(1, &[4], DType::F64);
    let m = randn(2, &[4, 3], DType::F64);
    let mt = randn(3, &[2, 3, 4], DType::F64);
    let vm = v.matmul(&m).unwrap();
    assert_eq!(vm.shape(), &[3]);
    assert_close("v @ M", &vm, &naive(&v.reshape(&[1, 4]).unwrap(), &m).reshape(&[3]).unwrap(), 1e-12);
    let mv = mt.matmul(&v).unwrap();
    assert_eq!(mv.shape(), &[2, 3]);
    assert_close("M @ v", &mv, &naive(&mt, &v.reshape(&[4, 1]).unwrap()).reshape(&[2, 3]).unwrap(), 1e-12);
    let dot = v.matmul(&v).unwrap();
    assert_eq!(dot.shape(), &[] as &[usize]);
    let want: f64 = v.to_vec::<f64>().unwrap().iter().map(|x| x * x).sum();
    assert!((dot.to_scalar().unwrap() - want).abs() < 1e-12);
}

#[test]
fn half_types_compute_in_f32() {
    for dt in [DType::BF16, DType::F16] {
        let a = randn(1, &[2, 9, 17], dt);
        let b = randn(2, &[17, 5], dt);
        let got = a.matmul(&b).unwrap();
        assert_eq!(got.dtype(), dt);
        let want = naive(&a, &b);
        // inputs are exact in both; the error is the final rounding to the half type
        assert_close(&format!("{dt} matmul"), &got.to_dtype(DType::F64).unwrap(), &want, 2e-2);
    }
    let a = randn(3, &[3, 4], DType::BF16).var();
    let b = randn(4, &[4, 2], DType::BF16).var();
    a.matmul(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(a.grad().unwrap().dtype(), DType::BF16);
    assert_eq!(b.grad().unwrap().shape(), &[4, 2]);
}

#[test]
fn gradcheck_2d_and_odd_sizes() {
    for (i, &(m, k, n)) in [(1, 1, 1), (3, 4, 5), (7, 3, 1), (1, 13, 3)].iter().enumerate() {
        let s = 100 + 2 * i as u64;
        gradcheck(&format!("matmul {m}x{k}x{n}"), &[rand_var(s, &[m, k]), rand_var(s + 1, &[k, n])], |x| x[0].matmul(&x[1])).unwrap();
    }
}

#[test]
fn gradcheck_batched_and_broadcast() {
    gradcheck("batched", &[rand_var(1, &[2, 3, 4]), rand_var(2, &[2, 4, 3])], |x| x[0].matmul(&x[1])).unwrap();
    // B shared by every batch: dB folds the batch into the contraction
    gradcheck("fold", &[rand_var(3, &[2, 3, 4]), rand_var(4, &[4, 5])], |x| x[0].matmul(&x[1])).unwrap();
    // A shared: dA is a reduction that cannot fold (loops with beta = 1)
    gradcheck("left shared", &[rand_var(5, &[3, 4]), rand_var(6, &[2, 4, 5])], |x| x[0].matmul(&x[1])).unwrap();
    gradcheck("broadcast batch dims", &[rand_var(7, &[2, 1, 3, 4]), rand_var(8, &[3, 4, 2])], |x| x[0].matmul(&x[1])).unwrap();
    gradcheck("size-1 batch dims", &[rand_var(9, &[1, 3, 4]), rand_var(10, &[2, 1, 4, 2])], |x| x[0].matmul(&x[1])).unwrap();
    gradcheck("1-D left", &[rand_var(11, &[4]), rand_var(12, &[2, 4, 3])], |x| x[0].matmul(&x[1])).unwrap();
    gradcheck("1-D right", &[rand_var(13, &[2, 3, 4]), rand_var(14, &[4])], |x| x[0].matmul(&x[1])).unwrap();
    gradcheck("dot", &[rand_var(15, &[5]), rand_var(16, &[5])], |x| x[0].matmul(&x[1])).unwrap();
}

#[test]
fn gradcheck_non_contiguous_operands() {
    gradcheck("transposed", &[rand_var(1, &[4, 3]), rand_var(2, &[5, 4])], |x| x[0].t()?.matmul(&x[1].t()?)).unwrap();
    gradcheck("narrowed", &[rand_var(3, &[3, 7]), rand_var(4, &[6, 2])], |x| x[0].narrow(1, 2, 4)?.matmul(&x[1].narrow(0, 1, 4)?)).unwrap();
    gradcheck("permuted batch (no fold)", &[rand_var(5, &[3, 2, 4]), rand_var(6, &[4, 2])], |x| x[0].permute(&[1, 0, 2])?.matmul(&x[1])).unwrap();
    gradcheck("irregular (copy path)", &[rand_var(7, &[3, 4, 2]), rand_var(8, &[4, 2])], |x| x[0].narrow(2, 1, 1)?.squeeze(2)?.matmul(&x[1])).unwrap();
    gradcheck("q @ k^T", &[rand_var(9, &[2, 3, 2]), rand_var(10, &[2, 4, 2])], |x| x[0].matmul(&x[1].transpose(-2, -1)?)).unwrap();
    // the same leaf on both sides
    gradcheck("x @ x^T", &[rand_var(11, &[3, 4])], |x| x[0].matmul(&x[0].t()?)).unwrap();
}

#[test]
fn backward_of_large_shapes_matches_naive() {
    // dW = Σ_b X_bᵀ dY_b through the folded threaded GEMM, against naive sums (f64).
    let x = randn(1, &[3, 70, 90], DType::F64).var();
    let w = randn(2, &[90, 110], DType::F64).var();
    let dy = randn(3, &[3, 70, 110], DType::F64);
    x.matmul(&w).unwrap().backward_with(dy.clone()).unwrap();
    let xt = x.detach().transpose(-2, -1).unwrap().contiguous().unwrap();
    let want_dw = naive(&xt, &dy).sum(0, false).unwrap();
    assert_close("dW", &w.grad().unwrap(), &want_dw, 1e-11);
    let want_dx = naive(&dy, &w.detach().t().unwrap().contiguous().unwrap());
    assert_close("dX", &x.grad().unwrap(), &want_dx, 1e-11);
}

#[test]
fn errors_name_the_op_and_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4, 5], DType::F32, Device::Cpu).unwrap();
    let e = a.matmul(&b).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let a3 = Tensor::zeros(&[2, 3, 4], DType::F32, Device::Cpu).unwrap();
    let b3 = Tensor::zeros(&[3, 4, 5], DType::F32, Device::Cpu).unwrap();
    let e = a3.matmul(&b3).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[2, 3, 4]") && e.contains("[3, 4, 5]"), "{e}");
    let v = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap();
    let e = a.matmul(&v).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    assert!(Tensor::scalar(1.0f32).matmul(&a).unwrap_err().to_string().contains("matmul"));
    let d = Tensor::zeros(&[3, 2], DType::F64, Device::Cpu).unwrap();
    assert!(a.matmul(&d).unwrap_err().to_string().contains("dtype"));
    let i = Tensor::zeros(&[3, 2], DType::I64, Device::Cpu).unwrap();
    let ai = Tensor::zeros(&[2, 3], DType::I64, Device::Cpu).unwrap();
    assert!(ai.matmul(&i).unwrap_err().to_string().contains("matmul"));
}

#[test]
fn matmul_bias_matches_matmul_plus_add() {
    // the fused linear (bias added inside the GEMM) against the composed ops: odd sizes, a transposed
    // weight view, a shape big enough for the threaded blocked path, f32 and f64, values and grads
    for dt in [DType::F32, DType::F64] {
        for &(m, k, n, wt) in &[(1, 1, 1, false), (7, 13, 5, true), (130, 70, 45, false), (300, 257, 131, true)] {
            let x = randn(70, &[m, k], dt).requires_grad_(true);
            let w = if wt { randn(71, &[n, k], dt).t().unwrap() } else { randn(71, &[k, n], dt) }.requires_grad_(true);
            let b = randn(72, &[n], dt).requires_grad_(true);
            let dy = randn(73, &[m, n], dt);
            let fused = x.matmul_bias(&w, &b).unwrap();
            let composed = x.matmul(&w).unwrap().add(&b).unwrap();
            let tol = if dt == DType::F32 { 2e-5 } else { 1e-12 };
            assert_close(&format!("matmul_bias {m}x{k}x{n} {dt}"), &fused, &composed, tol);
            let grads = |y: &Tensor| {
                for t in [&x, &w, &b] {
                    t.zero_grad();
                }
                y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
                [x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap()]
            };
            let (gf, gc) = (grads(&fused), grads(&composed));
            for (name, (f, c)) in ["dx", "dw", "db"].iter().zip(gf.iter().zip(&gc)) {
                assert_close(&format!("matmul_bias {name} {m}x{k}x{n} {dt}"), f, c, tol * 10.0);
            }
        }
    }
    gradcheck("matmul_bias", &[rand_var(74, &[5, 4]), rand_var(75, &[4, 3]), rand_var(76, &[3])], |t| t[0].matmul_bias(&t[1], &t[2])).unwrap();
    gradcheck("matmul_bias transposed weight", &[rand_var(77, &[6, 5]), rand_var(78, &[3, 5]), rand_var(79, &[3])], |t| t[0].matmul_bias(&t[1].t()?, &t[2])).unwrap();
}

#[test]
fn matmul_bias_errors_name_the_op() {
    let x = Tensor::zeros(&[4, 3], DType::F32, Device::Cpu).unwrap();
    let w = Tensor::zeros(&[3, 5], DType::F32, Device::Cpu).unwrap();
    for bias in [Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap(), Tensor::zeros(&[1, 5], DType::F32, Device::Cpu).unwrap()] {
        let e = x.matmul_bias(&w, &bias).unwrap_err().to_string();
        assert!(e.contains("matmul_bias") && e.contains("[4, 3]"), "{e}");
    }
    let e = x.matmul_bias(&x, &Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("matmul_bias"), "{e}");
    let e = x.matmul_bias(&w, &Tensor::zeros(&[5], DType::F64, Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(e.contains("matmul_bias") && e.contains("dtype"), "{e}");
}

/// 2-D bf16 products read B as stored (no widened copy of a bf16 weight): their results are the
/// same bits as widening both operands to f32, multiplying and rounding once, for one to seven rows
/// (the few-rows paths) and many (the blocked GEMM), a row-major B with an offset, a transposed B
/// (an `nn.Linear` weight), and a transposed A.
#[test]
fn bf16_products_read_b_as_stored() {
    // the widening path (the native AVX512_BF16 one sums in another order: `bf16_gemm_*` tests)
    kiln::tensor::cpu::gemm::with_bf16(kiln::tensor::cpu::gemm::Bf16Gemm::Widen, bf16_products_read_b_as_stored_body);
}

fn bf16_products_read_b_as_stored_body() {
    let (k, n) = (300, 70);
    let w = Tensor::randn(2, &[k + 3, n], 0.0, 1.0, DType::F32, Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let wt = Tensor::randn(3, &[n, k], 0.0, 1.0, DType::F32, Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    for m in [1, 2, 3, 4, 5, 6, 7, 75] {
        let x = Tensor::randn(m as u64, &[m, k], 0.0, 1.0, DType::F32, Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let xt = x.t().unwrap().contiguous().unwrap().t().unwrap();
        for (what, b) in [("row-major", w.narrow(0, 3, k).unwrap()), ("transposed", wt.t().unwrap())] {
            for (how, a) in [("plain A", &x), ("transposed A", &xt)] {
                let got = a.matmul(&b).unwrap();
                assert_eq!((got.dtype(), got.shape()), (DType::BF16, &[m, n][..]));
                let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let want = f(a).matmul(&f(&b)).unwrap().to_dtype(DType::BF16).unwrap();
                assert_eq!(got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "{what} B, {how}, m {m}");
            }
        }
    }
}

/// Every CPU GEMM path this machine can run: the AVX-512 kernel (forced, wherever the CPU has
/// AVX-512F, whatever the dispatch table would pick), the AVX2 kernel (level forced to AVX2) and
/// matrixmultiply (level forced to scalar), each against an f64 reference on odd shapes (m, n, k
/// not multiples of any register block or k block), transposed operands, beta ≠ 0 with a padded C,
/// a fused bias, k = 0, 1 × N and N × 1 products.
fn each_gemm_path(f: impl Fn(&str)) {
    use kiln::tensor::cpu::gemm::{with_kernel, GemmKernel};
    use kiln::tensor::cpu::simd::{self, Level};
    if simd::detected() >= Level::Avx512 {
        with_kernel(GemmKernel::Avx512, || f("avx512 kernel"));
    } else {
        eprintln!("no AVX-512F on this CPU: the AVX-512 kernel is not run");
    }
    for l in simd::available_levels().into_iter().rev() {
        if l < Level::Avx512 {
            simd::with_level(l, || f(&format!("level {l:?}")));
        }
    }
}

fn vals(seed: usize, n: usize) -> Vec<f32> {
    (0..n).map(|s| (((s + seed) * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect()
}

#[test]
fn gemm_kernels_at_every_level_against_naive() {
    use kiln::tensor::cpu::gemm::{gemm, Mat, MatMut, Threads};
    let shapes = [(1, 1, 1), (1, 300, 77), (77, 300, 1), (7, 13, 5), (13, 1, 50), (25, 37, 33), (75, 300, 37), (150, 520, 70), (13, 9, 1030), (200, 257, 90), (7, 600, 600), (3, 0, 5), (40, 0, 70), (97, 513, 161)];
    each_gemm_path(|path| {
        for &(m, k, n) in &shapes {
            let (av, bv) = (vals(1, m * k), vals(7, k * n));
            let at: Vec<f32> = (0..k * m).map(|q| av[(q % m) * k + q / m]).collect(); // k × m
            let bt: Vec<f32> = (0..n * k).map(|q| bv[(q % k) * n + q / k]).collect(); // n × k
            let want: Vec<f64> = (0..m * n).map(|q| (0..k).map(|p| av[q / n * k + p] as f64 * bv[p * n + q % n] as f64).sum()).collect();
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = if ta { Mat::row_major(&at, k, m).t() } else { Mat::row_major(&av, m, k) };
                let b = if tb { Mat::row_major(&bt, n, k).t() } else { Mat::row_major(&bv, k, n) };
                for (beta, threads) in [(0.0f32, Threads::Single), (0.0, Threads::Auto), (1.0, Threads::Auto), (-0.5, Threads::Single), (0.5, Threads::Auto)] {
                    let ldc = n + 3; // padded rows: the padding must stay untouched
                    let c0 = vals(3, m * ldc);
                    let mut c = if beta == 0.0 { vec![f32::NAN; m * ldc] } else { c0.clone() };
                    let before = c.clone();
                    let cm = MatMut { data: &mut c, offset: 0, rows: m, cols: n, rs: ldc as isize, cs: 1 };
                    gemm(1.5, a, b, beta, cm, threads).unwrap();
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= n {
                                assert_eq!(got.to_bits(), before[i * ldc + j].to_bits(), "{path}: padding written at ({i}, {j})");
                                continue;
                            }
                            let w = 1.5 * want[i * n + j] + if beta == 0.0 { 0.0 } else { beta as f64 * c0[i * ldc + j] as f64 };
                            let tol = 2e-5 * (k as f64 + 1.0).sqrt() * (1.0 + w.abs());
                            assert!((got as f64 - w).abs() <= tol, "{path}: {m}x{k}x{n} ta {ta} tb {tb} beta {beta} {threads:?}: ({i}, {j}) {got} vs {w}");
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn gemm_kernels_with_bias_at_every_level() {
    let r = |s: u64, sh: &[usize]| randn(s, sh, DType::F32);
    each_gemm_path(|path| {
        for &(m, k, n, wt) in &[(1, 5, 1, false), (1, 300, 77, true), (77, 300, 1, false), (7, 13, 5, true), (130, 70, 45, false), (300, 257, 131, true), (97, 0, 33, false)] {
            let x = r(80, &[m, k]);
            let w = if wt { r(81, &[n, k]).t().unwrap() } else { r(81, &[k, n]) };
            let b = r(82, &[n]);
            let got = x.matmul_bias(&w, &b).unwrap();
            let want = naive(&x, &w).add(&b.to_dtype(DType::F64).unwrap()).unwrap();
            assert_close(&format!("{path}: matmul_bias {m}x{k}x{n} wt {wt}"), &got.to_dtype(DType::F64).unwrap(), &want, 1e-4);
            // and plain matmul on a transposed A
            let xt = r(83, &[k, m]).t().unwrap();
            check(&format!("{path}: transposed A {m}x{k}x{n}"), &xt, &w);
        }
    });
}

/// The AVX-512 and AVX2 kernels sum each element in the same order (an FMA chain over each block
/// of k, blocks added in order): their results are the same bits, and neither depends on the
/// thread count. Also a bf16 B read as stored gives the bits of widening it first.
#[test]
fn avx512_and_avx2_kernels_agree_bit_for_bit_on_any_thread_count() {
    use kiln::tensor::cpu::gemm::{with_kernel, GemmKernel};
    use kiln::tensor::cpu::simd::{self, Level};
    if simd::detected() < Level::Avx512 {
        eprintln!("SKIPPED: no AVX-512F on this CPU");
        return;
    }
    for &(m, k, n, tb) in &[(300, 600, 200, false), (150, 700, 333, true), (1024, 256, 1024, true), (7, 1000, 90, false)] {
        let a = randn(90, &[m, k], DType::F32);
        let b = if tb { randn(91, &[n, k], DType::F32).t().unwrap() } else { randn(91, &[k, n], DType::F32) };
        let run = |kern: GemmKernel, threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            with_kernel(kern, || pool.install(|| a.matmul(&b).unwrap().to_vec::<f32>().unwrap()))
        };
        let want = run(GemmKernel::Avx2, 2);
        for (kern, t) in [(GemmKernel::Avx512, 1), (GemmKernel::Avx512, 2), (GemmKernel::Avx512, 3), (GemmKernel::Avx2, 1)] {
            let got = run(kern, t);
            assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{k}x{n} tb {tb}: {kern:?} on {t} threads differs from AVX2 on 2");
        }
        // bf16 operands: B read as stored gives the bits of widening both first
        let (ah, bh) = (a.to_dtype(DType::BF16).unwrap(), b.to_dtype(DType::BF16).unwrap());
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        use kiln::tensor::cpu::gemm::{force_bf16, Bf16Gemm};
        let widened = |g: &dyn Fn() -> Vec<f64>| {
            force_bf16(Some(Bf16Gemm::Widen)); // the widening path (native bf16 sums in another order)
            let r = g();
            force_bf16(None);
            r
        };
        let got = with_kernel(GemmKernel::Avx512, || widened(&|| ah.matmul(&bh).unwrap().to_vec_f64().unwrap()));
        let want = with_kernel(GemmKernel::Avx512, || widened(&|| f(&ah).matmul(&f(&bh)).unwrap().to_dtype(DType::BF16).unwrap().to_vec_f64().unwrap()));
        assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{k}x{n} tb {tb}: bf16 B differs from widened B");
    }
}

/// Each way this CPU can run bf16 × bf16 products, named: native AVX512_BF16 (`vdpbf16ps`) where
/// detected (said so when it is not: that level then goes untested here), and widened to f32
/// (always). Forcing the SIMD level to AVX2 (the other CPU kind's dispatch) must widen.
fn each_bf16_path(f: impl Fn(&str)) {
    use kiln::tensor::cpu::gemm::{bf16_gemm, bf16_native_detected, with_bf16, Bf16Gemm};
    use kiln::tensor::cpu::simd::{self, Level};
    if bf16_native_detected() {
        with_bf16(Bf16Gemm::Native, || {
            assert_eq!(bf16_gemm(), Bf16Gemm::Native);
            f("native bf16 (avx512bf16)")
        });
        eprintln!("exercised: native bf16 GEMM (avx512bf16 detected)");
    } else {
        eprintln!("NOT RUN: this CPU has no AVX512_BF16: the native bf16 GEMM level could not be exercised here");
    }
    with_bf16(Bf16Gemm::Widen, || {
        assert_eq!(bf16_gemm(), Bf16Gemm::Widen);
        f("bf16 widened to f32")
    });
    eprintln!("exercised: bf16 widened to f32");
    if simd::detected() >= Level::Avx2 {
        simd::with_level(Level::Avx2, || assert_eq!(bf16_gemm(), Bf16Gemm::Widen, "level AVX2 must widen bf16"));
    }
}

/// bf16 operands from f32 values (rounded to nearest even), as raw slices.
fn bf16_vals(seed: usize, n: usize) -> (Vec<f32>, Vec<kiln::tensor::half::bf16>) {
    let v: Vec<f32> = (0..n).map(|s| (((s + seed) * 2654435761usize) % 2001) as f32 / 997.0 - 1.003).collect();
    let h = v.iter().map(|&x| kiln::tensor::half::bf16::from_f32(x)).collect();
    (v, h)
}

/// The native bf16 GEMM (`cpu::gemm::gemm_bf16`, f32 and bf16 outputs) on odd shapes (m, n, k not
/// multiples of the 12 × 32 block or of the 256-step k block; k odd; one row, one column),
/// transposed operands, one and several threads, against three references per element:
/// - the exact products of the bf16 operands summed in f32 one after another (what the kernel
///   computes, in another order): within `1e-6·(1 + √k)·Σ|a·b|`;
/// - the f64 product of the *unrounded* f32 values: within bf16's rounding of the operands
///   (`2⁻⁷·Σ|a·b|`), and the tight tolerance above would *reject* it on these shapes (so the first
///   check tells rounded operands from unrounded ones), as it rejects pairs of k taken in the wrong
///   order (a[2p]·b[2p+1] + a[2p+1]·b[2p]);
/// - the bf16 output is the f32 output rounded to nearest even, bit for bit.
/// Where the CPU has no AVX512_BF16 the call must be an error (and the test says it did not run).
#[test]
fn bf16_gemm_native_against_references() {
    use kiln::tensor::cpu::gemm::{bf16_native_detected, gemm_bf16, with_bf16, Bf16Gemm, Mat, Threads};
    use std::mem::MaybeUninit;
    let shapes = [(1, 1, 1), (1, 301, 77), (77, 300, 1), (7, 13, 5), (13, 1, 50), (25, 37, 33), (75, 301, 37), (150, 520, 70), (13, 9, 1030), (200, 257, 90), (97, 513, 161), (40, 0, 70), (12, 2, 32), (300, 600, 200)];
    let run = |path: &str| {
        let mut rejected_unrounded = 0;
        for &(m, k, n) in &shapes {
            let ((af, ah), (bf, bh)) = (bf16_vals(1, m * k), bf16_vals(7, k * n));
            let at: Vec<kiln::tensor::half::bf16> = (0..k * m).map(|q| ah[(q % m) * k + q / m]).collect(); // k × m
            let bt: Vec<kiln::tensor::half::bf16> = (0..n * k).map(|q| bh[(q % k) * n + q / k]).collect(); // n × k
            let (a32, b32): (Vec<f32>, Vec<f32>) = (ah.iter().map(|x| x.to_f32()).collect(), bh.iter().map(|x| x.to_f32()).collect());
            let prod = |i: usize, p: usize, j: usize| a32[i * k + p] * b32[p * n + j]; // exact in f32
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = if ta { Mat::row_major(&at, k, m).t() } else { Mat::row_major(&ah, m, k) };
                let b = if tb { Mat::row_major(&bt, n, k).t() } else { Mat::row_major(&bh, k, n) };
                for threads in [Threads::Single, Threads::Auto] {
                    let mut c32 = vec![MaybeUninit::new(f32::NAN); m * n];
                    let mut c16 = vec![MaybeUninit::new(kiln::tensor::half::bf16::NAN); m * n];
                    let r32 = gemm_bf16(a, b, &mut c32, threads);
                    let r16 = gemm_bf16(a, b, &mut c16, threads);
                    if path.starts_with("bf16 widened") {
                        let e = r32.unwrap_err().to_string();
                        assert!(e.contains("AVX512_BF16") && r16.is_err(), "{path}: {e}");
                        continue;
                    }
                    r32.unwrap();
                    r16.unwrap();
                    for i in 0..m {
                        for j in 0..n {
                            let (got, got16) = unsafe { (c32[i * n + j].assume_init(), c16[i * n + j].assume_init()) };
                            let what = format!("{path}: {m}x{k}x{n} ta {ta} tb {tb} {threads:?} ({i}, {j})");
                            assert_eq!(got16.to_bits(), kiln::tensor::half::bf16::from_f32(got).to_bits(), "{what}: bf16 output {got16} is not the f32 output {got} rounded");
                            let seq: f32 = (0..k).fold(0.0f32, |s, p| s + prod(i, p, j));
                            let abs: f64 = (0..k).map(|p| (prod(i, p, j) as f64).abs()).sum();
                            let tight = 1e-6 * (1.0 + (k as f64).sqrt()) * abs;
                            assert!((got as f64 - seq as f64).abs() <= tight, "{what}: {got} vs f32 sum of bf16 products {seq} (tol {tight:e})");
                            let exact: f64 = (0..k).map(|p| af[i * k + p] as f64 * bf[p * n + j] as f64).sum();
                            let loose = 2f64.powi(-7) * abs + 1e-30;
                            assert!((got as f64 - exact).abs() <= loose, "{what}: {got} vs f64 product of unrounded values {exact}");
                            if (seq as f64 - exact).abs() > tight {
                                rejected_unrounded += 1;
                            }
                            if k >= 2 && i == 0 && j == 0 {
                                // pairs taken crosswise: the tight tolerance must tell them apart
                                let swapped: f64 = (0..k).map(|p| { let q = if p % 2 == 0 { (p + 1).min(k - 1) } else { p - 1 }; a32[p] as f64 * b32[q * n] as f64 }).sum();
                                assert!((swapped - seq as f64).abs() > tight || k < 4, "{what}: the tolerance does not tell crosswise pairs from the right ones");
                            }
                        }
                    }
                }
            }
        }
        if !path.starts_with("bf16 widened") {
            assert!(rejected_unrounded > 1000, "{path}: the tight tolerance rejected the unrounded product only {rejected_unrounded} times");
        }
    };
    if bf16_native_detected() {
        with_bf16(Bf16Gemm::Native, || run("native bf16 (avx512bf16)"));
        eprintln!("exercised: native bf16 GEMM (avx512bf16 detected)");
    } else {
        eprintln!("NOT RUN: this CPU has no AVX512_BF16: the native bf16 GEMM could not be exercised here");
    }
    with_bf16(Bf16Gemm::Widen, || run("bf16 widened (native forced off: gemm_bf16 must refuse)"));
}

/// bf16 `matmul` (Tensor level) on each bf16 path: 2-D (few rows and many), transposed and
/// narrowed operands, folded batches (`[B, T, C] @ [C, N]`), batched both sides, and the gradients
/// (`dW` folds the batch into k): every output within one bf16 rounding of the f32 sum of the bf16
/// products (the f64 product of the bf16 values, plus f32 accumulation), and the native and
/// widened paths within one bf16 ulp of each other.
#[test]
fn bf16_matmul_on_each_path() {
    let r = |s: u64, sh: &[usize]| randn(s, sh, DType::F32).to_dtype(DType::BF16).unwrap();
    let cases: Vec<(&str, Tensor, Tensor)> = vec![
        ("2-D 3 rows", r(1, &[3, 301]), r(2, &[301, 45])),
        ("2-D odd", r(3, &[75, 301]), r(4, &[301, 37])),
        ("2-D transposed B", r(5, &[130, 257]), r(6, &[67, 257]).t().unwrap()),
        ("2-D transposed A, narrowed B", r(7, &[513, 40]).t().unwrap(), r(8, &[520, 33]).narrow(0, 7, 513).unwrap()),
        ("folded batch", r(9, &[3, 29, 70]), r(10, &[70, 50])),
        ("batched both", r(11, &[4, 19, 33]), r(12, &[4, 33, 21])),
        ("broadcast A batch", r(13, &[1, 31, 17]), r(14, &[3, 17, 40])),
    ];
    let mut results: Vec<Vec<Vec<f64>>> = Vec::new();
    let results_cell = std::cell::RefCell::new(&mut results);
    each_bf16_path(|path| {
        let mut mine = Vec::new();
        for (what, a, b) in &cases {
            let (av, bv) = (a.var(), b.var());
            let y = av.matmul(&bv).unwrap();
            assert_eq!(y.dtype(), DType::BF16);
            let want = naive(a, b);
            let tol_of = |w: &[f64]| w.iter().map(|x| x.abs()).fold(0.0, f64::max) * 2f64.powi(-8) + 1e-3;
            let (got, w) = (y.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
            let tol = tol_of(&w);
            for (x, y) in got.iter().zip(&w) {
                assert!((x - y).abs() <= y.abs() * 2f64.powi(-8) + 1e-4 * tol, "{path}: {what}: {x} vs {y}");
            }
            // gradients of sum(y * g)
            let g = r(99, y.shape());
            y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (av.grad().unwrap(), bv.grad().unwrap());
            let ga_want = naive(&g, &b.t().unwrap().contiguous().unwrap());
            let ga_want = if ga_want.shape() == a.shape() { ga_want } else { ga_want.sum_dims(&[0], true).unwrap() };
            let bt_a = a.transpose(-1, -2).unwrap().contiguous().unwrap();
            let gb_full = naive(&bt_a, &g);
            let gb_want = if gb_full.shape() == b.shape() { gb_full } else if b.rank() == 2 { gb_full.sum_dims(&[0], false).unwrap() } else { gb_full.sum_dims(&[0], true).unwrap() };
            for (name, got, want) in [("dA", &ga, &ga_want), ("dB", &gb, &gb_want)] {
                assert_eq!(got.shape(), want.shape(), "{path}: {what} {name}");
                let (gv, wv) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
                let scale = wv.iter().map(|x| x.abs()).fold(0.0, f64::max);
                for (x, y) in gv.iter().zip(&wv) {
                    assert!((x - y).abs() <= y.abs() * 2f64.powi(-7) + 1e-3 * scale, "{path}: {what} {name}: {x} vs {y}");
                }
            }
            mine.push(got);
        }
        results_cell.borrow_mut().push(mine);
    });
    if results.len() == 2 {
        // native then widened: the same f32 sums up to order, rounded once to bf16
        for ((what, _, _), (n, w)) in cases.iter().zip(results[0].iter().zip(&results[1])) {
            for (x, y) in n.iter().zip(w) {
                assert!((x - y).abs() <= y.abs() * 2f64.powi(-7) + 1e-6, "{what}: native {x} vs widened {y}");
            }
        }
    }
}

/// The native bf16 GEMM gives the same bits on one, two and three threads (each element one
/// sequence of operations), with f32 and bf16 outputs.
#[test]
fn bf16_gemm_native_is_thread_count_independent() {
    use kiln::tensor::cpu::gemm::{bf16_native_detected, gemm_bf16, with_bf16, Bf16Gemm, Mat, Threads};
    use std::mem::MaybeUninit;
    if !bf16_native_detected() {
        eprintln!("NOT RUN: this CPU has no AVX512_BF16: the native bf16 GEMM could not be exercised here");
        return;
    }
    for &(m, k, n, tb) in &[(300, 600, 200, false), (150, 701, 333, true), (1024, 256, 1024, true)] {
        let ((_, ah), (_, bh)) = (bf16_vals(3, m * k), bf16_vals(5, k * n));
        let b = if tb { Mat::row_major(&bh, n, k).t() } else { Mat::row_major(&bh, k, n) };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![MaybeUninit::new(0f32); m * n];
            with_bf16(Bf16Gemm::Native, || pool.install(|| gemm_bf16(Mat::row_major(&ah, m, k), b, &mut c, Threads::Auto))).unwrap();
            c.iter().map(|x| unsafe { x.assume_init() }.to_bits()).collect::<Vec<u32>>()
        };
        let one = run(1);
        assert_eq!(one, run(2), "{m}x{k}x{n}: 2 threads");
        assert_eq!(one, run(3), "{m}x{k}x{n}: 3 threads");
    }
    eprintln!("exercised: native bf16 GEMM (avx512bf16 detected)");
}
