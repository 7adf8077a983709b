//! The one way UDN's HTTP listeners accept connections (the edge's customer listeners
//! and, through `udn_bins::listener`, every admin listener): optional TLS, and the
//! limits every listener has (docs/security.md, docs/edge.md): a TLS-handshake timeout,
//! a request-header timeout (which also closes idle keep-alive connections), limits on
//! a header line and on the whole header, and caps on concurrent connections overall
//! and per client address.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits of a listener. Defaults are near nginx's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's whole header, and the longest an idle
    /// keep-alive connection is kept (hyper starts this timer again whenever a
    /// connection waits for its next request; nginx: `client_header_timeout` 60 s,
    /// `keepalive_timeout` 75 s). Default 10 s.
    pub header_timeout: Duration,
    /// Time a client has to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request header accepted in all, in bytes (nginx: 4 x 8 KiB buffers).
    /// Default 32 KiB; a larger one is refused (431, or the connection is closed).
    pub max_header_bytes: usize,
    /// Longest request line (414 beyond it) or header field line (431), in bytes
    /// (nginx: one 8 KiB buffer). Default 8 KiB.
    pub max_line_bytes: usize,
    /// Concurrent connections at most; more are closed at once. Default 1,024.
    pub max_connections: usize,
    /// Concurrent connections from one client address at most. Default 64.
    pub max_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_line_bytes: 8 * 1024,
            max_connections: 1024,
            max_per_client: 64,
        }
    }
}

/// A connection, after its TLS handshake.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether it came over TLS.
    pub over_tls: bool,
    /// The client certificate it presented (verified by the TLS configuration).
    pub peer_certificate: Option<rustls_pki_types::CertificateDer<'static>>,
}

/// What a listener serves: a service per connection.
pub trait Accept: Send + Sync + 'static {
    /// The service of one connection.
    type Service: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Self::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + Sync
        + 'static;
    /// Its response body.
    type Body: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
    /// The service for `conn`, or `None` to close it (the implementation logs why).
    fn accept(&self, conn: &Conn) -> Option<Self::Service>;
    /// A connection refused by a limit, before any byte was read.
    fn refused(&self, addr: SocketAddr, reason: &str) {
        tracing::warn!("refused {addr}: {reason}");
    }
}

/// Counts connections overall and per address; a slot is given back when dropped.
#[derive(Default)]
struct Slots {
    total: usize,
    per: HashMap<IpAddr, usize>,
}

struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slots.lock() {
            s.total = s.total.saturating_sub(1);
            if let Some(n) = s.per.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    s.per.remove(&self.ip);
                }
            }
        }
    }
}

fn take_slot(slots: &Arc<Mutex<Slots>>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
    let mut s = slots.lock().ok()?;
    let mine = s.per.get(&ip).copied().unwrap_or(0);
    if s.total >= limits.max_connections || mine >= limits.max_per_client {
        return None;
    }
    s.total += 1;
    *s.per.entry(ip).or_insert(0) += 1;
    Some(Slot {
        slots: slots.clone(),
        ip,
    })
}

/// Serves `accept` on `listener` (over TLS with `tls`) until the returned task is
/// aborted (open connections end with it).
pub fn serve<A: Accept>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    accept: A,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let accept = Arc::new(accept);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let Some(slot) = take_slot(&slots, peer.ip(), &limits) else {
                accept.refused(peer, "connection limit reached");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let accept = accept.clone();
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let _slot = slot;
                let mut conn = Conn {
                    addr: peer,
                    over_tls: acceptor.is_some(),
                    peer_certificate: None,
                };
                match acceptor {
                    None => {
                        if let Some(svc) = accept.accept(&conn) {
                            serve_conn(TokioIo::new(tcp), peer, svc, limits).await;
                        }
                    }
                    Some(acceptor) => {
                        let stream = match tokio::time::timeout(
                            limits.handshake_timeout,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake with {peer}: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake with {peer}: timed out");
                                return;
                            }
                        };
                        conn.peer_certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.clone().into_owned());
                        if let Some(svc) = accept.accept(&conn) {
                            serve_conn(TokioIo::new(stream), peer, svc, limits).await;
                        }
                    }
                }
            });
        }
    })
}

/// 414 or 431 when the request line or a header field line is longer than `max`.
fn line_too_long<B>(req: &Request<B>, max: usize) -> Option<StatusCode> {
    // "GET " + target + " HTTP/1.1"
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if req.method().as_str().len() + target + 10 > max {
        return Some(StatusCode::URI_TOO_LONG);
    }
    req.headers()
        .iter()
        .any(|(n, v)| n.as_str().len() + 2 + v.len() > max)
        .then_some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
}

async fn serve_conn<I, S, B>(io: TokioIo<I>, addr: SocketAddr, svc: S, limits: Limits)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + Sync
        + 'static,
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static,
{
    let svc = Arc::new(svc);
    let max_line = limits.max_line_bytes;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let svc = svc.clone();
        async move {
            if let Some(status) = line_too_long(&req, max_line) {
                tracing::info!(
                    "refused a request from {addr}: {status} (a line over {max_line} bytes)"
                );
                let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
                    "{}: a line of the request is longer than {max_line} bytes\n",
                    status.as_u16()
                )))));
                *r.status_mut() = status;
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Ok::<_, Infallible>(r);
            }
            let r = svc.call(req).await?;
            Ok(r.map(Either::Left))
        }
    });
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(100);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(64)
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    if let Err(e) = b.serve_connection_with_upgrades(io, svc).await {
        tracing::debug!("connection from {addr}: {e}");
    }
}
