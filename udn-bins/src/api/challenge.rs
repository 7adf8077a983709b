//! The DNS TXT challenge that proves a customer controls a new hostname: the API hands
//! out a random token, the customer publishes it as the TXT record
//! `_udn-challenge.<hostname>`, and the control plane asks a resolver (a real DNS query
//! over UDP) before the hostname goes live.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// How long one challenge query waits for its answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A fresh challenge token: `udn-verify-<issue time, hex seconds>-<32 random hex>`, so
/// its age is known ([`issued_at`]) and a pending hostname can expire.
pub(crate) fn new_token() -> String {
    format!(
        "udn-verify-{:x}-{}",
        super::now().as_millis() / 1000,
        super::backend::random_hex(16)
    )
}

/// When a token from [`new_token`] was issued (seconds since the epoch); `None` for a
/// token without a time (issued before tokens carried one).
pub(crate) fn issued_at(token: &str) -> Option<u64> {
    let (secs, rest) = token.strip_prefix("udn-verify-")?.split_once('-')?;
    (!rest.is_empty())
        .then(|| u64::from_str_radix(secs, 16).ok())
        .flatten()
}

/// Removes the GTM and CDN hostnames whose challenge was issued `ttl_secs` or more
/// before `now_secs` (still pending); returns how many.
pub(crate) fn drop_expired(cfg: &mut udn_core::Config, ttl_secs: u64, now_secs: u64) -> usize {
    let expired = |c: &Option<String>| {
        c.as_deref()
            .and_then(issued_at)
            .is_some_and(|t| now_secs.saturating_sub(t) >= ttl_secs)
    };
    let before = cfg.gtm.len() + cfg.cdn.len();
    cfg.gtm.retain(|g| !expired(&g.challenge));
    cfg.cdn.retain(|c| !expired(&c.challenge));
    before - cfg.gtm.len() - cfg.cdn.len()
}

/// Whether a hostname is live or waits for its TXT challenge, and the record to publish.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Verification {
    /// `pending` or `verified`.
    pub status: String,
    /// The TXT record the owner publishes (pending hostnames only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<TxtRecord>,
}

/// A TXT record to publish.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TxtRecord {
    /// Its owner name, `_udn-challenge.<hostname>`.
    pub name: String,
    /// Always `TXT`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The token.
    pub value: String,
}

/// The verification state of `hostname` with challenge `challenge`.
pub fn verification(hostname: &str, challenge: Option<&str>) -> Verification {
    match challenge {
        None => Verification {
            status: "verified".into(),
            record: None,
        },
        Some(t) => Verification {
            status: "pending".into(),
            record: Some(TxtRecord {
                name: udn_core::config::challenge_name(hostname),
                kind: "TXT".into(),
                value: t.to_owned(),
            }),
        },
    }
}

/// The resolver challenge queries go to: `configured`, else the first `nameserver` of
/// `/etc/resolv.conf` (port 53).
pub(crate) fn resolver(configured: Option<SocketAddr>) -> Result<SocketAddr, String> {
    if let Some(a) = configured {
        return Ok(a);
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("no --challenge-resolver and /etc/resolv.conf: {e}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| "no nameserver in /etc/resolv.conf".to_owned())
}

/// The TXT strings of `name` at `resolver` (empty when the name has none).
pub(crate) async fn txt_values(resolver: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let qname = Name::from_str(&format!("{name}.")).map_err(|e| format!("{name}: {e}"))?;
    let bind: SocketAddr = if resolver.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("binding a UDP socket: {e}"))?;
    let id = u16::from_str_radix(&super::backend::random_hex(2), 16).unwrap_or(1);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(qname, RecordType::TXT));
    let bytes = m.to_vec().map_err(|e| format!("encoding the query: {e}"))?;
    sock.send_to(&bytes, resolver)
        .await
        .map_err(|e| format!("sending to {resolver}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let answer = tokio::time::timeout(TIMEOUT, async {
        loop {
            let (n, from) = sock.recv_from(&mut buf).await?;
            if from != resolver {
                continue;
            }
            match Message::from_vec(&buf[..n]) {
                Ok(r) if r.metadata.id == id => return Ok(r),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| format!("no answer from {resolver} within {TIMEOUT:?}"))?
    .map_err(|e: std::io::Error| format!("receiving from {resolver}: {e}"))?;
    Ok(answer
        .answers
        .iter()
        .filter_map(|rr| match &rr.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}
