//! Background traffic of `udn demo --traffic`: per region, a simulated client resolves
//! the CDN hostname through the first DNS server from its region's resolver address and
//! fetches the sample page and its objects from the answered edge. Bounded: one page
//! per region every [`PERIOD`], loopback only (every address comes from the demo).

use super::{Endpoints, HTTP_PORT};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// Time between two page loads of one region.
pub const PERIOD: Duration = Duration::from_secs(2);

/// Spawns one client task per region.
pub fn spawn(ep: &Endpoints) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(dns) = ep.dns.first().and_then(|d| d.parse::<SocketAddr>().ok()) else {
        return Vec::new();
    };
    let Some(host) = ep.cdn_hostnames.first().cloned() else {
        return Vec::new();
    };
    let paths: Vec<String> = ep
        .sample_urls
        .iter()
        .filter_map(|u| {
            u.strip_prefix(&format!("http://{host}"))
                .map(str::to_string)
        })
        .collect();
    ep.regions
        .iter()
        .map(|r| {
            let (src, host, paths) = (r.resolver, host.clone(), paths.clone());
            tokio::spawn(async move { client(src, dns, host, paths).await })
        })
        .collect()
}

/// Resolves `host` (A) at `dns` from `src`; the first address answered.
pub async fn resolve(src: IpAddr, dns: SocketAddr, host: &str) -> Option<IpAddr> {
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(src, 0))
        .await
        .ok()?;
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.queries.push(Query::query(
        Name::from_str(&format!("{host}.")).ok()?,
        RecordType::A,
    ));
    sock.send_to(&m.to_vec().ok()?, dns).await.ok()?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    r.answers.iter().find_map(|rr| match &rr.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    })
}

fn rand_id() -> u16 {
    let n = crate::logging::now().as_millis();
    (n as u16) ^ ((n >> 16) as u16)
}

async fn client(src: IpAddr, dns: SocketAddr, host: String, paths: Vec<String>) {
    let Ok(http) = reqwest::Client::builder()
        .local_address(src)
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
    else {
        return;
    };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(edge) = resolve(src, dns, &host).await else {
            continue;
        };
        for p in &paths {
            let url = format!("http://{}{p}", SocketAddr::new(edge, HTTP_PORT));
            match http.get(&url).header("host", host.as_str()).send().await {
                Ok(r) => {
                    let _ = r.bytes().await;
                }
                Err(e) => tracing::debug!(%url, error = %e, "demo traffic fetch failed"),
            }
        }
    }
}
