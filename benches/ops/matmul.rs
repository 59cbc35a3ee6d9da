//! matmul and embedding on the CPU. Matmul throughput is `Elements(2·m·n·k)` (backward: 4·m·n·k for
//! dA and dB), so criterion's `elem/s` reads as FLOP/s; each bench also prints GFLOP/s and GFLOP per CPU-second.
//! Run: `cargo bench --bench ops -- matmul_ --warm-up-time 1 --measurement-time 3`
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use kiln::tensor::cpu::gemm::{gemm, Mat, MatMut, Threads};
use kiln::{DType, Device, Tensor};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    Tensor::randn(seed, shape, 0.0, 1.0, DType::F32, Device::Cpu).unwrap()
}

/// CPU seconds (user + system, all threads) this process has used, when /proc is available.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Accumulates the timed runs criterion makes of one benchmark and prints GFLOP/s afterwards (only
/// when the benchmark ran, i.e. matched the filter). Also prints GFLOP per CPU-second: on a shared
/// machine wall time measures the load, flops per CPU-second the kernel (cpu/wall = cores obtained).
#[derive(Default)]
struct Meter {
    runs: u64,
    wall: f64,
    cpu: f64,
}

impl Meter {
    /// Times `run(setup())` `iters` times, excluding `setup`.
    fn time<S, R: FnMut(S)>(&mut self, iters: u64, mut setup: impl FnMut() -> S, mut run: R) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let x = setup();
            let c0 = cpu_seconds();
            let t = Instant::now();
            run(x);
            total += t.elapsed();
            self.cpu += cpu_seconds().zip(c0).map_or(0.0, |(b, a)| b - a);
        }
        self.runs += iters;
        self.wall += total.as_secs_f64();
        total
    }
    fn print(&self, id: &str, flops: f64) {
        if self.runs == 0 {
            return;
        }
        let total = flops * self.runs as f64;
        let cpu = if self.cpu > 0.0 { format!("; {:.1} GFLOP per CPU-second, cpu/wall {:.2}", total / self.cpu / 1e9, self.cpu / self.wall) } else { String::new() };
        eprintln!("{id}: {:.1} GFLOP/s over {} runs{cpu}", total / self.wall / 1e9, self.runs);
    }
}

/// Benchmarks `run(setup())` (setup untimed) as `group/name` with `flops` per run.
fn flops_bench<S>(c: &mut Criterion, group: &str, name: &str, flops: f64, mut setup: impl FnMut() -> S, mut run: impl FnMut(S)) {
    let mut meter = Meter::default();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(flops as u64)).sample_size(10);
    g.bench_function(name, |bn| bn.iter_custom(|iters| meter.time(iters, &mut setup, &mut run)));
    g.finish();
    meter.print(&format!("{group}/{name}"), flops);
}

/// (batch, m, k, n) of `a @ b`.
fn dims(a: &[usize], b: &[usize]) -> (usize, usize, usize, usize) {
    let r = a.len();
    (a[..r - 2].iter().product(), a[r - 2], a[r - 1], b[b.len() - 1])
}

fn fwd(c: &mut Criterion, a_shape: &[usize], b_shape: &[usize], name: &str) {
    let (a, b) = (randn(1, a_shape), randn(2, b_shape));
    let (batch, m, k, n) = dims(a_shape, b_shape);
    let flops = 2.0 * (batch * m * n * k) as f64;
    flops_bench(c, "matmul_fwd", &format!("cpu/f32/{name}"), flops, || (), |_| drop(black_box(a.matmul(black_box(&b)).unwrap())));
}

/// dA and dB of `a @ b` (4·m·n·k flops); the forward runs in the untimed setup.
fn bwd(c: &mut Criterion, a_shape: &[usize], b_shape: &[usize], name: &str) {
    let (a, b) = (randn(1, a_shape).var(), randn(2, b_shape).var());
    let (batch, m, k, n) = dims(a_shape, b_shape);
    let mut out_shape = a_shape[..a_shape.len() - 1].to_vec();
    out_shape.push(n);
    let dy = randn(3, &out_shape);
    let flops = 4.0 * (batch * m * n * k) as f64;
    let setup = || {
        a.zero_grad();
        b.zero_grad();
        a.matmul(&b).unwrap()
    };
    flops_bench(c, "matmul_bwd", &format!("cpu/f32/{name}"), flops, setup, |y: Tensor| y.backward_with(dy.clone()).unwrap());
}

/// The raw GEMM on one thread vs the rayon panel split (the thread policy of cpu::gemm).
fn gemm_threads(c: &mut Criterion, m: usize, k: usize, n: usize) {
    let a = randn(1, &[m, k]).to_vec::<f32>().unwrap();
    let b = randn(2, &[k, n]).to_vec::<f32>().unwrap();
    let mut out = vec![0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    for (label, th) in [("1thread", Threads::Single), ("auto", Threads::Auto)] {
        let run = |_| gemm(1.0, Mat::row_major(&a, m, k), Mat::row_major(&b, k, n), 0.0, MatMut::row_major(&mut out, m, n), th).unwrap();
        flops_bench(c, "matmul_fwd", &format!("cpu/f32/{m}x{k}x{n}/gemm-{label}"), flops, || (), run);
    }
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
