//! The latency methods on real sockets: TCP connect RTT, DNS query RTT and ICMP echo.
//! Each gives up after its timeout with [`Outcome::NoResult`]; a method the system does
//! not permit reports [`Outcome::Unavailable`] and never panics.

use crate::latency::{LatencyMethod, MeasureFuture, MethodInfo, Outcome};
use crate::wire;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, UdpSocket};

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

fn next_id() -> u16 {
    // Spread ids over processes too (several probes on one host share raw ICMP).
    let pid = std::process::id() as u16;
    NEXT_ID.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919) ^ pid
}

fn unspecified(target: IpAddr) -> IpAddr {
    match target {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// TCP connect RTT: the time to a SYN-ACK, or to a RST (a refused connection still
/// answers, so it still times the path).
#[derive(Debug, Clone)]
pub struct TcpConnect {
    /// Port connected to (53 for resolvers).
    pub port: u16,
    /// Local address to connect from (the POP's address), if any.
    pub source: Option<IpAddr>,
    /// Time limit.
    pub timeout: Duration,
}

impl LatencyMethod for TcpConnect {
    fn info(&self) -> MethodInfo {
        MethodInfo::new("tcp-connect", 30, 0.8)
    }

    fn measure(&self, target: IpAddr) -> MeasureFuture<'_> {
        Box::pin(async move {
            let sock = match target {
                IpAddr::V4(_) => TcpSocket::new_v4(),
                IpAddr::V6(_) => TcpSocket::new_v6(),
            };
            let sock = match sock {
                Ok(s) => s,
                Err(e) => return Outcome::Unavailable(format!("tcp socket: {e}")),
            };
            if let Some(src) = self.source
                && let Err(e) = sock.bind(SocketAddr::new(src, 0))
            {
                return Outcome::Unavailable(format!("bind {src}: {e}"));
            }
            let start = Instant::now();
            match tokio::time::timeout(
                self.timeout,
                sock.connect(SocketAddr::new(target, self.port)),
            )
            .await
            {
                Ok(Ok(_stream)) => Outcome::Rtt(start.elapsed()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    Outcome::Rtt(start.elapsed())
                }
                Ok(Err(e)) => Outcome::NoResult(format!("connect: {e}")),
                Err(_) => Outcome::NoResult("timeout".into()),
            }
        })
    }
}

/// DNS query RTT: one query over our own UDP socket; any reply with our id times the
/// path (REFUSED included).
#[derive(Debug, Clone)]
pub struct DnsQuery {
    /// Port queried (53 for resolvers).
    pub port: u16,
    /// Name asked for.
    pub qname: String,
    /// Local address to send from, if any.
    pub source: Option<IpAddr>,
    /// Time limit.
    pub timeout: Duration,
}

impl LatencyMethod for DnsQuery {
    fn info(&self) -> MethodInfo {
        MethodInfo::new("dns", 10, 0.9)
    }

    fn measure(&self, target: IpAddr) -> MeasureFuture<'_> {
        Box::pin(async move {
            let id = next_id();
            let query = match wire::dns_query(id, &self.qname) {
                Ok(q) => q,
                Err(e) => return Outcome::Unavailable(e.to_string()),
            };
            let local = SocketAddr::new(self.source.unwrap_or_else(|| unspecified(target)), 0);
            let sock = match UdpSocket::bind(local).await {
                Ok(s) => s,
                Err(e) => return Outcome::Unavailable(format!("udp bind {local}: {e}")),
            };
            let dest = SocketAddr::new(target, self.port);
            let start = Instant::now();
            if let Err(e) = sock.send_to(&query, dest).await {
                return Outcome::NoResult(format!("send: {e}"));
            }
            let wait = async {
                let mut buf = [0u8; 1500];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) if from == dest => {
                            if wire::dns_reply_code(&buf[..n], id).is_some() {
                                return Ok(start.elapsed());
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
            };
            match tokio::time::timeout(self.timeout, wait).await {
                Ok(Ok(rtt)) => Outcome::Rtt(rtt),
                Ok(Err(e)) => Outcome::NoResult(format!("recv: {e}")),
                Err(_) => Outcome::NoResult("timeout".into()),
            }
        })
    }
}

/// ICMP echo: an unprivileged datagram socket where `net.ipv4.ping_group_range`
/// permits, else a raw socket (root), else unavailable. IPv4 only.
#[derive(Debug, Clone)]
pub struct IcmpEcho {
    /// Time limit.
    pub timeout: Duration,
}

/// Which kind of ICMP socket this system gives us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcmpAccess {
    /// An unprivileged datagram socket.
    Datagram,
    /// A raw socket (root or CAP_NET_RAW).
    Raw,
    /// Neither: why.
    Unavailable(String),
}

fn icmp_socket() -> Result<(socket2::Socket, bool), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(s) => Ok((s, false)),
        Err(dgram) => match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(s) => Ok((s, true)),
            Err(raw) => Err(format!(
                "ICMP not permitted (datagram socket: {dgram}; raw socket: {raw}); see net.ipv4.ping_group_range"
            )),
        },
    }
}

/// Probes what ICMP access this process has.
pub fn icmp_access() -> IcmpAccess {
    match icmp_socket() {
        Ok((_, false)) => IcmpAccess::Datagram,
        Ok((_, true)) => IcmpAccess::Raw,
        Err(e) => IcmpAccess::Unavailable(e),
    }
}

impl LatencyMethod for IcmpEcho {
    fn info(&self) -> MethodInfo {
        MethodInfo::new("icmp", 5, 0.95)
    }

    fn measure(&self, target: IpAddr) -> MeasureFuture<'_> {
        Box::pin(async move {
            let IpAddr::V4(_) = target else {
                return Outcome::Unavailable("ICMPv6 echo is not built".into());
            };
            let (sock, raw) = match icmp_socket() {
                Ok(s) => s,
                Err(e) => return Outcome::Unavailable(e),
            };
            if let Err(e) = sock.set_nonblocking(true) {
                return Outcome::Unavailable(format!("icmp socket: {e}"));
            }
            let std_sock: std::net::UdpSocket = sock.into();
            let sock = match UdpSocket::from_std(std_sock) {
                Ok(s) => s,
                Err(e) => return Outcome::Unavailable(format!("icmp socket: {e}")),
            };
            let id = next_id();
            let seq = next_id();
            let packet = wire::echo_request(id, seq, b"udn-probe latency");
            let dest = SocketAddr::new(target, 0);
            let start = Instant::now();
            if let Err(e) = sock.send_to(&packet, dest).await {
                return Outcome::NoResult(format!("send: {e}"));
            }
            // A datagram socket's kernel rewrites the identifier: match on sequence only.
            let want_id = raw.then_some(id);
            let wait = async {
                let mut buf = [0u8; 1500];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) if from.ip() == target => {
                            if wire::parse_echo_reply(&buf[..n], want_id) == Some(seq) {
                                return Ok(start.elapsed());
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
            };
            match tokio::time::timeout(self.timeout, wait).await {
                Ok(Ok(rtt)) => Outcome::Rtt(rtt),
                Ok(Err(e)) => Outcome::NoResult(format!("recv: {e}")),
                Err(_) => Outcome::NoResult("timeout".into()),
            }
        })
    }
}
