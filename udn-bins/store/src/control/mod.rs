//! The control plane's tables behind one [`Backend`] trait: customers and their users,
//! sessions, API tokens, configuration versions, purges and prefills with their delivery
//! state, and the per-minute traffic the control plane records itself.
//!
//! * [`backend`]: the trait, its records and errors;
//! * [`sql`]: [`SqlBackend`], the trait implemented once over the [`sql::Db`] seam;
//! * [`sqlite`]: [`SqliteBackend`], the embedded default (`cp_*` tables);
//! * [`postgres`]: [`PgBackend`], the same tables in PostgreSQL.
//!
//! The HTTP API over them (and the backend that also answers traffic queries from the
//! log store) is `udn-bins`' `api` module.

pub mod backend;
pub mod postgres;
pub mod sql;
pub mod sqlite;

pub use backend::{Backend, BackendError, ControlTables, Role, User};
pub use postgres::PgBackend;
pub use sql::SqlBackend;
pub use sqlite::SqliteBackend;
