//! The time range of a traffic series, as the API and the portal take it: absolute
//! `from`/`to` (RFC 3339, or a local date-time read in `tz`), an IANA time zone `tz`,
//! or the last `hours` back from now; then the grain the range is read at
//! ([`Grain::for_span`]) and the range widened to whole buckets of it, which is what the
//! answer states it covers.
//!
//! Time zones come from the IANA database compiled into the binary (jiff's
//! `tzdb-bundle-always`): the answer does not depend on the machine's
//! `/usr/share/zoneinfo`.

use super::{ApiError, FieldError};
use crate::store::{Grain, Range};
use serde::Deserialize;
use udn_core::Timestamp;

/// The longest range a series may cover (about five years of daily points).
pub const MAX_SPAN_DAYS: u64 = 1830;
/// The window when neither `from` nor `hours` is given.
pub const DEFAULT_HOURS: u64 = 24;
/// The longest time-zone name taken (the IANA names are at most 32 bytes).
const MAX_TZ_LEN: usize = 64;
/// The longest `from`/`to` text taken.
const MAX_TIME_LEN: usize = 64;

/// The range parameters of a series request (`?from=&to=&tz=&hours=`); an empty value is
/// the same as none (what an empty form field sends).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeParams {
    /// Start: RFC 3339 (`2026-12-01T00:00:00Z`, `2026-12-01T00:00:00+01:00`), or a local
    /// date-time (`2026-12-01T00:00`, what a `datetime-local` input sends) read in `tz`.
    pub from: Option<String>,
    /// End (exclusive), in the same forms; default now.
    pub to: Option<String>,
    /// IANA time zone (`Europe/Berlin`); default `UTC`.
    pub tz: Option<String>,
    /// Without `from`: the last `hours` hours before `to` (a preset).
    pub hours: Option<u64>,
}

/// A range resolved against the clock and aligned to its grain.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The range covered: whole buckets of `grain`.
    pub range: Range,
    /// The rollups it is read from.
    pub grain: Grain,
    /// The time zone the answer is written in.
    pub tz: jiff::tz::TimeZone,
    /// Its IANA name, as asked (`UTC` by default).
    pub tz_name: String,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Parses a time zone name from the bundled IANA database.
pub fn parse_tz(name: Option<&str>) -> Result<(jiff::tz::TimeZone, String), ApiError> {
    let name = name
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("UTC");
    if name.len() > MAX_TZ_LEN {
        return Err(bad("tz", "too long for a time zone name"));
    }
    match jiff::tz::TimeZone::get(name) {
        Ok(tz) => Ok((tz, name.to_owned())),
        Err(_) => Err(bad(
            "tz",
            format!("unknown time zone {name:?}; use an IANA name such as UTC or Europe/Berlin"),
        )),
    }
}

/// Parses one end of the range: RFC 3339 with an offset, else a local date-time in `tz`.
fn parse_time(field: &str, text: &str, tz: &jiff::tz::TimeZone) -> Result<Timestamp, ApiError> {
    if text.len() > MAX_TIME_LEN {
        return Err(bad(field, "too long for a time"));
    }
    let t = match text.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => match text.parse::<jiff::civil::DateTime>() {
            Ok(dt) => dt
                .to_zoned_datetime(tz.clone())
                .map_err(|e| bad(field, format!("{text:?} in the time zone: {e}")))?
                .timestamp(),
            Err(_) => {
                return Err(bad(
                    field,
                    format!(
                        "{text:?} is not an RFC 3339 time (2026-12-01T00:00:00Z) nor a local \
                         date-time (2026-12-01T00:00) in tz"
                    ),
                ));
            }
        },
    };
    let ms = t.as_millisecond();
    if ms < 0 {
        return Err(bad(field, "before 1970-01-01T00:00:00Z"));
    }
    Ok(Timestamp::from_millis(ms as u64))
}

/// Resolves `p` at `now`: `from`/`to` as given (`to` defaults to now, `from` to `hours`
/// (default 24) before `to`), checked (`from` before `to`, at most [`MAX_SPAN_DAYS`]),
/// then widened to whole buckets of the grain the span is read at. Every rejection is a
/// 400 naming the parameter.
pub fn resolve(p: &RangeParams, now: Timestamp) -> Result<Resolved, ApiError> {
    let (tz, tz_name) = parse_tz(non_empty(&p.tz))?;
    let max_hours = MAX_SPAN_DAYS * 24;
    if let Some(h) = p.hours
        && !(1..=max_hours).contains(&h)
    {
        return Err(bad("hours", format!("1 to {max_hours}")));
    }
    let to = match non_empty(&p.to) {
        Some(t) => parse_time("to", t, &tz)?,
        // Up to the last complete minute (the running one is still filling).
        None => Timestamp::from_millis(Grain::Minute.floor(now.as_millis())),
    };
    let from = match non_empty(&p.from) {
        Some(f) => parse_time("from", f, &tz)?,
        None => {
            let h = p.hours.unwrap_or(DEFAULT_HOURS);
            Timestamp::from_millis(to.as_millis().saturating_sub(h * 3_600_000))
        }
    };
    if from >= to {
        return Err(bad("to", "must be after from"));
    }
    let span = to.as_millis() - from.as_millis();
    if span > MAX_SPAN_DAYS * 86_400_000 {
        return Err(bad(
            "from",
            format!("the range is at most {MAX_SPAN_DAYS} days"),
        ));
    }
    let grain = Grain::for_span(span);
    Ok(Resolved {
        range: grain.align(Range { from, to }),
        grain,
        tz,
        tz_name,
    })
}

impl Resolved {
    fn zoned(&self, t: Timestamp) -> Option<jiff::ZonedDateTime> {
        let ts = jiff::Timestamp::from_millisecond(i64::try_from(t.as_millis()).ok()?).ok()?;
        Some(ts.to_zoned_datetime(self.tz.clone()))
    }

    /// `t` in RFC 3339 with the zone's offset at that instant (`2026-12-01T01:00:00+01:00`).
    pub fn rfc3339(&self, t: Timestamp) -> String {
        match self.zoned(t) {
            Some(z) => z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            None => t.as_millis().to_string(),
        }
    }

    /// `t` as a `datetime-local` input value in the zone (`2026-12-01T01:00`).
    pub fn local_input(&self, t: Timestamp) -> String {
        match self.zoned(t) {
            Some(z) => z.strftime("%Y-%m-%dT%H:%M").to_string(),
            None => String::new(),
        }
    }

    /// The zone's offset from UTC at `t`, in ms.
    pub fn offset_ms(&self, t: Timestamp) -> i64 {
        self.zoned(t)
            .map(|z| i64::from(z.offset().seconds()) * 1000)
            .unwrap_or(0)
    }
}

/// Escapes a CSV cell: a cell starting with `=`, `+`, `-`, `@` (or a tab or carriage
/// return) gets a leading `'` so a spreadsheet shows it as text instead of running it
/// as a formula; a cell with a comma, quote or line break is quoted.
///
/// ```
/// use udn_bins::api::timerange::csv_cell;
/// assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
/// assert_eq!(csv_cell("fra"), "fra");
/// assert_eq!(csv_cell("a,b"), "\"a,b\"");
/// ```
pub fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// A CSV document: a header line, then one line per row, CRLF line ends (RFC 4180).
pub fn csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
        let mut first = true;
        for c in cells {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&csv_cell(&c));
        }
        out.push_str("\r\n");
    };
    line(&mut out, &mut header.iter().map(|h| (*h).to_owned()));
    for r in rows {
        line(&mut out, &mut r.into_iter());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(from: &str, to: &str, tz: &str) -> RangeParams {
        RangeParams {
            from: Some(from.into()),
            to: Some(to.into()),
            tz: Some(tz.into()),
            hours: None,
        }
    }

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    #[test]
    fn absolute_local_and_rfc3339_agree() {
        let a = resolve(
            &p("2026-12-01T00:00", "2026-12-02T00:00", "Europe/Berlin"),
            NOW,
        )
        .unwrap();
        let b = resolve(
            &p("2026-11-30T23:00:00Z", "2026-12-01T23:00:00+00:00", "UTC"),
            NOW,
        )
        .unwrap();
        assert_eq!(a.range, b.range);
        assert_eq!(a.grain, Grain::Minute);
        assert_eq!(a.rfc3339(a.range.from), "2026-12-01T00:00:00+01:00");
        assert_eq!(a.local_input(a.range.to), "2026-12-02T00:00");
        assert_eq!(a.offset_ms(a.range.from), 3_600_000);
    }

    #[test]
    fn long_ranges_are_aligned_to_their_grain() {
        let r = resolve(
            &p("2026-01-01T10:30:00Z", "2026-03-01T10:30:00Z", "UTC"),
            NOW,
        )
        .unwrap();
        assert_eq!(r.grain, Grain::Hour);
        assert_eq!(r.rfc3339(r.range.from), "2026-01-01T10:00:00+00:00");
        assert_eq!(r.rfc3339(r.range.to), "2026-03-01T11:00:00+00:00");
        let r = resolve(
            &p("2025-01-01T10:30:00Z", "2026-01-01T10:30:00Z", "UTC"),
            NOW,
        )
        .unwrap();
        assert_eq!(r.grain, Grain::Day);
        assert_eq!(r.rfc3339(r.range.from), "2025-01-01T00:00:00+00:00");
        assert_eq!(r.rfc3339(r.range.to), "2026-01-02T00:00:00+00:00");
    }

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::BadParam(f) => f.field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let e = |q: RangeParams| field_of(resolve(&q, NOW).unwrap_err());
        assert_eq!(e(p("yesterday", "2026-12-02T00:00:00Z", "UTC")), "from");
        assert_eq!(e(p("2026-12-01T00:00:00Z", "2026-13-02", "UTC")), "to");
        assert_eq!(
            e(p(
                "2026-12-01T00:00:00Z",
                "2026-12-02T00:00:00Z",
                "Mars/Olympus"
            )),
            "tz"
        );
        assert_eq!(
            e(p("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z", "UTC")),
            "to"
        );
        assert_eq!(
            e(p("2010-12-02T00:00:00Z", "2026-12-01T00:00:00Z", "UTC")),
            "from"
        );
        assert_eq!(
            e(p("1969-12-31T00:00:00Z", "1970-01-02T00:00:00Z", "UTC")),
            "from"
        );
        let hours = RangeParams {
            hours: Some(0),
            ..RangeParams::default()
        };
        assert_eq!(e(hours), "hours");
    }

    #[test]
    fn presets_count_back_from_the_last_complete_minute() {
        let r = resolve(
            &RangeParams {
                hours: Some(1),
                ..RangeParams::default()
            },
            Timestamp::from_millis(1_800_000_030_000),
        )
        .unwrap();
        assert_eq!(r.range.to.as_millis(), 1_800_000_000_000);
        assert_eq!(r.range.from.as_millis(), 1_800_000_000_000 - 3_600_000);
        assert_eq!(r.tz_name, "UTC");
    }

    #[test]
    fn csv_cells_cannot_be_formulas() {
        for bad in ["=1+1", "+1", "-1", "@SUM(A1)"] {
            assert!(csv_cell(bad).starts_with('\''), "{bad}");
        }
        assert_eq!(
            csv(&["a", "b"], [vec!["x".into(), "y,z".into()]]),
            "a,b\r\nx,\"y,z\"\r\n"
        );
    }
}
