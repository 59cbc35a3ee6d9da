//! One result row of `kiln bench` / `scripts/torch_bench.py`: the JSON both write, one object per
//! line. Ids are `<op>/<device>/<dtype>/<shape>[/causal]`, the same in both, so rows pair up.
use super::harness::{Stats, Work};
use crate::{DType, Device};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub op: String,
    pub variant: String,
    pub device: String,
    pub dtype: String,
    pub shape: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub causal: bool,
    /// `ok`, `wrong: ...` (checked against the reference and failed: not timed) or `error: ...`.
    #[serde(default = "ok")]
    pub status: String,
    /// The variant the `Tensor` API picks on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p10_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_iters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gb_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflops: Option<f64>,
    /// Achieved rate as a percentage of the ceiling measured in the same run (copy bandwidth for
    /// byte-counted ops, GEMM rate for FLOP-counted ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pct_of_ceiling: Option<f64>,
    /// Error against the reference variant (`max |a - r| / max(1, max |r|)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_err: Option<f64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn ok() -> String {
    "ok".into()
}

/// The id shared with scripts/torch_bench.py.
pub fn row_id(op: &str, device: &str, dtype: &str, shape: &str, causal: bool) -> String {
    format!("{op}/{device}/{dtype}/{shape}{}", if causal { "/causal" } else { "" })
}

/// The device as the JSON names it (`cpu`, `cuda`).
pub fn device_name(d: Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
    }
}

impl Row {
    pub fn new(op: &str, variant: &str, device: Device, dtype: DType, shape: &str, causal: bool) -> Row {
        let (dev, dt) = (device_name(device), dtype.as_str());
        Row {
            id: row_id(op, dev, dt, shape, causal),
            op: op.into(),
            variant: variant.into(),
            device: dev.into(),
            dtype: dt.into(),
            shape: shape.into(),
            causal,
            status: ok(),
            ..Default::default()
        }
    }

    /// Names the dtype column (and the id) `label` instead of a tensor dtype, e.g. `bf16-autocast`.
    pub fn relabel_dtype(&mut self, label: &str) {
        self.dtype = label.into();
        self.id = row_id(&self.op, &self.device, label, &self.shape, self.causal);
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok" && self.median_ms.is_some()
    }

    /// Fills the timing and throughput columns.
    pub fn set_stats(&mut self, s: &Stats, work: Work) {
        let r = |x: f64, d: f64| (x * d).round() / d;
        self.median_ms = Some(r(s.median_ms, 1e6));
        self.min_ms = Some(r(s.min_ms, 1e6));
        self.max_ms = Some(r(s.max_ms, 1e6));
        self.p10_ms = Some(r(s.p10_ms, 1e6));
        self.p90_ms = Some(r(s.p90_ms, 1e6));
        self.n_iters = Some(s.n as u64);
        let secs = s.median_ms / 1e3;
        match work {
            Work::Bytes(b) => {
                self.bytes = Some(b);
                self.gb_per_s = Some(r(b as f64 / secs / 1e9, 1e3));
            }
            Work::Flops(f) => {
                self.flops = Some(f);
                self.gflops = Some(r(f / secs / 1e9, 1e3));
                self.tflops = Some(r(f / secs / 1e12, 1e6));
            }
        }
    }

    /// Sets `pct_of_ceiling` from the copy bandwidth (GB/s) and GEMM rate (GFLOP/s) of the run.
    pub fn set_ceiling(&mut self, copy_gbps: Option<f64>, gemm_gflops: Option<f64>) {
        let pct = match (self.gb_per_s, self.gflops) {
            (Some(g), _) => copy_gbps.map(|c| 100.0 * g / c),
            (None, Some(g)) => gemm_gflops.map(|c| 100.0 * g / c),
            _ => None,
        };
        // one decimal, but two significant digits below 0.05%: a tiny case's share is small, not 0
        self.pct_of_ceiling = pct.map(|p| {
            let scale = if p > 0.0 && p < 0.05 { 10f64.powi(1 - p.log10().floor() as i32) } else { 10.0 };
            (p * scale).round() / scale
        });
    }
}

/// Parses JSON lines (blank lines and lines starting with `#` are skipped); errors name the line.
pub fn parse_jsonl(text: &str, origin: &str) -> crate::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let row: Row = serde_json::from_str(l).map_err(|e| crate::Error::msg(format!("{origin}:{}: not a bench row: {e}", i + 1)))?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(crate::Error::msg(format!("{origin}: no bench rows in the file")));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_rows_parse_and_pair_by_id() {
        let line = r#"{"id": "attention_fwd/cpu/f32/8x4x512x64/causal", "op": "attention_fwd", "variant": "torch", "device": "cpu", "dtype": "f32", "shape": "8x4x512x64", "median_ms": 12.5, "min_ms": 12.0, "max_ms": 14.0, "n_iters": 10, "flops": 2147483648, "gflops": 171.8, "tflops": 0.1718, "causal": true, "threads": 2, "torch": "2.15.0"}"#;
        let rows = parse_jsonl(&format!("# env\n{line}\n\n"), "t.jsonl").unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert!(r.causal && r.is_ok() && r.flops == Some(2147483648.0));
        assert_eq!(r.extra["torch"], "2.15.0");
        assert_eq!(r.id, row_id("attention_fwd", "cpu", "f32", "8x4x512x64", true));
        let back: Row = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(back.id, r.id);
        assert!(back.extra.contains_key("threads"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = parse_jsonl("{\"id\": 3}\n", "x.jsonl").unwrap_err().to_string();
        assert!(e.contains("x.jsonl:1"), "{e}");
        assert!(parse_jsonl("\n# nothing\n", "y.jsonl").unwrap_err().to_string().contains("no bench rows"));
        assert!(parse_jsonl("not json", "z.jsonl").is_err());
    }

    #[test]
    fn throughput_and_ceiling() {
        let mut r = Row::new("gelu_fwd", "avx512", Device::Cpu, DType::F32, "8x8", false);
        r.set_stats(&Stats::of(vec![2.0]), Work::Bytes(4_000_000_000));
        assert_eq!(r.gb_per_s, Some(2000.0));
        r.set_ceiling(Some(4000.0), Some(1.0));
        assert_eq!(r.pct_of_ceiling, Some(50.0));
        let mut m = Row::new("matmul", "x", Device::Cpu, DType::F32, "1", false);
        m.set_stats(&Stats::of(vec![1.0]), Work::Flops(2e9));
        m.set_ceiling(Some(1.0), Some(4000.0));
        assert_eq!((m.gflops, m.pct_of_ceiling), (Some(2000.0), Some(50.0)));
        m.set_ceiling(Some(1.0), Some(8.0e7));  // 0.0025 %: kept, not rounded to 0
        assert_eq!(m.pct_of_ceiling, Some(0.0025));
        m.set_ceiling(Some(1.0), Some(3.0e6));  // 0.0667 %: one decimal
        assert_eq!(m.pct_of_ceiling, Some(0.1));
    }
}
