//! The I/O side of the probes (feature `agent`): the timed fetch, the latency methods
//! on real sockets, service tests, the page check, the local LOADP source and the
//! metric reporter. The `udn probe` role in `udn-bins` schedules them.

pub mod fetch;
pub mod load;
pub mod methods;
pub mod pagecheck;
pub mod report;
pub mod service;
