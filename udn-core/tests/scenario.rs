//! A deterministic scenario on a virtual clock: the origin site a client is routed to
//! fails its checks and comes back; the decisions follow with the configured
//! hysteresis (down after 3 consecutive failures, up after 2 consecutive successes).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use udn_core::config::SAMPLE;
use udn_core::{
    ClientPrefix, Config, Engine, Family, LatencySample, Metric, Query, Reason, ServiceSample,
    Timestamp,
};

struct World {
    engine: Engine,
    now: Timestamp,
    client: IpAddr,
}

impl World {
    fn new() -> World {
        let net = Arc::new(Config::from_toml(SAMPLE).unwrap().compile().unwrap());
        let mut engine = Engine::new(net.clone());
        let client: IpAddr = "198.51.100.10".parse().unwrap();
        let now = Timestamp::from_secs(1_700_000_000);
        // The client is near nyc (the east site's POP), far from fra (the west's).
        for (pop, ms) in [("nyc", 10), ("fra", 90), ("sin", 200)] {
            engine
                .apply(&Metric::Latency {
                    client: udn_core::Cidr::new(client, 24),
                    pop: pop.into(),
                    sample: LatencySample {
                        rtt_us: ms * 1000,
                        at: now,
                    },
                })
                .unwrap();
        }
        World {
            engine,
            now,
            client,
        }
    }

    /// One probe round (interval 2 s): both sites checked, east with `east_ok`.
    fn round(&mut self, east_ok: bool) {
        self.now = self.now.plus(Duration::from_secs(2));
        for (server, ok) in [("shop-east-1", east_ok), ("shop-west-1", true)] {
            self.engine
                .apply(&Metric::Service {
                    server: server.into(),
                    service: "http".into(),
                    sample: ServiceSample {
                        ok,
                        response_ms: 20.0,
                        at: self.now,
                    },
                })
                .unwrap();
        }
    }

    fn query(&self, seed: u64) -> Query {
        let net = self.engine.network();
        Query {
            host: net.host_id("www.shop.udn.example").unwrap(),
            client: self.client,
            ecs: None,
            family: Family::V4,
            seed,
        }
    }

    /// The answer without recording persistence.
    fn answer(&self) -> String {
        let d = self.engine.decide(&self.query(0), self.now);
        d.addrs.as_slice()[0].to_string()
    }
}

const EAST: &str = "127.0.0.21";
const WEST: &str = "127.0.0.22";
const STANDBY: &str = "127.0.0.29";

#[test]
fn failover_and_recovery_follow_the_hysteresis() {
    let mut w = World::new();
    w.round(true);
    assert_eq!(w.answer(), EAST, "nearest healthy site");

    // Two failures: still up (down_after = 3), no flapping on a lost check.
    w.round(false);
    assert_eq!(w.answer(), EAST);
    w.round(false);
    assert_eq!(w.answer(), EAST);
    // A success in between resets the count.
    w.round(true);
    w.round(false);
    w.round(false);
    assert_eq!(w.answer(), EAST);
    // The third consecutive failure takes it down.
    w.round(false);
    assert_eq!(w.answer(), WEST);

    // One success is not enough to come back (up_after = 2).
    w.round(true);
    assert_eq!(w.answer(), WEST);
    w.round(true);
    assert_eq!(w.answer(), EAST);
}

#[test]
fn standby_only_when_every_published_site_is_down_and_stale_is_not_up() {
    let mut w = World::new();
    w.round(true);
    // Both sites fail three times.
    for _ in 0..3 {
        w.now = w.now.plus(Duration::from_secs(2));
        for server in ["shop-east-1", "shop-west-1"] {
            w.engine
                .apply(&Metric::Service {
                    server: server.into(),
                    service: "http".into(),
                    sample: ServiceSample {
                        ok: false,
                        response_ms: 0.0,
                        at: w.now,
                    },
                })
                .unwrap();
        }
    }
    let d = w.engine.decide(&w.query(0), w.now);
    assert_eq!(d.reason, Reason::Standby);
    assert_eq!(d.addrs.as_slice()[0].to_string(), STANDBY);

    // West recovers; then the probes go silent: the last known state holds for the
    // grace (30 s) plus the silent hold (120 s by default), then stale, not up.
    w.round(false);
    w.round(false);
    assert_eq!(w.answer(), WEST);
    w.now = w.now.plus(Duration::from_secs(31));
    assert_eq!(
        w.answer(),
        WEST,
        "every probe silent: the last known state holds"
    );
    w.now = w.now.plus(Duration::from_secs(120));
    let d = w.engine.decide(&w.query(0), w.now);
    assert_eq!(d.reason, Reason::Standby, "stale metrics never count as up");
}

#[test]
fn persistence_keeps_a_client_on_the_failover_site_until_it_expires() {
    let mut w = World::new();
    w.round(true);
    for _ in 0..3 {
        w.round(false);
    }
    let q = w.query(0);
    let d = w.engine.decide_and_record(&q, w.now);
    assert_eq!(d.addrs.as_slice()[0].to_string(), WEST);
    let stuck_at = w.now;
    // East comes back, but the client stays on west (persistence 300 s)...
    w.round(true);
    w.round(true);
    let d = w.engine.decide_and_record(&q, w.now);
    assert_eq!(d.reason, Reason::Sticky);
    assert_eq!(d.addrs.as_slice()[0].to_string(), WEST);
    // ...until the entry expires, then latency decides again.
    w.now = stuck_at.plus(Duration::from_secs(300));
    w.round(true);
    let d = w.engine.decide_and_record(&q, w.now);
    assert_eq!(d.addrs.as_slice()[0].to_string(), EAST);
    assert_eq!(d.reason, Reason::Latency);
    assert_eq!(
        w.engine
            .state()
            .sticky(ClientPrefix::of(w.client), q.host, w.now)
            .map(|s| w.engine.network().servers[s.index()].name.clone()),
        Some("shop-east-1".into())
    );
}

#[test]
fn reload_keeps_health_by_name() {
    let mut w = World::new();
    w.round(true);
    for _ in 0..3 {
        w.round(false);
    }
    assert_eq!(w.answer(), WEST);
    let fresh = Arc::new(Config::from_toml(SAMPLE).unwrap().compile().unwrap());
    w.engine.replace_network(fresh);
    assert_eq!(w.answer(), WEST, "east is still down after the reload");
}
