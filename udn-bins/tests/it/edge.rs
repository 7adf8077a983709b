//! Integration tests of `udn edge`: the real binary on loopback, a real origin (a hyper
//! server inside the test) and a real client (curl).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
const BIG: u64 = 256 << 20;

/// What the origin saw.
#[derive(Default)]
struct OriginState {
    hits: Mutex<HashMap<String, u64>>,
    not_modified: AtomicU64,
    body_bytes: AtomicU64,
    down: AtomicBool,
}

impl OriginState {
    fn count(&self, path: &str) -> u64 {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

type OBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn origin_handle(st: Arc<OriginState>, req: Request<Incoming>) -> Response<OBody> {
    let path = req.uri().path().to_string();
    *st.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let full = |status: u16, headers: &[(&str, String)], body: String| {
        st.body_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    };
    if st.down.load(Ordering::Relaxed) {
        return full(503, &[], "down".into());
    }
    let ims = req.headers().get("if-modified-since").is_some();
    if path.starts_with("/slow/") {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if path.starts_with("/hang/") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if path.starts_with("/lm/") || path.starts_with("/lmshort/") {
        if ims {
            st.not_modified.fetch_add(1, Ordering::Relaxed);
            return full(304, &[("last-modified", LM.into())], String::new());
        }
        let cc = if path.starts_with("/lm/") {
            "max-age=3600"
        } else {
            "max-age=1"
        };
        return full(
            200,
            &[("last-modified", LM.into()), ("cache-control", cc.into())],
            format!("body of {path} ").repeat(100),
        );
    }
    if path.starts_with("/enc/") {
        // Compressed variants: one per Accept-Encoding.
        let enc = req
            .headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let mut h = vec![
            ("vary", "Accept-Encoding".to_string()),
            ("cache-control", "max-age=3600".into()),
        ];
        if !enc.is_empty() {
            h.push(("content-encoding", enc.clone()));
        }
        return full(200, &h, format!("{enc}-encoded {path}"));
    }
    if path == "/vary" {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        return full(
            200,
            &[
                ("vary", "Accept-Language".into()),
                ("cache-control", "max-age=3600".into()),
            ],
            format!("lang={lang}"),
        );
    }
    if path == "/big" {
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let st2 = st.clone();
        let s = futures_stream(BIG / (1 << 20), chunk, st2);
        let mut r = Response::new(StreamBody::new(s).boxed());
        r.headers_mut().insert("content-length", BIG.into());
        r.headers_mut()
            .insert("cache-control", "max-age=3600".parse().unwrap());
        return r;
    }
    if path.starts_with("/sie/") {
        return full(
            200,
            &[("cache-control", "max-age=1, stale-if-error=600".into())],
            format!("sie {path}"),
        );
    }
    if path.starts_with("/swr/") {
        return full(
            200,
            &[(
                "cache-control",
                "max-age=2, stale-while-revalidate=30".into(),
            )],
            format!("swr {path}"),
        );
    }
    if let Some(n) = path.strip_prefix("/sized/") {
        let n: usize = n.parse().unwrap_or(0);
        return full(
            200,
            &[("cache-control", "max-age=3600".into())],
            "s".repeat(n),
        );
    }
    if path.starts_with("/short/") {
        return full(
            200,
            &[("cache-control", "max-age=1".into())],
            format!("short {path}"),
        );
    }
    if path.starts_with("/nostore/") {
        return full(
            200,
            &[("cache-control", "no-store".into())],
            format!("nostore {path}"),
        );
    }
    full(
        200,
        &[
            ("cache-control", "max-age=3600".into()),
            ("last-modified", LM.into()),
        ],
        format!("content of {path}"),
    )
}

fn futures_stream(
    n: u64,
    chunk: Bytes,
    st: Arc<OriginState>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::unfold(0u64, move |i| {
        let chunk = chunk.clone();
        let st = st.clone();
        async move {
            if i >= n {
                return None;
            }
            st.body_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Some((Ok(Frame::data(chunk)), i + 1))
        }
    })
}

/// Starts the origin on a free loopback port in a background runtime.
fn start_origin() -> (SocketAddr, Arc<OriginState>) {
    start_origin_tls(None)
}

/// Starts the origin, over TLS when an acceptor is given.
fn start_origin_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<OriginState>) {
    let st = Arc::new(OriginState::default());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let st2 = st.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let st = st2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(origin_handle(st, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = match tls {
                        Some(acc) => match acc.accept(s).await {
                            Ok(s) => builder.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await,
                            Err(_) => return,
                        },
                        None => builder.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await,
                    };
                });
            }
        });
    });
    (addr, st)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory under the system temp dir, removed when the test ends (pass or fail).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("udn-edge-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

struct EdgeProc {
    child: Child,
    addr: SocketAddr,
    /// The admin listener and the credentials that may call it.
    admin: Option<(SocketAddr, Pki)>,
}

/// An instance CA made with the real `udn control enroll`, and credentials of several
/// roles issued by it.
#[derive(Clone)]
struct Pki {
    dir: Arc<TempDir>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let pki = Pki {
            dir: Arc::new(tempdir(name)),
        };
        for (role, name) in [
            ("edge", "fra"),
            ("control", "control"),
            ("probe", "fra"),
            ("edge", "nyc"),
        ] {
            pki.enroll(role, name);
        }
        pki
    }

    /// Issues `role`/`name` into `<dir>/<role>-<name>` (SAN 127.0.0.1).
    fn enroll(&self, role: &str, name: &str) -> PathBuf {
        let out = self.dir.join(format!("{role}-{name}"));
        let st = Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["control", "enroll", role, name, "--san", "127.0.0.1"])
            .arg("--out")
            .arg(&out)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "udn control enroll {role} {name}");
        out
    }

    fn creds(&self, which: &str) -> PathBuf {
        self.dir.join(which)
    }
}

impl EdgeProc {
    fn start(args: &[&str]) -> EdgeProc {
        Self::start_inner(args, None)
    }

    /// An edge with an admin listener on a free port, enrolled as `edge/fra` of `pki`.
    fn start_admin(args: &[&str], pki: &Pki) -> EdgeProc {
        Self::start_inner(args, Some(pki))
    }

    fn start_inner(args: &[&str], pki: Option<&Pki>) -> EdgeProc {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: Option<SocketAddr> =
            pki.map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_udn"));
        cmd.arg("edge")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args);
        if let (Some(a), Some(p)) = (admin, pki) {
            cmd.arg("--admin-listen")
                .arg(a.to_string())
                .arg("--pki")
                .arg(p.creds("edge-fra"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start udn edge");
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in std::iter::once(addr).chain(admin) {
            while std::net::TcpStream::connect(a).is_err() {
                assert!(Instant::now() < deadline, "udn edge did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        EdgeProc {
            child,
            addr,
            admin: admin.zip(pki.cloned()),
        }
    }

    /// A request to the admin listener with the credentials in `<pki>/<who>` (`None`:
    /// no client certificate; the server is verified against the instance CA either
    /// way). `None` back when there was no HTTP answer (refused handshake).
    fn admin_as(&self, who: Option<&str>, path: &str, body: Option<&str>) -> Option<Got> {
        let (addr, pki) = self.admin.as_ref().expect("an edge with an admin listener");
        let mut c = Command::new("curl");
        c.args(["-s", "-D", "-", "--max-time", "30", "--cacert"])
            .arg(pki.creds("edge-fra").join("ca.pem"));
        if let Some(w) = who {
            let d = pki.creds(w);
            c.arg("--cert")
                .arg(d.join("cert.pem"))
                .arg("--key")
                .arg(d.join("key.pem"));
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data", b]);
        }
        let out = c
            .arg(format!("https://{addr}{path}"))
            .output()
            .expect("curl");
        out.status.success().then(|| parse_curl(&out.stdout))
    }

    /// A request to the admin listener as the control plane.
    fn admin(&self, path: &str, body: Option<&str>) -> Got {
        self.admin_as(Some("control-control"), path, body)
            .expect("the admin listener answers the control plane")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One curl request: (status, headers lower-cased, body).
struct Got {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Got {
    fn cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map(String::as_str)
            .unwrap_or("")
    }
}

fn curl(url: &str, headers: &[&str]) -> Got {
    curl_m(url, headers, &[])
}

fn curl_m(url: &str, headers: &[&str], extra: &[&str]) -> Got {
    let mut c = Command::new("curl");
    c.args(["-s", "-D", "-", "--max-time", "30"]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.args(extra).arg(url);
    let out = c.output().expect("curl");
    parse_curl(&out.stdout)
}

fn parse_curl(raw: &[u8]) -> Got {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Got {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A purge on the edge's admin listener, as the control plane.
fn purge(edge: &EdgeProc, scope: &str, target: &str, seq: u64) -> u16 {
    let body = format!(r#"{{"scope":"{scope}","target":"{target}","seq":{seq}}}"#);
    edge.admin("/v1/purge", Some(&body)).status
}

fn network_toml(dir: &Path, origin: SocketAddr, check: u64) -> PathBuf {
    let p = dir.join("network.toml");
    std::fs::write(
        &p,
        format!(
            r#"
# The test origins run on loopback, which customer destinations may not reach by
# default.
[security]
allow_target_ranges = ["127.0.0.0/8"]
[[services]]
name = "http"
[[customers]]
name = "test"
[[pops]]
name = "fra"
location = {{ lat = 50.0, lon = 8.0 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.1"] }}]
[[cdn]]
hostname = "cdn.test.example"
customer = "test"
origins = ["www.test.example", "img.test.example"]
origin_urls = ["http://{origin}", "http://{origin}"]
check_interval_secs = {check}
"#
        ),
    )
    .unwrap();
    p
}

#[test]
fn miss_then_hit_with_age_and_access_log() {
    let (origin, st) = start_origin();
    let logs = tempdir("logs");
    let pki = Pki::new("logs-pki");
    let mut edge = EdgeProc::start_admin(
        &[
            "--origin",
            &format!("http://{origin}"),
            "--log-dir",
            logs.to_str().unwrap(),
            "--pop",
            "fra",
        ],
        &pki,
    );
    let a = curl(&edge.url("/static/a.txt"), &[]);
    assert_eq!(a.status, 200);
    assert_eq!(a.cache(), "MISS");
    assert_eq!(a.body, b"content of /static/a.txt");
    assert!(a.headers.contains_key("age"));
    std::thread::sleep(Duration::from_millis(1100));
    let b = curl(&edge.url("/static/a.txt"), &[]);
    assert_eq!(b.cache(), "HIT");
    assert_eq!(b.body, a.body);
    assert!(b.headers["age"].parse::<u64>().unwrap() >= 1);
    assert_eq!(st.count("/static/a.txt"), 1);
    // no-store responses are passed through every time.
    assert_eq!(curl(&edge.url("/nostore/x"), &[]).cache(), "BYPASS");
    assert_eq!(curl(&edge.url("/nostore/x"), &[]).cache(), "BYPASS");
    assert_eq!(st.count("/nostore/x"), 2);
    // Metrics (on the admin listener) count what happened.
    let m = String::from_utf8(edge.admin("/metrics", None).body).unwrap();
    assert!(
        m.contains(r#"udn_edge_requests_total{outcome="hit"} 1"#),
        "{m}"
    );
    assert!(m.contains("udn_edge_origin_fetches_total 3"), "{m}");
    edge.interrupt();
    let mut records = Vec::new();
    for e in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for l in text.lines().skip(1) {
            records.push(udn_core::log::LogRecord::from_line(l).unwrap());
        }
    }
    let http: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            udn_core::log::LogRecord::Http(h) => Some(h),
            _ => None,
        })
        .collect();
    assert!(http.len() >= 4, "{records:?}");
    assert!(http.iter().any(|h| h.outcome == "hit"
        && h.path == "/static/a.txt"
        && h.bytes == 24
        && h.pop == "fra"));
    // The cache fill is the fill's own record (one per origin fetch); the client
    // records carry none.
    assert!(
        http.iter().any(|h| h.outcome == "fill"
            && h.status == 200
            && h.fill_bytes == 24
            && h.bytes == 0
            && h.client.is_unspecified()),
        "{http:?}"
    );
    assert!(
        http.iter()
            .any(|h| h.outcome == "miss" && h.status == 200 && h.fill_bytes == 0),
        "{http:?}"
    );
    assert!(http.iter().any(|h| h.outcome == "hit" && h.fill_bytes == 0));
}

#[test]
fn revalidation_with_if_modified_since_and_check_interval() {
    let (origin, st) = start_origin();
    let dir = tempdir("reval");
    let cfg = network_toml(&dir, origin, 2);
    let edge = EdgeProc::start(&["--config", cfg.to_str().unwrap(), "--pop", "fra"]);
    let host = "Host: cdn.test.example";
    // Stale by HTTP rules (max-age=1): revalidated with If-Modified-Since, 304, body not re-sent.
    let a = curl(&edge.url("/www.test.example/lmshort/a"), &[host]);
    assert_eq!(a.cache(), "MISS");
    let bytes_after_fill = st.body_bytes.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1200));
    let b = curl(&edge.url("/www.test.example/lmshort/a"), &[host]);
    assert_eq!(b.cache(), "REVALIDATED");
    assert_eq!(b.body, a.body);
    assert_eq!(st.not_modified.load(Ordering::Relaxed), 1);
    assert_eq!(
        st.body_bytes.load(Ordering::Relaxed),
        bytes_after_fill,
        "the body was re-sent"
    );
    // Fresh by HTTP (max-age=3600) but older than the customer's 2 s check interval.
    let c = curl(&edge.url("/www.test.example/lm/b"), &[host]);
    assert_eq!(c.cache(), "MISS");
    assert_eq!(
        curl(&edge.url("/lm/b"), &[host]).cache(),
        "HIT",
        "virtual hosting shares the key"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let d = curl(&edge.url("/www.test.example/lm/b"), &[host]);
    assert_eq!(d.cache(), "REVALIDATED");
    assert_eq!(st.not_modified.load(Ordering::Relaxed), 2);
    assert_eq!(
        curl(&edge.url("/www.test.example/lm/b"), &[host]).cache(),
        "HIT"
    );
    assert_eq!(st.count("/lm/b"), 2);
}

#[test]
fn purge_url_directory_and_domain() {
    let (origin, st) = start_origin();
    let dir = tempdir("purge");
    let cfg = network_toml(&dir, origin, 3600);
    let pki = Pki::new("purge-pki");
    let edge = EdgeProc::start_admin(&["--config", cfg.to_str().unwrap(), "--pop", "fra"], &pki);
    let host = "Host: cdn.test.example";
    let paths = [
        "/www.test.example/static/img/a.gif",
        "/www.test.example/static/img/b.gif",
        "/www.test.example/static/css/c.css",
        "/img.test.example/static/img/a.gif",
    ];
    for p in paths {
        assert_eq!(curl(&edge.url(p), &[host]).cache(), "MISS");
        assert_eq!(curl(&edge.url(p), &[host]).cache(), "HIT");
    }
    let state = |edge: &EdgeProc| -> Vec<String> {
        paths
            .iter()
            .map(|p| curl(&edge.url(p), &[host]).cache().to_string())
            .collect()
    };
    assert_eq!(
        purge(&edge, "url", "http://www.test.example/static/img/a.gif", 1),
        200
    );
    assert_eq!(state(&edge), ["MISS", "HIT", "HIT", "HIT"]);
    assert_eq!(
        purge(&edge, "prefix", "http://www.test.example/static/img/", 2),
        200
    );
    assert_eq!(state(&edge), ["MISS", "MISS", "HIT", "HIT"]);
    // The CDN-hostname form of a URL names the same objects.
    assert_eq!(purge(&edge, "domain", "http://www.test.example/", 3), 200);
    assert_eq!(state(&edge), ["MISS", "MISS", "MISS", "HIT"]);
    // A repeated sequence number is a no-op.
    assert_eq!(purge(&edge, "domain", "http://www.test.example/", 3), 200);
    assert_eq!(state(&edge), ["HIT", "HIT", "HIT", "HIT"]);
    assert_eq!(st.count("/static/img/a.gif"), 5);
    // The CDN-hostname forms: a URL with the origin in the path, and a whole CDN
    // hostname (every one of its origin domains).
    let b_via_cdn = "http://cdn.test.example/www.test.example/static/img/b.gif";
    assert_eq!(purge(&edge, "url", b_via_cdn, 4), 200);
    assert_eq!(state(&edge), ["HIT", "MISS", "HIT", "HIT"]);
    assert_eq!(purge(&edge, "domain", "http://cdn.test.example/", 5), 200);
    assert_eq!(state(&edge), ["MISS", "MISS", "MISS", "MISS"]);
    let since = String::from_utf8(edge.admin("/v1/purges?since=1", None).body).unwrap();
    assert!(
        since.contains(r#""seq":2"#)
            && since.contains(r#""seq":3"#)
            && !since.contains(r#""seq":1"#),
        "{since}"
    );
}

#[test]
fn unconfigured_origin_is_refused() {
    let (origin, st) = start_origin();
    let dir = tempdir("refuse");
    let cfg = network_toml(&dir, origin, 3600);
    let edge = EdgeProc::start(&["--config", cfg.to_str().unwrap(), "--pop", "fra"]);
    let r = curl(&edge.url("/static/x"), &["Host: evil.example"]);
    assert_eq!(
        (r.status, r.cache(), r.headers["age"].as_str()),
        (403, "BYPASS", "0")
    );
    let r = curl_m(
        &edge.url("/static/x"),
        &[],
        &["--proxy", &format!("http://{}", edge.addr)],
    );
    assert_eq!(
        r.status, 403,
        "absolute-form proxy request to an unconfigured host"
    );
    assert_eq!(st.count("/static/x"), 0);
    // The customer's own name (virtual hosting) is served.
    assert_eq!(
        curl(&edge.url("/static/x"), &["Host: img.test.example"]).status,
        200
    );
}

#[test]
fn coalescing_100_concurrent_misses() {
    let (origin, st) = start_origin();
    // 100 clients on one address: above the default per-address cap (64).
    let edge = EdgeProc::start(&[
        "--origin",
        &format!("http://{origin}"),
        "--max-connections-per-client",
        "128",
    ]);
    let url = edge.url("/slow/c1");
    let kids: Vec<_> = (0..100)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "--max-time", "30", &url])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert_eq!(out.stdout, b"content of /slow/c1");
    }
    assert_eq!(st.count("/slow/c1"), 1);
}

#[test]
fn range_and_vary() {
    let (origin, st) = start_origin();
    let edge = EdgeProc::start(&["--origin", &format!("http://{origin}")]);
    // Range on a miss and on a hit.
    let r = curl(&edge.url("/static/range"), &["Range: bytes=2-5"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &b"content of /static/range"[2..=5]);
    assert_eq!(r.headers["content-range"], "bytes 2-5/24");
    let r = curl(&edge.url("/static/range"), &["Range: bytes=-3"]);
    assert_eq!((r.status, r.cache()), (206, "HIT"));
    assert_eq!(r.body, b"nge");
    assert_eq!(
        curl(&edge.url("/static/range"), &["Range: bytes=99-"]).status,
        416
    );
    assert_eq!(st.count("/static/range"), 1);
    // Vary: one stored variant per Accept-Language.
    let en = curl(&edge.url("/vary"), &["Accept-Language: en"]);
    let de = curl(&edge.url("/vary"), &["Accept-Language: de"]);
    assert_eq!(
        (en.body.as_slice(), de.body.as_slice()),
        (&b"lang=en"[..], &b"lang=de"[..])
    );
    let en2 = curl(&edge.url("/vary"), &["Accept-Language: en"]);
    let de2 = curl(&edge.url("/vary"), &["Accept-Language: de"]);
    assert_eq!((en2.cache(), en2.body.as_slice()), ("HIT", &b"lang=en"[..]));
    assert_eq!((de2.cache(), de2.body.as_slice()), ("HIT", &b"lang=de"[..]));
    assert_eq!(st.count("/vary"), 2);
}

#[test]
fn restart_keeps_the_disk_tier() {
    let (origin, st) = start_origin();
    let disk = tempdir("disk");
    let origin_url = format!("http://{origin}");
    let pki = Pki::new("disk-pki");
    let args = [
        "--origin",
        &origin_url,
        "--disk-dir",
        disk.to_str().unwrap(),
    ];
    let edge = EdgeProc::start_admin(&args, &pki);
    assert_eq!(curl(&edge.url("/static/keep"), &[]).cache(), "MISS");
    assert_eq!(curl(&edge.url("/static/gone"), &[]).cache(), "MISS");
    std::thread::sleep(Duration::from_millis(500)); // the write-through is asynchronous
    let key = format!("http://{origin}/static/gone");
    assert_eq!(purge(&edge, "url", &key, 7), 200);
    drop(edge); // SIGKILL: no graceful shutdown
    let edge = EdgeProc::start_admin(&args, &pki);
    let r = curl(&edge.url("/static/keep"), &[]);
    assert_eq!(
        (r.cache(), r.body.as_slice()),
        ("HIT", &b"content of /static/keep"[..])
    );
    assert_eq!(st.count("/static/keep"), 1);
    // The purge journal survives too: the purged object is not revived.
    assert_eq!(curl(&edge.url("/static/gone"), &[]).cache(), "MISS");
    assert_eq!(st.count("/static/gone"), 2);
    let _ = std::fs::remove_dir_all(&disk);
}

/// The files under `dir`, recursively, with their sizes.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        if md.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push((e.path(), md.len()));
        }
    }
    out
}

/// The disk tier's metadata files by the key each holds.
fn meta_files(disk: &Path) -> HashMap<String, PathBuf> {
    files_under(&disk.join("objects"))
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "meta"))
        .map(|(p, _)| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (v["key"].as_str().unwrap().to_string(), p)
        })
        .collect()
}

/// Compressed variants (Vary: Accept-Encoding) stay hits after a restart, and a purge
/// made before a restart stays in force after the journal was compacted into the
/// snapshot (twice: the second start has only the snapshot).
#[test]
fn restart_keeps_vary_variants_and_compacted_purges() {
    let (origin, st) = start_origin();
    let disk = tempdir("vary-restart");
    let origin_url = format!("http://{origin}");
    let pki = Pki::new("vary-restart-pki");
    let args = [
        "--origin",
        &origin_url,
        "--disk-dir",
        disk.to_str().unwrap(),
    ];
    let encodings = ["Accept-Encoding: gzip", "Accept-Encoding: br", "X-None: 1"];
    let expect = |h: &str| match h {
        "Accept-Encoding: gzip" => "gzip-encoded /enc/a".to_string(),
        "Accept-Encoding: br" => "br-encoded /enc/a".to_string(),
        _ => "-encoded /enc/a".to_string(),
    };
    let edge = EdgeProc::start_admin(&args, &pki);
    for h in encodings {
        let r = curl(&edge.url("/enc/a"), &[h]);
        assert_eq!(
            (r.cache(), r.body.clone()),
            ("MISS", expect(h).into_bytes())
        );
    }
    for h in encodings {
        assert_eq!(curl(&edge.url("/enc/a"), &[h]).cache(), "HIT");
    }
    assert_eq!(curl(&edge.url("/static/gone"), &[]).cache(), "MISS");
    std::thread::sleep(Duration::from_millis(500)); // the write-through is asynchronous
    let key = format!("http://{origin}/static/gone");
    assert_eq!(purge(&edge, "url", &key, 7), 200);
    let journal = disk.join("purges.jsonl");
    let snapshot = disk.join("purges.snapshot.json");
    let lines = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(
        !std::fs::read_to_string(&snapshot)
            .unwrap()
            .contains("/static/gone")
    );
    drop(edge); // SIGKILL: no graceful shutdown
    let edge = EdgeProc::start_admin(&args, &pki);
    // Compacted at start: the journal is empty, the purge is in the snapshot.
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    let snap = std::fs::read_to_string(&snapshot).unwrap();
    assert!(
        snap.contains("/static/gone") || snap.contains(r#""gone""#),
        "{snap}"
    );
    for h in encodings {
        let r = curl(&edge.url("/enc/a"), &[h]);
        assert_eq!(
            (r.cache(), r.body.clone()),
            ("HIT", expect(h).into_bytes()),
            "{h} after a restart"
        );
    }
    drop(edge);
    // The second start replays nothing: the snapshot alone keeps the purge.
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    let edge = EdgeProc::start_admin(&args, &pki);
    for h in encodings {
        assert_eq!(curl(&edge.url("/enc/a"), &[h]).cache(), "HIT", "{h}");
    }
    assert_eq!(st.count("/enc/a"), 3);
    let r = curl(&edge.url("/static/gone"), &[]);
    assert_eq!(r.cache(), "MISS", "the purged object was revived");
    assert_eq!(st.count("/static/gone"), 2);
    // The catch-up log survives too.
    let since = String::from_utf8(edge.admin("/v1/purges?since=0", None).body).unwrap();
    assert!(since.contains(r#""seq":7"#), "{since}");
}

/// A metadata file that holds another key's metadata (what a hash collision would
/// produce) or garbage is a miss, never another key's body; temp files and bodies no
/// metadata names are removed at start.
#[test]
fn disk_tier_mismatched_metadata_is_a_miss_and_orphans_are_removed() {
    let (origin, st) = start_origin();
    let disk = tempdir("disk-mismatch");
    let origin_url = format!("http://{origin}");
    let args = [
        "--origin",
        &origin_url,
        "--disk-dir",
        disk.to_str().unwrap(),
    ];
    let edge = EdgeProc::start(&args);
    for p in ["/static/a", "/static/b", "/static/c"] {
        assert_eq!(curl(&edge.url(p), &[]).cache(), "MISS");
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(edge);
    let metas = meta_files(&disk);
    let key = |p: &str| format!("http://{origin}{p}");
    assert_eq!(metas.len(), 3, "{metas:?}");
    std::fs::copy(&metas[&key("/static/a")], &metas[&key("/static/b")]).unwrap();
    std::fs::write(&metas[&key("/static/c")], b"{\"v\":2,\"key\":").unwrap();
    let objects = disk.join("objects");
    let orphans = [
        objects.join("tmp-4242.body"),
        objects.join(format!("{}-9999.body", "ab".repeat(32))),
        objects.join("stray-file"),
    ];
    for o in &orphans {
        std::fs::write(o, b"left by a crash").unwrap();
    }
    let before = files_under(&objects).len();
    let edge = EdgeProc::start(&args);
    for o in &orphans {
        assert!(!o.exists(), "{} left at start", o.display());
    }
    // a's two files stay; b's and c's four go with the three orphans.
    let left = files_under(&objects);
    assert_eq!((before, left.len()), (9, 2), "{left:?}");
    let a = curl(&edge.url("/static/a"), &[]);
    assert_eq!(
        (a.cache(), a.body.clone()),
        ("HIT", b"content of /static/a".to_vec())
    );
    let b = curl(&edge.url("/static/b"), &[]);
    assert_eq!(
        (b.cache(), b.body.clone()),
        ("MISS", b"content of /static/b".to_vec())
    );
    let c = curl(&edge.url("/static/c"), &[]);
    assert_eq!(
        (c.cache(), c.body.clone()),
        ("MISS", b"content of /static/c".to_vec())
    );
    assert_eq!(
        (
            st.count("/static/a"),
            st.count("/static/b"),
            st.count("/static/c")
        ),
        (1, 2, 2)
    );
}

#[test]
fn tiers_are_bounded() {
    let (origin, st) = start_origin();
    let disk = tempdir("bounded");
    let pki = Pki::new("bounded-pki");
    let edge = EdgeProc::start_admin(
        &[
            "--origin",
            &format!("http://{origin}"),
            "--disk-dir",
            disk.to_str().unwrap(),
            "--disk-mb",
            "1",
            "--memory-mb",
            "1",
        ],
        &pki,
    );
    // 10 objects of 300 KiB: larger than the 128 KiB memory-object limit; 3 fit on disk.
    for i in 0..10 {
        let r = curl(&edge.url(&format!("/sized/{}", 300 * 1024 + i)), &[]);
        assert_eq!((r.status, r.body.len()), (200, 300 * 1024 + i));
    }
    // The last fill moves its temp file into place just after the client got it.
    std::thread::sleep(Duration::from_millis(300));
    let on_disk: u64 = files_under(&disk).iter().map(|(_, n)| n).sum();
    assert!(
        on_disk <= (1 << 20) + 64 * 1024,
        "disk tier holds {on_disk} bytes"
    );
    let m = String::from_utf8(edge.admin("/metrics", None).body).unwrap();
    let disk_bytes: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("udn_edge_disk_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(disk_bytes > 0 && disk_bytes <= 1 << 20, "{disk_bytes}");
    // The most recent object is still a hit; the first was evicted.
    assert_eq!(
        curl(&edge.url(&format!("/sized/{}", 300 * 1024 + 9)), &[]).cache(),
        "HIT"
    );
    assert_eq!(
        curl(&edge.url(&format!("/sized/{}", 300 * 1024)), &[]).cache(),
        "MISS"
    );
    assert_eq!(st.count(&format!("/sized/{}", 300 * 1024)), 2);
    let _ = std::fs::remove_dir_all(&disk);
    // Without a disk tier, an object above the memory-object limit streams through
    // uncached.
    let no_disk = EdgeProc::start(&["--origin", &format!("http://{origin}"), "--memory-mb", "1"]);
    for _ in 0..2 {
        let r = curl(&no_disk.url("/sized/1000000"), &[]);
        assert_eq!(
            (r.status, r.cache(), r.body.len()),
            (200, "MISS", 1_000_000)
        );
    }
    assert_eq!(st.count("/sized/1000000"), 2);
}

#[test]
fn stale_while_revalidate_and_prefill() {
    let (origin, st) = start_origin();
    let dir = tempdir("swr");
    let cfg = network_toml(&dir, origin, 3600);
    let pki = Pki::new("swr-pki");
    let edge = EdgeProc::start_admin(&["--config", cfg.to_str().unwrap(), "--pop", "fra"], &pki);
    let host = "Host: cdn.test.example";
    assert_eq!(curl(&edge.url("/swr/a"), &[host]).cache(), "MISS");
    std::thread::sleep(Duration::from_millis(2200));
    let r = curl(&edge.url("/swr/a"), &[host]);
    assert_eq!(
        (r.cache(), r.body.as_slice()),
        ("STALE", &b"swr /swr/a"[..])
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while st.count("/swr/a") < 2 {
        assert!(Instant::now() < deadline, "no background revalidation");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The revalidated response is stored right after the origin answered; poll
    // (bounded) rather than guess how long that takes on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcome = curl(&edge.url("/swr/a"), &[host]).cache().to_string();
        if outcome == "HIT" {
            break;
        }
        assert_eq!(outcome, "STALE");
        assert!(Instant::now() < deadline, "revalidated entry never stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Prefill: fetched before anyone asks, then served as hits.
    let body = r#"{"urls":["http://cdn.test.example/www.test.example/static/p1","http://img.test.example/static/p2","http://evil.example/x"]}"#;
    // A prefill from a probe's certificate is refused and fetches nothing.
    let r = edge.admin_as(Some("probe-fra"), "/v1/prefill", Some(body));
    assert_eq!(r.map(|r| r.status), Some(403));
    assert_eq!(st.count("/static/p1"), 0);
    let r = edge.admin("/v1/prefill", Some(body));
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(text.matches(r#""outcome":"stored""#).count(), 2, "{text}");
    assert!(text.contains("not served by this edge"), "{text}");
    assert_eq!(st.count("/static/p1"), 1);
    assert_eq!(curl(&edge.url("/static/p1"), &[host]).cache(), "HIT");
    assert_eq!(
        curl(&edge.url("/img.test.example/static/p2"), &[host]).cache(),
        "HIT"
    );
}

fn self_signed(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-subj")
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    (cert, key)
}

#[test]
fn https_by_sni_and_http2() {
    let (origin, _st) = start_origin();
    let dir = tempdir("tls");
    let cfg = network_toml(&dir, origin, 3600);
    let (c1, k1) = self_signed(&dir, "cdn.test.example");
    let (c2, k2) = self_signed(&dir, "img.test.example");
    let tls_port = free_port();
    let edge = EdgeProc::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--pop",
        "fra",
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--tls-cert",
        &format!("cdn.test.example={}:{}", c1.display(), k1.display()),
        "--tls-cert",
        &format!("img.test.example={}:{}", c2.display(), k2.display()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each hostname gets its own certificate (curl trusts only that one), and ALPN
    // negotiates HTTP/2.
    for (host, cert, path) in [
        ("cdn.test.example", &c1, "/www.test.example/static/s"),
        ("img.test.example", &c2, "/static/s"),
    ] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg("--resolve")
            .arg(format!("{host}:{tls_port}:127.0.0.1"))
            .arg("--cacert")
            .arg(cert)
            .arg(format!("https://{host}:{tls_port}{path}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200", "{host}");
    }
    // HTTP/2 over cleartext (prior knowledge) on the plain port.
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(edge.url("/static/s"))
        .args(["-H", "Host: img.test.example"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn origin_down_stale_where_allowed_else_502_or_504() {
    let (origin, st) = start_origin();
    let edge = EdgeProc::start(&[
        "--origin",
        &format!("http://{origin}"),
        "--origin-timeout-ms",
        "500",
        "--check-interval-secs",
        "1",
    ]);
    assert_eq!(curl(&edge.url("/sie/a"), &[]).cache(), "MISS");
    assert_eq!(curl(&edge.url("/short/a"), &[]).cache(), "MISS");
    assert_eq!(curl(&edge.url("/static/fresh"), &[]).cache(), "MISS");
    std::thread::sleep(Duration::from_millis(1200));
    st.down.store(true, Ordering::Relaxed);
    let r = curl(&edge.url("/sie/a"), &[]);
    assert_eq!(
        (r.status, r.cache(), r.body.as_slice()),
        (200, "STALE", &b"sie /sie/a"[..])
    );
    let r = curl(&edge.url("/short/a"), &[]);
    assert_eq!(r.status, 502, "no stale-if-error: a clear 502");
    // Fresh by HTTP, due only for the periodic check: served while the origin is down.
    let r = curl(&edge.url("/static/fresh"), &[]);
    assert_eq!((r.status, r.cache()), (200, "STALE"));
    assert_eq!(
        st.count("/static/fresh"),
        2,
        "the periodic check did try the origin"
    );
    st.down.store(false, Ordering::Relaxed);
    // A slow origin: 504 after the timeout.
    assert_eq!(curl(&edge.url("/hang/x"), &[]).status, 504);
    // An origin that is not listening at all: 502.
    let dead = EdgeProc::start(&["--origin", &format!("http://127.0.0.1:{}", free_port())]);
    assert_eq!(curl(&dead.url("/x"), &[]).status, 502);
}

#[test]
fn large_object_streams_with_flat_memory() {
    let (origin, st) = start_origin();
    let disk = tempdir("big");
    let edge = EdgeProc::start(&[
        "--origin",
        &format!("http://{origin}"),
        "--disk-dir",
        disk.to_str().unwrap(),
        "--memory-mb",
        "64",
    ]);
    let base = edge.rss_kib();
    for round in ["MISS", "HIT"] {
        if round == "HIT" {
            // The commit (body fsynced, metadata renamed into place) follows the last
            // byte to the client; 256 MiB take a moment to reach the disk.
            let deadline = Instant::now() + Duration::from_secs(60);
            while meta_files(&disk).is_empty() {
                assert!(Instant::now() < deadline, "the object was not committed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let mut c = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-w",
                "%{size_download}",
                "--max-time",
                "300",
                &edge.url("/big"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut peak = 0;
        while c.try_wait().unwrap().is_none() {
            peak = peak.max(edge.rss_kib());
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with(&BIG.to_string()), "{round}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("x-cache: {}", round.to_ascii_lowercase())),
            "{text}"
        );
        let grew = peak.saturating_sub(base);
        eprintln!(
            "large object {round}: edge RSS base {base} KiB, peak {peak} KiB, grew {grew} KiB"
        );
        assert!(
            grew < 64 * 1024,
            "{round}: RSS grew by {grew} KiB for a 256 MiB object"
        );
    }
    assert_eq!(st.count("/big"), 1);
    drop(edge);
    let _ = std::fs::remove_dir_all(&disk);
}

/// A customer origin named by a hostname that resolves into the provider's own network
/// (`localhost`: loopback, where a real server listens) passes the accept-time check,
/// which sees only a name; the edge resolves it at fetch time, refuses every address,
/// never connects, and answers 502 with the reason. The same network with the operator
/// allow list is fetched, so the refusal is the policy's doing.
#[test]
fn origin_resolving_to_loopback_is_refused_at_fetch_time() {
    let (origin, st) = start_origin();
    let dir = tempdir("ssrf");
    let write = |allow: &str| {
        let p = dir.join("network.toml");
        std::fs::write(
            &p,
            format!(
                r#"
{allow}
[[services]]
name = "http"
[[customers]]
name = "test"
[[pops]]
name = "fra"
location = {{ lat = 50.0, lon = 8.0 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.1"] }}]
[[cdn]]
hostname = "cdn.test.example"
customer = "test"
origins = ["www.test.example"]
origin_urls = ["http://localhost:{port}"]
"#,
                port = origin.port()
            ),
        )
        .unwrap();
        p
    };
    let cfg = write("");
    let edge = EdgeProc::start(&["--config", cfg.to_str().unwrap(), "--pop", "fra"]);
    for path in ["/secret/a", "/nostore/b"] {
        let r = curl(&edge.url(path), &["Host: cdn.test.example"]);
        assert_eq!(
            r.status,
            502,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.headers["x-udn-origin-refused"], "loopback");
        assert!(!String::from_utf8_lossy(&r.body).contains("content of"));
        assert_eq!(st.count(path), 0, "{path} reached the origin");
    }
    drop(edge);
    let cfg = write("[security]\nallow_target_ranges = [\"127.0.0.0/8\", \"::1/128\"]");
    let edge = EdgeProc::start(&["--config", cfg.to_str().unwrap(), "--pop", "fra"]);
    let r = curl(&edge.url("/secret/a"), &["Host: cdn.test.example"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"content of /secret/a");
    assert_eq!(st.count("/secret/a"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_routes() {
    let (origin, st) = start_origin();
    let dir = tempdir("reload");
    let cfg = network_toml(&dir, origin, 3600);
    let edge = EdgeProc::start(&["--config", cfg.to_str().unwrap(), "--pop", "fra"]);
    assert_eq!(
        curl(&edge.url("/static/r"), &["Host: new.test.example"]).status,
        403
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[[cdn]]\nhostname = \"new.test.example\"\ncustomer = \"test\"\norigins = [\"new-origin.test.example\"]\norigin_urls = [\"http://{origin}\"]\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    let _ = Command::new("kill")
        .arg("-HUP")
        .arg(edge.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = curl(&edge.url("/static/r"), &["Host: new.test.example"]);
        if r.status == 200 {
            assert_eq!(r.body, b"content of /static/r");
            break;
        }
        assert!(Instant::now() < deadline, "routes not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old hostname still works and kept its cache.
    assert_eq!(
        curl(&edge.url("/static/r"), &["Host: cdn.test.example"]).cache(),
        "MISS"
    );
    assert_eq!(
        curl(&edge.url("/static/r"), &["Host: cdn.test.example"]).cache(),
        "HIT"
    );
    assert_eq!(st.count("/static/r"), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_origin_with_private_ca() {
    let dir = tempdir("tls-origin");
    // A private CA and two leaf certificates signed by it: one for the address
    // 127.0.0.1, one for the name www.test.example only.
    let ca = dir.join("ca.crt");
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &[
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=UDN test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ][..],
        &ec,
    ]
    .concat());
    let leaf = |name: &str, san: &str| -> tokio_rustls::TlsAcceptor {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.cnf"),
        );
        run(&[
            &[
                "req",
                "-new",
                "-subj",
                "/CN=origin",
                "-keyout",
                &key,
                "-out",
                &csr,
            ][..],
            &ec,
        ]
        .concat());
        std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        use rustls_pki_types::pem::PemObject as _;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(dir.join(&crt))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let pk = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join(&key)).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, pk)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    };
    let by_name = leaf("by-name", "DNS:www.test.example");
    let (named_origin, named_st) = start_origin_tls(Some(by_name));
    let (origin, st) = start_origin_tls(Some(leaf("by-ip", "IP:127.0.0.1")));
    let url = format!("https://127.0.0.1:{}", origin.port());
    // Without the private CA the origin's certificate is not trusted: 502.
    let untrusting = EdgeProc::start(&["--origin", &url]);
    assert_eq!(curl(&untrusting.url("/static/t"), &[]).status, 502);
    let edge = EdgeProc::start(&["--origin", &url, "--origin-ca", ca.to_str().unwrap()]);
    let r = curl(&edge.url("/static/t"), &[]);
    assert_eq!(
        (r.status, r.cache(), r.body.as_slice()),
        (200, "MISS", &b"content of /static/t"[..])
    );
    assert_eq!(curl(&edge.url("/static/t"), &[]).cache(), "HIT");
    assert_eq!(st.count("/static/t"), 1);
    // Network mode, origin fetched by address (origin_urls = https://127.0.0.1:port):
    // TLS names and verifies the origin domain, so www.test.example (in the
    // certificate) works and img.test.example (not in it) is refused.
    let named_url = format!("https://127.0.0.1:{}", named_origin.port());
    let cfg = network_toml(&dir, "127.0.0.1:1".parse().unwrap(), 3600);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("http://127.0.0.1:1", &named_url);
    std::fs::write(&cfg, text).unwrap();
    let net = EdgeProc::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--pop",
        "fra",
        "--origin-ca",
        ca.to_str().unwrap(),
    ]);
    let host = "Host: cdn.test.example";
    let r = curl(&net.url("/www.test.example/static/n"), &[host]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"content of /static/n"[..])
    );
    assert_eq!(
        curl(&net.url("/img.test.example/static/n"), &[host]).status,
        502
    );
    assert_eq!(named_st.count("/static/n"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_invocations_fail_clearly() {
    let dir = tempdir("badargs");
    let cfg = network_toml(&dir, "127.0.0.1:9".parse().unwrap(), 60);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_udn"))
            .arg("edge")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--config", cfg.to_str().unwrap(), "--pop", "nowhere"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a POP") && err.contains("fra"), "{err}");
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--origin URL or --config FILE"), "{err}");
    // An origin of a scheme the edge cannot fetch (ftp:// it can) is refused by name.
    let (code, err) = run(&["--origin", "gopher://x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("gopher://x"), "{err}");
    // No admin listener without credentials: no default or empty credential.
    let (code, err) = run(&[
        "--origin",
        "http://127.0.0.1:9",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--pki"), "{err}");
    let (code, _) = run(&["--origin", "http://127.0.0.1:9", "--purge-token", "x"]);
    assert_eq!(code, Some(2), "--purge-token is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_conditionals_head_and_request_directives() {
    let (origin, st) = start_origin();
    let edge = EdgeProc::start(&["--origin", &format!("http://{origin}")]);
    // only-if-cached on a miss: 504 without contacting the origin.
    let r = curl(&edge.url("/lm/c"), &["Cache-Control: only-if-cached"]);
    assert_eq!(r.status, 504);
    assert_eq!(st.count("/lm/c"), 0);
    let full = curl(&edge.url("/lm/c"), &[]);
    assert_eq!((full.status, full.cache()), (200, "MISS"));
    // HEAD of a stored object: its headers, no body.
    let h = curl_m(&edge.url("/lm/c"), &[], &["-I", "-o", "/dev/null"]);
    assert_eq!((h.status, h.cache()), (200, "HIT"));
    assert_eq!(h.headers["content-length"], full.body.len().to_string());
    assert!(h.body.is_empty());
    // The client's own If-Modified-Since against the stored Last-Modified: 304.
    let r = curl(&edge.url("/lm/c"), &[&format!("If-Modified-Since: {LM}")]);
    assert_eq!((r.status, r.cache()), (304, "HIT"));
    assert!(r.body.is_empty());
    // Request no-cache: revalidated with the origin (which answers 304).
    let r = curl(&edge.url("/lm/c"), &["Cache-Control: no-cache"]);
    assert_eq!((r.status, r.cache()), (200, "REVALIDATED"));
    assert_eq!(r.body, full.body);
    assert_eq!(st.not_modified.load(Ordering::Relaxed), 1);
    // Request max-age=0 likewise; only-if-cached on a stored fresh object is a hit.
    assert_eq!(
        curl(&edge.url("/lm/c"), &["Cache-Control: max-age=0"]).cache(),
        "REVALIDATED"
    );
    assert_eq!(
        curl(&edge.url("/lm/c"), &["Cache-Control: only-if-cached"]).cache(),
        "HIT"
    );
    assert_eq!(st.count("/lm/c"), 3);
    // POST is passed through.
    let r = curl_m(&edge.url("/lm/c"), &[], &["--data", "x"]);
    assert_eq!(r.cache(), "BYPASS");
    assert_eq!(st.count("/lm/c"), 4);
}

/// The attacker's side of the admin split: on the customer listener, `/v1/purge`,
/// `/metrics` and `/v1/purges` are customer URLs (they reach the origin, nothing is
/// purged, nothing leaks); the admin listener refuses callers without a certificate, with
/// one of another role, or from another CA, and admits the control plane.
#[test]
fn admin_operations_only_on_the_admin_listener_for_control() {
    let (origin, st) = start_origin();
    let pki = Pki::new("attack-pki");
    let edge = EdgeProc::start_admin(&["--origin", &format!("http://{origin}")], &pki);
    let key = format!("http://{origin}/static/victim");
    let secret_target = format!("http://{origin}/private/secret-launch-page");
    assert_eq!(curl(&edge.url("/static/victim"), &[]).cache(), "MISS");
    assert_eq!(curl(&edge.url("/static/victim"), &[]).cache(), "HIT");
    // A real purge (as the control plane) so the journal holds a target.
    assert_eq!(purge(&edge, "url", &secret_target, 1), 200);
    let victim = || curl(&edge.url("/static/victim"), &[]).cache().to_string();

    // A stranger's purge on the customer listener is proxied to the origin.
    let body = format!(r#"{{"scope":"url","target":"{key}","seq":2}}"#);
    let r = curl_m(
        &edge.url("/v1/purge"),
        &["Content-Type: application/json"],
        &["--data", &body],
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"content of /v1/purge"[..])
    );
    assert_eq!(
        st.count("/v1/purge"),
        1,
        "the origin saw the stranger's POST"
    );
    assert_eq!(victim(), "HIT", "the stranger purged the object");
    let r = curl_m(&edge.url("/v1/prefill"), &[], &["--data", r#"{"urls":[]}"#]);
    assert_eq!(r.body, b"content of /v1/prefill");

    // Metrics and the purge journal are customer URLs too: the origin answers.
    let m = curl(&edge.url("/metrics"), &[]);
    assert_eq!(m.body, b"content of /metrics");
    assert_eq!(st.count("/metrics"), 1);
    let j = curl(&edge.url("/v1/purges?since=0"), &[]);
    let text = String::from_utf8_lossy(&j.body).into_owned();
    assert_eq!(text, "content of /v1/purges");
    assert!(!text.contains("secret-launch-page"), "{text}");
    assert_eq!(st.count("/v1/purges"), 1);

    // The admin listener: no certificate 401, edge and probe certificates 403, a
    // certificate of another CA refused in the handshake; nothing purged.
    let no_cert = edge.admin_as(None, "/v1/purge", Some(&body));
    assert_eq!(no_cert.as_ref().map(|g| g.status), Some(401));
    for who in ["edge-nyc", "probe-fra", "edge-fra"] {
        let g = edge.admin_as(Some(who), "/v1/purge", Some(&body));
        assert_eq!(g.map(|g| g.status), Some(403), "{who}");
        let g = edge.admin_as(Some(who), "/v1/purges", None);
        assert_eq!(g.map(|g| g.status), Some(403), "{who}");
        let g = edge.admin_as(Some(who), "/metrics", None);
        assert_eq!(g.map(|g| g.status), Some(403), "{who}");
    }
    let other = Pki::new("attack-other-ca");
    let foreign = other.creds("control-control");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(pki.creds("edge-fra").join("ca.pem"))
        .arg("--cert")
        .arg(foreign.join("cert.pem"))
        .arg("--key")
        .arg(foreign.join("key.pem"))
        .args(["--data", &body])
        .arg(format!(
            "https://{}/v1/purge",
            edge.admin.as_ref().unwrap().0
        ))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && code == "000",
        "a foreign CA's control certificate got HTTP {code}"
    );
    assert_eq!(victim(), "HIT");

    // The control plane purges; the journal and metrics are there for it.
    let g = edge.admin("/v1/purge", Some(&body));
    assert_eq!(g.status, 200);
    assert!(String::from_utf8_lossy(&g.body).contains(r#""applied":true"#));
    assert_eq!(victim(), "MISS");
    let j = String::from_utf8(edge.admin("/v1/purges?since=0", None).body).unwrap();
    assert!(j.contains("secret-launch-page"), "{j}");
    let m = String::from_utf8(edge.admin("/metrics", None).body).unwrap();
    assert!(m.contains("udn_edge_purges_total 2"), "{m}");
    // Bad input: a clear 400 with the reason.
    let g = edge.admin("/v1/purge", Some(r#"{"scope":"everything","target":"x"}"#));
    assert_eq!(g.status, 400);
    assert!(String::from_utf8_lossy(&g.body).contains("error"));
}
