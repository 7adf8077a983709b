//! The agent's I/O pieces against real servers on loopback: an HTTPS service test with
//! the TLS handshake timed on its own (a real rustls server with a self-signed
//! certificate), DNS and TCP service tests, and the reporter's bounded queue.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use udn_core::config::ServiceConfig;
use udn_probe::agent::report::{Reporter, ReporterOptions};
use udn_probe::agent::service::run_test;
use udn_probe::service::{FailPhase, ServiceSpec, VerdictReason};

fn spec(toml_text: &str) -> ServiceSpec {
    let cfg: ServiceConfig = toml::from_str(toml_text).unwrap();
    ServiceSpec::from_config(&cfg).unwrap()
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A private CA and a certificate it issued for `name`, valid until `not_after`.
struct Pki {
    ca_pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki(name: &str, expired: bool) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone(), ca.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// An HTTPS origin for `origin.shop.example` with a certificate from its own CA;
/// returns its address and the CA (PEM).
async fn https_server(body: &'static str) -> (SocketAddr, String) {
    https_server_with(body, pki("origin.shop.example", false)).await
}

async fn https_server_with(body: &'static str, pki: Pki) -> (SocketAddr, String) {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain, pki.key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&got).to_ascii_lowercase();
                let host_ok = req.contains("host: origin.shop.example");
                let status = if host_ok { "200 OK" } else { "421 Misdirected" };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, pki.ca_pem)
}

#[tokio::test]
async fn https_service_test_times_tls_separately() {
    let (addr, ca) = https_server("status: healthy v42").await;
    let s = spec(&format!(
        "name = \"https\"\nkind = \"https\"\nport = {}\nhost = \"origin.shop.example\"\nexpect_content = \"healthy\"\nexpect_regex = \"v[0-9]+\"\ntimeout_ms = 3000\ntls_ca = {ca:?}",
        addr.port()
    ));
    let obs = run_test(&s, LOCAL).await;
    assert_eq!(obs.error, None);
    assert_eq!(obs.status, Some(200), "Host header and SNI from `host`");
    assert!(
        obs.phases.tls > Duration::ZERO,
        "TLS handshake timed: {:?}",
        obs.phases
    );
    assert!(obs.phases.connect > Duration::ZERO);
    let v = s.evaluate(&obs);
    assert!(v.ok, "{v:?}");

    let wrong = spec(&format!(
        "name = \"https\"\nkind = \"https\"\nport = {}\nhost = \"origin.shop.example\"\nexpect_content = \"sick\"\ntls_ca = {ca:?}",
        addr.port()
    ));
    assert_eq!(
        wrong.evaluate(&run_test(&wrong, LOCAL).await).reason,
        VerdictReason::ContentMissing
    );

    // Plain HTTP against the TLS port fails, not silently.
    let plain = spec(&format!(
        "name = \"http\"\nport = {}\ntimeout_ms = 1000",
        addr.port()
    ));
    let v = plain.evaluate(&run_test(&plain, LOCAL).await);
    assert!(!v.ok, "{v:?}");
}

/// An HTTPS service test checks the certificate as a browser would, unless told not to.
#[tokio::test]
async fn https_service_test_checks_the_certificate() {
    let https = |port: u16, extra: &str| {
        spec(&format!(
            "name = \"https\"\nkind = \"https\"\nport = {port}\nhost = \"origin.shop.example\"\ntimeout_ms = 3000\n{extra}"
        ))
    };
    let tls_error = |obs: &udn_probe::service::Observation| match &obs.error {
        Some((FailPhase::Tls, detail)) => detail.clone(),
        other => panic!("expected a TLS failure, got {other:?}"),
    };
    let (addr, ca) = https_server("ok").await;
    // The private CA is not in the host's trust store: down, and the reason says why.
    let s = https(addr.port(), "");
    let obs = run_test(&s, LOCAL).await;
    let why = tls_error(&obs);
    assert!(why.contains("UnknownIssuer"), "{why}");
    assert!(!s.evaluate(&obs).ok);
    // Trusted through `tls_ca`: up.
    let s = https(addr.port(), &format!("tls_ca = {ca:?}"));
    assert!(s.evaluate(&run_test(&s, LOCAL).await).ok);
    // Not checked at all: up too (the handshake is still made and timed).
    let s = https(addr.port(), "tls_verify = false");
    let obs = run_test(&s, LOCAL).await;
    assert!(s.evaluate(&obs).ok, "{obs:?}");
    assert!(obs.phases.tls > Duration::ZERO);
    // A `tls_ca` with no certificate in it is reported, not ignored.
    let s = https(addr.port(), "tls_ca = \"not a certificate\"");
    let why = tls_error(&run_test(&s, LOCAL).await);
    assert!(why.contains("tls_ca"), "{why}");

    // Issued for another name: down even with the CA trusted.
    let (other, other_ca) = https_server_with("ok", pki("elsewhere.example", false)).await;
    let s = https(other.port(), &format!("tls_ca = {other_ca:?}"));
    let why = tls_error(&run_test(&s, LOCAL).await);
    assert!(why.contains("not valid for name"), "{why}");
    // Expired: down even with the CA trusted.
    let (old, old_ca) = https_server_with("ok", pki("origin.shop.example", true)).await;
    let s = https(old.port(), &format!("tls_ca = {old_ca:?}"));
    let why = tls_error(&run_test(&s, LOCAL).await);
    assert!(why.to_lowercase().contains("expired"), "{why}");
}

#[tokio::test]
async fn dns_and_tcp_service_tests() {
    // A DNS server that answers NXDOMAIN for everything.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80;
            r[3] = (r[3] & 0xf0) | 3;
            let _ = sock.send_to(&r, from).await;
        }
    });
    let s = spec(&format!(
        "name = \"dns\"\nkind = \"dns\"\nport = {}\nhost = \"www.shop.udn.example\"",
        dns.port()
    ));
    let obs = run_test(&s, LOCAL).await;
    assert_eq!(obs.status, Some(3));
    assert!(s.evaluate(&obs).ok, "NXDOMAIN: the server answers");
    let strict = spec(&format!(
        "name = \"dns\"\nkind = \"dns\"\nport = {}\nexpect_status = [0]",
        dns.port()
    ));
    assert_eq!(
        strict.evaluate(&run_test(&strict, LOCAL).await).reason,
        VerdictReason::BadStatus(3)
    );

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let tcp = spec(&format!("name = \"tcp\"\nkind = \"tcp\"\nport = {port}"));
    assert!(tcp.evaluate(&run_test(&tcp, LOCAL).await).ok);
    drop(l);
    let closed = spec(&format!("name = \"tcp\"\nkind = \"tcp\"\nport = {port}"));
    assert_eq!(
        closed.evaluate(&run_test(&closed, LOCAL).await).reason,
        VerdictReason::Failed(FailPhase::Connect)
    );
}

#[tokio::test]
async fn reporter_drops_oldest_when_a_server_stays_down() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = Reporter::new(
        &[format!("http://127.0.0.1:{port}")],
        ReporterOptions {
            capacity: 5,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            ..Default::default()
        },
    );
    let tasks = r.spawn();
    let m = |i: u64| udn_core::Metric::Load {
        server: "fra-edge-1".into(),
        percent: 1.0,
        at: udn_core::Timestamp::from_millis(i),
        parts: None,
    };
    for i in 0..12 {
        r.push(&[m(i)]);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = &r.stats()[0];
    assert_eq!(st.queued, 5, "bounded");
    assert_eq!(st.dropped, 7, "oldest dropped and counted");
    assert!(st.failures >= 2, "retried with backoff: {st:?}");
    assert_eq!(st.sent, 0);
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn https_page_check_reports_tls_separately() {
    use udn_probe::agent::pagecheck::{PageCheckOptions, page_check};
    let (addr, _) = https_server("<html><body>no components</body></html>").await;
    let opts = PageCheckOptions {
        resolve: vec![("origin.shop.example".into(), LOCAL)],
        ..Default::default()
    };
    let url = format!("https://origin.shop.example:{}/", addr.port());
    let reports = page_check(&url, true, &opts).await;
    assert_eq!(reports.len(), 2);
    for r in &reports {
        let row = &r.rows[0];
        assert_eq!((row.err, row.hrc), (0, 200), "{row:?}");
        assert!(row.tls_us > 0, "TLS column: {row:?}");
        assert_eq!(
            row.end_us,
            row.stt_us + row.drt_us + row.cot_us + row.tls_us + row.dst_us + row.fnt_us
        );
        assert_eq!(r.overall.tls_us, row.tls_us);
        assert_eq!(row.ip, Some(LOCAL));
    }
    assert_eq!(reports[0].rows[0].chk, reports[1].rows[0].chk);
}
