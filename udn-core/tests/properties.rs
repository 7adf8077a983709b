//! Properties of the decision engine, stated with proptest. Each can fail: they check the
//! engine's answers against what the inputs say must happen.

use proptest::prelude::*;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use udn_core::config::{
    AllDownPolicy, Config, CustomerConfig, GtmConfig, Location, OriginConfig, PersistenceConfig,
    PopConfig, ServerConfig, ServiceConfig, StaticMappingConfig, TargetConfig, UncheckedPolicy,
    Weighting,
};
use udn_core::{
    ClientPrefix, Engine, Family, LatencySample, Network, Query, Reason, ServiceSample, Timestamp,
    decide,
};

const N_POPS: usize = 4;

/// A network with `n` targets in `N_POPS` POPs (target i in POP i % N_POPS), one GTM
/// hostname over them with the given weights, two standby addresses.
fn network(
    weights: &[u32],
    unchecked: UncheckedPolicy,
    all_down: AllDownPolicy,
    persistence: Option<u64>,
    statics: Vec<StaticMappingConfig>,
) -> Arc<Network> {
    let service = ServiceConfig {
        name: "http".into(),
        kind: Default::default(),
        port: None,
        path: "/".into(),
        host: None,
        expect_status: vec![],
        expect_content: None,
        expect_within: 5120,
        expect_regex: None,
        interval_secs: 10,
        timeout_ms: 1000,
        tls_verify: true,
        tls_ca: None,
        ftp_user: None,
        ftp_password: None,
        ftp_retrieve: true,
    };
    let pops = (0..N_POPS)
        .map(|p| PopConfig {
            name: format!("pop{p}"),
            location: Location {
                lat: p as f64,
                lon: p as f64,
            },
            network: String::new(),
            servers: vec![ServerConfig {
                name: format!("edge{p}"),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 99, 0, p as u8 + 1))],
            }],
        })
        .collect();
    let origins = weights
        .iter()
        .enumerate()
        .map(|(i, _)| OriginConfig {
            name: format!("site{i}"),
            pop: Some(format!("pop{}", i % N_POPS)),
            location: None,
            servers: vec![ServerConfig {
                name: format!("s{i}"),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))],
            }],
        })
        .collect();
    let cfg = Config {
        services: vec![service],
        pops,
        origins,
        customers: vec![CustomerConfig {
            name: "c".into(),
            display_name: None,
        }],
        gtm: vec![GtmConfig {
            hostname: "www.c.example".into(),
            customer: "c".into(),
            service: "http".into(),
            ttl: 30,
            answers: 1,
            all_down,
            unchecked,
            standby: vec!["10.9.9.1".parse().unwrap(), "10.9.9.2".parse().unwrap()],
            standby_servers: vec![],
            min_healthy: 1,
            persistence: persistence.map(|secs| PersistenceConfig { secs }),
            weighting: Weighting {
                latency: 1.0,
                load: 0.0,
                response_time: 0.0,
            },
            near_equal: 5.0,
            challenge: None,
            targets: weights
                .iter()
                .enumerate()
                .map(|(i, w)| TargetConfig {
                    server: format!("s{i}"),
                    weight: *w,
                })
                .collect(),
        }],
        static_mappings: statics,
        // The generated network uses private addresses for its origins.
        security: udn_core::config::SecurityConfig {
            allow_target_ranges: vec!["10.0.0.0/8".parse().unwrap()],
        },
        ..Default::default()
    };
    Arc::new(cfg.compile().expect("test network compiles"))
}

fn target_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

/// The health of one target in a generated scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
enum H {
    Up,
    Down,
    Stale,
    Unchecked,
}

fn health() -> impl Strategy<Value = H> {
    prop_oneof![
        Just(H::Up),
        Just(H::Down),
        Just(H::Stale),
        Just(H::Unchecked)
    ]
}

const NOW: Timestamp = Timestamp::from_secs(1_000_000);

/// Puts target i into health `h` at NOW (grace is 60 s; down_after 3).
fn set_health(engine: &mut Engine, i: usize, h: H) {
    let net = engine.network().clone();
    let s = net.server_id(&format!("s{i}")).unwrap();
    let v = net.service_id("http").unwrap();
    let at = match h {
        H::Stale => NOW.as_millis() - 3_600_000,
        _ => NOW.as_millis() - 1_000,
    };
    let ok = matches!(h, H::Up | H::Stale);
    match h {
        H::Unchecked => {}
        _ => {
            engine.state_mut().apply_service(
                &net,
                s,
                v,
                ServiceSample {
                    ok,
                    response_ms: 10.0,
                    at: Timestamp::from_millis(at),
                },
            );
        }
    }
}

fn query(net: &Network, client: IpAddr, seed: u64) -> Query {
    Query {
        host: net.host_id("www.c.example").unwrap(),
        client,
        ecs: None,
        family: Family::V4,
        seed,
    }
}

fn client_ip() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A down or stale target is never returned while an up one exists; standby only
    /// when no published target is usable.
    #[test]
    fn never_down_or_stale_while_up_exists(
        hs in proptest::collection::vec(health(), 1..8),
        unchecked_up in any::<bool>(),
        client in client_ip(),
        seed in any::<u64>(),
        rtts in proptest::collection::vec(1u32..500_000, N_POPS),
    ) {
        let unchecked = if unchecked_up { UncheckedPolicy::Up } else { UncheckedPolicy::Down };
        let weights = vec![1; hs.len()];
        let net = network(&weights, unchecked, AllDownPolicy::Standby, None, vec![]);
        let mut engine = Engine::new(net.clone());
        for (i, h) in hs.iter().enumerate() {
            set_health(&mut engine, i, *h);
        }
        for (p, rtt) in rtts.iter().enumerate() {
            engine.state_mut().apply_latency(
                ClientPrefix::of(client),
                net.pop_id(&format!("pop{p}")).unwrap(),
                LatencySample { rtt_us: *rtt, at: NOW },
            );
        }
        let usable: Vec<bool> = hs
            .iter()
            .map(|h| *h == H::Up || (*h == H::Unchecked && unchecked_up))
            .collect();
        let d = engine.decide(&query(&net, client, seed), NOW);
        prop_assert!(!d.addrs.is_empty());
        if usable.iter().any(|u| *u) {
            for a in d.addrs.as_slice() {
                let i = (0..hs.len()).find(|i| target_addr(*i) == *a);
                prop_assert!(i.is_some(), "answered {a}, which is no published target");
                prop_assert!(usable[i.unwrap()], "answered unusable target {a} ({:?})", hs[i.unwrap()]);
            }
            prop_assert_ne!(d.reason, Reason::Standby);
        } else {
            prop_assert_eq!(d.reason, Reason::Standby);
            for a in d.addrs.as_slice() {
                prop_assert!(a.to_string().starts_with("10.9.9."), "{a}");
            }
        }
    }

    /// With equal scores, picks converge to the weight ratios.
    #[test]
    fn weights_converge_to_ratios(weights in proptest::collection::vec(1u32..10, 2..5)) {
        let net = network(&weights, UncheckedPolicy::Up, AllDownPolicy::Standby, None, vec![]);
        let engine = Engine::new(net.clone());
        let n = 20_000u64;
        let mut counts: HashMap<IpAddr, u64> = HashMap::new();
        for seed in 0..n {
            // Vary clients too: the pick hashes the seed with the client prefix.
            let client = IpAddr::V4(Ipv4Addr::from((seed as u32).wrapping_mul(2_654_435_761)));
            let d = engine.decide(&query(&net, client, seed), NOW);
            prop_assert_eq!(d.reason, Reason::Weighted);
            *counts.entry(d.addrs.as_slice()[0]).or_default() += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = *w as f64 / total as f64;
            let got = *counts.get(&target_addr(i)).unwrap_or(&0) as f64 / n as f64;
            // Tolerance: 5 standard deviations of a binomial proportion, at least 1 %.
            let sd = (expected * (1.0 - expected) / n as f64).sqrt();
            prop_assert!((got - expected).abs() <= (5.0 * sd).max(0.01),
                "target {i}: weight share {expected:.3}, picked {got:.3}");
        }
    }

    /// Persistence holds while its target is up, and expires on time.
    #[test]
    fn persistence_holds_then_expires(
        client in client_ip(),
        seeds in proptest::collection::vec(any::<u64>(), 1..20),
        secs in 10u64..1000,
    ) {
        let net = network(&[1, 1, 1], UncheckedPolicy::Up, AllDownPolicy::Standby, Some(secs), vec![]);
        let mut engine = Engine::new(net.clone());
        // Before any measurement the pick is provisional and not pinned.
        let provisional = engine.decide_and_record(&query(&net, client, 0), NOW);
        prop_assert!(provisional.persist.is_none());
        prop_assert_eq!(engine.state().persistence_len(), 0);
        for p in 0..N_POPS {
            engine.state_mut().apply_latency(
                ClientPrefix::of(client),
                net.pop_id(&format!("pop{p}")).unwrap(),
                LatencySample { rtt_us: 20_000, at: NOW },
            );
        }
        let first = engine.decide_and_record(&query(&net, client, 0), NOW);
        let held = first.addrs.as_slice()[0];
        for (k, seed) in seeds.iter().enumerate() {
            let t = NOW.plus(std::time::Duration::from_secs((k as u64 * secs) / 20));
            let d = engine.decide_and_record(&query(&net, client, *seed), t);
            prop_assert_eq!(d.addrs.as_slice()[0], held);
            prop_assert_eq!(d.reason, Reason::Sticky);
        }
        // At expiry the entry no longer binds.
        let t_exp = NOW.plus(std::time::Duration::from_secs(secs));
        let d = engine.decide(&query(&net, client, 1), t_exp);
        prop_assert_ne!(d.reason, Reason::Sticky);
        // And when the held target goes down, the client moves.
        let i = (0..3).find(|i| target_addr(*i) == held).unwrap();
        let mut engine2 = engine.clone();
        set_health(&mut engine2, i, H::Down);
        let d = engine2.decide(&query(&net, client, 1), NOW);
        prop_assert_ne!(d.addrs.as_slice()[0], held);
    }

    /// A static mapping wins over latency, for clients inside it only.
    #[test]
    fn static_mapping_wins_over_latency(client in client_ip(), len in 8u8..=32, target in 0usize..3) {
        let network_cidr = udn_core::Cidr::new(client, len);
        let statics = vec![StaticMappingConfig {
            network: network_cidr,
            target: format!("s{target}"),
            hostnames: vec![],
        }];
        let net = network(&[1, 1, 1], UncheckedPolicy::Up, AllDownPolicy::Standby, None, statics);
        let mut engine = Engine::new(net.clone());
        // Make another target far closer by latency.
        let other = (target + 1) % 3;
        for p in 0..N_POPS {
            let rtt = if p == other % N_POPS { 1_000 } else { 300_000 };
            engine.state_mut().apply_latency(
                ClientPrefix::of(client),
                net.pop_id(&format!("pop{p}")).unwrap(),
                LatencySample { rtt_us: rtt, at: NOW },
            );
        }
        let d = engine.decide(&query(&net, client, 3), NOW);
        prop_assert_eq!(d.reason, Reason::Static);
        prop_assert_eq!(d.addrs.as_slice()[0], target_addr(target));
        prop_assert_eq!(d.ecs_scope, len);
        // A client just outside the mapping is routed by latency.
        if len > 0 {
            let outside = match client {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ (1u32 << (32 - len as u32)))),
                v6 => v6,
            };
            let d = engine.decide(&query(&net, outside, 3), NOW);
            prop_assert_ne!(d.reason, Reason::Static);
        }
    }

    /// The same inputs and seed give the same decision.
    #[test]
    fn deterministic(
        hs in proptest::collection::vec(health(), 1..8),
        client in client_ip(),
        seed in any::<u64>(),
    ) {
        let weights: Vec<u32> = (0..hs.len() as u32).map(|i| i % 3 + 1).collect();
        let build = || {
            let net = network(&weights, UncheckedPolicy::Up, AllDownPolicy::All, None, vec![]);
            let mut e = Engine::new(net);
            for (i, h) in hs.iter().enumerate() {
                set_health(&mut e, i, *h);
            }
            e
        };
        let (a, b) = (build(), build());
        let qa = query(a.network(), client, seed);
        prop_assert_eq!(a.decide(&qa, NOW), b.decide(&qa, NOW));
    }

    /// Arbitrary config text never panics: it parses and compiles, or gives errors.
    #[test]
    fn arbitrary_config_text_never_panics(text in "\\PC{0,400}") {
        if let Ok(cfg) = Config::from_toml(&text) {
            let _ = cfg.compile();
        }
    }

    /// Structurally valid TOML with broken references and ranges gives errors naming the
    /// field, never a panic.
    #[test]
    fn invalid_configs_give_errors(
        answers in 0u8..20,
        up_after in 0u32..3,
        server in "[a-z]{1,6}",
        lat in -200.0f64..200.0,
    ) {
        let text = format!(r#"
[health]
up_after = {up_after}
[[services]]
name = "http"
[[customers]]
name = "c"
[[pops]]
name = "p"
location = {{ lat = {lat}, lon = 0.0 }}
servers = [{{ name = "e1", addresses = ["10.0.0.1"] }}]
[[gtm]]
hostname = "www.c.example"
customer = "c"
service = "http"
answers = {answers}
targets = [{{ server = "{server}" }}]
"#);
        let cfg = Config::from_toml(&text).expect("schema-valid TOML");
        match cfg.compile() {
            Ok(_) => {
                prop_assert!((1..=8).contains(&answers) && up_after >= 1 && server == "e1" && (-90.0..=90.0).contains(&lat));
            }
            Err(e) => {
                let msg = e.to_string();
                if !(1..=8).contains(&answers) { prop_assert!(msg.contains("gtm[0].answers"), "{msg}"); }
                if up_after == 0 { prop_assert!(msg.contains("health.up_after"), "{msg}"); }
                if server != "e1" { prop_assert!(msg.contains("gtm[0].targets[0].server"), "{msg}"); }
                if !(-90.0..=90.0).contains(&lat) { prop_assert!(msg.contains("pops[0].location.lat"), "{msg}"); }
            }
        }
    }
}

#[test]
fn none_policy_answers_nodata_and_all_policy_answers_published() {
    for (policy, reason) in [
        (AllDownPolicy::None, Reason::NoData),
        (AllDownPolicy::All, Reason::LastResort),
    ] {
        let net = network(&[1, 1], UncheckedPolicy::Down, policy, None, vec![]);
        let engine = Engine::new(net.clone());
        let d = decide(
            &net,
            engine.state(),
            &query(&net, "192.0.2.1".parse().unwrap(), 1),
            NOW,
        );
        assert_eq!(d.reason, reason);
        if policy == AllDownPolicy::None {
            assert!(d.addrs.is_empty());
        } else {
            assert_eq!(d.addrs.len(), 1);
            assert!([target_addr(0), target_addr(1)].contains(&d.addrs.as_slice()[0]));
        }
    }
}

#[test]
fn latency_ranking_picks_the_nearest_pop_and_reports_scope() {
    let net = network(
        &[1, 1, 1, 1],
        UncheckedPolicy::Up,
        AllDownPolicy::Standby,
        None,
        vec![],
    );
    let mut engine = Engine::new(net.clone());
    let client: IpAddr = "198.51.100.77".parse().unwrap();
    for (p, rtt) in [90_000u32, 20_000, 150_000, 60_000].iter().enumerate() {
        engine.state_mut().apply_latency(
            ClientPrefix::of(client),
            net.pop_id(&format!("pop{p}")).unwrap(),
            LatencySample {
                rtt_us: *rtt,
                at: NOW,
            },
        );
    }
    let d = engine.decide(&query(&net, client, 5), NOW);
    assert_eq!(d.reason, Reason::Latency);
    assert_eq!(d.addrs.as_slice(), &[target_addr(1)]);
    assert_eq!(d.ecs_scope, 24);
    assert!(d.refresh.is_empty());
    // The ECS subnet, not the resolver's address, is the client; scope 24.
    let mut q = query(&net, "203.0.113.1".parse().unwrap(), 5);
    q.ecs = Some(udn_core::Cidr::new(client, 24));
    let d = engine.decide(&q, NOW);
    assert_eq!(d.addrs.as_slice(), &[target_addr(1)]);
    assert_eq!(d.ecs_scope, 24);
    // With a /16 source the answer is still that of the /24 it names: scope 24, longer
    // than the source (RFC 7871 7.2.1: the source was not specific enough).
    let wide: IpAddr = "198.51.0.0".parse().unwrap();
    engine.state_mut().apply_latency(
        ClientPrefix::of(wide),
        net.pop_id("pop3").unwrap(),
        LatencySample {
            rtt_us: 1_000,
            at: NOW,
        },
    );
    q.ecs = Some(udn_core::Cidr::new(client, 16));
    let d = engine.decide(&q, NOW);
    assert_eq!(d.addrs.as_slice(), &[target_addr(3)]);
    assert_eq!(d.ecs_scope, 24);
}

#[test]
fn missing_latency_is_requested_from_the_probes() {
    let net = network(
        &[1, 1, 1, 1],
        UncheckedPolicy::Up,
        AllDownPolicy::Standby,
        None,
        vec![],
    );
    let engine = Engine::new(net.clone());
    let client: IpAddr = "198.51.100.77".parse().unwrap();
    let d = engine.decide(&query(&net, client, 5), NOW);
    let pops: Vec<_> = d.refresh.as_slice().iter().map(|(_, p)| *p).collect();
    assert_eq!(pops.len(), N_POPS);
    assert!(
        d.refresh
            .as_slice()
            .iter()
            .all(|(c, _)| *c == ClientPrefix::of(client))
    );
    // The unmeasured answer still depends on the /24 (a measured neighbour would rank
    // differently): scope 24, never 0.
    assert_eq!(d.ecs_scope, 24);
    let mut q = query(&net, client, 5);
    q.ecs = Some(udn_core::Cidr::new(client, 24));
    assert_eq!(engine.decide(&q, NOW).ecs_scope, 24);
}

/// Target names a generated static mapping may point at: a server, an origin site, or
/// a POP (no target of the hostname stands in a POP, so that mapping never applies).
fn mapping_target(k: usize, n: usize) -> String {
    match k % 3 {
        0 => format!("s{}", k / 3 % n),
        1 => format!("site{}", k / 3 % n),
        _ => format!("pop{}", k / 3 % N_POPS),
    }
}

const SPACE: u32 = 0x0a00_0000; // 10.0.0.0/22: the addresses the generated data lives in

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// The ECS scope is honest: every client inside the returned scope gets the same
    /// answer from the same data (nested static mappings, latency rows, persistence
    /// entries, health, weights), checked by brute force: every address of the scope
    /// inside the small space the data lives in (10.0.0.0/22), and 64 more of the
    /// scope outside it.
    #[test]
    fn ecs_scope_holds_for_every_client_inside_it(
        weights in proptest::collection::vec(0u32..3, 2..5),
        up in proptest::collection::vec(prop_oneof![3 => Just(H::Up), 1 => Just(H::Down)], 5),
        latency_weight in prop_oneof![Just(0.0f32), Just(1.0)],
        near_equal in prop_oneof![Just(0.0f32), Just(5.0), Just(1e6)],
        persist in any::<bool>(),
        maps in proptest::collection::vec((0u32..1024, prop_oneof![Just(16u8), 20u8..=32], 0usize..15), 0..7),
        rows in proptest::collection::vec((0u32..4, 0usize..N_POPS, 1u32..200_000), 0..12),
        sticks in proptest::collection::vec((0u32..4, 0usize..5), 0..4),
        client_off in 0u32..1024,
        seed in any::<u64>(),
    ) {
        let n = weights.len();
        let statics: Vec<StaticMappingConfig> = maps
            .iter()
            .map(|&(off, len, k)| StaticMappingConfig {
                network: udn_core::Cidr::new(IpAddr::V4(Ipv4Addr::from(SPACE + off)), len),
                target: mapping_target(k, n),
                hostnames: vec![],
            })
            .collect();
        let base = network(&weights, UncheckedPolicy::Up, AllDownPolicy::Standby,
            persist.then_some(600), statics);
        let mut cfg = base.config.clone();
        cfg.gtm[0].weighting.latency = latency_weight;
        cfg.gtm[0].weighting.load = if latency_weight == 0.0 { 1.0 } else { 0.0 };
        cfg.gtm[0].near_equal = near_equal;
        let net = Arc::new(cfg.compile().unwrap());
        let mut engine = Engine::new(net.clone());
        for (i, h) in up.iter().enumerate().take(n) {
            set_health(&mut engine, i, *h);
        }
        let host = net.host_id("www.c.example").unwrap();
        for &(net24, pop, rtt) in &rows {
            engine.state_mut().apply_latency(
                ClientPrefix::of(IpAddr::V4(Ipv4Addr::from(SPACE + (net24 << 8)))),
                net.pop_id(&format!("pop{pop}")).unwrap(),
                LatencySample { rtt_us: rtt, at: NOW },
            );
        }
        for &(net24, server) in &sticks {
            engine.state_mut().apply_persist(udn_core::PersistWrite {
                host,
                prefix: ClientPrefix::of(IpAddr::V4(Ipv4Addr::from(SPACE + (net24 << 8)))),
                server: net.server_id(&format!("s{}", server % n)).unwrap(),
                until: NOW.plus(std::time::Duration::from_secs(600)),
            });
        }
        let ask = |ip: u32| {
            let mut q = query(&net, "192.0.2.53".parse().unwrap(), seed);
            q.ecs = Some(udn_core::Cidr::new(IpAddr::V4(Ipv4Addr::from(ip)), 32));
            engine.decide(&q, NOW)
        };
        let client = SPACE + client_off;
        let d = ask(client);
        let scope = d.ecs_scope;
        prop_assert!(scope <= 32);
        let mask = if scope == 0 { 0 } else { u32::MAX << (32 - scope as u32) };
        let inside = |ip: u32| ip & mask == client & mask;
        let mut others: Vec<u32> = (SPACE..SPACE + 1024).filter(|&ip| inside(ip)).collect();
        let mut r = seed;
        for _ in 0..64 {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            others.push((client & mask) | ((r >> 32) as u32 & !mask));
        }
        for ip in others {
            let e = ask(ip);
            prop_assert_eq!(
                e.addrs.as_slice(), d.addrs.as_slice(),
                "client {} gets {:?} ({}) but {} got {:?} ({}) with scope {}",
                Ipv4Addr::from(ip), e.addrs.as_slice(), e.reason.as_str(),
                Ipv4Addr::from(client), d.addrs.as_slice(), d.reason.as_str(), scope
            );
        }
    }
}

#[test]
fn ecs_source_prefix_zero_means_no_client_information() {
    let statics = vec![StaticMappingConfig {
        network: "0.0.0.0/8".parse().unwrap(),
        target: "s2".into(),
        hostnames: vec![],
    }];
    let net = network(
        &[1, 1, 1],
        UncheckedPolicy::Up,
        AllDownPolicy::Standby,
        None,
        statics,
    );
    let engine = Engine::new(net.clone());
    // ECS 0.0.0.0/0 is not the client 0.0.0.0 (which the static mapping would catch):
    // the resolver's address decides, and the scope is 0.
    let mut q = query(&net, "198.51.100.7".parse().unwrap(), 1);
    q.ecs = Some(udn_core::Cidr::new("0.0.0.0".parse().unwrap(), 0));
    let d = engine.decide(&q, NOW);
    assert_ne!(d.reason, Reason::Static);
    assert_eq!(d.ecs_scope, 0);
    assert!(
        d.refresh
            .as_slice()
            .iter()
            .all(|(p, _)| *p == ClientPrefix::of(q.client))
    );
    // A /8 source of 0.0.0.0 is client information: the mapping applies.
    q.ecs = Some(udn_core::Cidr::new("0.0.0.0".parse().unwrap(), 8));
    let d = engine.decide(&q, NOW);
    assert_eq!(d.reason, Reason::Static);
    assert_eq!(d.ecs_scope, 8);
}
