//! The one way UDN's HTTP listeners accept connections: optional TLS (with an optional
//! client certificate checked against the instance CA and the revocation list), and the
//! limits every listener has (docs/security.md): a TLS-handshake timeout, a
//! request-header timeout (which also closes idle keep-alive connections), a header size
//! limit, and caps on concurrent connections overall and per client address.
//!
//! Every request carries a [`Peer`] (address and verified identity) and
//! `ConnectInfo<SocketAddr>`; requests over TLS also carry [`OverTls`].

use crate::api::OverTls;
use crate::pki::{Identity, Peer, Revocations};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits of a listener. Defaults are near nginx's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's whole header, and the longest an idle
    /// keep-alive connection is kept (nginx: `client_header_timeout` 60 s,
    /// `keepalive_timeout` 75 s). Default 10 s.
    pub header_timeout: Duration,
    /// Time a client has to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request header accepted, in bytes (nginx: 4 x 8 KiB buffers). Default
    /// 32 KiB; a larger one gets 431.
    pub max_header_bytes: usize,
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
            max_connections: 1024,
            max_per_client: 64,
        }
    }
}

/// TLS of a listener.
#[derive(Clone)]
pub struct Tls {
    /// The server configuration (for an admin listener: [`crate::pki::Credentials::server_config`]).
    pub config: Arc<rustls::ServerConfig>,
    /// Certificates refused even though they verify (by fingerprint).
    pub revoked: Revocations,
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

/// Binds `addr` and serves `app` on it with [`serve`].
pub async fn bind_and_serve(
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<Tls>,
    limits: Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, serve(listener, app, tls, limits)))
}

/// Serves `app` on `listener` until the returned task is aborted (open connections end
/// with it).
pub fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Tls>,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Mutex::new(Slots::default()));
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
                crate::pki::refusal_log(
                    Some(&Peer {
                        addr: peer,
                        identity: None,
                    }),
                    "connection limit reached",
                );
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let tls = tls.clone();
            conns.spawn(async move {
                let _slot = slot;
                match tls {
                    None => serve_conn(TokioIo::new(tcp), peer, None, None, app, limits).await,
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
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
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::pki::identity_of(c));
                        if let Some(id) = &identity
                            && tls.revoked.is_revoked(&id.fingerprint)
                        {
                            crate::pki::refusal_log(
                                Some(&Peer {
                                    addr: peer,
                                    identity: identity.clone(),
                                }),
                                &format!("instance {id} is revoked"),
                            );
                            return;
                        }
                        serve_conn(
                            TokioIo::new(stream),
                            peer,
                            identity,
                            Some(tls.revoked.clone()),
                            app,
                            limits,
                        )
                        .await
                    }
                }
            });
        }
    })
}

/// The answer to a request on a connection whose certificate was revoked meanwhile (the
/// connection is closed after it).
fn revoked_answer(id: &Identity) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::FORBIDDEN,
        [(axum::http::header::CONNECTION, "close")],
        axum::Json(serde_json::json!({ "error": format!("instance {id} is revoked") })),
    )
        .into_response()
}

async fn serve_conn<I>(
    io: TokioIo<I>,
    addr: SocketAddr,
    identity: Option<Identity>,
    revoked: Option<Revocations>,
    app: axum::Router,
    limits: Limits,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let over_tls = revoked.is_some();
    let peer = Peer { addr, identity };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // A certificate revoked after the handshake is refused on every later request
        // of a kept-alive connection too.
        let revoked_now = match (&revoked, &peer.identity) {
            (Some(r), Some(id)) if r.is_revoked(&id.fingerprint) => {
                crate::pki::refusal_log(Some(&peer), &format!("instance {id} is revoked"));
                Some(revoked_answer(id))
            }
            _ => None,
        };
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        req.extensions_mut().insert(peer.clone());
        if over_tls {
            req.extensions_mut().insert(OverTls);
        }
        let mut app = app.clone();
        async move {
            use tower_service::Service as _;
            if let Some(r) = revoked_now {
                return Ok(r);
            }
            app.call(req.map(axum::body::Body::new)).await
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
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(64)
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    if let Err(e) = b.serve_connection_with_upgrades(io, svc).await {
        tracing::debug!("connection from {addr}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn start(limits: Limits) -> SocketAddr {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (addr, _task) = bind_and_serve("127.0.0.1:0".parse().unwrap(), app, None, limits)
            .await
            .unwrap();
        addr
    }

    /// Reads until EOF (or a 5 s guard); returns what was read and whether EOF came.
    async fn read_to_close(s: &mut tokio::net::TcpStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, false),
            }
        }
    }

    #[tokio::test]
    async fn a_slow_header_and_an_idle_connection_are_closed_at_the_header_timeout() {
        let addr = start(Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Slowloris: half a request line, then nothing.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (_, closed) = read_to_close(&mut slow).await;
        assert!(closed, "a connection sending half a header must be closed");
        // Idle after a complete request on keep-alive.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, closed) = read_to_close(&mut idle).await;
        assert!(String::from_utf8_lossy(&got).contains("200 OK"));
        assert!(closed, "an idle keep-alive connection must be closed");
    }

    #[tokio::test]
    async fn connections_per_client_are_capped_and_an_oversized_header_is_refused() {
        let addr = start(Limits {
            max_per_client: 3,
            ..Limits::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (got, closed) = read_to_close(&mut fourth).await;
        assert!(
            closed && got.is_empty(),
            "the fourth connection must be closed unserved"
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A freed slot serves again; a 40 KiB header is refused.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let _ = s.write_all(big.as_bytes()).await;
        let (got, _) = read_to_close(&mut s).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains("200 OK"),
            "an oversized header must not be served: {text}"
        );
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_to_close(&mut ok).await;
        assert!(String::from_utf8_lossy(&got).contains("200 OK"));
    }
}
