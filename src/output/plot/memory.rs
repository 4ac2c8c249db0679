//! A memory panel: every trial's peak against its batch size, the capacity and the margin,
//! the fitted line, the three sizes, and on the whole chart the plans for other memory.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{
    integer_tick, plan_max, tick, Area, Drawn, Panel, FIT, GREY, MARGIN, OOM, PLAN, SIZES,
};
use maxbatch::plan::Plan;
use maxbatch::trial::{Outcome, Trial};
use maxbatch::Report;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The panel `panel` of `report` (and, on the whole chart, its `plans`) drawn in `area`.
pub fn draw(area: &Area, report: &Report, plans: &[Plan], panel: &Panel) -> Drawn {
    let caption = if panel.whole {
        "peak memory of every trial"
    } else {
        "near the boundary"
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(panel.x.0..panel.x.1, panel.y.0..panel.y.1)?;
    let span = panel.x.1 - panel.x.0;
    chart
        .configure_mesh()
        .x_desc("batch size")
        .y_desc(format!("peak memory ({})", panel.unit.name))
        .x_labels((span.ceil() as usize + 1).min(12))
        .x_label_formatter(&|x| integer_tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let capacity = panel.unit.of(report.device.capacity_bytes);
    let allowed = capacity * (1.0 - report.settings.margin);
    chart.draw_series(LineSeries::new(
        horizontal(panel, capacity),
        OOM.stroke_width(2),
    ))?;
    chart.draw_series(LineSeries::new(
        horizontal(panel, allowed),
        MARGIN.stroke_width(1),
    ))?;
    fitted_line(&mut chart, report, panel)?;
    size_markers(&mut chart, report, panel)?;
    trials(&mut chart, report, panel)?;
    if panel.whole && !plans.is_empty() {
        plan_lines(&mut chart, plans, panel)?;
    }
    Ok(())
}

/// A horizontal line across `panel` at `y`.
fn horizontal(panel: &Panel, y: f64) -> Vec<(f64, f64)> {
    vec![(panel.x.0, y), (panel.x.1, y)]
}

/// The memory model's line, dashed: a prediction between trials.
fn fitted_line(chart: &mut Chart, report: &Report, panel: &Panel) -> Drawn {
    let Some(m) = &report.memory_model else {
        return Ok(());
    };
    let unit = panel.unit;
    let (fixed, slope) = (unit.of(m.fixed_bytes), unit.of(m.bytes_per_sample));
    // plotters clamps points outside the chart instead of clipping the segment: keep the
    // line inside it.
    let clip = |x: f64| x.clamp(panel.x.0.max(0.0), panel.x.1);
    let (mut x0, mut x1) = (clip(panel.x.0), clip(panel.x.1));
    if slope > 0.0 {
        x0 = x0.max((panel.y.0 - fixed) / slope);
        x1 = x1.min((panel.y.1 - fixed) / slope);
    }
    if x1 > x0 {
        chart.draw_series(DashedLineSeries::new(
            vec![(x0, fixed + slope * x0), (x1, fixed + slope * x1)],
            6,
            4,
            FIT.mix(0.6).stroke_width(1),
        ))?;
    }
    Ok(())
}

/// Every trial inside the panel: fits as dots, out of memory as "≥" triangles (a stopped
/// trial's peak is a lower bound), sizes refused by prediction hollow at the top.
fn trials(chart: &mut Chart, report: &Report, panel: &Panel) -> Drawn {
    let unit = panel.unit;
    // plotters clamps points outside the chart to its edge: draw only those inside.
    let shown = |t: &&Trial| {
        let x = t.batch_size as f64;
        x >= panel.x.0 && x <= panel.x.1
    };
    let fits = report
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Fits)
        .filter(shown)
        .filter(|t| t.peak_bytes.is_some_and(|p| unit.of(p) >= panel.y.0));
    chart.draw_series(fits.filter_map(|t| {
        Some(Circle::new(
            (t.batch_size as f64, unit.of(t.peak_bytes?)),
            4,
            FIT.filled(),
        ))
    }))?;
    let measured_oom = report
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Oom && !t.predicted)
        .filter(shown);
    let top = panel.y.1 - (panel.y.1 - panel.y.0) * 0.03;
    chart.draw_series(measured_oom.map(|t| {
        let peak = t.peak_bytes.map_or(top, |p| unit.of(p).min(top));
        TriangleMarker::new((t.batch_size as f64, peak), 6, OOM.filled())
    }))?;
    if report.trials.iter().any(|t| t.predicted) {
        chart.draw_series(
            report
                .trials
                .iter()
                .filter(|t| t.predicted)
                .filter(shown)
                .map(|t| Circle::new((t.batch_size as f64, top), 5, GREY.stroke_width(2))),
        )?;
    }
    Ok(())
}

/// Each plan's usable memory as a dashed line labelled PREDICTED, and its predicted
/// maximum as a hollow marker.
fn plan_lines(chart: &mut Chart, plans: &[Plan], panel: &Panel) -> Drawn {
    let unit = panel.unit;
    for plan in plans {
        let usable = unit.of(plan.usable_bytes);
        chart.draw_series(DashedLineSeries::new(
            horizontal(panel, usable),
            6,
            4,
            PLAN.stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{}: PREDICTED max {}", plan.target, plan_max(plan)),
            (panel.x.1 * 0.55, usable),
            ("sans-serif", 12).into_font().color(&PLAN),
        )))?;
    }
    chart.draw_series(plans.iter().map(|p| {
        let at = (plan_max(p) as f64, unit.of(p.peak_bytes.unwrap_or(0)));
        Circle::new(at, 6, PLAN.stroke_width(2))
    }))?;
    Ok(())
}

/// The maximum, the largest power of two and the recommended size: a labelled vertical
/// line each (labels stacked when the sizes are close).
fn size_markers(chart: &mut Chart, report: &Report, panel: &Panel) -> Drawn {
    let mut sizes = vec![(report.sizes.max, "max")];
    if report.sizes.power_of_two != report.sizes.max {
        sizes.push((report.sizes.power_of_two, "power of two"));
    }
    if let Some(r) = report
        .sizes
        .recommended
        .filter(|&r| r != report.sizes.max && r != report.sizes.power_of_two)
    {
        sizes.push((r, "recommended"));
    }
    let height = panel.y.1 - panel.y.0;
    for (i, (size, name)) in sizes.into_iter().enumerate() {
        let x = size as f64;
        if x < panel.x.0 || x > panel.x.1 {
            continue;
        }
        chart.draw_series(DashedLineSeries::new(
            vec![(x, panel.y.0), (x, panel.y.1)],
            3,
            3,
            SIZES.mix(0.5).stroke_width(1),
        ))?;
        let y = panel.y.1 - height * (0.06 + 0.06 * i as f64);
        chart.draw_series(std::iter::once(Text::new(
            format!("{name} {size}"),
            (x, y),
            ("sans-serif", 12).into_font().color(&SIZES),
        )))?;
    }
    Ok(())
}
