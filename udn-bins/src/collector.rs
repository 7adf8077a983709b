//! The log collector (part of `udn control`): receives complete log files over HTTP,
//! validates them and stores each exactly once.
//!
//! `POST /v1/logs`, body = the file's bytes, header `X-Udn-Sha256` = hex SHA-256 of the
//! body (optional `X-Udn-File-Name` names the quarantined copy). Answers:
//! - `200 {"status":"inserted","file_id":..,"rows":N}` after the rows committed;
//! - `200 {"status":"duplicate",...}` when the file was stored before ("already have it");
//! - `422 {"error":..,"quarantined":path}` for a corrupt, truncated or foreign file: it is
//!   saved under `<data-dir>/quarantine/` with a `.reason` file and never retried;
//! - `503 {"error":..}` when the store could not commit (full disk, database down): the
//!   distributor keeps the file and retries. Nothing is acknowledged that was not
//!   committed.
//!
//! Who may send (docs/logging.md, "Who may ship logs"): the collector is served over
//! mutual TLS and takes files only from an enrolled, unrevoked instance
//! ([`crate::pki::Peer`]): `401` without an instance certificate (or a revoked one),
//! `403` when the file's role is not the sender's role or a record is not of that role
//! (an edge ships HTTP records only, a DNS server DNS records, a probe probe records).
//! An HTTP record whose hostname the configuration does not give to the customer the
//! record names is not stored: it is quarantined (with its reason) and the file's other
//! records are stored.

use crate::pki::{Identity, InstanceRole, Peer, Revocations};
use crate::store::{Ingested, PreparedFile, Store};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use udn_core::log::{FileHeader, LogRecord, Role};
pub use udn_core::logfile::{Invalid, MAX_COUNT, sha256_hex};

/// Header carrying the hex SHA-256 of the body.
pub const CHECKSUM_HEADER: &str = "x-udn-sha256";
/// Header carrying the file's name on the sender (used for quarantined copies).
pub const FILE_NAME_HEADER: &str = "x-udn-file-name";
/// Files read and parsed at once (the rest wait for a slot).
pub const MAX_IN_FLIGHT: usize = 8;
/// Largest file accepted (the default rotation closes files at 16 MiB).
pub const MAX_FILE_BYTES: usize = 256 * 1024 * 1024;

/// Validates a complete log file ([`udn_core::logfile::parse_file`]: checksum, header,
/// every line a record, terminated by a newline). Returns the file ready to store.
///
/// # Examples
///
/// ```
/// use udn_bins::collector::{parse_file, sha256_hex, Invalid};
/// let body = b"{\"magic\":\"udn-log\",\"version\":1,\"file_id\":\"f1\",\"role\":\"probe\",\
///   \"instance\":\"p1\",\"opened_at\":0}\n";
/// let file = parse_file(body, &sha256_hex(body)).unwrap();
/// assert_eq!(file.header.file_id, "f1");
/// ```
pub fn parse_file(body: &[u8], claimed: &str) -> Result<PreparedFile, Invalid> {
    let f = udn_core::logfile::parse_file(body, claimed)?;
    Ok(PreparedFile::new(f.header, f.checksum, f.records))
}

/// `host` without a `:port` suffix (the Host header may carry one).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') =>
        {
            h
        }
        _ => host,
    }
}

/// Why a sender may not ship a file (answered 403, not quarantined: the file is fine,
/// the sender is not the one to send it).
pub fn sender_refusal(
    header: &FileHeader,
    records: &[LogRecord],
    sender_id: &Identity,
) -> Option<String> {
    let sender = sender_id.role;
    let file_role = match header.role {
        Role::Dns => InstanceRole::Dns,
        Role::Edge => InstanceRole::Edge,
        Role::Probe => InstanceRole::Probe,
        Role::Control => InstanceRole::Control,
    };
    if file_role != sender {
        return Some(format!(
            "a {sender} instance may ship only {sender} logs; this file's role is {file_role}"
        ));
    }
    for (i, r) in records.iter().enumerate() {
        let ok = matches!(
            (r, sender),
            (LogRecord::Http(_), InstanceRole::Edge)
                | (LogRecord::Dns(_), InstanceRole::Dns)
                | (LogRecord::Probe(_), InstanceRole::Probe)
                | (
                    LogRecord::Ops(_),
                    InstanceRole::Edge | InstanceRole::Dns | InstanceRole::Probe
                )
        );
        if !ok {
            let kind = match r {
                LogRecord::Http(_) => "an HTTP",
                LogRecord::Dns(_) => "a DNS",
                LogRecord::Probe(_) => "a probe",
                LogRecord::Ops(_) => "an operational",
            };
            return Some(format!(
                "line {}: {kind} record; a {sender} instance may not ship it",
                i + 2
            ));
        }
    }
    if header.instance != sender_id.name {
        return Some(format!(
            "instance {sender_id} may ship only its own logs; this file was written by \
             instance {:?}",
            header.instance
        ));
    }
    None
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Counters of the collector, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    files: Family<OutcomeLabel, Counter>,
    records: Counter,
    bytes: Counter,
}

impl Metrics {
    fn file(&self, outcome: &str) {
        self.files
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Registers the counters under `udn_collector_*`.
    pub fn register(self: &Arc<Self>, reg: &mut Registry) {
        let sub = reg.sub_registry_with_prefix("udn_collector");
        sub.register(
            "files",
            "Log files received, by outcome (inserted, duplicate, rejected, unavailable)",
            self.files.clone(),
        );
        sub.register("records", "Records stored", self.records.clone());
        sub.register("bytes", "Bytes of files stored", self.bytes.clone());
    }
}

/// The collector's shared state.
pub struct Collector {
    /// The writer: ingestion and pruning.
    store: Mutex<Box<dyn Store>>,
    /// Connections for queries (the portal's charts, the API's series), so a slow
    /// query never holds up ingestion; empty: queries share the writer.
    readers: udn_store::pool::Pool<Box<dyn Store>>,
    in_flight: Arc<tokio::sync::Semaphore>,
    quarantine: PathBuf,
    /// Hostname (canonical) -> owning customer, from the control plane's configuration;
    /// `None` until a configuration is known (every HTTP record is then quarantined).
    owners: RwLock<Option<HashMap<String, String>>>,
    /// Revoked instance certificates (checked on every request, not only at the
    /// handshake: a kept-alive connection of a revoked instance is refused too).
    pub revoked: Revocations,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// What the collector answered, as a value (status + JSON body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

impl Collector {
    /// A collector storing into `store`, quarantining into `<data_dir>/quarantine`.
    pub fn new(store: Box<dyn Store>, data_dir: &Path) -> Collector {
        Collector {
            store: Mutex::new(store),
            readers: Default::default(),
            quarantine: data_dir.join("quarantine"),
            metrics: Arc::new(Metrics::default()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            owners: RwLock::new(None),
            revoked: Revocations::default(),
        }
    }

    /// Serves queries from `readers` (further connections to the same store: on
    /// SQLite in WAL mode they read while the writer writes; on PostgreSQL each is its
    /// own session), so ingestion and queries never wait on one lock.
    pub fn with_readers(mut self, readers: Vec<Box<dyn Store>>) -> Collector {
        self.readers = udn_store::pool::Pool::new(readers);
        self
    }

    /// Uses `revoked` as the revocation list (the control plane's, kept in step with
    /// `<data-dir>/pki/instances.json`).
    pub fn with_revocations(mut self, revoked: Revocations) -> Collector {
        self.revoked = revoked;
        self
    }

    /// Takes the hostname owners (CDN and GTM hostnames, and CDN origin domains) from
    /// `cfg`; returns whether they changed.
    pub fn set_config(&self, cfg: &udn_core::Config) -> bool {
        let mut owners = HashMap::new();
        for c in &cfg.cdn {
            owners.insert(
                udn_core::config::canonical_hostname(&c.hostname),
                c.customer.clone(),
            );
            // The edges' fill records name the origin domain (one owner per origin
            // domain, as for hostnames).
            for o in &c.origins {
                owners
                    .entry(udn_core::config::canonical_hostname(o))
                    .or_insert_with(|| c.customer.clone());
            }
        }
        for g in &cfg.gtm {
            owners.insert(
                udn_core::config::canonical_hostname(&g.hostname),
                g.customer.clone(),
            );
        }
        let mut guard = self.owners.write().unwrap_or_else(|e| e.into_inner());
        let changed = guard.as_ref() != Some(&owners);
        *guard = Some(owners);
        changed
    }

    /// Splits HTTP records into those whose hostname the configuration gives to the
    /// customer the record names, and the others with the reason.
    fn check_owners(&self, records: Vec<LogRecord>) -> (Vec<LogRecord>, Vec<(LogRecord, String)>) {
        let guard = self.owners.read().unwrap_or_else(|e| e.into_inner());
        let mut keep = Vec::with_capacity(records.len());
        let mut bad = Vec::new();
        for r in records {
            let why = match (&r, guard.as_ref()) {
                // Billed to nobody (the edge's own /health, a request for a hostname
                // it does not serve): nothing to put on an invoice.
                (LogRecord::Http(h), _) if h.customer.is_none() => None,
                (LogRecord::Http(h), None) => Some(format!(
                    "hostname {:?}: the control plane has no configuration, so it is owned by nobody",
                    h.host
                )),
                (LogRecord::Http(h), Some(owners)) => {
                    let host = udn_core::config::canonical_hostname(strip_port(&h.host));
                    match (owners.get(&host), &h.customer) {
                        (None, _) => Some(format!(
                            "hostname {host:?} is not in the configuration (owned by nobody)"
                        )),
                        (Some(owner), Some(c)) if owner == c => None,
                        (Some(owner), claimed) => Some(format!(
                            "hostname {host:?} belongs to customer {owner:?}, the record names {claimed:?}"
                        )),
                    }
                }
                _ => None,
            };
            match why {
                Some(w) => bad.push((r, w)),
                None => keep.push(r),
            }
        }
        (keep, bad)
    }

    /// The writer connection: ingestion, pruning (blocking: call from a blocking
    /// context).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut dyn Store) -> T) -> T {
        let mut guard = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.as_mut())
    }

    /// A reader connection, for queries: the first free one, else the next in turn
    /// (waiting for it); the writer when there are no readers (blocking).
    pub fn with_reader<T>(&self, f: impl FnOnce(&mut dyn Store) -> T) -> T {
        match self.readers.get() {
            Some(mut reader) => f(reader.as_mut()),
            None => self.with_store(f),
        }
    }

    /// Handles one file received from `sender` (blocking: parses and writes to the
    /// database).
    pub fn receive(
        &self,
        body: &[u8],
        checksum: Option<&str>,
        name: Option<&str>,
        sender_id: &Identity,
    ) -> Answer {
        let sender = sender_id.role;
        let mut file = match parse_file(body, checksum.unwrap_or("")) {
            Ok(f) => f,
            Err(e) => return self.reject(body, name, &e),
        };
        if let Some(why) = sender_refusal(&file.header, &file.records, sender_id) {
            self.metrics.file("refused");
            tracing::warn!(file_id = %file.header.file_id, "refused log file: {why}");
            return Answer {
                status: 403,
                body: serde_json::json!({"error": why}),
            };
        }
        let mut quarantined = Vec::new();
        if sender == InstanceRole::Edge {
            let (keep, bad) = self.check_owners(std::mem::take(&mut file.records));
            if bad.is_empty() {
                file.records = keep;
            } else {
                quarantined = bad;
                file = PreparedFile::new(file.header, file.checksum, keep);
            }
        }
        let now = crate::logging::now();
        let result = self.with_store(|s| s.ingest(&file, now));
        let file_id = file.header.file_id.clone();
        match result {
            Ok(Ingested::Inserted { rows }) => {
                self.metrics.file("inserted");
                self.metrics.records.inc_by(rows);
                self.metrics.bytes.inc_by(body.len() as u64);
                tracing::info!(%file_id, rows, "stored log file");
                let mut answer =
                    serde_json::json!({"status": "inserted", "file_id": file_id, "rows": rows});
                if !quarantined.is_empty() {
                    let saved = self.save_quarantined_records(name, &quarantined);
                    tracing::warn!(%file_id, records = quarantined.len(), quarantined = ?saved,
                        first_reason = %quarantined[0].1, "quarantined records of a log file");
                    answer["quarantined_records"] = quarantined.len().into();
                    answer["quarantine_reason"] = quarantined[0].1.clone().into();
                    answer["quarantined"] = match saved {
                        Ok(p) => p.display().to_string().into(),
                        Err(e) => format!("not saved: {e}").into(),
                    };
                }
                Answer {
                    status: 200,
                    body: answer,
                }
            }
            Ok(Ingested::Duplicate { rows }) => {
                self.metrics.file("duplicate");
                tracing::info!(%file_id, "duplicate log file: already have it");
                Answer {
                    status: 200,
                    body: serde_json::json!({"status": "duplicate", "file_id": file_id, "rows": rows,
                        "message": "already have it"}),
                }
            }
            Ok(Ingested::Conflict { stored_checksum }) => self.reject(
                body,
                name,
                &Invalid::Conflict {
                    file_id,
                    stored: stored_checksum,
                    actual: file.checksum.clone(),
                },
            ),
            Err(e) => {
                self.metrics.file("unavailable");
                tracing::error!(%file_id, error = %e, full = e.is_full(), "store failed; not acknowledged");
                Answer {
                    status: 503,
                    body: serde_json::json!({"error": format!("store unavailable: {e}"),
                        "full": e.is_full()}),
                }
            }
        }
    }

    fn reject(&self, body: &[u8], name: Option<&str>, why: &Invalid) -> Answer {
        self.metrics.file("rejected");
        let saved = self.save_with_reason(body, name, &format!("{why}\n"));
        tracing::warn!(error = %why, quarantined = ?saved, "rejected log file");
        let quarantined = match &saved {
            Ok(p) => serde_json::Value::String(p.display().to_string()),
            Err(e) => serde_json::Value::String(format!("not saved: {e}")),
        };
        Answer {
            status: 422,
            body: serde_json::json!({"error": why.to_string(), "quarantined": quarantined}),
        }
    }

    /// Saves records refused one by one (their lines, and a `.reason` file with one
    /// reason per record) under the quarantine directory.
    fn save_quarantined_records(
        &self,
        name: Option<&str>,
        bad: &[(LogRecord, String)],
    ) -> std::io::Result<PathBuf> {
        let mut lines = String::new();
        let mut reasons = String::new();
        for (r, why) in bad {
            lines.push_str(&r.to_line());
            lines.push('\n');
            reasons.push_str(why);
            reasons.push('\n');
        }
        let name = format!("{}.records", name.unwrap_or("file"));
        self.save_with_reason(lines.as_bytes(), Some(&name), &reasons)
    }

    fn save_with_reason(
        &self,
        body: &[u8],
        name: Option<&str>,
        why: &str,
    ) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.quarantine)?;
        let clean: String = name
            .unwrap_or("file")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(120)
            .collect();
        let hash = sha256_hex(body);
        let base = format!(
            "{}-{}-{}",
            crate::logging::now().as_millis(),
            &hash[..12],
            clean
        );
        let path = self.quarantine.join(&base);
        std::fs::write(&path, body)?;
        std::fs::write(self.quarantine.join(format!("{base}.reason")), why)?;
        Ok(path)
    }
}

async fn post_logs(
    State(c): State<Arc<Collector>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let peer = peer.map(|p| p.0);
    let sender = match peer.as_ref().and_then(|p| p.identity.as_ref()) {
        Some(id) if c.revoked.is_revoked(&id.fingerprint) => {
            crate::pki::refusal_log(peer.as_ref(), &format!("instance {id} is revoked"));
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(
                    serde_json::json!({"error": format!("instance {id}'s certificate is revoked")}),
                ),
            )
                .into_response();
        }
        Some(id) => id.clone(),
        None => {
            crate::pki::refusal_log(peer.as_ref(), "log file without an instance certificate");
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "the collector takes log files only from \
                    enrolled instances: present a UDN instance certificate (udn control enroll ROLE NAME)"})),
            )
                .into_response();
        }
    };
    // Bounded memory: at most `MAX_IN_FLIGHT` bodies are read and parsed at once; other
    // senders wait (TCP back-pressure) instead of piling files up in memory.
    let Ok(_permit) = c.in_flight.clone().acquire_owned().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    };
    let body: Bytes = match axum::body::to_bytes(body, MAX_FILE_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            // Too large, or the sender went away mid-upload: nothing was stored.
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"error": format!("reading the body: {e}")})),
            )
                .into_response();
        }
    };
    let sum = headers
        .get(CHECKSUM_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let name = headers
        .get(FILE_NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = tokio::task::spawn_blocking(move || {
        c.receive(&body, sum.as_deref(), name.as_deref(), &sender)
    })
    .await
    .unwrap_or_else(|e| Answer {
        status: 503,
        body: serde_json::json!({"error": format!("collector task failed: {e}")}),
    });
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, axum::Json(answer.body)).into_response()
}

/// The collector's routes: `POST /v1/logs` (enrolled roles, each its own logs) and
/// `GET /v1/logs/counts` (role control only).
pub fn router(c: Arc<Collector>) -> Router {
    let counts = Router::new()
        .route("/v1/logs/counts", get(counts))
        .route_layer(axum::middleware::from_fn(|req, next| {
            crate::pki::require_roles(&[InstanceRole::Control], req, next)
        }));
    Router::new()
        .route("/v1/logs", post(post_logs))
        .merge(counts)
        .layer(DefaultBodyLimit::max(MAX_FILE_BYTES))
        .with_state(c)
}

async fn counts(State(c): State<Arc<Collector>>) -> Response {
    let r = tokio::task::spawn_blocking(move || c.with_reader(|s| s.counts())).await;
    match r {
        Ok(Ok(n)) => axum::Json(serde_json::json!({
            "files": n.files, "ledger_rows": n.ledger_rows, "http": n.http, "dns": n.dns,
            "probe": n.probe,
        }))
        .into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Renders a registry as Prometheus text.
pub fn render_metrics(reg: &Registry) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, reg) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
