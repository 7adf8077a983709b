//! Operational statistics: the roles' own [`OpsRecord`](udn_core::log::OpsRecord)s (DNS servers' queries,
//! answers by reason, relayed and dropped queries; edges' requests, fills, origin
//! traffic, memory and disk; probes' tests), folded per bucket, role, instance and
//! metric into `rollup_ops`, `rollup_ops_hour` and `rollup_ops_day` in each log file's
//! ingest transaction (exactly once per file, like the other rollups).
//!
//! The role and instance come from the file's header, which the collector has matched
//! against the sender's certificate: an instance can only write its own statistics.
//! Values are kept as integers (rounded): counters are counts, gauges are levels (bytes,
//! connections), each bucket holding the sum, the maximum and the number of samples, so
//! a counter reads as the sum and a gauge as the maximum or the mean. A file names at
//! most [`MAX_METRICS_PER_FILE`] metrics; further names count under [`OTHER_METRIC`].
//! Operator views read them with [`report`] (admins only: `GET /v1/ops`).

use std::collections::{BTreeMap, HashMap};

use super::{Grain, Param, Range, Result, Store, int, minute_of, text, to_i64};
use crate::migrate::Step;
use udn_core::log::{FileHeader, LogRecord, OpsKind, Role};

/// One operational table (`rollup_ops` + suffix).
macro_rules! ops_table {
    ($sfx:literal) => {
        concat!(
            "CREATE TABLE rollup_ops",
            $sfx,
            " (
    minute BIGINT NOT NULL, role TEXT NOT NULL, instance TEXT NOT NULL, metric TEXT NOT NULL,
    kind TEXT NOT NULL, value_sum BIGINT NOT NULL, value_max BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    PRIMARY KEY (minute, role, instance, metric)
);
"
        )
    };
}

/// The schema step that creates the operational tables, per minute, hour and day
/// (self-contained, so it can be renumbered).
pub const MIGRATION: Step = Step {
    version: 6,
    name: "ops_rollups",
    sql: concat!(ops_table!(""), ops_table!("_hour"), ops_table!("_day")),
};

/// Distinct metric names one file may add; more count under [`OTHER_METRIC`].
pub const MAX_METRICS_PER_FILE: usize = 1024;
/// Where the metrics beyond [`MAX_METRICS_PER_FILE`] are counted.
pub const OTHER_METRIC: &str = "other";
/// Rows one [`report`] returns at most (the range is cut at the bucket where it is
/// reached; the report says so).
pub const MAX_REPORT_ROWS: usize = 100_000;

/// One bucket of one metric of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpsAgg {
    /// Counter or gauge.
    pub gauge: bool,
    /// Sum of the values.
    pub sum: i64,
    /// Largest value.
    pub max: i64,
    /// Records that carried it.
    pub samples: i64,
}

/// (bucket start, metric) → aggregate, for one file's role and instance, at each grain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpsRollups {
    /// `dns`, `edge` or `probe`.
    pub role: String,
    /// The instance that wrote the file.
    pub instance: String,
    /// Per grain (minute, hour, day), per (bucket, metric).
    pub by_grain: [BTreeMap<(i64, String), OpsAgg>; 3],
}

impl OpsRollups {
    /// Folds a file's operational records under its header's role and instance.
    pub fn fold(header: &FileHeader, records: &[LogRecord]) -> OpsRollups {
        let role = match header.role {
            Role::Dns => "dns",
            Role::Edge => "edge",
            Role::Probe => "probe",
            Role::Control => "control",
        };
        let mut out = OpsRollups {
            role: role.into(),
            instance: header.instance.clone(),
            ..OpsRollups::default()
        };
        let mut names: HashMap<&str, ()> = HashMap::new();
        for r in records {
            let LogRecord::Ops(o) = r else { continue };
            let minute = minute_of(o.ts);
            for m in &o.metrics {
                let name =
                    if names.contains_key(m.name.as_str()) || names.len() < MAX_METRICS_PER_FILE {
                        names.insert(&m.name, ());
                        m.name.as_str()
                    } else {
                        OTHER_METRIC
                    };
                let v = m.value.round().clamp(0.0, udn_core::ops::MAX_VALUE) as i64;
                for (g, grain) in Grain::ALL.iter().enumerate() {
                    let bucket = to_i64(minute.max(0) as u64 / grain.millis() * grain.millis());
                    let a = out.by_grain[g]
                        .entry((bucket, name.to_owned()))
                        .or_default();
                    a.gauge = m.kind == OpsKind::Gauge;
                    a.sum = a.sum.saturating_add(v);
                    a.max = a.max.max(v);
                    a.samples += 1;
                }
            }
        }
        out
    }

    /// Whether the file had no operational records.
    pub fn is_empty(&self) -> bool {
        self.by_grain[0].is_empty()
    }
}

/// Rows per multi-row statement (8 parameters each).
const CHUNK: usize = 400;

fn upsert_sql(table: &str, rows: usize) -> String {
    let mut sql = format!(
        "INSERT INTO {table} (minute, role, instance, metric, kind, value_sum, value_max, \
         samples) VALUES "
    );
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..8 {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * 8 + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(&format!(
        " ON CONFLICT (minute, role, instance, metric) DO UPDATE SET \
         value_sum = {table}.value_sum + excluded.value_sum, \
         value_max = CASE WHEN excluded.value_max > {table}.value_max \
         THEN excluded.value_max ELSE {table}.value_max END, \
         samples = {table}.samples + excluded.samples"
    ));
    sql
}

/// Writes a file's operational rollups through `exec` (the backend's statement in its
/// ingest transaction).
pub fn write(r: &OpsRollups, exec: &mut dyn FnMut(&str, &[Param<'_>]) -> Result<()>) -> Result<()> {
    for (g, grain) in Grain::ALL.iter().enumerate() {
        let table = format!("rollup_ops{}", grain.suffix());
        let rows: Vec<_> = r.by_grain[g].iter().collect();
        for chunk in rows.chunks(CHUNK) {
            let mut params = Vec::with_capacity(chunk.len() * 8);
            for ((bucket, metric), a) in chunk {
                params.extend([
                    Param::Int(*bucket),
                    Param::Text(&r.role),
                    Param::Text(&r.instance),
                    Param::Text(metric),
                    Param::Text(if a.gauge { "gauge" } else { "counter" }),
                    Param::Int(a.sum),
                    Param::Int(a.max),
                    Param::Int(a.samples),
                ]);
            }
            exec(&upsert_sql(&table, chunk.len()), &params)?;
        }
    }
    Ok(())
}

/// One bucket of one metric of one instance, as [`report`] returns it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpsPoint {
    /// Bucket start (ms).
    pub minute: i64,
    /// `dns`, `edge` or `probe`.
    pub role: String,
    /// The instance.
    pub instance: String,
    /// The metric (series with labels).
    pub metric: String,
    /// `counter` or `gauge`.
    pub kind: String,
    /// Sum over the bucket (a counter's count).
    pub sum: i64,
    /// Largest value in the bucket (a gauge's peak).
    pub max: i64,
    /// Records in the bucket.
    pub samples: i64,
}

/// What [`Store::ops`] answers: the operational series and the
/// probes' per-method results of a range.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpsReport {
    /// The bucket size: `minute`, `hour` or `day`.
    pub grain: &'static str,
    /// Whether [`MAX_REPORT_ROWS`] cut the series.
    pub truncated: bool,
    /// Per bucket, role, instance and metric, in time order.
    pub points: Vec<OpsPoint>,
    /// The probes' results per bucket, POP, kind and method (`rollup_probe`).
    pub probe_methods: Vec<super::MethodPoint>,
}

/// The operational statistics of `range` at `grain`, of one role or all, in time order;
/// `truncated` when [`MAX_REPORT_ROWS`] cut it.
pub fn report<S: Store + ?Sized>(
    s: &mut S,
    range: Range,
    grain: Grain,
    role: Option<&str>,
) -> Result<(Vec<OpsPoint>, bool)> {
    let mut sql = format!(
        "SELECT minute, role, instance, metric, kind, CAST(SUM(value_sum) AS BIGINT), \
         CAST(MAX(value_max) AS BIGINT), CAST(SUM(samples) AS BIGINT) FROM rollup_ops{} \
         WHERE minute >= $1 AND minute < $2",
        grain.suffix()
    );
    let mut params = vec![
        Param::Int(to_i64(range.from.as_millis())),
        Param::Int(to_i64(range.to.as_millis())),
    ];
    if let Some(r) = role {
        sql.push_str(" AND role = $3");
        params.push(Param::Text(r));
    }
    sql.push_str(&format!(
        " GROUP BY minute, role, instance, metric, kind \
         ORDER BY minute, role, instance, metric LIMIT {}",
        MAX_REPORT_ROWS + 1
    ));
    let rows = s.select(&sql, &params)?;
    let truncated = rows.len() > MAX_REPORT_ROWS;
    let sql = sql.as_str();
    let points = rows
        .iter()
        .take(MAX_REPORT_ROWS)
        .map(|r| {
            Ok(OpsPoint {
                minute: int(r, 0, sql)?,
                role: text(r, 1, sql)?,
                instance: text(r, 2, sql)?,
                metric: text(r, 3, sql)?,
                kind: text(r, 4, sql)?,
                sum: int(r, 5, sql)?,
                max: int(r, 6, sql)?,
                samples: int(r, 7, sql)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((points, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use udn_core::Timestamp;
    use udn_core::log::{FORMAT_VERSION, MAGIC, OpsMetric, OpsRecord};

    #[test]
    fn folds_per_bucket_under_the_files_instance_and_caps_names() {
        let header = FileHeader {
            magic: MAGIC.into(),
            version: FORMAT_VERSION,
            file_id: "f".into(),
            role: Role::Dns,
            instance: "dns1".into(),
            opened_at: Timestamp::from_secs(0),
        };
        let rec = |secs: u64, metrics: Vec<(&str, OpsKind, f64)>| {
            LogRecord::Ops(OpsRecord {
                ts: Timestamp::from_secs(secs),
                metrics: metrics
                    .into_iter()
                    .map(|(n, kind, value)| OpsMetric {
                        name: n.into(),
                        kind,
                        value,
                    })
                    .collect(),
            })
        };
        let r = OpsRollups::fold(
            &header,
            &[
                rec(
                    60,
                    vec![("q", OpsKind::Counter, 5.0), ("c", OpsKind::Gauge, 3.0)],
                ),
                rec(
                    90,
                    vec![("q", OpsKind::Counter, 2.4), ("c", OpsKind::Gauge, 7.0)],
                ),
                rec(3700, vec![("q", OpsKind::Counter, 1.0)]),
            ],
        );
        assert_eq!((r.role.as_str(), r.instance.as_str()), ("dns", "dns1"));
        let q = r.by_grain[0][&(60_000, "q".to_string())];
        assert_eq!((q.sum, q.max, q.samples, q.gauge), (7, 5, 2, false));
        let c = r.by_grain[0][&(60_000, "c".to_string())];
        assert_eq!((c.sum, c.max, c.samples, c.gauge), (10, 7, 2, true));
        assert_eq!(r.by_grain[1][&(0, "q".to_string())].sum, 7);
        assert_eq!(r.by_grain[1][&(3_600_000, "q".to_string())].sum, 1);
        assert_eq!(r.by_grain[2][&(0, "q".to_string())].sum, 8);
        // Names beyond the cap count under `other`.
        let many: Vec<LogRecord> = (0..5)
            .map(|k| {
                LogRecord::Ops(OpsRecord {
                    ts: Timestamp::from_secs(60),
                    metrics: (0..250)
                        .map(|i| OpsMetric {
                            name: format!("m{k}_{i}"),
                            kind: OpsKind::Counter,
                            value: 1.0,
                        })
                        .collect(),
                })
            })
            .collect();
        let r = OpsRollups::fold(&header, &many);
        assert_eq!(r.by_grain[0].len(), MAX_METRICS_PER_FILE + 1);
        assert_eq!(
            r.by_grain[0][&(60_000, OTHER_METRIC.to_string())].sum,
            1250 - MAX_METRICS_PER_FILE as i64
        );
    }
}
