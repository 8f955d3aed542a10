//! The chart: grouped bars per workload, for jobs/s (with min–max whiskers) and server CPU per
//! job, plus bytes per queued job. SVG only.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::server::ServerKind;
use crate::shape::Shape;
use crate::suite::Results;

fn color(kind: ServerKind) -> RGBColor {
    match kind {
        ServerKind::Gearmand => RGBColor(140, 140, 140),
        ServerKind::GearmandTuned => RGBColor(70, 120, 180),
        ServerKind::Gearfleet => RGBColor(230, 120, 30),
        ServerKind::GearfleetFsync => RGBColor(150, 60, 20),
        ServerKind::GearfleetAsync => RGBColor(240, 170, 90),
        ServerKind::Floor => RGBColor(60, 60, 60),
    }
}

/// One bar: its height and optional whisker (min, max).
#[derive(Debug, Clone, Copy)]
struct Bar {
    value: f64,
    whisker: Option<(f64, f64)>,
}

struct Panel<'a> {
    title: &'a str,
    labels: Vec<String>,
    /// `bars[group][server]`.
    bars: Vec<Vec<Option<Bar>>>,
    /// Text above gearfleet's bar per group (the ratio).
    notes: Vec<Option<String>>,
    /// Logarithmic y axis (values are plotted as log10 and labelled back).
    log: bool,
}

fn short_number(v: f64) -> String {
    if v >= 999_500.0 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Writes the chart of `r` to `path`.
pub fn write_svg(r: &Results, path: &Path) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 1030)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (legend, root_rest) = root.split_vertically(30);
    draw_legend(&legend, &r.servers).map_err(err)?;
    let (top, rest) = root_rest.split_vertically(420);
    let (middle, bottom) = rest.split_vertically(330);

    let throughput: Vec<usize> = (0..r.workloads.len()).collect();
    let labels: Vec<String> = throughput.iter().map(|&w| r.workloads[w].label.clone()).collect();
    let bars = |f: &dyn Fn(usize, ServerKind) -> Option<Bar>| -> Vec<Vec<Option<Bar>>> {
        throughput.iter().map(|&w| r.servers.iter().map(|&s| f(w, s)).collect()).collect()
    };

    let rates = Panel {
        title: "jobs/s, log scale (median of runs, whiskers: min–max; label: gearfleet ÷ best gearmand)",
        labels: labels.clone(),
        bars: bars(&|w, s| {
            r.cell(w, s).and_then(|c| c.rate()).map(|sp| Bar { value: sp.median, whisker: Some((sp.min, sp.max)) })
        }),
        notes: throughput.iter().map(|&w| r.ratios(w).map(|x| format!("{:.1}×", x.throughput))).collect(),
        log: true,
    };
    draw_panel(&top, &rates, &r.servers).map_err(err)?;

    let cpu = Panel {
        title: "server CPU µs per job (median; label: gearfleet ÷ best gearmand)",
        labels,
        bars: bars(&|w, s| r.cell(w, s).and_then(|c| c.server_us()).map(|v| Bar { value: v, whisker: None })),
        notes: throughput.iter().map(|&w| r.ratios(w).and_then(|x| x.cpu).map(|c| format!("{c:.2}×"))).collect(),
        log: false,
    };
    draw_panel(&middle, &cpu, &r.servers).map_err(err)?;

    if let Some(wi) = r.workloads.iter().position(|w| w.shape == Shape::Memory) {
        let per_job = |s| r.cell(wi, s).and_then(|c| c.mem(|m| m.bytes_per_job()));
        let kept =
            |s| r.cell(wi, s).and_then(|c| c.mem(|m| m.drained.saturating_sub(m.idle) as f64 / m.jobs.max(1) as f64));
        let mem = Panel {
            title: "server RSS bytes per queued job (with the queue / still held after the drain)",
            labels: vec!["with the queue".into(), "after the drain".into()],
            bars: vec![
                r.servers.iter().map(|&s| per_job(s).map(|v| Bar { value: v, whisker: None })).collect(),
                r.servers.iter().map(|&s| kept(s).map(|v| Bar { value: v, whisker: None })).collect(),
            ],
            notes: vec![None, None],
            log: false,
        };
        draw_panel(&bottom, &mem, &r.servers).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    servers: &[ServerKind],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = 80;
    for &s in servers {
        area.draw(&Rectangle::new([(x, 10), (x + 14, 24)], color(s).filled()))?;
        area.draw_text(s.label(), &style, (x + 20, 17))?;
        x += 40 + 9 * s.label().len() as i32;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    servers: &[ServerKind],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let groups = p.labels.len().max(1);
    let values = p.bars.iter().flatten().flatten().flat_map(|b| {
        let (lo, hi) = b.whisker.unwrap_or((b.value, b.value));
        [b.value, lo, hi]
    });
    let (lowest, top) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // On a log axis values are plotted as log10(v) from a floor one decade under the smallest.
    let (y_min, y_max, map): (f64, f64, Box<dyn Fn(f64) -> f64>) = if p.log {
        let floor = if lowest.is_finite() && lowest > 0.0 { lowest.log10().floor() - 0.3 } else { 0.0 };
        let ceil = if top > 0.0 { top.log10() + 0.25 } else { floor + 1.0 };
        (floor, ceil, Box::new(move |v: f64| if v > 0.0 { v.log10().max(floor) } else { floor }))
    } else {
        (0.0, if top > 0.0 { top * 1.18 } else { 1.0 }, Box::new(|v| v))
    };
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..groups as f64, y_min..y_max)?;
    let log = p.log;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(if log { ((y_max - y_min) * 2.0).ceil() as usize + 1 } else { 8 })
        .y_label_formatter(&move |y| short_number(if log { 10f64.powf(*y) } else { *y }))
        .label_style(("sans-serif", 13))
        .draw()?;
    // Workload names under each group, placed in pixels (the axis has no key point per group).
    let base = area.get_base_pixel();
    let label_style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (g, label) in p.labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, y_min));
        area.draw_text(label, &label_style, (x - base.0, y - base.1 + 6))?;
    }

    let n = servers.len().max(1) as f64;
    let group_width = 0.8;
    let bar_width = group_width / n;
    for (si, &server) in servers.iter().enumerate() {
        let c = color(server);
        let rects: Vec<Rectangle<(f64, f64)>> = p
            .bars
            .iter()
            .enumerate()
            .filter_map(|(g, row)| {
                let b = row.get(si).copied().flatten()?;
                let x0 = g as f64 + 0.1 + si as f64 * bar_width;
                Some(Rectangle::new([(x0, y_min), (x0 + bar_width * 0.92, map(b.value))], c.filled()))
            })
            .collect();
        chart.draw_series(rects)?;
        let whiskers: Vec<PathElement<(f64, f64)>> = p
            .bars
            .iter()
            .enumerate()
            .filter_map(|(g, row)| {
                let (lo, hi) = row.get(si).copied().flatten()?.whisker?;
                let xm = g as f64 + 0.1 + (si as f64 + 0.46) * bar_width;
                Some(PathElement::new(vec![(xm, map(lo)), (xm, map(hi))], BLACK.stroke_width(1)))
            })
            .collect();
        chart.draw_series(whiskers)?;
    }
    if let Some(gf) = servers.iter().position(|&s| s == ServerKind::Gearfleet) {
        let note_style = TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (g, note) in p.notes.iter().enumerate() {
            let (Some(note), Some(b)) = (note, p.bars.get(g).and_then(|row| row.get(gf).copied().flatten())) else {
                continue;
            };
            let hi = b.whisker.map_or(b.value, |(_, hi)| hi.max(b.value));
            let x = g as f64 + 0.1 + (gf as f64 + 0.46) * bar_width;
            let (px, py) = chart.backend_coord(&(x, map(hi)));
            area.draw_text(note, &note_style, (px - base.0, py - base.1 - 3))?;
        }
    }
    Ok(())
}
