//! # udn-probe: service, load and latency probes
//!
//! The DNS servers decide from what the probes measure. This crate's default build is
//! pure (no tokio, sockets, files or clocks; time comes in as arguments):
//!
//! * [`latency`]: the [`LatencyMethod`](latency::LatencyMethod) plug-in trait and the
//!   cheapest-first [`Escalation`](latency::Escalation) policy, a sans-IO state machine
//!   with per-method operational data; [`passive`] is a method that needs no I/O;
//! * [`service`]: service-test evaluation ([`ServiceSpec`](service::ServiceSpec) +
//!   [`Observation`](service::Observation) -> [`Verdict`](service::Verdict)) and the
//!   up/down [`Hysteresis`](service::Hysteresis);
//! * [`loadp`]: LOADP, parsing the Linux load sources behind a [`LoadSource`](loadp::LoadSource);
//! * [`pagecheck`], [`html`], [`url`]: page-check rows, the components of a page and
//!   URL resolution;
//! * [`wire`]: ICMP echo and DNS query packets;
//! * [`plan`]: the agent's plan: which (server, service) pairs a POP's agent tests and
//!   under which policy, how a server's addresses fold into one result, the address
//!   measured for a client network, a measurement's median sample and the bounded set of
//!   measurements in progress.
//!
//! With the `agent` feature, [`agent`] adds the I/O: a timed HTTP(S) fetch that stamps
//! each phase, the latency methods on real sockets, service tests, the page check, the
//! local LOADP source and the metric reporter.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use udn_core::Timestamp;
//! use udn_probe::latency::{Escalation, LatencyMethod, Outcome};
//! use udn_probe::passive::PassiveTable;
//!
//! let table = PassiveTable::parse("198.51.100.0/24 40").unwrap();
//! let mut policy = Escalation::new(vec![table.info()]);
//! let mut attempt = policy.begin(Timestamp::from_secs(1));
//! let m = attempt.next_method().unwrap();
//! // Any executor drives a method; the passive one is ready at once.
//! let outcome = Outcome::Rtt(table.lookup("198.51.100.1".parse().unwrap()).unwrap());
//! policy.handle(&mut attempt, m, outcome, Timestamp::from_secs(1));
//! assert_eq!(attempt.result().unwrap().rtt, Duration::from_millis(40));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod html;
pub mod latency;
pub mod loadp;
pub mod pagecheck;
pub mod passive;
pub mod plan;
pub mod service;
pub mod url;
pub mod wire;

#[cfg(feature = "agent")]
pub mod agent;

pub use error::Error;
