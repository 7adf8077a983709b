//! Integration tests of `udn dns`: the real binary on loopback, queried with `dig`
//! (bind9-dnsutils), raw std sockets for malformed input, and `curl` for the HTTP API
//! (an admin listener: HTTPS, callers present certificates from `udn control enroll`).

use crate::pki_support;
use pki_support::{curl_args, curl_stranger, ids};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ZONE: &str = r#"$ORIGIN udn.example.
$TTL 300
@       IN SOA ns1 hostmaster ( 2024010101 7200 900 1209600 60 )
@       IN NS  ns1
@       IN NS  ns2
ns1     IN A   127.0.0.53
ns2     IN A   127.0.0.54
static  IN A   192.0.2.10
alias   IN CNAME static
"#;

fn big_txt() -> String {
    // 20 strings of 100 bytes: about 2.2 KB, more than any UDP answer we send.
    (0..20)
        .map(|i| format!("big IN TXT \"{i:02}{}\"\n", "x".repeat(98)))
        .collect()
}

struct Udn {
    child: Child,
    dns: SocketAddr,
    /// Every DNS address printed (one per `--listen`).
    all_dns: Vec<SocketAddr>,
    http: Option<SocketAddr>,
}

impl Drop for Udn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "udn-dns-test-{tag}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `udn dns` with `args` and waits for the lines that print its addresses.
fn start(args: &[&str], want_http: bool) -> Udn {
    let listens = args.iter().filter(|a| **a == "--listen").count().max(1);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udn"));
    cmd.arg("dns").args(args);
    if args.contains(&"--http") {
        cmd.arg("--pki").arg(&ids().dns);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udn starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut all_dns: Vec<SocketAddr> = Vec::new();
    let mut http = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while all_dns.len() < listens || (want_http && http.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("udn dns printed its addresses");
        if let Some(rest) = line.strip_prefix("udn dns: serving DNS on ") {
            all_dns.push(rest.split(' ').next().unwrap().parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("udn dns: HTTP API on https://") {
            http = Some(rest.trim().parse().unwrap());
        }
    }
    Udn {
        child,
        dns: all_dns[0],
        all_dns,
        http,
    }
}

/// Runs dig against `addr` with `args`; returns its full output.
fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig runs (bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dig_short(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    // Only answer lines: dig prints its own notes (";; Truncated, retrying in TCP mode."
    // after a rate-limited, slipped answer) on stdout too.
    dig(addr, &a)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}

fn status(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_owned()
}

fn flags(out: &str) -> String {
    out.split("flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_owned()
}

/// curl against the DNS API as the role that may call the URL's route: probe for
/// `/v1/metrics` and `/v1/refresh`, control for the rest.
fn curl(args: &[&str]) -> String {
    let url = args.last().copied().unwrap_or("");
    // A probe takes only its own POP's refresh requests.
    let id = match url.split_once("/v1/refresh?pop=") {
        Some((_, pop)) if pop != "fra" => probe_of(pop),
        _ if url.contains("/v1/metrics") || url.contains("/v1/refresh") => ids().probe.clone(),
        _ => ids().control.clone(),
    };
    curl_with(&curl_args(&id), args)
}

fn curl_with(id: &[String], args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(id)
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// curl's status code and body of a POST of JSON with `id`'s curl arguments; `None`
/// when the connection was refused or cut (a revoked certificate).
fn post_status(id: &[String], http: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(id)
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            body,
            "-w",
            "\n%{http_code}",
            &format!("https://{http}{path}"),
        ])
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return None;
    }
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap();
    Some((code.trim().parse().unwrap(), body.to_owned()))
}

fn post_json(http: SocketAddr, path: &str, body: &str) -> String {
    let post = |id: &[String], body: &str| {
        curl_with(
            id,
            &[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data",
                body,
                &format!("https://{http}{path}"),
            ],
        )
    };
    // Metrics are sent as the probes would: latency samples by the probe of their POP
    // (a probe may report latency only for its own), the rest by the `fra` probe; the
    // answers are summed.
    let items: Vec<serde_json::Value> = match serde_json::from_str(body) {
        Ok(v) if path == "/v1/metrics" => v,
        _ => {
            return curl(&[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data",
                body,
                &format!("https://{http}{path}"),
            ]);
        }
    };
    let mut by_pop: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for v in items {
        let pop = match v["kind"].as_str() {
            Some("latency") => v["pop"].as_str().unwrap_or("fra").to_owned(),
            _ => "fra".to_owned(),
        };
        by_pop.entry(pop).or_default().push(v);
    }
    let (mut applied, mut rejected, mut received_at) = (0, Vec::new(), 0);
    for (pop, items) in by_pop {
        let id = if pop == "fra" {
            ids().probe.clone()
        } else {
            probe_of(&pop)
        };
        let r = post(&curl_args(&id), &serde_json::Value::from(items).to_string());
        let v: serde_json::Value = serde_json::from_str(&r).unwrap_or_else(|_| panic!("{r}"));
        applied += v["applied"].as_u64().unwrap_or(0);
        rejected.extend(v["rejected"].as_array().cloned().unwrap_or_default());
        received_at = received_at.max(v["received_at"].as_u64().unwrap_or(0));
    }
    serde_json::json!({"applied": applied, "rejected": rejected, "received_at": received_at})
        .to_string()
}

/// The credentials of the probe of `pop` (enrolled once per test binary).
fn probe_of(pop: &str) -> PathBuf {
    static PROBES: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut g = PROBES.lock().unwrap();
    if let Some((_, d)) = g.iter().find(|(p, _)| p == pop) {
        return d.clone();
    }
    let d = ids().pki.enroll("probe", pop, &["127.0.0.1"]);
    g.push((pop.to_owned(), d.clone()));
    d
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn write_zone(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("udn.zone");
    std::fs::write(&p, format!("{ZONE}{extra}")).unwrap();
    p
}

/// The sample network with its zone served from `udn.zone` in `dir`.
fn write_config(dir: &Path, peers: &str) -> PathBuf {
    write_zone(dir, "");
    let sample = udn_core::config::SAMPLE.replace(
        "[[dns.zones]]\napex = \"udn.example\"",
        "[[dns.zones]]\napex = \"udn.example\"\nfile = \"udn.zone\"",
    );
    assert!(sample.contains("file = \"udn.zone\""));
    let text = format!("{peers}\n{sample}");
    let p = dir.join("network.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn zone_file_answers_like_an_authoritative_server() {
    let dir = tmpdir("zone");
    let zone = write_zone(&dir, &big_txt());
    let udn = start(
        &[
            "--zone",
            zone.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
        ],
        false,
    );
    let a = udn.dns;
    // IPv6 too, over UDP and TCP.
    let v6 = udn.all_dns[1];
    assert!(v6.is_ipv6());
    assert_eq!(dig_short(v6, &["static.udn.example"]), ["192.0.2.10"]);
    assert_eq!(
        dig_short(v6, &["static.udn.example", "+tcp"]),
        ["192.0.2.10"]
    );

    // Apex SOA and NS, authoritative.
    let out = dig(a, &["udn.example", "SOA", "+norec"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(flags(&out).contains("aa"), "{out}");
    assert!(out.contains("2024010101 7200 900 1209600 60"), "{out}");
    let mut ns = dig_short(a, &["udn.example", "NS"]);
    ns.sort();
    assert_eq!(ns, ["ns1.udn.example.", "ns2.udn.example."]);

    // Static records and a CNAME followed inside the zone.
    assert_eq!(dig_short(a, &["static.udn.example"]), ["192.0.2.10"]);
    assert_eq!(
        dig_short(a, &["alias.udn.example"]),
        ["static.udn.example.", "192.0.2.10"]
    );

    // NXDOMAIN with the SOA and the negative TTL (min of SOA TTL 300 and minimum 60).
    let out = dig(a, &["nope.udn.example"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(flags(&out).contains("aa"));
    let auth = out.split("AUTHORITY SECTION:").nth(1).expect(&out);
    assert!(auth.contains("udn.example.\t\t60\tIN\tSOA"), "{out}");

    // NODATA: the name exists, the type does not.
    let out = dig(a, &["static.udn.example", "MX"]);
    assert_eq!(status(&out), "NOERROR");
    assert!(out.contains("ANSWER: 0"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "{out}");

    // Outside our zones.
    let out = dig(a, &["example.com"]);
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert!(!flags(&out).contains("aa"));

    // Question case preserved.
    let out = dig(a, &["sTaTiC.UdN.eXaMpLe"]);
    assert!(out.contains(";sTaTiC.UdN.eXaMpLe.\t\tIN\tA"), "{out}");

    // A large RRset: TC over UDP, then the full answer over TCP.
    let out = dig(a, &["big.udn.example", "TXT", "+ignore"]);
    assert!(flags(&out).contains("tc"), "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    let out = dig(a, &["big.udn.example", "TXT"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 20"), "{out}");
    let out = dig(a, &["big.udn.example", "TXT", "+tcp"]);
    assert!(out.contains("ANSWER: 20"), "{out}");

    // EDNS: 1232 advertised; an unknown version gets BADVERS.
    let out = dig(a, &["static.udn.example", "+bufsize=4096"]);
    assert!(out.contains("udp: 1232"), "{out}");
    let out = dig(a, &["static.udn.example", "+edns=1", "+noednsneg"]);
    assert_eq!(status(&out), "BADVERS", "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_input_gets_formerr_and_never_stops_the_server() {
    let dir = tmpdir("formerr");
    let zone = write_zone(&dir, "");
    let udn = start(
        &[
            "--zone",
            zone.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tcp-read-ms",
            "500",
        ],
        false,
    );
    let a = udn.dns;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // A header that claims one question, then garbage.
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&[0xc0, 0xff, 0xff, 0x3f, 0x00]);
    sock.send_to(&q, a).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(n >= 12);
    assert_eq!(&buf[..2], &[0xab, 0xcd], "id echoed");
    assert_eq!(buf[2] & 0x80, 0x80, "a response");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    // Short junk is dropped; the server still answers after it.
    sock.send_to(&[1, 2, 3], a).unwrap();
    assert_eq!(dig_short(a, &["static.udn.example"]), ["192.0.2.10"]);

    // TCP: an oversized length prefix cuts the client off...
    let mut big = TcpStream::connect(a).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    big.write_all(&[0xff, 0xff, 0, 0, 0, 0]).unwrap();
    let mut rest = Vec::new();
    let r = big.read_to_end(&mut rest);
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "connection closed: {r:?} {rest:?}"
    );
    // ...a slow client (length, then nothing) is cut off after --tcp-read-ms...
    let mut slow = TcpStream::connect(a).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(&[0, 40, 0xab]).unwrap();
    // ...while others are answered meanwhile, over UDP and TCP.
    assert_eq!(dig_short(a, &["static.udn.example"]), ["192.0.2.10"]);
    assert_eq!(
        dig_short(a, &["static.udn.example", "+tcp"]),
        ["192.0.2.10"]
    );
    let mut rest = Vec::new();
    let r = slow.read_to_end(&mut rest);
    assert!(matches!(r, Ok(0)), "slow client cut off: {r:?}");
    // Pipelined queries on one TCP connection are all answered, in order.
    let mut conn = TcpStream::connect(a).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut batch = Vec::new();
    for id in 1u16..=3 {
        let mut m = vec![];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in ["static", "udn", "example"] {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        batch.extend_from_slice(&(m.len() as u16).to_be_bytes());
        batch.extend_from_slice(&m);
    }
    conn.write_all(&batch).unwrap();
    for id in 1u16..=3 {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut msg).unwrap();
        assert_eq!(u16::from_be_bytes([msg[0], msg[1]]), id);
        assert_eq!(msg[3] & 0x0f, 0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn service_metrics(server: &str, ok: bool, n: u64) -> String {
    let now = now_ms();
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"kind":"service","server":"{server}","service":"http","ok":{ok},"response_ms":12.0,"at":{}}}"#,
                now - 1000 + i
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn gtm_answers_failover_ecs_refresh_reload_and_query_log() {
    let dir = tmpdir("gtm");
    let cfg = write_config(&dir, "");
    let logs = dir.join("logs");
    let mut udn = start(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-dir",
            logs.to_str().unwrap(),
            "--name",
            "dns-test",
        ],
        true,
    );
    let (a, http) = (udn.dns, udn.http.unwrap());
    assert_eq!(curl(&[&format!("https://{http}/health")]), "ok");

    // Static records of the zone file and the synthesized GTM answer side by side.
    assert_eq!(dig_short(a, &["static.udn.example"]), ["192.0.2.10"]);
    let out = dig(a, &["www.shop.udn.example"]);
    assert!(flags(&out).contains("aa"));
    assert!(
        out.contains("www.shop.udn.example.\t20\tIN\tA\t127.0.0.2"),
        "GTM answer with the decision's TTL: {out}"
    );
    // The CDN hostname answers with an edge.
    let edge = dig_short(a, &["cdn.shop.udn.example"]);
    assert!(
        ["127.0.0.11", "127.0.0.12", "127.0.0.13"].contains(&edge[0].as_str()),
        "{edge:?}"
    );
    // Case preserved on a GTM name.
    let out = dig(a, &["wWw.ShOp.udn.example"]);
    assert!(out.contains(";wWw.ShOp.udn.example.\t\tIN\tA"), "{out}");

    // The decision asked for latency measurements: the probe of nyc takes them once.
    let r = curl(&[&format!("https://{http}/v1/refresh?pop=nyc")]);
    let items: Vec<serde_json::Value> = serde_json::from_str(&r).unwrap();
    assert!(
        items.iter().any(|i| i["client"] == "127.0.0.0/24"
            && i["pop"] == "nyc"
            && i["addr"] == "127.0.0.1"),
        "the resolver that asked is the target: {r}"
    );
    let r = curl(&[&format!("https://{http}/v1/refresh?pop=nyc")]);
    assert_eq!(r, "[]");

    // Health pushed by probes: west down, east up -> east.
    let r = post_json(
        http,
        "/v1/metrics",
        &service_metrics("shop-west-1", false, 3),
    );
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(
        (v["applied"].clone(), v["rejected"].clone()),
        (3.into(), serde_json::json!([])),
        "{r}"
    );
    assert!(
        v["received_at"].as_u64().unwrap() >= now_ms() - 60_000,
        "{r}"
    );
    post_json(
        http,
        "/v1/metrics",
        &service_metrics("shop-east-1", true, 3),
    );
    for _ in 0..5 {
        assert_eq!(dig_short(a, &["www.shop.udn.example"]), ["127.0.0.21"]);
    }
    // East fails too: the hidden standby, at once.
    post_json(
        http,
        "/v1/metrics",
        &service_metrics("shop-east-1", false, 3),
    );
    assert_eq!(dig_short(a, &["www.shop.udn.example"]), ["127.0.0.29"]);
    // Rejected items are reported by index.
    let r = post_json(
        http,
        "/v1/metrics",
        &format!(
            r#"[{{"kind":"load","server":"nope","percent":3.0,"at":{0}}},{{"kind":"bogus"}},{{"kind":"load","server":"fra-edge-1","percent":35.0,"at":{0}}}]"#,
            now_ms()
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(v["applied"], 1, "{r}");
    assert_eq!(v["rejected"][0]["index"], 0);
    assert_eq!(v["rejected"][1]["index"], 1);

    // ECS: a measured client /24 makes the answer specific to it: scope 24.
    post_json(
        http,
        "/v1/metrics",
        &service_metrics("shop-west-1", true, 3),
    );
    post_json(
        http,
        "/v1/metrics",
        &service_metrics("shop-east-1", true, 3),
    );
    post_json(
        http,
        "/v1/metrics",
        &format!(
            r#"[{{"kind":"latency","client":"203.0.113.0/24","pop":"fra","rtt_us":5000,"at":{0}}},
                {{"kind":"latency","client":"203.0.113.0/24","pop":"nyc","rtt_us":90000,"at":{0}}}]"#,
            now_ms()
        ),
    );
    let out = dig(a, &["www.shop.udn.example", "+subnet=203.0.113.77/24"]);
    assert!(out.contains("CLIENT-SUBNET: 203.0.113.0/24/24"), "{out}");
    assert!(out.contains("IN\tA\t127.0.0.22"), "fra-near site: {out}");
    // Static names are not client-specific: scope 0.
    let out = dig(a, &["static.udn.example", "+subnet=203.0.113.77/24"]);
    assert!(out.contains("CLIENT-SUBNET: 203.0.113.0/24/0"), "{out}");

    // Reload by API and by SIGHUP picks up an edited zone file; state carries over.
    write_zone(&dir, "added IN A 192.0.2.44\n");
    assert_eq!(status(&dig(a, &["added.udn.example"])), "NXDOMAIN");
    let r = post_json(http, "/v1/reload", "");
    assert!(r.contains("\"reloaded\":true"), "{r}");
    assert_eq!(dig_short(a, &["added.udn.example"]), ["192.0.2.44"]);
    assert_eq!(
        dig_short(a, &["www.shop.udn.example", "+subnet=203.0.113.77/24"]),
        ["127.0.0.22"]
    );
    write_zone(&dir, "added IN A 192.0.2.45\n");
    let pid = udn.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    while dig_short(a, &["added.udn.example"]) != ["192.0.2.45"] {
        assert!(t0.elapsed() < Duration::from_secs(5), "SIGHUP reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A broken file keeps the old snapshot.
    std::fs::write(
        dir.join("udn.zone"),
        "$ORIGIN udn.example.\nbroken A 1.2.3\n",
    )
    .unwrap();
    let r = curl(&["-X", "POST", &format!("https://{http}/v1/reload")]);
    assert!(r.contains("line 2"), "{r}");
    assert_eq!(dig_short(a, &["added.udn.example"]), ["192.0.2.45"]);

    // Prometheus metrics count what happened.
    let m = curl(&[&format!("https://{http}/metrics")]);
    assert!(
        m.contains(r#"udn_dns_queries_total{transport="udp",rcode="NOERROR",path="local"}"#),
        "{m}"
    );
    assert!(m.contains("udn_dns_answer_seconds_bucket"), "{m}");
    assert!(
        m.contains(r#"udn_dns_decisions_total{reason="standby"} 1"#),
        "{m}"
    );
    assert!(m.contains("udn_dns_reloads_total 2"), "{m}");

    // The query log: every decision, written on shutdown (SIGTERM).
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = udn.child.wait();
    let mut lines = Vec::new();
    for e in std::fs::read_dir(&logs).unwrap() {
        let p = e.unwrap().path();
        assert!(p.to_string_lossy().ends_with(".jsonl"), "{p:?} complete");
        let text = std::fs::read_to_string(&p).unwrap();
        lines.extend(text.lines().skip(1).map(str::to_owned));
    }
    let recs: Vec<udn_core::log::LogRecord> = lines
        .iter()
        .map(|l| udn_core::log::LogRecord::from_line(l).unwrap())
        .collect();
    let standby = recs.iter().any(|r| match r {
        udn_core::log::LogRecord::Dns(d) => {
            d.reason == "standby"
                && d.hostname == "www.shop.udn.example"
                && d.addrs == ["127.0.0.29".parse::<std::net::IpAddr>().unwrap()]
                && d.server == "dns-test"
                && d.customer.as_deref() == Some("shop")
        }
        _ => false,
    });
    assert!(standby, "{lines:?}");
    let cdn = recs.iter().any(|r| {
        matches!(r, udn_core::log::LogRecord::Dns(d) if d.hostname == "cdn.shop.udn.example" && d.pop.is_some())
    });
    assert!(cdn, "{lines:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP right now.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn peers_proxy_to_the_owner_and_answer_locally_when_it_is_down() {
    let dir = tmpdir("peers");
    let (pa, pb) = (free_port(), free_port());
    let peers = format!(
        "[[dns.peers]]\nname = \"dns-a\"\naddr = \"127.0.0.1:{pa}\"\n\n[[dns.peers]]\nname = \"dns-b\"\naddr = \"127.0.0.1:{pb}\"\n"
    );
    // `[[dns.peers]]` must come after `[[dns.zones]]`'s table keys: append at the end.
    let cfg = write_config(&dir, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}\n{peers}")).unwrap();
    let c = cfg.to_str().unwrap();
    let la = format!("127.0.0.1:{pa}");
    let lb = format!("127.0.0.1:{pb}");
    let a = start(
        &[
            "--config",
            c,
            "--listen",
            &la,
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-a",
        ],
        true,
    );
    let mut b = start(
        &[
            "--config",
            c,
            "--listen",
            &lb,
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-b",
        ],
        true,
    );
    // B alone knows the latency of the client networks it owns; A has no data.
    let names = ["dns-a", "dns-b"];
    let mut b_owned = Vec::new();
    let mut a_owned = Vec::new();
    for i in 1..=40u8 {
        let net: std::net::IpAddr = format!("198.51.{i}.0").parse().unwrap();
        let p = udn_core::ClientPrefix::of(net);
        match udn_core::shard::owner(p, &names, |_| true) {
            Some(1) => b_owned.push(net),
            _ => a_owned.push(net),
        }
    }
    assert!(!b_owned.is_empty() && !a_owned.is_empty());
    let now = now_ms();
    let lat: Vec<String> = b_owned
        .iter()
        .map(|n| {
            format!(
                r#"{{"kind":"latency","client":"{n}/24","pop":"fra","rtt_us":1000,"at":{now}}},{{"kind":"latency","client":"{n}/24","pop":"nyc","rtt_us":200000,"at":{now}}}"#
            )
        })
        .collect();
    let r = post_json(
        b.http.unwrap(),
        "/v1/metrics",
        &format!("[{}]", lat.join(",")),
    );
    assert!(r.contains(&format!("\"applied\":{}", lat.len() * 2)), "{r}");

    // Asked at A, B-owned clients get B's latency-based answer (west, near fra) with
    // B's scope, relayed by A; the client's own question case comes back.
    for n in &b_owned {
        let out = dig(a.dns, &["wWw.shop.udn.example", &format!("+subnet={n}/24")]);
        assert!(out.contains("IN\tA\t127.0.0.22"), "{n}: {out}");
        assert!(out.contains(&format!("CLIENT-SUBNET: {n}/24/24")), "{out}");
        assert!(out.contains(";wWw.shop.udn.example."), "{out}");
    }
    let m = curl(&[&format!("https://{}/metrics", a.http.unwrap())]);
    let relayed = format!(
        r#"udn_dns_queries_total{{transport="udp",rcode="NOERROR",path="relayed"}} {}"#,
        b_owned.len()
    );
    assert!(m.contains(&relayed), "{m}");
    // A-owned clients are answered by A itself.
    let out = dig(
        a.dns,
        &[
            "www.shop.udn.example",
            &format!("+subnet={}/24", a_owned[0]),
        ],
    );
    assert_eq!(status(&out), "NOERROR");
    // Over TCP too.
    let out = dig(
        a.dns,
        &[
            "www.shop.udn.example",
            "+tcp",
            &format!("+subnet={}/24", b_owned[0]),
        ],
    );
    assert!(out.contains("IN\tA\t127.0.0.22"), "{out}");

    // B goes down: A answers itself after the timeout, then skips B at once.
    let _ = b.child.kill();
    let _ = b.child.wait();
    let out = dig(
        a.dns,
        &[
            "www.shop.udn.example",
            &format!("+subnet={}/24", b_owned[0]),
        ],
    );
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("ANSWER: 1"), "{out}");
    let out = dig(
        a.dns,
        &[
            "www.shop.udn.example",
            &format!("+subnet={}/24", b_owned[1 % b_owned.len()]),
        ],
    );
    assert!(out.contains("ANSWER: 1"), "{out}");
    // Only the first query waited for B: the second was answered locally at once.
    let m = curl(&[&format!("https://{}/metrics", a.http.unwrap())]);
    assert!(m.contains(r#"path="peer-timeout"} 1"#), "{m}");
    drop(a);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `relayed` query count in `udn dns`'s Prometheus metrics.
fn relayed(http: SocketAddr) -> u64 {
    let m = curl(&[&format!("https://{http}/metrics")]);
    m.lines()
        .find(|l| {
            l.starts_with(
                r#"udn_dns_queries_total{transport="udp",rcode="NOERROR",path="relayed"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn peers_follow_a_reload() {
    let dir = tmpdir("peers-reload");
    let (pa, pb) = (free_port(), free_port());
    let base = std::fs::read_to_string(write_config(&dir, "")).unwrap();
    let cfg = dir.join("network.toml");
    let write_peers = |names: &[(&str, u16)]| {
        let peers: String = names
            .iter()
            .map(|(n, p)| format!("\n[[dns.peers]]\nname = \"{n}\"\naddr = \"127.0.0.1:{p}\"\n"))
            .collect();
        std::fs::write(&cfg, format!("{base}{peers}")).unwrap();
    };
    // Version 1: no peers, so no proxying, though each server has a name.
    write_peers(&[]);
    let c = cfg.to_str().unwrap();
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let a = start(
        &[
            "--config",
            c,
            "--listen",
            &la,
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-a",
        ],
        true,
    );
    let b = start(
        &[
            "--config",
            c,
            "--listen",
            &lb,
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-b",
        ],
        true,
    );
    let (ah, bh) = (a.http.unwrap(), b.http.unwrap());
    let names = ["dns-a", "dns-b"];
    let b_owned: Vec<std::net::IpAddr> = (1..=40u8)
        .map(|i| format!("198.51.{i}.0").parse().unwrap())
        .filter(|n| {
            udn_core::shard::owner(udn_core::ClientPrefix::of(*n), &names, |_| true) == Some(1)
        })
        .collect();
    assert!(!b_owned.is_empty());
    let now = now_ms();
    let lat: Vec<String> = b_owned
        .iter()
        .map(|n| {
            format!(
                r#"{{"kind":"latency","client":"{n}/24","pop":"fra","rtt_us":1000,"at":{now}}},{{"kind":"latency","client":"{n}/24","pop":"nyc","rtt_us":200000,"at":{now}}}"#
            )
        })
        .collect();
    let r = post_json(bh, "/v1/metrics", &format!("[{}]", lat.join(",")));
    assert!(r.contains(&format!("\"applied\":{}", lat.len() * 2)), "{r}");
    let ask_a =
        |n: &std::net::IpAddr| dig(a.dns, &["www.shop.udn.example", &format!("+subnet={n}/24")]);
    for n in &b_owned {
        ask_a(n);
    }
    assert_eq!(relayed(ah), 0, "no peers, nothing proxied");

    // Version 2 adds both peers: after a reload A proxies B's clients to B, whose
    // latency data answers them (the west site, near fra).
    write_peers(&[("dns-a", pa), ("dns-b", pb)]);
    for h in [ah, bh] {
        let r = post_json(h, "/v1/reload", "");
        assert!(r.contains("\"reloaded\":true"), "{r}");
    }
    for n in &b_owned {
        let out = ask_a(n);
        assert!(out.contains("IN\tA\t127.0.0.22"), "{n}: {out}");
    }
    assert_eq!(relayed(ah), b_owned.len() as u64);

    // A peer list without A's own name is refused; A keeps its peers and proxies on.
    write_peers(&[("dns-b", pb), ("dns-c", free_port())]);
    let r = curl(&["-X", "POST", &format!("https://{ah}/v1/reload")]);
    assert!(r.contains("dns-a is not one of dns.peers"), "{r}");
    ask_a(&b_owned[0]);
    assert_eq!(relayed(ah), b_owned.len() as u64 + 1);

    // Version 3 drops the peers again: A answers everything itself.
    write_peers(&[]);
    let r = post_json(ah, "/v1/reload", "");
    assert!(r.contains("\"reloaded\":true"), "{r}");
    ask_a(&b_owned[0]);
    assert_eq!(relayed(ah), b_owned.len() as u64 + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Service samples for both shop origins, dated `at` (ms): all down sends the shop to
/// its hidden standby (127.0.0.29).
fn both_origins(ok: bool, at: u64) -> String {
    let items: Vec<String> = ["shop-west-1", "shop-east-1"]
        .iter()
        .flat_map(|server| {
            (0..3).map(move |i| {
                format!(
                    r#"{{"kind":"service","server":"{server}","service":"http","ok":{ok},"response_ms":12.0,"at":{}}}"#,
                    at + i
                )
            })
        })
        .collect();
    format!("[{}]", items.join(","))
}

const STANDBY: &str = "127.0.0.29";

#[test]
fn strangers_cannot_forge_samples_and_a_future_dated_sample_cannot_freeze_state() {
    let dir = tmpdir("forge");
    let cfg = write_config(&dir, "");
    let udn = start(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        true,
    );
    let (a, http) = (udn.dns, udn.http.unwrap());
    // Both origins healthy: one of their sites answers, never the standby.
    let healthy = |a: SocketAddr| {
        let r = dig_short(a, &["www.shop.udn.example"]);
        r.len() == 1 && r[0].starts_with("127.0.0.2") && r[0] != STANDBY
    };
    assert!(healthy(a));
    let ids = ids();
    // /health is open to anyone.
    assert_eq!(
        curl_with(
            &curl_stranger(&ids.dns),
            &[&format!("https://{http}/health")]
        ),
        "ok"
    );

    // A stranger without a certificate: 401; an instance of the wrong role: 403.
    let forged = both_origins(false, now_ms() - 1000);
    let (code, body) = post_status(&curl_stranger(&ids.dns), http, "/v1/metrics", &forged).unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("instance certificate"), "{body}");
    let (code, body) = post_status(&curl_args(&ids.edge), http, "/v1/metrics", &forged).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("allowed roles: probe"), "{body}");
    // Nor may they reload, read the refresh list or the metrics.
    let (code, _) = post_status(&curl_args(&ids.edge), http, "/v1/reload", "").unwrap();
    assert_eq!(code, 403);
    let (code, _) = post_status(&curl_args(&ids.probe), http, "/v1/reload", "").unwrap();
    assert_eq!(code, 403, "a probe may not reload");
    let m = curl_with(
        &curl_stranger(&ids.dns),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{http}/metrics"),
        ],
    );
    assert_eq!(m, "401");
    // Plain HTTP gets no answer at all.
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://{http}/v1/refresh?pop=fra"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).starts_with('['),
        "{plain:?}"
    );
    for _ in 0..3 {
        assert!(healthy(a), "forged samples moved traffic");
    }

    // An enrolled probe whose samples are dated a day ahead: refused with the reason,
    // and they do not pin the state (they would, applied: later samples are older).
    let day = 86_400_000;
    let (code, body) = post_status(
        &curl_args(&ids.probe),
        http,
        "/v1/metrics",
        &both_origins(true, now_ms() + day),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["applied"], 0, "{body}");
    assert_eq!(v["rejected"].as_array().unwrap().len(), 6, "{body}");
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ahead"),
        "{body}"
    );
    // A sample an hour and more old is refused too.
    let (_, body) = post_status(
        &curl_args(&ids.probe),
        http,
        "/v1/metrics",
        &both_origins(false, now_ms() - 2 * 3_600_000),
    )
    .unwrap();
    assert!(body.contains("older than"), "{body}");
    assert!(healthy(a));
    // An honest later sample still changes the answer.
    let (code, body) = post_status(
        &curl_args(&ids.probe),
        http,
        "/v1/metrics",
        &both_origins(false, now_ms()),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"applied\":6"), "{body}");
    assert_eq!(dig_short(a, &["www.shop.udn.example"]), [STANDBY]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_revoked_probe_is_refused() {
    let dir = tmpdir("revoked");
    let cfg = write_config(&dir, "");
    let ids = ids();
    let probe = ids.pki.enroll("probe", "revoked-probe", &["127.0.0.1"]);
    let fingerprint = udn_bins::pki::Credentials::load(&probe)
        .unwrap()
        .identity()
        .fingerprint
        .clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let revoked = udn_bins::pki::Revocations::default();
    let h = rt.block_on(async {
        let mut o = udn_bins::dns::Options::new(udn_bins::dns::Source::ConfigFile(cfg.clone()));
        o.http = Some("127.0.0.1:0".parse().unwrap());
        o.pki = Some(udn_bins::pki::Credentials::load(&ids.dns).unwrap());
        o.revoked = revoked.clone();
        udn_bins::dns::start(o).await.unwrap()
    });
    let (a, http) = (h.dns[0], h.http.unwrap());
    let healthy = |a: SocketAddr| {
        let r = dig_short(a, &["www.shop.udn.example"]);
        r.len() == 1 && r[0].starts_with("127.0.0.2") && r[0] != STANDBY
    };
    assert!(healthy(a));
    // The probe is admitted while its certificate is good ...
    let (code, body) = post_status(
        &curl_args(&probe),
        http,
        "/v1/metrics",
        &both_origins(false, now_ms()),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(dig_short(a, &["www.shop.udn.example"]), [STANDBY]);
    // ... and refused once revoked (as `udn control revoke revoked-probe` and the configuration
    // watcher would make it): its samples change nothing.
    ids.pki.revoke("revoked-probe");
    assert!(revoked.replace([fingerprint]));
    let r = post_status(
        &curl_args(&probe),
        http,
        "/v1/metrics",
        &both_origins(true, now_ms()),
    );
    assert!(
        r.as_ref()
            .is_none_or(|(code, _)| *code == 401 || *code == 403),
        "{r:?}"
    );
    assert_eq!(dig_short(a, &["www.shop.udn.example"]), [STANDBY]);
    // Another probe still gets through.
    let (code, _) = post_status(
        &curl_args(&ids.probe),
        http,
        "/v1/metrics",
        &both_origins(true, now_ms()),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(healthy(a));
    h.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The sample network (zone from `udn.zone`) with static mappings 127.0.0.0/8 -> east
/// and 0.0.0.0/8 -> west, and `extra` before it.
fn write_mapped_config(dir: &Path, extra: &str) -> PathBuf {
    let p = write_config(dir, extra);
    let mut text = std::fs::read_to_string(&p).unwrap();
    text += r#"
[[static_mappings]]
network = "127.0.0.0/8"
target = "shop-east-1"

[[static_mappings]]
network = "0.0.0.0/8"
target = "shop-west-1"
"#;
    std::fs::write(&p, text).unwrap();
    p
}

/// The `CLIENT-SUBNET: a/source/scope` dig prints, if any.
fn client_subnet(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("; CLIENT-SUBNET: "))
        .map(|s| s.trim().to_string())
}

/// RFC 7871 7.1.2: ECS with address bits set beyond the source prefix is FORMERR (not
/// silently masked); source prefix 0 means no client information: the resolver's own
/// address decides and the scope is 0.
#[test]
fn ecs_host_bits_get_formerr_and_source_prefix_zero_means_no_client() {
    let dir = tmpdir("ecs-rules");
    let cfg = write_mapped_config(&dir, "");
    let udn = start(
        &["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        false,
    );
    let a = udn.dns;
    // dig masks what it sends, so the bits beyond the source prefix are set by hand:
    // 198.51.101.0/23 (the 24th bit set) and 198.51.100.77/20 (3 bytes: 198.51.100),
    // for the GTM name (the fast path's shape) and a static name (the general path).
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let rcode = |name: &str, addr: [u8; 4], source: u8| {
        let q = query_bytes(7, name, Some((addr, source)), 0);
        sock.send_to(&q, a).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        assert!(n >= 12 && buf[..2] == [0, 7], "an answer to the query");
        buf[3] & 0x0f
    };
    for name in ["www.shop.udn.example", "static.udn.example"] {
        assert_eq!(
            rcode(name, [198, 51, 101, 0], 23),
            1,
            "{name}: FORMERR beyond /23"
        );
        assert_eq!(
            rcode(name, [198, 51, 100, 0], 20),
            1,
            "{name}: FORMERR beyond /20"
        );
        // The same networks without host bits are answered.
        assert_eq!(
            rcode(name, [198, 51, 100, 0], 23),
            0,
            "{name}: /23 answered"
        );
        assert_eq!(rcode(name, [198, 51, 96, 0], 20), 0, "{name}: /20 answered");
    }
    // And the server answers dig after them, with ECS as dig writes it.
    let out = dig(a, &["static.udn.example", "+subnet=198.51.100.77/20"]);
    assert_eq!(status(&out), "NOERROR", "{out}");

    // No ECS: the resolver 127.0.0.1 is in 127.0.0.0/8 -> east.
    assert_eq!(
        dig_short(a, &["www.shop.udn.example", "-b", "127.0.0.1"]),
        ["127.0.0.21"]
    );
    // ECS 0.0.0.0/0 is not the client 0.0.0.0 (in 0.0.0.0/8 -> west): the resolver
    // decides, and the scope is 0.
    let out = dig(
        a,
        &[
            "www.shop.udn.example",
            "-b",
            "127.0.0.1",
            "+subnet=0.0.0.0/0",
        ],
    );
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("127.0.0.21"), "{out}");
    assert_eq!(client_subnet(&out).as_deref(), Some("0.0.0.0/0/0"), "{out}");
    // A real /8 source of 0.0.0.0 is client information: west, scope 8.
    let out = dig(a, &["www.shop.udn.example", "+subnet=0.0.0.0/8"]);
    assert!(out.contains("127.0.0.22"), "{out}");
    assert_eq!(client_subnet(&out).as_deref(), Some("0.0.0.0/8/8"), "{out}");
    // A weighted answer outside both mappings: not scope 0 (a mapping would change it
    // for other clients), but the client's /24.
    let out = dig(a, &["www.shop.udn.example", "+subnet=198.51.100.0/24"]);
    assert_eq!(
        client_subnet(&out).as_deref(),
        Some("198.51.100.0/24/24"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A query for `name` (A) with id `id`, EDNS(0), optional ECS (address bytes as given,
/// source length) and `pad` bytes of EDNS padding (RFC 7830).
fn query_bytes(id: u16, name: &str, ecs: Option<([u8; 4], u8)>, pad: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + pad);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut opts = Vec::new();
    if let Some((addr, source)) = ecs {
        let n = (source as usize).div_ceil(8);
        opts.extend_from_slice(&[0, 8]);
        opts.extend_from_slice(&((4 + n) as u16).to_be_bytes());
        opts.extend_from_slice(&[0, 1, source, 0]);
        opts.extend_from_slice(&addr[..n]);
    }
    if pad > 0 {
        opts.extend_from_slice(&[0, 12]);
        opts.extend_from_slice(&(pad as u16).to_be_bytes());
        opts.resize(opts.len() + pad, 0);
    }
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    m.extend_from_slice(&(opts.len() as u16).to_be_bytes());
    m.extend_from_slice(&opts);
    m
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Spoofed-looking traffic cannot grow the server: 200,000 queries with random ECS
/// prefixes and random EDNS padding, for a GTM name with persistence, the sample's GTM
/// name, a static name and a name of no zone (REFUSED), from several source ports;
/// the RSS of the `udn dns` process grows by less than 64 MiB and dig is answered
/// after. `UDN_DNS_BIN` may name another `udn` binary to compare.
#[test]
fn random_ecs_and_padding_do_not_grow_memory() {
    let dir = tmpdir("bounded");
    let cfg = write_config(&dir, "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text += r#"
[[gtm]]
hostname = "sticky.shop.udn.example"
customer = "shop"
service = "http"
ttl = 20
persistence = { secs = 300 }
weighting = { latency = 0.0, load = 1.0, response_time = 0.0 }
targets = [{ server = "shop-east-1" }, { server = "shop-west-1" }]
"#;
    std::fs::write(&cfg, text).unwrap();
    let bin = std::env::var_os("UDN_DNS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_udn")));
    let mut child = Command::new(&bin)
        .args([
            "dns",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udn starts");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let a: SocketAddr = loop {
        let line = lines.next().expect("udn dns prints its address").unwrap();
        if let Some(rest) = line.strip_prefix("udn dns: serving DNS on ") {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    const NAMES: [&str; 4] = [
        "sticky.shop.udn.example",
        "www.shop.udn.example",
        "static.udn.example",
        "nowhere.example",
    ];
    let socks: Vec<UdpSocket> = (0..8)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s
        })
        .collect();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut run = |total: usize| -> usize {
        let mut answered = 0;
        let mut buf = [0u8; 4096];
        let mut sent = 0;
        while sent < total {
            // A window per socket, then collect the answers.
            for s in &socks {
                for _ in 0..32 {
                    let r = next();
                    let name = NAMES[(r % 4) as usize];
                    let source = ((r >> 8) % 33) as u8;
                    let addr = ((r >> 16) as u32)
                        & if source == 0 {
                            0
                        } else {
                            u32::MAX << (32 - source)
                        };
                    let pad = ((r >> 48) % 2000) as usize;
                    let q = query_bytes(r as u16, name, Some((addr.to_be_bytes(), source)), pad);
                    let _ = s.send_to(&q, a);
                    sent += 1;
                }
            }
            for s in &socks {
                for _ in 0..32 {
                    match s.recv_from(&mut buf) {
                        Ok(_) => answered += 1,
                        Err(_) => break,
                    }
                }
            }
        }
        answered
    };
    // Warm up, then measure.
    run(4_000);
    let before = vm_rss_kib(pid);
    let t = Instant::now();
    let answered = run(200_000);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let after = vm_rss_kib(pid);
    let grew_mib = after.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "200000 queries in {took:?}, {answered} answered; VmRSS {before} KiB -> {after} KiB (+{grew_mib:.1} MiB)"
    );
    assert!(answered > 150_000, "most queries answered: {answered}");
    assert!(grew_mib < 64.0, "VmRSS grew by {grew_mib:.1} MiB");
    assert_eq!(dig_short(a, &["static.udn.example"]), ["192.0.2.10"]);
    let sticky = dig_short(a, &["sticky.shop.udn.example"]);
    assert_eq!(
        sticky.len(),
        1,
        "{sticky:?}; dig says: {}",
        dig(a, &["sticky.shop.udn.example"])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gauge of `udn dns`'s `/metrics` (as control), if present.
fn gauge(http: SocketAddr, name: &str) -> Option<i64> {
    let text = curl(&[&format!("https://{http}/metrics")]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Latency samples expire after `latency.expire_secs`, persistence entries after their
/// hostname's `persistence.secs`: the server's tables empty themselves (shown by its
/// `/metrics` gauges), and an expired prefix is requested from the probes again.
#[test]
fn latency_and_persistence_entries_expire() {
    let dir = tmpdir("expire");
    let cfg = write_config(&dir, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[latency]\n", "[latency]\nexpire_secs = 2\n")
        .replace("persistence = { secs = 300 }", "persistence = { secs = 2 }")
        + r#"
[[gtm]]
hostname = "sticky.shop.udn.example"
customer = "shop"
service = "http"
ttl = 20
persistence = { secs = 2 }
weighting = { latency = 0.0, load = 1.0, response_time = 0.0 }
targets = [{ server = "shop-east-1" }, { server = "shop-west-1" }]
"#;
    assert!(text.contains("expire_secs = 2") && !text.contains("secs = 300"));
    std::fs::write(&cfg, text).unwrap();
    let udn = start(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        true,
    );
    let (a, http) = (udn.dns, udn.http.unwrap());
    let r = post_json(
        http,
        "/v1/metrics",
        &format!(
            r#"[{{"kind":"latency","client":"127.0.0.0/24","pop":"fra","rtt_us":5000,"at":{0}}},
                {{"kind":"latency","client":"127.0.0.0/24","pop":"nyc","rtt_us":90000,"at":{0}}}]"#,
            now_ms()
        ),
    );
    assert!(r.contains("\"applied\":2"), "{r}");
    assert_eq!(dig_short(a, &["sticky.shop.udn.example"]).len(), 1);
    assert_eq!(gauge(http, "udn_dns_latency_samples"), Some(2));
    assert_eq!(gauge(http, "udn_dns_persistence_entries"), Some(1));
    // The fra sample is fresh: the decision asks for nothing from fra.
    let _ = dig(a, &["www.shop.udn.example"]);
    let r = curl(&[&format!("https://{http}/v1/refresh?pop=fra")]);
    assert_eq!(r, "[]");
    // After the TTLs and a sweep (every 5 s) both tables are empty again ...
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15)
        && (gauge(http, "udn_dns_latency_samples") != Some(0)
            || gauge(http, "udn_dns_persistence_entries") != Some(0))
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(gauge(http, "udn_dns_latency_samples"), Some(0));
    assert_eq!(gauge(http, "udn_dns_persistence_entries"), Some(0));
    // ... and the expired prefix is requested again.
    let _ = dig(a, &["www.shop.udn.example"]);
    let r = curl(&[&format!("https://{http}/v1/refresh?pop=fra")]);
    assert!(r.contains("\"client\":\"127.0.0.0/24\""), "{r}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_probe_reports_latency_and_takes_refreshes_only_for_its_own_pop() {
    let dir = tmpdir("own-pop");
    let cfg = write_config(&dir, "");
    let ids = ids();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(async {
        let mut o = udn_bins::dns::Options::new(udn_bins::dns::Source::ConfigFile(cfg.clone()));
        o.http = Some("127.0.0.1:0".parse().unwrap());
        o.pki = Some(udn_bins::pki::Credentials::load(&ids.dns).unwrap());
        udn_bins::dns::start(o).await.unwrap()
    });
    let http = h.http.unwrap();
    let latency = |pop: &str| {
        format!(
            r#"[{{"kind":"latency","client":"203.0.113.0/24","pop":"{pop}","rtt_us":5000,"at":{}}}]"#,
            now_ms()
        )
    };
    // The probe of fra (certificate `probe/fra`) cannot speak for nyc ...
    let fra = curl_args(&ids.probe);
    let (code, body) = post_status(&fra, http, "/v1/metrics", &latency("nyc")).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"applied\":0"), "{body}");
    assert!(body.contains("only for its own POP"), "{body}");
    // ... only for itself.
    let (_, body) = post_status(&fra, http, "/v1/metrics", &latency("fra")).unwrap();
    assert!(body.contains("\"applied\":1"), "{body}");
    // A probe certificate that names no POP reports no latency; service samples are
    // taken from any probe.
    let stray = curl_args(&ids.pki.enroll("probe", "not-a-pop", &["127.0.0.1"]));
    let (_, body) = post_status(&stray, http, "/v1/metrics", &latency("fra")).unwrap();
    assert!(
        body.contains("\"applied\":0") && body.contains("names no POP"),
        "{body}"
    );
    let (_, body) =
        post_status(&stray, http, "/v1/metrics", &both_origins(true, now_ms())).unwrap();
    assert!(!body.contains("\"applied\":0"), "{body}");
    // Refresh requests: only its own POP's.
    let refresh = |id: &[String], pop: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(id)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{http}/v1/refresh?pop={pop}"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.trim().parse::<u16>().unwrap(), body.to_owned())
    };
    assert_eq!(refresh(&fra, "fra").0, 200);
    let (code, body) = refresh(&fra, "nyc");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("only its own refresh"), "{body}");
    h.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A query that one DNS server forwards to the peer owning its client prefix gets the
/// resolver that asked measured by that peer (the proxied option names it); a stranger
/// who sets the option naming another address is not believed: the query counts as its
/// own, and the named address is never handed to the probes.
#[test]
fn a_peer_forwarded_query_is_measured_at_its_resolver_and_a_strangers_marker_is_not() {
    let dir = tmpdir("proxied-for");
    let (pa, pb) = (free_port(), free_port());
    let peers = format!(
        "[[dns.peers]]\nname = \"dns-a\"\naddr = \"127.0.0.1:{pa}\"\n\n[[dns.peers]]\nname = \"dns-b\"\naddr = \"127.0.0.1:{pb}\"\n"
    );
    let base = std::fs::read_to_string(write_config(&dir, "")).unwrap();
    let cfg = dir.join("network.toml");
    std::fs::write(&cfg, format!("{base}\n{peers}")).unwrap();
    let c = cfg.to_str().unwrap();
    let (la, lb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let a = start(
        &[
            "--config",
            c,
            "--listen",
            &la,
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-a",
        ],
        true,
    );
    let b = start(
        &[
            "--config",
            c,
            "--listen",
            &lb,
            "--http",
            "127.0.0.1:0",
            "--name",
            "dns-b",
        ],
        true,
    );
    let bh = b.http.unwrap();
    // A resolver (not at .1 of its /24) whose prefix dns-b owns.
    let names = ["dns-a", "dns-b"];
    let resolver: std::net::IpAddr = (10..=250u8)
        .map(|i| format!("127.0.{i}.77").parse().unwrap())
        .find(|r| {
            udn_core::shard::owner(udn_core::ClientPrefix::of(*r), &names, |_| true) == Some(1)
        })
        .expect("a prefix owned by dns-b");
    let r = resolver.to_string();
    // Asked at dns-a, answered (and measured) by dns-b.
    let out = dig(a.dns, &["www.shop.udn.example", "-b", &r]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    let mut items = String::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) && !items.contains(&r) {
        items += &curl(&[&format!("https://{bh}/v1/refresh?pop=fra")]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let prefix = format!("{}.0/24", r.rsplit_once('.').unwrap().0);
    assert!(
        items.contains(&format!(r#""client":"{prefix}","pop":"fra","addr":"{r}""#)),
        "dns-b asks for the resolver that asked dns-a: {items}"
    );

    // A stranger (127.0.0.9, no peer) sends the marker naming 198.51.100.7, with and
    // without ECS, straight to dns-b: it is not believed.
    for extra in [&[][..], &["+subnet=198.51.100.0/24"][..]] {
        let mut args = vec![
            "www.shop.udn.example",
            "-b",
            "127.0.0.9",
            "+ednsopt=65001:c633640700",
        ];
        args.extend_from_slice(extra);
        let out = dig(b.dns, &args);
        assert_eq!(status(&out), "NOERROR", "{out}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let items = curl(&[&format!("https://{bh}/v1/refresh?pop=fra")]);
    assert!(!items.contains("198.51.100.7"), "{items}");
    // Without ECS the stranger's query is its own: its own address is what is measured.
    assert!(items.contains(r#""addr":"127.0.0.9""#), "{items}");
    std::fs::remove_dir_all(&dir).unwrap();
}
