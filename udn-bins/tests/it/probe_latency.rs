//! Latency routing that is measured, not configured: three fake resolvers (127.0.1.77,
//! 127.0.2.200, 127.0.3.9) answer each POP's probe after their own delay (a small delaying DNS
//! responder per resolver); three real `udn probe` processes, one per POP, each sending
//! from its POP's address, measure them when the (stand-in) DNS server's refresh list
//! asks, and report. The RTT ranking matches the delays, and the decision engine fed
//! with the reported samples answers each resolver with its fastest POP.

use crate::probe_common;

use probe_common::{Receiver, Resource, Udn, free_port, http, serve_site, temp_dir, wait_for};
use std::collections::HashMap;
use std::net::{IpAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use udn_core::{Config, Engine, Family, Metric, Query};

const POPS: [(&str, &str); 3] = [
    ("fra", "127.0.0.11"),
    ("nyc", "127.0.0.12"),
    ("sin", "127.0.0.13"),
];
// None at `.1` of its /24: the address the DNS server saw asking is measured.
const RESOLVERS: [&str; 3] = ["127.0.1.77", "127.0.2.200", "127.0.3.9"];

/// Delay (ms) of resolver `r` towards the POP whose probe sends from `src`.
fn delay_ms(r: usize, src: IpAddr) -> u64 {
    let pop = POPS
        .iter()
        .position(|(_, a)| a.parse::<IpAddr>().unwrap() == src);
    // Each resolver is nearest to a different POP.
    const TABLE: [[u64; 3]; 3] = [[10, 50, 90], [90, 10, 50], [50, 90, 10]];
    pop.map_or(150, |p| TABLE[r][p])
}

/// A fake resolver: answers every DNS query with REFUSED after the delay for its
/// source (a REFUSED answer still times the path).
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
            reply[3] = (reply[3] & 0xf0) | 5;
            let s = sock.try_clone().unwrap();
            let d = delay_ms(r, from.ip());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(d));
                let _ = s.send_to(&reply, from);
            });
        }
    });
}

fn config(http_port: u16) -> String {
    let mut s = format!(
        r#"
[[dns.zones]]
apex = "udn.example"
ns = ["ns1.udn.example"]

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
near_equal = 5.0
weighting = {{ latency = 1.0, load = 0.0, response_time = 0.0 }}
targets = [{{ server = "fra-edge-1" }}, {{ server = "nyc-edge-1" }}, {{ server = "sin-edge-1" }}]
"#
    );
    for (i, (pop, addr)) in POPS.iter().enumerate() {
        s += &format!(
            "\n[[pops]]\nname = \"{pop}\"\nlocation = {{ lat = {}.0, lon = 0.0 }}\nservers = [{{ name = \"{pop}-edge-1\", addresses = [\"{addr}\"] }}]\n",
            i * 10
        );
    }
    s
}

#[test]
fn rtt_ranking_matches_the_delays_and_decides_the_answer() {
    let dns_port = free_port(RESOLVERS[0]);
    for r in 0..3 {
        delaying_resolver(r, dns_port);
    }
    let http_port = free_port("127.0.0.11");
    for (_, addr) in POPS {
        let site = Arc::new(Mutex::new(HashMap::from([(
            "/health".to_string(),
            Resource {
                status: 200,
                body: b"ok".to_vec(),
                head_delay: Duration::ZERO,
                split_at: 2,
                split_delay: Duration::ZERO,
            },
        )])));
        serve_site(&format!("{addr}:{http_port}"), site);
    }
    let text = config(http_port);
    let cfg = Config::from_toml(&text).unwrap();
    let dir = temp_dir("probe-latency");
    std::fs::write(dir.join("net.toml"), &text).unwrap();
    let recv = Receiver::default();
    for (pop, _) in POPS {
        let items = RESOLVERS
            .iter()
            .map(|r| {
                let net = r.rsplit_once('.').unwrap().0;
                serde_json::json!({ "client": format!("{net}.0/24"), "pop": pop, "addr": r })
            })
            .collect();
        recv.refresh.lock().unwrap().insert(pop.to_string(), items);
    }
    let raddr = recv.serve("127.0.0.1:0");
    let port = dns_port.to_string();
    let cfg_path = dir.join("net.toml");
    let probes: Vec<Udn> = POPS
        .iter()
        .map(|(pop, addr)| {
            Udn::probe(&[
                "--config",
                cfg_path.to_str().unwrap(),
                "--pop",
                pop,
                "--dns-http",
                &format!("http://{raddr}"),
                "--latency-methods",
                "dns",
                "--latency-port",
                &port,
                "--source-ip",
                addr,
                "--refresh-interval-ms",
                "200",
                "--load-interval-secs",
                "60",
            ])
        })
        .collect();
    // rtt[(client, pop)]
    let samples = wait_for(Duration::from_secs(20), || {
        let mut rtt = HashMap::new();
        for m in recv.metrics() {
            if let Metric::Latency {
                client,
                pop,
                sample,
            } = m
            {
                rtt.insert((client.to_string(), pop), sample.rtt_us);
            }
        }
        (rtt.len() == 9).then_some(rtt)
    })
    .expect("every POP measures every resolver");
    for (r, resolver) in RESOLVERS.iter().enumerate() {
        let client = format!("{}.0/24", resolver.rsplit_once('.').unwrap().0);
        let mut measured: Vec<(u32, &str)> = POPS
            .iter()
            .map(|(pop, addr)| {
                let rtt = samples[&(client.clone(), pop.to_string())];
                let d = delay_ms(r, addr.parse().unwrap());
                assert!(
                    u64::from(rtt) >= d * 1000,
                    "{client} from {pop}: {rtt} µs < {d} ms"
                );
                (rtt, *pop)
            })
            .collect();
        let mut expected: Vec<(u64, &str)> = POPS
            .iter()
            .map(|(pop, addr)| (delay_ms(r, addr.parse().unwrap()), *pop))
            .collect();
        measured.sort();
        expected.sort();
        eprintln!("{client}: measured {measured:?}");
        let m: Vec<&str> = measured.iter().map(|x| x.1).collect();
        let e: Vec<&str> = expected.iter().map(|x| x.1).collect();
        assert_eq!(m, e, "RTT ranking of {client}");
    }

    // The decision engine, fed with what the probes reported, answers each resolver
    // with the POP it measured fastest.
    let mut engine = Engine::new(Arc::new(cfg.compile().unwrap()));
    for m in recv.metrics() {
        let _ = engine.apply(&m);
    }
    let net = engine.network().clone();
    for (r, resolver) in RESOLVERS.iter().enumerate() {
        let q = Query {
            host: net.host_id("www.shop.udn.example").unwrap(),
            client: resolver.parse().unwrap(),
            ecs: None,
            family: Family::V4,
            seed: 3,
        };
        let d = engine.decide(&q, udn_bins::logging::now());
        let fastest = POPS
            .iter()
            .min_by_key(|(_, a)| delay_ms(r, a.parse().unwrap()))
            .unwrap()
            .1;
        assert_eq!(
            d.addrs.as_slice(),
            &[fastest.parse::<IpAddr>().unwrap()],
            "answer for resolver {resolver} ({})",
            d.reason.as_str()
        );
    }

    let (s, body) = http("GET", probes[0].http, "/v1/status", "");
    assert_eq!(s, 200);
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["methods"][0][0]["name"], "dns");
    assert!(
        st["methods"][0][1]["results"].as_u64().unwrap() >= 3,
        "{body}"
    );
    drop(probes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn escalates_to_tcp_connect_when_dns_gives_no_result() {
    // Nothing listens on this port: the DNS query gets no answer (port unreachable),
    // so the policy moves on to TCP connect, whose RST still times the path.
    let port = free_port("127.0.4.1");
    let text = config(free_port("127.0.0.11"));
    let dir = temp_dir("probe-escalate");
    std::fs::write(dir.join("net.toml"), &text).unwrap();
    // The passive table (cheapest) knows 127.0.5.0/24 only.
    std::fs::write(dir.join("passive.txt"), "127.0.5.0/24 42.5\n").unwrap();
    let probe = Udn::probe(&[
        "--config",
        dir.join("net.toml").to_str().unwrap(),
        "--pop",
        "fra",
        "--passive-table",
        dir.join("passive.txt").to_str().unwrap(),
        "--latency-target",
        "127.0.5.0/24",
        "--latency-methods",
        "tcp,dns,passive",
        "--latency-port",
        &port.to_string(),
        "--latency-timeout-ms",
        "300",
        "--latency-target",
        "127.0.4.0/24",
        "--latency-interval-secs",
        "1",
    ]);
    let st = wait_for(Duration::from_secs(15), || {
        let (_, body) = http("GET", probe.http, "/v1/status", "");
        let st: serde_json::Value = serde_json::from_str(&body).ok()?;
        (st["latency"][0]["method"] == "tcp-connect" && st["latency"][1]["method"] == "passive")
            .then_some(st)
    })
    .expect("a TCP-connect sample and a passive one");
    // Cheapest first, whatever the CLI order: passive (0), DNS (10), TCP connect (30).
    let names: Vec<&str> = (0..3)
        .map(|i| st["methods"][i][0]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["passive", "dns", "tcp-connect"]);
    let stat = |i: usize, k: &str| st["methods"][i][1][k].as_u64().unwrap();
    assert!(
        stat(0, "results") >= 1 && stat(0, "no_results") >= 1,
        "{st}"
    );
    assert!(stat(1, "no_results") >= 1, "{st}");
    assert_eq!(stat(1, "results"), 0);
    assert!(stat(2, "results") >= 1);
    // Each method only ran where every cheaper one gave nothing.
    assert!(stat(2, "attempts") <= stat(1, "no_results"), "{st}");
    assert!(stat(1, "attempts") <= stat(0, "no_results"), "{st}");
    assert_eq!(st["latency"][1]["rtt_us"], 42_500);
    assert_eq!(st["latency"][0]["addr"], "127.0.4.1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn icmp_echo_where_permitted() {
    use udn_probe::agent::methods::{IcmpAccess, IcmpEcho, icmp_access};
    use udn_probe::latency::{LatencyMethod, Outcome};
    let m = IcmpEcho {
        timeout: Duration::from_secs(2),
    };
    match icmp_access() {
        IcmpAccess::Unavailable(why) => {
            eprintln!("SKIPPED icmp_echo_where_permitted: {why}");
            // Never a crash: the method reports itself unavailable.
            let o = m.measure("127.0.0.1".parse().unwrap()).await;
            assert!(matches!(o, Outcome::Unavailable(_)), "{o:?}");
        }
        access => {
            let o = m.measure("127.0.0.1".parse().unwrap()).await;
            assert!(matches!(o, Outcome::Rtt(_)), "{access:?}: {o:?}");
            eprintln!("icmp via {access:?}: {o:?}");
        }
    }
    // IPv6 echo is not built: reported, not a crash.
    let o = m.measure("::1".parse().unwrap()).await;
    assert!(matches!(o, Outcome::Unavailable(_)));
}

/// Runs inside the network namespace `icmp_echo_over_a_datagram_socket_in_a_namespace`
/// creates (where `ping_group_range` admits everyone), never on its own.
#[tokio::test]
#[ignore = "run inside a network namespace by icmp_echo_over_a_datagram_socket_in_a_namespace"]
async fn icmp_datagram_inside_the_namespace() {
    use udn_probe::agent::methods::{IcmpAccess, IcmpEcho, icmp_access};
    use udn_probe::latency::{LatencyMethod, Outcome};
    assert_eq!(
        std::env::var("UDN_ICMP_NETNS").as_deref(),
        Ok("1"),
        "run by icmp_echo_over_a_datagram_socket_in_a_namespace only"
    );
    assert_eq!(icmp_access(), IcmpAccess::Datagram);
    let m = IcmpEcho {
        timeout: Duration::from_secs(2),
    };
    for _ in 0..3 {
        let o = m.measure("127.0.0.1".parse().unwrap()).await;
        match o {
            Outcome::Rtt(rtt) => assert!(rtt < Duration::from_secs(2), "{rtt:?}"),
            other => panic!("datagram ICMP echo: {other:?}"),
        }
    }
    // An address nothing answers in this namespace (no route off loopback): no result
    // within the time limit, not a hang and not a crash.
    let o = IcmpEcho {
        timeout: Duration::from_millis(300),
    }
    .measure("10.255.255.1".parse().unwrap())
    .await;
    assert!(!matches!(o, Outcome::Rtt(_)), "{o:?}");
}

/// The unprivileged ICMP path (a datagram socket, allowed by `net.ipv4.ping_group_range`)
/// in a network namespace of our own, where that sysctl can be set without touching the
/// host: only loopback is up inside. Needs root and `unshare`/`ip` (util-linux,
/// iproute2); otherwise skipped with the reason.
#[test]
fn icmp_echo_over_a_datagram_socket_in_a_namespace() {
    use std::process::Command;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["unshare", "ip", "sysctl"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!(
            "SKIPPED icmp_echo_over_a_datagram_socket_in_a_namespace: needs root, unshare, ip and sysctl"
        );
        return;
    }
    let me = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(
            "ip link set lo up && sysctl -qw net.ipv4.ping_group_range='0 2147483647' \
             && exec \"$0\" --exact probe_latency::icmp_datagram_inside_the_namespace --include-ignored --nocapture",
        )
        .arg(&me)
        .env("UDN_ICMP_NETNS", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the inner test ran: {text}");
}
