//! End to end with the real DNS server: `udn probe` reports to `udn dns`, and `dig`
//! shows the answers move.
//!
//! * Failover: an origin stops passing its service test; within interval x failure
//!   threshold + 1 s `dig` returns the other site; the hidden standby only when both are
//!   down; the origin's answer returns after the success threshold; a single lost check
//!   does not flap.
//! * An FTP monitor: the same failover when the origins are FTP servers (pyftpdlib) and
//!   the monitor retrieves a file and checks its content.
//! * Latency routing, measured: three delaying fake resolvers (127.0.{1,2,3}.1) answer
//!   each POP's probe after their own delay; `dig -b <resolver>` gets the POP with the
//!   lowest measured RTT.
//!
//! `udn dns` is built on another branch; where this tree's `udn dns` is not built yet
//! (its `--help` has no `--listen`), the tests say SKIPPED. `UDN_DNS_BIN` may point at
//! a `udn` binary that has it.

use crate::pki_support;
use crate::probe_common;

use pki_support::{curl_args, ids};

use probe_common::{FtpServer, Resource, Udn, free_port, serve_site, temp_dir, wait_for};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

fn dns_binary() -> Option<PathBuf> {
    let bin = std::env::var_os("UDN_DNS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_udn")));
    let out = Command::new(&bin).args(["dns", "--help"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .contains("--listen")
        .then_some(bin)
}

struct Dns {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dns(bin: &PathBuf, config: &str) -> Dns {
    let mut child = Command::new(bin)
        .args([
            "dns",
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-e2e",
            "--pki",
            ids().dns.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udn dns starts");
    let stdout = child.stdout.take().unwrap();
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
        child,
        dns: dns.unwrap(),
        http: http.unwrap(),
    }
}

/// A probe's `GET /v1/status` over its admin listener, as the control plane.
fn probe_status(api: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(curl_args(&ids().control))
        .arg(format!("https://{api}/v1/status"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short` of the GTM name from `source` (dig's `-b`).
fn dig(dns: SocketAddr, source: &str) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "-b", source])
        .args(["+time=2", "+tries=1", "+short", "www.shop.udn.example", "A"])
        .output()
        .expect("dig runs (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn health(body: &str, status: u16) -> Resource {
    Resource {
        status,
        body: body.as_bytes().to_vec(),
        head_delay: Duration::ZERO,
        split_at: 0,
        split_delay: Duration::ZERO,
    }
}

fn site_at(addr: &str, port: u16) -> Arc<Mutex<HashMap<String, Resource>>> {
    let site = Arc::new(Mutex::new(HashMap::from([(
        "/health".to_string(),
        health("ok", 200),
    )])));
    serve_site(&format!("{addr}:{port}"), site.clone());
    site
}

const ZONE: &str = r#"
[[dns.zones]]
apex = "udn.example"
ns = ["ns1.udn.example"]
admin = "hostmaster.udn.example"
"#;

fn failover_config(port: u16) -> String {
    format!(
        r#"
# The test origins run on loopback, which customer destinations may not reach by
# default.
[security]
allow_target_ranges = ["127.0.0.0/8"]

[health]
up_after = 2
down_after = 3
grace_secs = 30
{ZONE}
[[services]]
name = "http"
port = {port}
path = "/health"
expect_content = "ok"
interval_secs = 1
timeout_ms = 500

[[pops]]
name = "fra"
location = {{ lat = 50.11, lon = 8.68 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.41"] }}]

[[origins]]
name = "shop-east"
pop = "fra"
servers = [{{ name = "shop-east-1", addresses = ["127.0.0.31"] }}]

[[origins]]
name = "shop-west"
pop = "fra"
servers = [{{ name = "shop-west-1", addresses = ["127.0.0.32"] }}]

[[customers]]
name = "shop"

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
ttl = 1
standby = ["127.0.0.39"]
# West (weight 0) is the backup: answered only while east is down.
targets = [{{ server = "shop-east-1", weight = 1 }}, {{ server = "shop-west-1", weight = 0 }}]
"#
    )
}

/// The fra probe of the failover tests, reporting to `dns`.
fn failover_probe(cfg: &std::path::Path, dns: &Dns) -> Udn {
    Udn::probe(&[
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
    ])
}

/// Whether the probe sees both origins' services up.
fn both_up(probe: &Udn) -> Option<()> {
    let st: serde_json::Value = serde_json::from_str(&probe_status(probe.http)).ok()?;
    let s = st["services"].as_array()?;
    (s.len() == 2 && s.iter().all(|x| x["state"] == "up")).then_some(())
}

#[test]
fn dig_follows_the_probes_failover() {
    let Some(bin) = dns_binary() else {
        eprintln!(
            "SKIPPED dig_follows_the_probes_failover: `udn dns` is not built in this tree (set UDN_DNS_BIN)"
        );
        return;
    };
    let port = free_port("127.0.0.31");
    let east = site_at("127.0.0.31", port);
    let west = site_at("127.0.0.32", port);
    let dir = temp_dir("probe-dns-failover");
    let cfg = dir.join("net.toml");
    std::fs::write(&cfg, failover_config(port)).unwrap();
    let dns = start_dns(&bin, cfg.to_str().unwrap());
    let probe = failover_probe(&cfg, &dns);
    let answer = || dig(dns.dns, "127.0.0.1");
    wait_for(Duration::from_secs(10), || both_up(&probe)).expect("both origins up");
    assert_eq!(answer(), ["127.0.0.31"]);

    // One lost check: the answer stays east.
    east.lock()
        .unwrap()
        .insert("/health".into(), health("down", 503));
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1_100) {
        assert_eq!(answer(), ["127.0.0.31"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    east.lock()
        .unwrap()
        .insert("/health".into(), health("ok", 200));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        assert_eq!(answer(), ["127.0.0.31"], "no flap on a single lost check");
        std::thread::sleep(Duration::from_millis(200));
    }

    // East fails: west within interval x threshold + 1 s.
    east.lock()
        .unwrap()
        .insert("/health".into(), health("down", 503));
    let t0 = Instant::now();
    wait_for(Duration::from_secs(10), || {
        (answer() == ["127.0.0.32"]).then_some(())
    })
    .expect("dig answers west");
    let took = t0.elapsed();
    eprintln!("failover seen by dig after {took:?} (limit 4 s)");
    assert!(took <= Duration::from_secs(4), "{took:?}");

    // Both down: the hidden standby.
    west.lock()
        .unwrap()
        .insert("/health".into(), health("gone", 404));
    wait_for(Duration::from_secs(10), || {
        (answer() == ["127.0.0.39"]).then_some(())
    })
    .expect("dig answers the standby");

    // East back: its answer returns after two successes.
    east.lock()
        .unwrap()
        .insert("/health".into(), health("ok", 200));
    let t1 = Instant::now();
    wait_for(Duration::from_secs(10), || {
        (answer() == ["127.0.0.31"]).then_some(())
    })
    .expect("dig answers east again");
    eprintln!("recovery seen by dig after {:?}", t1.elapsed());
    assert!(t1.elapsed() <= Duration::from_secs(3));
    drop(probe);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dig_follows_an_ftp_monitor() {
    let Some(bin) = dns_binary() else {
        eprintln!("SKIPPED dig_follows_an_ftp_monitor: `udn dns` is not built in this tree");
        return;
    };
    let port = free_port("127.0.0.31");
    let dir = temp_dir("probe-dns-ftp");
    let (east_dir, west_dir) = (dir.join("east"), dir.join("west"));
    for d in [&east_dir, &west_dir] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("health.txt"), "ok\n").unwrap();
    }
    let _east = FtpServer::start("127.0.0.31", port, &east_dir);
    let _west = FtpServer::start("127.0.0.32", port, &west_dir);
    let cfg = dir.join("net.toml");
    let text = failover_config(port).replace(
        "path = \"/health\"",
        "kind = \"ftp\"\npath = \"/health.txt\"",
    );
    assert!(text.contains("kind = \"ftp\""));
    std::fs::write(&cfg, text).unwrap();
    let dns = start_dns(&bin, cfg.to_str().unwrap());
    let probe = failover_probe(&cfg, &dns);
    let answer = || dig(dns.dns, "127.0.0.1");
    wait_for(Duration::from_secs(15), || both_up(&probe))
        .unwrap_or_else(|| panic!("both FTP origins up: {}", probe_status(probe.http)));
    assert_eq!(answer(), ["127.0.0.31"]);

    // East's file no longer says ok: the monitor fails it and dig answers west.
    std::fs::write(east_dir.join("health.txt"), "maintenance\n").unwrap();
    wait_for(Duration::from_secs(10), || {
        (answer() == ["127.0.0.32"]).then_some(())
    })
    .expect("dig answers west once east's FTP check fails");
    // East's file back: its answer returns.
    std::fs::write(east_dir.join("health.txt"), "ok\n").unwrap();
    wait_for(Duration::from_secs(10), || {
        (answer() == ["127.0.0.31"]).then_some(())
    })
    .expect("dig answers east again");
    drop(probe);
    let _ = std::fs::remove_dir_all(&dir);
}

const POPS: [(&str, &str); 3] = [
    ("fra", "127.0.0.11"),
    ("nyc", "127.0.0.12"),
    ("sin", "127.0.0.13"),
];
const RESOLVERS: [&str; 3] = ["127.0.1.1", "127.0.2.1", "127.0.3.1"];
/// Delay (ms) of resolver r (row) towards each POP (column).
const DELAYS: [[u64; 3]; 3] = [[10, 50, 90], [90, 10, 50], [50, 90, 10]];

fn delaying_resolver(r: usize, port: u16) {
    let sock = UdpSocket::bind((RESOLVERS[r], port)).expect("bind fake resolver");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80;
            reply[3] = (reply[3] & 0xf0) | 5; // REFUSED
            let d = POPS
                .iter()
                .position(|(_, a)| from.ip().to_string() == *a)
                .map_or(150, |p| DELAYS[r][p]);
            let s = sock.try_clone().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(d));
                let _ = s.send_to(&reply, from);
            });
        }
    });
}

#[test]
fn dig_answers_each_resolver_with_its_fastest_measured_pop() {
    let Some(bin) = dns_binary() else {
        eprintln!(
            "SKIPPED dig_answers_each_resolver_with_its_fastest_measured_pop: `udn dns` is not built in this tree (set UDN_DNS_BIN)"
        );
        return;
    };
    let dns_port = free_port("127.0.1.1");
    for r in 0..3 {
        delaying_resolver(r, dns_port);
    }
    let http_port = free_port("127.0.0.11");
    for (_, addr) in POPS {
        site_at(addr, http_port);
    }
    let mut text = format!(
        r#"{ZONE}
[[services]]
name = "http"
port = {http_port}
path = "/health"
expect_content = "ok"
interval_secs = 1
timeout_ms = 500

[[customers]]
name = "shop"

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
ttl = 1
near_equal = 5.0
weighting = {{ latency = 1.0, load = 0.0, response_time = 0.0 }}
targets = [{{ server = "fra-edge-1" }}, {{ server = "nyc-edge-1" }}, {{ server = "sin-edge-1" }}]
"#
    );
    for (i, (pop, addr)) in POPS.iter().enumerate() {
        text += &format!(
            "\n[[pops]]\nname = \"{pop}\"\nlocation = {{ lat = {}.0, lon = 0.0 }}\nservers = [{{ name = \"{pop}-edge-1\", addresses = [\"{addr}\"] }}]\n",
            i * 10
        );
    }
    let dir = temp_dir("probe-dns-latency");
    let cfg = dir.join("net.toml");
    std::fs::write(&cfg, text).unwrap();
    let dns = start_dns(&bin, cfg.to_str().unwrap());
    let port = dns_port.to_string();
    let probes: Vec<Udn> = POPS
        .iter()
        .map(|(pop, addr)| {
            let pki = pop_probe_pki(pop);
            Udn::probe(&[
                "--config",
                cfg.to_str().unwrap(),
                "--pop",
                pop,
                "--dns-http",
                &format!("https://{}", dns.http),
                "--pki",
                pki.to_str().unwrap(),
                "--latency-methods",
                "dns",
                "--latency-port",
                &port,
                "--source-ip",
                addr,
                "--refresh-interval-ms",
                "200",
            ])
        })
        .collect();
    for (r, resolver) in RESOLVERS.iter().enumerate() {
        let fastest = (0..3).min_by_key(|&p| DELAYS[r][p]).unwrap();
        let want = POPS[fastest].1;
        let client = format!("{}.0/24", resolver.rsplit_once('.').unwrap().0);
        // The first queries have no measurement yet (any POP may answer); they ask
        // every POP's probe for one. Wait until all three probes have measured.
        let measured = wait_for(Duration::from_secs(15), || {
            let _ = dig(dns.dns, resolver);
            let all = probes.iter().all(|p| {
                let body = probe_status(p.http);
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|st| {
                        st["latency"].as_array().map(|l| {
                            l.iter()
                                .any(|x| x["client"] == client.as_str() && x["rtt_us"].is_u64())
                        })
                    })
                    .unwrap_or(false)
            });
            all.then_some(())
        });
        assert!(measured.is_some(), "every probe measured {client}");
        // The samples reach the DNS server right after (reported asynchronously).
        let got = wait_for(Duration::from_secs(5), || {
            let a = dig(dns.dns, resolver);
            (a == [want]).then_some(a)
        });
        assert!(
            got.is_some(),
            "resolver {resolver}: expected {want}, dig says {:?}",
            dig(dns.dns, resolver)
        );
        for _ in 0..5 {
            assert_eq!(dig(dns.dns, resolver), [want], "stable for {resolver}");
        }
        eprintln!("{resolver} -> {want} ({})", POPS[fastest].0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fake resolver at `addr` answering REFUSED after `delays[p]` ms to POP p's probe.
fn delaying_resolver_at(addr: &'static str, delays: [u64; 3], port: u16) {
    let sock = UdpSocket::bind((addr, port)).expect("bind fake resolver");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80;
            reply[3] = (reply[3] & 0xf0) | 5; // REFUSED
            let d = POPS
                .iter()
                .position(|(_, a)| from.ip().to_string() == *a)
                .map_or(150, |p| delays[p]);
            let s = sock.try_clone().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(d));
                let _ = s.send_to(&reply, from);
            });
        }
    });
}

/// `dig +short` of the GTM name from `source` with extra arguments.
fn dig_with(dns: SocketAddr, source: &str, extra: &[&str]) -> Vec<String> {
    let out = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "-b", source])
        .args(["+time=2", "+tries=1", "+short"])
        .args(extra)
        .args(["www.shop.udn.example", "A"])
        .output()
        .expect("dig runs (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Every probe's latency entries: (POP index, client, addr, rtt_us or None, at).
fn probe_latencies(probes: &[Udn]) -> Vec<(usize, String, String, Option<u64>, u64)> {
    let mut out = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        let body = probe_status(p.http);
        let Ok(st) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        for x in st["latency"].as_array().into_iter().flatten() {
            out.push((
                i,
                x["client"].as_str().unwrap_or("").to_string(),
                x["addr"].as_str().unwrap_or("").to_string(),
                x["rtt_us"].as_u64(),
                x["at"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

/// The resolvers that asked are measured, wherever they sit in their /24 (none at `.1`,
/// where nothing listens), and each gets its nearest POP; ECS from a resolver off the
/// operator's allow-list aims no probe at the network it names, while ECS from one on
/// it is measured through that resolver and shapes everyone's answer for the prefix; an
/// unmeasurable resolver is backed off instead of re-requested on every query.
#[test]
fn dig_measures_the_resolver_that_asked_and_ecs_only_from_allowed_resolvers() {
    let Some(bin) = dns_binary() else {
        eprintln!("SKIPPED: `udn dns` is not built in this tree (set UDN_DNS_BIN)");
        return;
    };
    const ASKERS: [(&str, [u64; 3]); 3] = [
        ("127.0.1.77", [10, 50, 90]),
        ("127.0.2.200", [90, 10, 50]),
        ("127.0.3.9", [50, 90, 10]),
    ];
    const ALLOWED: &str = "127.0.4.4"; // on ecs_measure_resolvers; nearest sin
    const STRANGER: &str = "127.0.5.5";
    const SILENT: &str = "127.0.9.9"; // nothing answers the probes there
    let dns_port = free_port("127.0.1.77");
    for (a, d) in ASKERS {
        delaying_resolver_at(a, d, dns_port);
    }
    delaying_resolver_at(ALLOWED, [90, 50, 10], dns_port);
    // Anything at the stranger would answer too: it must not be asked at all.
    delaying_resolver_at(STRANGER, [10, 10, 10], dns_port);
    let http_port = free_port("127.0.0.11");
    for (_, addr) in POPS {
        site_at(addr, http_port);
    }
    let mut text = format!(
        r#"
[latency]
ecs_measure_resolvers = ["127.0.4.0/24"]
request_retry_secs = 1
unreachable_backoff_secs = 120
{ZONE}
[[services]]
name = "http"
port = {http_port}
path = "/health"
expect_content = "ok"
interval_secs = 1
timeout_ms = 500

[[customers]]
name = "shop"

[[gtm]]
hostname = "www.shop.udn.example"
customer = "shop"
service = "http"
ttl = 1
near_equal = 5.0
weighting = {{ latency = 1.0, load = 0.0, response_time = 0.0 }}
targets = [{{ server = "fra-edge-1" }}, {{ server = "nyc-edge-1" }}, {{ server = "sin-edge-1" }}]
"#
    );
    for (i, (pop, addr)) in POPS.iter().enumerate() {
        text += &format!(
            "\n[[pops]]\nname = \"{pop}\"\nlocation = {{ lat = {}.0, lon = 0.0 }}\nservers = [{{ name = \"{pop}-edge-1\", addresses = [\"{addr}\"] }}]\n",
            i * 10
        );
    }
    let dir = temp_dir("probe-dns-asker");
    let cfg = dir.join("net.toml");
    std::fs::write(&cfg, text).unwrap();
    let dns = start_dns(&bin, cfg.to_str().unwrap());
    let port = dns_port.to_string();
    let probes: Vec<Udn> = POPS
        .iter()
        .map(|(pop, addr)| {
            let pki = pop_probe_pki(pop);
            Udn::probe(&[
                "--config",
                cfg.to_str().unwrap(),
                "--pop",
                pop,
                "--dns-http",
                &format!("https://{}", dns.http),
                "--pki",
                pki.to_str().unwrap(),
                "--latency-methods",
                "dns",
                "--latency-port",
                &port,
                "--latency-timeout-ms",
                "400",
                "--source-ip",
                addr,
                "--refresh-interval-ms",
                "200",
            ])
        })
        .collect();
    let want = |delays: [u64; 3]| POPS[(0..3).min_by_key(|&p| delays[p]).unwrap()].1;

    // 1. Each asker is measured at its own address and gets its nearest POP.
    for (asker, delays) in ASKERS {
        let client = format!("{}.0/24", asker.rsplit_once('.').unwrap().0);
        let measured = |l: &(usize, String, String, Option<u64>, u64)| l.1 == client;
        let ok = wait_for(Duration::from_secs(20), || {
            let a = dig_with(dns.dns, asker, &[]);
            let n = probe_latencies(&probes)
                .iter()
                .filter(|l| measured(l))
                .count();
            (a == [want(delays)] && n == 3).then_some(())
        });
        let seen: Vec<_> = probe_latencies(&probes)
            .into_iter()
            .filter(measured)
            .collect();
        assert!(
            ok.is_some(),
            "{asker}: expected {}, dig says {:?}; probes measured {seen:?}",
            want(delays),
            dig_with(dns.dns, asker, &[])
        );
        assert_eq!(seen.len(), 3, "every POP measured {client}: {seen:?}");
        for (pop, _, addr, rtt, _) in &seen {
            assert_eq!(addr, asker, "the resolver that asked is measured, not .1");
            let rtt = rtt.expect("measured");
            assert!(rtt >= delays[*pop] * 1000, "{asker} from {pop}: {rtt} µs");
        }
        for _ in 0..3 {
            assert_eq!(dig_with(dns.dns, asker, &[]), [want(delays)]);
        }
        eprintln!("{asker} -> {}", want(delays));
    }

    // 2. ECS from the stranger names 127.0.7.0/24: nothing there or at the stranger is
    // measured for it, however often it asks.
    for _ in 0..10 {
        let a = dig_with(dns.dns, STRANGER, &["+subnet=127.0.7.0/24"]);
        assert_eq!(a.len(), 1, "the stranger is still answered: {a:?}");
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_secs(2));
    let aimed: Vec<_> = probe_latencies(&probes)
        .into_iter()
        .filter(|l| l.1 == "127.0.7.0/24" || l.2 == STRANGER)
        .collect();
    assert!(
        aimed.is_empty(),
        "ECS from a stranger aimed the probes: {aimed:?}"
    );

    // 3. ECS from the allow-listed resolver for 127.0.8.0/24: measured through it, and
    // its nearest POP answers that prefix, for the stranger's ECS too.
    let ok = wait_for(Duration::from_secs(20), || {
        let a = dig_with(dns.dns, ALLOWED, &["+subnet=127.0.8.0/24"]);
        (a == [want([90, 50, 10])]).then_some(())
    });
    let seen: Vec<_> = probe_latencies(&probes)
        .into_iter()
        .filter(|l| l.1 == "127.0.8.0/24")
        .collect();
    assert!(ok.is_some(), "allow-listed ECS measured: {seen:?}");
    assert!(seen.iter().all(|l| l.2 == ALLOWED), "{seen:?}");
    // (A re-measurement on a loaded machine may briefly move the prefix's rows, so the
    // stranger's answer is asked a few times; its own rows tie, so only the prefix's
    // rows give sin.)
    let stranger = wait_for(Duration::from_secs(10), || {
        let a = dig_with(dns.dns, STRANGER, &["+subnet=127.0.8.0/24"]);
        (a == [want([90, 50, 10])]).then_some(())
    });
    assert!(
        stranger.is_some(),
        "ECS from others still shapes the answer: {:?}, rows {:?}",
        dig_with(dns.dns, STRANGER, &["+subnet=127.0.8.0/24"]),
        probe_latencies(&probes)
            .into_iter()
            .filter(|l| l.1 == "127.0.8.0/24")
            .collect::<Vec<_>>()
    );

    // 4. A resolver nothing answers the probes at: measured once (all samples lost),
    // then backed off although requests may be retried after 1 s.
    wait_for(Duration::from_secs(15), || {
        let _ = dig_with(dns.dns, SILENT, &[]);
        let l: Vec<_> = probe_latencies(&probes)
            .into_iter()
            .filter(|l| l.1 == "127.0.9.0/24")
            .collect();
        (l.len() == 3 && l.iter().all(|x| x.3.is_none())).then_some(l)
    })
    .expect("every POP tried the silent resolver");
    // Let a measurement requested before the first report arrived finish.
    std::thread::sleep(Duration::from_secs(3));
    let first: Vec<_> = probe_latencies(&probes)
        .into_iter()
        .filter(|l| l.1 == "127.0.9.0/24")
        .collect();
    for _ in 0..20 {
        let _ = dig_with(dns.dns, SILENT, &[]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let later: Vec<_> = probe_latencies(&probes)
        .into_iter()
        .filter(|l| l.1 == "127.0.9.0/24")
        .collect();
    let stamps = |v: &[(usize, String, String, Option<u64>, u64)]| {
        let mut s: Vec<(usize, u64)> = v.iter().map(|x| (x.0, x.4)).collect();
        s.sort();
        s
    };
    assert_eq!(
        stamps(&first),
        stamps(&later),
        "an unreachable target is not measured again within its back-off"
    );
    drop(probes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The credentials of `pop`'s probe: each POP's probe has its own certificate, since a
/// probe reports latency only for the POP its certificate names. Enrolled once per test
/// binary (tests run in parallel and must not rewrite each other's files).
fn pop_probe_pki(pop: &str) -> std::path::PathBuf {
    static MADE: std::sync::Mutex<Vec<(String, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    if pop == "fra" {
        return ids().probe.clone();
    }
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = made.iter().find(|(n, _)| n == pop) {
        return p.clone();
    }
    let p = ids().pki.enroll(
        "probe",
        pop,
        &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.31", "::1"],
    );
    made.push((pop.to_string(), p.clone()));
    p
}
