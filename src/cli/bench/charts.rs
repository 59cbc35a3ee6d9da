//! Pictures of `kiln bench` results (SVG, via plotters), rendered from the JSON rows:
//! - `roofline.svg`: each kernel's achieved rate against the two roofs measured in the same run —
//!   byte-counted kernels as GB/s against the copy bandwidth, FLOP-counted kernels (GEMM,
//!   attention, training steps) as GFLOP/s against the GEMM rate — kiln beside the other engine.
//! - `attention.svg`: attention GFLOP/s (or TFLOP/s) against the sequence length N.
use super::report::best_by_id;
use kiln::lab::row::Row;
use kiln::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

fn err(path: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::msg(format!("chart {}: {e}", path.display()))
}

/// Horizontal bars for one roof: (label, kiln rate, other rate).
#[allow(clippy::too_many_arguments)]
fn bar_panel(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, path: &Path, title: &str, unit: &str, roof: Option<f64>, bars: &[(String, Option<f64>, Option<f64>)], other_label: &str) -> Result<()> {
    let other_label = other_label.to_string();
    let max = bars.iter().flat_map(|b| [b.1, b.2]).flatten().chain(roof).fold(1e-9f64, f64::max) * 1.15;
    let n = bars.len().max(1);
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..max, 0.0..n as f64)
        .map_err(|e| err(path, &e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - i as f64 - 0.5).abs() < 0.26 && i < labels.len() { labels[labels.len() - 1 - i].clone() } else { String::new() }
        })
        .x_desc(unit)
        .draw()
        .map_err(|e| err(path, &e))?;
    for (i, (_, k, o)) in bars.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        if let Some(k) = k {
            chart.draw_series(std::iter::once(Rectangle::new([(0.0, y + 0.52), (*k, y + 0.88)], BLUE.filled()))).map_err(|e| err(path, &e))?;
        }
        if let Some(o) = o {
            chart.draw_series(std::iter::once(Rectangle::new([(0.0, y + 0.12), (*o, y + 0.48)], RGBColor(230, 120, 30).filled()))).map_err(|e| err(path, &e))?;
        }
    }
    if let Some(r) = roof {
        chart
            .draw_series(LineSeries::new([(r, 0.0), (r, n as f64)], RED.stroke_width(2)))
            .map_err(|e| err(path, &e))?
            .label(format!("roof {r:.1} {unit}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    }
    chart.draw_series(std::iter::empty::<Rectangle<(f64, f64)>>()).map_err(|e| err(path, &e))?.label("kiln").legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], BLUE.filled()));
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
        .map_err(|e| err(path, &e))?
        .label(other_label)
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], RGBColor(230, 120, 30).filled()));
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|e| err(path, &e))?;
    Ok(())
}

/// The ceilings of a run: (copy GB/s, GEMM GFLOP/s) from its `copy` and largest `matmul` rows.
pub fn ceilings(rows: &[Row]) -> (Option<f64>, Option<f64>) {
    let ok = || rows.iter().filter(|r| r.is_ok());
    let copy = ok().filter(|r| r.op == "copy").filter_map(|r| r.gb_per_s).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let gemm = ok().filter(|r| r.op == "matmul").filter_map(|r| r.gflops).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    (copy, gemm)
}

/// Writes `roofline.svg` into `dir` from kiln's rows and (optionally) another engine's.
pub fn roofline(dir: &Path, kiln: &[Row], other: &[Row], title: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("roofline.svg");
    let (copy, gemm) = ceilings(kiln);
    let (k, o) = (best_by_id(kiln), best_by_id(other));
    let mut mem = Vec::new();
    let mut comp = Vec::new();
    for (id, r) in &k {
        if r.op == "copy" || r.op == "matmul" && r.gflops == gemm {
            continue; // the roofs themselves
        }
        let label = id.replace("/cpu/", " ").replace("/cuda/", " ");
        if r.gb_per_s.is_some() {
            mem.push((label, r.gb_per_s, o.get(id).and_then(|x| x.gb_per_s)));
        } else if r.gflops.is_some() && r.extra.get("sweep").is_none() {
            comp.push((label, r.gflops, o.get(id).and_then(|x| x.gflops)));
        }
    }
    if mem.is_empty() && comp.is_empty() {
        return Err(Error::msg("roofline chart: no timed rows to draw"));
    }
    let svg = path.clone();
    let root = SVGBackend::new(&svg, (1400, 60 + 34 * mem.len().max(comp.len()) as u32 + 120)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&path, &e))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| err(&path, &e))?;
    let (left, right) = root.split_horizontally(700);
    let other_name = other.first().map(|r| r.variant.clone()).unwrap_or_else(|| "other engine".into());
    bar_panel(&left, &path, "memory-bound kernels vs copy bandwidth", "GB/s", copy, &mem, &other_name)?;
    bar_panel(&right, &path, "compute-bound kernels vs GEMM", "GFLOP/s", gemm, &comp, &other_name)?;
    root.present().map_err(|e| err(&path, &e))?;
    drop(root);
    Ok(path)
}

/// Writes `attention.svg`: GFLOP/s against N for every attention op / causal / head-dim series;
/// kiln thick, the other engine thin, the same colour for the same series.
pub fn attention_chart(dir: &Path, kiln: &[Row], other: &[Row], title: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("attention.svg");
    // series key: (op, causal, d) -> engine -> [(log2 N, GFLOP/s)]
    type Series = std::collections::BTreeMap<(String, bool, String), std::collections::BTreeMap<usize, Vec<(f64, f64)>>>;
    let mut series: Series = Default::default();
    let other_name = other.first().map(|r| r.variant.clone()).unwrap_or_else(|| "other".into());
    for (engine, rows) in [(0usize, kiln), (1, other)] {
        for (_, r) in best_by_id(rows) {
            let dims: Vec<f64> = r.shape.split('x').filter_map(|s| s.parse().ok()).collect();
            if !r.op.starts_with("attention") || dims.len() != 4 {
                continue;
            }
            if let Some(g) = r.gflops {
                series.entry((r.op.clone(), r.causal, format!("d{}", dims[3]))).or_default().entry(engine).or_default().push((dims[2].log2(), g));
            }
        }
    }
    series.retain(|_, e| e.get(&0).is_some_and(|v| v.len() >= 2));
    if series.is_empty() {
        return Err(Error::msg("attention chart: fewer than two sequence lengths measured for every series"));
    }
    let pts = || series.values().flat_map(|e| e.values()).flatten();
    let (xmin, xmax) = pts().fold((f64::INFINITY, 0.0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymax = pts().fold(0.0f64, |m, p| m.max(p.1)) * 1.15;
    let svg = path.clone();
    let root = SVGBackend::new(&svg, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&path, &e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin - 0.3)..(xmax + 0.3), 0.0..ymax)
        .map_err(|e| err(&path, &e))?;
    let ticks = (xmax - xmin).round() as usize + 1;
    chart
        .configure_mesh()
        .x_labels(ticks * 2 + 2)
        .x_label_formatter(&|x| if (x - x.round()).abs() < 0.05 { format!("{}", 2f64.powf(x.round()) as u64) } else { String::new() })
        .x_desc("sequence length N")
        .y_desc("GFLOP/s")
        .draw()
        .map_err(|e| err(&path, &e))?;
    let palette = [BLUE, RED, RGBColor(0, 150, 0), MAGENTA, RGBColor(0, 150, 170), BLACK, RGBColor(230, 120, 30), RGBColor(120, 60, 160)];
    for (i, ((op, causal, d), engines)) in series.into_iter().enumerate() {
        let c = palette[i % palette.len()];
        for (engine, mut pts) in engines {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = if engine == 0 { c.stroke_width(3) } else { c.mix(0.6).stroke_width(1) };
            let name = if engine == 0 { "kiln" } else { other_name.as_str() };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(|e| err(&path, &e))?
                .label(format!("{name} {op} {d}{}", if causal { " causal" } else { "" }))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, if engine == 0 { 4 } else { 2 }, c.filled()))).map_err(|e| err(&path, &e))?;
        }
    }
    chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|e| err(&path, &e))?;
    root.present().map_err(|e| err(&path, &e))?;
    drop(root);
    Ok(path)
}
