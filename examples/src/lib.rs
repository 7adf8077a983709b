//! Runnable examples of embedding the UDN crates: see `examples/examples/*.rs`, run with
//! `cargo run -p udn-examples --example NAME`.
