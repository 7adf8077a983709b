//! Server-side SVG charts drawn with plotters: traffic over time, bars per location,
//! the page-check waterfall and the world map.
//!
//! Each chart is readable without a script: the SVG's `<title>` names it (its
//! accessible name), every time bucket, bar and map location carries a `<title>` with
//! its values (shown on hover, read by screen readers) in a transparent target over
//! the drawing, the colours are the Okabe–Ito palette (distinct for the common colour
//! vision deficiencies), and the SVG scales to the page's width (its `viewBox`).

use crate::api::fanout::PageRow;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::OnceLock;

/// Errors are drawn into the chart area by plotters; a failed chart becomes this text.
fn failed(e: impl std::fmt::Display) -> String {
    format!("<p class=\"error\">chart failed: {e}</p>")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The most hover targets one time chart carries (a longer series is sampled).
pub const MAX_HOVER: usize = 400;

/// A hover target: a transparent rectangle (pixels) whose `<title>` is `text`.
struct Hover {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
    text: String,
}

/// Text escaped for SVG/XML content and attributes.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Adds the chart's accessible name (`<title>` first inside `<svg>`, `role="img"`)
/// and its hover targets (last, so they are on top) to a rendered SVG.
fn decorate(svg: String, title: &str, hovers: &[Hover]) -> String {
    let Some(open_end) = svg
        .find("<svg")
        .and_then(|i| svg[i..].find('>').map(|j| i + j))
    else {
        return svg;
    };
    let Some(close) = svg.rfind("</svg>") else {
        return svg;
    };
    let mut out = String::with_capacity(svg.len() + hovers.len() * 120 + 64);
    out.push_str(&svg[..open_end]);
    out.push_str(" role=\"img\">");
    out.push_str(&format!("<title>{}</title>", esc(title)));
    out.push_str(&svg[open_end + 1..close]);
    if !hovers.is_empty() {
        out.push_str("<g class=\"hover\" fill=\"#000\" fill-opacity=\"0\">");
        for h in hovers {
            let (x, y) = (h.x0.min(h.x1), h.y0.min(h.y1));
            let (w, hh) = ((h.x1 - h.x0).abs().max(1), (h.y1 - h.y0).abs().max(1));
            out.push_str(&format!(
                "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{hh}\"><title>{}</title></rect>",
                esc(&h.text)
            ));
        }
        out.push_str("</g>");
    }
    out.push_str(&svg[close..]);
    out
}

fn render<F>(w: u32, h: u32, draw: F) -> String
where
    F: FnOnce(&Area<'_>) -> Result<(), Box<dyn std::error::Error>>,
{
    let mut out = String::new();
    let r = {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        let r = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root).map_err(|e| e.to_string()));
        r.and_then(|_| root.present().map_err(|e| e.to_string()))
    };
    match r {
        Ok(()) => out,
        Err(e) => failed(e),
    }
}

/// A timestamp in ms formatted (strftime) as UTC wall time; the charts shift their
/// times into the chosen zone first. Empty for a time out of range.
pub fn utc_fmt(ms: f64, fmt: &str) -> String {
    match jiff::Timestamp::from_millisecond(ms.floor() as i64) {
        Ok(t) => t.strftime(fmt).to_string(),
        Err(_) => String::new(),
    }
}

/// Hour:minute (UTC) of a timestamp in ms.
fn hhmm(ms: f64) -> String {
    utc_fmt(ms, "%H:%M")
}

/// A human number with a unit prefix.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.2} k", v / 1e3)
    } else if a >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0} ")
    } else {
        format!("{v:.2} ")
    }
}

/// One line of a time chart.
pub struct Line {
    /// Legend label.
    pub label: String,
    /// (ms since the epoch, value) points, in time order.
    pub points: Vec<(f64, f64)>,
}

/// The Okabe–Ito palette (Okabe and Ito, "Color Universal Design", 2008), the yellow
/// last (weakest on white): distinguishable with protanopia, deuteranopia and
/// tritanopia.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// Month-day (UTC) of a timestamp in ms.
fn mmdd(ms: f64) -> String {
    utc_fmt(ms, "%m-%d")
}

/// A time chart over `[from, to]` (ms) with a dotted line at each midnight (UTC) and the
/// current (last) value of each line written at the right edge.
pub fn time_chart(title: &str, unit: &str, from: f64, to: f64, lines: &[Line]) -> String {
    time_chart_in(title, unit, from, to, 0.0, lines)
}

/// [`time_chart`] with its labels and midnights in a time zone `offset` ms east of UTC
/// (the zone's offset at the chart's end). Labels are hours:minutes up to two days,
/// month-days beyond; midnights are drawn up to eight days.
pub fn time_chart_in(
    title: &str,
    unit: &str,
    from: f64,
    to: f64,
    offset: f64,
    lines: &[Line],
) -> String {
    let (from, to) = (from + offset, to + offset);
    let shifted: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            label: l.label.clone(),
            points: l.points.iter().map(|&(x, y)| (x + offset, y)).collect(),
        })
        .collect();
    let lines = &shifted[..];
    let long = to - from > 2.0 * 86_400_000.0;
    let midnights = to - from <= 8.0 * 86_400_000.0;
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ymax = if max > 0.0 { max * 1.15 } else { 1.0 };
    let mut hovers = Vec::new();
    let svg = render(900, 320, |root| {
        let (plot, right) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(from..to, 0.0..ymax)?;
        chart
            .configure_mesh()
            .x_labels(9)
            .x_label_formatter(&|x| if long { mmdd(*x) } else { hhmm(*x) })
            .y_label_formatter(&|y| format!("{}{unit}", si(*y)))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        // Midnights inside the range, dotted.
        let day = 86_400_000.0;
        let mut m = (from / day).ceil() * day;
        while midnights && m <= to {
            chart.draw_series(DashedLineSeries::new(
                vec![(m, 0.0), (m, ymax)],
                2,
                4,
                BLACK.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                "midnight",
                (m, ymax * 0.97),
                ("sans-serif", 12).into_font(),
            )))?;
            m += day;
        }
        for (i, l) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(l.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            if let Some(&(x, y)) = l.points.last() {
                chart.draw_series(std::iter::once(Circle::new((x, y), 4, color.filled())))?;
            }
        }
        if lines.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }
        // A hover target per bucket (sampled to MAX_HOVER): its time and every line's
        // value there.
        let grid = lines
            .iter()
            .max_by_key(|l| l.points.len())
            .map(|l| &l.points[..])
            .unwrap_or(&[]);
        let stride = grid.len().div_ceil(MAX_HOVER).max(1);
        let fmt = if to - from > 86_400_000.0 {
            "%Y-%m-%d %H:%M"
        } else {
            "%H:%M"
        };
        for j in (0..grid.len()).step_by(stride) {
            let x = grid[j].0;
            let next = grid.get(j + stride).map_or(to, |p| p.0).min(to);
            let (x0, y0) = chart.backend_coord(&(x, ymax));
            let (x1, y1) = chart.backend_coord(&(next, 0.0));
            let values: Vec<String> = lines
                .iter()
                .filter_map(|l| {
                    let k = l.points.partition_point(|p| p.0 < x);
                    let p = l.points.get(k).filter(|p| p.0 == x)?;
                    Some(format!("{}: {}{unit}", l.label, si(p.1)))
                })
                .collect();
            hovers.push(Hover {
                x0,
                y0,
                x1,
                y1,
                text: format!("{}  {}", utc_fmt(x, fmt), values.join(", ")),
            });
        }
        // Current values at the right edge.
        right.draw(&Text::new("now", (8, 40), ("sans-serif", 14).into_font()))?;
        for (i, l) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let v = l.points.last().map(|p| p.1).unwrap_or(0.0);
            let y = 62 + 22 * i as i32;
            right.draw(&Text::new(
                format!("{}{unit}", si(v)),
                (8, y),
                ("sans-serif", 14).into_font().color(&color),
            ))?;
        }
        Ok(())
    });
    decorate(svg, title, &hovers)
}

/// A bar chart: one bar per (label, value).
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let ymax = if max > 0.0 { max * 1.15 } else { 1.0 };
    let n = bars.len().max(1);
    let mut hovers = Vec::new();
    let svg = render(900, 280, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n as f64, 0.0..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|y| format!("{}{unit}", si(*y)))
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let color = PALETTE[i % PALETTE.len()];
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                color.filled(),
            )
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (label, v))| {
            Text::new(
                format!("{label}: {}{unit}", si(*v)),
                (i as f64 + 0.2, *v + ymax * 0.06),
                ("sans-serif", 13).into_font(),
            )
        }))?;
        for (i, (label, v)) in bars.iter().enumerate() {
            let (x0, y0) = chart.backend_coord(&(i as f64 + 0.15, ymax));
            let (x1, y1) = chart.backend_coord(&(i as f64 + 0.85, 0.0));
            hovers.push(Hover {
                x0,
                y0,
                x1,
                y1,
                text: format!("{label}: {}{unit}", si(*v)),
            });
        }
        Ok(())
    });
    decorate(svg, title, &hovers)
}

/// The last `max` characters of `s` (an ellipsis first when cut); cuts on character
/// boundaries, so any URL text is safe.
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_owned();
    }
    let keep: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{keep}")
}

/// The phases of a page-check row, in order, with their colours.
const PHASES: [(&str, RGBColor); 5] = [
    ("DNS", RGBColor(148, 103, 189)),
    ("connect", RGBColor(255, 127, 14)),
    ("TLS", RGBColor(227, 119, 194)),
    ("wait", RGBColor(44, 160, 44)),
    ("receive", RGBColor(31, 119, 180)),
];

/// The waterfall of one page check: one row per component, bars from its start offset
/// through DNS, connect, TLS, wait and receive.
pub fn waterfall(title: &str, rows: &[PageRow]) -> String {
    let end = rows
        .iter()
        .map(|r| r.end.max(r.stt + r.drt + r.cot + r.tls + r.dst + r.fnt))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let n = rows.len().max(1);
    let h = 70 + 24 * n as u32 + 40;
    let mut hovers = Vec::new();
    let svg = render(900, h, |root| {
        let (plot, legend) = root.split_vertically(h - 30);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(25)
            .y_label_area_size(260)
            .build_cartesian_2d(0.0..end, 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                let i = (*y - 0.5).round();
                if (*y - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                    // Row 0 at the top.
                    let idx = n - 1 - i as usize;
                    rows.get(idx).map(|r| tail(&r.url, 38)).unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x| {
                // Whole milliseconds repeat on a short page ("0 ms, 0 ms, 1 ms").
                if end < 20.0 {
                    format!("{x:.1} ms")
                } else {
                    format!("{x:.0} ms")
                }
            })
            .draw()?;
        for (i, r) in rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let mut x = r.stt;
            for (k, d) in [r.drt, r.cot, r.tls, r.dst, r.fnt].into_iter().enumerate() {
                if d > 0.0 {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x, y + 0.2), (x + d, y + 0.8)],
                        PHASES[k].1.filled(),
                    )))?;
                }
                x += d;
            }
            let (x0, y0) = chart.backend_coord(&(r.stt, y + 0.2));
            let (x1, y1) = chart.backend_coord(&(x.max(r.stt), y + 0.8));
            hovers.push(Hover {
                x0,
                y0,
                x1,
                y1,
                text: format!(
                    "{}: DNS {:.1} ms, connect {:.1} ms, TLS {:.1} ms, wait {:.1} ms, receive {:.1} ms",
                    r.url, r.drt, r.cot, r.tls, r.dst, r.fnt
                ),
            });
        }
        for (k, (name, color)) in PHASES.iter().enumerate() {
            let x = 270 + 110 * k as i32;
            legend.draw(&Rectangle::new([(x, 8), (x + 14, 22)], color.filled()))?;
            legend.draw(&Text::new(
                *name,
                (x + 20, 10),
                ("sans-serif", 13).into_font(),
            ))?;
        }
        Ok(())
    });
    decorate(svg, title, &hovers)
}

/// Country outlines, decoded once from the embedded world-atlas TopoJSON and already
/// split at the antimeridian.
fn world() -> &'static [Vec<(f64, f64)>] {
    static WORLD: OnceLock<Vec<Vec<(f64, f64)>>> = OnceLock::new();
    WORLD.get_or_init(|| load_world(super::WORLD_TOPOJSON).unwrap_or_default())
}

/// Decodes the `countries` object of a TopoJSON topology into rings of (lon, lat),
/// splitting rings that cross the antimeridian.
pub fn load_world(text: &str) -> Option<Vec<Vec<(f64, f64)>>> {
    let topo: topojson::TopoJson = text.parse().ok()?;
    let topojson::TopoJson::Topology(t) = topo else {
        return None;
    };
    let fc = topojson::to_geojson(&t, "countries").ok()?;
    let mut rings = Vec::new();
    for f in fc.features {
        let Some(g) = f.geometry else { continue };
        let polys: Vec<Vec<Vec<Vec<f64>>>> = match g.value {
            geojson::Value::Polygon(p) => vec![p],
            geojson::Value::MultiPolygon(mp) => mp,
            _ => continue,
        };
        for poly in polys {
            // Outer ring only: holes are tiny at this scale.
            if let Some(ring) = poly.into_iter().next() {
                let pts: Vec<(f64, f64)> = ring
                    .iter()
                    .filter(|p| p.len() >= 2)
                    .map(|p| (p[0], p[1]))
                    .collect();
                rings.extend(split_antimeridian(&pts));
            }
        }
    }
    Some(rings)
}

/// A ring that jumps across the antimeridian (consecutive longitudes more than 180°
/// apart) is unwrapped into continuous longitudes, then drawn twice (shifted by ±360°)
/// and each copy clipped to [-180, 180]; other rings are returned unchanged.
pub fn split_antimeridian(ring: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let crosses = ring.windows(2).any(|w| (w[1].0 - w[0].0).abs() > 180.0);
    if !crosses {
        return vec![ring.to_vec()];
    }
    let mut unwrapped = Vec::with_capacity(ring.len());
    let mut offset = 0.0;
    for (i, &(lon, lat)) in ring.iter().enumerate() {
        if i > 0 {
            let prev = ring[i - 1].0;
            if lon - prev > 180.0 {
                offset -= 360.0;
            } else if prev - lon > 180.0 {
                offset += 360.0;
            }
        }
        unwrapped.push((lon + offset, lat));
    }
    let mut out = Vec::new();
    for shift in [-360.0, 0.0, 360.0] {
        let copy: Vec<_> = unwrapped.iter().map(|&(x, y)| (x + shift, y)).collect();
        let clipped = clip_x(&clip_x(&copy, -180.0, true), 180.0, false);
        if clipped.len() >= 3 {
            out.push(clipped);
        }
    }
    out
}

/// Sutherland–Hodgman clipping of a polygon against the vertical line `x = edge`,
/// keeping the side `x >= edge` (`keep_greater`) or `x <= edge`.
fn clip_x(poly: &[(f64, f64)], edge: f64, keep_greater: bool) -> Vec<(f64, f64)> {
    let inside = |p: (f64, f64)| {
        if keep_greater {
            p.0 >= edge
        } else {
            p.0 <= edge
        }
    };
    let mut out = Vec::new();
    let n = poly.len();
    for i in 0..n {
        let cur = poly[i];
        let prev = poly[(i + n - 1) % n];
        let cross = |a: (f64, f64), b: (f64, f64)| {
            let t = (edge - a.0) / (b.0 - a.0);
            (edge, a.1 + t * (b.1 - a.1))
        };
        match (inside(prev), inside(cur)) {
            (true, true) => out.push(cur),
            (true, false) => out.push(cross(prev, cur)),
            (false, true) => {
                out.push(cross(prev, cur));
                out.push(cur);
            }
            (false, false) => {}
        }
    }
    out
}

/// A marker on the map.
pub struct MapPoint {
    /// Label.
    pub label: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Value; the circle's area is proportional to it.
    pub value: f64,
}

/// The world map (equirectangular) with a circle per location that served traffic.
pub fn world_map(title: &str, unit: &str, points: &[MapPoint]) -> String {
    let max = points.iter().map(|p| p.value).fold(0.0f64, f64::max);
    let mut hovers = Vec::new();
    let svg = render(900, 470, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(5)
            .build_cartesian_2d(-180.0..180.0, -60.0..85.0)?;
        let land = RGBColor(214, 220, 206);
        let coast = RGBColor(160, 170, 150);
        // Antarctica lies below the map's southern edge (-60°).
        for ring in world().iter().filter(|r| r.iter().any(|p| p.1 > -58.0)) {
            chart.draw_series(std::iter::once(Polygon::new(ring.clone(), land.filled())))?;
            let mut closed = ring.clone();
            if let Some(&first) = ring.first() {
                closed.push(first);
            }
            chart.draw_series(std::iter::once(PathElement::new(
                closed,
                coast.stroke_width(1),
            )))?;
        }
        for (i, p) in points.iter().enumerate() {
            if p.value <= 0.0 {
                continue;
            }
            let color = PALETTE[i % PALETTE.len()];
            let r = if max > 0.0 {
                (6.0 + 24.0 * (p.value / max).sqrt()) as i32
            } else {
                6
            };
            chart.draw_series(std::iter::once(Circle::new(
                (p.lon, p.lat),
                r,
                color.mix(0.55).filled(),
            )))?;
            chart.draw_series(std::iter::once(Circle::new(
                (p.lon, p.lat),
                r,
                color.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{} {}{unit}", p.label, si(p.value)),
                (p.lon + 3.0, p.lat - 5.0),
                ("sans-serif", 14).into_font(),
            )))?;
            let (cx, cy) = chart.backend_coord(&(p.lon, p.lat));
            hovers.push(Hover {
                x0: cx - r,
                y0: cy - r,
                x1: cx + r,
                y1: cy + r,
                text: format!("{}: {}{unit}", p.label, si(p.value)),
            });
        }
        Ok(())
    });
    decorate(svg, title, &hovers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waterfall_labels_cut_long_urls_on_character_boundaries() {
        assert_eq!(tail("http://a/b", 38), "http://a/b");
        let long = format!("http://cdn.example/{}", "é".repeat(40));
        let t = tail(&long, 38);
        assert_eq!(t.chars().count(), 38);
        assert!(t.starts_with('…') && t.ends_with('é'), "{t}");
        // A whole waterfall with such a URL renders.
        let row = PageRow {
            url: long,
            ..PageRow::default()
        };
        assert!(waterfall("w", &[row]).contains("<svg"));
    }

    #[test]
    fn si_prints_counts_without_decimals_and_scales_large_values() {
        assert_eq!(si(0.0), "0 ");
        assert_eq!(si(3.0), "3 ");
        assert_eq!(si(2.5), "2.50 ");
        assert_eq!(si(42.0), "42 ");
        assert_eq!(si(1_500.0), "1.50 k");
        assert_eq!(si(2_000_000.0), "2.00 M");
        assert_eq!(si(3e9), "3.00 G");
    }

    #[test]
    fn world_outlines_load_and_stay_inside_the_antimeridian() {
        let rings = load_world(crate::portal::WORLD_TOPOJSON).expect("decodes");
        assert!(rings.len() > 150, "{} rings", rings.len());
        for r in &rings {
            for &(lon, lat) in r {
                assert!((-180.0..=180.0).contains(&lon), "lon {lon}");
                assert!((-90.0..=90.0).contains(&lat), "lat {lat}");
            }
            assert!(
                !r.windows(2).any(|w| (w[1].0 - w[0].0).abs() > 180.0),
                "a ring still jumps across the map"
            );
        }
    }

    #[test]
    fn a_ring_across_the_antimeridian_is_split_in_two() {
        // A square from 170°E to 170°W.
        let ring = [
            (170.0, 10.0),
            (-170.0, 10.0),
            (-170.0, -10.0),
            (170.0, -10.0),
        ];
        let parts = split_antimeridian(&ring);
        assert_eq!(parts.len(), 2);
        let xs: Vec<(f64, f64)> = parts
            .iter()
            .map(|p| {
                let min = p.iter().map(|q| q.0).fold(f64::MAX, f64::min);
                let max = p.iter().map(|q| q.0).fold(f64::MIN, f64::max);
                (min, max)
            })
            .collect();
        assert!(xs.contains(&(-180.0, -170.0)), "{xs:?}");
        assert!(xs.contains(&(170.0, 180.0)), "{xs:?}");
    }

    #[test]
    fn time_chart_has_midnight_and_current_value() {
        let day = 86_400_000.0;
        let from = 20.0 * day - 6.0 * 3_600_000.0;
        let to = from + day;
        let svg = time_chart(
            "Hits per second (total 42 hits)",
            "/s",
            from,
            to,
            &[Line {
                label: "hits".into(),
                points: vec![(from + 60_000.0, 1.0), (to - 60_000.0, 7.5)],
            }],
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("total 42 hits"));
        assert!(svg.contains("7.50 /s"), "current value at the right edge");
        assert_eq!(svg.matches("midnight").count(), 1, "one midnight in 24 h");
    }

    #[test]
    fn every_bucket_has_a_hover_title_with_its_time_and_values() {
        let from = 1_800_000_000_000.0 - 1_800_000_000_000.0 % 3_600_000.0;
        let minute = 60_000.0;
        let line = |label: &str, k: f64| Line {
            label: label.into(),
            points: (0..60)
                .map(|i| (from + i as f64 * minute, k * i as f64))
                .collect(),
        };
        let svg = time_chart(
            "Two <lines> & more",
            "bit/s",
            from,
            from + 60.0 * minute,
            &[line("a<b", 1000.0), line("c", 1.0)],
        );
        // The chart's accessible name first, escaped.
        assert!(
            svg.contains("role=\"img\"><title>Two &lt;lines&gt; &amp; more</title>"),
            "{}",
            &svg[..300]
        );
        let hover = &svg[svg.find("<g class=\"hover\"").expect("hover targets")..];
        assert_eq!(hover.matches("<rect").count(), 60, "one per minute");
        let t = utc_fmt(from + 7.0 * minute, "%H:%M");
        assert!(
            hover.contains(&format!(
                "<title>{t}  a&lt;b: 7.00 kbit/s, c: 7 bit/s</title>"
            )),
            "{hover}"
        );
        assert!(!svg.contains("a<b"), "labels are escaped");
        // A long series is sampled.
        let many = Line {
            label: "x".into(),
            points: (0..5000).map(|i| (from + i as f64 * minute, 1.0)).collect(),
        };
        let svg = time_chart("t", "", from, from + 5000.0 * minute, &[many]);
        let n = svg.matches("<rect").count();
        assert!(
            (MAX_HOVER / 2..=MAX_HOVER + 2).contains(&n),
            "{n} hover targets"
        );
    }

    #[test]
    fn bars_and_map_points_have_hover_titles() {
        let svg = bar_chart("b", "B", &[("fra".into(), 2048.0), ("nyc".into(), 10.0)]);
        assert!(svg.contains("<title>fra: 2.05 kB</title>"), "{svg}");
        assert!(svg.contains("<title>nyc: 10 B</title>"));
        let svg = world_map(
            "m",
            "B",
            &[MapPoint {
                label: "sin".into(),
                lat: 1.3,
                lon: 103.8,
                value: 5.0,
            }],
        );
        assert!(svg.contains("<title>sin: 5 B</title>"));
    }

    #[test]
    fn times_format_in_utc() {
        assert_eq!(utc_fmt(0.0, "%Y-%m-%d %H:%M"), "1970-01-01 00:00");
        assert_eq!(utc_fmt(1_709_208_000_000.0, "%m-%d %H:%M"), "02-29 12:00");
        assert_eq!(utc_fmt(f64::MAX, "%Y"), "", "out of range: empty, no panic");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_rings_stay_on_the_map(
            ring in proptest::collection::vec((-180.0f64..=180.0, -85.0f64..=85.0), 3..40)
        ) {
            for part in split_antimeridian(&ring) {
                for (lon, _) in &part {
                    prop_assert!((-180.0 - 1e-9..=180.0 + 1e-9).contains(lon), "lon {}", lon);
                }
            }
        }
    }
}
