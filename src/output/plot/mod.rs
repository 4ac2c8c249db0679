//! The report as an SVG chart (`--plot FILE.svg`), three panels:
//!
//! - **memory**: every trial's peak against its batch size in a unit that fits the scale
//!   (fits as filled dots; out-of-memory trials as red "≥" triangles, since a stopped
//!   trial's peak is a lower bound), the capacity and the margin, the fitted line (dashed: a
//!   prediction between measurements), the maximum, the largest power of two and the
//!   recommended size as labelled vertical lines, and `--plan-for`'s targets as dashed
//!   capacity lines with hollow markers, labelled "predicted";
//! - **near the boundary**: the same around the maximum and the size after it, where the
//!   whole chart would draw them as one overlapping dot and triangle;
//! - **throughput**: samples per second of each size that fit, in its own panel, with how
//!   much one step's time varies.

mod key;
mod memory;

use plotters::coord::Shift;
use plotters::prelude::*;

use maxbatch::plan::Plan;
use maxbatch::trial::{Outcome, Trial};
use maxbatch::Report;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// The chart of `report` and its `plans` as SVG text.
pub fn render(report: &Report, plans: &[Plan]) -> Result<String, String> {
    let mut svg = String::new();
    draw(report, plans, &mut svg).map_err(|e| format!("cannot draw the plot: {e}"))?;
    Ok(svg)
}

/// A plan's predicted maximum (0: none).
fn plan_max(plan: &Plan) -> usize {
    plan.sizes.map_or(0, |s| s.max)
}

/// A unit of bytes for an axis: the largest of KiB, MiB and GiB that keeps `largest` at
/// least 1.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    bytes: f64,
    name: &'static str,
}

impl Unit {
    fn for_largest(largest: f64) -> Unit {
        [(30, "GiB"), (20, "MiB"), (10, "KiB")]
            .into_iter()
            .map(|(shift, name)| Unit {
                bytes: (1u64 << shift) as f64,
                name,
            })
            .find(|u| largest >= u.bytes)
            .unwrap_or(Unit {
                bytes: 1.0,
                name: "bytes",
            })
    }

    fn of(&self, bytes: u64) -> f64 {
        bytes as f64 / self.bytes
    }
}

const FIT: RGBColor = RGBColor(31, 119, 180);
const OOM: RGBColor = RGBColor(214, 39, 40);
const MARGIN: RGBColor = RGBColor(230, 140, 0);
const PLAN: RGBColor = RGBColor(130, 60, 170);
const SIZES: RGBColor = RGBColor(40, 40, 40);
const RATE: RGBColor = RGBColor(20, 150, 60);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// What one memory panel shows.
struct Panel {
    x: (f64, f64),
    y: (f64, f64),
    unit: Unit,
    /// The whole chart (legend, plans) rather than the zoom near the boundary.
    whole: bool,
}

fn draw(report: &Report, plans: &[Plan], svg: &mut String) -> Drawn {
    let root = SVGBackend::with_string(svg, (1100, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} on {}: max {}, largest power of two {}, recommended {}",
        report.model.name,
        report.device.name,
        report.sizes.max,
        report.sizes.power_of_two,
        super::size_or_none(report.sizes.recommended)
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(560);
    let (left, right) = top.split_horizontally(700);
    let (zoom_area, key_area) = right.split_vertically(360);
    let whole = whole_panel(report, plans);
    memory::draw(&left, report, plans, &whole)?;
    match zoom_panel(report) {
        Some(zoom) => memory::draw(&zoom_area, report, plans, &zoom)?,
        None => {
            zoom_area.draw(&Text::new(
                "no failure above the maximum to zoom into",
                (20, 40),
                ("sans-serif", 14).into_font().color(&GREY),
            ))?;
        }
    }
    key::draw(&key_area, report, plans)?;
    throughput_panel(&bottom, report, whole.x)?;
    root.present()?;
    Ok(())
}

/// Every trial and plan, from batch size 0.
fn whole_panel(report: &Report, plans: &[Plan]) -> Panel {
    let x_max = report
        .trials
        .iter()
        .map(|t| t.batch_size)
        .chain(plans.iter().map(plan_max))
        .max()
        .unwrap_or(1) as f64;
    let largest = report
        .trials
        .iter()
        .filter_map(|t| t.peak_bytes)
        .chain(plans.iter().map(|p| p.capacity_bytes))
        .chain([report.device.capacity_bytes])
        .max()
        .unwrap_or(1) as f64;
    let unit = Unit::for_largest(largest);
    Panel {
        x: (0.0, x_max * 1.06 + 1.0),
        y: (0.0, largest / unit.bytes * 1.12),
        unit,
        whole: true,
    }
}

/// Around the maximum and the size after it (and the recommended size when it is near):
/// `None` without a failure above the maximum.
fn zoom_panel(report: &Report) -> Option<Panel> {
    let max = report.sizes.max;
    let after = report
        .trials
        .iter()
        .filter(|t| t.batch_size > max && t.peak_bytes.is_some())
        .map(|t| t.batch_size)
        .min()?;
    let low = report
        .sizes
        .recommended
        .filter(|&r| r + 8 >= max)
        .unwrap_or(max)
        .min(max);
    let pad = (((after - low) as f64) * 0.25).max(0.6);
    let (x0, x1) = (low as f64 - pad, after as f64 + pad);
    let inside = |t: &&Trial| (t.batch_size as f64) >= x0 && (t.batch_size as f64) <= x1;
    let peaks: Vec<f64> = report
        .trials
        .iter()
        .filter(inside)
        .filter_map(|t| t.peak_bytes)
        .map(|p| p as f64)
        .collect();
    let capacity = report.device.capacity_bytes as f64;
    // The margin's line only when the recommended size is in view: otherwise it would
    // stretch the axis and flatten the pair that decides the maximum.
    let floor = match report.sizes.recommended {
        Some(r) if r as f64 >= x0 => capacity * (1.0 - report.settings.margin),
        _ => capacity,
    };
    let lo = peaks.iter().copied().fold(floor, f64::min);
    let hi = peaks.iter().copied().fold(capacity, f64::max);
    // A unit for the zoom's span, so that its ticks differ.
    let unit = Unit::for_largest((hi - lo) * 4.0);
    let room = ((hi - lo) * 0.15).max(1.0);
    Some(Panel {
        x: (x0, x1),
        y: (
            ((lo - room).max(0.0)) / unit.bytes,
            (hi + room) / unit.bytes,
        ),
        unit,
        whole: false,
    })
}

fn throughput_panel(area: &Area, report: &Report, x: (f64, f64)) -> Drawn {
    let points: Vec<(f64, f64)> = report
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Fits)
        .filter_map(|t| Some((t.batch_size as f64, t.samples_per_second?)))
        .collect();
    let one_step = report.settings.steps_per_trial < 2;
    let caption = if one_step {
        "samples per second (one step per trial: each time includes first-touch costs and varies by up to 35%)"
    } else {
        "samples per second (the mean of the steps after the first)"
    };
    let rate_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x.0..x.1, 0.0..rate_max)?;
    chart
        .configure_mesh()
        .x_desc("batch size")
        .y_desc("samples / s")
        .x_labels(((x.1 - x.0).ceil() as usize + 1).min(12))
        .x_label_formatter(&|x| integer_tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(
        points
            .iter()
            .map(|&p| TriangleMarker::new(p, 5, RATE.filled())),
    )?;
    Ok(())
}

/// A value tick: whole numbers from 10 up, one decimal below.
fn tick(y: f64) -> String {
    if y.abs() >= 10.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

/// A batch-size tick: the integer, or nothing between integers.
fn integer_tick(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 && x >= 0.0 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxbatch::report::fixtures::fixture;

    fn with_model(mut report: Report) -> Report {
        report.memory_model = maxbatch::analysis::memory_model(
            &report.trials,
            report.sizes.max,
            report.device.capacity_bytes,
            &report.model,
            report.settings.optimizer,
        );
        report
    }

    #[test]
    fn the_svg_has_every_trial_the_lines_and_the_three_sizes() {
        let report = with_model(fixture("cuda:0", 6, Some(5)));
        let svg = render(&report, &[]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        // The fixture's capacity is 1 GiB and its peaks are below it: MiB would not fit.
        assert!(svg.contains("peak memory (GiB)") && svg.contains("samples / s"));
        assert!(svg.contains("fitted line (a prediction between trials)"));
        assert!(svg.contains("5% margin") && svg.contains("peak ≥ the triangle"));
        assert!(svg.contains("max 6") && svg.contains("power of two 4"));
        assert!(svg.contains("recommended 5"));
        let fits = report
            .trials
            .iter()
            .filter(|t| t.outcome == Outcome::Fits)
            .count();
        assert!(
            svg.matches("<circle").count() > fits,
            "fits and the legend's"
        );
    }

    #[test]
    fn units_fit_the_scale_and_ticks_are_integers() {
        assert_eq!(Unit::for_largest(300.0 * 1024.0 * 1024.0).name, "MiB");
        assert_eq!(Unit::for_largest(3.0 * (1u64 << 30) as f64).name, "GiB");
        assert_eq!(Unit::for_largest(5000.0).name, "KiB");
        assert_eq!(integer_tick(10.0), "10");
        assert_eq!(integer_tick(10.5), "");
    }

    #[test]
    fn plans_are_drawn_as_predictions() {
        let mut report = fixture("cpu", 6, Some(5));
        report.device.kind = maxbatch::device::DeviceKind::Cpu;
        let memory = maxbatch::plan::Memory::parse("4GiB").unwrap();
        let plans: Vec<Plan> = maxbatch::plan::Plan::from_lines(
            &report.trials,
            &report.settings,
            (report.device.kind, None),
            &memory,
            None,
        )
        .into_iter()
        .collect();
        assert_eq!(plans.len(), 1);
        let svg = render(&report, &plans).unwrap();
        assert!(
            svg.contains("4GiB: PREDICTED max"),
            "the capacity line is labelled"
        );
        assert!(svg.contains("memory (PREDICTED)"));
        assert!(svg.contains("predicted max there (not run)"));
    }
}
