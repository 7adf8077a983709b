//! The shared log-record schema and the rotation policy every role's logger uses.
//!
//! A log file is JSON Lines: the first line is a [`FileHeader`], every further line one
//! [`LogRecord`]. A file is *complete* (closed, synced, ready to ship) when the
//! [`RotationPolicy`] says so; only complete files are shipped to collectors, and a
//! collector inserts each file once, keyed by its `file_id`.

use crate::net::Cidr;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// Version of the log file format written in every header.
pub const FORMAT_VERSION: u32 = 1;

/// The role that wrote a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A DNS server (decision log).
    Dns,
    /// An edge (access log).
    Edge,
    /// A probe (probe results).
    Probe,
    /// The control plane (operational log).
    Control,
}

impl Role {
    /// A short name for file names, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dns => "dns",
            Role::Edge => "edge",
            Role::Probe => "probe",
            Role::Control => "control",
        }
    }
}

/// The first line of every log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeader {
    /// Always `"udn-log"`: tells our files from foreign ones.
    pub magic: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// Globally unique id of the file (the collector's idempotency key).
    pub file_id: String,
    /// Who wrote it.
    pub role: Role,
    /// Name of the writing instance (for example `fra-edge-1`).
    pub instance: String,
    /// When the file was opened.
    pub opened_at: Timestamp,
}

/// The magic string of a [`FileHeader`].
pub const MAGIC: &str = "udn-log";

/// A DNS decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// When it was answered.
    pub ts: Timestamp,
    /// Queried name (canonical).
    pub hostname: String,
    /// Query type (`A`, `AAAA`, ...).
    pub qtype: String,
    /// Address the query came from.
    pub client: IpAddr,
    /// EDNS Client Subnet, if sent.
    pub ecs: Option<Cidr>,
    /// Addresses answered.
    pub addrs: Vec<IpAddr>,
    /// Decision reason (`Reason::as_str`) or the response code for non-GTM answers.
    pub reason: String,
    /// POP of the chosen server (for an origin server, the POP that stands in for its
    /// site: [`crate::Network::site_pop`]), if any.
    pub pop: Option<String>,
    /// Owning customer, if the name is a customer's.
    pub customer: Option<String>,
    /// The DNS server that answered.
    pub server: String,
}

/// The [`HttpRecord::outcome`] of the record an edge writes per origin fill: its
/// `fill_bytes` are the origin's body bytes (cache fill); it carries no client bytes and
/// is not a client request.
pub const FILL_OUTCOME: &str = "fill";

/// An HTTP request served by an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRecord {
    /// When the response completed.
    pub ts: Timestamp,
    /// Owning customer, if known.
    pub customer: Option<String>,
    /// Host the request was for.
    pub host: String,
    /// Request path.
    pub path: String,
    /// HTTP method.
    pub method: String,
    /// Response status.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// Bytes fetched from the origin for this request (cache fill).
    pub fill_bytes: u64,
    /// Cache outcome (`hit`, `miss`, ...).
    pub outcome: String,
    /// Time to serve, microseconds.
    pub duration_us: u64,
    /// Client address.
    pub client: IpAddr,
    /// POP of the edge.
    pub pop: String,
}

/// A probe result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// When it was measured.
    pub ts: Timestamp,
    /// POP of the probe.
    pub pop: String,
    /// What was measured: `service`, `load`, `latency`.
    pub kind: String,
    /// The target (server name, or client network for latency).
    pub target: String,
    /// Method or service type (`http`, `tcp-connect`, `dns`, `icmp`, `passive`, ...).
    pub method: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// The measured value: ms for times, percent for load.
    pub value: f64,
    /// Extra detail (error text), empty if none.
    #[serde(default)]
    pub detail: String,
}

/// What an operational metric measures: a count of events since the previous record
/// of the same instance, or a level at the record's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpsKind {
    /// Events since the previous record (a counter's increase).
    Counter,
    /// A level now (connections open, bytes on disk).
    Gauge,
}

impl OpsKind {
    /// `counter` or `gauge`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpsKind::Counter => "counter",
            OpsKind::Gauge => "gauge",
        }
    }
}

/// One operational metric of an [`OpsRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpsMetric {
    /// The series, Prometheus style with its labels (`udn_dns_queries_total{path="relayed"}`).
    pub name: String,
    /// Counter increase or gauge level.
    pub kind: OpsKind,
    /// The increase or level.
    pub value: f64,
}

/// A role's operational statistics over one interval (queries, drops, fills, disk use,
/// tests...), written by the role itself into its own log ([`crate::ops`]); the
/// collector files them under the file's authenticated role and instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpsRecord {
    /// When the interval ended.
    pub ts: Timestamp,
    /// The metrics that changed (every gauge, the counters that moved).
    pub metrics: Vec<OpsMetric>,
}

/// One log line after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LogRecord {
    /// A DNS decision.
    Dns(DnsRecord),
    /// An HTTP request.
    Http(HttpRecord),
    /// A probe result.
    Probe(ProbeRecord),
    /// A role's operational statistics.
    Ops(OpsRecord),
}

impl LogRecord {
    /// The record's timestamp.
    pub fn ts(&self) -> Timestamp {
        match self {
            LogRecord::Dns(r) => r.ts,
            LogRecord::Http(r) => r.ts,
            LogRecord::Probe(r) => r.ts,
            LogRecord::Ops(r) => r.ts,
        }
    }

    /// Encodes the record as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes one JSON line.
    pub fn from_line(line: &str) -> Result<LogRecord, crate::Error> {
        LogRecord::from_slice(line.as_bytes())
    }

    /// Decodes one JSON line given as bytes.
    ///
    /// Lines as [`LogRecord::to_line`] writes them start with the `"type"` tag; those are
    /// decoded straight into the variant's struct, which is several times faster than
    /// serde's generic internally-tagged path (that buffers every field first). Any other
    /// field order takes the generic path, so both decode the same records.
    ///
    /// # Examples
    ///
    /// ```
    /// use udn_core::log::LogRecord;
    /// let line = br#"{"type":"probe","ts":5,"pop":"fra","kind":"latency","target":"t","method":"dns","ok":true,"value":1.5}"#;
    /// let rec = LogRecord::from_slice(line).unwrap();
    /// assert_eq!(rec.ts().as_millis(), 5);
    /// let reordered = br#"{"ts":5,"type":"probe","pop":"fra","kind":"latency","target":"t","method":"dns","ok":true,"value":1.5}"#;
    /// assert_eq!(LogRecord::from_slice(reordered).unwrap(), rec);
    /// ```
    pub fn from_slice(line: &[u8]) -> Result<LogRecord, crate::Error> {
        const HTTP: &[u8] = br#"{"type":"http","#;
        const DNS: &[u8] = br#"{"type":"dns","#;
        const PROBE: &[u8] = br#"{"type":"probe","#;
        // The variant structs ignore unknown keys, so the tag is simply skipped.
        if line.starts_with(HTTP) {
            Ok(LogRecord::Http(serde_json::from_slice(line)?))
        } else if line.starts_with(DNS) {
            Ok(LogRecord::Dns(serde_json::from_slice(line)?))
        } else if line.starts_with(PROBE) {
            Ok(LogRecord::Probe(serde_json::from_slice(line)?))
        } else {
            Ok(serde_json::from_slice(line)?)
        }
    }
}

/// When a log file is complete: at `max_bytes` or `max_age`, whichever comes first.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use udn_core::{Timestamp, log::RotationPolicy};
/// let p = RotationPolicy { max_bytes: 1000, max_age: Duration::from_secs(60) };
/// let opened = Timestamp::from_secs(0);
/// assert!(!p.is_complete(10, opened, Timestamp::from_secs(59)));
/// assert!(p.is_complete(10, opened, Timestamp::from_secs(60)));
/// assert!(p.is_complete(1000, opened, Timestamp::from_secs(1)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    /// Size at which a file is closed.
    pub max_bytes: u64,
    /// Age at which a file is closed.
    #[serde(with = "secs")]
    pub max_age: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_bytes: 16 * 1024 * 1024,
            max_age: Duration::from_secs(10),
        }
    }
}

impl RotationPolicy {
    /// Whether a file of `bytes` opened at `opened_at` is complete at `now`.
    pub fn is_complete(&self, bytes: u64, opened_at: Timestamp, now: Timestamp) -> bool {
        bytes >= self.max_bytes || now.since(opened_at) >= self.max_age
    }

    /// When a file opened at `opened_at` becomes complete by age (the writer's next
    /// deadline).
    pub fn deadline(&self, opened_at: Timestamp) -> Timestamp {
        opened_at.plus(self.max_age)
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// The shared logging API every role writes through. The binary implements it with the
/// rotating file writer (`udn_bins::logging`); tests can collect records in memory.
pub trait LogSink: Send + Sync {
    /// Appends one record. Must not block for long: writers buffer.
    fn record(&self, rec: LogRecord);
}

/// A sink that discards everything (for embedders that do not log).
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl LogSink for NullSink {
    fn record(&self, _rec: LogRecord) {}
}
