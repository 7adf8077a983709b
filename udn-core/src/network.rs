//! The compiled, immutable network snapshot: every name resolved to a dense id, every
//! table indexed for the hot path. Build one with [`Config::compile`](crate::Config::compile);
//! replace it atomically (swap an `Arc`) to reload.

use crate::config::{
    AllDownPolicy, Config, Location, PeerConfig, ServiceConfig, UncheckedPolicy, Weighting,
    canonical_hostname, is_valid_hostname,
};
use crate::error::{ConfigError, ConfigErrorKind, ConfigErrors};
use crate::net::{Cidr, mask};
use crate::netpolicy::TargetPolicy;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// The id as an index into its table.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

id_type!(
    /// Index of a server in [`Network::servers`].
    ServerId
);
id_type!(
    /// Index of a POP in [`Network::pops`].
    PopId
);
id_type!(
    /// Index of an origin site in [`Network::origins`].
    OriginId
);
id_type!(
    /// Index of a hostname in [`Network::hosts`].
    HostId
);
id_type!(
    /// Index of a service type in [`Network::services`].
    ServiceId
);
id_type!(
    /// Index of a customer in [`Network::customers`].
    CustomerId
);

/// The most targets one hostname may have (the decision ranks them on the stack).
pub const MAX_TARGETS: usize = 256;
/// The most addresses one answer may carry.
pub const MAX_ANSWERS: usize = 8;

/// Where a server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// In a POP.
    Pop(PopId),
    /// In a customer origin site.
    Origin(OriginId),
}

/// A server.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its unique name.
    pub name: String,
    /// Its published addresses.
    pub addrs: Vec<IpAddr>,
    /// Its POP or origin site.
    pub site: Site,
    /// The POP whose client latencies apply to it.
    pub latency_pop: Option<PopId>,
}

/// A POP.
#[derive(Debug, Clone)]
pub struct Pop {
    /// Short name.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// Network label.
    pub network: String,
    /// Its servers.
    pub servers: Vec<ServerId>,
}

/// A customer origin site.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Site name.
    pub name: String,
    /// The POP whose latencies stand in for it.
    pub pop: Option<PopId>,
    /// Where it is.
    pub location: Option<Location>,
    /// Its servers.
    pub servers: Vec<ServerId>,
}

/// A customer.
#[derive(Debug, Clone)]
pub struct Customer {
    /// Account name.
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
}

/// The kind of a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A GTM hostname (index into `Config::gtm`).
    Gtm(usize),
    /// A CDN hostname (index into `Config::cdn`).
    Cdn(usize),
}

/// A published target of a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The server.
    pub server: ServerId,
    /// Relative weight among near-equals.
    pub weight: u32,
    /// A hidden standby server (`standby_servers`): a candidate only while fewer than
    /// the hostname's `min_healthy` published targets are usable.
    pub standby: bool,
}

/// A hostname with its compiled routing policy.
#[derive(Debug, Clone)]
pub struct Host {
    /// Canonical name (lower case, no final dot).
    pub name: String,
    /// GTM or CDN.
    pub kind: HostKind,
    /// Owning customer.
    pub customer: CustomerId,
    /// Service type whose health counts.
    pub service: ServiceId,
    /// Answer TTL, seconds.
    pub ttl: u32,
    /// Addresses per answer (1..=8).
    pub answers: u8,
    /// All-down policy.
    pub all_down: AllDownPolicy,
    /// How unchecked targets count.
    pub unchecked: UncheckedPolicy,
    /// Hidden standby addresses (not health-checked; the all-down fallback).
    pub standby: Vec<IpAddr>,
    /// Usable published targets below which the standby servers become candidates.
    pub min_healthy: u32,
    /// Persistence duration, if on.
    pub persistence: Option<Duration>,
    /// Criteria weights.
    pub weighting: Weighting,
    /// Near-equal tolerance in score points.
    pub near_equal: f32,
    /// Published targets, then the standby servers (`standby == true`).
    pub targets: Vec<Target>,
}

/// What a static mapping points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticTarget {
    /// One server.
    Server(ServerId),
    /// Any server of a POP.
    Pop(PopId),
    /// Any server of an origin site.
    Origin(OriginId),
}

impl StaticTarget {
    /// Whether `server` (standing in `net`) is covered by this target.
    pub fn covers(self, net: &Network, server: ServerId) -> bool {
        match self {
            StaticTarget::Server(s) => s == server,
            StaticTarget::Pop(p) => net.servers[server.index()].site == Site::Pop(p),
            StaticTarget::Origin(o) => net.servers[server.index()].site == Site::Origin(o),
        }
    }
}

/// One compiled static mapping.
#[derive(Debug, Clone)]
pub struct StaticMapping {
    /// Client network.
    pub network: Cidr,
    /// Target.
    pub target: StaticTarget,
    /// Hostnames it applies to (empty: all).
    pub hosts: Vec<HostId>,
}

/// Longest-prefix-match table of static mappings: one hash map per prefix length
/// present, probed longest first.
#[derive(Debug, Clone, Default)]
pub struct StaticTable {
    mappings: Vec<StaticMapping>,
    /// (is_v6, len) in probe order (longest first), each with network -> mapping ids.
    levels: Vec<(bool, u8, HashMap<IpAddr, Vec<u32>>)>,
}

impl StaticTable {
    fn build(mappings: Vec<StaticMapping>) -> Self {
        let mut levels: Vec<(bool, u8, HashMap<IpAddr, Vec<u32>>)> = Vec::new();
        for (i, m) in mappings.iter().enumerate() {
            let v6 = m.network.addr().is_ipv6();
            let len = m.network.len();
            let pos = match levels.iter().position(|l| l.0 == v6 && l.1 == len) {
                Some(p) => p,
                None => {
                    levels.push((v6, len, HashMap::new()));
                    levels.len() - 1
                }
            };
            levels[pos]
                .2
                .entry(m.network.addr())
                .or_default()
                .push(i as u32);
        }
        levels.sort_by_key(|l| std::cmp::Reverse(l.1));
        StaticTable { mappings, levels }
    }

    /// The mappings, in configuration order.
    pub fn mappings(&self) -> &[StaticMapping] {
        &self.mappings
    }

    /// Calls `f` on each mapping whose network contains `client`, longest prefix first,
    /// until `f` returns `Some`.
    pub fn find<'a, T>(
        &'a self,
        client: IpAddr,
        mut f: impl FnMut(&'a StaticMapping) -> Option<T>,
    ) -> Option<T> {
        let v6 = client.is_ipv6();
        for (lv6, len, map) in &self.levels {
            if *lv6 != v6 {
                continue;
            }
            if let Some(ids) = map.get(&mask(client, *len)) {
                for &i in ids {
                    if let Some(t) = f(&self.mappings[i as usize]) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

/// A compiled service type.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name.
    pub name: String,
    /// How probes test it.
    pub spec: ServiceConfig,
}

/// Health rules in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRules {
    /// Consecutive successes to go up.
    pub up_after: u32,
    /// Consecutive failures to go down.
    pub down_after: u32,
    /// Age (by the receiving server's clock) beyond which a probe's result no longer
    /// counts.
    pub grace: Duration,
    /// Probes that must agree for a target to be down.
    pub quorum: u32,
    /// How long the last known state holds once every probe is silent.
    pub silent_hold: Duration,
}

/// Latency rules in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyRules {
    /// Sample age beyond which it is re-requested.
    pub max_age: Duration,
    /// RTT assumed when unknown, ms.
    pub default_ms: u32,
    /// Sample age beyond which it is dropped.
    pub expire: Duration,
}

/// The immutable compiled snapshot of a [`Config`].
#[derive(Debug, Clone)]
pub struct Network {
    /// The configuration it was compiled from.
    pub config: Config,
    /// Health rules.
    pub health: HealthRules,
    /// Latency rules.
    pub latency: LatencyRules,
    /// LOADP weights and the overload cut-off.
    pub load: crate::config::LoadConfig,
    /// Service types.
    pub services: Vec<Service>,
    /// POPs.
    pub pops: Vec<Pop>,
    /// Origin sites.
    pub origins: Vec<Origin>,
    /// Servers of POPs and origin sites.
    pub servers: Vec<Server>,
    /// Customers.
    pub customers: Vec<Customer>,
    /// Hostnames (GTM and CDN).
    pub hosts: Vec<Host>,
    /// Static mappings.
    pub statics: StaticTable,
    /// DNS peers.
    pub peers: Vec<PeerConfig>,
    /// Which addresses customer-given destinations may reach (`[security]`).
    pub target_policy: TargetPolicy,
    host_index: HashMap<String, HostId>,
    server_index: HashMap<String, ServerId>,
    pop_index: HashMap<String, PopId>,
    origin_index: HashMap<String, OriginId>,
    service_index: HashMap<String, ServiceId>,
    customer_index: HashMap<String, CustomerId>,
}

impl Network {
    /// The id of a hostname; case-insensitive, a final dot is ignored. Does not
    /// allocate for names up to 253 bytes.
    pub fn host_id(&self, name: &str) -> Option<HostId> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            let mut buf = [0u8; 253];
            let bytes = name.as_bytes();
            if bytes.len() > buf.len() {
                return None;
            }
            for (d, s) in buf.iter_mut().zip(bytes) {
                *d = s.to_ascii_lowercase();
            }
            let lower = std::str::from_utf8(&buf[..bytes.len()]).ok()?;
            self.host_index.get(lower).copied()
        } else {
            self.host_index.get(name).copied()
        }
    }

    /// A hostname by id.
    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.index()]
    }

    /// The id of a server by name.
    pub fn server_id(&self, name: &str) -> Option<ServerId> {
        self.server_index.get(name).copied()
    }

    /// The id of a POP by name.
    pub fn pop_id(&self, name: &str) -> Option<PopId> {
        self.pop_index.get(name).copied()
    }

    /// The id of an origin site by name.
    pub fn origin_id(&self, name: &str) -> Option<OriginId> {
        self.origin_index.get(name).copied()
    }

    /// The id of a service type by name.
    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        self.service_index.get(name).copied()
    }

    /// The id of a customer by name.
    pub fn customer_id(&self, name: &str) -> Option<CustomerId> {
        self.customer_index.get(name).copied()
    }

    /// The POP a server stands in, if it is an edge server.
    pub fn pop_of(&self, server: ServerId) -> Option<PopId> {
        match self.servers[server.index()].site {
            Site::Pop(p) => Some(p),
            Site::Origin(_) => None,
        }
    }

    /// The POP where answers naming `server` are counted (logs, the portal's GTM By
    /// Location, billing regions): its own POP, or for an origin server the POP that
    /// stands in for its site (`[[origins]] pop`), if the site has one.
    pub fn site_pop(&self, server: ServerId) -> Option<PopId> {
        match self.servers.get(server.index())?.site {
            Site::Pop(p) => Some(p),
            Site::Origin(o) => self.origins.get(o.index())?.pop,
        }
    }
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, kind: ConfigErrorKind) {
        self.0.push(ConfigError {
            path: path.into(),
            kind,
        });
    }
}

fn index_names<'a, T: Copy>(
    names: impl Iterator<Item = (String, &'a str)>,
    make: impl Fn(u32) -> T,
    errs: &mut Errors,
) -> HashMap<String, T> {
    let mut map = HashMap::new();
    for (i, (path, name)) in names.enumerate() {
        if name.is_empty() {
            errs.push(path, ConfigErrorKind::Empty);
        } else if map.insert(name.to_owned(), make(i as u32)).is_some() {
            errs.push(path, ConfigErrorKind::Duplicate(name.to_owned()));
        }
    }
    map
}

fn check_location(loc: &Location, path: &str, errs: &mut Errors) {
    if !(-90.0..=90.0).contains(&loc.lat) {
        errs.push(
            format!("{path}.lat"),
            ConfigErrorKind::OutOfRange {
                value: loc.lat.to_string(),
                allowed: "-90..=90",
            },
        );
    }
    if !(-180.0..=180.0).contains(&loc.lon) {
        errs.push(
            format!("{path}.lon"),
            ConfigErrorKind::OutOfRange {
                value: loc.lon.to_string(),
                allowed: "-180..=180",
            },
        );
    }
}

fn check_common_host(path: &str, hostname: &str, ttl: u32, answers: u8, errs: &mut Errors) {
    if !is_valid_hostname(hostname) {
        errs.push(
            format!("{path}.hostname"),
            ConfigErrorKind::BadHostname(hostname.to_owned()),
        );
    }
    if ttl > 604_800 {
        errs.push(
            format!("{path}.ttl"),
            ConfigErrorKind::OutOfRange {
                value: ttl.to_string(),
                allowed: "0..=604800",
            },
        );
    }
    if !(1..=MAX_ANSWERS as u8).contains(&answers) {
        errs.push(
            format!("{path}.answers"),
            ConfigErrorKind::OutOfRange {
                value: answers.to_string(),
                allowed: "1..=8",
            },
        );
    }
}

pub(crate) fn compile(cfg: &Config) -> Result<Network, ConfigErrors> {
    let mut errs = Errors(Vec::new());

    if cfg.health.up_after == 0 || cfg.health.up_after > 100 {
        errs.push(
            "health.up_after",
            ConfigErrorKind::OutOfRange {
                value: cfg.health.up_after.to_string(),
                allowed: "1..=100",
            },
        );
    }
    if cfg.health.down_after == 0 || cfg.health.down_after > 100 {
        errs.push(
            "health.down_after",
            ConfigErrorKind::OutOfRange {
                value: cfg.health.down_after.to_string(),
                allowed: "1..=100",
            },
        );
    }
    if cfg.health.grace_secs == 0 {
        errs.push(
            "health.grace_secs",
            ConfigErrorKind::OutOfRange {
                value: "0".into(),
                allowed: ">= 1",
            },
        );
    }
    if cfg.health.quorum == 0 || cfg.health.quorum as usize > crate::health::MAX_REPORTERS {
        errs.push(
            "health.quorum",
            ConfigErrorKind::OutOfRange {
                value: cfg.health.quorum.to_string(),
                allowed: "1..=32",
            },
        );
    }
    if cfg.health.silent_hold_secs > 86_400 {
        errs.push(
            "health.silent_hold_secs",
            ConfigErrorKind::OutOfRange {
                value: cfg.health.silent_hold_secs.to_string(),
                allowed: "0..=86400",
            },
        );
    }
    let l = &cfg.load;
    for (field, v) in [
        ("load.cpu", l.cpu),
        ("load.memory", l.memory),
        ("load.swap", l.swap),
        ("load.disk", l.disk),
    ] {
        if !(v.is_finite() && (0.0..=1000.0).contains(&v)) {
            errs.push(
                field,
                ConfigErrorKind::OutOfRange {
                    value: v.to_string(),
                    allowed: "finite, 0..=1000",
                },
            );
        }
    }
    if !(l.overload_percent.is_finite() && l.overload_percent > 0.0 && l.overload_percent <= 100.0)
    {
        errs.push(
            "load.overload_percent",
            ConfigErrorKind::OutOfRange {
                value: l.overload_percent.to_string(),
                allowed: "0 < x <= 100",
            },
        );
    }

    // Services.
    let service_index = index_names(
        cfg.services
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("services[{i}].name"), s.name.as_str())),
        ServiceId,
        &mut errs,
    );
    for (i, s) in cfg.services.iter().enumerate() {
        if s.interval_secs == 0 {
            errs.push(
                format!("services[{i}].interval_secs"),
                ConfigErrorKind::OutOfRange {
                    value: "0".into(),
                    allowed: ">= 1",
                },
            );
        }
        if s.timeout_ms == 0 {
            errs.push(
                format!("services[{i}].timeout_ms"),
                ConfigErrorKind::OutOfRange {
                    value: "0".into(),
                    allowed: ">= 1",
                },
            );
        }
        if s.kind == crate::config::ServiceKind::Ftp {
            // These go into FTP commands verbatim: a line break would end the command
            // and start another (`DELE`, `STOR`) on the customer's server.
            let fields = [
                ("path", Some(s.path.as_str())),
                ("ftp_user", s.ftp_user.as_deref()),
                ("ftp_password", s.ftp_password.as_deref()),
            ];
            for (field, v) in fields {
                if v.is_some_and(|v| v.chars().any(char::is_control)) {
                    errs.push(
                        format!("services[{i}].{field}"),
                        ConfigErrorKind::Invalid(
                            "control characters (CR, LF) are not allowed in FTP commands",
                        ),
                    );
                }
            }
            if !s.ftp_retrieve && (s.expect_content.is_some() || s.expect_regex.is_some()) {
                errs.push(
                    format!("services[{i}].ftp_retrieve"),
                    ConfigErrorKind::Invalid(
                        "expect_content and expect_regex need the file retrieved (ftp_retrieve = true)",
                    ),
                );
            }
        }
    }

    // POPs, origins and their servers.
    let pop_index = index_names(
        cfg.pops
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("pops[{i}].name"), p.name.as_str())),
        PopId,
        &mut errs,
    );
    let origin_index = index_names(
        cfg.origins
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("origins[{i}].name"), o.name.as_str())),
        OriginId,
        &mut errs,
    );
    let mut servers = Vec::new();
    let mut server_index = HashMap::new();
    let mut pops = Vec::new();
    let mut origins = Vec::new();
    let mut add_server = |path: String,
                          s: &crate::config::ServerConfig,
                          site: Site,
                          latency_pop: Option<PopId>,
                          errs: &mut Errors|
     -> Option<ServerId> {
        if s.addresses.is_empty() {
            errs.push(format!("{path}.addresses"), ConfigErrorKind::Empty);
        }
        if s.name.is_empty() {
            errs.push(format!("{path}.name"), ConfigErrorKind::Empty);
            return None;
        }
        let id = ServerId(servers.len() as u32);
        if server_index.insert(s.name.clone(), id).is_some() {
            errs.push(
                format!("{path}.name"),
                ConfigErrorKind::Duplicate(s.name.clone()),
            );
            return None;
        }
        servers.push(Server {
            name: s.name.clone(),
            addrs: s.addresses.clone(),
            site,
            latency_pop,
        });
        Some(id)
    };
    for (i, p) in cfg.pops.iter().enumerate() {
        check_location(&p.location, &format!("pops[{i}].location"), &mut errs);
        if p.servers.is_empty() {
            errs.push(format!("pops[{i}].servers"), ConfigErrorKind::Empty);
        }
        let pid = PopId(i as u32);
        let ids = p
            .servers
            .iter()
            .enumerate()
            .filter_map(|(j, s)| {
                add_server(
                    format!("pops[{i}].servers[{j}]"),
                    s,
                    Site::Pop(pid),
                    Some(pid),
                    &mut errs,
                )
            })
            .collect();
        pops.push(Pop {
            name: p.name.clone(),
            location: p.location,
            network: p.network.clone(),
            servers: ids,
        });
    }
    for (i, o) in cfg.origins.iter().enumerate() {
        if let Some(loc) = &o.location {
            check_location(loc, &format!("origins[{i}].location"), &mut errs);
        }
        let pop = match &o.pop {
            Some(name) => match pop_index.get(name) {
                Some(p) => Some(*p),
                None => {
                    errs.push(
                        format!("origins[{i}].pop"),
                        ConfigErrorKind::UnknownReference(name.clone()),
                    );
                    None
                }
            },
            None => None,
        };
        if o.servers.is_empty() {
            errs.push(format!("origins[{i}].servers"), ConfigErrorKind::Empty);
        }
        let oid = OriginId(i as u32);
        let ids = o
            .servers
            .iter()
            .enumerate()
            .filter_map(|(j, s)| {
                add_server(
                    format!("origins[{i}].servers[{j}]"),
                    s,
                    Site::Origin(oid),
                    pop,
                    &mut errs,
                )
            })
            .collect();
        origins.push(Origin {
            name: o.name.clone(),
            pop,
            location: o.location,
            servers: ids,
        });
    }

    // Customers.
    let customer_index = index_names(
        cfg.customers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("customers[{i}].name"), c.name.as_str())),
        CustomerId,
        &mut errs,
    );
    let customers = cfg
        .customers
        .iter()
        .map(|c| Customer {
            name: c.name.clone(),
            display_name: c.display_name.clone(),
        })
        .collect();

    let lookup_customer = |path: String, name: &str, errs: &mut Errors| {
        customer_index.get(name).copied().or_else(|| {
            errs.push(path, ConfigErrorKind::UnknownReference(name.to_owned()));
            None
        })
    };
    let lookup_service = |path: String, name: &str, errs: &mut Errors| {
        service_index.get(name).copied().or_else(|| {
            errs.push(path, ConfigErrorKind::UnknownReference(name.to_owned()));
            None
        })
    };

    // Hostnames.
    check_ownership(cfg, &mut errs);
    let mut hosts = Vec::new();
    let mut host_index = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    // A pending hostname (not yet verified) is validated and reserves its name, but is
    // not served.
    let mut add_host = |path: String, host: Host, pending: bool, errs: &mut Errors| {
        if !seen.insert(host.name.clone()) {
            errs.push(
                format!("{path}.hostname"),
                ConfigErrorKind::Duplicate(host.name.clone()),
            );
        } else if !pending {
            host_index.insert(host.name.clone(), HostId(hosts.len() as u32));
            hosts.push(host);
        }
    };
    for (i, g) in cfg.gtm.iter().enumerate() {
        let path = format!("gtm[{i}]");
        check_common_host(&path, &g.hostname, g.ttl, g.answers, &mut errs);
        let customer = lookup_customer(format!("{path}.customer"), &g.customer, &mut errs);
        let service = lookup_service(format!("{path}.service"), &g.service, &mut errs);
        if g.targets.is_empty() {
            errs.push(format!("{path}.targets"), ConfigErrorKind::Empty);
        }
        if g.targets.len() > MAX_TARGETS {
            errs.push(
                format!("{path}.targets"),
                ConfigErrorKind::OutOfRange {
                    value: g.targets.len().to_string(),
                    allowed: "at most 256 targets",
                },
            );
        }
        let mut targets = Vec::new();
        for (j, t) in g.targets.iter().enumerate() {
            match server_index.get(&t.server) {
                Some(s) => {
                    if targets.iter().any(|x: &Target| x.server == *s) {
                        errs.push(
                            format!("{path}.targets[{j}].server"),
                            ConfigErrorKind::Duplicate(t.server.clone()),
                        );
                    }
                    targets.push(Target {
                        server: *s,
                        weight: t.weight,
                        standby: false,
                    })
                }
                None => errs.push(
                    format!("{path}.targets[{j}].server"),
                    ConfigErrorKind::UnknownReference(t.server.clone()),
                ),
            }
        }
        for (j, name) in g.standby_servers.iter().enumerate() {
            let field = format!("{path}.standby_servers[{j}]");
            match server_index.get(name) {
                Some(s) if targets.iter().any(|x: &Target| x.server == *s) => {
                    errs.push(field, ConfigErrorKind::Duplicate(name.clone()))
                }
                Some(s) => targets.push(Target {
                    server: *s,
                    weight: 1,
                    standby: true,
                }),
                None => errs.push(field, ConfigErrorKind::UnknownReference(name.clone())),
            }
        }
        if targets.len() > MAX_TARGETS && g.targets.len() <= MAX_TARGETS {
            errs.push(
                format!("{path}.standby_servers"),
                ConfigErrorKind::OutOfRange {
                    value: targets.len().to_string(),
                    allowed: "at most 256 targets and standby servers together",
                },
            );
        }
        if g.min_healthy == 0 || g.min_healthy as usize > MAX_TARGETS {
            errs.push(
                format!("{path}.min_healthy"),
                ConfigErrorKind::OutOfRange {
                    value: g.min_healthy.to_string(),
                    allowed: "1..=256",
                },
            );
        }
        if let Some(p) = g.persistence
            && (p.secs == 0 || p.secs > 86_400 * 7)
        {
            errs.push(
                format!("{path}.persistence.secs"),
                ConfigErrorKind::OutOfRange {
                    value: p.secs.to_string(),
                    allowed: "1..=604800",
                },
            );
        }
        let w = g.weighting;
        for (field, v) in [
            ("latency", w.latency),
            ("load", w.load),
            ("response_time", w.response_time),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                errs.push(
                    format!("{path}.weighting.{field}"),
                    ConfigErrorKind::OutOfRange {
                        value: v.to_string(),
                        allowed: "finite and >= 0",
                    },
                );
            }
        }
        if !(g.near_equal.is_finite() && g.near_equal >= 0.0) {
            errs.push(
                format!("{path}.near_equal"),
                ConfigErrorKind::OutOfRange {
                    value: g.near_equal.to_string(),
                    allowed: "finite and >= 0",
                },
            );
        }
        if let (Some(customer), Some(service)) = (customer, service) {
            add_host(
                path,
                Host {
                    name: canonical_hostname(&g.hostname),
                    kind: HostKind::Gtm(i),
                    customer,
                    service,
                    ttl: g.ttl,
                    answers: g.answers,
                    all_down: g.all_down,
                    unchecked: g.unchecked,
                    standby: g.standby.clone(),
                    min_healthy: g.min_healthy,
                    persistence: g.persistence.map(|p| Duration::from_secs(p.secs)),
                    weighting: g.weighting,
                    near_equal: g.near_equal,
                    targets,
                },
                g.challenge.is_some(),
                &mut errs,
            );
        }
    }
    for (i, c) in cfg.cdn.iter().enumerate() {
        let path = format!("cdn[{i}]");
        check_common_host(&path, &c.hostname, c.ttl, c.answers, &mut errs);
        let customer = lookup_customer(format!("{path}.customer"), &c.customer, &mut errs);
        let service = lookup_service(format!("{path}.service"), &c.service, &mut errs);
        if c.origins.is_empty() {
            errs.push(format!("{path}.origins"), ConfigErrorKind::Empty);
        }
        for (j, o) in c.origins.iter().enumerate() {
            if !is_valid_hostname(o) {
                errs.push(
                    format!("{path}.origins[{j}]"),
                    ConfigErrorKind::BadHostname(o.clone()),
                );
            }
        }
        if c.origin_urls.len() > c.origins.len() {
            errs.push(
                format!("{path}.origin_urls"),
                ConfigErrorKind::OutOfRange {
                    value: c.origin_urls.len().to_string(),
                    allowed: "at most one URL per origin domain",
                },
            );
        }
        for (j, u) in c.origin_urls.iter().enumerate() {
            if let Err(allowed) = check_origin_url(u) {
                errs.push(
                    format!("{path}.origin_urls[{j}]"),
                    ConfigErrorKind::OutOfRange {
                        value: u.clone(),
                        allowed,
                    },
                );
            }
        }
        let mut pop_ids = Vec::new();
        for (j, p) in c.pops.iter().enumerate() {
            match pop_index.get(p) {
                Some(id) => pop_ids.push(*id),
                None => errs.push(
                    format!("{path}.pops[{j}]"),
                    ConfigErrorKind::UnknownReference(p.clone()),
                ),
            }
        }
        if pop_ids.is_empty() {
            pop_ids = (0..pops.len() as u32).map(PopId).collect();
        }
        let targets: Vec<Target> = pop_ids
            .iter()
            .flat_map(|p| pops[p.index()].servers.iter())
            .map(|s| Target {
                server: *s,
                weight: 1,
                standby: false,
            })
            .collect();
        if targets.is_empty() {
            errs.push(format!("{path}.pops"), ConfigErrorKind::Empty);
        }
        if targets.len() > MAX_TARGETS {
            errs.push(
                format!("{path}.pops"),
                ConfigErrorKind::OutOfRange {
                    value: targets.len().to_string(),
                    allowed: "at most 256 edge servers",
                },
            );
        }
        if let (Some(customer), Some(service)) = (customer, service) {
            add_host(
                path,
                Host {
                    name: canonical_hostname(&c.hostname),
                    kind: HostKind::Cdn(i),
                    customer,
                    service,
                    ttl: c.ttl,
                    answers: c.answers,
                    all_down: AllDownPolicy::All,
                    unchecked: UncheckedPolicy::Up,
                    standby: Vec::new(),
                    min_healthy: 1,
                    persistence: None,
                    weighting: Weighting {
                        latency: 1.0,
                        load: 0.5,
                        response_time: 0.0,
                    },
                    near_equal: default_cdn_near_equal(),
                    targets,
                },
                c.challenge.is_some(),
                &mut errs,
            );
        }
    }

    // Static mappings.
    let mut mappings = Vec::new();
    for (i, m) in cfg.static_mappings.iter().enumerate() {
        let path = format!("static_mappings[{i}]");
        let target = if let Some(s) = server_index.get(&m.target) {
            Some(StaticTarget::Server(*s))
        } else if let Some(p) = pop_index.get(&m.target) {
            Some(StaticTarget::Pop(*p))
        } else if let Some(o) = origin_index.get(&m.target) {
            Some(StaticTarget::Origin(*o))
        } else {
            errs.push(
                format!("{path}.target"),
                ConfigErrorKind::UnknownReference(m.target.clone()),
            );
            None
        };
        let mut hids = Vec::new();
        for (j, h) in m.hostnames.iter().enumerate() {
            match host_index.get(&canonical_hostname(h)) {
                Some(id) => hids.push(*id),
                None => errs.push(
                    format!("{path}.hostnames[{j}]"),
                    ConfigErrorKind::UnknownReference(h.clone()),
                ),
            }
        }
        if let Some(target) = target {
            mappings.push(StaticMapping {
                network: m.network,
                target,
                hosts: hids,
            });
        }
    }

    // DNS.
    let mut seen_apex = HashMap::new();
    for (i, z) in cfg.dns.zones.iter().enumerate() {
        if !is_valid_hostname(&z.apex) {
            errs.push(
                format!("dns.zones[{i}].apex"),
                ConfigErrorKind::BadHostname(z.apex.clone()),
            );
        } else if seen_apex.insert(canonical_hostname(&z.apex), i).is_some() {
            errs.push(
                format!("dns.zones[{i}].apex"),
                ConfigErrorKind::Duplicate(z.apex.clone()),
            );
        }
        for (j, ns) in z.ns.iter().enumerate() {
            if !is_valid_hostname(ns) {
                errs.push(
                    format!("dns.zones[{i}].ns[{j}]"),
                    ConfigErrorKind::BadHostname(ns.clone()),
                );
            }
        }
    }
    let _peer_index = index_names(
        cfg.dns
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("dns.peers[{i}].name"), p.name.as_str())),
        |i| i,
        &mut errs,
    );

    check_targets(cfg, &cfg.security.target_policy(), &mut errs);

    if !errs.0.is_empty() {
        return Err(ConfigErrors(errs.0));
    }

    Ok(Network {
        config: cfg.clone(),
        health: HealthRules {
            up_after: cfg.health.up_after,
            down_after: cfg.health.down_after,
            grace: Duration::from_secs(cfg.health.grace_secs),
            quorum: cfg.health.quorum,
            silent_hold: Duration::from_secs(cfg.health.silent_hold_secs),
        },
        load: cfg.load.clone(),
        latency: LatencyRules {
            max_age: Duration::from_secs(cfg.latency.max_age_secs),
            default_ms: cfg.latency.default_ms,
            expire: Duration::from_secs(cfg.latency.expire_secs),
        },
        services: cfg
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                spec: s.clone(),
            })
            .collect(),
        pops,
        origins,
        servers,
        customers,
        hosts,
        statics: StaticTable::build(mappings),
        peers: cfg.dns.peers.clone(),
        target_policy: cfg.security.target_policy(),
        host_index,
        server_index,
        pop_index,
        origin_index,
        service_index,
        customer_index,
    })
}

/// An origin URL: `http://` or `https://` with a host, or `ftp://[user[:password]@]host[:port][/path]`
/// (an FTP origin: a host, a port in range, no query or fragment, no control
/// characters that could end an FTP command line). `Err` names what is allowed.
pub fn check_origin_url(u: &str) -> Result<(), &'static str> {
    const ALLOWED: &str = "an http://, https:// or ftp://host[:port]/path URL";
    if let Some(rest) = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
    {
        return match rest.split(['/', '?', '#']).next() {
            Some(a) if !a.is_empty() => Ok(()),
            _ => Err(ALLOWED),
        };
    }
    let Some(rest) = u.strip_prefix("ftp://") else {
        return Err(ALLOWED);
    };
    if rest.bytes().any(|b| b < 0x20 || b == 0x7f) || rest.contains(['?', '#']) {
        return Err("an ftp:// URL without control characters, query or fragment");
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(ALLOWED),
        },
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err("an ftp:// URL with a host and a port from 1 to 65535");
    }
    Ok(())
}

/// Customer-given destinations (origin-site servers, which GTM hostnames publish and
/// probes test; standby addresses; CDN origin URLs and origin domains written as
/// addresses) must not lie in a range the policy refuses. POP servers are the
/// operator's own and are not checked.
fn check_targets(cfg: &Config, policy: &TargetPolicy, errs: &mut Errors) {
    let mut check = |path: String, ip: IpAddr| {
        if let Err(range) = policy.check(ip) {
            errs.push(
                path,
                ConfigErrorKind::DeniedTarget {
                    addr: ip.to_string(),
                    range,
                },
            );
        }
    };
    for (i, o) in cfg.origins.iter().enumerate() {
        for (j, s) in o.servers.iter().enumerate() {
            for (k, a) in s.addresses.iter().enumerate() {
                check(format!("origins[{i}].servers[{j}].addresses[{k}]"), *a);
            }
        }
    }
    for (i, g) in cfg.gtm.iter().enumerate() {
        for (k, a) in g.standby.iter().enumerate() {
            check(format!("gtm[{i}].standby[{k}]"), *a);
        }
    }
    for (i, c) in cfg.cdn.iter().enumerate() {
        for (j, u) in c.origin_urls.iter().enumerate() {
            if let Some(ip) = crate::netpolicy::url_ip(u) {
                check(format!("cdn[{i}].origin_urls[{j}]"), ip);
            }
        }
        for (j, o) in c.origins.iter().enumerate().skip(c.origin_urls.len()) {
            if let Ok(ip) = o.parse::<IpAddr>() {
                check(format!("cdn[{i}].origins[{j}]"), ip);
            }
        }
    }
}

/// Every GTM hostname, CDN hostname and origin domain has one owning customer: a name
/// another customer already uses is an error at the later use.
fn check_ownership(cfg: &Config, errs: &mut Errors) {
    let mut owner: HashMap<String, &str> = HashMap::new();
    let names = cfg
        .gtm
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("gtm[{i}].hostname"), &g.hostname, &g.customer))
        .chain(
            cfg.cdn
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("cdn[{i}].hostname"), &c.hostname, &c.customer)),
        )
        .chain(cfg.cdn.iter().enumerate().flat_map(|(i, c)| {
            c.origins
                .iter()
                .enumerate()
                .map(move |(j, o)| (format!("cdn[{i}].origins[{j}]"), o, &c.customer))
        }));
    for (path, name, customer) in names {
        let owned = owner
            .entry(canonical_hostname(name))
            .or_insert(customer.as_str());
        if *owned != customer.as_str() {
            errs.push(path, ConfigErrorKind::OwnedByOther(name.clone()));
        }
    }
}

fn default_cdn_near_equal() -> f32 {
    10.0
}
