//! Service-test evaluation: an observed response and the service's spec give a
//! [`Verdict`]; a [`Hysteresis`] turns a stream of verdicts into up/down with
//! consecutive-failure and consecutive-success thresholds.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use udn_core::config::{Config, SAMPLE};
//! use udn_probe::service::{Observation, Phases, ServiceSpec, VerdictReason};
//!
//! let cfg = Config::from_toml(SAMPLE).unwrap();
//! let spec = ServiceSpec::from_config(&cfg.services[0]).unwrap(); // GET /health, "ok"
//! let obs = Observation {
//!     status: Some(200),
//!     headers: vec![],
//!     body_prefix: b"ok\n".to_vec(),
//!     phases: Phases { connect: Duration::from_millis(1), wait: Duration::from_millis(3), ..Default::default() },
//!     error: None,
//! };
//! let v = spec.evaluate(&obs);
//! assert!(v.ok);
//! assert_eq!(v.response_ms, 4.0);
//!
//! let v = spec.evaluate(&Observation { status: Some(503), ..obs });
//! assert_eq!(v.reason, VerdictReason::BadStatus(503));
//! ```

use crate::Error;
use serde::Serialize;
use std::time::Duration;
use udn_core::config::{ServiceConfig, ServiceKind};

/// Durations of the phases of one fetch or test. Absent phases are zero (a plain-HTTP
/// fetch has no TLS; a fetch by IP has no DNS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    /// Name resolution.
    pub dns: Duration,
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub tls: Duration,
    /// Request sent until the first byte of the response (server time).
    pub wait: Duration,
    /// First byte until the last byte of the body.
    pub receive: Duration,
}

impl Phases {
    /// The sum of the phases.
    pub fn total(&self) -> Duration {
        self.dns + self.connect + self.tls + self.wait + self.receive
    }
}

/// Where a test failed before it got a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPhase {
    /// Name resolution.
    Dns,
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// Sending the request or reading the response.
    Transfer,
    /// The whole test took longer than its time limit.
    Timeout,
    /// The request could not be formed (bad URL, bad name).
    Request,
}

impl FailPhase {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailPhase::Dns => "dns",
            FailPhase::Connect => "connect",
            FailPhase::Tls => "tls",
            FailPhase::Transfer => "transfer",
            FailPhase::Timeout => "timeout",
            FailPhase::Request => "request",
        }
    }
}

/// What a test observed. For TCP tests only the phases matter; for DNS tests `status`
/// is the response code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// HTTP status, or the DNS response code.
    pub status: Option<u16>,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The first bytes of the body (at most the spec's `expect_within`).
    pub body_prefix: Vec<u8>,
    /// Phase timings.
    pub phases: Phases,
    /// The failure, if the test got no response.
    pub error: Option<(FailPhase, String)>,
}

/// Why a verdict is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason", content = "detail")]
pub enum VerdictReason {
    /// Everything as expected.
    Ok,
    /// No response: failed in this phase.
    Failed(FailPhase),
    /// The status (or DNS response code) is not one of the valid ones.
    BadStatus(u16),
    /// The expected substring is not in the first `expect_within` bytes.
    ContentMissing,
    /// The expected regex does not match the first `expect_within` bytes.
    RegexMismatch,
    /// The test took longer than the time limit (ms).
    TooSlow(u64),
}

impl VerdictReason {
    /// A short name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            VerdictReason::Ok => "ok",
            VerdictReason::Failed(p) => p.as_str(),
            VerdictReason::BadStatus(_) => "bad-status",
            VerdictReason::ContentMissing => "content-missing",
            VerdictReason::RegexMismatch => "regex-mismatch",
            VerdictReason::TooSlow(_) => "too-slow",
        }
    }
}

/// The verdict of one test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether the service passed.
    pub ok: bool,
    /// Why.
    pub reason: VerdictReason,
    /// The response time reported with the metric (sum of the phases), ms.
    pub response_ms: f32,
}

/// A service's test, compiled from its [`ServiceConfig`].
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Protocol.
    pub kind: ServiceKind,
    /// Port (the protocol's default when not configured).
    pub port: u16,
    /// Path of HTTP(S) tests.
    pub path: String,
    /// Host header / SNI / DNS query name.
    pub host: Option<String>,
    /// Valid statuses (DNS: response codes); empty means 200..=399 for HTTP and
    /// NOERROR or NXDOMAIN for DNS.
    pub valid_status: Vec<u16>,
    /// Substring expected within the first `within` bytes.
    pub expect_content: Option<String>,
    /// Regex expected to match within the first `within` bytes.
    pub expect_regex: Option<regex::bytes::Regex>,
    /// How many body bytes are searched (and kept).
    pub within: usize,
    /// Interval between tests.
    pub interval: Duration,
    /// Time limit of a test.
    pub timeout: Duration,
    /// HTTPS: check the server's certificate (chain, validity, name).
    pub tls_verify: bool,
    /// HTTPS: extra trusted roots (PEM).
    pub tls_ca: Option<String>,
    /// FTP: the login (user, password).
    pub ftp_login: (String, String),
    /// FTP: retrieve the file (else only `SIZE` it).
    pub ftp_retrieve: bool,
}

/// The FTP login of tests without `ftp_user`.
pub const FTP_ANONYMOUS: (&str, &str) = ("anonymous", "udn-probe@");

/// The most memory one compiled `expect_regex` may take (its program and its lazy DFA
/// each); a larger one is refused, so no accepted regex can exhaust a probe.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The longest `expect_regex` source accepted, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;

/// Compiles an `expect_regex` as a probe does, within [`REGEX_SIZE_LIMIT`].
pub fn compile_expect_regex(r: &str) -> Result<regex::bytes::Regex, regex::Error> {
    if r.len() > MAX_REGEX_LEN {
        return Err(regex::Error::Syntax(format!(
            "longer than {MAX_REGEX_LEN} bytes"
        )));
    }
    regex::bytes::RegexBuilder::new(r)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Whether every probe would load `cfg`'s services: each one compiles with
/// [`ServiceSpec::from_config`], the probe's own load path. Returns the failures as
/// (`services[i].expect_regex`, reason) for the control plane to refuse with.
pub fn check_services(cfg: &udn_core::Config) -> Vec<(String, String)> {
    cfg.services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match ServiceSpec::from_config(s) {
            Ok(_) => None,
            Err(Error::BadRegex { source, .. }) => Some((
                format!("services[{i}].expect_regex"),
                format!("a probe cannot compile it: {source}"),
            )),
            Err(e) => Some((format!("services[{i}]"), e.to_string())),
        })
        .collect()
}

impl ServiceSpec {
    /// Compiles a service's config (its `expect_regex`, defaults for port and statuses).
    pub fn from_config(cfg: &ServiceConfig) -> Result<ServiceSpec, Error> {
        let expect_regex = match &cfg.expect_regex {
            Some(r) => Some(compile_expect_regex(r).map_err(|source| Error::BadRegex {
                service: cfg.name.clone(),
                source,
            })?),
            None => None,
        };
        let port = cfg.port.unwrap_or(match cfg.kind {
            ServiceKind::Http => 80,
            ServiceKind::Https => 443,
            ServiceKind::Tcp => 80,
            ServiceKind::Dns => 53,
            ServiceKind::Ftp => 21,
        });
        Ok(ServiceSpec {
            name: cfg.name.clone(),
            kind: cfg.kind,
            port,
            path: cfg.path.clone(),
            host: cfg.host.clone(),
            valid_status: cfg.expect_status.clone(),
            expect_content: cfg.expect_content.clone(),
            expect_regex,
            within: cfg.expect_within,
            interval: Duration::from_secs(cfg.interval_secs.max(1)),
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            tls_verify: cfg.tls_verify,
            tls_ca: cfg.tls_ca.clone(),
            ftp_login: match &cfg.ftp_user {
                Some(u) => (u.clone(), cfg.ftp_password.clone().unwrap_or_default()),
                None => (
                    FTP_ANONYMOUS.0.to_owned(),
                    cfg.ftp_password
                        .clone()
                        .unwrap_or_else(|| FTP_ANONYMOUS.1.to_owned()),
                ),
            },
            ftp_retrieve: cfg.ftp_retrieve,
        })
    }

    /// Whether `status` counts as success.
    pub fn status_ok(&self, status: u16) -> bool {
        if !self.valid_status.is_empty() {
            return self.valid_status.contains(&status);
        }
        match self.kind {
            ServiceKind::Dns => status == 0 || status == 3,
            _ => (200..400).contains(&status),
        }
    }

    /// Judges one observation. Checks run in order: transport failure, time limit,
    /// status, content, regex.
    pub fn evaluate(&self, obs: &Observation) -> Verdict {
        let total = obs.phases.total();
        let response_ms = (total.as_micros() as f64 / 1000.0) as f32;
        let reason = self.reason(obs, total);
        Verdict {
            ok: reason == VerdictReason::Ok,
            reason,
            response_ms,
        }
    }

    fn reason(&self, obs: &Observation, total: Duration) -> VerdictReason {
        if let Some((phase, _)) = &obs.error {
            return VerdictReason::Failed(*phase);
        }
        if total > self.timeout {
            return VerdictReason::TooSlow(self.timeout.as_millis() as u64);
        }
        match (self.kind, obs.status) {
            (ServiceKind::Tcp, _) => return VerdictReason::Ok,
            (_, None) => return VerdictReason::Failed(FailPhase::Transfer),
            (_, Some(s)) if !self.status_ok(s) => return VerdictReason::BadStatus(s),
            _ => {}
        }
        if self.kind == ServiceKind::Dns || (self.kind == ServiceKind::Ftp && !self.ftp_retrieve) {
            return VerdictReason::Ok;
        }
        let body = &obs.body_prefix[..obs.body_prefix.len().min(self.within)];
        if let Some(needle) = &self.expect_content
            && !contains(body, needle.as_bytes())
        {
            return VerdictReason::ContentMissing;
        }
        if let Some(re) = &self.expect_regex
            && !re.is_match(body)
        {
            return VerdictReason::RegexMismatch;
        }
        VerdictReason::Ok
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Up/down state of one (server, service) as the probe sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpDown {
    /// Not enough results yet.
    Unknown,
    /// Passing.
    Up,
    /// Failing.
    Down,
}

impl UpDown {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            UpDown::Unknown => "unknown",
            UpDown::Up => "up",
            UpDown::Down => "down",
        }
    }
}

/// Up after `up_after` consecutive successes, down after `down_after` consecutive
/// failures; a single result against the trend changes nothing.
///
/// # Examples
///
/// ```
/// use udn_probe::service::{Hysteresis, UpDown};
/// let mut h = Hysteresis::new(2, 3);
/// assert_eq!(h.handle(true), None);
/// assert_eq!(h.handle(true), Some(UpDown::Up));
/// assert_eq!(h.handle(false), None);
/// assert_eq!(h.handle(true), None); // one lost check: no flap
/// for _ in 0..2 { assert_eq!(h.handle(false), None); }
/// assert_eq!(h.handle(false), Some(UpDown::Down));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    up_after: u32,
    down_after: u32,
    state: UpDown,
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    /// A tracker in the `Unknown` state (thresholds of 0 count as 1).
    pub fn new(up_after: u32, down_after: u32) -> Self {
        Hysteresis {
            up_after: up_after.max(1),
            down_after: down_after.max(1),
            state: UpDown::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> UpDown {
        self.state
    }

    /// Takes one verdict; returns the new state when it changed.
    pub fn handle(&mut self, ok: bool) -> Option<UpDown> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = if self.successes >= self.up_after {
            UpDown::Up
        } else if self.failures >= self.down_after {
            UpDown::Down
        } else {
            self.state
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(kind: ServiceKind) -> ServiceSpec {
        let cfg: ServiceConfig = toml::from_str(&format!(
            "name = \"s\"\nkind = \"{}\"\nexpect_content = \"hello\"\nexpect_within = 16\ntimeout_ms = 100\nexpect_regex = \"v[0-9]+\"",
            match kind {
                ServiceKind::Http => "http",
                ServiceKind::Https => "https",
                ServiceKind::Tcp => "tcp",
                ServiceKind::Dns => "dns",
                ServiceKind::Ftp => "ftp",
            }
        ))
        .unwrap();
        ServiceSpec::from_config(&cfg).unwrap()
    }

    fn obs(status: u16, body: &[u8], ms: u64) -> Observation {
        Observation {
            status: Some(status),
            headers: vec![],
            body_prefix: body.to_vec(),
            phases: Phases {
                wait: Duration::from_millis(ms),
                ..Default::default()
            },
            error: None,
        }
    }

    #[test]
    fn verdicts() {
        let s = spec(ServiceKind::Http);
        assert_eq!(s.port, 80);
        assert_eq!(
            s.evaluate(&obs(200, b"hello v2", 5)).reason,
            VerdictReason::Ok
        );
        assert_eq!(
            s.evaluate(&obs(302, b"hello v2", 5)).reason,
            VerdictReason::Ok
        );
        assert_eq!(
            s.evaluate(&obs(404, b"hello v2", 5)).reason,
            VerdictReason::BadStatus(404)
        );
        assert_eq!(
            s.evaluate(&obs(200, b"0123456789abcdef hello v2", 5))
                .reason,
            VerdictReason::ContentMissing,
            "content beyond expect_within does not count"
        );
        assert_eq!(
            s.evaluate(&obs(200, b"hello vX", 5)).reason,
            VerdictReason::RegexMismatch
        );
        assert_eq!(
            s.evaluate(&obs(200, b"hello v2", 101)).reason,
            VerdictReason::TooSlow(100)
        );
        let mut failed = obs(200, b"", 1);
        failed.error = Some((FailPhase::Connect, "refused".into()));
        assert_eq!(
            s.evaluate(&failed).reason,
            VerdictReason::Failed(FailPhase::Connect)
        );
        let d = spec(ServiceKind::Dns);
        assert_eq!(d.port, 53);
        assert!(
            d.evaluate(&obs(3, b"", 1)).ok,
            "NXDOMAIN means the server answers"
        );
        assert!(!d.evaluate(&obs(5, b"", 1)).ok, "REFUSED is not service");
        assert!(spec(ServiceKind::Tcp).evaluate(&obs(0, b"", 1)).ok);
    }

    #[test]
    fn bad_regex_is_an_error() {
        let cfg: ServiceConfig = toml::from_str("name = \"s\"\nexpect_regex = \"(\"").unwrap();
        assert!(matches!(
            ServiceSpec::from_config(&cfg),
            Err(Error::BadRegex { .. })
        ));
    }

    proptest! {
        /// The state only changes after a full run of `up_after` successes or
        /// `down_after` failures, and then to the matching state.
        #[test]
        fn hysteresis_needs_full_runs(up in 1u32..5, down in 1u32..5, seq in prop::collection::vec(any::<bool>(), 0..60)) {
            let mut h = Hysteresis::new(up, down);
            let mut run_ok = 0u32;
            let mut run_fail = 0u32;
            for ok in seq {
                if ok { run_ok += 1; run_fail = 0 } else { run_fail += 1; run_ok = 0 }
                let before = h.state();
                let change = h.handle(ok);
                match change {
                    Some(UpDown::Up) => prop_assert!(ok && run_ok >= up && before != UpDown::Up),
                    Some(UpDown::Down) => prop_assert!(!ok && run_fail >= down && before != UpDown::Down),
                    Some(UpDown::Unknown) => prop_assert!(false, "never back to unknown"),
                    None => {
                        prop_assert!(!(ok && run_ok >= up && before != UpDown::Up));
                        prop_assert!(!(!ok && run_fail >= down && before != UpDown::Down));
                    }
                }
            }
        }

        /// Evaluation never panics, and `ok` agrees with the reason.
        #[test]
        fn evaluate_total(status in any::<u16>(), body in prop::collection::vec(any::<u8>(), 0..64), ms in 0u64..500) {
            for kind in [ServiceKind::Http, ServiceKind::Https, ServiceKind::Tcp, ServiceKind::Dns, ServiceKind::Ftp] {
                let v = spec(kind).evaluate(&obs(status, &body, ms));
                prop_assert_eq!(v.ok, v.reason == VerdictReason::Ok);
            }
        }
    }
}
