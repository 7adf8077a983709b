//! Properties of health by quorum, receive-time staleness, the silent hold, hidden
//! standby servers with `min_healthy`, and the LOADP score with its overload cut-off.
//! Each compares the engine with what the rules in docs/dns.md say must happen.

use proptest::prelude::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use udn_core::load::LoadParts;
use udn_core::{
    Config, Engine, Family, Health, Metric, Network, Query, Reason, ServiceSample, Timestamp,
};

const NOW: Timestamp = Timestamp::from_secs(1_000_000);
const GRACE: u64 = 30;
const HOLD: u64 = 120;

/// `n` published servers p0.. (10.0.0.1..) and `m` standby servers s0.. (10.0.1.1..),
/// one GTM hostname answering `answers` addresses, `min_healthy` as given.
fn network(n: usize, m: usize, min_healthy: u32, answers: u8, quorum: u32) -> Arc<Network> {
    let mut t = format!(
        r#"
[security]
allow_target_ranges = ["10.0.0.0/8"]
[health]
up_after = 2
down_after = 3
grace_secs = {GRACE}
quorum = {quorum}
silent_hold_secs = {HOLD}
[[services]]
name = "http"
[[customers]]
name = "c"
[[pops]]
name = "a"
location = {{ lat = 0.0, lon = 0.0 }}
servers = [{{ name = "edge-a", addresses = ["10.99.0.1"] }}]
"#
    );
    for i in 0..n {
        t += &format!(
            "[[origins]]\nname = \"site-p{i}\"\nservers = [{{ name = \"p{i}\", addresses = [\"10.0.0.{}\"] }}]\n",
            i + 1
        );
    }
    for i in 0..m {
        t += &format!(
            "[[origins]]\nname = \"site-s{i}\"\nservers = [{{ name = \"s{i}\", addresses = [\"10.0.1.{}\"] }}]\n",
            i + 1
        );
    }
    let targets: Vec<String> = (0..n).map(|i| format!("{{ server = \"p{i}\" }}")).collect();
    let standby: Vec<String> = (0..m).map(|i| format!("\"s{i}\"")).collect();
    t += &format!(
        r#"
[[gtm]]
hostname = "www.c.example"
customer = "c"
service = "http"
answers = {answers}
min_healthy = {min_healthy}
standby = ["10.9.9.9"]
standby_servers = [{}]
weighting = {{ latency = 0.0, load = 1.0, response_time = 0.0 }}
near_equal = 0.0
targets = [{}]
"#,
        standby.join(", "),
        targets.join(", ")
    );
    Arc::new(
        Config::from_toml(&t)
            .expect("parses")
            .compile()
            .expect("compiles"),
    )
}

fn service(server: &str, ok: bool, at: Timestamp) -> Metric {
    Metric::Service {
        server: server.into(),
        service: "http".into(),
        sample: ServiceSample {
            ok,
            response_ms: 5.0,
            at,
        },
    }
}

/// `reporter` reports `ok` for `server` three times (enough for its vote to follow) in
/// round `round` (0..=9), dated by its clock (`skew_ms` off) and received at
/// NOW - 10 s + round s + 0, 100, 200 ms (at the latest NOW - 800 ms).
fn report(e: &mut Engine, reporter: &str, server: &str, ok: bool, skew_ms: i64, round: u64) {
    for k in 0..3u64 {
        let received = Timestamp::from_millis(NOW.as_millis() - 10_000 + round * 1000 + k * 100);
        let at = Timestamp::from_millis((received.as_millis() as i64 + skew_ms) as u64);
        e.apply_from(&service(server, ok, at), reporter, received)
            .expect("known server");
    }
}

fn query(net: &Network, seed: u64) -> Query {
    Query {
        host: net.host_id("www.c.example").unwrap(),
        client: "192.0.2.1".parse().unwrap(),
        ecs: None,
        family: Family::V4,
        seed,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With `k` probes each voting up or down, a server is down exactly when at least
    /// min(quorum, k) of them say so; clock skew within what the DNS server accepts
    /// (1 h behind .. 30 s ahead) never changes that, because freshness is judged on
    /// the receive time.
    #[test]
    fn down_exactly_at_quorum_whatever_the_probe_clocks(
        votes in proptest::collection::vec(any::<bool>(), 1..6),
        skews in proptest::collection::vec(-3_600_000i64..30_000, 6),
        quorum in 1u32..5,
    ) {
        let net = network(1, 0, 1, 1, quorum);
        let mut e = Engine::new(net.clone());
        for (i, up) in votes.iter().enumerate() {
            report(&mut e, &format!("probe-{i}"), "p0", *up, skews[i], 0);
        }
        let s = net.server_id("p0").unwrap();
        let v = net.service_id("http").unwrap();
        let down = votes.iter().filter(|u| !**u).count();
        let need = (quorum as usize).min(votes.len());
        let want = if down >= need { Health::Down } else { Health::Up };
        prop_assert_eq!(e.state().health(&net, s, v, NOW), want);
    }

    /// Every probe falls silent: the last known state holds through grace + hold after
    /// the last receive, then the target is stale.
    #[test]
    fn silence_holds_the_last_state_then_goes_stale(
        votes in proptest::collection::vec(any::<bool>(), 1..4),
        later in 0u64..400,
    ) {
        let net = network(1, 0, 1, 1, 2);
        let mut e = Engine::new(net.clone());
        for (i, up) in votes.iter().enumerate() {
            report(&mut e, &format!("probe-{i}"), "p0", *up, 0, 9);
        }
        let s = net.server_id("p0").unwrap();
        let v = net.service_id("http").unwrap();
        let known = e.state().health(&net, s, v, NOW);
        let last = NOW.as_millis() - 800;
        let t = NOW.plus(Duration::from_secs(later));
        let h = e.state().health(&net, s, v, t);
        if t.as_millis() - last <= (GRACE + HOLD) * 1000 {
            prop_assert_eq!(h, known);
        } else {
            prop_assert_eq!(h, Health::Stale);
        }
    }

    /// Standby servers: never answered while down or stale; answered only while fewer
    /// than `min_healthy` published targets are usable; with enough answer slots, every
    /// up standby is added in that case.
    #[test]
    fn standby_servers_follow_min_healthy_and_their_health(
        published in proptest::collection::vec(0u8..3, 1..5),
        standby in proptest::collection::vec(0u8..3, 1..4),
        min_healthy in 1u32..5,
        seed in any::<u64>(),
    ) {
        // 0 = up, 1 = down, 2 = stale (one probe only: quorum 1).
        let net = network(published.len(), standby.len(), min_healthy, 8, 1);
        let mut e = Engine::new(net.clone());
        let set = |e: &mut Engine, name: &str, h: u8| {
            let received = if h == 2 { Timestamp::from_secs(1000) } else { NOW };
            e.apply_from(&service(name, h != 1, received), "probe", received).unwrap();
        };
        for (i, h) in published.iter().enumerate() { set(&mut e, &format!("p{i}"), *h); }
        for (i, h) in standby.iter().enumerate() { set(&mut e, &format!("s{i}"), *h); }
        let d = e.decide(&query(&net, seed), NOW);
        let up_published = published.iter().filter(|h| **h == 0).count();
        let up_standby: Vec<IpAddr> = standby.iter().enumerate()
            .filter(|(_, h)| **h == 0)
            .map(|(i, _)| ip(&format!("10.0.1.{}", i + 1)))
            .collect();
        for (i, h) in standby.iter().enumerate() {
            let a = ip(&format!("10.0.1.{}", i + 1));
            if *h != 0 {
                prop_assert!(!d.addrs.as_slice().contains(&a), "down/stale standby {} in {:?}", a, d);
            }
        }
        if up_published >= min_healthy as usize {
            for a in d.addrs.as_slice() {
                prop_assert!(!a.to_string().starts_with("10.0.1."), "standby {} with enough published up", a);
            }
            prop_assert_eq!(d.addrs.len(), up_published);
        } else {
            for a in &up_standby {
                prop_assert!(d.addrs.as_slice().contains(a), "up standby {} missing from {:?}", a, d);
            }
            if up_published == 0 && up_standby.is_empty() {
                // The all-down policy: the unchecked standby address.
                prop_assert_eq!(d.reason, Reason::Standby);
                prop_assert_eq!(d.addrs.as_slice(), &[ip("10.9.9.9")]);
            } else {
                prop_assert_eq!(d.addrs.len(), up_published + up_standby.len());
            }
        }
    }

    /// Overload: an overloaded server is never answered while a usable one that is not
    /// overloaded exists; otherwise the least loaded usable one is answered.
    #[test]
    fn overloaded_servers_are_cut_while_another_is_available(
        loads in proptest::collection::vec((0.0f32..=100.0, 0.0f32..=100.0, 0.0f32..=100.0, 0.0f32..=100.0), 1..5),
        seed in any::<u64>(),
    ) {
        let net = network(loads.len(), 0, 1, 1, 1);
        let mut e = Engine::new(net.clone());
        let mut scores = vec![];
        for (i, (cpu, memory, swap, disk)) in loads.iter().enumerate() {
            let name = format!("p{i}");
            e.apply_from(&service(&name, true, NOW), "probe", NOW).unwrap();
            let parts = LoadParts { cpu: *cpu, memory: *memory, swap: *swap, disk: *disk };
            e.apply_from(
                &Metric::Load { server: name, percent: 0.0, at: NOW, parts: Some(parts) },
                "loadp",
                NOW,
            ).unwrap();
            scores.push(parts.score(&net.load));
        }
        let d = e.decide(&query(&net, seed), NOW);
        let got = d.addrs.as_slice()[0];
        let i = loads.iter().enumerate().position(|(i, _)| ip(&format!("10.0.0.{}", i + 1)) == got).unwrap();
        let any_ok = scores.iter().any(|s| *s < net.load.overload_percent);
        if any_ok {
            prop_assert!(scores[i] < net.load.overload_percent, "overloaded {} answered: {:?}", i, scores);
        }
        let best = scores.iter().cloned().fold(f32::INFINITY, f32::min);
        prop_assert!((scores[i] - best).abs() < 1e-3, "not the least loaded: {} of {:?}", i, scores);
    }

    /// The load score is a weighted mean: within 0..=100, and raising any one figure
    /// never lowers it.
    #[test]
    fn load_score_is_monotone_and_bounded(
        a in (0.0f32..=100.0, 0.0f32..=100.0, 0.0f32..=100.0, 0.0f32..=100.0),
        part in 0usize..4,
        up in 0.0f32..=100.0,
    ) {
        let rules = udn_core::config::LoadConfig::default();
        let p = LoadParts { cpu: a.0, memory: a.1, swap: a.2, disk: a.3 };
        let mut q = p;
        match part { 0 => q.cpu = (q.cpu + up).min(100.0), 1 => q.memory = (q.memory + up).min(100.0),
                     2 => q.swap = (q.swap + up).min(100.0), _ => q.disk = (q.disk + up).min(100.0) }
        let (sp, sq) = (p.score(&rules), q.score(&rules));
        prop_assert!((0.0..=100.0).contains(&sp));
        prop_assert!(sq + 1e-4 >= sp, "{} -> {}", sp, sq);
    }
}

#[test]
fn one_of_three_probes_down_keeps_the_answer_two_move_it() {
    let net = network(2, 0, 1, 1, 2);
    let mut e = Engine::new(net.clone());
    // p0 is the less loaded, so the answer while it is up.
    for (name, cpu) in [("p0", 10.0), ("p1", 60.0)] {
        e.apply_from(
            &Metric::Load {
                server: name.into(),
                percent: 0.0,
                at: NOW,
                parts: Some(LoadParts {
                    cpu,
                    ..Default::default()
                }),
            },
            "loadp",
            NOW,
        )
        .unwrap();
    }
    for p in ["fra", "nyc", "sin"] {
        report(&mut e, p, "p0", true, 0, 0);
        report(&mut e, p, "p1", true, 0, 0);
    }
    let q = query(&net, 1);
    assert_eq!(e.decide(&q, NOW).addrs.as_slice(), &[ip("10.0.0.1")]);
    report(&mut e, "fra", "p0", false, 0, 1);
    assert_eq!(
        e.decide(&q, NOW).addrs.as_slice(),
        &[ip("10.0.0.1")],
        "one probe's view does not take p0 down"
    );
    report(&mut e, "nyc", "p0", false, 0, 1);
    assert_eq!(e.decide(&q, NOW).addrs.as_slice(), &[ip("10.0.0.2")]);
}

#[test]
fn a_probe_minutes_behind_does_not_make_targets_stale() {
    let net = network(1, 1, 1, 1, 2);
    let mut e = Engine::new(net.clone());
    // The only probe's clock is 200 s behind (more than the 30 s grace plus the 120 s
    // silent hold).
    report(&mut e, "fra", "p0", true, -200_000, 9);
    let d = e.decide(&query(&net, 1), NOW);
    assert_eq!(d.addrs.as_slice(), &[ip("10.0.0.1")]);
    assert_eq!(d.reason, Reason::Latency);
    // And it keeps being fresh for the grace after it was received, not after its date.
    let d = e.decide(&query(&net, 1), NOW.plus(Duration::from_secs(GRACE - 1)));
    assert_eq!(d.reason, Reason::Latency);
}
