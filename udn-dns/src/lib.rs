//! # udn-dns: the authoritative GTM DNS server
//!
//! This crate will hold (issue "The authoritative GTM DNS server"):
//!
//! * a **pure responder** on `hickory-proto`: query bytes in, response bytes out, with
//!   `now` and the client address as arguments. It is authoritative for the configured
//!   zones (SOA/NS at the apex, static records from BIND zone files), answers GTM and CDN
//!   hostnames from the [`udn_core`] decision engine, handles EDNS(0), EDNS Client Subnet,
//!   truncation and the negative answers (NXDOMAIN / NODATA / REFUSED / NOTIMP / FORMERR);
//! * behind the `server` feature, a tokio UDP/TCP server with peer proxying (queries for
//!   client prefixes owned by another DNS server are forwarded to it) and a query log.
//!
//! The default build has no tokio, sockets or clocks.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
