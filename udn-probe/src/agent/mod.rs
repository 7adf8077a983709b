//! The I/O side of the probes (feature `agent`).
