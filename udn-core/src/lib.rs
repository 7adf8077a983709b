//! # udn-core: the domain model and the GTM decision engine
//!
//! The pure heart of UDN. It holds no sockets, files, clocks or threads: time comes in
//! as a [`Timestamp`] argument, and every output is a value.
//!
//! * [`config`]: the TOML schema, validated with field paths into a compiled, immutable
//!   [`Network`] snapshot;
//! * [`state`]: service health with hysteresis and staleness, load, the latency table
//!   and persistence;
//! * [`decide`](mod@decide): the routing decision, and [`Engine`] which bundles a
//!   snapshot with its state;
//! * [`shard`]: rendezvous assignment of client prefixes to DNS servers;
//! * [`log`]: the log-record schema and rotation policy shared by every role;
//! * [`netpolicy`]: which addresses customer-given destinations may reach;
//! * [`ops`]: the roles' operational records (their own counters, sampled into the log);
//! * [`stream`]: which access-log requests are streaming media (HLS, DASH), of which
//!   stream.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use udn_core::{Config, Engine, Family, Query, Timestamp, config::SAMPLE};
//!
//! let net = Arc::new(Config::from_toml(SAMPLE)?.compile()?);
//! let mut engine = Engine::new(net.clone());
//! let q = Query {
//!     host: net.host_id("www.shop.udn.example").expect("configured"),
//!     client: "203.0.113.9".parse()?,
//!     ecs: None,
//!     family: Family::V4,
//!     seed: 42,
//! };
//! let d = engine.decide_and_record(&q, Timestamp::from_secs(1_700_000_000));
//! println!("{:?} because {}", d.addrs.as_slice(), d.reason.as_str());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod decide;
pub mod engine;
pub mod error;
pub mod health;
pub mod hex;
pub mod load;
pub mod log;
pub mod logfile;
pub mod net;
pub mod netpolicy;
pub mod network;
pub mod ops;
pub mod rollup;
pub mod shard;
pub mod state;
pub mod stream;
pub mod time;

pub use config::Config;
pub use decide::{AddrList, Decision, Family, Query, Reason, RefreshList, decide};
pub use engine::{Engine, Metric, MetricError};
pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, Error};
pub use net::{Cidr, ClientPrefix};
pub use network::{HostId, Network, PopId, ServerId, ServiceId};
pub use state::{Health, LatencySample, PersistWrite, ServiceSample, State};
pub use time::Timestamp;
