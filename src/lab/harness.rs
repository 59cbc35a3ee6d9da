//! The measuring core of `kiln bench`: a [`Case`] is one op at one shape with its variants; each
//! variant is first run once and checked against the case's reference variant, and only a variant
//! that matches is timed (warm-up, then the median of many calls, input sets rotated).
use super::row::Row;
use crate::tensor::cpu::simd::{self, Level};
use crate::tensor::cuda;
use crate::{DType, Device, Result, Tensor};

/// What one call of a case does, for the throughput columns.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// Bytes moved: every input read once + every output (and saved statistic) written once.
    Bytes(u64),
    /// Floating-point operations (2·M·N·K for a GEMM, FlashAttention's count for attention).
    Flops(f64),
}

/// The timed part of one call, prepared by [`Variant::prep`]; returns the outputs to check.
pub type Thunk<'a> = Box<dyn FnOnce() -> Result<Vec<Tensor>> + 'a>;

/// One implementation of a case's op.
pub struct Variant<'a> {
    pub name: String,
    /// CPU: the SIMD level forced while this variant runs (None: the detected one).
    pub level: Option<Level>,
    /// Whether the variant is timed (an untimed one only serves as the reference).
    pub timed: bool,
    /// Scaled error allowed against the reference when not the dtype's [`tolerance`] (e.g. TF32).
    pub tol: Option<f64>,
    /// Untimed setup for call `i` (input set `i % sets`): builds graphs, zeroes gradients, and
    /// returns the timed thunk.
    pub prep: Box<dyn FnMut(usize) -> Result<Thunk<'a>> + 'a>,
}

/// One op at one shape and dtype, with its variants; the first variant is the reference.
pub struct Case<'a> {
    pub op: String,
    pub device: Device,
    pub dtype: DType,
    pub shape: String,
    pub causal: bool,
    pub work: Work,
    pub variants: Vec<Variant<'a>>,
    /// Name of the variant a user of the `Tensor` API gets (marked `"default": true`).
    pub default_variant: String,
    /// Added to every row of the case (method notes, configs, ...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// How long to time.
#[derive(Debug, Clone, Copy)]
pub struct TimerCfg {
    pub warmup: usize,
    pub min_iters: usize,
    pub max_iters: usize,
    /// Stop after about this many seconds of timed calls (once `min_iters` are done).
    pub target_s: f64,
}

/// Order statistics of per-call times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub n: usize,
}

impl Stats {
    /// Statistics of a non-empty sample.
    pub fn of(mut v: Vec<f64>) -> Stats {
        assert!(!v.is_empty(), "Stats::of needs at least one sample");
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let x = p * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Stats { median_ms: q(0.5), min_ms: v[0], max_ms: v[v.len() - 1], p10_ms: q(0.1), p90_ms: q(0.9), n: v.len() }
    }
}

/// Relative tolerance of a variant against the reference, by dtype: the error is
/// `max |a - r| / max(1, max |r|)` over every output.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-9,
        DType::F32 => 2e-4,
        DType::F16 => 5e-3,
        _ => 3e-2, // bf16: 8 mantissa bits
    }
}

/// `max |a - r| / max(1, max |r|)` over paired outputs; an error when the shapes differ.
pub fn scaled_err(out: &[Vec<f64>], reference: &[Vec<f64>]) -> std::result::Result<f64, String> {
    if out.len() != reference.len() {
        return Err(format!("{} outputs, reference has {}", out.len(), reference.len()));
    }
    let mut worst = 0.0f64;
    for (a, r) in out.iter().zip(reference) {
        if a.len() != r.len() {
            return Err(format!("output of {} elements, reference has {}", a.len(), r.len()));
        }
        let scale = r.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (x, y) in a.iter().zip(r) {
            let e = (x - y).abs() / scale;
            if !e.is_finite() && (!x.is_nan() || !y.is_nan()) && x != y {
                return Ok(f64::INFINITY);
            }
            if e.is_finite() {
                worst = worst.max(e);
            }
        }
    }
    Ok(worst)
}

/// Runs `f` with the SIMD level forced to `level` (when given), restoring the detected level.
fn at_level<R>(level: Option<Level>, f: impl FnOnce() -> R) -> R {
    /// Restores the detected level also when `f` panics.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            simd::force_level(None);
        }
    }
    match level {
        Some(l) => {
            simd::force_level(Some(l));
            let _reset = Reset;
            f()
        }
        None => f(),
    }
}

fn outputs_f64(ts: &[Tensor]) -> Result<Vec<Vec<f64>>> {
    ts.iter().map(|t| t.to_device(Device::Cpu)?.to_vec_f64()).collect()
}

/// Times `v` under `cfg` on `device`: warm-up calls, then calls until `target_s` / `max_iters`.
pub fn time_variant(v: &mut Variant, device: Device, cfg: &TimerCfg) -> Result<Stats> {
    // GPU: each sample is the mean of a batch of 8 calls (see `time_batch`)
    let k = if device == Device::Cpu { 1 } else { 8 };
    let mut times = Vec::new();
    let mut spent = 0.0;
    for i in 0..cfg.warmup + cfg.max_iters {
        let ms = time_batch(v, device, i * k, k)?;
        if i >= cfg.warmup {
            times.push(ms);
            spent += ms * k as f64 / 1e3;
            if times.len() >= cfg.min_iters && spent >= cfg.target_s {
                break;
            }
        }
    }
    Ok(Stats::of(times))
}

/// Runs each variant of `case` once on input set 0 and compares its outputs with the reference
/// (first) variant's. Per variant: `Ok(None)` for the reference itself, `Ok(Some(err))` for a
/// match, `Err(status)` (`wrong: ...`, `error: ...`, `unchecked: ...`) otherwise.
pub fn check(case: &mut Case) -> Vec<std::result::Result<Option<f64>, String>> {
    let dtype_tol = tolerance(case.dtype);
    let mut reference: Option<std::result::Result<Vec<Vec<f64>>, String>> = None;
    let mut verdicts = Vec::new();
    for v in case.variants.iter_mut() {
        let tol = v.tol.unwrap_or(dtype_tol);
        let out = at_level(v.level, || -> Result<Vec<Vec<f64>>> { outputs_f64(&(v.prep)(0)?()?) }).map_err(|e| e.to_string());
        let verdict = match (&out, &reference) {
            (Err(e), _) => Err(format!("error: {e}")),
            (Ok(_), None) => Ok(None),
            (Ok(_), Some(Err(e))) => Err(format!("unchecked: the reference variant failed ({e})")),
            (Ok(o), Some(Ok(r))) => match scaled_err(o, r) {
                Ok(e) if e <= tol => Ok(Some(e)),
                Ok(e) => Err(format!("wrong: error {e:.3e} against the reference exceeds {tol:.1e}")),
                Err(e) => Err(format!("wrong: {e}")),
            },
        };
        if reference.is_none() {
            reference = Some(out);
        }
        verdicts.push(verdict);
    }
    verdicts
}

/// One timed call of `v` on input set `i` (untimed setup first; earlier device work excluded).
pub fn time_once(v: &mut Variant, device: Device, i: usize) -> Result<f64> {
    time_batch(v, device, i, 1)
}

/// GPU idling queued before each timed batch: ~1 ms at ~2 GHz, time for the host to enqueue a
/// batch of calls (and the two events) before the first starts.
pub const GPU_SLEEP_CYCLES: i64 = 2_000_000;

/// `k` calls of `v` (input sets `i..i + k`) prepared first, then timed back to back between one
/// pair of events; returns the mean per call. On a GPU the batch is queued behind
/// [`GPU_SLEEP_CYCLES`] of GPU idling, so the events time the kernels back to back, not the host's
/// launch gaps (torch_bench.py does the same with `torch.cuda._sleep`), and one event pair per
/// batch keeps the event overhead out of short kernels' times.
pub fn time_batch(v: &mut Variant, device: Device, i: usize, k: usize) -> Result<f64> {
    let prep = &mut v.prep;
    at_level(v.level, || {
        let thunks = (i..i + k.max(1)).map(&mut *prep).collect::<Result<Vec<_>>>()?;
        cuda::synchronize(device)?;
        cuda::gpu_sleep(device, GPU_SLEEP_CYCLES)?;
        let n = thunks.len();
        let (_, ms) = cuda::time_ms(device, || {
            for t in thunks {
                t()?;
            }
            Ok(())
        })?;
        Ok(ms / n as f64)
    })
}

/// Checks every variant of `case` against its reference, times those that match, and returns
/// one row per timed variant (a wrong or failing variant gets a row with its status, untimed).
pub fn run_case(mut case: Case, cfg: &TimerCfg) -> Vec<Row> {
    let verdicts = check(&mut case);
    let mut rows = Vec::new();
    for (v, verdict) in case.variants.iter_mut().zip(verdicts) {
        let mut row = Row::new(&case.op, &v.name, case.device, case.dtype, &case.shape, case.causal);
        row.default = (v.name == case.default_variant).then_some(true);
        row.extra = case.extra.clone();
        match verdict {
            Err(status) => {
                row.status = status;
                rows.push(row);
            }
            Ok(err) => {
                row.max_err = err;
                if !v.timed {
                    continue;
                }
                match time_variant(v, case.device, cfg) {
                    Ok(s) => row.set_stats(&s, case.work),
                    Err(e) => row.status = format!("error: {e}"),
                }
                rows.push(row);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn const_case<'a>(vals: &'a [(&'a str, f32)]) -> Case<'a> {
        let variants = vals
            .iter()
            .map(|&(name, v)| Variant {
                name: name.into(),
                level: None,
                timed: true,
                tol: None,
                prep: Box::new(move |_| Ok(Box::new(move || Ok(vec![Tensor::full(v as f64, &[3], DType::F32, Device::Cpu)?])) as Thunk)),
            })
            .collect();
        Case {
            op: "probe".into(),
            device: Device::Cpu,
            dtype: DType::F32,
            shape: "3".into(),
            causal: false,
            work: Work::Bytes(24),
            variants,
            default_variant: "fast".into(),
            extra: Default::default(),
        }
    }

    #[test]
    fn a_wrong_variant_is_reported_and_not_timed() {
        let cfg = TimerCfg { warmup: 1, min_iters: 3, max_iters: 5, target_s: 0.0 };
        let rows = run_case(const_case(&[("reference", 1.0), ("fast", 1.00001), ("broken", 1.5)]), &cfg);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].status.as_str(), rows[0].max_err), ("ok", None));
        assert!(rows[0].median_ms.is_some() && rows[0].n_iters == Some(3));
        assert_eq!(rows[1].status, "ok");
        assert!((rows[1].max_err.unwrap() - 1e-5).abs() < 1e-6, "{:?}", rows[1].max_err);
        assert_eq!(rows[1].default, Some(true));
        assert!(rows[2].status.starts_with("wrong"), "{}", rows[2].status);
        assert!(rows[2].median_ms.is_none() && rows[2].gb_per_s.is_none());
    }

    #[test]
    fn stats_are_order_statistics() {
        let s = Stats::of(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median_ms, s.min_ms, s.max_ms, s.n), (3.0, 1.0, 5.0, 5));
        assert!((s.p10_ms - 1.4).abs() < 1e-12 && (s.p90_ms - 4.6).abs() < 1e-12);
        assert_eq!(Stats::of(vec![2.0, 4.0]).median_ms, 3.0);
    }

    #[test]
    fn scaled_error_catches_shape_and_nan_mismatches() {
        assert_eq!(scaled_err(&[vec![1.0, 2.0]], &[vec![1.0, 2.0]]), Ok(0.0));
        assert!(scaled_err(&[vec![1.0]], &[vec![1.0, 2.0]]).is_err());
        assert_eq!(scaled_err(&[vec![f64::NAN]], &[vec![1.0]]), Ok(f64::INFINITY));
        assert_eq!(scaled_err(&[vec![10.5]], &[vec![10.0]]), Ok(0.05));
    }
}
