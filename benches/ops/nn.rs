//! The fused nn ops on the CPU (f32): GELU (erf, tanh), LayerNorm, softmax at [8192, 768] and
//! cross-entropy at [1024, 8192], forward and backward. Forwards go through the public `Tensor`
//! methods (under `no_grad`); backwards call the kernels in `ops::<op>::cpu` directly (the same code
//! `backward()` runs, without the graph). Both include allocating their outputs, as PyTorch's do.
//! Throughput counts bytes as in docs/perf-anchors: every input read once + every output written
//! once + saved statistics. Compare against PyTorch with the same thread count
//! (`RAYON_NUM_THREADS=2 cargo bench --bench ops -- <filter>`).
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use kiln::tensor::no_grad;
use kiln::tensor::ops::gelu::GeluApprox;
use kiln::tensor::ops::{cross_entropy::cpu as ce, gelu::cpu as gk, layer_norm::cpu as ln, softmax::cpu as sm};
use kiln::{DType, Device, Tensor};
use std::hint::black_box;

const F: usize = 4; // bytes per f32

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F32, Device::Cpu).unwrap()
}

fn run<R>(c: &mut Criterion, group: &str, shape: &str, bytes: usize, mut f: impl FnMut() -> R) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("cpu/f32/{shape}")), |b| b.iter(|| black_box(f())));
    g.finish();
}

fn bench(c: &mut Criterion) {
    let (rows, d) = (8192, 768);
    let n = rows * d;
    let shape = format!("{rows}x{d}");
    let x = randn(1, &[rows, d]);
    let dy = randn(2, &[rows, d]);
    let (xv, dyv) = (x.to_vec::<f32>().unwrap(), dy.to_vec::<f32>().unwrap());

    for (name, approx) in [("gelu", GeluApprox::Erf), ("gelu_tanh", GeluApprox::Tanh)] {
        run(c, &format!("{name}_fwd"), &shape, 2 * n * F, || no_grad(|| x.gelu_with(approx).unwrap()));
        run(c, &format!("{name}_bwd"), &shape, 3 * n * F, || gk::gelu_bwd_f32(&xv, &dyv, approx));
    }

    let (w, b) = (randn(3, &[d]), randn(4, &[d]));
    let wv = w.to_vec::<f32>().unwrap();
    let stats = ln::layer_norm_fwd_f32(&xv, Some(&wv), None, d, 1e-5);
    run(c, "layer_norm_fwd", &shape, (2 * n + 2 * d + 2 * rows) * F, || no_grad(|| x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap()));
    run(c, "layer_norm_bwd", &shape, (3 * n + 2 * rows + 3 * d) * F, || {
        ln::layer_norm_bwd_f32(&xv, &dyv, Some(&wv), &stats.mean, &stats.rstd, d)
    });

    let y = sm::softmax_fwd_f32(&xv, d, false);
    run(c, "softmax_fwd", &shape, 2 * n * F, || no_grad(|| x.softmax_last_dim().unwrap()));
    run(c, "softmax_bwd", &shape, 3 * n * F, || sm::softmax_bwd_f32(&y, &dyv, d, false));

    let (rows, classes) = (1024, 8192);
    let nc = rows * classes;
    let shape = format!("{rows}x{classes}");
    let logits = randn(5, &[rows, classes]);
    let lv = logits.to_vec::<f32>().unwrap();
    let t: Vec<i64> = (0..rows as i64).map(|i| (i * 7919) % classes as i64).collect();
    let targets = Tensor::from_vec(t.clone(), &[rows]).unwrap();
    let (_, lse) = ce::cross_entropy_fwd_f32(&lv, &t, classes, -100);
    run(c, "cross_entropy_fwd", &shape, nc * F + rows * (8 + F) + F, || no_grad(|| logits.cross_entropy(&targets, -100).unwrap()));
    run(c, "cross_entropy_bwd", &shape, 2 * nc * F + rows * (8 + F), || {
        ce::cross_entropy_bwd_f32(&lv, &t, &lse, classes, -100, 1.0 / rows as f32)
    });
}

criterion_group!(benches, bench);
