//! The edge server (feature `server`).
