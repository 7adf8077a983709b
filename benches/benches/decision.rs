//! The decision engine at scale: 10,000 hostnames, 200 POPs, 1,000,000 latency entries.
//! One decision per iteration in four cases (static, sticky, latency-ranked, failover),
//! rotating through 4,096 precomputed queries so caches see a realistic spread. After
//! criterion's timing, each case reports its heap allocations per decision from the
//! counting allocator.
//!
//! Run: `cargo bench -p udn-benches --bench decision`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use udn_benches::alloc::{CountingAlloc, allocations_per_call};
use udn_core::config::{
    AllDownPolicy, Config, CustomerConfig, GtmConfig, Location, OriginConfig, PersistenceConfig,
    PopConfig, ServerConfig, ServiceConfig, StaticMappingConfig, TargetConfig, UncheckedPolicy,
    Weighting,
};
use udn_core::{
    Cidr, ClientPrefix, Engine, Family, LatencySample, Query, Reason, ServiceSample, Timestamp,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const POPS: usize = 200;
const SITES: usize = 2_000;
/// The last hostnames fail over; their targets are sites no other hostname uses.
const FAILOVER_HOSTS: usize = 64;
const HOSTS: usize = 10_000;
const PREFIXES: usize = 5_000; // x 200 POPs = 1,000,000 latency entries
const TARGETS_PER_HOST: usize = 4;
const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

fn client(i: usize) -> IpAddr {
    // Spread prefixes over 100.0.0.0/8..: prefix i is 100.x.y.0/24.
    IpAddr::V4(Ipv4Addr::new(
        100 + (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
        7,
    ))
}

fn build() -> Engine {
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
    let pops = (0..POPS)
        .map(|p| PopConfig {
            name: format!("pop{p}"),
            location: Location {
                lat: (p % 180) as f64 - 89.0,
                lon: (p % 360) as f64 - 179.0,
            },
            network: String::new(),
            servers: vec![ServerConfig {
                name: format!("edge{p}"),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 1, (p >> 8) as u8, p as u8))],
            }],
        })
        .collect();
    let origins = (0..SITES + FAILOVER_HOSTS * TARGETS_PER_HOST)
        .map(|s| OriginConfig {
            name: format!("site{s}"),
            pop: Some(format!("pop{}", s % POPS)),
            location: None,
            servers: vec![ServerConfig {
                name: format!("srv{s}"),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 2, (s >> 8) as u8, s as u8))],
            }],
        })
        .collect();
    let gtm = (0..HOSTS)
        .map(|h| GtmConfig {
            hostname: format!("h{h}.bench.example"),
            customer: "c".into(),
            service: "http".into(),
            ttl: 30,
            answers: 1,
            all_down: AllDownPolicy::Standby,
            unchecked: UncheckedPolicy::Up,
            standby: vec![IpAddr::V4(Ipv4Addr::new(10, 3, 0, 1))],
            standby_servers: vec![],
            min_healthy: 1,
            // The second half of the hostnames use persistence.
            persistence: (h >= HOSTS / 2).then_some(PersistenceConfig { secs: 600 }),
            weighting: Weighting::default(),
            near_equal: 5.0,
            challenge: None,
            targets: (0..TARGETS_PER_HOST)
                .map(|t| TargetConfig {
                    server: if h >= HOSTS - FAILOVER_HOSTS {
                        format!(
                            "srv{}",
                            SITES + (h - (HOSTS - FAILOVER_HOSTS)) * TARGETS_PER_HOST + t
                        )
                    } else {
                        format!("srv{}", (h * 7 + t * 131) % SITES)
                    },
                    weight: 1 + t as u32,
                })
                .collect(),
        })
        .collect();
    // 1,000 static /16 mappings over 20.0.0.0/8..23.255.0.0/16, each to a host's first
    // target's site.
    let static_mappings = (0..1_000)
        .map(|m| StaticMappingConfig {
            network: Cidr::new(
                IpAddr::V4(Ipv4Addr::new(20 + (m >> 8) as u8, m as u8, 0, 0)),
                16,
            ),
            target: format!("site{}", (m * 7) % SITES),
            hostnames: vec![format!("h{m}.bench.example")],
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
        gtm,
        static_mappings,
        // The generated origins use private addresses.
        security: udn_core::config::SecurityConfig {
            allow_target_ranges: vec!["10.0.0.0/8".parse().unwrap()],
        },
        ..Default::default()
    };
    let net = Arc::new(cfg.compile().expect("bench network compiles"));
    let mut engine = Engine::new(net.clone());
    let v = net.service_id("http").unwrap();
    for s in 0..net.servers.len() {
        let id = udn_core::ServerId(s as u32);
        engine.state_mut().apply_service(
            &net,
            id,
            v,
            ServiceSample {
                ok: true,
                response_ms: 20.0 + (s % 50) as f32,
                at: NOW,
            },
        );
        engine.state_mut().apply_load(id, (s % 90) as f32, NOW);
    }
    for i in 0..PREFIXES {
        let prefix = ClientPrefix::of(client(i));
        for p in 0..POPS {
            let rtt = 1_000 + ((i * 7919 + p * 104_729) % 250_000) as u32;
            engine.state_mut().apply_latency(
                prefix,
                udn_core::PopId(p as u32),
                LatencySample {
                    rtt_us: rtt,
                    at: NOW,
                },
            );
        }
    }
    assert_eq!(engine.state().latency.len(), PREFIXES * POPS);
    engine
}

fn queries(engine: &Engine, f: impl Fn(usize) -> (usize, IpAddr)) -> Vec<Query> {
    (0..4096)
        .map(|i| {
            let (h, c) = f(i);
            Query {
                host: engine
                    .network()
                    .host_id(&format!("h{h}.bench.example"))
                    .unwrap(),
                client: c,
                ecs: None,
                family: Family::V4,
                seed: i as u64,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut engine = build();

    // Latency-ranked: hostnames without persistence, measured clients.
    let ranked = queries(&engine, |i| {
        ((i * 13) % (HOSTS / 2), client((i * 31) % PREFIXES))
    });
    // Static: clients inside the static mapping of their hostname.
    let statics = queries(&engine, |i| {
        let m = i % 1_000;
        (
            m,
            IpAddr::V4(Ipv4Addr::new(20 + (m >> 8) as u8, m as u8, 3, 4)),
        )
    });
    // Sticky: persistence hostnames, each client recorded once first.
    let sticky = queries(&engine, |i| {
        (
            HOSTS / 2 + (i * 13) % (HOSTS / 2 - FAILOVER_HOSTS),
            client((i * 31) % PREFIXES),
        )
    });
    for q in &sticky {
        engine.decide_and_record(q, NOW);
    }
    // Failover: the last hostnames, all their targets down -> standby.
    let failover_hosts: Vec<usize> = (HOSTS - FAILOVER_HOSTS..HOSTS).collect();
    {
        let net = engine.network().clone();
        let v = net.service_id("http").unwrap();
        for &h in &failover_hosts {
            let hid = net.host_id(&format!("h{h}.bench.example")).unwrap();
            for t in net.host(hid).targets.clone() {
                for k in 1..=3u64 {
                    engine.state_mut().apply_service(
                        &net,
                        t.server,
                        v,
                        ServiceSample {
                            ok: false,
                            response_ms: 0.0,
                            at: Timestamp::from_millis(NOW.as_millis() + k),
                        },
                    );
                }
            }
        }
    }
    let failover = queries(&engine, |i| {
        (
            failover_hosts[i % failover_hosts.len()],
            client(i % PREFIXES),
        )
    });
    let now = Timestamp::from_millis(NOW.as_millis() + 10);

    let cases: [(&str, &Vec<Query>, &[Reason]); 4] = [
        ("static", &statics, &[Reason::Static]),
        ("sticky", &sticky, &[Reason::Sticky]),
        (
            "latency_ranked",
            &ranked,
            &[Reason::Latency, Reason::Weighted],
        ),
        ("failover", &failover, &[Reason::Standby]),
    ];
    let mut group = c.benchmark_group("decision");
    for (name, qs, reasons) in cases {
        // Sanity: each case exercises the path it is named after.
        for q in qs.iter().take(64) {
            let r = engine.decide(q, now).reason;
            assert!(reasons.contains(&r), "{name}: got {r:?}");
        }
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(engine.decide(black_box(&qs[i]), now))
            })
        });
    }
    group.finish();

    for (name, qs, _) in cases {
        let mut i = 0usize;
        let per = allocations_per_call(100_000, || {
            i = (i + 1) & 4095;
            black_box(engine.decide(&qs[i], now));
        });
        println!("decision/{name}: {per} heap allocations per decision");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
