//! Printing `kiln bench` rows: the table, JSON lines, and the side-by-side ratio table against
//! another engine's rows (scripts/torch_bench.py writes the same JSON).
use kiln::lab::row::Row;
use std::collections::BTreeMap;

/// The rate column: GB/s for byte-counted rows, GFLOP/s for FLOP-counted ones.
pub fn rate(r: &Row) -> String {
    match (r.gb_per_s, r.gflops) {
        (Some(g), _) => format!("{g:9.2} GB/s"),
        (None, Some(f)) if f >= 10_000.0 => format!("{:9.2} TFLOP/s", f / 1e3),
        (None, Some(f)) => format!("{f:9.2} GFLOP/s"),
        _ => String::new(),
    }
}

/// One human-readable line.
pub fn table_line(r: &Row) -> String {
    let id = format!("{} [{}{}]", r.id, r.variant, if r.default == Some(true) { "*" } else { "" });
    match r.median_ms {
        Some(m) if r.status == "ok" => {
            let spread = match (r.p10_ms, r.p90_ms) {
                (Some(a), Some(b)) if m > 0.0 => format!("±{:.0}%", 50.0 * (b - a) / m),
                _ => String::new(),
            };
            let pct = r.pct_of_ceiling.map(|p| format!("{p:5.1}% of ceiling")).unwrap_or_default();
            let err = r.max_err.map(|e| format!("  err {e:.1e}")).unwrap_or_default();
            let extra = r.extra.get("tokens_per_s").and_then(|v| v.as_f64()).map(|t| format!("  {t:.0} tok/s")).unwrap_or_default();
            let mem = r.extra.get("peak_rss_mb").and_then(|v| v.as_f64()).map(|t| format!(", peak RSS {t:.0} MB")).unwrap_or_default();
            format!("{id:64} {m:10.3} ms {spread:>5} (n={:<4}) {} {pct}{err}{extra}{mem}", r.n_iters.unwrap_or(0), rate(r))
        }
        _ => format!("{id:64} {}", r.status),
    }
}

/// The row of each id that stands for an engine: its default variant, else its fastest ok one.
pub fn best_by_id(rows: &[Row]) -> BTreeMap<String, &Row> {
    let mut m: BTreeMap<String, &Row> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.is_ok()) {
        let better = match m.get(&r.id) {
            None => true,
            Some(o) if o.default == Some(true) => false,
            Some(_) if r.default == Some(true) => true,
            Some(o) => r.median_ms < o.median_ms,
        };
        if better {
            m.insert(r.id.clone(), r);
        }
    }
    m
}

/// One paired result: the same id measured by kiln and by the other engine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ratio {
    pub id: String,
    pub kiln_variant: String,
    pub kiln_ms: f64,
    pub other_variant: String,
    pub other_ms: f64,
    /// other_ms / kiln_ms: above 1 means kiln is faster.
    pub speedup: f64,
    /// Both sides' `max_err` where both report one against the same kind of reference (for
    /// 16-bit attention: f32 attention on the same inputs), and the other side's error of a plain
    /// 16-bit implementation (torch_bench.py's `plain_16bit_err`); `err_vs_plain` = kiln_err /
    /// other_plain_err (issue 6 asks for at most 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kiln_err: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_err: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_plain_err: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err_vs_plain: Option<f64>,
}

/// Pairs rows by id (kiln: default variant; other: its best row); ids on one side only are skipped.
pub fn compare(kiln: &[Row], other: &[Row]) -> Vec<Ratio> {
    let (k, o) = (best_by_id(kiln), best_by_id(other));
    k.iter()
        .filter_map(|(id, kr)| {
            let or = o.get(id)?;
            let (km, om) = (kr.median_ms?, or.median_ms?);
            // errors are comparable only when the other side says what it measured against
            let f32_ref = [kr, or].iter().all(|r| r.extra.get("err_reference").and_then(|v| v.as_str()).is_some_and(|r| r.starts_with("f32")));
            let (kiln_err, other_err) = if f32_ref { (kr.max_err, or.max_err) } else { (None, None) };
            let other_plain_err = or.extra.get("plain_16bit_err").and_then(|v| v.as_f64()).filter(|_| f32_ref);
            let err_vs_plain = match (kiln_err, other_plain_err) {
                (Some(k), Some(p)) if p > 0.0 => Some((k / p * 1000.0).round() / 1000.0),
                _ => None,
            };
            Some(Ratio {
                id: id.clone(),
                kiln_variant: kr.variant.clone(),
                kiln_ms: km,
                other_variant: or.variant.clone(),
                other_ms: om,
                speedup: (om / km * 1000.0).round() / 1000.0,
                kiln_err,
                other_err,
                other_plain_err,
                err_vs_plain,
            })
        })
        .collect()
}

pub fn ratio_line(r: &Ratio) -> String {
    let mut line = format!("{:58} kiln {:10.3} ms [{}]   other {:10.3} ms [{}]   {:6.2}×", r.id, r.kiln_ms, r.kiln_variant, r.other_ms, r.other_variant, r.speedup);
    if let (Some(k), Some(o), Some(p), Some(x)) = (r.kiln_err, r.other_err, r.other_plain_err, r.err_vs_plain) {
        line += &format!("   err vs f32: kiln {k:.2e}, other {o:.2e}, plain 16-bit {p:.2e} (kiln / plain {x:.2})");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::lab::harness::{Stats, Work};
    use kiln::{DType, Device};

    fn row(variant: &str, ms: f64, default: bool) -> Row {
        let mut r = Row::new("softmax_fwd", variant, Device::Cpu, DType::F32, "8x8", false);
        r.set_stats(&Stats::of(vec![ms]), Work::Bytes(1000));
        r.default = default.then_some(true);
        r
    }

    #[test]
    fn compare_pairs_default_kiln_rows_with_the_other_side() {
        let kiln = vec![row("scalar", 4.0, false), row("avx512", 2.0, true), row("composed", 1.0, false)];
        let mut torch = vec![row("torch", 3.0, false)];
        torch[0].id = kiln[0].id.clone();
        let mut lonely = row("torch", 1.0, false);
        lonely.id = "other/cpu/f32/1".into();
        torch.push(lonely);
        let r = compare(&kiln, &torch);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].kiln_variant.as_str(), r[0].kiln_ms, r[0].other_ms, r[0].speedup), ("avx512", 2.0, 3.0, 1.5));
        assert!(ratio_line(&r[0]).contains("1.50×"));
    }

    #[test]
    fn errors_are_compared_only_against_a_stated_f32_reference() {
        let mut k = row("cuda", 1.0, true);
        k.max_err = Some(3e-3);
        let mut t = row("torch", 2.0, false);
        t.id = k.id.clone();
        t.max_err = Some(2e-3);
        t.extra.insert("plain_16bit_err".into(), 6e-3.into());
        // no err_reference: the numbers are not paired
        let r = &compare(std::slice::from_ref(&k), std::slice::from_ref(&t))[0];
        assert_eq!((r.kiln_err, r.err_vs_plain), (None, None));
        assert!(!ratio_line(r).contains("err vs f32"));
        t.extra.insert("err_reference".into(), "f32 attention on the same 16-bit inputs".into());
        let r = &compare(std::slice::from_ref(&k), std::slice::from_ref(&t))[0];
        assert_eq!(r.kiln_err, None, "kiln's side must state its reference too");
        k.extra.insert("err_reference".into(), "f32 attention on the same 16-bit inputs".into());
        let r = &compare(&[k], &[t])[0];
        assert_eq!((r.kiln_err, r.other_err, r.other_plain_err, r.err_vs_plain), (Some(3e-3), Some(2e-3), Some(6e-3), Some(0.5)));
        assert!(ratio_line(r).contains("kiln / plain 0.50"), "{}", ratio_line(r));
    }

    #[test]
    fn wrong_rows_never_stand_for_an_engine() {
        let mut w = row("avx512", 0.1, true);
        w.status = "wrong: error 1e0".into();
        let ok = row("scalar", 5.0, false);
        let both = [w.clone(), ok];
        let m = best_by_id(&both);
        assert_eq!(m.values().next().unwrap().variant, "scalar");
        assert!(table_line(&w).ends_with("wrong: error 1e0"));
    }
}
