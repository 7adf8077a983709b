//! UDN's HTTP listeners for axum apps (every admin listener): the one hardened accept
//! loop [`udn_cache::server::listener`] (TLS-handshake timeout, request-header timeout,
//! which also closes idle keep-alive connections, header line and size limits, caps on
//! concurrent connections overall and per client address; docs/security.md), with an
//! optional client certificate checked against the instance CA and the revocation list.
//!
//! Every request carries a [`Peer`] (address and verified identity) and
//! `ConnectInfo<SocketAddr>`; requests over TLS also carry [`OverTls`].

use crate::api::OverTls;
use crate::pki::{Peer, Revocations};
use std::net::SocketAddr;
use std::sync::Arc;

pub use udn_cache::server::listener::Limits;

/// TLS of a listener.
#[derive(Clone)]
pub struct Tls {
    /// The server configuration (for an admin listener: [`crate::pki::Credentials::server_config`]).
    pub config: Arc<rustls::ServerConfig>,
    /// Certificates refused even though they verify (by fingerprint).
    pub revoked: Revocations,
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
    let (config, revoked) = match tls {
        Some(t) => (Some(t.config), Some(t.revoked)),
        None => (None, None),
    };
    udn_cache::server::listener::serve(listener, config, limits, AxumAccept { app, revoked })
}

struct AxumAccept {
    app: axum::Router,
    revoked: Option<Revocations>,
}

impl udn_cache::server::listener::Accept for AxumAccept {
    type Service = AxumService;
    type Body = axum::body::Body;

    fn accept(&self, conn: &udn_cache::server::listener::Conn) -> Option<AxumService> {
        let identity = conn
            .peer_certificate
            .as_ref()
            .and_then(|c| crate::pki::identity_of(c));
        if let (Some(id), Some(revoked)) = (&identity, &self.revoked)
            && revoked.is_revoked(&id.fingerprint)
        {
            crate::pki::refusal_log(
                Some(&Peer {
                    addr: conn.addr,
                    identity: identity.clone(),
                }),
                &format!("instance {id} is revoked"),
            );
            return None;
        }
        Some(AxumService {
            app: self.app.clone(),
            peer: Peer {
                addr: conn.addr,
                identity,
            },
            over_tls: conn.over_tls,
            revoked: self.revoked.clone(),
        })
    }

    fn refused(&self, addr: SocketAddr, reason: &str) {
        crate::pki::refusal_log(
            Some(&Peer {
                addr,
                identity: None,
            }),
            reason,
        );
    }
}

/// The answer to a request on a connection whose certificate was revoked meanwhile (the
/// connection is closed after it).
fn revoked_answer(id: &crate::pki::Identity) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::FORBIDDEN,
        [(axum::http::header::CONNECTION, "close")],
        axum::Json(serde_json::json!({ "error": format!("instance {id} is revoked") })),
    )
        .into_response()
}

struct AxumService {
    app: axum::Router,
    peer: Peer,
    over_tls: bool,
    revoked: Option<Revocations>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for AxumService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        // A certificate revoked after the handshake is refused on every later request
        // of a kept-alive connection too.
        let revoked_now = match (&self.revoked, &self.peer.identity) {
            (Some(r), Some(id)) if r.is_revoked(&id.fingerprint) => {
                crate::pki::refusal_log(Some(&self.peer), &format!("instance {id} is revoked"));
                Some(revoked_answer(id))
            }
            _ => None,
        };
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer.addr));
        req.extensions_mut().insert(self.peer.clone());
        if self.over_tls {
            req.extensions_mut().insert(OverTls);
        }
        let mut app = self.app.clone();
        Box::pin(async move {
            use tower_service::Service as _;
            if let Some(r) = revoked_now {
                return Ok(r);
            }
            app.call(req.map(axum::body::Body::new)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
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

    /// Sends `bytes` on a new connection to `addr` and reads until the server closes it
    /// (or 5 s pass): what came back and whether it was closed.
    async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may refuse before reading it all.
        let _ = s.write_all(bytes).await;
        read_to_close(&mut s).await
    }

    #[tokio::test]
    async fn a_slow_header_and_an_idle_connection_are_closed_at_the_header_timeout() {
        let addr = start(Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Slowloris: half a request line, then nothing.
        let (_, closed) = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        assert!(closed, "a connection sending half a header must be closed");
        // Idle after a complete request on keep-alive.
        let (got, closed) = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
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
        let (got, closed) = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            closed && got.is_empty(),
            "the fourth connection must be closed unserved"
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A freed slot serves again; a 40 KiB header is refused.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let (got, _) = exchange(addr, big.as_bytes()).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains("200 OK"),
            "an oversized header must not be served: {text}"
        );
        let (got, _) = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(String::from_utf8_lossy(&got).contains("200 OK"));
    }

    #[tokio::test]
    async fn a_header_line_over_8_kib_gets_431_and_a_long_request_line_414() {
        let addr = start(Limits::default()).await;
        let send = |req: String| async move {
            String::from_utf8_lossy(&exchange(addr, req.as_bytes()).await.0).to_string()
        };
        // 9 KiB in one line, 18 KiB in all: within the 32 KiB, over the 8 KiB a line.
        let line = "a".repeat(9 * 1024);
        let text = send(format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: {line}\r\nX-B: {line}\r\n\r\n"
        ))
        .await;
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        let text = send(format!("GET /{line} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert!(text.starts_with("HTTP/1.1 414"), "{text}");
        // Four 7 KiB lines (28 KiB) are served.
        let ok = "a".repeat(7 * 1024);
        let text = send(format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: {ok}\r\nX-B: {ok}\r\nX-C: {ok}\r\nX-D: {ok}\r\n\r\n"
        ))
        .await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}
