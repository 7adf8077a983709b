//! The configuration schema (TOML through serde) and its validation.
//!
//! A [`Config`] is what an operator writes; [`Config::compile`] validates it, reporting
//! *every* problem with the path of the field at fault, and turns it into the immutable,
//! indexed [`Network`](crate::Network) snapshot that the hot paths read.
//!
//! # Examples
//!
//! ```
//! let cfg = udn_core::Config::from_toml(udn_core::config::SAMPLE).unwrap();
//! let net = cfg.compile().unwrap();
//! assert!(net.host_id("www.shop.udn.example").is_some());
//! // Lookups ignore case and a final dot.
//! assert_eq!(net.host_id("WWW.Shop.UDN.example."), net.host_id("www.shop.udn.example"));
//!
//! let bad = udn_core::Config::from_toml(r#"
//! [[gtm]]
//! hostname = "www.a.example"
//! customer = "nobody"
//! service = "http"
//! targets = [{ server = "missing" }]
//! "#).unwrap();
//! let errs = bad.compile().unwrap_err().to_string();
//! assert!(errs.contains("gtm[0].customer"));
//! assert!(errs.contains("gtm[0].targets[0].server"));
//! ```

use crate::net::Cidr;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The sample network `udn demo`, the examples and the tests use: one customer with a
/// GTM hostname over two origin sites, a CDN hostname over three POPs.
pub const SAMPLE: &str = include_str!("sample.toml");

/// The whole configuration of a UDN network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Health-state rules shared by every target.
    #[serde(default)]
    pub health: HealthConfig,
    /// Latency-table rules.
    #[serde(default)]
    pub latency: LatencyConfig,
    /// LOADP rules: weights of the four load figures and the overload cut-off.
    #[serde(default)]
    pub load: LoadConfig,
    /// Persistence-table limits.
    #[serde(default)]
    pub persistence: PersistenceLimits,
    /// The DNS role: zones and the peer set.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Service types that probes test (for example `http`) and how they are tested.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Points of presence (edge locations).
    #[serde(default)]
    pub pops: Vec<PopConfig>,
    /// Customer origin sites.
    #[serde(default)]
    pub origins: Vec<OriginConfig>,
    /// Customers.
    #[serde(default)]
    pub customers: Vec<CustomerConfig>,
    /// GTM hostnames.
    #[serde(default)]
    pub gtm: Vec<GtmConfig>,
    /// CDN hostnames.
    #[serde(default)]
    pub cdn: Vec<CdnConfig>,
    /// Static mappings of client networks to targets.
    #[serde(default)]
    pub static_mappings: Vec<StaticMappingConfig>,
    /// Which addresses customer-given destinations may reach.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// Limits on customer-given destinations (origins, GTM addresses, monitor targets,
/// page checks): see [`crate::netpolicy`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Ranges a customer destination may reach although the deny list (loopback,
    /// private, link-local, CGNAT, multicast, metadata, reserved) refuses them, e.g.
    /// `["127.0.0.0/8"]` for a network whose origins run on loopback.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub allow_target_ranges: Vec<Cidr>,
}

impl SecurityConfig {
    /// The policy these settings give.
    pub fn target_policy(&self) -> crate::netpolicy::TargetPolicy {
        crate::netpolicy::TargetPolicy::new(self.allow_target_ranges.clone())
    }
}

/// Up/down hysteresis and staleness of service metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Consecutive successful checks before a down target counts as up.
    pub up_after: u32,
    /// Consecutive failed checks before an up target counts as down.
    pub down_after: u32,
    /// A probe's result received (by the DNS server's clock) more than this many
    /// seconds ago no longer counts.
    pub grace_secs: u64,
    /// How many probes (instance identities, one per POP) must agree that a target is
    /// down before it counts as down (at most the number of probes heard from lately).
    pub quorum: u32,
    /// When every probe has fallen silent, the last known state holds this many seconds
    /// past the grace; then the targets are stale (never up) and the all-down policy
    /// applies.
    pub silent_hold_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            up_after: 2,
            down_after: 3,
            grace_secs: 60,
            quorum: 2,
            silent_hold_secs: 120,
        }
    }
}

/// LOADP rules (see [`crate::load`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Weight of CPU use (1-minute load average per CPU).
    pub cpu: f32,
    /// Weight of memory use.
    pub memory: f32,
    /// Weight of swap use.
    pub swap: f32,
    /// Weight of disk use.
    pub disk: f32,
    /// A server whose load score is at or above this percentage is overloaded: not
    /// answered while another usable target is not.
    pub overload_percent: f32,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            cpu: 0.4,
            memory: 0.3,
            swap: 0.2,
            disk: 0.1,
            overload_percent: 90.0,
        }
    }
}

/// Latency-table rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// A sample older than this many seconds is still used but re-requested from the
    /// probes.
    pub max_age_secs: u64,
    /// The RTT assumed for a (client prefix, POP) pair with no sample, in ms.
    pub default_ms: u32,
    /// A sample older than this many seconds is dropped from the table.
    pub expire_secs: u64,
    /// Resolvers (networks) whose EDNS Client Subnet may choose what the probes measure:
    /// a query from one of them with ECS for a prefix asks for that prefix to be
    /// measured, through this resolver. ECS from any other resolver still shapes the
    /// answer but asks for no measurement.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ecs_measure_resolvers: Vec<Cidr>,
    /// After a measurement of a (client prefix, POP) is requested, how many seconds
    /// before it may be requested again if no result came.
    pub request_retry_secs: u64,
    /// The first back-off, seconds, after a probe reports a target unreachable; it
    /// doubles with each further report, up to `unreachable_max_backoff_secs`.
    pub unreachable_backoff_secs: u64,
    /// The longest back-off for an unreachable target, seconds.
    pub unreachable_max_backoff_secs: u64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            max_age_secs: 3600,
            default_ms: 150,
            expire_secs: 86_400,
            ecs_measure_resolvers: Vec::new(),
            request_retry_secs: 30,
            unreachable_backoff_secs: 60,
            unreachable_max_backoff_secs: 3600,
        }
    }
}

/// Limits of the persistence table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceLimits {
    /// The most (client prefix, hostname) entries held; a new client prefix is not
    /// pinned while the table is full (expired entries are swept every few seconds).
    pub max_entries: usize,
}

impl Default for PersistenceLimits {
    fn default() -> Self {
        PersistenceLimits {
            max_entries: 1_000_000,
        }
    }
}

/// The DNS role's zones and peers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Zones served authoritatively.
    pub zones: Vec<ZoneConfig>,
    /// The DNS servers of the network (`name` and `addr`), among which client prefixes
    /// are sharded by rendezvous hashing.
    pub peers: Vec<PeerConfig>,
}

/// One authoritative zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone apex, e.g. `udn.example`.
    pub apex: String,
    /// A BIND master file with the zone's static records (optional).
    #[serde(default)]
    pub file: Option<String>,
    /// Name servers of the zone (NS records), when there is no zone file.
    #[serde(default)]
    pub ns: Vec<String>,
    /// Responsible mailbox of the SOA, e.g. `hostmaster.udn.example`.
    #[serde(default)]
    pub admin: Option<String>,
    /// Negative-caching TTL (SOA minimum), seconds.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u32,
}

fn default_negative_ttl() -> u32 {
    60
}

/// A DNS server of the network, for sharding and proxying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Stable name (the rendezvous hash input).
    pub name: String,
    /// Where it listens for DNS (`ip:port`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub addr: std::net::SocketAddr,
}

/// How a service type is tested by the probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name referenced by hostnames, e.g. `http`.
    pub name: String,
    /// Protocol of the test.
    #[serde(default)]
    pub kind: ServiceKind,
    /// Port to test (default: the protocol's).
    #[serde(default)]
    pub port: Option<u16>,
    /// Path requested by HTTP(S) tests.
    #[serde(default = "default_path")]
    pub path: String,
    /// Host header / SNI / DNS query name used by the test.
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP status codes counted as success (empty: any 2xx or 3xx).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// A substring that must appear in the first `expect_within` bytes of the body.
    #[serde(default)]
    pub expect_content: Option<String>,
    /// A regular expression (Rust `regex` syntax) that must match within the first
    /// `expect_within` bytes of the body; checked by the probes, which report a bad
    /// pattern at start.
    #[serde(default)]
    pub expect_regex: Option<String>,
    /// How many bytes of the body are searched for `expect_content`.
    #[serde(default = "default_expect_within")]
    pub expect_within: usize,
    /// Seconds between tests.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// A test taking longer than this many ms fails.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// HTTPS tests check the server's certificate as a browser would (trusted chain,
    /// valid now, issued for `host`); `false` accepts any certificate (the handshake is
    /// still timed).
    #[serde(default = "default_tls_verify")]
    pub tls_verify: bool,
    /// Extra trusted roots for HTTPS tests (PEM certificates, e.g. a private CA), on top
    /// of the probe host's trust store.
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// FTP tests log in as this user (default `anonymous`).
    #[serde(default)]
    pub ftp_user: Option<String>,
    /// FTP tests' password (default: the anonymous convention, an e-mail-like
    /// `udn-probe@`). Sent in clear, as FTP does: use a monitoring account.
    #[serde(default)]
    pub ftp_password: Option<String>,
    /// FTP tests retrieve the file at `path` (its content checked like an HTTP body);
    /// `false`: they only ask its size (`SIZE`), for files too large to fetch.
    #[serde(default = "default_ftp_retrieve")]
    pub ftp_retrieve: bool,
}

fn default_ftp_retrieve() -> bool {
    true
}

fn default_tls_verify() -> bool {
    true
}
fn default_path() -> String {
    "/".into()
}
fn default_expect_within() -> usize {
    5120
}
fn default_interval() -> u64 {
    10
}
fn default_timeout() -> u64 {
    4000
}

/// Protocol of a service test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// HTTP GET.
    #[default]
    Http,
    /// HTTP GET over TLS.
    Https,
    /// A TCP connect.
    Tcp,
    /// A DNS query.
    Dns,
    /// An FTP session: log in, `SIZE` the file at `path`, retrieve it (passive mode).
    Ftp,
}

/// A geographic location.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
}

/// A point of presence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PopConfig {
    /// Short name, e.g. `fra`.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// Network label (a region or carrier name), for reports.
    #[serde(default)]
    pub network: String,
    /// Its servers.
    pub servers: Vec<ServerConfig>,
}

/// A customer origin site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Site name.
    pub name: String,
    /// The POP whose client latencies stand in for this site's (the nearest one).
    #[serde(default)]
    pub pop: Option<String>,
    /// Where it is (optional, for maps).
    #[serde(default)]
    pub location: Option<Location>,
    /// Its servers.
    pub servers: Vec<ServerConfig>,
}

/// A server: a health-checked unit with one or more addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Globally unique name.
    pub name: String,
    /// Its published addresses (IPv4 and/or IPv6).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub addresses: Vec<IpAddr>,
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    /// Short name (account id).
    pub name: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// What a hostname answers when every published target is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AllDownPolicy {
    /// The hidden standby addresses (or, with none configured, every published one).
    #[default]
    Standby,
    /// Every published address.
    All,
    /// No address (NODATA), so clients fail fast.
    None,
}

/// How targets whose first check has not completed count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum UncheckedPolicy {
    /// As up.
    #[default]
    Up,
    /// As down.
    Down,
}

/// Weights of the decision criteria. The score of a target is
/// `latency * rtt_ms + load * load_percent + response_time * response_ms`;
/// lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Weighting {
    /// Weight of client-to-POP latency (per ms).
    pub latency: f32,
    /// Weight of server load (per percent).
    pub load: f32,
    /// Weight of the service response time (per ms).
    pub response_time: f32,
}

impl Default for Weighting {
    fn default() -> Self {
        Weighting {
            latency: 1.0,
            load: 0.5,
            response_time: 0.2,
        }
    }
}

/// Persistence (stickiness) of a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    /// How long a client prefix stays on the target it was given, in seconds.
    pub secs: u64,
}

/// A target in a GTM pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A server name (of a POP or an origin site).
    pub server: String,
    /// Relative weight among near-equal targets (0 = only when nothing else is up).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}
fn default_ttl() -> u32 {
    30
}
fn default_answers() -> u8 {
    1
}
fn default_min_healthy() -> u32 {
    1
}
fn default_near_equal() -> f32 {
    10.0
}

/// A GTM hostname.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GtmConfig {
    /// The fully qualified hostname, e.g. `www.shop.example`.
    pub hostname: String,
    /// Owning customer.
    pub customer: String,
    /// Service type whose health decides availability.
    pub service: String,
    /// Answer TTL in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Addresses per answer, 1..=8, best first.
    #[serde(default = "default_answers")]
    pub answers: u8,
    /// What to answer when every published target is down.
    #[serde(default)]
    pub all_down: AllDownPolicy,
    /// How targets not yet checked count.
    #[serde(default)]
    pub unchecked: UncheckedPolicy,
    /// Hidden standby addresses (not health-checked), given out only when every
    /// published target is down and no standby server is up.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub standby: Vec<IpAddr>,
    /// Hidden standby servers (names of POP or origin servers, health-checked like the
    /// targets): added to the answer candidates while fewer than `min_healthy` published
    /// targets are usable; never given out while down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby_servers: Vec<String>,
    /// The minimum number of usable published targets below which the standby servers
    /// are added (1..=256; default 1: only when none is left).
    #[serde(default = "default_min_healthy")]
    pub min_healthy: u32,
    /// Persistence; absent means off.
    #[serde(default)]
    pub persistence: Option<PersistenceConfig>,
    /// Criteria weights.
    #[serde(default)]
    pub weighting: Weighting,
    /// Targets whose score is within this many score points of the best are
    /// near-equal and chosen among by weight.
    #[serde(default = "default_near_equal")]
    pub near_equal: f32,
    /// The published targets.
    pub targets: Vec<TargetConfig>,
    /// The DNS TXT challenge token of a hostname not yet proven to be its customer's:
    /// while set the hostname is pending (reserved for its customer, validated, but not
    /// served) until `_udn-challenge.<hostname>` has a TXT record with this value and
    /// the owner asks the control plane to check it. Absent: verified (live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// A CDN hostname: answered in DNS with the best edge POP, served by the edges from the
/// origin domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CdnConfig {
    /// The CDN hostname, e.g. `cdn.shop.example`.
    pub hostname: String,
    /// Owning customer.
    pub customer: String,
    /// Origin domains this hostname serves: the first is the default for virtual
    /// hosting; any of them may be named in the path
    /// (`http://cdn.shop.example/www.shop.example/a.gif`).
    pub origins: Vec<String>,
    /// Where each origin domain is fetched from (`http://127.0.0.10:8080`); defaults to
    /// `http://<origin domain>`.
    #[serde(default)]
    pub origin_urls: Vec<String>,
    /// Seconds after which cached content is revalidated with the origin
    /// (If-Modified-Since / If-None-Match) even if still fresh; absent = only HTTP rules.
    #[serde(default)]
    pub check_interval_secs: Option<u64>,
    /// Whether the edges may store responses that carry `Set-Cookie` (default false:
    /// such responses are passed through, never shared). When true they are stored
    /// *without* their `Set-Cookie` header: only the client whose request fetched the
    /// response receives the cookie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_set_cookie: bool,
    /// The POPs serving it (empty: all).
    #[serde(default)]
    pub pops: Vec<String>,
    /// Service type whose health decides an edge's availability.
    #[serde(default = "default_cdn_service")]
    pub service: String,
    /// Answer TTL in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Addresses per answer, 1..=8.
    #[serde(default = "default_answers")]
    pub answers: u8,
    /// The DNS TXT challenge token of a hostname not yet proven to be its customer's:
    /// while set the hostname is pending (reserved for its customer, validated, but not
    /// served) until `_udn-challenge.<hostname>` has a TXT record with this value and
    /// the owner asks the control plane to check it. Absent: verified (live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

fn default_cdn_service() -> String {
    "http".into()
}

/// A static mapping: clients in `network` get `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticMappingConfig {
    /// Client network (CIDR).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: Cidr,
    /// A server, POP or origin site name.
    pub target: String,
    /// Hostnames it applies to (empty: every hostname whose pool contains the target).
    #[serde(default)]
    pub hostnames: Vec<String>,
}

impl Config {
    /// Parses TOML text (unknown fields are errors).
    pub fn from_toml(text: &str) -> Result<Config, crate::Error> {
        Ok(toml::from_str(text)?)
    }

    /// The configuration the roles serve: this one without the pending (not yet
    /// verified) GTM and CDN hostnames, see [`GtmConfig::challenge`].
    pub fn live(&self) -> Config {
        let mut c = self.clone();
        c.gtm.retain(|g| g.challenge.is_none());
        c.cdn.retain(|h| h.challenge.is_none());
        c
    }

    /// Validates and compiles the configuration into an immutable snapshot.
    pub fn compile(&self) -> Result<crate::Network, crate::Error> {
        crate::network::compile(self).map_err(crate::Error::Invalid)
    }
}

/// Whether `name` is a syntactically valid DNS hostname (letters, digits, hyphens,
/// underscores; labels of 1..=63 bytes; 253 bytes in all; an optional final dot).
pub fn is_valid_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    })
}

/// The name of the TXT record that proves control of `hostname`.
pub fn challenge_name(hostname: &str) -> String {
    format!("_udn-challenge.{}", canonical_hostname(hostname))
}

/// The canonical form of a hostname: ASCII lower case, no final dot.
pub fn canonical_hostname(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}
