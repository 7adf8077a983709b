//! Service tests as a user would run them: HTTP(S) GET with phase timings, a plain TCP
//! connect, a DNS query, or an FTP session (log in, `SIZE`, `RETR` in passive mode).

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
        ServiceKind::Ftp => ftp_test(spec, ip).await,
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

/// The most an FTP test reads of a file (as an HTTP test reads of a body).
const FTP_MAX_READ: usize = 16 << 20;

/// An FTP session as a user's client runs it: connect (timed as `connect`), read the
/// greeting, log in, binary type, `SIZE`, `RETR` in passive mode until the first data
/// byte (`wait`), the rest of the file and the completion reply (`receive`). The whole
/// session is bounded by the spec's time limit.
///
/// The data connection goes only to the server's own address: the address in a `PASV`
/// reply is ignored (`EPSV` on IPv6 carries none), and any other address is refused,
/// so a hostile server cannot point the probe at a third host (the FTP bounce).
async fn ftp_test(spec: &ServiceSpec, ip: IpAddr) -> Observation {
    let mut phases = Phases::default();
    let session = ftp_session(spec, SocketAddr::new(ip, spec.port), &mut phases);
    match tokio::time::timeout(spec.timeout, session).await {
        Ok(obs) => obs,
        Err(_) => failed(
            FailPhase::Timeout,
            format!("the FTP session did not finish within {:?}", spec.timeout),
            phases,
        ),
    }
}

async fn ftp_session(spec: &ServiceSpec, addr: SocketAddr, phases: &mut Phases) -> Observation {
    use suppaftp::tokio::AsyncFtpStream;
    use suppaftp::types::FileType;
    use suppaftp::{FtpError, Mode};
    use tokio::io::AsyncReadExt as _;

    let start = Instant::now();
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => return failed(FailPhase::Connect, e.to_string(), *phases),
    };
    phases.connect = start.elapsed();
    let asked = Instant::now();
    let server = addr.ip();
    let ftp = match AsyncFtpStream::connect_with_stream(tcp).await {
        Ok(f) => f,
        Err(e) => return ftp_failed(e, "greeting", *phases),
    };
    let mut ftp = ftp.passive_stream_builder(move |data: SocketAddr| {
        Box::pin(async move {
            if data.ip() != server {
                return Err(FtpError::ConnectionError(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("data connection to {data} refused: not the server {server}"),
                )));
            }
            TcpStream::connect(data)
                .await
                .map_err(FtpError::ConnectionError)
        })
    });
    if server.is_ipv4() {
        ftp.set_mode(Mode::Passive);
        ftp.set_passive_nat_workaround(true);
    } else {
        ftp.set_mode(Mode::ExtendedPassive);
    }
    let (user, password) = &spec.ftp_login;
    if let Err(e) = ftp.login(user.as_str(), password.as_str()).await {
        return ftp_failed(e, "login", *phases);
    }
    if let Err(e) = ftp.transfer_type(FileType::Binary).await {
        return ftp_failed(e, "TYPE I", *phases);
    }
    let path = spec.path.as_str();
    let mut headers = Vec::new();
    match ftp.size(path).await {
        Ok(n) => headers.push(("size".to_owned(), n.to_string())),
        // Without retrieval the size is the test; with it, a server without SIZE
        // (RFC 3659) still passes on the download.
        Err(e) if !spec.ftp_retrieve => return ftp_failed(e, "SIZE", *phases),
        Err(_) => {}
    }
    if !spec.ftp_retrieve {
        phases.wait = asked.elapsed();
        quit(ftp).await;
        return Observation {
            status: Some(213),
            headers,
            phases: *phases,
            ..Default::default()
        };
    }
    let mut data = match ftp.retr_as_stream(path).await {
        Ok(d) => d,
        Err(e) => return ftp_failed(e, "RETR", *phases),
    };
    let mut body = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let mut read = 0usize;
    let mut first = None;
    loop {
        let n = match data.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => return failed(FailPhase::Transfer, e.to_string(), *phases),
        };
        let now = Instant::now();
        if first.is_none() {
            phases.wait = now - asked;
            first = Some(now);
        }
        if n == 0 {
            break;
        }
        read += n;
        if read > FTP_MAX_READ {
            return failed(
                FailPhase::Transfer,
                format!(
                    "{path} is larger than the {FTP_MAX_READ} bytes a test reads: set ftp_retrieve = false to only SIZE it"
                ),
                *phases,
            );
        }
        let keep = spec.within.saturating_sub(body.len()).min(n);
        body.extend_from_slice(&buf[..keep]);
    }
    if let Err(e) = data.finish().await {
        return ftp_failed(e, "the end of the transfer", *phases);
    }
    phases.receive = first.map_or(std::time::Duration::ZERO, |f| f.elapsed());
    quit(ftp).await;
    Observation {
        // the completion reply: suppaftp accepts 226 (or 250) there
        status: Some(226),
        headers,
        body_prefix: body,
        phases: *phases,
        error: None,
    }
}

/// Says goodbye, briefly: the test is over whatever the server does with `QUIT`.
async fn quit(mut ftp: suppaftp::tokio::AsyncFtpStream) {
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), ftp.quit()).await;
}

/// An FTP failure as an observation: a refusal (4xx or 5xx reply, such as 530 for a bad
/// login or 550 for a missing file) is the test's status, anything else a transfer
/// failure with the step named.
fn ftp_failed(e: suppaftp::FtpError, step: &str, phases: Phases) -> Observation {
    match e {
        suppaftp::FtpError::UnexpectedResponse(r) if r.status.code() >= 400 => Observation {
            status: Some(r.status.code().min(u16::MAX as u32) as u16),
            phases,
            ..Default::default()
        },
        suppaftp::FtpError::ConnectionError(io) => {
            failed(FailPhase::Transfer, format!("{step}: {io}"), phases)
        }
        e => failed(FailPhase::Transfer, format!("{step}: {e}"), phases),
    }
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16)) as u16 ^ std::process::id() as u16
}
