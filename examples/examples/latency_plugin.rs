//! An embedder plugging its own latency method into the probe's escalation policy.
//!
//! `GeoEstimate` guesses the RTT from the great-circle distance between the POP and
//! where a client network is known to be (light in fibre covers about 100 km per ms of
//! round trip). It sends nothing, so it is cheap, but it is only an estimate: the policy
//! tries it after the passive table and before anything that sends packets.
//!
//! The policy is sans-IO: this example drives it with a ten-line executor, no tokio.
//! In the agent the same trait objects go into `udn_bins::probe::ProbeOptions::methods`.
//!
//! Run with `cargo run -p udn-examples --example latency_plugin`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use udn_core::{Cidr, Timestamp};
use udn_probe::latency::{Escalation, LatencyMethod, MeasureFuture, MethodInfo, Outcome};
use udn_probe::passive::PassiveTable;

/// RTT estimated from geography.
struct GeoEstimate {
    /// Where the POP is (lat, lon in degrees).
    pop: (f64, f64),
    /// Where client networks are.
    clients: Vec<(Cidr, (f64, f64))>,
}

fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

impl LatencyMethod for GeoEstimate {
    fn info(&self) -> MethodInfo {
        // Cheaper than any packet (DNS is 10), dearer than the passive table (0).
        MethodInfo::new("geo-estimate", 1, 0.2)
    }

    fn measure(&self, target: IpAddr) -> MeasureFuture<'_> {
        let out = match self.clients.iter().find(|(c, _)| c.contains(target)) {
            Some((_, loc)) => {
                let ms = distance_km(self.pop, *loc) / 100.0 + 1.0;
                Outcome::Rtt(Duration::from_micros((ms * 1000.0) as u64))
            }
            None => Outcome::NoResult("location unknown".into()),
        };
        Box::pin(std::future::ready(out))
    }
}

/// Polls a future to completion on this thread (enough for ready futures and for any
/// future that does not need a reactor).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn main() {
    let frankfurt = (50.11, 8.68);
    let methods: Vec<Arc<dyn LatencyMethod>> = vec![
        Arc::new(GeoEstimate {
            pop: frankfurt,
            clients: vec![
                ("198.51.100.0/24".parse().unwrap(), (40.71, -74.01)), // New York
                ("203.0.113.0/24".parse().unwrap(), (1.35, 103.82)),   // Singapore
            ],
        }),
        Arc::new(PassiveTable::parse("198.51.100.0/24 85\n").unwrap()),
    ];
    let policy = std::sync::Mutex::new(Escalation::new(methods.iter().map(|m| m.info()).collect()));
    // The driver owns the clock; here a fixed one.
    let now = || Timestamp::from_secs(1_700_000_000);
    for target in ["198.51.100.7", "203.0.113.9", "192.0.2.1"] {
        let ip: IpAddr = target.parse().unwrap();
        let attempt = block_on(udn_probe::latency::measure_with(&policy, &methods, ip, now));
        match attempt.result() {
            Some(s) => println!(
                "{target}: {:.1} ms by {} (after {} method(s))",
                s.rtt.as_secs_f64() * 1000.0,
                methods[s.method].info().name,
                attempt.tried().len()
            ),
            None => println!("{target}: no method gave a result ({:?})", attempt.tried()),
        }
    }
    let policy = policy.lock().unwrap();
    for (info, st) in policy.methods().iter().zip(policy.stats()) {
        println!(
            "{:>12}: cost {:>2}, {} attempts, success rate {:.0} %, mean {:.1} ms",
            info.name,
            info.cost,
            st.attempts,
            st.success_rate() * 100.0,
            st.mean_rtt_us / 1000.0
        );
    }
}
