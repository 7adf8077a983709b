//! # udn-dns: the authoritative GTM DNS server
//!
//! * [`Responder`]: the **pure responder** on `hickory-proto`: query bytes in, response
//!   bytes out, with `now` and the client address as arguments. It is authoritative for
//!   the configured zones ([`Authority`]: SOA/NS at the apex, static records from BIND
//!   zone files parsed by [`zonefile`]), answers GTM and CDN hostnames from the
//!   [`udn_core`] decision engine (through the [`Decider`] trait), follows CNAME chains
//!   inside its zones, and handles EDNS(0), EDNS Client Subnet (RFC 7871), truncation
//!   and the negative answers (NXDOMAIN / NODATA / REFUSED / NOTIMP / FORMERR / BADVERS).
//!   A query whose client prefix is owned by another DNS server comes out as
//!   [`Outcome::Forward`], and [`Responder::relay`] turns the owner's answer into ours.
//! * behind the `server` feature, `server`: a tokio UDP/TCP server with peer proxying.
//!
//! The default build has no tokio, sockets, files or clocks.
//!
//! # Examples
//!
//! ```
//! use udn_core::{Engine, Timestamp};
//! use udn_dns::{Authority, Outcome, Request, Responder, Transport};
//! use hickory_proto::op::{Message, Query, ResponseCode};
//! use hickory_proto::rr::{Name, RecordType};
//!
//! let auth = Authority::from_zone_file(
//!     "$ORIGIN example.com.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n\
//!      @ NS ns1\nns1 A 192.0.2.1\n",
//!     None,
//! )?;
//! let engine = Engine::new(auth.network().clone());
//! let mut q = Message::query();
//! q.add_query(Query::query(Name::from_ascii("nope.example.com.")?, RecordType::A));
//! let bytes = q.to_vec()?;
//! let req = Request { bytes: &bytes, client: "192.0.2.9".parse()?, transport: Transport::Udp,
//!                     now: Timestamp::from_secs(0) };
//! let mut responder = Responder::new();
//! let Outcome::Reply(reply) = responder.respond(&req, &auth, &engine, None) else { panic!() };
//! let m = Message::from_vec(reply.bytes)?;
//! assert_eq!(m.response_code, ResponseCode::NXDomain);
//! assert_eq!(m.authorities[0].ttl, 60); // min(SOA TTL, SOA minimum)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod authority;
#[cfg(feature = "server")]
pub mod cookie;
mod fast;
pub mod responder;
#[cfg(feature = "server")]
pub mod rrl;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod wire;
pub mod zonefile;

pub use authority::Authority;
pub use hickory_proto;
pub use responder::{
    Decider, GtmAnswer, MAX_UDP_PAYLOAD, Outcome, PROXIED_OPTION, Reply, Request, Responder, Shard,
    Transport,
};

/// Errors of building an [`Authority`] (and of the server).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A zone file does not parse.
    #[error("zone {zone}: {source}")]
    ZoneFile {
        /// The zone.
        zone: String,
        /// The parse error, with its line.
        source: zonefile::ZoneFileError,
    },
    /// A zone names a file whose text was not supplied.
    #[error("zone {zone}: zone file {path} was not loaded")]
    MissingZoneFile {
        /// The zone.
        zone: String,
        /// The file.
        path: String,
    },
    /// A zone has no SOA at its apex.
    #[error("zone {0}: no SOA record at the apex")]
    MissingSoa(String),
    /// A zone has no NS at its apex.
    #[error("zone {0}: no NS records at the apex")]
    MissingNs(String),
    /// A record lies outside its zone.
    #[error("zone {zone}: {name} is outside the zone")]
    OutOfZone {
        /// The zone.
        zone: String,
        /// The name.
        name: String,
    },
    /// A CNAME next to other data, or a static address record on a GTM hostname.
    #[error(
        "zone {zone}: {name} has conflicting records (CNAME with other data, or a GTM hostname with static addresses)"
    )]
    Conflict {
        /// The zone.
        zone: String,
        /// The name.
        name: String,
    },
    /// The same zone twice.
    #[error("zone {0} is configured twice")]
    DuplicateZone(String),
    /// A malformed domain name in the configuration.
    #[error("bad {what} {name:?}")]
    BadName {
        /// Which setting.
        what: String,
        /// The value.
        name: String,
    },
    /// The empty network failed to compile (a bug).
    #[error("the empty network does not compile")]
    EmptyNetwork,
    /// An I/O error of the server.
    #[cfg(feature = "server")]
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}
