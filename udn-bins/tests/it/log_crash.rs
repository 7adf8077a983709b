//! Crash tests of the logging pipeline: records flow from real log files through the
//! real `udn distribute` to the real `udn control` (collector + store) while one of the
//! two is killed with SIGKILL at random points and restarted. Afterwards the store must
//! hold exactly the records written: nothing lost, nothing doubled. Each runs against
//! SQLite and PostgreSQL (`UDN_TEST_POSTGRES`; see scripts/start-postgres.sh).
//!
//! `UDN_TEST_SEED=N` replays a run's kill schedule.

use crate::log_util;

use log_util::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use udn_bins::logging::FileLog;
use udn_core::log::{Role, RotationPolicy};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    Collector,
    Distributor,
}

struct Written {
    http: u64,
    dns: u64,
    probe: u64,
    http_bytes: i64,
}

/// Writes records from three writers (edge, dns, probe) with small files, paced over
/// about `secs` seconds.
fn write_logs(dir: &std::path::Path, per_writer: u64, secs: u64, stop: Arc<AtomicBool>) -> Written {
    let policy = RotationPolicy {
        max_bytes: 64 * 1024,
        max_age: Duration::from_millis(300),
    };
    let writers = [
        (
            FileLog::new(&dir.join("edge"), Role::Edge, "test-edge", policy).unwrap(),
            0u8,
            "e",
        ),
        (
            FileLog::new(&dir.join("dns"), Role::Dns, "test-dns", policy).unwrap(),
            1,
            "d",
        ),
        (
            FileLog::new(&dir.join("probe"), Role::Probe, "test-probe", policy).unwrap(),
            2,
            "p",
        ),
    ];
    let mut w = Written {
        http: 0,
        dns: 0,
        probe: 0,
        http_bytes: 0,
    };
    let batches = 50;
    let per_batch = per_writer / batches;
    for b in 0..batches {
        for (log, kind, name) in &writers {
            for j in 0..per_batch {
                let i = b * per_batch + j;
                let now = udn_bins::logging::now();
                let rec = record(*kind, name, i, now);
                log.write_at(&rec, now).unwrap();
                match kind {
                    0 => {
                        w.http += 1;
                        w.http_bytes += (100 + i % 1000) as i64;
                    }
                    1 => w.dns += 1,
                    _ => w.probe += 1,
                }
            }
            log.tick(udn_bins::logging::now()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(secs * 1000 / batches));
    }
    for (log, _, _) in &writers {
        log.flush_complete().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    w
}

fn crash_run(backend: Backend, victim: Victim) {
    let name = format!("crash-{}-{victim:?}", backend.name());
    let tmp = TempDir::new(&name);
    let logs = tmp.path().join("logs");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&logs).unwrap();
    let mut rng = Rng::from_env(&name);

    let mut control = Control::start(&data, &backend, "127.0.0.1:0", &[]);
    let addr = control.addr.clone();
    let collectors = vec![control.url()];
    let mut dist = Distributor::start(&logs, &collectors, &[], &data);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let logs = logs.clone();
        let stop = stop.clone();
        std::thread::spawn(move || write_logs(&logs, 6_000, 4, stop))
    };

    let mut kills = 0;
    while !stop.load(Ordering::SeqCst) || kills < 4 {
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        match victim {
            Victim::Collector => {
                control.kill9();
                std::thread::sleep(Duration::from_millis(rng.below(300)));
                control = Control::start(&data, &backend, &addr, &[]);
            }
            Victim::Distributor => {
                dist.kill9();
                std::thread::sleep(Duration::from_millis(rng.below(300)));
                dist = Distributor::start(&logs, &collectors, &[], &data);
            }
        }
        kills += 1;
        if kills > 40 {
            break;
        }
    }
    let written = writer.join().unwrap();
    eprintln!("{name}: {kills} kills");
    // ClickHouse takes a killed collector's attempt for dead only after a minute
    // (`store::clickhouse::STALE_ATTEMPT_MS`), then the distributor's backoff.
    let drain = if backend.name() == "clickhouse" {
        300
    } else {
        120
    };
    wait_drained(&logs, Duration::from_secs(drain));
    dist.kill9();
    control.kill9();

    for role in ROLES {
        assert!(
            !logs.join(role).join("rejected").exists(),
            "nothing may be rejected"
        );
    }
    let q = data.join("quarantine");
    assert!(
        !q.exists() || std::fs::read_dir(&q).unwrap().next().is_none(),
        "nothing may be quarantined"
    );
    let mut store = backend.open(&data);
    assert_store_matches(
        store.as_mut(),
        written.http,
        written.dns,
        written.probe,
        written.http_bytes,
    );
    eprintln!(
        "{name}: {} records stored exactly once",
        written.http + written.dns + written.probe
    );
}

#[test]
fn sqlite_survives_collector_kills() {
    crash_run(Backend::Sqlite, Victim::Collector);
}

#[test]
fn sqlite_survives_distributor_kills() {
    crash_run(Backend::Sqlite, Victim::Distributor);
}

#[test]
fn postgres_survives_collector_kills() {
    if let Some(b) = postgres("crash_collector") {
        crash_run(b, Victim::Collector);
    }
}

#[test]
fn postgres_survives_distributor_kills() {
    if let Some(b) = postgres("crash_distributor") {
        crash_run(b, Victim::Distributor);
    }
}

#[test]
fn clickhouse_survives_collector_kills() {
    if let Some(b) = clickhouse("crash_collector") {
        crash_run(b, Victim::Collector);
    }
}

#[test]
fn clickhouse_survives_distributor_kills() {
    if let Some(b) = clickhouse("crash_distributor") {
        crash_run(b, Victim::Distributor);
    }
}
