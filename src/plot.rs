//! The loss-curve picture written beside each checkpoint (SVG, via plotters).
use kiln::model::trainer::EvalLog;
use kiln::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// Training loss per step (and held-out loss where evaluated) as an SVG line chart.
pub fn loss_curve(path: &Path, train: &[(u64, f64)], evals: &[EvalLog]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("loss plot {}: {e}", path.display()));
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.last().map(|p| p.0).unwrap_or(1).max(1);
    let (lo, hi) = train.iter().map(|p| p.1).chain(evals.iter().map(|e| e.loss)).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("kiln training loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0u64..max_step, (lo * 0.95)..(hi * 1.02))
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("loss (nats/token)").draw().map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    if !evals.is_empty() {
        chart
            .draw_series(LineSeries::new(evals.iter().map(|e| (e.step, e.loss)), RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("held-out")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
