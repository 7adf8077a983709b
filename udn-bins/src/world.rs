//! A world in miniature, for the demo and the tests: simulated client resolvers in
//! different regions, each on its own loopback address, whose round-trip time to each
//! POP differs for real.
//!
//! The kernel here has no netem, so delays are injected in user space: a resolver
//! answers a DNS query (with REFUSED: it is no open resolver) only after the delay
//! configured for the *source address* of the query, which is the address of the POP's
//! probe. A probe's DNS-RTT latency method therefore measures the configured delay.

use anyhow::Context as _;
use hickory_proto::op::{Message, ResponseCode};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

/// One simulated resolver: where it listens and how far it is from each prober.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// Region name, for people.
    pub region: String,
    /// Address it listens on (UDP).
    pub listen: SocketAddr,
    /// Delay before answering a query from each source address.
    pub delays: HashMap<IpAddr, Duration>,
    /// Delay for any other source.
    pub default_delay: Duration,
}

/// The most replies a resolver holds back at once; queries beyond it are dropped, as a
/// congested path would.
pub const MAX_PENDING: usize = 4096;

/// A running resolver.
pub struct Handle {
    /// The bound address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops it.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The REFUSED reply to `query`, or `None` if it is not a DNS query.
pub fn refused_reply(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != hickory_proto::op::MessageType::Query {
        return None;
    }
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::Refused);
    r.queries = q.queries;
    r.to_vec().ok()
}

/// Starts a simulated resolver.
pub async fn start(res: Resolver) -> anyhow::Result<Handle> {
    let sock = Arc::new(UdpSocket::bind(res.listen).await.with_context(|| {
        format!(
            "binding simulated resolver {} to {}",
            res.region, res.listen
        )
    })?);
    let addr = sock.local_addr()?;
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let res = Arc::new(res);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, src) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "simulated resolver recv");
                    continue;
                }
            };
            let Some(reply) = refused_reply(&buf[..n]) else {
                continue;
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                continue;
            };
            let delay = res
                .delays
                .get(&src.ip())
                .copied()
                .unwrap_or(res.default_delay);
            let sock = sock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = sock.send_to(&reply, src).await;
                drop(permit);
            });
        }
    });
    Ok(Handle { addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;

    fn query(id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.queries.push(Query::query(
            Name::from_str("example.com.").unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    }

    #[test]
    fn refuses_queries_and_ignores_garbage() {
        let r = Message::from_vec(&refused_reply(&query(7)).unwrap()).unwrap();
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert_eq!(r.queries.len(), 1);
        assert!(refused_reply(b"\x01\x02garbage").is_none());
        assert!(refused_reply(&[]).is_none());
    }

    #[tokio::test]
    async fn answers_each_source_after_its_own_delay() {
        let near: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "127.0.0.2".parse().unwrap();
        let h = start(Resolver {
            region: "test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            delays: HashMap::from([
                (near, Duration::from_millis(1)),
                (far, Duration::from_millis(120)),
            ]),
            default_delay: Duration::ZERO,
        })
        .await
        .unwrap();
        let mut rtts = Vec::new();
        for src in [near, far] {
            let s = UdpSocket::bind(SocketAddr::new(src, 0)).await.unwrap();
            let t = std::time::Instant::now();
            s.send_to(&query(1), h.addr).await.unwrap();
            let mut buf = [0u8; 512];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            rtts.push(t.elapsed());
            let r = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        }
        // The configured delay is a lower bound on the measured RTT.
        assert!(rtts[1] >= Duration::from_millis(120), "{rtts:?}");
    }
}
