//! [`Authority`]: the compiled, immutable data the responder answers from: each zone's
//! SOA, NS and static records, and which names are GTM or CDN hostnames of the
//! [`Network`].
//!
//! It is built once per configuration snapshot and replaced as a whole on reload.

use crate::Error;
use crate::zonefile;
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::sync::Arc;
use udn_core::config::ZoneConfig;
use udn_core::{HostId, Network};

/// The records of one name, grouped by type.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// RRsets: (type, records), in first-seen order.
    pub rrsets: Vec<(RecordType, Vec<Record>)>,
    /// The GTM or CDN hostname answered at this name.
    pub host: Option<HostId>,
    /// A zone cut: NS records below the apex (a delegation).
    pub cut: bool,
}

impl Node {
    /// The RRset of `t`, if any.
    pub fn rrset(&self, t: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|(rt, _)| *rt == t)
            .map(|(_, r)| r.as_slice())
    }

    fn add(&mut self, rec: Record) {
        let t = rec.record_type();
        match self.rrsets.iter_mut().find(|(rt, _)| *rt == t) {
            Some((_, v)) => {
                if !v.iter().any(|r| r.data == rec.data) {
                    v.push(rec)
                }
            }
            None => self.rrsets.push((t, vec![rec])),
        }
    }
}

/// One authoritative zone.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The apex.
    pub apex: Name,
    /// The SOA record.
    pub soa: Record,
    /// The TTL of negative answers: min(SOA TTL, SOA minimum) (RFC 2308).
    pub negative_ttl: u32,
    /// Every name of the zone, with empty non-terminals as empty nodes.
    pub nodes: HashMap<Name, Node>,
    /// Whether the zone has delegations below the apex.
    pub has_cuts: bool,
    /// Whether the zone has wildcard names.
    pub has_wildcards: bool,
    /// Whether the zone has DNAME records (names below them are synthesized).
    pub has_dnames: bool,
}

impl Zone {
    fn new(apex: Name, soa: Record) -> Zone {
        let negative_ttl = match &soa.data {
            RData::SOA(s) => s.minimum.min(soa.ttl),
            _ => soa.ttl,
        };
        let mut nodes = HashMap::new();
        let mut apex_node = Node::default();
        apex_node.add(soa.clone());
        nodes.insert(apex.clone(), apex_node);
        Zone {
            apex,
            soa,
            negative_ttl,
            nodes,
            has_cuts: false,
            has_wildcards: false,
            has_dnames: false,
        }
    }

    fn node_mut(&mut self, name: &Name) -> &mut Node {
        // Create empty non-terminals between the apex and the name.
        let apex_labels = labels(&self.apex);
        let labels = labels(name);
        for n in (apex_labels + 1)..labels {
            let mut anc = name.trim_to(n);
            anc.set_fqdn(true);
            self.nodes.entry(anc).or_default();
        }
        self.nodes.entry(name.clone()).or_default()
    }

    /// The SOA to put in the authority section of a negative answer.
    pub fn negative_soa(&self) -> Record {
        let mut r = self.soa.clone();
        r.ttl = self.negative_ttl;
        r
    }

    /// The apex NS RRset.
    pub fn apex_ns(&self) -> &[Record] {
        self.nodes
            .get(&self.apex)
            .and_then(|n| n.rrset(RecordType::NS))
            .unwrap_or(&[])
    }
}

/// Every zone served, and the network whose hostnames they answer.
#[derive(Debug, Clone)]
pub struct Authority {
    zones: Vec<Zone>,
    net: Arc<Network>,
    unserved: Vec<String>,
    generation: u64,
    /// GTM/CDN hostnames not under a delegation, by their lower-case wire form, for the
    /// responder's fast path.
    gtm_wire: HashMap<Vec<u8>, HostId>,
}

/// Source of [`Authority::generation`] values.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn name_of(s: &str, what: &str) -> Result<Name, Error> {
    let mut n = Name::from_ascii(s).map_err(|_| Error::BadName {
        what: what.to_owned(),
        name: s.to_owned(),
    })?;
    n.set_fqdn(true);
    Ok(n)
}

impl Authority {
    /// Builds the authority of `net`'s configured zones. `files` holds the text of each
    /// zone file named in the configuration (`dns.zones[].file`), keyed by that path;
    /// the caller reads them (this crate never opens a file).
    ///
    /// A zone without a file gets a synthesized SOA (serial 1, the configured admin
    /// mailbox and negative TTL) and NS records from its `ns` list.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{collections::HashMap, sync::Arc};
    /// use udn_core::{Config, config::SAMPLE};
    /// let net = Arc::new(Config::from_toml(SAMPLE)?.compile()?);
    /// let auth = udn_dns::Authority::new(net, &HashMap::new())?;
    /// assert_eq!(auth.zones().len(), 1);
    /// assert_eq!(auth.zones()[0].apex.to_ascii(), "udn.example.");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(net: Arc<Network>, files: &HashMap<String, String>) -> Result<Authority, Error> {
        Self::new_in(net, files, None)
    }

    /// [`Authority::new`] with the zone-file paths relative to `base`: a zone file's
    /// `$INCLUDE`s are read from its own directory and may not leave it
    /// ([`zonefile::dir_loader`]). Without `base`, `$INCLUDE` is an error.
    pub fn new_in(
        net: Arc<Network>,
        files: &HashMap<String, String>,
        base: Option<&std::path::Path>,
    ) -> Result<Authority, Error> {
        let mut zones = Vec::new();
        for zc in &net.config.dns.zones {
            zones.push(build_zone(zc, files, base)?);
        }
        Self::finish(zones, net)
    }

    /// The authority of one BIND zone file alone, with no GTM network (the way
    /// `udn dns --zone FILE` runs). `origin` is the apex if the file does not set one
    /// with `$ORIGIN`.
    ///
    /// # Examples
    ///
    /// ```
    /// let text = "$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n@ NS ns1\nns1 A 192.0.2.1\n";
    /// let auth = udn_dns::Authority::from_zone_file(text, None)?;
    /// assert_eq!(auth.zones()[0].negative_ttl, 60);
    /// # Ok::<(), udn_dns::Error>(())
    /// ```
    pub fn from_zone_file(text: &str, origin: Option<&str>) -> Result<Authority, Error> {
        Self::from_zone_file_in(text, origin, None)
    }

    /// [`Authority::from_zone_file`] for a file in `dir`: its `$INCLUDE`s are read from
    /// `dir` and may not leave it ([`zonefile::dir_loader`]).
    pub fn from_zone_file_in(
        text: &str,
        origin: Option<&str>,
        dir: Option<&std::path::Path>,
    ) -> Result<Authority, Error> {
        let origin = origin.map(|o| name_of(o, "zone origin")).transpose()?;
        let parsed = match dir {
            Some(d) => zonefile::parse_with(text, origin.as_ref(), &mut zonefile::dir_loader(d)),
            None => zonefile::parse(text, origin.as_ref()),
        };
        let zf = parsed.map_err(|source| Error::ZoneFile {
            zone: origin
                .as_ref()
                .map(|o| o.to_ascii())
                .unwrap_or_else(|| "(zone file)".into()),
            source,
        })?;
        let zone = zone_from_records(zf.origin, zf.records)?;
        let net = udn_core::Config::default()
            .compile()
            .map_err(|_| Error::EmptyNetwork)?;
        Self::finish(vec![zone], Arc::new(net))
    }

    fn finish(mut zones: Vec<Zone>, net: Arc<Network>) -> Result<Authority, Error> {
        // Longest apex first, so the most specific zone wins.
        zones.sort_by_key(|z| std::cmp::Reverse(labels(&z.apex)));
        for w in zones.windows(2) {
            if w[0].apex == w[1].apex {
                return Err(Error::DuplicateZone(w[0].apex.to_ascii()));
            }
        }
        let mut unserved = Vec::new();
        for (i, h) in net.hosts.iter().enumerate() {
            let name = name_of(&h.name, "hostname")?;
            let Some(z) = zones.iter_mut().find(|z| z.apex.zone_of(&name)) else {
                unserved.push(h.name.clone());
                continue;
            };
            let apex = z.apex.clone();
            let node = z.node_mut(&name);
            if node
                .rrsets
                .iter()
                .any(|(t, _)| matches!(t, RecordType::A | RecordType::AAAA | RecordType::CNAME))
            {
                return Err(Error::Conflict {
                    zone: apex.to_ascii(),
                    name: h.name.clone(),
                });
            }
            node.host = Some(HostId(i as u32));
        }
        let mut gtm_wire = HashMap::new();
        for z in &zones {
            for (name, node) in &z.nodes {
                let Some(host) = node.host else { continue };
                let below_cut = (labels(&z.apex) + 1..labels(name)).any(|l| {
                    let mut anc = name.trim_to(l);
                    anc.set_fqdn(true);
                    z.nodes.get(&anc).is_some_and(|n| n.cut)
                });
                if !below_cut {
                    let mut wire = Vec::with_capacity(name.len() + 2);
                    for label in name.iter() {
                        wire.push(label.len() as u8);
                        wire.extend(label.iter().map(u8::to_ascii_lowercase));
                    }
                    wire.push(0);
                    gtm_wire.insert(wire, host);
                }
            }
        }
        Ok(Authority {
            zones,
            net,
            unserved,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            gtm_wire,
        })
    }

    /// A number unique to this authority among all built in the process, so caches of
    /// answers derived from it know when it was replaced.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The GTM/CDN hostname whose lower-case wire form is `wire` (labels with length
    /// bytes, ending in the root label), if it is answered without delegation.
    pub fn gtm_by_wire(&self, wire: &[u8]) -> Option<HostId> {
        self.gtm_wire.get(wire).copied()
    }

    /// The zones, most specific apex first.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The network snapshot whose hostnames this authority answers.
    pub fn network(&self) -> &Arc<Network> {
        &self.net
    }

    /// Hostnames of the network that lie in none of the zones (not answered).
    pub fn unserved_hosts(&self) -> &[String] {
        &self.unserved
    }

    /// The zone `name` belongs to (the longest matching apex).
    pub fn zone_for(&self, name: &Name) -> Option<&Zone> {
        self.zones.iter().find(|z| z.apex.zone_of(name))
    }
}

fn build_zone(
    zc: &ZoneConfig,
    files: &HashMap<String, String>,
    base: Option<&std::path::Path>,
) -> Result<Zone, Error> {
    let apex = name_of(&zc.apex, "zone apex")?;
    if let Some(path) = &zc.file {
        let text = files.get(path).ok_or_else(|| Error::MissingZoneFile {
            zone: zc.apex.clone(),
            path: path.clone(),
        })?;
        let parsed = match base {
            Some(b) => {
                let full = b.join(path);
                let dir = full.parent().unwrap_or(b);
                zonefile::parse_with(text, Some(&apex), &mut zonefile::dir_loader(dir))
            }
            None => zonefile::parse(text, Some(&apex)),
        };
        let zf = parsed.map_err(|source| Error::ZoneFile {
            zone: zc.apex.clone(),
            source,
        })?;
        if zf.origin != apex {
            return Err(Error::OutOfZone {
                zone: zc.apex.clone(),
                name: zf.origin.to_ascii(),
            });
        }
        return zone_from_records(apex, zf.records);
    }
    let ns: Vec<Name> = if zc.ns.is_empty() {
        vec![
            name_of("ns1", "ns")?
                .append_domain(&apex)
                .map_err(|_| Error::BadName {
                    what: "ns".into(),
                    name: zc.apex.clone(),
                })?,
        ]
    } else {
        zc.ns
            .iter()
            .map(|n| name_of(n, "ns"))
            .collect::<Result<_, _>>()?
    };
    let admin = match &zc.admin {
        Some(a) => name_of(a, "admin")?,
        None => Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&apex))
            .map_err(|_| Error::BadName {
                what: "admin".into(),
                name: zc.apex.clone(),
            })?,
    };
    let soa = SOA::new(
        ns[0].clone(),
        admin,
        1,
        3600,
        600,
        1_209_600,
        zc.negative_ttl,
    );
    let mut zone = Zone::new(apex.clone(), record(apex.clone(), 3600, RData::SOA(soa)));
    for n in ns {
        zone.node_mut(&apex)
            .add(record(apex.clone(), 3600, RData::NS(NS(n))));
    }
    Ok(zone)
}

/// The number of labels of `name`, a leading `*` included (hickory's `num_labels`
/// leaves it out, as DNSSEC counts them).
pub(crate) fn labels(name: &Name) -> usize {
    name.iter().count()
}

fn record(name: Name, ttl: u32, data: RData) -> Record {
    let mut r = Record::from_rdata(name, ttl, data);
    r.dns_class = DNSClass::IN;
    r
}

fn zone_from_records(apex: Name, records: Vec<Record>) -> Result<Zone, Error> {
    let zname = apex.to_ascii();
    let soa = records
        .iter()
        .find(|r| r.record_type() == RecordType::SOA && r.name == apex)
        .cloned()
        .ok_or_else(|| Error::MissingSoa(zname.clone()))?;
    let mut zone = Zone::new(apex.clone(), soa);
    for r in records {
        if !apex.zone_of(&r.name) {
            return Err(Error::OutOfZone {
                zone: zname,
                name: r.name.to_ascii(),
            });
        }
        let t = r.record_type();
        if t == RecordType::SOA {
            if r.name != apex {
                return Err(Error::OutOfZone {
                    zone: zname,
                    name: r.name.to_ascii(),
                });
            }
            continue;
        }
        if r.name.is_wildcard() {
            zone.has_wildcards = true;
        }
        if t == RecordType::DNAME {
            zone.has_dnames = true;
        }
        let at_apex = r.name == apex;
        let node = zone.node_mut(&r.name);
        let has_cname = node.rrset(RecordType::CNAME).is_some();
        let has_other = node.rrsets.iter().any(|(t, _)| *t != RecordType::CNAME);
        if (t == RecordType::CNAME && (has_other || at_apex))
            || (t != RecordType::CNAME && has_cname)
        {
            return Err(Error::Conflict {
                zone: zname,
                name: r.name.to_ascii(),
            });
        }
        let cut = t == RecordType::NS && !at_apex;
        if cut {
            node.cut = true;
        }
        node.add(r);
        zone.has_cuts |= cut;
    }
    if zone.apex_ns().is_empty() {
        return Err(Error::MissingNs(zname));
    }
    Ok(zone)
}
