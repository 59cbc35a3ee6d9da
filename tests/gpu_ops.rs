//! Every wired CUDA op against the CPU reference, values and gradients, in f32 / bf16 / f16, on
//! random odd-sized shapes (strided views included). New op outputs are poisoned with NaN before
//! each launch (see `testing::gpu_device`), so an element a kernel forgets to write fails.
//!
//! Without a CUDA device every test prints `SKIPPED (no CUDA device): <test>` and passes (set
//! `KILN_REQUIRE_GPU=1` to make that a failure, as scripts/gpu_remote.sh does). The tests that
//! do not need a device (`no_device_*`) check the errors of the GPU-less path.
use kiln::tensor::ops::attention::AttentionOpts;
use kiln::tensor::testing::{gpu_device, gpu_tol, scaled_err};
use kiln::{DType, Device, Error, Result, Tensor};

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// Seeded CPU input of `dt` (values N(0,1), or `|x| + 0.5` when `positive`).
fn input(seed: u64, shape: &[usize], dt: DType, positive: bool) -> Tensor {
    let x = Tensor::randn(seed, shape, 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let x = if positive { x.abs().unwrap().add_scalar(0.5).unwrap() } else { x };
    x.to_dtype(dt).unwrap()
}

/// Runs `f` on the CPU (f32, from the dtype-rounded inputs) and on `dev` (in each dtype), compares
/// outputs and, with `grad`, the gradients of `sum(f(x) * w)` for a fixed random `w`.
fn check(name: &str, dev: Device, shapes: &[&[usize]], positive: bool, grad: bool, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    for dt in DTYPES {
        let what = format!("{name} [{dt}]");
        let host: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| input(17 + i as u64, s, dt, positive)).collect();
        let ref_in: Vec<Tensor> = host.iter().map(|x| x.to_dtype(DType::F32).unwrap().var()).collect();
        let gpu_in: Vec<Tensor> = host.iter().map(|x| x.to_device(dev).unwrap().var()).collect();
        let y_ref = f(&ref_in).unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
        let y = f(&gpu_in).unwrap_or_else(|e| panic!("{what}: cuda: {e}"));
        assert_eq!(y.device(), dev, "{what}: output device");
        assert_eq!(y.shape(), y_ref.shape(), "{what}: output shape");
        let tol = gpu_tol(dt);
        let e = scaled_err(&y.to_dtype(DType::F32).unwrap(), &y_ref).unwrap();
        assert!(e <= tol, "{what}: forward scaled error {e:.3e} > {tol:.1e}");
        if !grad {
            continue;
        }
        let w = Tensor::randn(99, y_ref.shape(), 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
        y_ref.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let wd = w.to_dtype(y.dtype()).unwrap().to_device(dev).unwrap();
        y.mul(&wd).unwrap().sum_all().unwrap().backward().unwrap_or_else(|e| panic!("{what}: cuda backward: {e}"));
        let gtol = if dt == DType::F32 { tol } else { 2.0 * tol };
        for (i, (a, b)) in gpu_in.iter().zip(&ref_in).enumerate() {
            let (ga, gb) = (a.grad().unwrap_or_else(|| panic!("{what}: no gradient for input {i}")), b.grad().unwrap());
            assert_eq!(ga.device(), dev, "{what}: gradient {i} device");
            let e = scaled_err(&ga.to_dtype(DType::F32).unwrap(), &gb).unwrap();
            assert!(e <= gtol, "{what}: gradient {i} scaled error {e:.3e} > {gtol:.1e}");
        }
        eprintln!("ok: {what}");
    }
}

macro_rules! gpu_test {
    ($name:ident, |$dev:ident| $body:block) => {
        #[test]
        fn $name() {
            let Some($dev) = gpu_device(stringify!($name)) else { return };
            $body
        }
    };
}

gpu_test!(transfers_round_trip, |dev| {
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64] {
        let x = input(1, &[3, 5, 7], DType::F32, false).mul_scalar(10.0).unwrap().to_dtype(dt).unwrap();
        let g = x.to_device(dev).unwrap();
        assert_eq!((g.device(), g.dtype(), g.shape()), (dev, dt, x.shape()));
        assert_eq!(g.to_vec_f64().unwrap(), x.to_vec_f64().unwrap(), "{dt}: upload/download");
        let t = x.permute(&[2, 0, 1]).unwrap();
        let gt = g.permute(&[2, 0, 1]).unwrap().contiguous().unwrap();
        assert_eq!(gt.to_vec_f64().unwrap(), t.to_vec_f64().unwrap(), "{dt}: permute copy");
        let n = g.narrow(1, 1, 3).unwrap().to_device(Device::Cpu).unwrap();
        assert_eq!(n.to_vec_f64().unwrap(), x.narrow(1, 1, 3).unwrap().to_vec_f64().unwrap(), "{dt}: narrow download");
    }
    let z = Tensor::zeros(&[1, 1], DType::F32, dev).unwrap();
    assert_eq!((z.device(), z.to_vec::<f32>().unwrap()), (dev, vec![0.0]));
    let r = Tensor::randn(5, &[17, 1000], 0.0, 1.0, DType::BF16, dev).unwrap();
    assert_eq!(r.to_vec_f64().unwrap(), Tensor::randn(5, &[17, 1000], 0.0, 1.0, DType::BF16, Device::Cpu).unwrap().to_vec_f64().unwrap());
});

gpu_test!(casts_match_cpu, |dev| {
    let x = input(2, &[17, 1000], DType::F32, false);
    for a in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        for b in [DType::F32, DType::BF16, DType::F16, DType::F64, DType::I64] {
            let want = x.to_dtype(a).unwrap().to_dtype(b).unwrap();
            let got = x.to_dtype(a).unwrap().to_device(dev).unwrap().to_dtype(b).unwrap();
            assert_eq!(got.device(), dev);
            assert_eq!(got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "cast {a} -> {b}");
        }
    }
    let ids = Tensor::from_vec(vec![3i64, -2, 0, 1 << 20], &[4]).unwrap();
    assert_eq!(ids.to_device(dev).unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![3.0, -2.0, 0.0, (1 << 20) as f32]);
});

gpu_test!(cat_split_and_narrow_backward, |dev| {
    // cat along every dim of odd shapes (one input a strided view), and split / narrow, whose
    // backward pads with zeros through cat (GPT-2's fused c_attn split takes this path)
    for d in 0..3 {
        let mut b = vec![3, 5, 7];
        b[d] = 2;
        let shapes: [&[usize]; 2] = [&[3, 5, 7], &b];
        check(&format!("cat dim {d}"), dev, &shapes, false, true, |x| Tensor::cat(&[x[0].clone(), x[1].clone(), x[0].clone()], d));
    }
    check("cat of a transposed view", dev, &[&[4, 6], &[3, 4]], false, true, |x| Tensor::cat(&[x[0].clone(), x[1].t()?], 1));
    check("split then recombine", dev, &[&[5, 9]], false, true, |x| {
        let p = x[0].split(&[2, 3, 4], 1)?;
        p[2].mul(&p[2])?.sum_dims(&[1], true)?.add(&p[0].sum_dims(&[1], true)?)
    });
    check("narrow", dev, &[&[4, 11, 3]], false, true, |x| x[0].narrow(1, 3, 5));
    let empty = Tensor::zeros(&[3, 0], DType::F32, dev).unwrap();
    let a = input(5, &[3, 2], DType::F32, false).to_device(dev).unwrap();
    let c = Tensor::cat(&[empty, a.clone()], 1).unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), a.to_vec::<f32>().unwrap(), "cat with an empty input");
});

gpu_test!(assign_narrow_matches_cpu, |dev| {
    // the key/value cache's in-place window writes: on CUDA a new buffer, the same values
    for dt in [DType::F32, DType::BF16] {
        let base = input(11, &[2, 3, 37, 16], dt, false);
        let src = input(12, &[2, 3, 5, 16], dt, false);
        for start in [0, 13, 32] {
            let (c, g) = (base.clone().contiguous().unwrap(), base.to_device(dev).unwrap().contiguous().unwrap());
            let held = g.narrow(2, 0, 37).unwrap();
            c.assign_narrow(2, start, &src).unwrap();
            g.assign_narrow(2, start, &src.to_device(dev).unwrap()).unwrap();
            assert_eq!(g.device(), dev);
            assert_eq!(g.to_vec_f64().unwrap(), c.to_vec_f64().unwrap(), "{dt} window at {start}");
            assert_eq!(held.to_vec_f64().unwrap(), base.to_vec_f64().unwrap(), "{dt}: an earlier view changed");
        }
    }
    eprintln!("ok: assign_narrow");
});

gpu_test!(unary_ops, |dev| {
    type F = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, F, bool); 8] = [
        ("exp", Tensor::exp, false),
        ("log", Tensor::log, true),
        ("sqrt", Tensor::sqrt, true),
        ("tanh", Tensor::tanh, false),
        ("sqr", Tensor::sqr, false),
        ("recip", Tensor::recip, true),
        ("abs", Tensor::abs, false),
        ("relu", Tensor::relu, false),
    ];
    for (name, op, positive) in ops {
        check(name, dev, &[&[3, 5, 7]], positive, true, |x| op(&x[0]));
        check(&format!("{name} (transposed view)"), dev, &[&[17, 33]], positive, true, |x| op(&x[0].t()?));
        check(&format!("{name} 1x1"), dev, &[&[1, 1]], positive, true, |x| op(&x[0]));
    }
});

gpu_test!(binary_ops_broadcast, |dev| {
    check("add", dev, &[&[3, 5, 7], &[5, 1]], false, true, |x| x[0].add(&x[1]));
    check("sub", dev, &[&[17, 1000], &[1000]], false, true, |x| x[0].sub(&x[1]));
    // the row-broadcast kernel (binary_rows_fwd): a bias add on [B, T, C], and more rows than the
    // grid's 65535 so that threads walk down several rows
    check("bias add [3, 7, 64] + [64]", dev, &[&[3, 7, 64], &[64]], false, true, |x| x[0].add(&x[1]));
    check("mul [70001, 8] * [8]", dev, &[&[70001, 8], &[8]], false, true, |x| x[0].mul(&x[1]));
    check("div [5, 12] / [12] (whole packs in f32 only)", dev, &[&[5, 12], &[12]], true, true, |x| x[0].div(&x[1]));
    check("mul", dev, &[&[3, 5, 7], &[3, 1, 7]], false, true, |x| x[0].mul(&x[1]));
    check("div", dev, &[&[3, 5, 7], &[7]], true, true, |x| x[0].div(&x[1]));
    check("mul (transposed lhs)", dev, &[&[7, 5], &[5, 7]], false, true, |x| x[0].t()?.mul(&x[1]));
    check("affine", dev, &[&[17, 1000]], false, true, |x| x[0].affine(-1.5, 0.25));
    check("neg 1x1", dev, &[&[1, 1]], false, true, |x| x[0].neg());
});

gpu_test!(reductions, |dev| {
    check("sum dims 0,2", dev, &[&[3, 5, 7]], false, true, |x| x[0].sum_dims(&[0, 2], false));
    check("sum leading (bias grad)", dev, &[&[17, 1000]], false, true, |x| x[0].sum_dims(&[0], true));
    check("sum last", dev, &[&[17, 1000]], false, true, |x| x[0].sum(-1, false));
    check("mean_all", dev, &[&[3, 5, 7]], false, true, |x| x[0].mean_all());
    check("sum of a permuted view", dev, &[&[3, 5, 7]], false, true, |x| x[0].permute(&[2, 0, 1])?.sum_dims(&[1], false));
});

gpu_test!(matmul_cublas, |dev| {
    check("mm", dev, &[&[5, 7], &[7, 4]], false, true, |x| x[0].matmul(&x[1]));
    check("mm 17x33x1000", dev, &[&[17, 33], &[33, 1000]], false, true, |x| x[0].matmul(&x[1]));
    check("mm 1x1", dev, &[&[1, 1], &[1, 1]], false, true, |x| x[0].matmul(&x[1]));
    check("activations @ weight", dev, &[&[3, 5, 7], &[7, 9]], false, true, |x| x[0].matmul(&x[1]));
    check("transposed operands", dev, &[&[7, 5], &[9, 7]], false, true, |x| x[0].t()?.matmul(&x[1].t()?));
    check("batched broadcast", dev, &[&[2, 3, 5, 7], &[3, 7, 4]], false, true, |x| x[0].matmul(&x[1]));
    check("vector @ matrix", dev, &[&[7], &[7, 3]], false, true, |x| x[0].matmul(&x[1]));
});

gpu_test!(gelu_both_forms, |dev| {
    check("gelu", dev, &[&[17, 1000]], false, true, |x| x[0].gelu());
    check("gelu_tanh", dev, &[&[17, 1000]], false, true, |x| x[0].gelu_tanh());
    check("gelu (strided)", dev, &[&[3, 5, 7]], false, true, |x| x[0].permute(&[2, 1, 0])?.gelu());
});

gpu_test!(softmax_and_log_softmax, |dev| {
    for shape in [&[3usize, 5, 7][..], &[17, 1000], &[1, 1]] {
        check("softmax", dev, &[shape], false, true, |x| x[0].softmax_last_dim());
        check("log_softmax", dev, &[shape], false, true, |x| x[0].log_softmax_last_dim());
    }
});

gpu_test!(layer_norm_fused, |dev| {
    check("layer_norm w+b", dev, &[&[17, 1000], &[1000], &[1000]], false, true, |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5));
    check("layer_norm no affine", dev, &[&[3, 5, 7]], false, true, |x| x[0].layer_norm(None, None, 1e-12));
    check("layer_norm bias only", dev, &[&[3, 5, 7], &[7]], false, true, |x| x[0].layer_norm(None, Some(&x[1]), 1e-5));
    check("layer_norm weight only", dev, &[&[3, 5, 7], &[7]], false, true, |x| x[0].layer_norm(Some(&x[1]), None, 1e-5));
});

// The row-wise ops on both CUDA kernel families: the warp-per-row kernels (the default where they
// apply) and the block kernels (forced), at row lengths that pick each `_warp<E>` kernel (8: one
// pack; 100: E 8; 768: E 24; 1000: E 32; 1528: E 48; 2048: E 64 forward, the block LayerNorm
// backward) or fall back (1030: not whole 16-byte packs), with enough rows that a warp of the
// LayerNorm backward takes several; and an offset view (rows not 16-byte aligned if the view
// keeps its offset).
gpu_test!(row_kernels_warp_and_block, |dev| {
    use kiln::tensor::cuda::{force_row_kernel, row_kernel_override, RowKernel};
    for kernel in [None, Some(RowKernel::Block)] {
        force_row_kernel(kernel);
        if kernel.is_some() {
            assert_eq!(row_kernel_override(), kernel, "a forced choice wins over KILN_ROW_KERNEL");
        }
        for (rows, cols) in [(37usize, 8usize), (37, 100), (600, 768), (37, 1000), (19, 1528), (9, 2048), (37, 1030)] {
            let k = format!("[{rows}, {cols}] {kernel:?}");
            check(&format!("layer_norm {k}"), dev, &[&[rows, cols], &[cols], &[cols]], false, true, |x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5));
            check(&format!("softmax {k}"), dev, &[&[rows, cols]], false, true, |x| x[0].softmax_last_dim());
            check(&format!("log_softmax {k}"), dev, &[&[rows, cols]], false, true, |x| x[0].log_softmax_last_dim());
        }
        check(&format!("layer_norm no affine [33, 768] {kernel:?}"), dev, &[&[33, 768]], false, true, |x| x[0].layer_norm(None, None, 1e-5));
        check(&format!("layer_norm of an offset view {kernel:?}"), dev, &[&[1 + 5 * 768], &[768], &[768]], false, true, |x| {
            x[0].narrow(0, 1, 5 * 768)?.reshape(&[5, 768])?.layer_norm(Some(&x[1]), Some(&x[2]), 1e-5)
        });
        check(&format!("softmax of an offset view {kernel:?}"), dev, &[&[1 + 5 * 768]], false, true, |x| x[0].narrow(0, 1, 5 * 768)?.reshape(&[5, 768])?.softmax_last_dim());
    }
    force_row_kernel(None);
});

// AdamW on CUDA parameters runs on the device (adamw.cu, moments kept there) and gives the same
// bits as the CPU loop: 3 steps of a decayed [17, 33] weight and an undecayed [33] bias with the
// same gradients (f32, and bf16 gradients on the second parameter set), then the state saved from
// the GPU optimizer, loaded into a fresh one, continues bit-identically; and the global gradient
// norm (summed on the device) agrees with the CPU's.
gpu_test!(adamw_on_device_matches_cpu_bits, |dev| {
    use kiln::model::optim::{grad_norm, AdamW, AdamWConfig, Optimizer};
    use kiln::model::params::{Init, ParamStore};
    for grad_dt in [DType::F32, DType::BF16] {
        let cfg = AdamWConfig { lr: 3e-3, weight_decay: 0.1, ..Default::default() };
        let stores = [ParamStore::new(7, DType::F32, Device::Cpu), ParamStore::new(7, DType::F32, dev)];
        let params: Vec<Vec<_>> = stores
            .iter()
            .map(|s| vec![s.get_or_init("w", &[17, 33], Init::Normal { std: 0.5 }).unwrap(), s.get_or_init("b", &[33], Init::Normal { std: 0.5 }).unwrap()])
            .collect();
        let mut opts = [AdamW::new(cfg), AdamW::new(cfg)];
        let bits = |ps: &[kiln::model::params::Param]| -> Vec<Vec<u32>> { ps.iter().map(|p| p.tensor().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()).collect() };
        assert_eq!(bits(&params[0]), bits(&params[1]), "same initial weights");
        let set_grads = |step: u64| {
            for (i, ps) in params.iter().enumerate() {
                for (k, p) in ps.iter().enumerate() {
                    let g = Tensor::randn(100 * step + k as u64, p.tensor().shape(), 0.0, 1.0, DType::F32, Device::Cpu).unwrap().to_dtype(grad_dt).unwrap();
                    p.set_grad(Some(if i == 0 { g } else { g.to_device(dev).unwrap() }));
                }
            }
        };
        for step in 1..=3 {
            set_grads(step);
            let (n_cpu, n_gpu) = (grad_norm(&params[0]).unwrap(), grad_norm(&params[1]).unwrap());
            assert!((n_cpu - n_gpu).abs() <= 1e-5 * n_cpu, "[{grad_dt}] grad norm cpu {n_cpu} vs cuda {n_gpu}");
            for (o, ps) in opts.iter_mut().zip(&params) {
                o.step(ps).unwrap();
            }
            assert_eq!(params[1][0].tensor().device(), dev, "the parameter stays on the device");
            assert_eq!(bits(&params[0]), bits(&params[1]), "[{grad_dt}] step {step}: CUDA AdamW differs from the CPU's bits");
        }
        // the GPU optimizer's state (moments downloaded) into a fresh optimizer, which continues on the device
        let (s_cpu, s_gpu) = (opts[0].state().unwrap(), opts[1].state().unwrap());
        for ((na, a), (nb, b)) in s_cpu.tensors.iter().zip(&s_gpu.tensors) {
            assert_eq!(na, nb);
            assert_eq!(a.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "[{grad_dt}] moment {na}");
        }
        let mut resumed = AdamW::new(cfg);
        resumed.load_state(&s_gpu).unwrap();
        set_grads(4);
        opts[0].step(&params[0]).unwrap();
        resumed.step(&params[1]).unwrap();
        assert_eq!(bits(&params[0]), bits(&params[1]), "[{grad_dt}] a step after load_state differs");
        eprintln!("ok: adamw on the device, grads {grad_dt}: 4 steps bit-identical to the CPU");
    }
});

gpu_test!(embedding_and_index_select, |dev| {
    let ids = Tensor::from_vec(vec![3i64, 0, 49, 3, 3, 7, 12, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 40], &[3, 7]).unwrap();
    check("embedding", dev, &[&[50, 24]], false, true, |x| Tensor::embedding(&ids.to_device(x[0].device())?, &x[0]));
    let rows = Tensor::from_vec(vec![4i64, 0, 4, 2], &[4]).unwrap();
    check("index_select dim 0", dev, &[&[5, 3, 7]], false, true, |x| x[0].index_select(0, &rows.to_device(x[0].device())?));
});

gpu_test!(dropout_same_mask_as_cpu, |dev| {
    check("dropout", dev, &[&[17, 1000]], false, true, |x| x[0].dropout(0.3, 1234, true));
    check("dropout (strided)", dev, &[&[3, 5, 7]], false, true, |x| x[0].t()?.dropout(0.1, 7, true));
});

gpu_test!(cross_entropy_fused, |dev| {
    let targets = Tensor::from_vec((0..37).map(|i| if i % 5 == 0 { -100 } else { (i * 7) % 50 }).collect::<Vec<i64>>(), &[37]).unwrap();
    check("cross_entropy", dev, &[&[37, 50]], false, true, |x| x[0].cross_entropy(&targets.to_device(x[0].device())?, -100));
    let t1 = Tensor::from_vec(vec![999i64], &[1]).unwrap();
    check("cross_entropy 1x1000", dev, &[&[1, 1000]], false, true, |x| x[0].cross_entropy(&t1.to_device(x[0].device())?, -100));
});

/// Attention on `[b, h, t, d]` against the CPU: plain, causal, and with the last `pad` keys of
/// every batch after the first masked out.
fn check_attention(name: &str, dev: Device, (b, h, t, d): (usize, usize, usize, usize), pad: usize) {
    let shape = [b, h, t, d];
    check(&format!("{name} d={d}"), dev, &[&shape, &shape, &shape], false, true, |x| {
        x[0].attention(&x[1], &x[2], &AttentionOpts::default())
    });
    check(&format!("{name} causal d={d}"), dev, &[&shape, &shape, &shape], false, true, |x| {
        x[0].attention(&x[1], &x[2], &AttentionOpts { causal: true, ..Default::default() })
    });
    let mask: Vec<i64> = (0..b * t).map(|i| if i >= t && i % t >= t - pad { 0 } else { 1 }).collect();
    let mask = Tensor::from_vec(mask, &[b, t]).unwrap();
    check(&format!("{name} key padding d={d}"), dev, &[&shape, &shape, &shape], false, true, |x| {
        let m = mask.to_device(x[0].device())?;
        x[0].attention(&x[1], &x[2], &AttentionOpts { key_padding_mask: Some(m), ..Default::default() })
    });
}

gpu_test!(attention_fused, |dev| {
    for d in [32usize, 64, 80, 96, 128] {
        check_attention("attention", dev, (2, 3, 97, d), 20);
    }
    // Tq != Tk (not causal) and a permuted (non-contiguous) q, as the models produce
    check("attention Tq != Tk", dev, &[&[1, 2, 5, 32], &[1, 2, 9, 32], &[1, 2, 9, 32]], false, true, |x| {
        x[0].attention(&x[1], &x[2], &AttentionOpts::default())
    });
    check("attention permuted q", dev, &[&[2, 7, 3, 64], &[2, 3, 7, 64], &[2, 3, 7, 64]], false, true, |x| {
        x[0].permute(&[0, 2, 1, 3])?.attention(&x[1], &x[2], &AttentionOpts { causal: true, ..Default::default() })
    });
});

// attention_fwd_tc2 (opt-in forward: 128-row blocks): several blocks, the causal skips and
// diagonal tiles, partial key tiles, padding, Tq != Tk; bf16 / f16 at head dim 64 and 128 run it
// (f32 and other head dims fall back to the simple kernels). The choice is per thread.
gpu_test!(attention_tc2, |dev| {
    use kiln::tensor::ops::attention::{attention_kernel_override, force_attention_kernel, AttnKernel};
    force_attention_kernel(Some(AttnKernel::TensorCore2));
    assert_eq!(attention_kernel_override(), Some(AttnKernel::TensorCore2));
    for d in [64usize, 128] {
        check_attention("tc2 attention", dev, (2, 2, 300, d), 45);
        check(&format!("tc2 attention Tq != Tk d={d}"), dev, &[&[1, 3, 131, d], &[1, 3, 197, d], &[1, 3, 197, d]], false, true, |x| {
            x[0].attention(&x[1], &x[2], &AttentionOpts::default())
        });
    }
    force_attention_kernel(None);
});

// The five wgmma operand forms the Hopper attention kernels use, each on one 64 x 64 x 16 product
// against f64: when `attention_wgmma` fails, this says which shared-memory layout is misread.
gpu_test!(wgmma_operand_layouts, |dev| {
    use kiln::tensor::cuda::{device_arch, nvrtc::arch_number};
    use kiln::tensor::ops::attention::variants::wgmma_probe;
    let arch = device_arch(dev).unwrap();
    let a = input(11, &[64, 16], DType::BF16, false);
    let b = input(12, &[16, 64], DType::BF16, false);
    let (ga, gb) = (a.to_device(dev).unwrap(), b.to_device(dev).unwrap());
    if arch_number(&arch) != 90 {
        let e = wgmma_probe(&ga, &gb, 0).unwrap_err().to_string();
        assert!(e.contains("sm_90"), "{e}");
        println!("SKIPPED wgmma_operand_layouts: wgmma needs an sm_90 GPU, this one is {arch}");
        return;
    }
    let want = a.to_dtype(DType::F64).unwrap().matmul(&b.to_dtype(DType::F64).unwrap()).unwrap().to_vec_f64().unwrap();
    let names = [
        "0: A, B K-major from shared memory (S = Q K^T)",
        "1: A registers, B MN-major (O += P V)",
        "2: A, B MN-major (dQ = dS K)",
        "3: A, B K-major, 128-byte swizzle (wgtma's S = Q K^T)",
        "4: A registers, B MN-major, 128-byte swizzle (wgtma's O += P V)",
    ];
    let mut bad = Vec::new();
    for (form, name) in names.iter().enumerate() {
        let got = wgmma_probe(&ga, &gb, form as u32).unwrap().to_device(Device::Cpu).unwrap().to_vec_f64().unwrap();
        // a NaN (an unwritten or misread element) counts as an infinite error
        let err = got.iter().zip(&want).map(|(g, w)| if (g - w).is_nan() { f64::INFINITY } else { (g - w).abs() }).fold(0.0f64, f64::max);
        println!("wgmma form {name}: max abs error {err:.3e}");
        if err >= 1e-3 {
            bad.push(format!("{name}: max abs error {err:.3e}"));
        }
    }
    assert!(bad.is_empty(), "wgmma operand forms misread: {bad:?}");
    let e = wgmma_probe(&ga, &ga, 0).unwrap_err().to_string();
    assert!(e.contains("[16, 64]"), "{e}");
});

// attention_fwd_wg, its serial schedule and the warp-specialized TMA forward attention_fwd_wgtma
// (opt-in wgmma forwards, sm_90a: 2 (consumer) warpgroups x 64 rows, 128-key tiles in two stages)
// with the wgmma backward attention_bwd_wg (gradients against the CPU): several blocks and key tiles, causal skips, partial tiles, padding,
// Tq != Tk. Other GPUs have no wgmma: the test says so and checks that a request runs tc there.
gpu_test!(attention_wgmma, |dev| {
    use kiln::tensor::cuda::{device_arch, nvrtc::arch_number};
    use kiln::tensor::ops::attention::{force_attention_kernel, AttnKernel};
    let arch = device_arch(dev).unwrap();
    force_attention_kernel(Some(AttnKernel::Wgmma));
    if arch_number(&arch) != 90 {
        println!("SKIPPED attention_wgmma: the wgmma kernel needs an sm_90 GPU, this one is {arch} (its requests run tc)");
    } else {
        for (kernel, name) in [(AttnKernel::Wgmma, "wg"), (AttnKernel::WgmmaSerial, "wg serial"), (AttnKernel::WgmmaTma, "wgtma"), (AttnKernel::WgmmaTmaPingpong, "wgtma pingpong")] {
            force_attention_kernel(Some(kernel));
            for d in [64usize, 128] {
                check_attention(&format!("{name} attention"), dev, (2, 2, 300, d), 45);
                check(&format!("{name} attention Tq != Tk d={d}"), dev, &[&[1, 3, 131, d], &[1, 3, 397, d], &[1, 3, 397, d]], false, true, |x| {
                    x[0].attention(&x[1], &x[2], &AttentionOpts::default())
                });
            }
        }
    }
    force_attention_kernel(None);
});

// f32 matmul is strict FP32 unless TF32 is allowed: strict matches an f64 product to ~1e-6, TF32
// (inputs rounded to 10 mantissa bits) is visibly less exact yet within TF32's tolerance.
gpu_test!(matmul_tf32_is_opt_in, |dev| {
    use kiln::tensor::cuda::{set_tf32, tf32_enabled};
    let a = input(3, &[192, 1024], DType::F32, false);
    let b = input(4, &[1024, 160], DType::F32, false);
    let want = a.to_dtype(DType::F64).unwrap().matmul(&b.to_dtype(DType::F64).unwrap()).unwrap();
    let (ga, gb) = (a.to_device(dev).unwrap(), b.to_device(dev).unwrap());
    let err = |on: bool| {
        set_tf32(on);
        let got = ga.matmul(&gb).unwrap().to_device(Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        scaled_err(&got, &want).unwrap()
    };
    let before = tf32_enabled();
    let (strict, tf32) = (err(false), err(true));
    set_tf32(before);
    assert!(strict < 1e-5, "strict FP32 error {strict:.2e}");
    assert!(tf32 > 4.0 * strict && tf32 < 2e-3, "TF32 error {tf32:.2e} (strict {strict:.2e}): TF32 had no effect or is too inexact");
});

gpu_test!(errors_not_fallbacks, |dev| {
    let x = Tensor::randn(0, &[3, 5], 0.0, 1.0, DType::F32, dev).unwrap();
    let c = Tensor::randn(0, &[3, 5], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    match x.add(&c) {
        Err(Error::DeviceMismatch { op, lhs, rhs }) => assert_eq!((op, lhs, rhs), ("add", dev, Device::Cpu)),
        other => panic!("mixed devices must be DeviceMismatch, got {other:?}"),
    }
    // an op with no CUDA arm yet: a clear error, never a silent CPU fallback
    let e = x.eq_scalar(0.0).expect_err("eq_scalar has no CUDA arm yet");
    assert!(e.to_string().contains("not implemented on CUDA"), "{e}");
    let e = x.to_dtype(DType::F64).unwrap().exp().expect_err("f64 has no CUDA kernels");
    assert!(e.to_string().contains("exp"), "{e}");
});

#[test]
fn no_device_errors_are_clear() {
    if kiln::tensor::cuda::is_available() {
        eprintln!("SKIPPED (a CUDA device exists): no_device_errors_are_clear");
        return;
    }
    for e in [
        Tensor::zeros(&[2], DType::F32, Device::Cuda(0)).unwrap_err(),
        Tensor::randn(0, &[2], 0.0, 1.0, DType::F32, Device::Cuda(0)).unwrap_err(),
        Tensor::ones(&[2], DType::F32, Device::Cpu).unwrap().to_device(Device::Cuda(0)).unwrap_err(),
    ] {
        assert!(matches!(e, Error::CudaUnavailable(_)), "{e:?}");
        assert!(e.to_string().to_lowercase().contains("cuda"), "{e}");
    }
}

// attention-probability dropout (fused kernels and the composed path) against the CPU
#[path = "gpu_ops/attention_dropout.rs"]
mod attention_dropout;
