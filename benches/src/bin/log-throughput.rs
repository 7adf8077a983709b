//! Log pipeline throughput: records per second from written log files to rows in the
//! store, for SQLite and PostgreSQL. Bounded: it writes `--records` records once.
//!
//! ```text
//! cargo run --release -p udn-benches --bin log-throughput -- --records 1000000
//! cargo run --release -p udn-benches --bin log-throughput -- --postgres "$UDN_TEST_POSTGRES"
//! ```
//!
//! Two measurements per backend:
//! - `store`: in this process, file by file: read, checksum + validate + parse
//!   (`collector::parse_file`), fold rollups, `Store::ingest` (one transaction per file
//!   with its ledger row);
//! - `pipeline` (with `--udn PATH`): the real `udn distribute --drain` shipping the same
//!   files over HTTPS (mutual TLS, one enrolled instance per role, as in production) to
//!   the real `udn control`, which checks each HTTP record's hostname against its
//!   owner; wall time until every role's directory is empty.
//!
//! Each role writes its own files (an edge ships HTTP records, a DNS server DNS
//! records, a probe probe records: the collector refuses anything else), and each
//! hostname belongs to one customer (`www{h}.shop.example` to `customer-{h}`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use udn_bins::collector::{parse_file, sha256_hex};
use udn_bins::logging::FileLog;
use udn_bins::store::{self, Location};
use udn_core::Timestamp;
use udn_core::log::{DnsRecord, HttpRecord, LogRecord, ProbeRecord, Role, RotationPolicy};

struct Opts {
    records: u64,
    postgres: Option<String>,
    udn: Option<PathBuf>,
    file_mib: u64,
    split: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        records: 1_000_000,
        postgres: None,
        udn: None,
        file_mib: 16,
        split: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--records" => o.records = v.parse().unwrap_or(o.records).min(20_000_000),
            "--postgres" => o.postgres = Some(v),
            "--udn" => o.udn = Some(PathBuf::from(v)),
            "--file-mib" => o.file_mib = v.parse().unwrap_or(16).clamp(1, 256),
            "--split" => o.split = v == "1" || v == "true",
            _ => {
                eprintln!(
                    "usage: log-throughput [--records N] [--postgres URL] [--udn PATH] [--file-mib M] [--split 1]"
                );
                std::process::exit(2);
            }
        }
    }
    o
}

/// An edge-heavy mix: 80 % HTTP, 15 % DNS, 5 % probe; 1 record per ms of log time.
/// Hostnames (and their customers) the records name.
const HOSTS: u64 = 5;

/// The roles that write the files, with their instance names (the certificates'),
/// each in its own subdirectory of the log directory.
const ROLES: [(Role, &str, &str); 3] = [
    (Role::Edge, "edge", "bench-edge"),
    (Role::Dns, "dns", "bench-dns"),
    (Role::Probe, "probe", "bench-probe"),
];

fn rec(i: u64, t0: u64) -> LogRecord {
    let ts = Timestamp::from_millis(t0 + i);
    let client = IpAddr::V4(Ipv4Addr::new(198, 51, (i >> 8) as u8, i as u8));
    match i % 20 {
        0..=15 => LogRecord::Http(HttpRecord {
            ts,
            customer: Some(format!("customer-{}", i % HOSTS)),
            host: format!("www{}.shop.example", i % HOSTS),
            path: format!("/static/img/{}.jpg", i % 10_000),
            method: "GET".into(),
            status: if i.is_multiple_of(50) { 404 } else { 200 },
            bytes: 1_000 + i % 50_000,
            fill_bytes: if i.is_multiple_of(10) {
                1_000 + i % 50_000
            } else {
                0
            },
            outcome: if i.is_multiple_of(10) { "miss" } else { "hit" }.into(),
            duration_us: 200 + i % 5_000,
            client,
            pop: ["fra", "iad", "sin"][(i % 3) as usize].into(),
        }),
        16..=18 => LogRecord::Dns(DnsRecord {
            ts,
            hostname: format!("www{}.shop.example", i % HOSTS),
            qtype: "A".into(),
            client,
            ecs: None,
            addrs: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 6) as u8 + 1))],
            reason: "latency".into(),
            pop: Some(["fra", "iad", "sin"][(i % 3) as usize].into()),
            customer: Some(format!("customer-{}", i % HOSTS)),
            server: "bench-dns".into(),
        }),
        _ => LogRecord::Probe(ProbeRecord {
            ts,
            pop: "fra".into(),
            kind: "latency".into(),
            target: format!("203.0.113.{}/32", i % 250),
            method: "tcp-connect".into(),
            ok: true,
            value: (i % 90) as f64,
            detail: String::new(),
        }),
    }
}

fn write_files(dir: &Path, n: u64, max_bytes: u64) -> (Vec<PathBuf>, f64, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let policy = RotationPolicy {
        max_bytes,
        max_age: Duration::from_secs(3600),
    };
    let logs: Vec<FileLog> = ROLES
        .iter()
        .map(|(role, sub, name)| {
            FileLog::new(&dir.join(sub), *role, name, policy).expect("log dir")
        })
        .collect();
    let t0 = 1_800_000_000_000;
    let start = Instant::now();
    for i in 0..n {
        let r = rec(i, t0);
        let log = match r {
            LogRecord::Http(_) => &logs[0],
            LogRecord::Dns(_) => &logs[1],
            _ => &logs[2],
        };
        log.write_at(&r, r.ts()).expect("write");
    }
    let mut files = Vec::new();
    for (log, (_, sub, _)) in logs.iter().zip(ROLES) {
        log.flush_complete().expect("complete");
        files.extend(udn_bins::distributor::complete_files(&dir.join(sub)).expect("list"));
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    (files, secs, bytes)
}

/// CPU seconds (user + system) this process used so far, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn fresh_pg(url: &str, db: &str) -> String {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).expect("postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .expect("drop");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{db}")
}

/// Files to rows in-process, as the collector does it with two uploads in flight: one
/// thread reads, checksums, validates, parses and folds file N+1 while the store
/// ingests file N.
fn store_run(name: &str, loc: &Location, files: &[PathBuf], n: u64) {
    let mut st = store::open(loc).expect("open store");
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (rows, t_ingest, t_parse) = std::thread::scope(|s| {
        let parser = s.spawn(move || {
            let mut t_parse = Duration::ZERO;
            for f in files {
                let t = Instant::now();
                let body = std::fs::read(f).expect("read");
                let sum = sha256_hex(&body);
                let file = parse_file(&body, &sum).expect("valid file");
                t_parse += t.elapsed();
                if tx.send(file).is_err() {
                    break;
                }
            }
            t_parse
        });
        let mut rows = 0;
        let mut t_ingest = Duration::ZERO;
        for file in rx {
            let t = Instant::now();
            match st.ingest(&file, udn_bins::logging::now()).expect("ingest") {
                store::Ingested::Inserted { rows: r } => rows += r,
                other => panic!("{other:?}"),
            }
            t_ingest += t.elapsed();
        }
        (rows, t_ingest, parser.join().unwrap_or_default())
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    assert_eq!(rows, n);
    let c = st.counts().expect("counts");
    assert_eq!((c.http + c.dns + c.probe) as u64, n, "rows in the store");
    println!(
        "{name:9} store    {n} records in {secs:.2} s = {:>9.0} records/s \
         (read+checksum+validate+parse+fold {:.2} s || ingest {:.2} s; \
         {cpu:.2} CPU-s = {:.0} records per CPU-s)",
        n as f64 / secs,
        t_parse.as_secs_f64(),
        t_ingest.as_secs_f64(),
        n as f64 / cpu.max(1e-9)
    );
}

/// The configuration the collector checks HTTP records against: each bench hostname
/// owned by its customer.
fn bench_config() -> String {
    let mut cfg = udn_core::config::SAMPLE.to_owned();
    for h in 0..HOSTS {
        cfg.push_str(&format!(
            "\n[[customers]]\nname = \"customer-{h}\"\n\n[[cdn]]\nhostname = \"www{h}.shop.example\"\n\
             customer = \"customer-{h}\"\norigins = [\"origin{h}.shop.example\"]\n\
             origin_urls = [\"http://127.0.0.21:8080\"]\n"
        ));
    }
    cfg
}

/// `udn control enroll ROLE NAME` against `data`: the instance's credentials directory.
fn enroll(udn: &Path, data: &Path, role: &str, name: &str) -> PathBuf {
    let out = data.with_extension(format!("pki-{role}"));
    let st = std::process::Command::new(udn)
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
        .arg(data)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("udn control enroll");
    assert!(st.success(), "enrolling {role} {name}");
    out
}

fn pipeline_run(name: &str, udn: &Path, pg: Option<&str>, dir: &Path, n: u64) {
    use std::io::BufRead as _;
    let data = dir.with_extension("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("data dir");
    let cfg = data.with_extension("toml");
    std::fs::write(&cfg, bench_config()).expect("config");
    let mut cmd = std::process::Command::new(udn);
    cmd.args(["control", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped());
    if let Some(u) = pg {
        cmd.args(["--postgres", u]);
    }
    let mut control = cmd.spawn().expect("udn control");
    let mut line = String::new();
    let out = control.stdout.take().expect("stdout");
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    let addr = line
        .trim()
        .strip_prefix("udn control: listening on ")
        .expect("control address")
        .to_owned();
    let pki: Vec<PathBuf> = ROLES
        .iter()
        .map(|(_, sub, inst)| enroll(udn, &data, sub, inst))
        .collect();
    // The register of instances is reread every second.
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    let ships: Vec<_> = ROLES
        .iter()
        .zip(&pki)
        .map(|((_, sub, _), pki)| {
            std::process::Command::new(udn)
                .args(["distribute", "--drain", "--dir"])
                .arg(dir.join(sub))
                .args(["--collector", &format!("https://{addr}")])
                .arg("--pki")
                .arg(pki)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("udn distribute")
        })
        .collect();
    let ok = ships
        .into_iter()
        .all(|mut c| c.wait().map(|s| s.success()).unwrap_or(false));
    let secs = start.elapsed().as_secs_f64();
    let _ = control.kill();
    let _ = control.wait();
    assert!(ok, "a distributor failed");
    for (_, sub, _) in ROLES {
        let left = udn_bins::distributor::complete_files(&dir.join(sub)).expect("list");
        assert!(left.is_empty(), "{sub}: {} files not shipped", left.len());
    }
    // Every record stored (none quarantined): what the collector's store holds.
    let loc = match pg {
        Some(u) => Location::Postgres { url: u.to_owned() },
        None => Location::Sqlite {
            dir: data.clone(),
            max_pages: None,
        },
    };
    let c = store::open(&loc)
        .expect("open store")
        .counts()
        .expect("counts");
    assert_eq!(
        (c.http + c.dns + c.probe) as u64,
        n,
        "every record is stored: {c:?}"
    );
    println!(
        "{name:9} pipeline {n} records in {secs:.2} s = {:>9.0} records/s (udn distribute x3 -> HTTPS, mutual TLS -> udn control)",
        n as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&data);
}

fn main() {
    let o = opts();
    let base = std::env::temp_dir().join(format!("udn-log-throughput-{}", std::process::id()));
    let dir = base.join("logs");
    let (files, wsecs, bytes) = write_files(&dir, o.records, o.file_mib << 20);
    println!(
        "writer    FileLog  {} records in {wsecs:.2} s = {:>9.0} records/s ({} files, {:.1} MiB, {:.0} B/record)",
        o.records,
        o.records as f64 / wsecs,
        files.len(),
        bytes as f64 / 1048576.0,
        bytes as f64 / o.records as f64
    );

    let mut backends: Vec<(&str, Location, Option<String>)> = vec![(
        "sqlite",
        Location::Sqlite {
            dir: base.join("sqlite"),
            max_pages: None,
        },
        None,
    )];
    if let Some(url) = &o.postgres {
        let u = fresh_pg(url, "udn_bench_store");
        backends.push(("postgres", Location::Postgres { url: u }, Some(url.clone())));
    }
    if o.split {
        let c0 = cpu_secs();
        let t = Instant::now();
        let mut n = 0;
        for f in &files {
            let body = std::fs::read(f).expect("read");
            let sum = sha256_hex(&body);
            n += parse_file(&body, &sum).expect("valid").records.len();
        }
        println!(
            "split     read+checksum+validate+parse+fold alone: {n} records, {:.2} s, {:.2} CPU-s",
            t.elapsed().as_secs_f64(),
            cpu_secs() - c0
        );
        let c0 = cpu_secs();
        for f in &files {
            let body = std::fs::read(f).expect("read");
            let _ = sha256_hex(&body);
        }
        println!(
            "split     read+checksum alone: {:.2} CPU-s",
            cpu_secs() - c0
        );
        let mut all = Vec::new();
        for f in &files {
            let body = std::fs::read(f).expect("read");
            let sum = sha256_hex(&body);
            all.push(parse_file(&body, &sum).expect("valid").records);
        }
        let c0 = cpu_secs();
        let t = Instant::now();
        for _ in 0..5 {
            for r in &all {
                std::hint::black_box(udn_bins::store::Rollups::fold(r));
            }
        }
        println!(
            "split     rollup fold alone (5 passes): {:.2} s, {:.2} CPU-s",
            t.elapsed().as_secs_f64(),
            cpu_secs() - c0
        );
    }
    for (name, loc, _) in &backends {
        store_run(name, loc, &files, o.records);
    }
    if let Some(udn) = &o.udn {
        for (name, _, pg) in &backends {
            let pg_url = pg.as_deref().map(|u| fresh_pg(u, "udn_bench_pipeline"));
            // The distributor deletes what it shipped: give it a copy, per role.
            let copy = base.join(format!("ship-{name}"));
            for (_, sub, _) in ROLES {
                std::fs::create_dir_all(copy.join(sub)).expect("copy dir");
            }
            for f in &files {
                let sub = f
                    .parent()
                    .and_then(|p| p.file_name())
                    .expect("a role's directory");
                std::fs::copy(f, copy.join(sub).join(f.file_name().unwrap_or_default()))
                    .expect("copy");
            }
            pipeline_run(name, udn, pg_url.as_deref(), &copy, o.records);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
