//! The pure responder, query bytes to response bytes, on the sample network and a zone
//! file. Every answer is decoded again with hickory-proto and checked field by field.

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use udn_core::{Config, Engine, Metric, ServiceSample, Timestamp, config::SAMPLE};
use udn_dns::{Authority, Outcome, PROXIED_OPTION, Request, Responder, Transport};

const ZONE: &str = r#"$ORIGIN udn.example.
$TTL 300
@       IN SOA ns1 hostmaster ( 2024010101 7200 900 1209600 60 )
@       IN NS  ns1
@       IN NS  ns2
ns1     IN A   127.0.0.53
ns2     IN A   127.0.0.54
static  IN A   192.0.2.10
static  IN AAAA 2001:db8::10
alias   IN CNAME alias2
alias2  IN CNAME static
toshop  IN CNAME www.shop
dangling IN CNAME gone
big     IN TXT "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
big     IN TXT "1123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
big     IN TXT "2123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
big     IN TXT "3123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
big     IN TXT "4123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
big     IN TXT "5123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
*.wild  IN A   192.0.2.99
sub     IN NS  ns.sub
ns.sub  IN A   192.0.2.77
"#;

struct Fixture {
    auth: Authority,
    engine: Engine,
}

fn fixture() -> Fixture {
    let mut cfg = Config::from_toml(SAMPLE).unwrap();
    cfg.dns.zones[0].file = Some("udn.zone".into());
    let net = Arc::new(cfg.compile().unwrap());
    let mut files = HashMap::new();
    files.insert("udn.zone".to_string(), ZONE.to_string());
    let auth = Authority::new(net.clone(), &files).unwrap();
    Fixture {
        auth,
        engine: Engine::new(net),
    }
}

const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

fn with_edns(mut m: Message, size: u16, ecs: Option<&str>) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(size);
    if let Some(s) = ecs {
        e.options_mut()
            .insert(EdnsOption::Subnet(s.parse::<ClientSubnet>().unwrap()));
    }
    m.edns = Some(e);
    m
}

fn ask_bytes(f: &Fixture, bytes: &[u8], transport: Transport) -> Option<Message> {
    let mut r = Responder::new();
    let req = Request {
        bytes,
        client: "198.51.100.7".parse().unwrap(),
        transport,
        now: NOW,
    };
    match r.respond(&req, &f.auth, &f.engine, None) {
        Outcome::Reply(rep) => Some(Message::from_vec(rep.bytes).unwrap()),
        _ => None,
    }
}

fn ask(f: &Fixture, m: &Message) -> Message {
    ask_bytes(f, &m.to_vec().unwrap(), Transport::Udp).unwrap()
}

#[test]
fn apex_soa_and_ns_are_authoritative() {
    let f = fixture();
    let r = ask(&f, &query("udn.example.", RecordType::SOA));
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.authoritative);
    assert_eq!(r.id, 4242);
    assert!(r.recursion_desired);
    assert!(!r.recursion_available);
    assert_eq!(r.answers.len(), 1);
    let RData::SOA(soa) = &r.answers[0].data else {
        panic!("{r:?}")
    };
    assert_eq!(soa.serial, 2024010101);
    let r = ask(&f, &query("udn.example.", RecordType::NS));
    assert_eq!(r.answers.len(), 2);
    // Glue for the in-zone name servers.
    assert_eq!(r.additionals.len(), 2);
}

#[test]
fn static_records_and_cname_chain() {
    let f = fixture();
    let r = ask(&f, &query("static.udn.example.", RecordType::AAAA));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 300);
    let r = ask(&f, &query("alias.udn.example.", RecordType::A));
    let types: Vec<_> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(types, [RecordType::CNAME, RecordType::CNAME, RecordType::A]);
    assert_eq!(r.answers[2].name.to_ascii(), "static.udn.example.");
    // A CNAME into a GTM name gets the decision.
    let r = ask(&f, &query("toshop.udn.example.", RecordType::A));
    assert_eq!(r.answers.len(), 2, "{r:?}");
    assert_eq!(r.answers[1].ttl, 20);
    // A dangling CNAME: the CNAME, then NXDOMAIN for its target (RFC 6604).
    let r = ask(&f, &query("dangling.udn.example.", RecordType::A));
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn negative_answers() {
    let f = fixture();
    let r = ask(&f, &query("nope.udn.example.", RecordType::A));
    assert_eq!(r.response_code, ResponseCode::NXDomain);
    assert!(r.authoritative);
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(r.authorities[0].ttl, 60);
    // NODATA: name exists, type does not.
    let r = ask(&f, &query("static.udn.example.", RecordType::MX));
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    // An empty non-terminal above a GTM name is NODATA, not NXDOMAIN.
    let r = ask(&f, &query("shop.udn.example.", RecordType::A));
    assert_eq!(r.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    // Outside our zones.
    let r = ask(&f, &query("example.com.", RecordType::A));
    assert_eq!(r.response_code, ResponseCode::Refused);
    assert!(!r.authoritative);
    // Other class.
    let mut q = query("udn.example.", RecordType::SOA);
    q.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(ask(&f, &q).response_code, ResponseCode::Refused);
}

#[test]
fn wildcard_and_delegation() {
    let f = fixture();
    let r = ask(&f, &query("x.wild.udn.example.", RecordType::A));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].name.to_ascii(), "x.wild.udn.example.");
    let r = ask(&f, &query("www.sub.udn.example.", RecordType::A));
    assert!(!r.authoritative);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities[0].record_type(), RecordType::NS);
    assert_eq!(r.additionals.len(), 1);
}

#[test]
fn opcodes_and_malformed() {
    let f = fixture();
    let mut q = query("udn.example.", RecordType::SOA);
    q.metadata.op_code = OpCode::Status;
    let r = ask(&f, &q);
    assert_eq!(r.response_code, ResponseCode::NotImp);
    assert_eq!(r.id, 4242);
    // Garbage after a valid header: FORMERR with the id echoed.
    let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&[0xff; 20]);
    let r = ask_bytes(&f, &bytes, Transport::Udp).unwrap();
    assert_eq!(r.response_code, ResponseCode::FormErr);
    assert_eq!(r.id, 0x1234);
    // Too short to answer, or a response: dropped.
    assert!(ask_bytes(&f, &[1, 2, 3], Transport::Udp).is_none());
    let mut resp = query("udn.example.", RecordType::A);
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(ask_bytes(&f, &resp.to_vec().unwrap(), Transport::Udp).is_none());
}

#[test]
fn edns_version_size_and_truncation() {
    let f = fixture();
    let mut q = with_edns(query("udn.example.", RecordType::SOA), 4096, None);
    q.edns.as_mut().unwrap().set_version(1);
    let r = ask(&f, &q);
    // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
    assert_eq!(u16::from(r.response_code), 16);
    assert_eq!(r.edns.as_ref().unwrap().version(), 0);
    // EDNS advertised at 1232 whatever the client offers.
    let r = ask(
        &f,
        &with_edns(query("udn.example.", RecordType::SOA), 4096, None),
    );
    assert_eq!(r.edns.as_ref().unwrap().max_payload(), 1232);
    // A ~650-byte TXT RRset: too big for plain 512-byte UDP, fits in 1232.
    let q = query("big.udn.example.", RecordType::TXT);
    let r = ask(&f, &q);
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    let r = ask(&f, &with_edns(q.clone(), 1232, None));
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 6);
    let r = ask_bytes(&f, &q.to_vec().unwrap(), Transport::Tcp).unwrap();
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 6);
}

#[test]
fn question_case_is_preserved() {
    let f = fixture();
    let r = ask(&f, &query("sTaTiC.UdN.example.", RecordType::A));
    assert_eq!(r.queries[0].name().to_ascii(), "sTaTiC.UdN.example.");
    assert_eq!(r.answers[0].name.to_ascii(), "sTaTiC.UdN.example.");
    let r = ask(&f, &query("wWw.ShOp.udn.example.", RecordType::A));
    assert_eq!(r.queries[0].name().to_ascii(), "wWw.ShOp.udn.example.");
    assert_eq!(r.answers.len(), 1);
}

fn service(server: &str, ok: bool, at: Timestamp) -> Metric {
    Metric::Service {
        server: server.into(),
        service: "http".into(),
        sample: ServiceSample {
            ok,
            response_ms: 10.0,
            at,
        },
    }
}

#[test]
fn gtm_answers_follow_health_and_ecs_scope() {
    let mut f = fixture();
    // A latency sample for the client's /24: the decision depends on the prefix.
    f.engine
        .apply(&Metric::Latency {
            client: "203.0.113.0/24".parse().unwrap(),
            pop: "fra".into(),
            sample: udn_core::LatencySample {
                rtt_us: 5_000,
                at: NOW,
            },
        })
        .unwrap();
    let q = with_edns(
        query("www.shop.udn.example.", RecordType::A),
        1232,
        Some("203.0.113.0/24"),
    );
    let r = ask(&f, &q);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 20);
    let Some(EdnsOption::Subnet(cs)) = r.edns.as_ref().unwrap().option(EdnsCode::Subnet) else {
        panic!("no ECS echoed: {r:?}")
    };
    assert_eq!(cs.source_prefix(), 24);
    assert_eq!(cs.scope_prefix(), 24);
    // Fail the west site, then the east: answers move to east, then to standby.
    for t in 0..3 {
        f.engine
            .apply(&service(
                "shop-west-1",
                false,
                NOW.plus(std::time::Duration::from_secs(t)),
            ))
            .unwrap();
        f.engine
            .apply(&service(
                "shop-east-1",
                true,
                NOW.plus(std::time::Duration::from_secs(t)),
            ))
            .unwrap();
    }
    let r = ask(&f, &q);
    assert_eq!(r.answers[0].data, RData::A("127.0.0.21".parse().unwrap()));
    for t in 3..6 {
        f.engine
            .apply(&service(
                "shop-east-1",
                false,
                NOW.plus(std::time::Duration::from_secs(t)),
            ))
            .unwrap();
    }
    let r = ask(&f, &q);
    assert_eq!(r.answers[0].data, RData::A("127.0.0.29".parse().unwrap()));
    // Without ECS there is no ECS option in the answer.
    let r = ask(
        &f,
        &with_edns(query("www.shop.udn.example.", RecordType::A), 1232, None),
    );
    assert!(r.edns.unwrap().option(EdnsCode::Subnet).is_none());
    // The CDN hostname answers with an edge.
    let r = ask(&f, &query("cdn.shop.udn.example.", RecordType::A));
    let RData::A(a) = r.answers[0].data else {
        panic!()
    };
    assert!(["127.0.0.11", "127.0.0.12", "127.0.0.13"].contains(&a.0.to_string().as_str()));
    // AAAA for a v4-only pool: NODATA.
    let r = ask(&f, &query("www.shop.udn.example.", RecordType::AAAA));
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
}

#[test]
fn forward_and_relay() {
    let f = fixture();
    let q = query("WWW.shop.udn.example.", RecordType::A);
    let bytes = q.to_vec().unwrap();
    let client: IpAddr = "198.51.100.7".parse().unwrap();
    let req = Request {
        bytes: &bytes,
        client,
        transport: Transport::Udp,
        now: NOW,
    };
    let mut r = Responder::new();
    let shard = |_p| Some(1usize);
    let fwd = match r.respond(&req, &f.auth, &f.engine, Some(&shard)) {
        Outcome::Forward { peer, query } => {
            assert_eq!(peer, 1);
            query.to_vec()
        }
        o => panic!("{o:?}"),
    };
    let fm = Message::from_vec(&fwd).unwrap();
    let e = fm.edns.as_ref().unwrap();
    let Some(EdnsOption::Subnet(cs)) = e.option(EdnsCode::Subnet) else {
        panic!()
    };
    assert_eq!(cs.addr().to_string(), "198.51.100.0");
    assert_eq!(cs.source_prefix(), 24);
    // The marker names the resolver that asked, and that the ECS is the peer's addition.
    let Some(EdnsOption::Unknown(_, marker)) = e.option(EdnsCode::Unknown(PROXIED_OPTION)) else {
        panic!("proxied marker")
    };
    assert_eq!(
        udn_dns::responder::parse_proxied_payload(marker),
        Some((client, false))
    );
    // The owner answers the marked query itself even though its shard says "peer 0".
    let mut owner = Responder::new();
    let oreq = Request {
        bytes: &fwd,
        client: "127.0.0.1".parse().unwrap(),
        transport: Transport::Udp,
        now: NOW,
    };
    let other = |_p| Some(0usize);
    let answer = match owner.respond(&oreq, &f.auth, &f.engine, Some(&other)) {
        Outcome::Reply(rep) => {
            let g = rep.gtm.unwrap();
            assert_eq!(g.ecs.unwrap().to_string(), "198.51.100.0/24");
            // The owner learns who asked (its observer measures that resolver).
            assert_eq!(g.proxied_for, Some((client, false)));
            rep.bytes.to_vec()
        }
        o => panic!("{o:?}"),
    };
    let relayed = r.relay(&bytes, &answer, Transport::Udp).unwrap();
    let m = Message::from_vec(relayed).unwrap();
    assert_eq!(m.id, 4242);
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.shop.udn.example.");
    assert_eq!(m.answers.len(), 1);
    assert!(m.edns.is_none(), "the client sent no EDNS");
    // A mismatched answer is not relayed.
    let other_q = query("static.udn.example.", RecordType::A);
    let other_ans = ask(&f, &other_q).to_vec().unwrap();
    assert!(r.relay(&bytes, &other_ans, Transport::Udp).is_none());
    // A client's own ECS is forwarded as such, marked as the resolver's own.
    let eq = with_edns(
        query("www.shop.udn.example.", RecordType::A),
        1232,
        Some("203.0.113.0/24"),
    )
    .to_vec()
    .unwrap();
    let ereq = Request { bytes: &eq, ..req };
    let efwd = match r.respond(&ereq, &f.auth, &f.engine, Some(&shard)) {
        Outcome::Forward { query, .. } => query.to_vec(),
        o => panic!("{o:?}"),
    };
    let efm = Message::from_vec(&efwd).unwrap();
    let Some(EdnsOption::Unknown(_, marker)) = efm
        .edns
        .as_ref()
        .unwrap()
        .option(EdnsCode::Unknown(PROXIED_OPTION))
    else {
        panic!("proxied marker")
    };
    assert_eq!(
        udn_dns::responder::parse_proxied_payload(marker),
        Some((client, true))
    );
    // Static names are never forwarded.
    let sq = query("static.udn.example.", RecordType::A)
        .to_vec()
        .unwrap();
    let sreq = Request { bytes: &sq, ..req };
    assert!(matches!(
        r.respond(&sreq, &f.auth, &f.engine, Some(&shard)),
        Outcome::Reply(_)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let f = fixture();
        for t in [Transport::Udp, Transport::Tcp] {
            if let Some(m) = ask_bytes(&f, &bytes, t) {
                prop_assert!(m.metadata.message_type == hickory_proto::op::MessageType::Response);
            }
        }
    }

    #[test]
    fn mutated_queries_never_panic(pos in 0usize..64, val in any::<u8>(), len in 12usize..80,
                                   name in "[a-zA-Z]{1,10}", t in 0u16..300) {
        let f = fixture();
        let q = with_edns(query(&format!("{name}.udn.example."), RecordType::from(t)), 1232,
                          Some("192.0.2.0/24"));
        let mut bytes = q.to_vec().unwrap();
        if pos < bytes.len() { bytes[pos] = val; }
        bytes.truncate(len.max(12));
        let _ = ask_bytes(&f, &bytes, Transport::Udp);
    }

    #[test]
    fn udp_answers_fit_the_client_size(size in 0u16..2000, name in "(big|static|nope|alias|www\\.shop)") {
        let f = fixture();
        let q = with_edns(query(&format!("{name}.udn.example."), RecordType::TXT), size, None);
        let mut r = Responder::new();
        let bytes = q.to_vec().unwrap();
        let req = Request { bytes: &bytes, client: "192.0.2.1".parse().unwrap(), transport: Transport::Udp, now: NOW };
        if let Outcome::Reply(rep) = r.respond(&req, &f.auth, &f.engine, None) {
            prop_assert!(rep.bytes.len() <= size.clamp(512, 1232) as usize);
        }
    }
}

#[test]
fn cached_answers_match_fresh_ones_and_die_with_their_authority() {
    let f = fixture();
    let mut warm = Responder::new();
    for (name, t) in [
        ("static.udn.example.", RecordType::A),
        ("nope.udn.example.", RecordType::A),
        ("big.udn.example.", RecordType::TXT),
        ("example.com.", RecordType::A),
    ] {
        for id in [1u16, 2, 3] {
            let mut q = query(name, t);
            q.metadata.id = id;
            let bytes = q.to_vec().unwrap();
            let req = Request {
                bytes: &bytes,
                client: "192.0.2.1".parse().unwrap(),
                transport: Transport::Udp,
                now: NOW,
            };
            let Outcome::Reply(w) = warm.respond(&req, &f.auth, &f.engine, None) else {
                panic!()
            };
            let w = w.bytes.to_vec();
            let mut cold = Responder::new();
            let Outcome::Reply(c) = cold.respond(&req, &f.auth, &f.engine, None) else {
                panic!()
            };
            assert_eq!(w, c.bytes, "{name} id {id}");
            assert_eq!(u16::from_be_bytes([w[0], w[1]]), id);
        }
    }
    // GTM answers are never cached: they follow the engine at once (tested above), and
    // a new authority drops the cache.
    let other = Authority::from_zone_file(&ZONE.replace("192.0.2.10", "192.0.2.11"), None).unwrap();
    let bytes = query("static.udn.example.", RecordType::A)
        .to_vec()
        .unwrap();
    let req = Request {
        bytes: &bytes,
        client: "192.0.2.1".parse().unwrap(),
        transport: Transport::Udp,
        now: NOW,
    };
    let Outcome::Reply(r) = warm.respond(&req, &other, &f.engine, None) else {
        panic!()
    };
    let m = Message::from_vec(r.bytes).unwrap();
    assert_eq!(m.answers[0].data, RData::A("192.0.2.11".parse().unwrap()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The fast path (plain GTM A/AAAA queries) answers exactly what the general path
    /// answers, for every query shape around it.
    #[test]
    fn fast_path_matches_the_general_path(
        name in "(www|WWW|wWw)\\.(shop|ShOp)\\.udn\\.example\\.|cdn\\.shop\\.udn\\.example\\.|static\\.udn\\.example\\.",
        aaaa in any::<bool>(),
        edns in any::<bool>(),
        size in 0u16..3000,
        ecs in proptest::option::of((any::<[u8; 4]>(), 0u8..=32)),
        ecs6 in proptest::option::of((any::<[u8; 16]>(), 0u8..=128)),
        id in any::<u16>(),
        rd in any::<bool>(),
        tcp in any::<bool>(),
        mutate in proptest::option::of((0usize..80, any::<u8>())),
    ) {
        let f = fixture();
        let t = if aaaa { RecordType::AAAA } else { RecordType::A };
        let mut q = query(&name, t);
        q.metadata.id = id;
        q.metadata.recursion_desired = rd;
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            if let Some((a, l)) = ecs {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    IpAddr::from(a), l, 0)));
            } else if let Some((a, l)) = ecs6 {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    IpAddr::from(a), l, 0)));
            }
            q.edns = Some(e);
        }
        let mut bytes = q.to_vec().unwrap();
        if let Some((pos, v)) = mutate && pos < bytes.len() {
            bytes[pos] = v;
        }
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        let req = Request { bytes: &bytes, client: "198.51.100.7".parse().unwrap(), transport, now: NOW };
        let mut a = Responder::new();
        let mut b = Responder::new();
        let fast = match a.respond(&req, &f.auth, &f.engine, None) {
            Outcome::Reply(r) => Some((r.bytes.to_vec(), r.gtm)),
            _ => None,
        };
        let general = match b.respond_general(&req, &f.auth, &f.engine, None) {
            Outcome::Reply(r) => Some((r.bytes.to_vec(), r.gtm)),
            _ => None,
        };
        match (fast, general) {
            (Some((fb, fg)), Some((gb, gg))) => {
                prop_assert_eq!(fg, gg);
                let fm = Message::from_vec(&fb);
                let gm = Message::from_vec(&gb);
                match (fm, gm) {
                    (Ok(fm), Ok(gm)) => {
                        prop_assert_eq!(fm.metadata, gm.metadata);
                        prop_assert_eq!(&fm.queries, &gm.queries);
                        prop_assert_eq!(&fm.answers, &gm.answers);
                        prop_assert_eq!(&fm.authorities, &gm.authorities);
                        prop_assert_eq!(&fm.edns, &gm.edns);
                        // Owner names keep the question's case in both.
                        for (x, y) in fm.answers.iter().zip(&gm.answers) {
                            prop_assert_eq!(x.name.to_ascii(), y.name.to_ascii());
                        }
                    }
                    (fm, gm) => prop_assert_eq!(fb, gb, "{:?} {:?}", fm.is_ok(), gm.is_ok()),
                }
            }
            (x, y) => prop_assert_eq!(x.is_some(), y.is_some()),
        }
    }
}

/// The answer cache holds no error answer, and never more bytes than its budget however
/// many distinct queries arrive (each with its own EDNS padding).
#[test]
fn answer_cache_is_bounded_in_bytes_and_holds_no_errors() {
    let f = fixture();
    let budget = 64 << 10;
    let mut r = Responder::with_cache_bytes(budget);
    let send = |r: &mut Responder, bytes: &[u8]| -> Option<ResponseCode> {
        let req = Request {
            bytes,
            client: "198.51.100.7".parse().unwrap(),
            transport: Transport::Udp,
            now: NOW,
        };
        match r.respond(&req, &f.auth, &f.engine, None) {
            Outcome::Reply(rep) => Some(rep.rcode),
            _ => None,
        }
    };
    // Garbage (FORMERR), a name of no zone (REFUSED), another class (REFUSED), an
    // opcode we do not serve (NOTIMP), EDNS version 1 (BADVERS): none is cached.
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xc0, 0xff, 0xff, 0x3f, 0x00]);
    let refused = query("www.elsewhere.example.", RecordType::A)
        .to_vec()
        .unwrap();
    let mut chaos = query("static.udn.example.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let mut notify = query("static.udn.example.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    let mut v1 = with_edns(query("static.udn.example.", RecordType::A), 1232, None);
    v1.edns.as_mut().unwrap().set_version(1);
    for (q, want) in [
        (garbage, ResponseCode::FormErr),
        (refused, ResponseCode::Refused),
        (chaos.to_vec().unwrap(), ResponseCode::Refused),
        (notify.to_vec().unwrap(), ResponseCode::NotImp),
        (v1.to_vec().unwrap(), ResponseCode::BADVERS),
    ] {
        for _ in 0..3 {
            assert_eq!(send(&mut r, &q), Some(want));
        }
        assert_eq!(r.cache_bytes(), 0, "{want:?} was cached");
    }
    // A static answer is cached ...
    let ok = query("static.udn.example.", RecordType::A)
        .to_vec()
        .unwrap();
    assert_eq!(send(&mut r, &ok), Some(ResponseCode::NoError));
    assert!(r.cache_bytes() > 0);
    // ... and 5,000 distinct padded queries keep the cache within its budget.
    for i in 0..5_000u32 {
        let mut m = with_edns(query("static.udn.example.", RecordType::A), 1232, None);
        m.edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::Unknown(12, vec![0; (i % 700) as usize]));
        m.metadata.id = i as u16;
        assert_eq!(
            send(&mut r, &m.to_vec().unwrap()),
            Some(ResponseCode::NoError)
        );
        assert!(r.cache_bytes() <= budget, "{} > {budget}", r.cache_bytes());
    }
    // No budget: no cache.
    let mut none = Responder::with_cache_bytes(0);
    assert_eq!(send(&mut none, &ok), Some(ResponseCode::NoError));
    assert_eq!(none.cache_bytes(), 0);
}
