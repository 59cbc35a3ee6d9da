//! Times `matmul` on each CPU GEMM path in interleaved rounds (so that a shared machine's load
//! falls on every path alike): f32 on the AVX2 and AVX-512 kernels (forced), and bf16 × bf16
//! natively on AVX512_BF16 and widened to f32. Prints the median per path and the ratios, and
//! GFLOP per CPU-second (process CPU time from /proc, 10 ms ticks, summed over all of a path's
//! calls): on a shared machine wall time measures the load, FLOPs per CPU-second the kernel.
//!
//! ```sh
//! cargo run --release --example gemm_dispatch -- --threads 1 --shapes 1024x1024x1024,1024x256x1024
//! ```
//! A shape is `MxKxN` (A is M × K, B is K × N), optionally `-Bt` (B the transpose of an N × K
//! tensor, as an `nn.Linear` weight).
use kiln::tensor::cpu::gemm::{bf16_native_detected, force_bf16, force_kernel, Bf16Gemm, GemmKernel};
use kiln::tensor::cpu::simd::{self, Level};
use kiln::{DType, Device, Tensor};
use std::time::Instant;

/// CPU seconds (user + system, all threads) this process has used (0 without /proc).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0 // USER_HZ is 100 on Linux
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string()) };
    let threads: usize = arg("--threads", "1").parse().map_err(|_| kiln::Error::msg("--threads: a number"))?;
    let rounds: usize = arg("--rounds", "5").parse().map_err(|_| kiln::Error::msg("--rounds: a number"))?;
    let shapes = arg("--shapes", "1024x1024x1024,1024x256x1024");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| kiln::Error::msg(e.to_string()))?;
    let mut paths: Vec<(&str, DType, Option<GemmKernel>, Option<Bf16Gemm>)> = vec![("f32-avx2", DType::F32, Some(GemmKernel::Avx2), None)];
    if simd::detected() >= Level::Avx512 {
        paths.push(("f32-avx512", DType::F32, Some(GemmKernel::Avx512), None));
    }
    if bf16_native_detected() {
        paths.push(("bf16-native", DType::BF16, None, Some(Bf16Gemm::Native)));
    }
    paths.push(("bf16-widen", DType::BF16, None, Some(Bf16Gemm::Widen)));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("threads {threads}, rounds {rounds}, load at start: {}", load.trim());
    for shape in shapes.split(',') {
        let (dims, bt) = match shape.strip_suffix("-Bt") {
            Some(d) => (d, true),
            None => (shape, false),
        };
        let d: Vec<usize> = dims.split('x').map(|x| x.parse().map_err(|_| kiln::Error::msg(format!("bad shape {shape}")))).collect::<kiln::Result<_>>()?;
        let [m, k, n] = d[..] else { return Err(kiln::Error::msg(format!("bad shape {shape}: MxKxN"))) };
        let a32 = Tensor::randn(1, &[m, k], 0.0, 1.0, DType::F32, Device::Cpu)?;
        let b32 = if bt { Tensor::randn(2, &[n, k], 0.0, 1.0, DType::F32, Device::Cpu)?.t()? } else { Tensor::randn(2, &[k, n], 0.0, 1.0, DType::F32, Device::Cpu)? };
        let (a16, b16) = (a32.to_dtype(DType::BF16)?, b32.to_dtype(DType::BF16)?);
        let flops = 2.0 * (m * n * k) as f64;
        let iters = ((2e9 / flops).ceil() as usize).clamp(1, 50);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        let mut cpu = vec![0.0f64; paths.len()];
        for _ in 0..rounds {
            for (pi, &(_, dt, kern, bf)) in paths.iter().enumerate() {
                let (a, b) = if dt == DType::F32 { (&a32, &b32) } else { (&a16, &b16) };
                force_kernel(kern);
                force_bf16(bf);
                pool.install(|| -> kiln::Result<()> {
                    a.matmul(b)?; // warm-up (packing buffers, pages)
                    let c0 = cpu_seconds();
                    for _ in 0..iters {
                        let t = Instant::now();
                        std::hint::black_box(a.matmul(b)?);
                        times[pi].push(t.elapsed().as_secs_f64());
                    }
                    cpu[pi] += cpu_seconds() - c0;
                    Ok(())
                })?;
                force_kernel(None);
                force_bf16(None);
            }
        }
        let med: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect();
        println!("{shape} ({m}x{k}x{n}), {} calls per path:", times[0].len());
        let per_cpu_s: Vec<f64> = times.iter().zip(&cpu).map(|(t, c)| flops * t.len() as f64 / c / 1e9).collect();
        for ((p, t), g) in paths.iter().zip(&med).zip(&per_cpu_s) {
            println!("  {:<12} {:8.2} ms  {:6.1} GFLOP/s  {:.2}x f32-avx2 | {:6.1} GFLOP per CPU-s  {:.2}x f32-avx2", p.0, t * 1e3, flops / t / 1e9, med[0] / t, g, g / per_cpu_s[0]);
        }
    }
    Ok(())
}
