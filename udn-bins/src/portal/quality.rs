//! CDN Quality (`/activity/cdn/quality`): status classes, the cache hit ratio, origin
//! errors and response-time percentiles over the chosen range (`GET
//! /v1/traffic/cdn/quality`), and the top URLs and client networks (`GET
//! /v1/traffic/cdn/top`), for the customer in scope and one or every domain.

use super::{
    PortalUser, chart_rows, charts, hostnames, layout, range_picker, range_title, zero_filled,
};
use crate::api::ApiState;
use crate::api::routes as r;
use crate::store::quality::QualityPoint;
use axum::extract::{Query, State};
use maud::{PreEscaped, html};

/// The status classes' labels, 1xx to 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `GET /activity/cdn/quality`.
pub(super) async fn quality_page(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> super::Page {
    let (pts, range) = chart_rows(&st, &a, &q, |b, w| b.cdn_quality(w)).await?;
    let (top, _) = chart_rows(&st, &a, &q, |b, w| b.cdn_top(w)).await?;
    let hosts = hostnames(&st, &a, &q, false).await?;
    let (from, to) = (range.range.from, range.range.to);
    let step = range.grain.millis();
    let (f, t) = (from.as_millis() as f64, to.as_millis() as f64);
    let offset = range.offset_ms(to) as f64;
    let at = |p: &QualityPoint| p.minute.max(0) as u64;
    let title = range_title(&q, &range);

    let status_lines: Vec<charts::Line> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, label)| charts::Line {
            label: (*label).into(),
            points: zero_filled(
                from,
                to,
                step,
                pts.iter().map(|p| (at(p), p.status[i] as f64)),
            ),
        })
        .collect();
    let status_svg = charts::time_chart_in(
        &format!(
            "Responses per {} by status class, {title}",
            range.grain.name()
        ),
        "",
        f,
        t,
        offset,
        &status_lines,
    );
    // Ratios and percentiles only where there were responses (no invented zeros).
    let sparse = |v: fn(&QualityPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        pts.iter()
            .filter_map(|p| v(p).map(|x| ((at(p) + step / 2) as f64, x)))
            .collect()
    };
    let ratio_svg = charts::time_chart_in(
        &format!("Cache hit ratio, {title}"),
        "%",
        f,
        t,
        offset,
        &[charts::Line {
            label: "hits (fresh or stale) of cacheable responses".into(),
            points: sparse(|p| p.hit_ratio.map(|r| r * 100.0)),
        }],
    );
    let times_svg = charts::time_chart_in(
        &format!("Response time percentiles, {title}"),
        "ms",
        f,
        t,
        offset,
        &[
            charts::Line {
                label: "p50".into(),
                points: sparse(|p| p.p50_ms),
            },
            charts::Line {
                label: "p95".into(),
                points: sparse(|p| p.p95_ms),
            },
            charts::Line {
                label: "p99".into(),
                points: sparse(|p| p.p99_ms),
            },
        ],
    );
    let errors_svg = charts::time_chart_in(
        &format!("Origin errors per {}, {title}", range.grain.name()),
        "",
        f,
        t,
        offset,
        &[charts::Line {
            label: "5xx not from the cache".into(),
            points: zero_filled(
                from,
                to,
                step,
                pts.iter().map(|p| (at(p), p.origin_errors as f64)),
            ),
        }],
    );
    let mut total = QualityPoint::default();
    for p in &pts {
        total.add(p);
    }
    total.derive();
    let ms = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    let body = html! {
        (range_picker("/activity/cdn/quality", "/v1/traffic/cdn/quality", &q, &range, &hosts))
        table id="quality-totals" {
            tr { th { "Responses" } @for c in CLASSES { th { (c) } } th { "Hit ratio" }
                th { "Origin errors" } th { "p50 (ms)" } th { "p95 (ms)" } th { "p99 (ms)" } }
            tr {
                td class="num" id="total-requests" { (total.requests) }
                @for (i, _) in CLASSES.iter().enumerate() { td class="num" { (total.status[i]) } }
                td class="num" id="total-hit-ratio" {
                    (total.hit_ratio.map(|r| format!("{:.1} %", r * 100.0)).unwrap_or_else(|| "–".into()))
                }
                td class="num" id="total-origin-errors" { (total.origin_errors) }
                td class="num" id="total-p50" { (ms(total.p50_ms)) }
                td class="num" id="total-p95" { (ms(total.p95_ms)) }
                td class="num" id="total-p99" { (ms(total.p99_ms)) }
            }
        }
        div id="status-chart" { (PreEscaped(status_svg)) }
        div id="hit-ratio-chart" { (PreEscaped(ratio_svg)) }
        div id="times-chart" { (PreEscaped(times_svg)) }
        div id="origin-errors-chart" { (PreEscaped(errors_svg)) }
        p { small { "Percentiles come from a response-time histogram kept per rollup (doubling buckets from 1 ms), so they are exact to their bucket at every range. An origin error is a 5xx that did not come from the cache. The top lists read the raw records, kept for the raw retention (30 days by default)." } }
        h2 { "Top URLs" }
        table id="top-urls" {
            tr { th { "Hostname" } th { "Path" } th { "Responses" } th { "Bytes" } }
            @for u in &top.urls {
                tr { td { (u.host) } td { code { (u.path) } } td class="num" { (u.requests) } td class="num" { (u.bytes) } }
            }
        }
        h2 { "Top client networks" }
        table id="top-networks" {
            tr { th { "Network" } th { "Responses" } th { "Bytes" } }
            @for n in &top.networks {
                tr { td { (n.network) } td class="num" { (n.requests) } td class="num" { (n.bytes) } }
            }
        }
    };
    Ok(layout(
        &a,
        "/activity/cdn/quality",
        "CDN Quality",
        false,
        body,
    ))
}
