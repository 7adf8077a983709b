//! Protocol features of `udn dns`, against the real binary on loopback: response rate
//! limiting with slip (a burst from one client, a second client and TCP unaffected),
//! DNS Cookies (dig +cookie, a forged server cookie, a malformed cookie), the DO bit,
//! NSID, minimal ANY, and zone-file directives and record types, the latter compared
//! with NSD serving the same zone file.
//!
//! Needs dig; the NSD comparison needs nsd (without it the test says so and returns,
//! except with `CI=true`, where it fails).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ZONE: &str = r#"$ORIGIN proto.example.
$TTL 300
@       IN SOA ns1 hostmaster ( 2024010101 7200 900 1209600 60 )
@       IN NS  ns1
@       IN MX  10 mail
@       IN TXT "apex text"
ns1     IN A   127.0.0.53
mail    IN A   192.0.2.25
www     IN A   192.0.2.10
"#;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "udn-dns-proto-{tag}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").is_err(), "{tool} is required");
        eprintln!("{tool} missing: test skipped");
    }
    ok
}

/// Starts `udn dns --zone FILE` with `args`; returns it and its DNS address.
fn start(zone: &Path, args: &[&str]) -> (Proc, SocketAddr) {
    let child = Command::new(env!("CARGO_BIN_EXE_udn"))
        .arg("dns")
        .arg("--zone")
        .arg(zone)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("udn starts");
    let mut p = Proc(child);
    let stdout = p.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("udn dns printed its address");
        if let Some(rest) = line.strip_prefix("udn dns: serving DNS on ") {
            let addr = rest.split(' ').next().unwrap().parse().unwrap();
            return (p, addr);
        }
    }
}

fn zone_file(tag: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = tmpdir(tag);
    let z = dir.join("proto.zone");
    std::fs::write(&z, text).unwrap();
    (dir, z)
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1", "+norec"])
        .args(args)
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_owned()
}

/// The answer section as dig prints it (+noall +answer), sorted.
fn answers(addr: SocketAddr, name: &str, qtype: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(addr, &["+noall", "+answer", "+nocookie", name, qtype])
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    v.sort();
    v
}

/// A query for `name` A with EDNS(0) and optionally a COOKIE option.
fn query(id: u16, name: &str, cookie: Option<&[u8]>) -> Vec<u8> {
    let mut q = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    q[..2].copy_from_slice(&id.to_be_bytes());
    for l in name.split('.').filter(|l| !l.is_empty()) {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    match cookie {
        Some(c) => {
            q.extend_from_slice(&((4 + c.len()) as u16).to_be_bytes());
            q.extend_from_slice(&[0, 10]);
            q.extend_from_slice(&(c.len() as u16).to_be_bytes());
            q.extend_from_slice(c);
        }
        None => q.extend_from_slice(&[0, 0]),
    }
    q
}

#[derive(Debug, Default)]
struct Burst {
    full: usize,
    truncated: usize,
    missing: usize,
}

/// Sends `n` queries from `from` as fast as possible and sorts the answers that come
/// back within a second.
fn burst(server: SocketAddr, from: &str, n: u16, cookie: Option<&[u8]>) -> Burst {
    let sock = UdpSocket::bind(format!("{from}:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for id in 0..n {
        sock.send_to(&query(id, "www.proto.example", cookie), server)
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut b = Burst::default();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && seen.len() < n as usize {
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        if len < 12 || !seen.insert(id) {
            continue;
        }
        let ancount = u16::from_be_bytes([buf[6], buf[7]]);
        if buf[2] & 0x02 != 0 && ancount == 0 {
            b.truncated += 1;
        } else if ancount == 1 {
            b.full += 1;
        }
    }
    b.missing = n as usize - seen.len();
    b
}

#[test]
fn rrl_slips_and_drops_a_burst_and_spares_other_clients_tcp_and_cookies() {
    if !have("dig") {
        return;
    }
    let (_d, zone) = zone_file("rrl", ZONE);
    let (_p, addr) = start(&zone, &["--rrl-rate", "5"]);
    let first = burst(addr, "127.0.0.1", 60, None);
    // At most one second's worth plus one refill is answered in full; of the limited
    // rest, every second one is slipped (TC=1) and the others dropped.
    assert!(first.full <= 10, "{first:?}");
    assert!(first.truncated >= 20, "{first:?}");
    assert!(first.missing >= 20, "{first:?}");
    // Another /24 at once: unaffected.
    let other = burst(addr, "127.0.1.2", 5, None);
    assert_eq!(other.full, 5, "{other:?}");
    // TCP is never limited.
    let tcp = dig(addr, &["+tcp", "+short", "www.proto.example", "A"]);
    assert_eq!(tcp.trim(), "192.0.2.10");
    // A client proving its address with a valid server cookie is not limited: get one
    // with dig, then burst with it.
    let out = dig(
        addr,
        &["-b", "127.0.2.1", "+cookie", "www.proto.example", "A"],
    );
    let cookie_hex = out
        .lines()
        .find_map(|l| l.strip_prefix("; COOKIE: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("a server cookie: {out}"))
        .to_owned();
    let cookie: Vec<u8> = (0..cookie_hex.len() / 2)
        .map(|i| u8::from_str_radix(&cookie_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(cookie.len(), 24);
    let with_cookie = burst(addr, "127.0.2.1", 40, Some(&cookie));
    assert_eq!(with_cookie.full, 40, "{with_cookie:?}");
    // A forged server cookie is no exemption (BADCOOKIE, itself rate limited).
    let mut forged = cookie.clone();
    forged[20] ^= 0xff;
    let f = burst(addr, "127.0.3.1", 40, Some(&forged));
    assert_eq!(f.full, 0, "{f:?}");
}

#[test]
fn rrl_off_answers_every_query() {
    if !have("dig") {
        return;
    }
    let (_d, zone) = zone_file("rrl-off", ZONE);
    let (_p, addr) = start(&zone, &["--rrl-rate", "0"]);
    let b = burst(addr, "127.0.0.1", 60, None);
    assert_eq!(b.full, 60, "{b:?}");
}

#[test]
fn cookies_do_bit_nsid_and_minimal_any_with_dig() {
    if !have("dig") {
        return;
    }
    let (dir, zone) = zone_file("cookies", ZONE);
    let secret = dir.join("cookie.secret");
    std::fs::write(&secret, "e5e973e5a6b2a43f48e7dc849e37bfcf\n").unwrap();
    let (_p, addr) = start(
        &zone,
        &[
            "--nsid",
            "udn-test-1",
            "--cookie-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    // dig +cookie: a server cookie comes back, which dig verifies against its own
    // client cookie ("good").
    let out = dig(addr, &["+cookie", "www.proto.example", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("; COOKIE: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with("(good)"), "{line}");
    // 8 bytes of client cookie and 16 of server cookie (RFC 9018 version 1).
    let hex = line.split_whitespace().nth(2).unwrap();
    assert_eq!(hex.len(), 48, "{line}");
    assert_eq!(&hex[16..18], "01", "{line}");
    // No question, only a cookie (dig +header-only): NOERROR and a server cookie.
    let out = dig(addr, &["+header-only", "+cookie", "www.proto.example", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("QUERY: 0"), "{out}");
    assert!(out.contains("; COOKIE: "), "{out}");
    // A made-up server cookie: BADCOOKIE with a fresh cookie, no answer.
    let out = dig(
        addr,
        &[
            "+nobadcookie",
            "+cookie=0102030405060708aabbccddeeff00112233445566778899",
            "www.proto.example",
            "A",
        ],
    );
    assert_eq!(status(&out), "BADCOOKIE", "{out}");
    assert!(out.contains("ANSWER: 0"), "{out}");
    assert!(out.contains("; COOKIE: 0102030405060708"), "{out}");
    // dig retries with the fresh cookie and gets the answer.
    let out = dig(
        addr,
        &[
            "+cookie=0102030405060708aabbccddeeff00112233445566778899",
            "www.proto.example",
            "A",
        ],
    );
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("192.0.2.10"), "{out}");
    // A malformed cookie (5 bytes): FORMERR.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&query(7, "www.proto.example", Some(&[1, 2, 3, 4, 5])), addr)
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer");
    assert!(n >= 12);
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");

    // DO copied (RFC 3225), both on the fast path and the general one.
    for name in ["www.proto.example", "nope.proto.example"] {
        let with = dig(addr, &["+dnssec", name, "A"]);
        assert!(with.contains("; EDNS: version: 0, flags: do;"), "{with}");
        let without = dig(addr, &[name, "A"]);
        assert!(without.contains("; EDNS: version: 0, flags:;"), "{without}");
    }
    // NSID when asked, not otherwise.
    let out = dig(addr, &["+nsid", "www.proto.example", "A"]);
    assert!(out.contains("(\"udn-test-1\")"), "{out}");
    assert!(!dig(addr, &["www.proto.example", "A"]).contains("NSID"));
    // Minimal ANY (RFC 8482) over UDP: one RRset; over TCP: all four at the apex.
    let udp = dig(
        addr,
        &["+notcp", "+noall", "+answer", "proto.example", "ANY"],
    );
    let types: std::collections::HashSet<&str> = udp
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(types.len(), 1, "{udp}");
    let tcp = dig(addr, &["+tcp", "+noall", "+answer", "proto.example", "ANY"]);
    assert_eq!(tcp.lines().filter(|l| !l.is_empty()).count(), 4, "{tcp}");
}

#[test]
fn cookies_off_and_no_nsid_by_default() {
    if !have("dig") {
        return;
    }
    let (_d, zone) = zone_file("nocookies", ZONE);
    let (_p, addr) = start(&zone, &["--no-cookies"]);
    let out = dig(addr, &["+cookie", "+nsid", "www.proto.example", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(!out.contains("; COOKIE:"), "{out}");
    assert!(!out.contains("NSID"), "{out}");
}

/// Every new record type in one zone, with an `$INCLUDE`: the answer sections of
/// `udn dns` and NSD for the same file are the same.
const TYPES_ZONE: &str = r#"$ORIGIN types.example.
$TTL 300
@ SOA ns1 hostmaster 1 7200 900 1209600 60
@ NS ns1
ns1 A 127.0.0.53
svc SVCB 1 svc-target alpn=h2,h3 port=8443 ipv4hint=192.0.2.1
alias SVCB 0 svc.types.example.
@ HTTPS 1 . alpn="h3,h2" ipv6hint=2001:db8::1 port=443
www HTTPS 1 . port=8443 mandatory=port alpn=h2
child DS 60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118
child DS 12345 8 2 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE 7A9A1EA2A7E3E4EAB1B0F6C3
child NS ns.child
ns.child A 192.0.2.9
naptr NAPTR 100 10 "S" "SIP+D2U" "" _sip._udp
naptr NAPTR 102 10 "U" "E2U+sip" "!^.*$!sip:info@example.com!" .
old DNAME types.example.
unk TYPE65534 \# 3 abcdef
empty TYPE65280 \# 0
generic A \# 4 c0000202
$INCLUDE sub/inc.zone sub.types.example.
"#;

#[test]
fn new_record_types_answer_like_nsd() {
    if !have("dig") || !have("nsd") {
        return;
    }
    let dir = tmpdir("types");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("types.zone"), TYPES_ZONE).unwrap();
    std::fs::write(
        dir.join("sub/inc.zone"),
        "x A 192.0.2.77\n@ TXT \"included\"\n",
    )
    .unwrap();
    let (_p, udn) = start(&dir.join("types.zone"), &[]);
    let nsd = start_nsd(&dir, "types.example", "types.zone");
    let cases = [
        ("svc", "SVCB"),
        ("alias", "SVCB"),
        ("", "HTTPS"),
        ("www", "HTTPS"),
        ("child", "DS"),
        ("naptr", "NAPTR"),
        ("old", "DNAME"),
        ("a.b.old", "A"),
        ("ns1.old", "A"),
        ("unk", "TYPE65534"),
        ("empty", "TYPE65280"),
        ("generic", "A"),
        ("x.sub", "A"),
        ("sub", "TXT"),
    ];
    for (label, t) in cases {
        let name = if label.is_empty() {
            "types.example".to_owned()
        } else {
            format!("{label}.types.example")
        };
        let ours = answers(udn, &name, t);
        let theirs = answers(nsd.1, &name, t);
        assert!(!theirs.is_empty(), "NSD answers {name} {t}");
        assert_eq!(ours, theirs, "{name} {t}");
        let (a, b) = (
            dig(udn, &["+nocookie", &name, t]),
            dig(nsd.1, &["+nocookie", &name, t]),
        );
        assert_eq!(status(&a), status(&b), "{name} {t}");
    }
}

/// NSD on loopback serving `file` (in `dir`) as `zone`.
fn start_nsd(dir: &Path, zone: &str, file: &str) -> (Proc, SocketAddr) {
    let port = {
        // A port free for UDP and TCP.
        loop {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let p = u.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                break p;
            }
        }
    };
    let d = dir.display();
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  server-count: 1\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 1\nremote-control:\n  control-enable: no\nzone:\n  name: {zone}\n  zonefile: {file}\n"
    );
    std::fs::write(dir.join("nsd.conf"), conf).unwrap();
    let child = Command::new("nsd")
        .arg("-d")
        .arg("-c")
        .arg(dir.join("nsd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsd starts");
    let p = Proc(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if status(&dig(addr, &[zone, "SOA"])) == "NOERROR" {
            return (p, addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "nsd did not serve {zone}: {}",
        std::fs::read_to_string(dir.join("nsd.log")).unwrap_or_default()
    );
}

#[test]
fn generate_and_include_serve_their_records() {
    if !have("dig") {
        return;
    }
    let dir = tmpdir("directives");
    std::fs::create_dir_all(dir.join("inc")).unwrap();
    std::fs::write(
        dir.join("main.zone"),
        "$ORIGIN gen.example.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n@ NS ns1\nns1 A 127.0.0.53\n\
         $GENERATE 1-20 host$ A 192.0.2.$\n\
         $GENERATE 10-14/2 rev${-10,3,d} PTR host${0,2,x}\n\
         $INCLUDE inc/part.zone part\nafter A 192.0.2.200\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("inc/part.zone"),
        "x A 192.0.2.99\n$INCLUDE more.zone\n",
    )
    .unwrap();
    // Nested includes are relative to the zone file's directory, not the includer's.
    std::fs::write(dir.join("more.zone"), "y TXT \"nested\"\n").unwrap();
    let (_p, addr) = start(&dir.join("main.zone"), &[]);
    let short = |n: &str, t: &str| dig(addr, &["+short", n, t]).trim().to_owned();
    assert_eq!(short("host1.gen.example", "A"), "192.0.2.1");
    assert_eq!(short("host20.gen.example", "A"), "192.0.2.20");
    assert_eq!(status(&dig(addr, &["host21.gen.example", "A"])), "NXDOMAIN");
    assert_eq!(short("rev000.gen.example", "PTR"), "host0a.gen.example.");
    assert_eq!(short("rev004.gen.example", "PTR"), "host0e.gen.example.");
    assert_eq!(
        status(&dig(addr, &["rev001.gen.example", "PTR"])),
        "NXDOMAIN"
    );
    assert_eq!(short("x.part.gen.example", "A"), "192.0.2.99");
    assert_eq!(short("y.part.gen.example", "TXT"), "\"nested\"");
    // The origin reverts after the include.
    assert_eq!(short("after.gen.example", "A"), "192.0.2.200");
}

/// `$INCLUDE` may not read outside the zone file's directory: `../`, an absolute path,
/// a symbolic link out, and endless nesting are refused with the reason.
#[test]
fn include_outside_the_zone_directory_is_refused() {
    let outer = tmpdir("confine");
    let dir = outer.join("zones");
    std::fs::create_dir_all(&dir).unwrap();
    // A file outside that parses as records: were it read, the zone would load.
    std::fs::write(outer.join("secret.zone"), "leak A 192.0.2.66\n").unwrap();
    std::os::unix::fs::symlink(outer.join("secret.zone"), dir.join("link.zone")).unwrap();
    std::fs::write(dir.join("self.zone"), "$INCLUDE self.zone\n").unwrap();
    let head = "$ORIGIN c.example.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n@ NS ns1\nns1 A 127.0.0.53\n";
    let abs = outer.join("secret.zone").display().to_string();
    for (inc, needle) in [
        ("../secret.zone", "outside the zone file's directory"),
        (abs.as_str(), "outside the zone file's directory"),
        ("link.zone", "outside the zone file's directory"),
        ("self.zone", "nest more than 8 deep"),
        ("missing.zone", "No such file"),
    ] {
        let z = dir.join("main.zone");
        std::fs::write(&z, format!("{head}$INCLUDE {inc}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_udn"))
            .arg("dns")
            .arg("--zone")
            .arg(&z)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_timeout(out, Duration::from_secs(20));
        assert!(!out.0, "udn dns must refuse {inc}");
        assert!(out.1.contains(needle), "{inc}: {}", out.1);
        assert!(out.1.contains("line 6"), "{inc}: {}", out.1);
    }
}

/// Waits for `child` to exit (killing it after `t`): (exited successfully or still
/// running, its stderr).
fn wait_timeout(mut child: Child, t: Duration) -> (bool, String) {
    let deadline = Instant::now() + t;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut s = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut s);
            }
            return (st.success(), s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (true, "still running".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
