//! The PostgreSQL connection layer every PostgreSQL store shares (the log store, the
//! control plane's tables, billing): a [`Pool`] of `tokio-postgres` connections
//! (`deadpool-postgres`), used through a synchronous face ([`Client`], [`Transaction`],
//! [`Session`]) like the stores' own traits.
//!
//! * One process-wide I/O runtime (one thread, `udn-pg-io`, started on first use and
//!   never shut down) opens the connections and runs their `Connection` futures. Since
//!   it never stops, dropping a store, a pool or a connection is safe on any thread,
//!   inside a tokio runtime or not, and blocks nothing: it only sends on channels.
//! * A call waits for its result on the calling thread ([`wait`]: a plain park/unpark
//!   loop, no runtime of its own), so it may be made from a blocking thread
//!   (`spawn_blocking`), from plain synchronous code (the CLI, tests, billing runs), and
//!   even from inside an async task (it then blocks that task's thread, which the stores'
//!   callers avoid). It must never be made on the I/O runtime's own thread.
//! * Lost connections are the pool's business: each connection's task notices at once
//!   that the server closed it (a restart, `pg_terminate_backend`), and the pool checks
//!   [`Client::is_closed`] when handing a connection out ([`RecyclingMethod::Fast`]),
//!   dropping a closed one and opening a new one. `Verified` would add a round trip to
//!   every checkout (most store calls are one statement) to catch only what `Fast` cannot
//!   see yet; a call that meets such a connection fails (503, or one retry of a read),
//!   and the pool replaces it.
//! * Connecting gives up after [`CONNECT_TIMEOUT`] unless the URL sets
//!   `connect_timeout`.

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row, Statement, ToStatement};

pub use deadpool_postgres::PoolError;
pub use tokio_postgres::Error;

/// How long opening a connection may take when the URL does not say
/// (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The runtime the connections live on: one thread, never dropped (a `static`).
static IO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("udn-pg-io")
        .enable_all()
        .build()
        .expect("starting the PostgreSQL I/O runtime")
});

/// Wakes the thread waiting in [`wait`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this thread, parking it while `f` waits. Meant for futures
/// that only wait on the I/O runtime's connections (a query, a `COPY`, a commit); never
/// call it on the I/O runtime's thread.
pub fn wait<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        // A wake before the park makes it return at once; a spurious return polls again.
        std::thread::park();
    }
}

/// A pool of connections to one database. Cloning it shares the connections.
#[derive(Clone)]
pub struct Pool(deadpool_postgres::Pool);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        let s = self.0.status();
        write!(f, "pg::Pool({} of {})", s.size, s.max_size)
    }
}

impl Pool {
    /// A pool of at most `size` connections (at least 1) to `url`
    /// (`postgres://user@host:port/db`), shown as `application_name` in
    /// `pg_stat_activity` unless the URL names one. Opens no connection yet.
    pub fn new(url: &str, size: usize, application_name: Option<&str>) -> Result<Pool, Error> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if let Some(name) = application_name
            && config.get_application_name().is_none()
        {
            config.application_name(name);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .build()
            // Only a timeout without a runtime fails to build; the runtime is set.
            .expect("building the PostgreSQL pool");
        Ok(Pool(pool))
    }

    /// A connection: an idle one that is still open, else a new one, else (all `size`
    /// in use) the next one given back. Blocks.
    pub fn get(&self) -> Result<Client, PoolError> {
        // Polled here, not handed to the I/O thread and back: an idle connection is
        // taken without a thread switch. Inside the I/O runtime's context, a new
        // connection's socket and timer register with that runtime and its task is
        // spawned there.
        let _io = IO.enter();
        let obj = wait(self.0.get())?;
        Ok(Client {
            obj: Some(obj),
            lost: AtomicBool::new(false),
        })
    }
}

/// One pooled connection, with its cache of prepared statements. Dropping it gives it
/// back to the pool, unless a call on it said the connection is lost
/// ([`connection_lost`]): then it is closed and the pool opens a new one when needed,
/// even if the connection's task has not yet seen the end of the socket.
pub struct Client {
    /// `None` only while being dropped.
    obj: Option<deadpool_postgres::Object>,
    /// Set by a call that failed because the connection is gone.
    lost: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pg::Client")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take()
            && *self.lost.get_mut()
        {
            // Out of the pool and closed (the connection's task ends; nothing blocks).
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

/// Notes in `lost` whether `r` failed because the connection is gone.
fn note<T>(lost: &AtomicBool, r: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &r
        && connection_lost(e)
    {
        lost.store(true, Ordering::Relaxed);
    }
    r
}

impl Client {
    fn inner(&self) -> &deadpool_postgres::ClientWrapper {
        self.obj.as_ref().expect("present until dropped")
    }

    /// Starts a transaction, rolled back when dropped without [`Transaction::commit`].
    pub fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        let obj = self.obj.as_mut().expect("present until dropped");
        let tx = note(&self.lost, wait(obj.transaction()))?;
        Ok(Transaction {
            tx,
            lost: &self.lost,
        })
    }

    /// Whether the connection is closed (the server ended it, or it broke).
    pub fn is_closed(&self) -> bool {
        self.inner().is_closed()
    }

    /// The `tokio-postgres` client underneath (for refinery's migrations).
    pub(crate) fn raw(&mut self) -> &mut tokio_postgres::Client {
        self.obj.as_mut().expect("present until dropped")
    }
}

/// A transaction on a [`Client`].
pub struct Transaction<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    lost: &'a AtomicBool,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("pg::Transaction")
    }
}

impl<'a> Transaction<'a> {
    fn inner(&self) -> &deadpool_postgres::Transaction<'a> {
        &self.tx
    }

    /// Commits.
    pub fn commit(self) -> Result<(), Error> {
        note(self.lost, wait(self.tx.commit()))
    }

    /// Rolls back (as dropping does, but reporting errors).
    pub fn rollback(self) -> Result<(), Error> {
        note(self.lost, wait(self.tx.rollback()))
    }

    /// Starts a binary `COPY ... FROM STDIN BINARY` of rows of `types`.
    pub fn copy_in_binary(&self, sql: &str, types: &[Type]) -> Result<BinaryCopy<'_>, Error> {
        let sink = note(self.lost, wait(self.tx.copy_in::<_, bytes::Bytes>(sql)))?;
        Ok(BinaryCopy {
            writer: Box::pin(BinaryCopyInWriter::new(sink, types)),
            lost: self.lost,
        })
    }
}

/// A binary `COPY` in progress ([`Transaction::copy_in_binary`]).
pub struct BinaryCopy<'a> {
    writer: Pin<Box<BinaryCopyInWriter>>,
    lost: &'a AtomicBool,
}

impl BinaryCopy<'_> {
    /// Adds one row (buffered; sent when the buffer fills).
    pub fn write(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<(), Error> {
        note(self.lost, wait(self.writer.as_mut().write(row)))
    }

    /// Ends the `COPY`; the number of rows copied.
    pub fn finish(mut self) -> Result<u64, Error> {
        note(self.lost, wait(self.writer.as_mut().finish()))
    }
}

/// The statements a [`Client`] and a [`Transaction`] both run.
pub trait Session {
    /// Runs a statement; its rows.
    fn query<T: ?Sized + ToStatement>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>;
    /// Runs a statement that returns exactly one row.
    fn query_one<T: ?Sized + ToStatement>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>;
    /// Runs a statement that returns at most one row.
    fn query_opt<T: ?Sized + ToStatement>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>;
    /// Runs a statement; the number of rows it changed.
    fn execute<T: ?Sized + ToStatement>(
        &self,
        sql: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>;
    /// Runs statements separated by `;`, without parameters.
    fn batch_execute(&self, sql: &str) -> Result<(), Error>;
    /// Prepares `sql`, or takes it from the connection's cache.
    fn prepare_cached(&self, sql: &str) -> Result<Statement, Error>;
}

macro_rules! session {
    ($t:ty, $lost:ident) => {
        impl Session for $t {
            fn query<T: ?Sized + ToStatement>(
                &self,
                sql: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Vec<Row>, Error> {
                note($lost(self), wait(self.inner().query(sql, params)))
            }

            fn query_one<T: ?Sized + ToStatement>(
                &self,
                sql: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Row, Error> {
                note($lost(self), wait(self.inner().query_one(sql, params)))
            }

            fn query_opt<T: ?Sized + ToStatement>(
                &self,
                sql: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Option<Row>, Error> {
                note($lost(self), wait(self.inner().query_opt(sql, params)))
            }

            fn execute<T: ?Sized + ToStatement>(
                &self,
                sql: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<u64, Error> {
                note($lost(self), wait(self.inner().execute(sql, params)))
            }

            fn batch_execute(&self, sql: &str) -> Result<(), Error> {
                note($lost(self), wait(self.inner().batch_execute(sql)))
            }

            fn prepare_cached(&self, sql: &str) -> Result<Statement, Error> {
                note($lost(self), wait(self.inner().prepare_cached(sql)))
            }
        }
    };
}

fn client_lost(c: &Client) -> &AtomicBool {
    &c.lost
}

fn tx_lost<'a>(t: &Transaction<'a>) -> &'a AtomicBool {
    t.lost
}

session!(Client, client_lost);
session!(Transaction<'_>, tx_lost);

/// Whether `e` says the connection is gone (closed, or the server ending the session:
/// SQLSTATE class 57P, e.g. a restart or `pg_terminate_backend`) rather than that a
/// statement failed, so the same call on another connection may succeed.
pub fn connection_lost(e: &Error) -> bool {
    e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The server `scripts/start-postgres.sh` started (`UDN_TEST_POSTGRES`): `None`,
    /// loudly, when unset outside CI; in CI (`CI=true`) a missing server fails the test.
    fn server(test: &str) -> Option<String> {
        match std::env::var("UDN_TEST_POSTGRES") {
            Ok(url) => Some(url),
            Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but UDN_TEST_POSTGRES is unset: run scripts/start-postgres.sh")
            }
            Err(_) => {
                eprintln!("SKIPPING {test}: UDN_TEST_POSTGRES is unset");
                None
            }
        }
    }

    /// A fresh database named after `test` on the test server; its URL.
    fn fresh_database(test: &str) -> Option<String> {
        let url = server(test)?;
        let name = format!("udn_store_{test}");
        let admin = Pool::new(&url, 1, None).unwrap().get().unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let (base, _) = url.rsplit_once('/').unwrap();
        Some(format!("{base}/{name}"))
    }

    fn backend_pid(c: &Client) -> i32 {
        c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
    }

    /// Ends the server process of connection `pid` and waits until it is gone.
    fn terminate(admin: &Client, pid: i32) {
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(killed);
        for _ in 0..100 {
            let left: i64 = admin
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .unwrap()
                .get(0);
            if left == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("backend {pid} is still there");
    }

    /// What `drop_off_runtime` used to guard: the three PostgreSQL stores, used and then
    /// dropped inside a tokio runtime (a role shutting down in async code), neither
    /// panic nor block. Also shows the stores work from inside an async task's body.
    #[tokio::test]
    async fn stores_drop_inside_a_runtime_without_panicking_or_blocking() {
        use crate::billing::BillingStore as _;
        use crate::control::backend::Accounts as _;
        use crate::logs::Store as _;
        let Some(url) = fresh_database("drop_in_runtime") else {
            return;
        };
        let mut logs = crate::logs::postgres::PgStore::connect(&url).unwrap();
        let control = crate::control::PgBackend::connect(&url).unwrap();
        let billing = crate::billing::PgBillingStore::connect(&url).unwrap();
        assert_eq!(logs.counts().unwrap().files, 0);
        control.users().unwrap();
        assert!(billing.accounts().unwrap().is_empty());
        // An open transaction dropped in the runtime rolls back without blocking too.
        let pool = Pool::new(&url, 1, None).unwrap();
        let mut c = pool.get().unwrap();
        let tx = c.transaction().unwrap();
        tx.batch_execute("CREATE TABLE dropped_uncommitted (x INT)")
            .unwrap();

        let t = Instant::now();
        drop(tx);
        drop(c);
        drop(pool);
        drop(logs);
        drop(control);
        drop(billing);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "dropping took {:?}",
            t.elapsed()
        );
        // And on a blocking thread of the same runtime, as the roles call the stores.
        let again = tokio::task::spawn_blocking(move || {
            let c = Pool::new(&url, 1, None).unwrap().get().unwrap();
            let rows = c
                .query("SELECT to_regclass('dropped_uncommitted') IS NULL", &[])
                .unwrap();
            rows[0].get::<_, bool>(0)
        })
        .await
        .unwrap();
        assert!(again, "the dropped transaction was rolled back");
    }

    /// A connection the server ends (a restart, `pg_terminate_backend`) is the pool's
    /// business: an idle one is found closed and replaced when handed out, and one a
    /// call found lost is not handed out again.
    #[test]
    fn the_pool_replaces_lost_connections() {
        let Some(url) = server("the_pool_replaces_lost_connections") else {
            return;
        };
        let admin = Pool::new(&url, 1, None).unwrap().get().unwrap();
        let pool = Pool::new(&url, 1, None).unwrap();

        // Idle in the pool when it is ended: the next caller gets a new connection.
        let pid = backend_pid(&pool.get().unwrap());
        terminate(&admin, pid);
        let c = pool.get().unwrap();
        let new = backend_pid(&c);
        assert_ne!(new, pid, "a new connection");

        // Ended while held: the call fails as a lost connection, and the pool does not
        // hand that connection out again.
        terminate(&admin, new);
        let e = c.query("SELECT 1", &[]).unwrap_err();
        assert!(connection_lost(&e), "{e}");
        drop(c);
        let c = pool.get().unwrap();
        assert_ne!(backend_pid(&c), new, "a new connection");
        assert_eq!(
            c.query_one("SELECT 41 + 1", &[]).unwrap().get::<_, i32>(0),
            42
        );
    }
}
