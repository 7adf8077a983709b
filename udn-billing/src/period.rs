//! Billing periods in UTC: hour, ISO week, month, quarter and year.
//!
//! Dates are computed with civil-calendar arithmetic (proleptic Gregorian, H. Hinnant's
//! `days_from_civil`); nothing here reads a clock or a time zone database.

use serde::{Deserialize, Serialize};
use std::fmt;
use udn_core::Timestamp;

use crate::error::Error;

const MS_PER_HOUR: u64 = 3_600_000;
const MS_PER_DAY: u64 = 86_400_000;
/// Length of a bandwidth sample bucket: 5 minutes.
pub const BUCKET_MS: u64 = 300_000;
/// The last supported instant: 10000-01-01T00:00:00Z.
const MAX_MS: u64 = 253_402_300_800_000;
/// The first supported instant: Monday 1970-01-05 (the first ISO week inside the epoch).
const MIN_MS: u64 = 4 * MS_PER_DAY;

/// How long a billing period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    /// A clock hour.
    Hour,
    /// An ISO 8601 week, Monday 00:00 to Monday 00:00.
    Week,
    /// A calendar month.
    Month,
    /// A calendar quarter (January, April, July, October).
    Quarter,
    /// A calendar year.
    Year,
}

impl PeriodKind {
    /// The lower-case name, for logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Hour => "hour",
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
            PeriodKind::Quarter => "quarter",
            PeriodKind::Year => "year",
        }
    }
}

impl fmt::Display for PeriodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A half-open UTC interval `[start, end)` of one [`PeriodKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period {
    /// Its kind.
    pub kind: PeriodKind,
    /// First instant inside.
    pub start: Timestamp,
    /// First instant after.
    pub end: Timestamp,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn ms_of_days(days: i64) -> u64 {
    (days.max(0) as u64) * MS_PER_DAY
}

/// Monday (day count) of ISO week 1 of ISO year `y`.
fn iso_week1_monday(y: i64) -> i64 {
    let jan4 = days_from_civil(y, 1, 4);
    jan4 - (jan4 + 3).rem_euclid(7)
}

/// The ISO (year, week) of a day count.
fn iso_week_of(days: i64) -> (i64, u32) {
    let monday = days - (days + 3).rem_euclid(7);
    let thursday = monday + 3;
    let (y, _, _) = civil_from_days(thursday);
    let week = (monday - iso_week1_monday(y)) / 7 + 1;
    (y, week as u32)
}

fn month_start(y: i64, m: u32) -> u64 {
    ms_of_days(days_from_civil(y, m, 1))
}

impl Period {
    /// The period of `kind` that contains `at`.
    ///
    /// # Examples
    ///
    /// ```
    /// use udn_billing::{Period, PeriodKind};
    /// use udn_core::Timestamp;
    /// // 2026-11-26T01:30:00Z
    /// let p = Period::containing(PeriodKind::Month, Timestamp::from_secs(1_795_656_600))?;
    /// assert_eq!(p.to_string(), "2026-11");
    /// assert_eq!(p.next()?.to_string(), "2026-12");
    /// # Ok::<(), udn_billing::Error>(())
    /// ```
    pub fn containing(kind: PeriodKind, at: Timestamp) -> Result<Period, Error> {
        let ms = at.as_millis();
        if !(MIN_MS..MAX_MS).contains(&ms) {
            return Err(Error::PeriodOutOfRange { ms });
        }
        let days = (ms / MS_PER_DAY) as i64;
        let (y, m, _) = civil_from_days(days);
        let (start, end) = match kind {
            PeriodKind::Hour => {
                let s = ms - ms % MS_PER_HOUR;
                (s, s + MS_PER_HOUR)
            }
            PeriodKind::Week => {
                let monday = days - (days + 3).rem_euclid(7);
                (ms_of_days(monday), ms_of_days(monday + 7))
            }
            PeriodKind::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (month_start(y, m), month_start(ny, nm))
            }
            PeriodKind::Quarter => {
                let qm = (m - 1) / 3 * 3 + 1;
                let (ny, nm) = if qm == 10 { (y + 1, 1) } else { (y, qm + 3) };
                (month_start(y, qm), month_start(ny, nm))
            }
            PeriodKind::Year => (month_start(y, 1), month_start(y + 1, 1)),
        };
        Ok(Period {
            kind,
            start: Timestamp::from_millis(start),
            end: Timestamp::from_millis(end),
        })
    }

    /// The period of the same kind that follows this one.
    pub fn next(&self) -> Result<Period, Error> {
        Period::containing(self.kind, self.end)
    }

    /// The period of the same kind that precedes this one.
    pub fn previous(&self) -> Result<Period, Error> {
        let ms = self.start.as_millis();
        if ms <= MIN_MS {
            return Err(Error::PeriodOutOfRange { ms });
        }
        Period::containing(self.kind, Timestamp::from_millis(ms - 1))
    }

    /// Length in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.end.as_millis() - self.start.as_millis()
    }

    /// Whether `at` lies inside.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }

    /// Parses a label: `2026` (year), `2026-Q4` (quarter), `2026-11` (month),
    /// `2026-W48` (ISO week) or `2026-11-26T13` (hour).
    ///
    /// # Examples
    ///
    /// ```
    /// use udn_billing::{Period, PeriodKind};
    /// let q = Period::parse("2026-Q4")?;
    /// assert_eq!(q.kind, PeriodKind::Quarter);
    /// assert_eq!(Period::parse("2026-10")?.start, q.start);
    /// assert_eq!(Period::parse("2026-W48")?.to_string(), "2026-W48");
    /// # Ok::<(), udn_billing::Error>(())
    /// ```
    pub fn parse(label: &str) -> Result<Period, Error> {
        let bad = || Error::BadPeriodLabel {
            label: label.to_owned(),
        };
        let num = |s: &str| -> Result<u32, Error> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 4 {
                return Err(bad());
            }
            s.parse::<u32>().map_err(|_| bad())
        };
        let parts: Vec<&str> = label.split('-').collect();
        let year = num(parts.first().copied().unwrap_or(""))?;
        if parts.first().map(|p| p.len()) != Some(4) || !(1970..=9999).contains(&year) {
            return Err(bad());
        }
        let y = i64::from(year);
        let (kind, start) = match parts.as_slice() {
            [_] => (PeriodKind::Year, month_start(y, 1)),
            [_, q] if q.starts_with('Q') => {
                let q = num(&q[1..])?;
                if !(1..=4).contains(&q) {
                    return Err(bad());
                }
                (PeriodKind::Quarter, month_start(y, (q - 1) * 3 + 1))
            }
            [_, w] if w.starts_with('W') => {
                let w = num(&w[1..])?;
                let monday = iso_week1_monday(y) + i64::from(w.max(1) - 1) * 7;
                if w == 0 || iso_week_of(monday) != (y, w) {
                    return Err(bad());
                }
                (PeriodKind::Week, ms_of_days(monday))
            }
            [_, m] => {
                let m = num(m)?;
                if !(1..=12).contains(&m) || m.to_string().len() > 2 {
                    return Err(bad());
                }
                (PeriodKind::Month, month_start(y, m))
            }
            [_, m, dh] => {
                let m = num(m)?;
                let (d, h) = dh.split_once('T').ok_or_else(bad)?;
                let (d, h) = (num(d)?, num(h)?);
                if !(1..=12).contains(&m) || h > 23 || d == 0 {
                    return Err(bad());
                }
                let days = days_from_civil(y, m, d);
                if civil_from_days(days) != (y, m, d) {
                    return Err(bad());
                }
                (
                    PeriodKind::Hour,
                    ms_of_days(days) + u64::from(h) * MS_PER_HOUR,
                )
            }
            _ => return Err(bad()),
        };
        let p = Period::containing(kind, Timestamp::from_millis(start)).map_err(|_| bad())?;
        if p.to_string() != label {
            return Err(bad());
        }
        Ok(p)
    }

    /// The number of 5-minute buckets whose start lies in `[from, to)`.
    pub fn buckets_between(from: Timestamp, to: Timestamp) -> u64 {
        first_bucket(to).saturating_sub(first_bucket(from))
    }
}

/// Index of the first 5-minute bucket starting at or after `at`.
pub(crate) fn first_bucket(at: Timestamp) -> u64 {
    at.as_millis().div_ceil(BUCKET_MS)
}

/// Renders a timestamp as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
///
/// # Examples
///
/// ```
/// use udn_core::Timestamp;
/// assert_eq!(udn_billing::period::format_utc(Timestamp::from_secs(0)), "1970-01-01T00:00:00Z");
/// ```
pub fn format_utc(at: Timestamp) -> String {
    let ms = at.as_millis();
    let (y, m, d) = civil_from_days((ms / MS_PER_DAY) as i64);
    let s = (ms % MS_PER_DAY) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Renders a timestamp as a date `YYYY-MM-DD` (UTC).
pub fn format_date(at: Timestamp) -> String {
    let (y, m, d) = civil_from_days((at.as_millis() / MS_PER_DAY) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.start.as_millis();
        let days = (ms / MS_PER_DAY) as i64;
        let (y, m, d) = civil_from_days(days);
        match self.kind {
            PeriodKind::Hour => write!(
                f,
                "{y:04}-{m:02}-{d:02}T{:02}",
                ms % MS_PER_DAY / MS_PER_HOUR
            ),
            PeriodKind::Week => {
                let (wy, w) = iso_week_of(days);
                write!(f, "{wy:04}-W{w:02}")
            }
            PeriodKind::Month => write!(f, "{y:04}-{m:02}"),
            PeriodKind::Quarter => write!(f, "{y:04}-Q{}", (m - 1) / 3 + 1),
            PeriodKind::Year => write!(f, "{y:04}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_four_centuries() {
        for z in (0..146_097 * 3).step_by(7) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        // 2026-11-26 is a Thursday in ISO week 48
        assert_eq!(iso_week_of(days_from_civil(2026, 11, 26)), (2026, 48));
        // 2027-01-01 (Friday) belongs to 2026-W53
        assert_eq!(iso_week_of(days_from_civil(2027, 1, 1)), (2026, 53));
    }

    #[test]
    fn month_lengths_include_leap_february() {
        let feb24 = Period::parse("2024-02").unwrap();
        assert_eq!(feb24.duration_ms(), 29 * MS_PER_DAY);
        let feb26 = Period::parse("2026-02").unwrap();
        assert_eq!(feb26.duration_ms(), 28 * MS_PER_DAY);
        let y2000 = Period::parse("2000").unwrap();
        assert_eq!(y2000.duration_ms(), 366 * MS_PER_DAY);
        assert_eq!(
            Period::parse("2026-Q1").unwrap().duration_ms(),
            90 * MS_PER_DAY
        );
    }

    #[test]
    fn labels_round_trip_and_bad_labels_fail() {
        for l in [
            "2026",
            "2026-Q4",
            "2026-11",
            "2026-W01",
            "2026-W53",
            "2026-11-26T13",
        ] {
            assert_eq!(Period::parse(l).unwrap().to_string(), l);
        }
        for l in [
            "",
            "26",
            "2026-13",
            "2026-Q5",
            "2026-W54",
            "2025-W53",
            "2026-02-30T01",
            "2026-11-26T24",
            "2026-1",
            "x",
            "2026-11-26",
            "1969",
            "2026-+1",
        ] {
            assert!(Period::parse(l).is_err(), "{l}");
        }
    }

    #[test]
    fn next_and_previous_tile_time() {
        for kind in [
            PeriodKind::Hour,
            PeriodKind::Week,
            PeriodKind::Month,
            PeriodKind::Quarter,
            PeriodKind::Year,
        ] {
            let p = Period::containing(kind, Timestamp::from_secs(1_795_656_600)).unwrap();
            let n = p.next().unwrap();
            assert_eq!(n.start, p.end);
            assert_eq!(n.previous().unwrap(), p);
            assert!(p.contains(Timestamp::from_secs(1_795_656_600)));
        }
    }
}
