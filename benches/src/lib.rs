//! criterion benches of the UDN hot paths (`cargo bench -p udn-benches`), and the
//! counting allocator they use to report heap allocations per operation.

pub mod alloc;
