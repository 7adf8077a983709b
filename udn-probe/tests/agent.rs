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

async fn https_server(body: &'static str) -> SocketAddr {
    let ck = rcgen::generate_simple_self_signed(vec!["origin.shop.example".into()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
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
    addr
}

#[tokio::test]
async fn https_service_test_times_tls_separately() {
    let addr = https_server("status: healthy v42").await;
    let s = spec(&format!(
        "name = \"https\"\nkind = \"https\"\nport = {}\nhost = \"origin.shop.example\"\nexpect_content = \"healthy\"\nexpect_regex = \"v[0-9]+\"\ntimeout_ms = 3000",
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
        "name = \"https\"\nkind = \"https\"\nport = {}\nhost = \"origin.shop.example\"\nexpect_content = \"sick\"",
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
    let addr = https_server("<html><body>no components</body></html>").await;
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
