//! The pure responder: query bytes -> response bytes, for a static record from a zone
//! file and for a GTM decision (`cargo bench -p udn-benches --bench dns_responder`).
//! Also prints the heap allocations per query.
use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use udn_benches::alloc::{CountingAlloc, allocations_per_call};
use udn_core::{Config, Engine, Timestamp, config::SAMPLE};
use udn_dns::{Authority, Outcome, Request, Responder, Transport};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

const ZONE: &str = "$ORIGIN udn.example.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n\
@ NS ns1\nns1 A 127.0.0.53\nstatic A 192.0.2.10\n";

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 7;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let mut cfg = Config::from_toml(SAMPLE).unwrap();
    cfg.dns.zones[0].file = Some("z".into());
    let net = Arc::new(cfg.compile().unwrap());
    let files = HashMap::from([("z".to_string(), ZONE.to_string())]);
    let auth = Authority::new(net.clone(), &files).unwrap();
    let engine = Engine::new(net);
    let now = Timestamp::from_secs(1_700_000_000);
    let mut r = Responder::new();
    for (label, name) in [
        ("dns_static_a", "static.udn.example."),
        ("dns_gtm_a", "www.shop.udn.example."),
    ] {
        let q = query(name);
        let req = Request {
            bytes: &q,
            client: "198.51.100.7".parse().unwrap(),
            transport: Transport::Udp,
            now,
        };
        let run = |r: &mut Responder| match r.respond(black_box(&req), &auth, &engine, None) {
            Outcome::Reply(rep) => rep.bytes.len(),
            _ => 0,
        };
        assert!(run(&mut r) > 0);
        let allocs = allocations_per_call(10_000, || {
            black_box(run(&mut r));
        });
        println!("{label}: {allocs:.1} allocations per query");
        c.bench_function(label, |b| b.iter(|| run(&mut r)));
        // Without the answer cache: a fresh responder per query (static answers are
        // otherwise served from the per-responder cache after the first).
        c.bench_function(&format!("{label}_uncached"), |b| {
            b.iter(|| run(&mut Responder::new()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
