//! matmul and embedding on the CPU. Matmul throughput is `Elements(2·m·n·k)` (backward: 4·m·n·k for
//! dA and dB), so criterion's `elem/s` reads as FLOP/s; each bench also prints a median GFLOP/s line.
//! Run: `cargo bench --bench ops -- matmul_ --warm-up-time 1 --measurement-time 3`
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use kiln::tensor::cpu::gemm::{gemm, Mat, MatMut, Threads};
use kiln::{DType, Device, Tensor};
use std::hint::black_box;
use std::time::Instant;

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F32, Device::Cpu).unwrap()
}

/// Median GFLOP/s of `reps` timed runs of `f` (after one warm-up), printed under `id`.
fn report(id: &str, flops: f64, reps: usize, mut f: impl FnMut()) {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    eprintln!("{id}: {:.1} GFLOP/s (median of {reps}, {:.2} ms)", flops / t[reps / 2] / 1e9, t[reps / 2] * 1e3);
}

fn fwd(c: &mut Criterion, a_shape: &[usize], b_shape: &[usize], name: &str) {
    let (a, b) = (randn(1, a_shape), randn(2, b_shape));
    let r = a_shape.len();
    let batch: usize = a_shape[..r - 2].iter().product();
    let (m, k, n) = (a_shape[r - 2], a_shape[r - 1], b_shape[b_shape.len() - 1]);
    let flops = 2.0 * (batch * m * n * k) as f64;
    let id = format!("matmul_fwd/cpu/f32/{name}");
    report(&id, flops, 7, || drop(black_box(a.matmul(&b).unwrap())));
    let mut g = c.benchmark_group("matmul_fwd");
    g.throughput(Throughput::Elements(flops as u64)).sample_size(10);
    g.bench_function(format!("cpu/f32/{name}"), |bn| bn.iter(|| black_box(a.matmul(black_box(&b)).unwrap())));
    g.finish();
}

fn bwd(c: &mut Criterion, a_shape: &[usize], b_shape: &[usize], name: &str) {
    let (a, b) = (randn(1, a_shape).var(), randn(2, b_shape).var());
    let r = a_shape.len();
    let batch: usize = a_shape[..r - 2].iter().product();
    let (m, k, n) = (a_shape[r - 2], a_shape[r - 1], b_shape[b_shape.len() - 1]);
    let flops = 4.0 * (batch * m * n * k) as f64;
    let mut out_shape = a_shape[..r - 1].to_vec();
    out_shape.push(n);
    let dy = randn(3, &out_shape);
    let run = |y: Tensor| {
        y.backward_with(dy.clone()).unwrap();
        a.zero_grad();
        b.zero_grad();
    };
    let id = format!("matmul_bwd/cpu/f32/{name}");
    // The printed figure includes the forward (2/3 of the flops of fwd+bwd are backward).
    report(&format!("{id} (fwd+bwd, 6mnk)"), flops * 1.5, 5, || run(a.matmul(&b).unwrap()));
    let mut g = c.benchmark_group("matmul_bwd");
    g.throughput(Throughput::Elements(flops as u64)).sample_size(10);
    g.bench_function(format!("cpu/f32/{name}"), |bn| bn.iter_batched(|| a.matmul(&b).unwrap(), run, BatchSize::PerIteration));
    g.finish();
}

/// The raw GEMM on one thread vs the rayon panel split (the thread policy of cpu::gemm).
fn gemm_threads(c: &mut Criterion, m: usize, k: usize, n: usize) {
    let a = randn(1, &[m, k]).to_vec::<f32>().unwrap();
    let b = randn(2, &[k, n]).to_vec::<f32>().unwrap();
    let mut out = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let mut g = c.benchmark_group("matmul_fwd");
    g.throughput(Throughput::Elements(flops as u64)).sample_size(10);
    for (label, th) in [("1thread", Threads::Single), ("auto", Threads::Auto)] {
        let id = format!("cpu/f32/{m}x{k}x{n}/gemm-{label}");
        let mut call = || gemm(1.0, Mat::row_major(&a, m, k), Mat::row_major(&b, k, n), 0.0, MatMut::row_major(&mut out, m, n), th).unwrap();
        report(&format!("matmul_fwd/{id}"), flops, 7, &mut call);
        g.bench_function(id, |bn| bn.iter(&mut call));
    }
    g.finish();
}

fn embedding(c: &mut Criterion) {
    let (v, d, n) = (8192usize, 256usize, 8 * 128usize);
    let idv: Vec<i64> = (0..n).map(|i| ((i as u64 * 2654435761) % v as u64) as i64).collect();
    let ids = Tensor::from_vec(idv, &[8, 128]).unwrap();
    let w = randn(1, &[v, d]).var();
    let name = format!("cpu/f32/{n}x{v}x{d}");
    let mut g = c.benchmark_group("embedding_fwd");
    g.throughput(Throughput::Bytes((2 * n * d * 4) as u64));
    g.bench_function(&name, |bn| bn.iter(|| black_box(Tensor::embedding(&ids, &w).unwrap())));
    g.finish();
    let dy = randn(2, &[8, 128, d]);
    let mut g = c.benchmark_group("embedding_bwd");
    // zero the [V, D] gradient, read dy, read-modify-write the touched rows
    g.throughput(Throughput::Bytes(((v * d + 3 * n * d) * 4) as u64));
    g.bench_function(&name, |bn| {
        bn.iter_batched(
            || Tensor::embedding(&ids, &w).unwrap(),
            |y| {
                y.backward_with(dy.clone()).unwrap();
                w.zero_grad();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    fwd(c, &[1024, 1024], &[1024, 1024], "1024x1024x1024");
    gemm_threads(c, 1024, 1024, 1024);
    // GPT-2-small-ish projections and the kiln CPU model (8x128 tokens, hidden 256, ffn 1024, vocab 8192)
    fwd(c, &[1024, 768], &[768, 3072], "1024x768x3072");
    fwd(c, &[1024, 3072], &[3072, 768], "1024x3072x768");
    fwd(c, &[8, 128, 256], &[256, 1024], "8x128x256x1024");
    fwd(c, &[8, 128, 256], &[256, 8192], "8x128x256x8192");
    // attention-shaped batched products: q @ kᵀ over 32 = batch·heads
    fwd(c, &[32, 128, 64], &[32, 64, 128], "32x128x64x128");
    bwd(c, &[1024, 768], &[768, 3072], "1024x768x3072");
    bwd(c, &[8, 128, 256], &[256, 1024], "8x128x256x1024");
    bwd(c, &[32, 128, 64], &[32, 64, 128], "32x128x64x128");
    embedding(c);
}

criterion_group!(benches, bench);
