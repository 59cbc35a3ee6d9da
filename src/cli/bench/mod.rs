//! `kiln bench`: measures this device's ceilings (copy bandwidth, GEMM rate) and then every op,
//! forward and backward, in every variant; each variant is checked against the reference variant
//! before it is timed (a wrong one is reported, not timed). See docs/RESULTS.md for how to read it
//! and scripts/torch_bench.py for the PyTorch side (same ids, same JSON).
mod charts;
mod report;

use clap::Args;
use kiln::lab::cases::{self, Ctx, Pass};
use kiln::lab::harness::{run_case, Case, TimerCfg};
use kiln::lab::{decode, row, train_step};
use kiln::tensor::ops::ROW_OPS;
use kiln::{DType, Device, Error, Result};
use row::Row;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Only ops whose name contains one of these (comma-separated), e.g. `softmax,attention_fwd`.
    #[arg(long)]
    pub op: Option<String>,
    /// Only variants named exactly one of these (comma-separated); the reference variant of each
    /// case always runs (untimed when not selected) so the others can be checked.
    #[arg(long)]
    pub variant: Option<String>,
    /// Print one JSON object per row instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the rows as JSON lines to this file (written to a temporary file, then renamed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Another engine's rows (scripts/torch_bench.py --json): print the ratio table.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Write roofline.svg and attention.svg into this directory.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Title of the charts (default: kiln's version and the device).
    #[arg(long)]
    pub title: Option<String>,
    /// Do not measure: read kiln's rows from this JSON-lines file (for --compare / --plot).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Dtypes of the memory-bound ops (default: f32 on the CPU, bf16,f32 on CUDA).
    #[arg(long)]
    pub dtypes: Option<String>,
    /// Seconds of timed calls per variant (default 1.0 on the CPU, 0.3 on CUDA).
    #[arg(long)]
    pub target_s: Option<f64>,
    /// Fewest timed samples per variant (default 10 on the CPU, 30 on CUDA).
    #[arg(long)]
    pub min_iters: Option<usize>,
    /// Timed training steps per row.
    #[arg(long, default_value_t = 10)]
    pub train_steps: usize,
    /// CUDA: the attention kernels of the default `cuda` variant (and of training steps):
    /// tc (attention_tc.cu, the default), tc2 (its 128-row forward), wg (attention_wgmma.cu's
    /// wgmma forward, sm_90 only; tc elsewhere), wg-serial (wg without its overlap), wgtma
    /// (attention_tma.cu's warp-specialized TMA forward with wg's backward, sm_90 only), wgtma-pp
    /// (wgtma with pingpong between its consumer warpgroups) or simple (attention.cu).
    #[arg(long, value_parser = ["tc", "tc2", "wg", "wg-serial", "wgtma", "wgtma-pp", "simple"])]
    pub attn_kernel: Option<String>,
    /// CUDA: batch of the GPT-2 124M training-step row at T = 1024 (as torch_bench.py --gpt-batch).
    #[arg(long, default_value_t = 16)]
    pub gpt_batch: usize,
    /// Skip the attention sequence-length sweep.
    #[arg(long)]
    pub no_sweep: bool,
    /// Tiny shapes and short timing: checks that every case runs (seconds, not minutes).
    #[arg(long)]
    pub quick: bool,
    /// Print the ops (JSON lines: each row-wise op with its PyTorch expression, for
    /// scripts/torch_bench.py --row-ops; then every op name) and exit without measuring.
    #[arg(long)]
    pub list: bool,
}

fn read_rows(path: &PathBuf) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
    row::parse_jsonl(&text, &path.display().to_string())
}

/// Writes `rows` as JSON lines to `path` through a temporary file and a rename.
fn write_rows(path: &PathBuf, rows: &[Row]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(|e| Error::msg(e.to_string()))?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    let io = |e: std::io::Error| Error::msg(format!("cannot write {}: {e}", path.display()));
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Every op `kiln bench` measures (the ceilings `copy` and `matmul` always run): these, with each
/// row-wise op of `kiln::tensor::ops::ROW_OPS` (as the ops declare themselves) after `matmul`.
const FIXED_OPS: &[&str] = &[
    "cross_entropy_fwd", "cross_entropy_bwd", "attention_fwd", "attention_bwd", "attention_fwd_bwd", "train_step_gpt", "train_step_bert", "decode_gpt",
    "family_step_bert", "family_step_roberta", "family_step_albert", "family_step_distilbert", "family_step_electra", "family_step_openai-gpt", "family_step_gpt2",
];

/// The names of every op `kiln bench` measures, in order.
fn ops() -> Vec<String> {
    let rowwise = ROW_OPS.iter().flat_map(|o| [format!("{}_fwd", o.name), format!("{}_bwd", o.name)]);
    ["copy", "matmul"].into_iter().map(String::from).chain(rowwise).chain(FIXED_OPS.iter().map(|s| s.to_string())).collect()
}

/// `kiln bench --list`: one JSON object per row-wise op (name, parameter count, whether it has a
/// composed variant, the PyTorch expression; scripts/torch_bench.py --row-ops reads them), then
/// the names of every op.
fn list() {
    for o in ROW_OPS {
        println!("{}", serde_json::json!({"row_op": o.name, "params": o.params, "composed": o.composed.is_some(), "torch": o.torch}));
    }
    println!("{}", serde_json::json!({"ops": ops()}));
}

/// Every variant name a case can have.
const VARIANTS: &[&str] = &[
    "scalar", "avx2", "avx512", "composed", "cuda", "cuda-simple", "cuda-tc2", "cuda-wg", "cuda-wg-serial", "cuda-wgtma", "cuda-wgtma-pp", "matrixmultiply", "cublas", "cublas-tf32",
    "rayon-memcpy", "affine(1,0)", "kiln",
];

/// Which ops and variants run.
struct Filter {
    ops: Option<Vec<String>>,
    variants: Option<Vec<String>>,
}

impl Filter {
    fn op(&self, op: &str) -> bool {
        self.ops.as_ref().is_none_or(|v| v.iter().any(|o| op.contains(o.as_str())))
    }
    /// Whether some op of `family` (a prefix of [`ops`] names) may pass: a cheap pre-check
    /// before building inputs, consistent with [`Filter::op`].
    fn family(&self, family: &str) -> bool {
        ops().iter().filter(|op| op.starts_with(family)).any(|op| self.op(op))
    }
    /// An error naming the filters that match no op, or no variant.
    fn check(&self) -> Result<()> {
        let all = ops();
        for o in self.ops.iter().flatten() {
            if !all.iter().any(|op| op.contains(o.as_str())) {
                return Err(Error::msg(format!("--op {o}: matches no op (ops: {})", all.join(", "))));
            }
        }
        for v in self.variants.iter().flatten() {
            if !VARIANTS.contains(&v.as_str()) {
                return Err(Error::msg(format!("--variant {v}: no such variant (variants: {})", VARIANTS.join(", "))));
            }
        }
        Ok(())
    }
    /// Keeps the case's selected variants; the reference (first) stays, untimed if not selected.
    fn apply<'a>(&self, mut c: Case<'a>) -> Option<Case<'a>> {
        if !self.op(&c.op) {
            return None;
        }
        if let Some(want) = &self.variants {
            let keep = |n: &str| want.iter().any(|w| w == n);
            if !c.variants.iter().any(|v| keep(&v.name)) {
                return None;
            }
            let mut first = true;
            c.variants.retain_mut(|v| {
                let k = first || keep(&v.name);
                if first && !keep(&v.name) {
                    v.timed = false;
                }
                first = false;
                k
            });
        }
        Some(c)
    }
}

fn emit(rows: &mut Vec<Row>, new: Vec<Row>, json: bool, ceil: (Option<f64>, Option<f64>)) {
    for mut r in new {
        r.set_ceiling(ceil.0, ceil.1); // (None, None) for the ceiling rows themselves
        let line = if json { serde_json::to_string(&r).unwrap_or_default() } else { report::table_line(&r) };
        println!("{line}");
        let _ = std::io::stdout().flush();
        rows.push(r);
    }
}

fn measure(a: &BenchArgs, device: Device, filter: &Filter) -> Result<Vec<Row>> {
    let quick = a.quick;
    let ctx = Ctx { device };
    let cpu = device == Device::Cpu;
    let cfg = TimerCfg {
        warmup: if quick { 1 } else { 3 },
        min_iters: a.min_iters.unwrap_or(if quick { 3 } else if cpu { 10 } else { 30 }).max(1),
        max_iters: if quick { 5 } else { 1000 },
        target_s: a.target_s.unwrap_or(if quick { 0.0 } else if cpu { 1.0 } else { 0.3 }),
    };
    let dtypes: Vec<DType> = match &a.dtypes {
        Some(s) => s.split(',').map(|d| d.trim().parse()).collect::<Result<_>>()?,
        None if cpu => vec![DType::F32],
        None => vec![DType::BF16, DType::F32],
    };
    use kiln::tensor::ops::attention::AttnKernel;
    let attn = match a.attn_kernel.as_deref() {
        Some("tc2") => Some(AttnKernel::TensorCore2),
        Some("wg") => Some(AttnKernel::Wgmma),
        Some("wg-serial") => Some(AttnKernel::WgmmaSerial),
        Some("wgtma") => Some(AttnKernel::WgmmaTma),
        Some("wgtma-pp") => Some(AttnKernel::WgmmaTmaPingpong),
        Some("simple") => Some(AttnKernel::Simple),
        _ => None,
    };
    kiln::tensor::ops::attention::force_attention_kernel(attn);
    let mut rows = Vec::new();
    let env = serde_json::json!({"env": {"kiln": env!("CARGO_PKG_VERSION"), "device": row::device_name(device),
        "attn_kernel": a.attn_kernel.as_deref().unwrap_or("tc"),
        "threads": rayon::current_num_threads(), "simd": cases::level_name(kiln::tensor::cpu::simd::detected()),
        "quick": quick, "load1": std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(String::from))}});
    eprintln!("{}{env}", if a.json { "" } else { "# " });

    // 1. ceilings, always measured (a filtered run still reports its % of them)
    let (mr, md) = if quick { (64, 96) } else if cpu { (8192, 768) } else { (262_144, 768) };
    let (gm, gdt) = if quick { (64, DType::F32) } else if cpu { (1024, DType::F32) } else { (8192, DType::BF16) };
    for c in [cases::copy(&ctx, dtypes[0], mr, md)?, cases::matmul(&ctx, gdt, gm, gm, gm)?] {
        let mut new = run_case(c, &cfg);
        for r in &mut new {
            r.extra.insert("ceiling".into(), true.into());
        }
        emit(&mut rows, new, a.json, (None, None));
    }
    let ceil = charts::ceilings(&rows);

    // 2. the ops
    let (rows_d, d) = if quick { (33, 96) } else { (8192, 768) };
    let ce = if quick { (17, 50) } else { (1024, 8192) };
    let mut all: Vec<Case> = Vec::new();
    for &dt in &dtypes {
        if ROW_OPS.iter().map(|o| o.name).chain(["cross_entropy"]).any(|o| filter.family(o)) {
            all.extend(cases::memory_bound(&ctx, dt, rows_d, d, Some(ce))?);
            // on a GPU also the >= 256 MB shapes (as torch_bench.py): [B·T, 768] at 262144 rows
            // (GPT-2 width, 384 MB in f32) and long 4096-element rows
            if !cpu && !quick {
                for (r, c) in [(262_144, 768), (32_768, 4096)] {
                    all.extend(cases::memory_bound(&ctx, dt, r, c, None)?);
                }
            }
        }
    }
    let att_dt = if cpu { DType::F32 } else { DType::BF16 };
    // on CUDA a point of FlashAttention's sweep (B·N = 16k, H·d = 2048), so it pairs with torch_bench.py
    let main_att = if quick { (1, 2, 33, 16) } else if cpu { (8, 4, 512, 64) } else { (16, 16, 1024, 128) };
    if filter.family("attention") {
        for causal in [false, true] {
            all.extend(cases::attention(&ctx, att_dt, main_att, causal, &[Pass::Fwd, Pass::Bwd, Pass::FwdBwd], true, true)?);
        }
    }
    if cpu && !quick && filter.family("matmul") {
        // square GEMMs around the 1024³ ceiling, and a training step's (1024 tokens, widths 256 and
        // 1024): the forward x·Wᵀ (B transposed), dX = dY·W (plain) and dW = dYᵀ·x (A transposed)
        all.push(cases::matmul(&ctx, DType::F32, 512, 512, 512)?);
        all.push(cases::matmul(&ctx, DType::F32, 2048, 2048, 2048)?);
        for (k, n) in [(256, 256), (256, 1024), (1024, 256), (1024, 1024)] {
            all.push(cases::matmul_layout(&ctx, DType::F32, 1024, n, k, false, true)?);
            if (k, n) != (1024, 1024) {
                // (1024³ plain is the ceiling row above)
                all.push(cases::matmul_layout(&ctx, DType::F32, 1024, n, k, false, false)?);
            }
            all.push(cases::matmul_layout(&ctx, DType::F32, n, k, 1024, true, false)?);
        }
    }
    if !cpu && filter.family("matmul") {
        all.push(cases::matmul(&ctx, DType::F32, 4096, 4096, 4096)?);
        all.push(cases::matmul(&ctx, DType::BF16, 8192, 3072, 768)?); // a GPT-2 MLP GEMM at 8192 tokens
    }
    for c in all {
        if let Some(c) = filter.apply(c) {
            emit(&mut rows, run_case(c, &cfg), a.json, ceil);
        }
    }

    // 3. the attention sweep: FlashAttention's on a GPU (B·N = 16k, H·d = 2048); on the CPU a
    //    scaled-down one (B·N = 4k, H 4, d 64) that fits in a few minutes on 2 cores
    if !a.no_sweep && !quick && filter.family("attention") {
        let mut sweep = Vec::new();
        if cpu {
            for n in [256, 512, 1024, 2048] {
                for causal in [false, true] {
                    sweep.extend(cases::attention(&ctx, DType::F32, (4096 / n, 4, n, 64), causal, &[Pass::Fwd, Pass::FwdBwd], false, true)?);
                }
            }
        } else {
            for d in [64, 128] {
                for n in [512, 1024, 2048, 4096, 8192, 16384] {
                    for causal in [false, true] {
                        // checked on the CPU only up to N = 1k; the main case above checks the same kernels
                        sweep.extend(cases::attention(&ctx, DType::BF16, (16384 / n, 2048 / d, n, d), causal, &[Pass::Fwd, Pass::Bwd], false, n <= 1024)?);
                    }
                }
            }
        }
        for mut c in sweep {
            c.extra.insert("sweep".into(), true.into());
            // the sweep times the default variant only; the reference still checks it, untimed
            let def = c.default_variant.clone();
            let mut first = true;
            c.variants.retain_mut(|v| {
                let keep = first || v.name == def;
                v.timed = v.name == def;
                first = false;
                keep
            });
            if let Some(c) = filter.apply(c) {
                emit(&mut rows, run_case(c, &cfg), a.json, ceil);
            }
        }
    }

    // 4. training steps
    if filter.variants.as_ref().is_none_or(|v| v.iter().any(|x| x == "kiln")) {
        let steps = if quick { 2 } else { a.train_steps.max(1) };
        let tr = train_step::rows(device, quick, steps, a.gpt_batch, &|op| filter.op(op))?;
        // (the "kiln" variant of a training step is its only one)
        emit(&mut rows, tr, a.json, ceil);
        // 5. greedy decoding with the key/value cache
        let dec = decode::rows(device, quick, if quick { 2 } else { 5 }, &|op| filter.op(op))?;
        emit(&mut rows, dec, a.json, ceil);
    }
    Ok(rows)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.list {
        list();
        return Ok(());
    }
    let device: Device = a.device.parse()?;
    let filter = Filter {
        ops: a.op.as_ref().map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()),
        variants: a.variant.as_ref().map(|s| s.split(',').map(|x| x.trim().to_string()).collect()),
    };
    filter.check()?;
    // read the comparison file first: a bad file fails before minutes of measuring
    let other = a.compare.as_ref().map(read_rows).transpose()?.unwrap_or_default();
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir).map_err(|e| Error::msg(format!("cannot create {}: {e}", dir.display())))?;
    }
    let rows = match &a.from {
        Some(p) => read_rows(p)?,
        None => {
            kiln::tensor::cuda::check_device(device)?;
            measure(&a, device, &filter)?
        }
    };
    if let Some(p) = &a.out {
        write_rows(p, &rows)?;
    }
    let bad: Vec<&Row> = rows.iter().filter(|r| r.status != "ok").collect();
    if a.compare.is_some() {
        let ratios = report::compare(&rows, &other);
        if ratios.is_empty() {
            return Err(Error::msg("--compare: no id is in both files (ids are <op>/<device>/<dtype>/<shape>[/causal])"));
        }
        if !a.json {
            println!("\n# side by side (speedup = other ms / kiln ms; > 1: kiln is faster)");
        }
        for r in &ratios {
            let line = if a.json { serde_json::json!({"compare": r}).to_string() } else { report::ratio_line(r) };
            println!("{line}");
        }
    }
    if let Some(dir) = &a.plot {
        let dev = rows.first().map(|r| r.device.clone()).unwrap_or_default();
        let title = a.title.clone().unwrap_or_else(|| format!("kiln {} ({dev})", env!("CARGO_PKG_VERSION")));
        let mut made = vec![charts::roofline(dir, &rows, &other, &title)?];
        match charts::attention_chart(dir, &rows, &other, &format!("{title}: attention")) {
            Ok(p) => made.push(p),
            Err(e) => eprintln!("note: {e}"),
        }
        for p in made {
            eprintln!("wrote {}", p.display());
        }
    }
    if !bad.is_empty() {
        return Err(Error::msg(format!("{} variant(s) failed their check or errored: {}", bad.len(), bad.iter().map(|r| format!("{} [{}]", r.id, r.variant)).collect::<Vec<_>>().join(", "))));
    }
    Ok(())
}
