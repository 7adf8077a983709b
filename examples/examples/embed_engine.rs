//! Embedding the UDN decision engine in your own program: load a network, feed it
//! health and latency the way your probes see them, and ask it where to send clients.
//!
//! Run: `cargo run -p udn-examples --example embed_engine`

use std::sync::Arc;
use udn_core::{Config, Engine, Family, LatencySample, Metric, Query, ServiceSample, Timestamp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = Arc::new(Config::from_toml(udn_core::config::SAMPLE)?.compile()?);
    let mut engine = Engine::new(net.clone());
    let now = Timestamp::from_secs(1_700_000_000);

    // Your probes measured two client networks from each POP.
    for (client, rtts) in [
        ("198.51.100.0/24", [("fra", 12), ("nyc", 85), ("sin", 160)]),
        ("203.0.113.0/24", [("fra", 140), ("nyc", 20), ("sin", 190)]),
    ] {
        for (pop, ms) in rtts {
            engine.apply(&Metric::Latency {
                client: client.parse()?,
                pop: pop.into(),
                sample: LatencySample {
                    rtt_us: ms * 1000,
                    at: now,
                },
            })?;
        }
    }

    let ask = |engine: &mut Engine, client: &str| -> Result<String, Box<dyn std::error::Error>> {
        let q = Query {
            host: net
                .host_id("www.shop.udn.example")
                .ok_or("not configured")?,
            client: client.parse()?,
            ecs: None,
            family: Family::V4,
            seed: 1,
        };
        let d = engine.decide_and_record(&q, now);
        Ok(format!("{:?} ({})", d.addrs.as_slice(), d.reason.as_str()))
    };
    println!("European client -> {}", ask(&mut engine, "198.51.100.20")?);
    println!("American client -> {}", ask(&mut engine, "203.0.113.20")?);

    // The west (European) site fails three checks in a row: it is down.
    for k in 0..3 {
        engine.apply(&Metric::Service {
            server: "shop-west-1".into(),
            service: "http".into(),
            sample: ServiceSample {
                ok: false,
                response_ms: 0.0,
                at: Timestamp::from_secs(1_699_999_990 + k),
            },
        })?;
    }
    // European clients go east now: their persistence entry points at a down site, and
    // persistence never holds a client on a target that is down.
    println!(
        "Another European client after the west site failed -> {}",
        ask(&mut engine, "198.51.100.99")?
    );
    Ok(())
}
