//! udn-bins' integration tests, as modules of one test binary (so the test build links
//! once, as ripgrep's tests do): each module is one area's tests against the real `udn`
//! binary (`CARGO_BIN_EXE_udn`), the support modules are their shared harnesses. Run one
//! area with `cargo test -p udn-bins --test it <module>::`.

// Shared harnesses.
mod api_support;
mod billing_common;
mod browser_support;
mod log_util;
mod pg_support;
mod pki_support;
mod probe_common;
mod proc_support;
mod smtp_support;

/// The demo binds fixed loopback addresses: the tests that run it take turns.
pub static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

// The tests, one module per area.
mod api;
mod api_config_dns;
mod billing_cli;
mod billing_delivery;
mod billing_e2e;
mod billing_run;
mod cli;
mod config_mtls;
mod control_config_push;
mod control_credentials;
mod control_portal;
mod control_store;
mod demo;
mod dns;
mod dns_proto;
mod edge;
mod edge_fill;
mod edge_ftp;
mod edge_ftp_origin;
mod edge_hls;
mod edge_http;
mod fanout_poison;
mod gtm_health_load;
mod log_bad_input;
mod log_crash;
mod log_parse_props;
mod log_store;
mod log_store_clickhouse;
mod log_store_partitions;
mod log_store_quality;
mod log_store_readers;
mod log_store_stream;
mod log_trust;
mod migrations;
mod ops_views;
mod origin;
mod portal;
mod portal_browser;
mod portal_browser_demo;
mod portal_edges;
mod probe_api_trust;
mod probe_dns_e2e;
mod probe_latency;
mod probe_pagecheck;
mod probe_service;
mod signup_browser;
mod tenant;
