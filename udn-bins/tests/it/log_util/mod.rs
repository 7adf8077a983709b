//! Helpers shared by the logging-pipeline tests: start the real `udn` binary, write
//! real log files, open the real databases.
#![allow(dead_code)]

pub(crate) use crate::pg_support;

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use udn_bins::store::{self, Location, Store};
use udn_core::Timestamp;
use udn_core::log::{DnsRecord, HttpRecord, LogRecord, ProbeRecord};

pub const UDN: &str = env!("CARGO_BIN_EXE_udn");

/// A fresh temporary directory (removed on drop unless the test panicked).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "udn-{name}-{}-{}",
            std::process::id(),
            udn_bins::logging::now().as_millis()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("keeping {} for inspection", self.0.display());
        }
    }
}

/// Which database a test runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
    /// The log store in ClickHouse (the control plane's own tables in SQLite).
    ClickHouse(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
            Backend::ClickHouse(_) => "clickhouse",
        }
    }
    pub fn location(&self, data_dir: &Path) -> Location {
        match self {
            Backend::Sqlite => Location::Sqlite {
                dir: data_dir.to_owned(),
                max_pages: None,
            },
            Backend::Postgres(url) => Location::Postgres { url: url.clone() },
            Backend::ClickHouse(url) => Location::ClickHouse { url: url.clone() },
        }
    }
    pub fn open(&self, data_dir: &Path) -> Box<dyn Store> {
        store::open(&self.location(data_dir)).expect("open store")
    }
}

/// A fresh PostgreSQL database for one test (see `pg_support::fresh_database`).
pub fn postgres(test: &str) -> Option<Backend> {
    pg_support::fresh_database(test).map(Backend::Postgres)
}

/// A fresh ClickHouse database for one test on the server `scripts/start-clickhouse.sh`
/// started (`UDN_TEST_CLICKHOUSE`): `None`, loudly, when unset outside CI; in CI
/// (`CI=true`) a missing ClickHouse fails the test.
pub fn clickhouse(test: &str) -> Option<Backend> {
    let Ok(url) = std::env::var("UDN_TEST_CLICKHOUSE") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but UDN_TEST_CLICKHOUSE is unset: run `eval \"$(bash scripts/start-clickhouse.sh)\"` first"
            );
        }
        eprintln!(
            "\n!!!!!!!! SKIPPING the ClickHouse half of {test}: UDN_TEST_CLICKHOUSE is unset.\n\
             !!!!!!!! Run `eval \"$(bash scripts/start-clickhouse.sh)\"` to include it.\n"
        );
        return None;
    };
    let clean = test.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let db = format!("udn_{clean}_{}", std::process::id());
    let url = url.trim_end_matches('/').to_owned();
    udn_bins::install_crypto();
    let drop = reqwest::blocking::Client::new()
        .post(format!("{url}/"))
        .body(format!("DROP DATABASE IF EXISTS {db}"))
        .send()
        .unwrap_or_else(|e| panic!("UDN_TEST_CLICKHOUSE={url} unreachable: {e}"));
    assert!(
        drop.status().is_success(),
        "dropping {db}: {:?}",
        drop.text()
    );
    Some(Backend::ClickHouse(format!("{url}/{db}")))
}

/// The backends to run: SQLite always, PostgreSQL and ClickHouse when available.
pub fn backends(test: &str) -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    v.extend(postgres(test));
    v.extend(clickhouse(test));
    v
}

/// The roles that ship logs, each from its own subdirectory of a test's log directory
/// (`logs/edge`, `logs/dns`, `logs/probe`) with its own enrolled instance.
pub const ROLES: [&str; 3] = ["edge", "dns", "probe"];

/// Enrolls `role`/`name` with the real `udn control enroll` against the control plane's
/// data directory `data_dir` (its CA in `data_dir/pki`); returns the credentials'
/// directory (reused when already enrolled).
pub fn enroll(data_dir: &Path, role: &str, name: &str) -> PathBuf {
    let out = PathBuf::from(format!("{}.pki/{role}-{name}", data_dir.display()));
    if out.join("cert.pem").exists() {
        return out;
    }
    let o = Command::new(UDN)
        .args([
            "control",
            "enroll",
            role,
            name,
            "--san",
            "127.0.0.1",
            "--out",
        ])
        .arg(&out)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run udn control enroll");
    assert!(
        o.status.success(),
        "udn control enroll {role} {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The credentials of the test instance of `role` (`test-<role>`).
pub fn role_pki(data_dir: &Path, role: &str) -> PathBuf {
    enroll(data_dir, role, &format!("test-{role}"))
}

/// A blocking HTTPS client presenting the credentials in `pki` and trusting only their CA.
pub fn client_with(pki: &Path) -> reqwest::blocking::Client {
    udn_bins::install_crypto();
    let c = udn_bins::pki::Credentials::load(pki).expect("load credentials");
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(c.client_config().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A client of the test instance of `role`.
pub fn role_client(data_dir: &Path, role: &str) -> reqwest::blocking::Client {
    client_with(&role_pki(data_dir, role))
}

/// The role a log file was written by, from its directory (`logs/<role>/...`).
pub fn role_of(path: &Path) -> &str {
    path.parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("edge")
}

/// A running `udn control` process.
pub struct Control {
    pub child: Child,
    pub addr: String,
    pub stderr: PathBuf,
}

impl Control {
    /// Starts `udn control` with `extra` arguments on `listen` (`127.0.0.1:0` for any).
    pub fn start(data_dir: &Path, backend: &Backend, listen: &str, extra: &[&str]) -> Control {
        let stderr = data_dir.with_extension("control.err");
        let _ = std::fs::create_dir_all(data_dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let errfile = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&stderr)
                .unwrap();
            let mut cmd = Command::new(UDN);
            cmd.args(["control", "--data-dir"])
                .arg(data_dir)
                .args(["--listen", listen])
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(errfile);
            match backend {
                Backend::Postgres(url) => {
                    cmd.args(["--postgres", url]);
                }
                Backend::ClickHouse(url) => {
                    cmd.args(["--clickhouse", url]);
                }
                Backend::Sqlite => {}
            }
            // The sample network: the collector checks HTTP records against its
            // hostnames' owners (www.shop.udn.example belongs to "shop").
            if !extra.contains(&"--config") && !extra.contains(&"--portal-listen") {
                let sample = data_dir.with_extension("sample.toml");
                std::fs::write(&sample, udn_core::config::SAMPLE).unwrap();
                cmd.arg("--config").arg(sample);
            }
            let mut child = cmd.spawn().expect("spawn udn control");
            let out = child.stdout.take().unwrap();
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            if let Some(addr) = line.trim().strip_prefix("udn control: listening on ") {
                return Control {
                    child,
                    addr: addr.to_owned(),
                    stderr,
                };
            }
            // The port may still be held by a killed predecessor: retry briefly.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "udn control did not start: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The collector's URL (mutual TLS).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Running `udn distribute` processes, one per role directory (`dir/edge`, `dir/dns`,
/// `dir/probe`), each with its role's test instance enrolled against `data_dir`.
pub struct Distributor {
    pub children: Vec<Child>,
}

impl Distributor {
    pub fn start(
        dir: &Path,
        collectors: &[String],
        extra: &[&str],
        data_dir: &Path,
    ) -> Distributor {
        let children = ROLES
            .iter()
            .map(|role| {
                let d = dir.join(role);
                std::fs::create_dir_all(&d).unwrap();
                Self::spawn(&d, collectors, extra, &role_pki(data_dir, role))
            })
            .collect();
        Distributor { children }
    }

    /// One `udn distribute` for `dir` presenting the credentials in `pki`.
    pub fn spawn(dir: &Path, collectors: &[String], extra: &[&str], pki: &Path) -> Child {
        let mut cmd = Command::new(UDN);
        cmd.args(["distribute", "--dir"])
            .arg(dir)
            .arg("--pki")
            .arg(pki);
        for c in collectors {
            cmd.args(["--collector", c]);
        }
        cmd.args([
            "--poll-ms",
            "50",
            "--min-backoff-ms",
            "20",
            "--max-backoff-ms",
            "300",
        ])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        cmd.spawn().expect("spawn udn distribute")
    }
    pub fn kill9(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Distributor {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A seeded xorshift generator (the seed is printed so a failure can be replayed).
pub struct Rng(pub u64);

impl Rng {
    pub fn from_env(name: &str) -> Rng {
        let seed = std::env::var("UDN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| udn_bins::logging::now().as_millis() | 1);
        eprintln!("{name}: UDN_TEST_SEED={seed}");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The `i`th test record of a writer; every record is unique by its path / hostname /
/// target, and carries `bytes = 100 + i % 1000`.
pub fn record(kind: u8, writer: &str, i: u64, ts: Timestamp) -> LogRecord {
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, (i >> 8) as u8, i as u8));
    match kind % 3 {
        0 => LogRecord::Http(HttpRecord {
            ts,
            // The sample network gives www.shop.udn.example to "shop" (the collector
            // quarantines HTTP records of a hostname not owned by the named customer).
            customer: Some("shop".into()),
            host: "www.shop.udn.example".into(),
            path: format!("/o/{writer}/{i}"),
            method: "GET".into(),
            status: [200, 200, 304, 404, 503][(i % 5) as usize],
            bytes: 100 + i % 1000,
            fill_bytes: if i.is_multiple_of(4) {
                100 + i % 1000
            } else {
                0
            },
            outcome: ["hit", "miss", "hit", "stale"][(i % 4) as usize].into(),
            duration_us: 50 + i % 500,
            client,
            pop: ["fra", "iad", "sin"][(i % 3) as usize].into(),
        }),
        1 => LogRecord::Dns(DnsRecord {
            ts,
            hostname: format!("h{i}.{writer}.udn.example"),
            qtype: "A".into(),
            client,
            ecs: None,
            addrs: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 4) as u8 + 1))],
            reason: "latency".into(),
            pop: Some(["fra", "iad"][(i % 2) as usize].into()),
            customer: Some(format!("cust{}", i % 3)),
            server: "dns-1".into(),
        }),
        _ => LogRecord::Probe(ProbeRecord {
            ts,
            pop: "fra".into(),
            kind: "latency".into(),
            target: format!("t{writer}{i}"),
            method: ["tcp-connect", "dns"][(i % 2) as usize].into(),
            ok: !i.is_multiple_of(7),
            value: (i % 90) as f64 + 0.5,
            detail: String::new(),
        }),
    }
}

/// The log files (complete or open) in `dir` and its role subdirectories (not in
/// `rejected/`).
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "rejected") {
                out.extend(log_files(&p));
            }
        } else if p.to_string_lossy().contains(".jsonl") {
            out.push(p);
        }
    }
    out
}

/// Waits until `dir` (and its role subdirectories) holds no complete or open log file
/// (everything shipped).
pub fn wait_drained(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = log_files(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} files never shipped from {}",
            left.len(),
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exact-once check: the store holds every written record once and nothing else.
pub fn assert_store_matches(
    store: &mut dyn Store,
    http: u64,
    dns: u64,
    probe: u64,
    http_bytes: i64,
) {
    let c = store.counts().unwrap();
    assert_eq!(c.http, http as i64, "raw HTTP rows ({})", store.backend());
    assert_eq!(c.dns, dns as i64, "raw DNS rows ({})", store.backend());
    assert_eq!(
        c.probe,
        probe as i64,
        "raw probe rows ({})",
        store.backend()
    );
    assert_eq!(c.ledger_rows, (http + dns + probe) as i64, "ledger rows");
    let distinct = |s: &mut dyn Store, sql: &str| match &s.select(sql, &[]).unwrap()[0][0] {
        udn_bins::store::Cell::Int(n) => *n,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        distinct(store, "SELECT COUNT(DISTINCT path) FROM raw_http"),
        http as i64,
        "duplicate HTTP rows"
    );
    assert_eq!(
        distinct(store, "SELECT COUNT(DISTINCT hostname) FROM raw_dns"),
        dns as i64,
        "duplicate DNS rows"
    );
    assert_eq!(
        distinct(store, "SELECT COUNT(DISTINCT target) FROM raw_probe"),
        probe as i64,
        "duplicate probe rows"
    );
    // Rollups agree with the raw rows.
    assert_eq!(
        distinct(
            store,
            "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) FROM rollup_http"
        ),
        http as i64,
        "rollup requests"
    );
    assert_eq!(
        distinct(
            store,
            "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM rollup_http"
        ),
        http_bytes,
        "rollup bytes"
    );
    assert_eq!(
        distinct(
            store,
            "SELECT CAST(COALESCE(SUM(queries), 0) AS BIGINT) FROM rollup_dns"
        ),
        dns as i64,
        "rollup DNS queries"
    );
    assert_eq!(
        distinct(
            store,
            "SELECT CAST(COALESCE(SUM(samples), 0) AS BIGINT) FROM rollup_probe"
        ),
        probe as i64,
        "rollup probe samples"
    );
}

/// A prepared log file of `role` instance `i1`, opened at `opened_at` (ms), holding
/// `records`, as the collector hands it to the store.
pub fn prepared_file(
    id: &str,
    role: udn_core::log::Role,
    opened_at: u64,
    records: Vec<udn_core::log::LogRecord>,
) -> udn_bins::store::PreparedFile {
    let header = udn_core::log::FileHeader {
        magic: udn_core::log::MAGIC.into(),
        version: udn_core::log::FORMAT_VERSION,
        file_id: id.into(),
        role,
        instance: "i1".into(),
        opened_at: udn_core::Timestamp::from_millis(opened_at),
    };
    udn_bins::store::PreparedFile::new(header, format!("sum-{id}"), records)
}
