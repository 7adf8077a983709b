//! The operators' page (`/ops`, admins only): the DNS servers', edges' and probes' own
//! operational records (`GET /v1/ops`, [`crate::store::ops`]) over a range, per role:
//! a chart of the role's headline counter per instance, every metric's total (counters)
//! or peak and mean (gauges) per instance, and the probes' results per method.

use super::{PortalUser, charts, layout, range_picker_for, range_title, zero_filled};
use crate::api::backend::Role;
use crate::api::routes as r;
use crate::api::{ApiError, ApiState};
use crate::store::ops::{OpsPoint, OpsReport};
use axum::extract::{Query, State};
use maud::{Markup, PreEscaped, html};
use std::collections::BTreeMap;

/// The roles in the page's order, with their headline counter (summed over labels) and
/// what it counts.
const ROLES: [(&str, &str, &str, &str); 3] = [
    ("dns", "DNS servers", "udn_dns_queries_total", "queries"),
    ("edge", "Edges", "udn_edge_requests_total", "requests"),
    (
        "probe",
        "Probes",
        "udn_probe_service_checks_total",
        "service tests",
    ),
];

/// Rows of one role's metric table at most (a registry has a few dozen series per
/// instance; the rest is in the CSV).
const MAX_TABLE_ROWS: usize = 300;

/// The series' name without its labels.
fn base(metric: &str) -> &str {
    metric.split('{').next().unwrap_or(metric)
}

/// One metric of one instance over the range.
struct Total {
    gauge: bool,
    sum: i64,
    max: i64,
    samples: i64,
}

/// Per (instance, metric): the counter's total, or the gauge's peak and mean.
fn totals<'a>(points: impl Iterator<Item = &'a OpsPoint>) -> BTreeMap<(&'a str, &'a str), Total> {
    let mut out: BTreeMap<(&str, &str), Total> = BTreeMap::new();
    for p in points {
        let t = out
            .entry((p.instance.as_str(), p.metric.as_str()))
            .or_insert(Total {
                gauge: p.kind == "gauge",
                sum: 0,
                max: 0,
                samples: 0,
            });
        t.sum = t.sum.saturating_add(p.sum);
        t.max = t.max.max(p.max);
        t.samples += p.samples;
    }
    out
}

/// `GET /ops`: the operators' view of the servers and probes.
pub(super) async fn ops_page(
    State(st): State<ApiState>,
    PortalUser(a): PortalUser,
    Query(q): Query<r::TrafficQuery>,
) -> super::Page {
    if a.user.role != Role::Admin {
        return Err(ApiError::Forbidden.into());
    }
    let range = crate::api::timerange::resolve(&q.range(), crate::api::now())?;
    let (from, to, grain) = (range.range.from, range.range.to, range.grain);
    let report: OpsReport = st.db(move |b| b.traffic.ops(from, to, grain, None)).await?;
    let step = grain.millis();
    let mut sections = Vec::new();
    for (role, title, headline, what) in ROLES {
        let pts: Vec<&OpsPoint> = report.points.iter().filter(|p| p.role == role).collect();
        // The headline per instance and bucket.
        let mut by_instance: BTreeMap<&str, BTreeMap<u64, f64>> = BTreeMap::new();
        for p in pts.iter().filter(|p| base(&p.metric) == headline) {
            *by_instance
                .entry(p.instance.as_str())
                .or_default()
                .entry(p.minute.max(0) as u64)
                .or_default() += p.sum as f64;
        }
        let lines: Vec<charts::Line> = by_instance
            .into_iter()
            .map(|(inst, v)| charts::Line {
                label: inst.to_owned(),
                points: zero_filled(from, to, step, v.into_iter()),
            })
            .collect();
        let chart = (!lines.is_empty()).then(|| {
            charts::time_chart_in(
                &format!(
                    "{title}: {what} per {} by instance, {}",
                    grain.name(),
                    range_title(&q, &range)
                ),
                "",
                from.as_millis() as f64,
                to.as_millis() as f64,
                range.offset_ms(to) as f64,
                &lines,
            )
        });
        let table = totals(pts.iter().copied());
        sections.push(html! {
            section id=(format!("ops-{role}")) {
                h2 { (title) }
                @if table.is_empty() {
                    p class="empty" { "No operational records from " (title.to_lowercase()) " in this range." }
                }
                @if let Some(svg) = chart { div class="chart" { (PreEscaped(svg)) } }
                @if !table.is_empty() {
                    table id=(format!("ops-{role}-metrics")) {
                        tr { th { "Instance" } th { "Metric" } th { "Total" } th { "Peak" } th { "Mean" } }
                        @for ((inst, metric), t) in table.iter().take(MAX_TABLE_ROWS) {
                            tr {
                                td { (inst) } td { code { (metric) } }
                                @if t.gauge {
                                    td {} td class="num" { (t.max) }
                                    td class="num" { (t.sum / t.samples.max(1)) }
                                } @else {
                                    td class="num" { (t.sum) } td {} td {}
                                }
                            }
                        }
                    }
                    @if table.len() > MAX_TABLE_ROWS {
                        p { small { (table.len() - MAX_TABLE_ROWS) " more rows in the CSV." } }
                    }
                }
                @if role == "probe" { (probe_methods(&report)) }
            }
        });
    }
    let body = html! {
        (range_picker_for("/ops", "/v1/ops", &q, &range, None))
        @if report.truncated {
            p class="warn" { "The range holds more rows than one page reads; choose a shorter one." }
        }
        @for s in &sections { (s) }
        p { small { "Each DNS server, edge and probe writes its own statistics into its log every interval (--ops-interval-secs); the collector takes them only from the instance whose certificate sent the file. Counters show what happened in the range, gauges their peak and mean level." } }
    };
    Ok(layout(&a, "/ops", "Operations", false, body))
}

/// The probes' results per POP, kind and method over the range.
fn probe_methods(report: &OpsReport) -> Markup {
    // (pop, kind, method) -> (samples, ok, value sum)
    let mut m: BTreeMap<(&str, &str, &str), (i64, i64, f64)> = BTreeMap::new();
    for p in &report.probe_methods {
        let e = m
            .entry((p.pop.as_str(), p.kind.as_str(), p.method.as_str()))
            .or_default();
        e.0 += p.samples;
        e.1 += p.ok;
        e.2 += p.mean * p.samples as f64;
    }
    html! {
        h3 { "Probe results by method" }
        @if m.is_empty() { p class="empty" { "No probe results in this range." } }
        @else {
            table id="ops-probe-methods" {
                tr { th { "POP" } th { "Kind" } th { "Method" } th { "Samples" } th { "Succeeded" } th { "Mean (ms or %)" } }
                @for ((pop, kind, method), (n, ok, sum)) in &m {
                    tr {
                        td { (pop) } td { (kind) } td { (method) } td class="num" { (n) }
                        td class="num" { (format!("{:.1} %", 100.0 * *ok as f64 / (*n).max(1) as f64)) }
                        td class="num" { (format!("{:.1}", sum / (*n).max(1) as f64)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(instance: &str, metric: &str, kind: &str, sum: i64, max: i64) -> OpsPoint {
        OpsPoint {
            minute: 0,
            role: "dns".into(),
            instance: instance.into(),
            metric: metric.into(),
            kind: kind.into(),
            sum,
            max,
            samples: 2,
        }
    }

    #[test]
    fn counters_add_up_and_gauges_keep_their_peak_and_mean() {
        let pts = [
            pt("a", "q_total{path=\"local\"}", "counter", 5, 3),
            pt("a", "q_total{path=\"local\"}", "counter", 7, 4),
            pt("a", "conns", "gauge", 10, 6),
            pt("a", "conns", "gauge", 2, 1),
            pt("b", "conns", "gauge", 4, 2),
        ];
        let t = totals(pts.iter());
        let q = &t[&("a", "q_total{path=\"local\"}")];
        assert_eq!((q.gauge, q.sum), (false, 12));
        let c = &t[&("a", "conns")];
        assert_eq!((c.gauge, c.max, c.sum / c.samples), (true, 6, 3));
        assert_eq!(t[&("b", "conns")].max, 2);
        assert_eq!(base("q_total{path=\"local\"}"), "q_total");
    }
}
