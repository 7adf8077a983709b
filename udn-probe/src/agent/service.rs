//! Service tests as a user would run them: HTTP(S) GET with phase timings, a plain TCP
//! connect, or a DNS query.

use super::fetch::{FetchRequest, Resolver, fetch};
use crate::service::{FailPhase, Observation, Phases, ServiceSpec};
use crate::url::HttpUrl;
use crate::wire;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tokio::net::{TcpStream, UdpSocket};
use udn_core::config::ServiceKind;

/// Tests `spec` against the server address `ip` once.
pub async fn run_test(spec: &ServiceSpec, ip: IpAddr) -> Observation {
    match spec.kind {
        ServiceKind::Http | ServiceKind::Https => http_test(spec, ip).await,
        ServiceKind::Tcp => tcp_test(spec, ip).await,
        ServiceKind::Dns => dns_test(spec, ip).await,
    }
}

fn failed(phase: FailPhase, detail: String, phases: Phases) -> Observation {
    Observation {
        phases,
        error: Some((phase, detail)),
        ..Default::default()
    }
}

async fn http_test(spec: &ServiceSpec, ip: IpAddr) -> Observation {
    let scheme = if spec.kind == ServiceKind::Https {
        "https"
    } else {
        "http"
    };
    let authority = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let path = if spec.path.starts_with('/') {
        spec.path.clone()
    } else {
        format!("/{}", spec.path)
    };
    let url = match HttpUrl::parse(&format!("{scheme}://{authority}:{}{path}", spec.port)) {
        Ok(u) => u,
        Err(e) => return failed(FailPhase::Request, e.to_string(), Phases::default()),
    };
    let mut req = FetchRequest::get(url);
    req.timeout = spec.timeout;
    req.keep = spec.within;
    req.max_read = 16 << 20;
    req.connect_to = Some(ip);
    if spec.kind == ServiceKind::Https && spec.tls_verify {
        match super::fetch::verifying_tls_config(spec.tls_ca.as_deref()) {
            Ok(c) => req.tls = Some(c),
            Err(e) => return failed(FailPhase::Tls, e, Phases::default()),
        }
    }
    if let Some(h) = &spec.host {
        let v = if spec.port
            == if spec.kind == ServiceKind::Https {
                443
            } else {
                80
            } {
            h.clone()
        } else {
            format!("{h}:{}", spec.port)
        };
        req.headers.push(("host".into(), v));
    }
    match fetch(&req, &Resolver::system()).await {
        Ok(f) => Observation {
            status: Some(f.status),
            headers: f.headers,
            body_prefix: f.body,
            phases: f.phases,
            error: None,
        },
        Err(f) => failed(f.error.phase(), f.error.to_string(), f.phases),
    }
}

async fn tcp_test(spec: &ServiceSpec, ip: IpAddr) -> Observation {
    let start = Instant::now();
    match tokio::time::timeout(
        spec.timeout,
        TcpStream::connect(SocketAddr::new(ip, spec.port)),
    )
    .await
    {
        Ok(Ok(_)) => Observation {
            phases: Phases {
                connect: start.elapsed(),
                ..Default::default()
            },
            ..Default::default()
        },
        Ok(Err(e)) => failed(FailPhase::Connect, e.to_string(), Phases::default()),
        Err(_) => failed(
            FailPhase::Timeout,
            format!("no connection within {:?}", spec.timeout),
            Phases::default(),
        ),
    }
}

async fn dns_test(spec: &ServiceSpec, ip: IpAddr) -> Observation {
    let qname = spec.host.clone().unwrap_or_else(|| ".".into());
    let id = rand_id();
    let query = match wire::dns_query(id, &qname) {
        Ok(q) => q,
        Err(e) => return failed(FailPhase::Request, e.to_string(), Phases::default()),
    };
    let local: SocketAddr = if ip.is_ipv4() {
        "0.0.0.0:0"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let start = Instant::now();
    let dest = SocketAddr::new(ip, spec.port);
    let exchange = async {
        let sock = UdpSocket::bind(local).await?;
        sock.send_to(&query, dest).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await?;
            if from == dest
                && let Some(code) = wire::dns_message_code(&buf[..n], id)
            {
                return Ok::<u16, std::io::Error>(code);
            }
        }
    };
    match tokio::time::timeout(spec.timeout, exchange).await {
        Ok(Ok(code)) => Observation {
            status: Some(code),
            phases: Phases {
                wait: start.elapsed(),
                ..Default::default()
            },
            ..Default::default()
        },
        Ok(Err(e)) => failed(FailPhase::Transfer, e.to_string(), Phases::default()),
        Err(_) => failed(
            FailPhase::Timeout,
            format!("no answer within {:?}", spec.timeout),
            Phases::default(),
        ),
    }
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16)) as u16 ^ std::process::id() as u16
}
