//! # udn-probe: service, load and latency probes
//!
//! This crate will hold (issue "Probes"):
//!
//! * the **pure** `LatencyMethod` plug-in trait and the cheapest-first escalation policy,
//!   service-test evaluation with up/down thresholds, LOADP parsing behind a source trait,
//!   and page-check result rows;
//! * behind the `agent` feature, the methods themselves (TCP connect, DNS RTT, ICMP where
//!   permitted, a passive prefix table), an HTTP service test with per-phase timings, and
//!   reporting to the DNS servers and the probe log.
//!
//! The default build has no tokio, sockets or clocks.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
