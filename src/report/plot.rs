//! The report as an SVG chart (`--plot FILE.svg`): peak memory against batch size for
//! every trial (out-of-memory trials as crosses), the fitted memory line, the capacity and
//! the margin, and throughput (samples per second) on a second axis.

use plotters::prelude::*;

use super::Report;
use crate::trial::Outcome;

const GIB: f64 = (1u64 << 30) as f64;

/// The chart of `report` as SVG text.
pub fn render(report: &Report) -> Result<String, String> {
    let mut svg = String::new();
    draw(report, &mut svg).map_err(|e| format!("cannot draw the plot: {e}"))?;
    Ok(svg)
}

fn draw<'a>(report: &Report, svg: &'a mut String) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let root = SVGBackend::with_string(svg, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let capacity = report.device.capacity_bytes as f64 / GIB;
    let allowed = capacity * (1.0 - report.settings.margin);
    let x_max = report
        .trials
        .iter()
        .map(|t| t.batch_size)
        .chain(report.plans.iter().map(|p| p.predicted_max))
        .max()
        .unwrap_or(1) as f64
        * 1.05
        + 1.0;
    let measured_max = report
        .trials
        .iter()
        .filter_map(|t| t.peak_bytes)
        .map(|p| p as f64 / GIB)
        .fold(0.0, f64::max);
    let planned_max = report
        .plans
        .iter()
        .map(|p| p.capacity_bytes as f64 / GIB)
        .fold(0.0, f64::max);
    let y_max = capacity.max(measured_max).max(planned_max).max(1e-6) * 1.15;
    let rate_max = report
        .trials
        .iter()
        .filter_map(|t| t.samples_per_second)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;

    let title = format!(
        "{} on {}: max {}, recommended {}",
        report.model.name,
        report.device.name,
        report.max_batch_size,
        report
            .recommended_batch_size
            .map_or_else(|| "none".to_string(), |b| b.to_string())
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?
        .set_secondary_coord(0.0..x_max, 0.0..rate_max);
    chart
        .configure_mesh()
        .x_desc("batch size")
        .y_desc("peak memory (GiB)")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("samples per second")
        .draw()?;

    let horizontal = |y: f64| vec![(0.0, y), (x_max, y)];
    chart
        .draw_series(LineSeries::new(horizontal(capacity), RED.stroke_width(2)))?
        .label(if report.device.capacity_is_budget {
            "budget"
        } else {
            "capacity"
        })
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    let margin_style = RGBColor(230, 140, 0);
    chart
        .draw_series(LineSeries::new(
            horizontal(allowed),
            margin_style.stroke_width(1),
        ))?
        .label(format!("{:.0}% margin", report.settings.margin * 100.0))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], margin_style));
    if let Some(m) = &report.memory_model {
        let (fixed, slope) = (m.fixed_bytes as f64 / GIB, m.bytes_per_sample as f64 / GIB);
        // plotters clamps points outside the chart instead of clipping the segment: end the
        // line where it leaves the chart.
        let x_end = if slope > 0.0 {
            x_max.min((y_max - fixed) / slope)
        } else {
            x_max
        };
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, fixed), (x_end, fixed + slope * x_end)],
                BLUE.mix(0.5).stroke_width(1),
            ))?
            .label("fitted line")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.mix(0.5)));
    }
    let point = |outcome: Outcome| report.trials.iter().filter(move |t| t.outcome == outcome);
    chart
        .draw_series(point(Outcome::Fits).filter_map(|t| {
            let peak = t.peak_bytes? as f64 / GIB;
            Some(Circle::new((t.batch_size as f64, peak), 4, BLUE.filled()))
        }))?
        .label("fits")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
    let measured_oom = report
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Oom && !t.predicted);
    chart
        .draw_series(measured_oom.map(|t| {
            let peak = t
                .peak_bytes
                .map_or(y_max * 0.97, |p| (p as f64 / GIB).min(y_max * 0.97));
            Cross::new((t.batch_size as f64, peak), 6, RED.stroke_width(2))
        }))?
        .label("out of memory")
        .legend(|(x, y)| Cross::new((x + 10, y), 5, RED.stroke_width(2)));
    // Sizes refused by the guard's prediction, never run: hollow, at the top of the chart.
    if report.trials.iter().any(|t| t.predicted) {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(report.trials.iter().filter(|t| t.predicted).map(|t| {
                Circle::new((t.batch_size as f64, y_max * 0.97), 5, grey.stroke_width(2))
            }))?
            .label("not run: predicted out of memory")
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, grey.stroke_width(2)));
    }
    // The plans of --plan-for: predictions, drawn hollow and dashed, never as measurements.
    if !report.plans.is_empty() {
        let purple = RGBColor(130, 60, 170);
        for plan in &report.plans {
            let usable = plan.usable_bytes as f64 / GIB;
            chart.draw_series(DashedLineSeries::new(
                horizontal(usable),
                6,
                4,
                purple.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{} (predicted)", plan.target),
                (x_max * 0.01, usable),
                ("sans-serif", 12).into_font().color(&purple),
            )))?;
        }
        chart
            .draw_series(report.plans.iter().map(|p| {
                let at = (p.predicted_max as f64, p.predicted_peak_bytes as f64 / GIB);
                Circle::new(at, 6, purple.stroke_width(2))
            }))?
            .label("predicted max for a planned device (not run)")
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, purple.stroke_width(2)));
    }
    let green = RGBColor(20, 150, 60);
    chart
        .draw_secondary_series(point(Outcome::Fits).filter_map(|t| {
            Some(TriangleMarker::new(
                (t.batch_size as f64, t.samples_per_second?),
                5,
                green.filled(),
            ))
        }))?
        .label("samples/s (right axis)")
        .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, green.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::fixture;

    #[test]
    fn the_svg_has_every_trial_and_the_lines() {
        let mut report = fixture("cuda:0", 6, Some(5));
        report.memory_model = crate::analysis::memory_model(
            &report.trials,
            report.max_batch_size,
            report.device.capacity_bytes,
            &report.model,
            report.settings.optimizer,
        );
        let svg = render(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("peak memory (GiB)") && svg.contains("samples per second"));
        assert!(svg.contains("fitted line") && svg.contains("5% margin"));
        assert_eq!(
            svg.matches("<circle").count(),
            6 + 1,
            "six fits and the legend's"
        );
    }

    #[test]
    fn plans_are_drawn_as_predictions() {
        let mut report = fixture("cpu", 6, Some(5));
        report.device.kind = crate::device::DeviceKind::Cpu;
        let targets = crate::plan::parse_targets("4GiB").unwrap();
        report.plans = crate::plan::plans(&report, &targets, None);
        assert_eq!(report.plans.len(), 1);
        let svg = render(&report).unwrap();
        assert!(
            svg.contains("4GiB (predicted)"),
            "the capacity line is labelled"
        );
        assert!(svg.contains("predicted max for a planned device (not run)"));
        // The six fits, the plan's hollow marker, and the two legend entries.
        assert_eq!(svg.matches("<circle").count(), 6 + 1 + 2);
    }
}
