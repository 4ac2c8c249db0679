//! The key to both memory panels, drawn by hand in its own area (a legend inside a panel
//! would cover trials).

use plotters::prelude::*;

use super::{Area, Drawn, FIT, GREY, MARGIN, OOM, PLAN, SIZES};
use maxbatch::plan::Plan;
use maxbatch::Report;

/// The key of `report`'s chart (with its `plans`) in `area`.
pub fn draw(area: &Area, report: &Report, plans: &[Plan]) -> Drawn {
    let font = ("sans-serif", 12).into_font();
    let mut row = 20;
    let mut entry =
        |area: &Area, marker: &dyn Fn(&Area, (i32, i32)) -> Drawn, text: &str| -> Drawn {
            marker(area, (30, row))?;
            area.draw(&Text::new(text.to_string(), (50, row - 6), font.clone()))?;
            row += 20;
            Ok(())
        };
    let line = |color: RGBColor, dashed: bool| {
        move |area: &Area, (x, y): (i32, i32)| -> Drawn {
            if dashed {
                area.draw(&PathElement::new(vec![(x - 12, y), (x - 6, y)], color))?;
                area.draw(&PathElement::new(vec![(x - 2, y), (x + 4, y)], color))?;
                area.draw(&PathElement::new(vec![(x + 8, y), (x + 12, y)], color))?;
            } else {
                area.draw(&PathElement::new(
                    vec![(x - 12, y), (x + 12, y)],
                    color.stroke_width(2),
                ))?;
            }
            Ok(())
        }
    };
    let capacity = if report.device.capacity_is_budget {
        "budget"
    } else {
        "capacity"
    };
    entry(area, &line(OOM, false), capacity)?;
    entry(
        area,
        &line(MARGIN, false),
        &format!("{:.0}% margin", report.settings.margin * 100.0),
    )?;
    entry(
        area,
        &line(FIT, true),
        "fitted line (a prediction between trials)",
    )?;
    entry(
        area,
        &line(SIZES, true),
        "max, power of two, recommended (all ran)",
    )?;
    entry(
        area,
        &|a: &Area, at| Ok(a.draw(&Circle::new(at, 4, FIT.filled()))?),
        "fits (measured peak)",
    )?;
    entry(
        area,
        &|a: &Area, at| Ok(a.draw(&TriangleMarker::new(at, 6, OOM.filled()))?),
        "out of memory (peak ≥ the triangle)",
    )?;
    if report.trials.iter().any(|t| t.predicted) {
        entry(
            area,
            &|a: &Area, at| Ok(a.draw(&Circle::new(at, 5, GREY.stroke_width(2)))?),
            "not run: predicted out of memory",
        )?;
    }
    if !plans.is_empty() {
        entry(
            area,
            &line(PLAN, true),
            "planned device's memory (PREDICTED)",
        )?;
        entry(
            area,
            &|a: &Area, at| Ok(a.draw(&Circle::new(at, 6, PLAN.stroke_width(2)))?),
            "predicted max there (not run)",
        )?;
    }
    Ok(())
}
