//! The tokio UDP/TCP server (feature `server`).
