//! Runnable examples of embedding the UDN crates: see `examples/examples/*.rs`, run with
//! `cargo run -p udn-examples --example NAME`.

/// The README's Rust examples, compiled and run as doctests here, in the crate that
/// depends on every library.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
