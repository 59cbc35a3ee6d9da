//! Activation recomputation (`kiln train --recompute`) on 12-layer models: peak heap and step time
//! of full training steps (forward, backward, AdamW) with and without it, on the CPU in f32.
//! The models are `kiln bench`'s training-step configs (width 256, 4 heads, FFN 1024, vocabulary
//! 8192) at 12 layers with dropout on (0.1, so the recompute regenerates masks), batch 8 × 128.
//!
//! Peak heap: every allocation is counted (`kiln_tensor::mem::CountingAlloc` around the allocator
//! the `kiln` binary uses), so the peaks are exact byte counts, independent of the machine's load.
//! `peak` is the whole process's heap high-water mark during a step; `above` is that minus the heap
//! live when the step starts (parameters and AdamW moments, the batch): the step's own memory,
//! activations and gradients. Step times alternate between the two modes, round by round, so the
//! ratio of each round compares steps run under the same load.
//!
//! Run: `cargo bench --bench recompute` (or `-- ROUNDS`, default 5). Prints one JSON object per
//! measured step, then a summary per model.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: kiln::tensor::mem::CountingAlloc<mimalloc::MiMalloc> = kiln::tensor::mem::CountingAlloc::new(mimalloc::MiMalloc);
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static GLOBAL: kiln::tensor::mem::CountingAlloc<std::alloc::System> = kiln::tensor::mem::CountingAlloc::new(std::alloc::System);

use kiln::lab::train_step::{configs, TrainStep};
use kiln::model::config::ModelConfig;
use kiln::tensor::mem;
use kiln::{DType, Device, Result};
use std::time::Instant;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

const MIB: f64 = 1048576.0;

fn main() -> Result<()> {
    #[cfg(feature = "mimalloc")]
    kiln::keep_freed_memory();
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let (b, t) = (8, 128);
    for (op, mut cfg) in configs(false)? {
        match &mut cfg {
            ModelConfig::Decoder(c) => (c.n_layer, c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) = (12, 0.1, 0.1, 0.1),
            ModelConfig::Encoder(c) => (c.num_hidden_layers, c.hidden_dropout_prob, c.attention_probs_dropout_prob) = (12, 0.1, 0.1),
        }
        let name = op.trim_start_matches("train_step_");
        let mut ts = TrainStep::new(&cfg, Device::Cpu, b, t, DType::F32)?;
        // warm-up: one step each way (first-touch of the allocator's pages, AdamW state)
        for on in [false, true] {
            ts.set_recompute(on);
            ts.step()?;
        }
        let load0 = load();
        // per mode: (ms, peak, above)
        let mut got: [Vec<(f64, usize, usize)>; 2] = [Vec::new(), Vec::new()];
        let mut ratios = Vec::new();
        for r in 0..rounds {
            let order = if r % 2 == 0 { [false, true] } else { [true, false] };
            let mut ms = [0.0; 2];
            for on in order {
                ts.set_recompute(on);
                let live = mem::reset_peak();
                let t0 = Instant::now();
                let loss = ts.step()?;
                let dt = t0.elapsed().as_secs_f64() * 1e3;
                let peak = mem::peak_bytes();
                ms[on as usize] = dt;
                got[on as usize].push((dt, peak, peak - live));
                println!("{{\"model\":\"{name}\",\"round\":{r},\"recompute\":{on},\"step_ms\":{dt:.1},\"peak_heap_bytes\":{peak},\"peak_above_start_bytes\":{},\"loss\":{loss}}}", peak - live);
            }
            ratios.push(ms[1] / ms[0]);
        }
        let peak = |on: usize| got[on].iter().map(|g| g.1).max().unwrap_or(0);
        let above = |on: usize| got[on].iter().map(|g| g.2).max().unwrap_or(0);
        let spread = |on: usize| got[on].iter().map(|g| g.2).max().unwrap_or(0) - got[on].iter().map(|g| g.2).min().unwrap_or(0);
        let med = |on: usize| median(got[on].iter().map(|g| g.0).collect());
        println!(
            "{name}: 12 layers, {} params, batch {b} x {t}, {rounds} rounds; load average {load0} -> {}",
            ts.n_params,
            load()
        );
        println!(
            "  peak heap      {:8.1} MiB plain, {:8.1} MiB recompute: {:.3}x",
            peak(0) as f64 / MIB,
            peak(1) as f64 / MIB,
            peak(1) as f64 / peak(0) as f64
        );
        println!(
            "  step's own     {:8.1} MiB plain, {:8.1} MiB recompute: {:.3}x  (max spread over rounds: {} / {} bytes)",
            above(0) as f64 / MIB,
            above(1) as f64 / MIB,
            above(1) as f64 / above(0) as f64,
            spread(0),
            spread(1)
        );
        let r: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        println!(
            "  step time      {:8.1} ms plain, {:8.1} ms recompute (medians): {:.3}x; per round {} (median {:.3}x)",
            med(0),
            med(1),
            med(1) / med(0),
            r.join(" "),
            median(ratios.clone())
        );
    }
    Ok(())
}
