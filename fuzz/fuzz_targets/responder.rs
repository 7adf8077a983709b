//! Fuzzes the pure responder: arbitrary bytes as a query, over UDP and TCP, against the
//! sample network with a zone file. It must never panic, and every UDP answer must fit
//! the advertised payload size. Run: `cargo +nightly fuzz run responder` in `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use udn_core::{Config, Engine, Timestamp, config::SAMPLE};
use udn_dns::{Authority, MAX_UDP_PAYLOAD, Outcome, Request, Responder, Transport};

const ZONE: &str = "$ORIGIN udn.example.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n\
@ NS ns1\nns1 A 127.0.0.53\nstatic A 192.0.2.10\nalias CNAME static\n*.wild TXT \"w\"\n\
sub NS ns.sub\nns.sub A 192.0.2.77\n";

fn fixture() -> &'static (Authority, Engine) {
    static F: OnceLock<(Authority, Engine)> = OnceLock::new();
    F.get_or_init(|| {
        let mut cfg = Config::from_toml(SAMPLE).expect("sample parses");
        cfg.dns.zones[0].file = Some("z".into());
        let net = Arc::new(cfg.compile().expect("sample compiles"));
        let files = HashMap::from([("z".to_string(), ZONE.to_string())]);
        let auth = Authority::new(net.clone(), &files).expect("zone loads");
        (auth, Engine::new(net))
    })
}

fuzz_target!(|data: &[u8]| {
    let (auth, engine) = fixture();
    let mut r = Responder::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        let req = Request {
            bytes: data,
            client: "198.51.100.7".parse().expect("literal"),
            transport,
            now: Timestamp::from_secs(1_700_000_000),
        };
        let shard = |_p| Some(1usize);
        match r.respond(&req, auth, engine, Some(&shard)) {
            Outcome::Reply(rep) if transport == Transport::Udp => {
                assert!(rep.bytes.len() <= MAX_UDP_PAYLOAD as usize);
            }
            Outcome::Forward { query, .. } => {
                let q = query.to_vec();
                let _ = r.relay(data, &q, transport);
            }
            _ => {}
        }
    }
});
