//! Page-check results: one [`Row`] per downloaded component and an [`Overall`] line.
//!
//! Columns: URL, server IP, ERR (0 = none, see [`PageError::code`]), HRC (HTTP status),
//! LEN (body bytes), CHK (CRC-32 of the body), STT (start offset from the page start),
//! DRT (DNS time), COT (TCP connect time), TLS (handshake time, reported separately),
//! DST (request to first byte), FNT (first byte to last byte) and END (end offset).
//! Times are kept in microseconds, so `END = STT + DRT + COT + TLS + DST + FNT` holds
//! exactly; they are printed in milliseconds.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use udn_probe::pagecheck::{Row, crc32};
//! use udn_probe::service::Phases;
//! let phases = Phases { dns: Duration::from_micros(1_200), connect: Duration::from_micros(300),
//!     wait: Duration::from_micros(5_000), receive: Duration::from_micros(500), ..Default::default() };
//! let body = b"<html></html>";
//! let row = Row::new("http://h.example/", None, None, Some(200), body, Duration::from_millis(2), phases);
//! assert_eq!(row.end_us, 2_000 + 7_000);
//! assert_eq!(row.chk, crc32(body));
//! assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
//! ```

use crate::service::{FailPhase, Phases};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

/// Why a component could not be fetched. [`PageError::code`] is the ERR column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "error", content = "detail")]
#[non_exhaustive]
pub enum PageError {
    /// The URL is not an absolute http(s) URL.
    #[error("bad url: {0}")]
    BadUrl(String),
    /// Name resolution failed.
    #[error("dns: {0}")]
    Dns(String),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(String),
    /// TLS handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Sending the request or reading the response failed.
    #[error("transfer: {0}")]
    Transfer(String),
    /// The fetch took longer than its time limit.
    #[error("timeout after {0} ms")]
    Timeout(u64),
    /// Not fetched: the host is not one the check may fetch from, or its address lies
    /// in a range customer destinations may not reach (the reason is given).
    #[error("refused: {0}")]
    Refused(String),
}

impl PageError {
    /// The ERR column: 1 bad URL, 2 DNS, 3 connect, 4 TLS, 5 transfer, 6 timeout,
    /// 7 refused.
    pub fn code(&self) -> u16 {
        match self {
            PageError::BadUrl(_) => 1,
            PageError::Dns(_) => 2,
            PageError::Connect(_) => 3,
            PageError::Tls(_) => 4,
            PageError::Transfer(_) => 5,
            PageError::Timeout(_) => 6,
            PageError::Refused(_) => 7,
        }
    }

    /// The service-test phase that failed.
    pub fn phase(&self) -> FailPhase {
        match self {
            PageError::BadUrl(_) => FailPhase::Request,
            PageError::Dns(_) => FailPhase::Dns,
            PageError::Connect(_) => FailPhase::Connect,
            PageError::Tls(_) => FailPhase::Tls,
            PageError::Transfer(_) => FailPhase::Transfer,
            PageError::Timeout(_) => FailPhase::Timeout,
            PageError::Refused(_) => FailPhase::Connect,
        }
    }
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as in zlib and `cksum -a crc32b`) of `data`: the CHK column.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// One downloaded component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// URL.
    pub url: String,
    /// Server IP connected to.
    pub ip: Option<IpAddr>,
    /// ERR: 0 = none, else [`PageError::code`].
    pub err: u16,
    /// The error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PageError>,
    /// HRC: HTTP status (0 when none).
    pub hrc: u16,
    /// LEN: body bytes.
    pub len: u64,
    /// CHK: CRC-32 of the body.
    pub chk: u32,
    /// STT: start offset from the page start, µs.
    pub stt_us: u64,
    /// DRT: DNS time, µs.
    pub drt_us: u64,
    /// COT: TCP connect time, µs.
    pub cot_us: u64,
    /// TLS handshake time, µs.
    pub tls_us: u64,
    /// DST: request sent to first byte, µs.
    pub dst_us: u64,
    /// FNT: first byte to last byte, µs.
    pub fnt_us: u64,
    /// END: end offset from the page start, µs (= STT + DRT + COT + TLS + DST + FNT).
    pub end_us: u64,
}

impl Row {
    /// A row from a fetch that started `start` after the page start.
    pub fn new(
        url: &str,
        ip: Option<IpAddr>,
        error: Option<PageError>,
        status: Option<u16>,
        body: &[u8],
        start: Duration,
        phases: Phases,
    ) -> Row {
        let stt = us(start);
        let (drt, cot, tls, dst, fnt) = (
            us(phases.dns),
            us(phases.connect),
            us(phases.tls),
            us(phases.wait),
            us(phases.receive),
        );
        Row {
            url: url.to_string(),
            ip,
            err: error.as_ref().map_or(0, PageError::code),
            error,
            hrc: status.unwrap_or(0),
            len: body.len() as u64,
            chk: crc32(body),
            stt_us: stt,
            drt_us: drt,
            cot_us: cot,
            tls_us: tls,
            dst_us: dst,
            fnt_us: fnt,
            end_us: stt
                .saturating_add(drt)
                .saturating_add(cot)
                .saturating_add(tls)
                .saturating_add(dst)
                .saturating_add(fnt),
        }
    }
}

/// The overall line of a page check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overall {
    /// The page URL.
    pub url: String,
    /// Which pass this is (1, or 2 for the warm repeat).
    pub pass: u8,
    /// Components downloaded, the page included.
    pub objects: usize,
    /// Of which failed (ERR != 0) or had an HTTP status >= 400.
    pub errors: usize,
    /// Body bytes in all.
    pub bytes: u64,
    /// Page time: the latest END, µs.
    pub total_us: u64,
    /// Sum of DNS times, µs.
    pub dns_us: u64,
    /// Sum of connect times, µs.
    pub connect_us: u64,
    /// Sum of TLS times, µs.
    pub tls_us: u64,
    /// Time of the page itself (its END), µs.
    pub page_us: u64,
}

/// A whole page check: the overall line and the rows (page first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageReport {
    /// The overall line.
    pub overall: Overall,
    /// One row per component, the page first.
    pub rows: Vec<Row>,
}

impl Overall {
    /// Sums up `rows` (the page's row first).
    pub fn from_rows(url: &str, pass: u8, rows: &[Row]) -> Overall {
        Overall {
            url: url.to_string(),
            pass,
            objects: rows.len(),
            errors: rows.iter().filter(|r| r.err != 0 || r.hrc >= 400).count(),
            bytes: rows.iter().map(|r| r.len).sum(),
            total_us: rows.iter().map(|r| r.end_us).max().unwrap_or(0),
            dns_us: rows.iter().map(|r| r.drt_us).sum(),
            connect_us: rows.iter().map(|r| r.cot_us).sum(),
            tls_us: rows.iter().map(|r| r.tls_us).sum(),
            page_us: rows.first().map_or(0, |r| r.end_us),
        }
    }
}

fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

impl PageReport {
    /// The report as text: the overall line, then a table of the rows.
    pub fn to_text(&self) -> String {
        let o = &self.overall;
        let mut s = format!(
            "PAGE {} pass={} objects={} errors={} bytes={} total={} ms page={} ms dns={} ms connect={} ms tls={} ms\n",
            o.url,
            o.pass,
            o.objects,
            o.errors,
            o.bytes,
            ms(o.total_us),
            ms(o.page_us),
            ms(o.dns_us),
            ms(o.connect_us),
            ms(o.tls_us)
        );
        let _ = writeln!(
            s,
            "{:>3} {:>3} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<15} URL",
            "ERR", "HRC", "LEN", "CHK", "STT", "DRT", "COT", "TLS", "DST", "FNT", "END", "IP"
        );
        for r in &self.rows {
            let ip = r.ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
            let _ = writeln!(
                s,
                "{:>3} {:>3} {:>8} {:08x} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<15} {}",
                r.err,
                r.hrc,
                r.len,
                r.chk,
                ms(r.stt_us),
                ms(r.drt_us),
                ms(r.cot_us),
                ms(r.tls_us),
                ms(r.dst_us),
                ms(r.fnt_us),
                ms(r.end_us),
                ip,
                r.url
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overall_and_text() {
        let p = Phases {
            connect: Duration::from_micros(100),
            wait: Duration::from_micros(2_000),
            receive: Duration::from_micros(50),
            ..Default::default()
        };
        let page = Row::new(
            "http://h/",
            None,
            None,
            Some(200),
            b"page",
            Duration::ZERO,
            p,
        );
        let img = Row::new(
            "http://h/a.gif",
            None,
            None,
            Some(404),
            b"",
            Duration::from_micros(2_150),
            p,
        );
        let bad = Row::new(
            "http://h/b.gif",
            None,
            Some(PageError::Connect("refused".into())),
            None,
            b"",
            Duration::from_micros(2_150),
            Phases::default(),
        );
        let o = Overall::from_rows("http://h/", 1, &[page.clone(), img.clone(), bad.clone()]);
        assert_eq!((o.objects, o.errors, o.bytes), (3, 2, 4));
        assert_eq!(o.total_us, 2_150 + 2_150);
        assert_eq!(o.page_us, 2_150);
        assert_eq!(bad.err, 3);
        let text = PageReport {
            overall: o,
            rows: vec![page, img, bad],
        }
        .to_text();
        assert!(
            text.starts_with("PAGE http://h/ pass=1 objects=3 errors=2 bytes=4 total=4.300 ms"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 5);
        assert!(text.contains("http://h/a.gif"));
    }

    proptest! {
        #[test]
        fn end_is_start_plus_phases(s in 0u64..1 << 40, d in 0u64..1 << 40, c in 0u64..1 << 40, t in 0u64..1 << 40, w in 0u64..1 << 40, r in 0u64..1 << 40) {
            let p = Phases { dns: Duration::from_micros(d), connect: Duration::from_micros(c), tls: Duration::from_micros(t), wait: Duration::from_micros(w), receive: Duration::from_micros(r) };
            let row = Row::new("http://h/", None, None, Some(200), b"", Duration::from_micros(s), p);
            prop_assert_eq!(row.end_us, row.stt_us + row.drt_us + row.cot_us + row.tls_us + row.dst_us + row.fnt_us);
        }

        #[test]
        fn crc_detects_single_byte_changes(data in prop::collection::vec(any::<u8>(), 1..200), i in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut other = data.clone();
            let i = i.index(data.len());
            other[i] ^= x;
            prop_assert_ne!(crc32(&data), crc32(&other));
        }
    }
}
