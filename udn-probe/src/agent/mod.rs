//! The I/O side of the probes (feature `agent`): the timed fetch, the latency methods
//! on real sockets, service tests, the page check, the local LOADP source and the
//! metric reporter. The `udn probe` role in `udn-bins` runs them on tokio timers
//! after the crate's [`plan`](crate::plan).
//!
//! # Examples
//!
//! ```no_run
//! use udn_probe::agent::pagecheck::{PageCheckOptions, page_check};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let reports = page_check("http://127.0.0.1:8080/", true, &PageCheckOptions::default()).await;
//! for r in &reports {
//!     print!("{}", r.to_text()); // overall line + rows; r.rows[i].end_us == stt + phases
//! }
//! # }
//! ```

pub mod fetch;
pub mod load;
pub mod methods;
pub mod pagecheck;
pub mod report;
pub mod service;
