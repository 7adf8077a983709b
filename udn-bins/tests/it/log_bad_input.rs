//! Bad input and bad days for the collector and the distributor, against the real `udn`
//! binary: truncated files, garbage, unknown roles, foreign files, checksum mismatches,
//! a full store, a collector that is down. Each gives a clear error and loses nothing
//! else.

use crate::log_util;

use log_util::*;
use std::path::Path;
use std::time::{Duration, Instant};
use udn_bins::collector::sha256_hex;
use udn_bins::logging::FileLog;
use udn_core::Timestamp;
use udn_core::log::{Role, RotationPolicy};

fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    body: &[u8],
    sum: &str,
) -> (u16, serde_json::Value) {
    let r = client
        .post(format!("{url}/v1/logs"))
        .header("X-Udn-Sha256", sum)
        .header("X-Udn-File-Name", "test.jsonl")
        .body(body.to_vec())
        .send()
        .expect("collector reachable");
    let status = r.status().as_u16();
    let v = serde_json::from_slice(&r.bytes().unwrap_or_default()).unwrap_or_default();
    (status, v)
}

/// Writes `n` records of each kind into complete files in `dir/<role>` (instance
/// `inst`); returns the paths of the files (edge first, then DNS, then probe).
fn write_files(dir: &Path, inst: &str, n: u64, max_bytes: u64) -> Vec<std::path::PathBuf> {
    let policy = RotationPolicy {
        max_bytes,
        max_age: Duration::from_secs(3600),
    };
    // Files are named by their instance and opening time: each batch (`inst`) gets its
    // own hour, so two batches of one test never share a file id.
    let batch = inst
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        % 1000;
    let t0 = Timestamp::from_secs(1_800_000_000 + batch * 3600);
    let mut files = Vec::new();
    for (role, kind) in [(Role::Edge, 0u8), (Role::Dns, 1), (Role::Probe, 2)] {
        let d = dir.join(role.as_str());
        // The instance name is the shipping certificate's (`test-<role>`, log_util).
        let log = FileLog::new(&d, role, &format!("test-{}", role.as_str()), policy).unwrap();
        for i in 0..n {
            let ts = Timestamp::from_millis(t0.as_millis() + i * 100);
            log.write_at(&record(kind, inst, i, ts), ts).unwrap();
        }
        log.flush_complete().unwrap();
        files.extend(udn_bins::distributor::complete_files(&d).unwrap());
    }
    files
}

fn http_bytes(n: u64) -> i64 {
    (0..n).map(|i| (100 + i % 1000) as i64).sum()
}

fn header(role: &str, magic: &str, version: u32, id: &str) -> String {
    format!(
        "{{\"magic\":\"{magic}\",\"version\":{version},\"file_id\":\"{id}\",\"role\":\"{role}\",\"instance\":\"x\",\"opened_at\":0}}\n"
    )
}

fn bad_files_are_quarantined(backend: Backend) {
    let tmp = TempDir::new(&format!("bad-{}", backend.name()));
    let data = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    let control = Control::start(&data, &backend, "127.0.0.1:0", &[]);
    let url = control.url();
    // Edge first, as write_files returns the files.
    let clients: Vec<_> = ROLES.iter().map(|r| role_client(&data, r)).collect();
    let client = clients[0].clone();

    let good = write_files(&logs, "good", 50, 1 << 30);
    assert_eq!(good.len(), 3);
    let bodies: Vec<Vec<u8>> = good.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut next_good = bodies.iter().zip(clients.iter());
    let mut post_good = |expect_rows: u64| {
        let (b, client) = next_good.next().unwrap();
        let (status, v) = post(client, &url, b, &sha256_hex(b));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "inserted", "{v}");
        assert_eq!(v["rows"], expect_rows, "{v}");
    };
    post_good(50);

    let b0 = &bodies[0];
    let mut rng = Rng(0x5eed_1234);
    let garbage: Vec<u8> = (0..5000).map(|_| rng.next() as u8).collect();
    // Same header (file id), one more record: a different file claiming the same id.
    let mut conflict = b0.clone();
    let last_line_start = b0[..b0.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    conflict.extend_from_slice(&b0[last_line_start..]);
    let cases: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        (
            "truncated",
            b0[..b0.len() - 10].to_vec(),
            None,
            "truncated file",
        ),
        ("garbage", garbage, None, "not a udn log header"),
        (
            "unknown role",
            format!("{}{{}}\n", header("printer", "udn-log", 1, "r1")).into_bytes(),
            None,
            "unknown role \"printer\"",
        ),
        (
            "foreign",
            header("edge", "nginx-log", 1, "f1").into_bytes(),
            None,
            "foreign file",
        ),
        (
            "future version",
            header("edge", "udn-log", 99, "v1").into_bytes(),
            None,
            "unsupported format version 99",
        ),
        (
            "bad line",
            format!(
                "{}{{\"type\":\"http\",\"ts\":1}}\n",
                header("edge", "udn-log", 1, "b1")
            )
            .into_bytes(),
            None,
            "line 2:",
        ),
        (
            "checksum mismatch",
            b0.clone(),
            Some(sha256_hex(b"something else")),
            "checksum mismatch",
        ),
        (
            "no checksum",
            b0.clone(),
            Some(String::new()),
            "missing or malformed",
        ),
        ("empty", Vec::new(), None, "empty file"),
        (
            "NUL in a string",
            format!(
                "{}{}\n",
                header("probe", "udn-log", 1, "n1"),
                r#"{"type":"probe","ts":1,"pop":"fra","kind":"latency","target":"a\u0000b","method":"dns","ok":true,"value":1.0}"#
            )
            .into_bytes(),
            None,
            "line 2: a string contains a NUL character",
        ),
        (
            "same id, other content",
            conflict,
            None,
            "was stored before with checksum",
        ),
    ];
    for (what, body, sum, expect) in &cases {
        let sum = sum.clone().unwrap_or_else(|| sha256_hex(body));
        let (status, v) = post(&client, &url, body, &sum);
        assert_eq!(status, 422, "{what}: {v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(
            err.contains(expect),
            "{what}: error {err:?} should say {expect:?}"
        );
        let q = Path::new(v["quarantined"].as_str().unwrap());
        assert_eq!(&std::fs::read(q).unwrap(), body, "{what}: quarantined copy");
        let reason = std::fs::read_to_string(format!("{}.reason", q.display())).unwrap();
        assert_eq!(reason.trim(), err, "{what}: reason file");
    }
    // The rest keeps flowing, and a retried file is acknowledged without a second copy.
    post_good(50);
    let (status, v) = post(&client, &url, b0, &sha256_hex(b0));
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("duplicate")),
        "{v}"
    );
    post_good(50);

    drop(control);
    let mut store = backend.open(&data);
    assert_store_matches(store.as_mut(), 50, 50, 50, http_bytes(50));
}

#[test]
fn bad_files_are_quarantined_and_the_rest_flows_sqlite() {
    bad_files_are_quarantined(Backend::Sqlite);
}

#[test]
fn bad_files_are_quarantined_and_the_rest_flows_postgres() {
    if let Some(b) = postgres("bad_files") {
        bad_files_are_quarantined(b);
    }
}

/// A drain run of `udn distribute` per role directory; returns the files shipped and
/// rejected over all of them, and their summary lines.
fn drain(logs: &Path, collectors: &[String], data: &Path) -> (u64, u64, String) {
    let mut d = Distributor::start(logs, collectors, &["--drain"], data);
    let (mut shipped, mut rejected, mut all) = (0, 0, String::new());
    use std::io::Read as _;
    for child in &mut d.children {
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "udn distribute --drain failed: {out}");
        let num = |after: &str| -> u64 {
            out.split(after)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        shipped += num("shipped ");
        rejected += num("rejected ");
        all.push_str(&out);
    }
    (shipped, rejected, all)
}

#[test]
fn distributor_keeps_rejected_files_and_ships_the_rest() {
    let tmp = TempDir::new("reject");
    let data = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    write_files(&logs, "a", 100, 4096);
    let edge = logs.join("edge");
    let bad = edge.join("zz-garbage.jsonl");
    std::fs::write(&bad, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let open = edge.join("edge-b-1-1.jsonl.open");
    std::fs::write(&open, b"partial").unwrap();

    let (_, rejected, out) = drain(&logs, &[control.url()], &data);
    assert_eq!(rejected, 1, "{out}");
    assert!(!bad.exists());
    let kept = edge.join("rejected/zz-garbage.jsonl");
    assert_eq!(std::fs::read(&kept).unwrap(), b"GET / HTTP/1.1\r\n\r\n");
    let reason = std::fs::read_to_string(edge.join("rejected/zz-garbage.jsonl.reason")).unwrap();
    assert!(reason.contains("not a udn log header"), "{reason}");
    assert!(open.exists(), "a file still being written is never shipped");
    assert_eq!(log_files(&logs), vec![open.clone()]);
    drop(control);
    let mut store = Backend::Sqlite.open(&data);
    assert_store_matches(store.as_mut(), 100, 100, 100, http_bytes(100));
}

#[test]
fn distributor_fails_over_and_round_robins() {
    let tmp = TempDir::new("failover");
    let data = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    // Two live collectors on one SQLite store, and one that is down.
    let a = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let b = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let files = write_files(&logs, "rr", 300, 4096);
    assert!(files.len() >= 6, "{}", files.len());
    let (shipped, _, out) = drain(&logs, &[dead, a.url(), b.url()], &data);
    assert_eq!(shipped, files.len() as u64, "{out}");

    let client = role_client(&data, "control");
    for c in [&a, &b] {
        let m = client
            .get(format!("{}/metrics", c.url()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(
            m.lines()
                .any(|l| l.starts_with("udn_collector_files_total{outcome=\"inserted\"}")),
            "collector {} got no file:\n{m}",
            c.addr
        );
    }
    drop((a, b));
    let mut store = Backend::Sqlite.open(&data);
    assert_store_matches(store.as_mut(), 300, 300, 300, http_bytes(300));
}

#[test]
fn full_store_answers_503_and_loses_nothing() {
    let tmp = TempDir::new("full");
    let data = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    // Room for the schema and little else (4 KiB pages).
    let mut control = Control::start(
        &data,
        &Backend::Sqlite,
        "127.0.0.1:0",
        &["--sqlite-max-pages", "64"],
    );
    let addr = control.addr.clone();
    let files = write_files(&logs, "full", 2000, 32 * 1024);

    // One file by hand: the answer says why.
    let mut saw_full = false;
    for f in &files {
        let body = std::fs::read(f).unwrap();
        let client = role_client(&data, role_of(f));
        let (status, v) = post(&client, &control.url(), &body, &sha256_hex(&body));
        if status == 503 {
            assert_eq!(v["full"], true, "{v}");
            assert!(
                v["error"].as_str().unwrap().contains("store unavailable"),
                "{v}"
            );
            saw_full = true;
            break;
        }
        assert_eq!(status, 200, "{v}");
    }
    assert!(saw_full, "the capped store never filled up");

    // The distributor keeps every file it could not deliver and retries.
    let dist = Distributor::start(&logs, &[control.url()], &[], &data);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !log_files(&logs).is_empty(),
        "files must wait while the store is full"
    );
    for role in ROLES {
        assert!(
            !logs.join(role).join("rejected").exists(),
            "a full store is not the file's fault"
        );
    }

    // Make room: restart without the cap on the same address; everything arrives once.
    control.kill9();
    control = Control::start(&data, &Backend::Sqlite, &addr, &[]);
    wait_drained(&logs, Duration::from_secs(60));
    drop(dist);
    drop(control);
    let mut store = Backend::Sqlite.open(&data);
    assert_store_matches(store.as_mut(), 2000, 2000, 2000, http_bytes(2000));
}

/// A real full disk: the collector's data directory on a tiny tmpfs (needs root and
/// `mount`; skipped loudly otherwise, the `--sqlite-max-pages` test above covers the
/// same path). The disk fills, files are answered 503 and kept, the tmpfs is grown
/// (`remount,size=`), and every record arrives once.
#[test]
fn full_disk_answers_503_and_loses_nothing() {
    let tmp = TempDir::new("disk");
    let data = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&data)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "\n!!!!!!!! SKIPPING full_disk_answers_503_and_loses_nothing: cannot mount a tmpfs (not root?)\n"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());

    let control = Control::start(&data, &Backend::Sqlite, "127.0.0.1:0", &[]);
    // Enrolled while the disk still has room (the CA's register is on it too).
    for role in ROLES {
        role_pki(&data, role);
    }
    let files = write_files(&logs, "disk", 6000, 32 * 1024);
    let mut saw_full = false;
    for f in &files {
        let body = std::fs::read(f).unwrap();
        let client = role_client(&data, role_of(f));
        let (status, v) = post(&client, &control.url(), &body, &sha256_hex(&body));
        if status == 503 {
            assert_eq!(v["full"], true, "{v}");
            saw_full = true;
            break;
        }
        assert_eq!(status, 200, "{v}");
    }
    assert!(saw_full, "the 512 KiB disk never filled up");

    let dist = Distributor::start(&logs, &[control.url()], &[], &data);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!log_files(&logs).is_empty());
    for role in ROLES {
        assert!(
            !logs.join(role).join("rejected").exists(),
            "a full disk is not the file's fault"
        );
    }

    // Room again, without restarting anything.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(grown.success());
    wait_drained(&logs, Duration::from_secs(60));
    drop(dist);
    drop(control);
    let mut store = Backend::Sqlite.open(&data);
    assert_store_matches(store.as_mut(), 6000, 6000, 6000, http_bytes(6000));
    drop(store);
}

/// PostgreSQL drops the collector's connection (the backend is terminated, as on a
/// server restart): files are answered 503 until the collector reconnects, the
/// distributor retries, and every record arrives once.
#[test]
fn postgres_connection_loss_costs_a_retry_not_data() {
    let Some(backend) = postgres("conn_loss") else {
        return;
    };
    let Backend::Postgres(url) = &backend else {
        unreachable!()
    };
    let db = url.rsplit('/').next().unwrap().to_owned();
    let tmp = TempDir::new("pgloss");
    let data = tmp.path().join("data");
    let logs = tmp.path().join("logs");
    let control = Control::start(&data, &backend, "127.0.0.1:0", &[]);
    let first = write_files(&logs, "before", 100, 1 << 30);
    let dist = Distributor::start(&logs, &[control.url()], &[], &data);
    wait_drained(&logs, Duration::from_secs(30));
    assert_eq!(first.len(), 3);

    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .unwrap();
    assert!(
        killed >= 1,
        "the collector's connection should have been terminated"
    );

    write_files(&logs, "after", 100, 1 << 30);
    wait_drained(&logs, Duration::from_secs(30));
    drop(dist);
    drop(control);
    let mut store = backend.open(&data);
    let c = store.counts().unwrap();
    assert_eq!((c.files, c.http, c.dns, c.probe), (6, 200, 200, 200));
}
