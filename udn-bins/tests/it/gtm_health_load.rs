//! End to end with the real `udn dns`, seen through `dig`:
//!
//! * LOADP per server: two real `udn loadp` processes (identities of role loadp, one per
//!   server) read their figures from a file (`--from-file`); raising one server's load
//!   moves the answer, crossing the overload cut-off removes it, and a loadp identity
//!   cannot report another server's load or a service result.
//! * Health by quorum: three probe identities of three POPs post service results over
//!   mTLS as probes do; one of three saying down leaves the answer, two move it; a probe
//!   whose clock is a minute behind does not make targets stale; when every probe is
//!   silent the last state holds for the silent hold, then the all-down policy applies.
//! * Hidden standby with `min_healthy`: a real `udn probe` checks published and standby
//!   servers; standby servers join the answer when too few published ones are up, and a
//!   down standby server is never answered.

use crate::pki_support;
use crate::probe_common;

use pki_support::{ids, reqwest_blocking};
use probe_common::{Resource, Udn, free_port, serve_site, temp_dir, wait_for};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_udn");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Dns {
    _child: Proc,
    dns: SocketAddr,
    http: SocketAddr,
}

fn start_dns(config: &Path) -> Dns {
    let mut child = Command::new(BIN)
        .args(["dns", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--name", "dns-e2e", "--pki"])
        .arg(&ids().dns)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udn dns starts");
    let stdout = child.stdout.take().unwrap();
    let child = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut dns, mut http) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dns.is_none() || http.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("udn dns printed its addresses");
        if let Some(rest) = line.strip_prefix("udn dns: serving DNS on ") {
            dns = rest.split(' ').next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("udn dns: HTTP API on https://") {
            http = rest.trim().parse().ok();
        }
    }
    Dns {
        _child: child,
        dns: dns.unwrap(),
        http: http.unwrap(),
    }
}

/// `dig +short` of the GTM name, in answer order.
fn dig(dns: SocketAddr) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string()])
        .args(["+time=2", "+tries=1", "+short", "www.shop.udn.example", "A"])
        .output()
        .expect("dig runs (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}

fn dig_set(dns: SocketAddr) -> BTreeSet<String> {
    dig(dns).into_iter().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Posts metrics as the identity in `id`; returns the reply.
fn post(
    client: &reqwest::blocking::Client,
    dns: &Dns,
    body: serde_json::Value,
) -> serde_json::Value {
    let r = client
        .post(format!("https://{}/v1/metrics", dns.http))
        .json(&body)
        .send()
        .expect("POST /v1/metrics");
    assert_eq!(r.status(), 200);
    r.json().expect("JSON reply")
}

const ZONE: &str = r#"
[security]
allow_target_ranges = ["127.0.0.0/8"]

[[dns.zones]]
apex = "udn.example"
ns = ["ns1.udn.example"]
admin = "hostmaster.udn.example"

[[customers]]
name = "shop"

[[pops]]
name = "fra"
location = { lat = 50.11, lon = 8.68 }
servers = [{ name = "fra-edge-1", addresses = ["127.0.0.41"] }]
"#;

fn write_load(path: &Path, cpu: f32, memory: f32, swap: f32, disk: f32) {
    // Written whole then renamed, so `udn loadp` never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("cpu = {cpu}\nmemory = {memory}\nswap = {swap}\ndisk = {disk}\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn loadp(id: &Path, dns: &Dns, file: &Path) -> Proc {
    let mut child = Command::new(BIN)
        .arg("loadp")
        .arg("--pki")
        .arg(id)
        .args(["--dns-http", &format!("https://{}", dns.http)])
        .args(["--interval-ms", "200", "--from-file"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udn loadp starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("udn loadp prints its identity");
    assert!(line.contains("loadp/"), "{line}");
    Proc(child)
}

#[test]
fn dig_follows_each_servers_loadp_and_the_overload_cut_off() {
    let dir = temp_dir("gtm-loadp");
    let cfg = dir.join("net.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"{ZONE}
[load]
overload_percent = 90.0

[[services]]
name = "http"

[[origins]]
name = "shop-east"
servers = [{{ name = "shop-east-1", addresses = ["127.0.0.31"] }}]

[[origins]]
name = "shop-west"
servers = [{{ name = "shop-west-1", addresses = ["127.0.0.32"] }}]

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
ttl = 1
answers = 2
near_equal = 0.0
weighting = {{ latency = 0.0, load = 1.0, response_time = 0.0 }}
targets = [{{ server = "shop-east-1" }}, {{ server = "shop-west-1" }}]
"#
        ),
    )
    .unwrap();
    let dns = start_dns(&cfg);
    let east_id = ids().pki.enroll("loadp", "shop-east-1", &["127.0.0.1"]);
    let west_id = ids().pki.enroll("loadp", "shop-west-1", &["127.0.0.1"]);
    let (east_file, west_file) = (dir.join("east.load"), dir.join("west.load"));
    // Scores (weights cpu 0.4, memory 0.3, swap 0.2, disk 0.1): east 20, west 40.
    write_load(&east_file, 20.0, 20.0, 20.0, 20.0);
    write_load(&west_file, 40.0, 40.0, 40.0, 40.0);
    let _east = loadp(&east_id, &dns, &east_file);
    let _west = loadp(&west_id, &dns, &west_file);
    let want = |a: &[&str], what: &str| {
        let want: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let got = wait_for(Duration::from_secs(10), || {
            let d = dig(dns.dns);
            (d == want).then_some(d)
        });
        assert!(
            got.is_some(),
            "{what}: want {want:?}, dig says {:?}",
            dig(dns.dns)
        );
        for _ in 0..3 {
            assert_eq!(dig(dns.dns), want, "{what}: stable");
        }
    };
    want(&["127.0.0.31", "127.0.0.32"], "east is less loaded");

    // Raise east's swap and disk only: 0.4*20 + 0.3*20 + 0.2*100 + 0.1*100 = 44 > 40.
    write_load(&east_file, 20.0, 20.0, 100.0, 100.0);
    want(
        &["127.0.0.32", "127.0.0.31"],
        "east's swap and disk move it behind west",
    );

    // East crosses the cut-off (score 95 >= 90): it is no longer answered at all.
    write_load(&east_file, 95.0, 95.0, 95.0, 95.0);
    want(&["127.0.0.32"], "overloaded east is cut");

    // Both over the cut-off: no other is available, so both are answered again.
    write_load(&west_file, 99.0, 99.0, 99.0, 99.0);
    want(
        &["127.0.0.31", "127.0.0.32"],
        "both overloaded: both answered, by score",
    );

    // The attacker's side: east's loadp identity claims west is idle, and posts a
    // service result; both are refused with the reason and change nothing.
    let east_client = reqwest_blocking(&east_id);
    let at = now_ms();
    let reply = post(
        &east_client,
        &dns,
        serde_json::json!([
            {"kind": "load", "server": "shop-west-1", "percent": 0.0, "at": at,
             "parts": {"cpu": 0.0, "memory": 0.0, "swap": 0.0, "disk": 0.0}},
            {"kind": "service", "server": "shop-west-1", "service": "http", "ok": false,
             "response_ms": 1.0, "at": at}
        ]),
    );
    assert_eq!(reply["applied"], 0, "{reply}");
    let rejected = reply["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{reply}");
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .contains("only the load of server \"shop-east-1\""),
        "{reply}"
    );
    assert!(
        rejected[1]["error"]
            .as_str()
            .unwrap()
            .contains("role loadp"),
        "{reply}"
    );
    for _ in 0..5 {
        assert_eq!(
            dig(dns.dns),
            ["127.0.0.31", "127.0.0.32"],
            "nothing changed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three probe identities (three POPs) posting over mTLS every 300 ms what each one
/// sees of east (west is always up), each with its own clock offset.
struct Probes {
    stop: Arc<AtomicBool>,
    /// Per probe: east passes its check; posting on; clock offset, ms.
    east_ok: [Arc<AtomicBool>; 3],
    on: [Arc<AtomicBool>; 3],
    skew: [Arc<AtomicI64>; 3],
}

impl Probes {
    fn start(dns: &Dns, ids_: [PathBuf; 3], skews: [i64; 3]) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let east_ok = std::array::from_fn(|_| Arc::new(AtomicBool::new(true)));
        let on = std::array::from_fn(|_| Arc::new(AtomicBool::new(true)));
        let skew = std::array::from_fn(|i| Arc::new(AtomicI64::new(skews[i])));
        let p = Probes {
            stop,
            east_ok,
            on,
            skew,
        };
        for (i, id) in ids_.into_iter().enumerate() {
            let (stop, ok, on, skew) = (
                p.stop.clone(),
                p.east_ok[i].clone(),
                p.on[i].clone(),
                p.skew[i].clone(),
            );
            let url = format!("https://{}/v1/metrics", dns.http);
            std::thread::spawn(move || {
                let client = reqwest_blocking(&id);
                while !stop.load(Ordering::SeqCst) {
                    if on.load(Ordering::SeqCst) {
                        let at = now_ms() + skew.load(Ordering::SeqCst);
                        let body = serde_json::json!([
                            {"kind": "service", "server": "shop-east-1", "service": "http",
                             "ok": ok.load(Ordering::SeqCst), "response_ms": 5.0, "at": at},
                            {"kind": "service", "server": "shop-west-1", "service": "http",
                             "ok": true, "response_ms": 5.0, "at": at}
                        ]);
                        match client.post(&url).json(&body).send() {
                            Ok(r) => {
                                let v: serde_json::Value = r.json().unwrap_or_default();
                                assert_eq!(v["applied"], 2, "probe {i}: {v}");
                            }
                            Err(e) => eprintln!("probe {i}: {e}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            });
        }
        p
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn dig_health_by_quorum_of_three_pops_skewed_clock_and_silence() {
    let dir = temp_dir("gtm-quorum");
    let cfg = dir.join("net.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"{ZONE}
[health]
up_after = 1
down_after = 1
grace_secs = 2
quorum = 2
silent_hold_secs = 4

[[services]]
name = "http"

[[origins]]
name = "shop-east"
servers = [{{ name = "shop-east-1", addresses = ["127.0.0.31"] }}]

[[origins]]
name = "shop-west"
servers = [{{ name = "shop-west-1", addresses = ["127.0.0.32"] }}]

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
ttl = 1
unchecked = "down"
standby = ["127.0.0.39"]
# West (weight 0) is the backup: answered only while east is down.
targets = [{{ server = "shop-east-1", weight = 1 }}, {{ server = "shop-west-1", weight = 0 }}]
"#
        ),
    )
    .unwrap();
    let dns = start_dns(&cfg);
    let loopback = ["127.0.0.1"];
    let probe_ids = [
        ids().probe.clone(), // probe/fra
        ids().pki.enroll("probe", "nyc", &loopback),
        ids().pki.enroll("probe", "sin", &loopback),
    ];
    // sin's clock is a minute behind (far more than the 2 s grace and the 4 s hold).
    let p = Probes::start(&dns, probe_ids, [0, 0, -60_000]);
    let answer = |want: &str, within: Duration, what: &str| {
        let got = wait_for(within, || {
            let d = dig(dns.dns);
            (d == [want]).then_some(())
        });
        assert!(
            got.is_some(),
            "{what}: want {want}, dig says {:?}",
            dig(dns.dns)
        );
    };
    let holds = |want: &str, for_: Duration, what: &str| {
        let t = Instant::now();
        while t.elapsed() < for_ {
            assert_eq!(dig(dns.dns), [want], "{what}");
            std::thread::sleep(Duration::from_millis(150));
        }
    };
    answer(
        "127.0.0.31",
        Duration::from_secs(10),
        "all three see east up",
    );

    // One of three probes (fra) sees east down: the answer stays, for longer than the
    // grace (its vote stays fresh all along).
    p.east_ok[0].store(false, Ordering::SeqCst);
    holds("127.0.0.31", Duration::from_secs(3), "one of three down");

    // Two of three: east is down, west answers.
    p.east_ok[1].store(false, Ordering::SeqCst);
    answer("127.0.0.32", Duration::from_secs(3), "two of three down");
    holds("127.0.0.32", Duration::from_secs(1), "two of three down");

    // nyc sees east again; fra alone is not a quorum.
    p.east_ok[1].store(true, Ordering::SeqCst);
    answer("127.0.0.31", Duration::from_secs(3), "back to one of three");

    // fra and nyc fall silent; sin's results, dated a minute back by its clock, still
    // keep the targets fresh: freshness is judged by receive time.
    p.on[0].store(false, Ordering::SeqCst);
    p.on[1].store(false, Ordering::SeqCst);
    holds(
        "127.0.0.31",
        Duration::from_secs(8),
        "a probe a minute behind does not make targets stale",
    );

    // Every probe silent: the last state holds for grace + hold (6 s), then stale, and
    // the all-down policy (the standby address) applies.
    p.on[2].store(false, Ordering::SeqCst);
    let silent = Instant::now();
    holds(
        "127.0.0.31",
        Duration::from_secs(4),
        "silent: last known state",
    );
    answer("127.0.0.39", Duration::from_secs(6), "silent past the hold");
    let took = silent.elapsed();
    eprintln!("all probes silent: standby after {took:?} (grace 2 s + hold 4 s)");
    assert!(took >= Duration::from_millis(5_500), "{took:?}");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

fn health(ok: bool) -> Resource {
    Resource {
        status: if ok { 200 } else { 503 },
        body: if ok { b"ok".to_vec() } else { b"down".to_vec() },
        head_delay: Duration::ZERO,
        split_at: 0,
        split_delay: Duration::ZERO,
    }
}

#[test]
fn dig_adds_health_checked_standby_servers_below_min_healthy() {
    const PUB: [&str; 3] = ["127.0.0.51", "127.0.0.52", "127.0.0.53"];
    const STBY: [&str; 2] = ["127.0.0.54", "127.0.0.55"];
    let port = free_port(PUB[0]);
    let sites: HashMap<&str, Arc<Mutex<HashMap<String, Resource>>>> = PUB
        .iter()
        .chain(STBY.iter())
        .map(|a| {
            let site = Arc::new(Mutex::new(HashMap::from([(
                "/health".to_string(),
                health(true),
            )])));
            serve_site(&format!("{a}:{port}"), site.clone());
            (*a, site)
        })
        .collect();
    let set_up = |a: &str, ok: bool| {
        sites[a]
            .lock()
            .unwrap()
            .insert("/health".into(), health(ok));
    };
    let mut text = format!(
        r#"{ZONE}
[health]
up_after = 1
down_after = 1
grace_secs = 10

[[services]]
name = "http"
port = {port}
path = "/health"
expect_content = "ok"
interval_secs = 1
timeout_ms = 500

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
ttl = 1
answers = 8
min_healthy = 2
unchecked = "down"
standby = ["127.0.0.59"]
standby_servers = ["s4", "s5"]
targets = [{{ server = "s1" }}, {{ server = "s2" }}, {{ server = "s3" }}]
"#
    );
    for (i, a) in PUB.iter().chain(STBY.iter()).enumerate() {
        text += &format!(
            "\n[[origins]]\nname = \"site{0}\"\npop = \"fra\"\nservers = [{{ name = \"s{0}\", addresses = [\"{a}\"] }}]\n",
            i + 1
        );
    }
    let dir = temp_dir("gtm-standby");
    let cfg = dir.join("net.toml");
    std::fs::write(&cfg, text).unwrap();
    let dns = start_dns(&cfg);
    let _probe = Udn::probe(&[
        "--config",
        cfg.to_str().unwrap(),
        "--pop",
        "fra",
        "--dns-http",
        &format!("https://{}", dns.http),
        "--pki",
        ids().probe.to_str().unwrap(),
        "--latency-methods",
        "dns",
    ]);
    let want = |w: &[&str], what: &str| {
        let w = set(w);
        let got = wait_for(Duration::from_secs(10), || {
            (dig_set(dns.dns) == w).then_some(())
        });
        assert!(
            got.is_some(),
            "{what}: want {w:?}, dig says {:?}",
            dig(dns.dns)
        );
        for _ in 0..3 {
            assert_eq!(dig_set(dns.dns), w, "{what}: stable");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    want(&PUB, "three published up: no standby");
    set_up(PUB[0], false);
    want(&PUB[1..], "two up = min_healthy: still no standby");
    set_up(PUB[1], false);
    want(
        &[PUB[2], STBY[0], STBY[1]],
        "one up < min_healthy: the standby servers are added",
    );
    set_up(STBY[0], false);
    want(
        &[PUB[2], STBY[1]],
        "a down standby server is never answered",
    );
    set_up(PUB[2], false);
    want(&[STBY[1]], "every published down: the up standby server");
    set_up(STBY[1], false);
    want(
        &["127.0.0.59"],
        "everything down: the all-down policy (unchecked standby address)",
    );
    set_up(PUB[0], true);
    want(
        &[PUB[0]],
        "one published up, both standby servers down: only it",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
