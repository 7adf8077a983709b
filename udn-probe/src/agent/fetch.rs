//! The timed fetch: one HTTP/1.1 request over a connection we open ourselves, with an
//! `Instant` stamped after each phase (DNS, TCP connect, TLS, first byte, last byte).
//!
//! reqwest hides these phases, so the fetch is built from `tokio::net::lookup_host`,
//! `TcpStream::connect`, tokio-rustls and `hyper::client::conn::http1::handshake`.
//! Certificates are checked only when the request carries a verifying TLS configuration
//! ([`FetchRequest::tls`], [`verifying_tls_config`]: HTTPS service tests by default);
//! page checks accept any certificate and time the handshake.

use crate::pagecheck::PageError;
use crate::service::Phases;
use crate::url::HttpUrl;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Name resolution for fetches: fixed overrides (like curl's `--resolve`), an optional
/// cache (the warm second pass of a page check), else a chosen DNS server
/// ([`Resolver::with_dns_server`], like `dig @server`) or the system resolver.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: HashMap<String, IpAddr>,
    cache: Option<Arc<Mutex<HashMap<String, IpAddr>>>>,
    dns: Option<DnsServer>,
}

/// A DNS server to ask directly instead of the system resolver: a page check then sees
/// the answer (and the lookup time) that server gives a client at `source`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsServer {
    /// The server (resolver or authoritative) and its port.
    pub server: SocketAddr,
    /// The local address queries are sent from (the client the server sees); `None`:
    /// the system's choice.
    #[serde(default)]
    pub source: Option<IpAddr>,
    /// Time limit per attempt (two attempts over UDP).
    #[serde(default = "DnsServer::default_timeout_ms")]
    pub timeout_ms: u64,
}

impl DnsServer {
    fn default_timeout_ms() -> u64 {
        2000
    }

    /// `server`, from the system's choice of source address, 2 s per attempt.
    pub fn new(server: SocketAddr) -> DnsServer {
        DnsServer {
            server,
            source: None,
            timeout_ms: Self::default_timeout_ms(),
        }
    }

    /// Asks for `host`'s A records (then AAAA when there is none); the first address.
    async fn lookup(&self, host: &str) -> Result<IpAddr, PageError> {
        let name = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        for qtype in [
            hickory_proto::rr::RecordType::A,
            hickory_proto::rr::RecordType::AAAA,
        ] {
            let addrs = self.ask(&name, qtype).await?;
            if let Some(ip) = addrs.first() {
                return Ok(*ip);
            }
        }
        Err(PageError::Dns(format!(
            "{} has no address for {host}",
            self.server
        )))
    }

    async fn ask(
        &self,
        name: &str,
        qtype: hickory_proto::rr::RecordType,
    ) -> Result<Vec<IpAddr>, PageError> {
        use tokio::net::UdpSocket;
        let id: u16 = rand_id();
        let query = crate::wire::dns_query_type(id, name, qtype)
            .map_err(|e| PageError::Dns(e.to_string()))?;
        let local = SocketAddr::new(
            self.source.unwrap_or(match self.server {
                SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            }),
            0,
        );
        let sock = UdpSocket::bind(local)
            .await
            .map_err(|e| PageError::Dns(format!("udp bind {local}: {e}")))?;
        let wait = Duration::from_millis(self.timeout_ms.max(1));
        for _attempt in 0..2 {
            sock.send_to(&query, self.server)
                .await
                .map_err(|e| PageError::Dns(format!("send to {}: {e}", self.server)))?;
            let reply = async {
                let mut buf = [0u8; 4096];
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    if from == self.server
                        && let Some(r) = crate::wire::dns_reply_addrs(&buf[..n], id)
                    {
                        return Ok::<_, std::io::Error>(r);
                    }
                }
            };
            match tokio::time::timeout(wait, reply).await {
                Ok(Ok(Ok(addrs))) => return Ok(addrs),
                Ok(Ok(Err(3))) => {
                    return Err(PageError::Dns(format!(
                        "{}: NXDOMAIN for {name}",
                        self.server
                    )));
                }
                Ok(Ok(Err(code))) => {
                    return Err(PageError::Dns(format!(
                        "{}: response code {code} for {name}",
                        self.server
                    )));
                }
                Ok(Err(e)) => {
                    return Err(PageError::Dns(format!("recv from {}: {e}", self.server)));
                }
                Err(_) => continue,
            }
        }
        Err(PageError::Dns(format!(
            "{} did not answer for {name}",
            self.server
        )))
    }
}

/// A query id that differs between lookups (and processes).
fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503) ^ (std::process::id() as u16)
}

impl Resolver {
    /// The system resolver, no overrides, no cache.
    pub fn system() -> Self {
        Resolver::default()
    }

    /// Adds a fixed answer for `host` (lower case).
    #[must_use]
    pub fn with_override(mut self, host: &str, ip: IpAddr) -> Self {
        self.overrides.insert(host.to_ascii_lowercase(), ip);
        self
    }

    /// Asks `dns` instead of the system resolver (overrides and the cache still come
    /// first).
    #[must_use]
    pub fn with_dns_server(mut self, dns: DnsServer) -> Self {
        self.dns = Some(dns);
        self
    }

    /// Turns on a cache shared by clones of this resolver.
    #[must_use]
    pub fn with_cache(mut self) -> Self {
        self.cache = Some(Arc::default());
        self
    }

    /// Resolves `host` (an IP literal resolves to itself).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<IpAddr, PageError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        if let Some(ip) = self.overrides.get(host) {
            return Ok(*ip);
        }
        if let Some(c) = &self.cache
            && let Some(ip) = c.lock().unwrap_or_else(|e| e.into_inner()).get(host)
        {
            return Ok(*ip);
        }
        let ip = match &self.dns {
            Some(dns) => dns.lookup(host).await?,
            None => {
                let mut addrs = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| PageError::Dns(e.to_string()))?;
                addrs
                    .next()
                    .map(|a| a.ip())
                    .ok_or_else(|| PageError::Dns(format!("no address for {host}")))?
            }
        };
        if let Some(c) = &self.cache {
            c.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(host.to_string(), ip);
        }
        Ok(ip)
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// Where.
    pub url: HttpUrl,
    /// Method.
    pub method: http::Method,
    /// Extra headers (a `Host` here replaces the URL's).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
    /// Connect to this address instead of resolving the URL's host.
    pub connect_to: Option<IpAddr>,
    /// Time limit of the whole fetch.
    pub timeout: Duration,
    /// Body bytes kept (the rest is read and counted, up to `max_read`).
    pub keep: usize,
    /// Body bytes read at most.
    pub max_read: u64,
    /// TLS settings for `https` URLs; `None` accepts any certificate (the handshake
    /// signatures are still checked).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Which addresses may be connected to, checked after resolution (so a name
    /// rebound into the provider's network is refused); `None`: any.
    pub policy: Option<Arc<udn_core::netpolicy::TargetPolicy>>,
}

impl FetchRequest {
    /// A GET of `url` with a 10 s limit, keeping up to 16 MiB of body.
    pub fn get(url: HttpUrl) -> Self {
        FetchRequest {
            url,
            method: http::Method::GET,
            headers: Vec::new(),
            body: Bytes::new(),
            connect_to: None,
            timeout: Duration::from_secs(10),
            keep: 16 << 20,
            max_read: 64 << 20,
            tls: None,
            policy: None,
        }
    }
}

/// What a fetch got.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The address connected to.
    pub ip: Option<IpAddr>,
    /// HTTP status.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The kept body bytes.
    pub body: Vec<u8>,
    /// Body bytes read in all.
    pub body_len: u64,
    /// When the fetch started.
    pub started: Instant,
    /// Phase durations.
    pub phases: Phases,
}

/// A failed fetch: the error, the phases completed before it, and the address if known.
#[derive(Debug, Clone)]
pub struct FetchFailure {
    /// What failed.
    pub error: PageError,
    /// When the fetch started.
    pub started: Instant,
    /// Phases up to the failure.
    pub phases: Phases,
    /// The address, if resolution got that far.
    pub ip: Option<IpAddr>,
}

/// Performs one timed fetch.
pub async fn fetch(req: &FetchRequest, resolver: &Resolver) -> Result<Fetched, FetchFailure> {
    let started = Instant::now();
    let progress = Mutex::new((Phases::default(), None::<IpAddr>));
    let limit = req.timeout;
    let res = tokio::time::timeout(limit, fetch_inner(req, resolver, started, &progress)).await;
    let (phases, ip) = *progress.lock().unwrap_or_else(|e| e.into_inner());
    match res {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(error)) => Err(FetchFailure {
            error,
            started,
            phases,
            ip,
        }),
        Err(_) => Err(FetchFailure {
            error: PageError::Timeout(limit.as_millis() as u64),
            started,
            phases,
            ip,
        }),
    }
}

/// The phases done so far and the address connected to.
type Progress = (Phases, Option<IpAddr>);

async fn fetch_inner(
    req: &FetchRequest,
    resolver: &Resolver,
    started: Instant,
    progress: &Mutex<Progress>,
) -> Result<Fetched, PageError> {
    let set = |f: &dyn Fn(&mut Progress)| {
        f(&mut progress.lock().unwrap_or_else(|e| e.into_inner()));
    };
    let url = &req.url;
    let ip = match req.connect_to {
        Some(ip) => ip,
        None => resolver.resolve(&url.host, url.port).await?,
    };
    if let Some(policy) = &req.policy
        && let Err(range) = policy.check(ip)
    {
        set(&|p| p.1 = Some(ip));
        return Err(PageError::Refused(format!(
            "{} resolves to {ip}, a {range} address (not a permitted target)",
            url.host
        )));
    }
    let t_dns = Instant::now();
    let mut phases = Phases {
        dns: t_dns - started,
        ..Default::default()
    };
    set(&|p| *p = (phases, Some(ip)));
    let tcp = TcpStream::connect(SocketAddr::new(ip, url.port))
        .await
        .map_err(|e| PageError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let t_conn = Instant::now();
    phases.connect = t_conn - t_dns;
    set(&|p| p.0 = phases);
    let host_header = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| url.host_header());
    let request = build_request(req, &host_header)?;
    let (status, headers, body, t_head) = if url.tls {
        let sni = strip_port(&host_header).to_string();
        let name = rustls::pki_types::ServerName::try_from(sni)
            .map_err(|e| PageError::Tls(e.to_string()))?;
        let config = match &req.tls {
            Some(c) => c.clone(),
            None => tls_config()?,
        };
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| PageError::Tls(e.to_string()))?;
        let t_tls = Instant::now();
        phases.tls = t_tls - t_conn;
        set(&|p| p.0 = phases);
        exchange(tls, request, req).await?
    } else {
        exchange(tcp, request, req).await?
    };
    let t_end = Instant::now();
    phases.wait = t_head - (t_conn + phases.tls);
    phases.receive = t_end - t_head;
    let (kept, len) = body;
    Ok(Fetched {
        ip: Some(ip),
        status,
        headers,
        body: kept,
        body_len: len,
        started,
        phases,
    })
}

/// `host` of a `host[:port]` / `[v6][:port]` Host header value.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') && p.parse::<u16>().is_ok() => a,
        _ => h,
    }
}

type Exchanged = (u16, Vec<(String, String)>, (Vec<u8>, u64), Instant);

async fn exchange<S>(
    io: S,
    request: http::Request<Full<Bytes>>,
    req: &FetchRequest,
) -> Result<Exchanged, PageError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let transfer = |e: &dyn std::fmt::Display| PageError::Transfer(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| transfer(&e))?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(request).await.map_err(|e| transfer(&e));
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    };
    let t_head = Instant::now();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    let mut len: u64 = 0;
    let result = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(transfer(&e)),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    let room = req.keep.saturating_sub(kept.len());
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                    if len >= req.max_read {
                        break Ok(());
                    }
                }
            }
        }
    };
    driver.abort();
    result.map(|()| (status, headers, (kept, len), t_head))
}

fn build_request(req: &FetchRequest, host: &str) -> Result<http::Request<Full<Bytes>>, PageError> {
    let mut b = http::Request::builder()
        .method(req.method.clone())
        .uri(req.url.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "udn-probe/0.1")
        .header(http::header::CONNECTION, "close");
    for (n, v) in &req.headers {
        if !n.eq_ignore_ascii_case("host") {
            b = b.header(n.as_str(), v.as_str());
        }
    }
    b.body(Full::new(req.body.clone()))
        .map_err(|e| PageError::BadUrl(e.to_string()))
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, PageError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            Ok(Arc::new(cfg))
        })
        .clone()
        .map_err(PageError::Tls)
}

/// A TLS configuration that checks server certificates as a browser would: a chain to
/// the host's trust store (`/etc/ssl/certs` via rustls-native-certs) or to one of the
/// PEM certificates in `extra_roots`, valid now, issued for the name asked. Built once
/// per distinct `extra_roots` and shared.
pub fn verifying_tls_config(
    extra_roots: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    static NATIVE: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    static BUILT: OnceLock<Mutex<HashMap<Option<String>, Arc<rustls::ClientConfig>>>> =
        OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let key = extra_roots.map(str::to_owned);
    if let Some(c) = built.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in NATIVE.get_or_init(|| rustls_native_certs::load_native_certs().certs) {
        let _ = roots.add(c.clone());
    }
    if let Some(pem) = extra_roots {
        let mut added = 0;
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let c = c.map_err(|e| format!("tls_ca: {e}"))?;
            roots.add(c).map_err(|e| format!("tls_ca: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("tls_ca: no PEM certificate in it".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    built
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, cfg.clone());
    Ok(cfg)
}

/// Accepts any server certificate but checks the handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
