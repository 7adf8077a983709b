//! HTTP semantics of `udn edge` (docs/edge.md "HTTP semantics"), tried from the client
//! side against the real binary on loopback: curl, reqwest and raw TCP sockets as
//! clients, and a real origin on a raw socket that records every request it parses.
//!
//! The origin is deliberately naive the way many are: it never reads a body of a GET
//! or HEAD, so a body that reached it would be parsed as a second request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// One request as the origin parsed it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Default)]
struct OriginState {
    seen: Mutex<Vec<Seen>>,
    versions: Mutex<HashMap<String, u32>>,
    cookies: AtomicU64,
}

impl OriginState {
    fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
    fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }
    fn version(&self, path: &str) -> u32 {
        *self.versions.lock().unwrap().get(path).unwrap_or(&1)
    }
}

/// The origin's answer: status, headers, body.
fn respond(st: &OriginState, r: &Seen) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let p = r.path.split('?').next().unwrap_or("").to_string();
    let etag = format!("\"v{}\"", st.version(&p));
    if r.method != "GET" && r.method != "HEAD" {
        if let Some(im) = r.header("if-match").first()
            && *im != etag
        {
            return (412, vec![("etag", etag)], b"precondition failed".to_vec());
        }
        if !r.header("x-fail").is_empty() {
            return (500, vec![], b"failed".to_vec());
        }
        *st.versions.lock().unwrap().entry(p.clone()).or_insert(1) += 1;
        let mut h = Vec::new();
        for (k, hv) in [
            ("x-location", "location"),
            ("x-content-location", "content-location"),
        ] {
            if let Some(v) = r.header(k).first() {
                h.push((hv, v.to_string()));
            }
        }
        return (201, h, b"changed".to_vec());
    }
    let base = |cc: &str| {
        vec![
            ("cache-control", cc.to_string()),
            ("etag", etag.clone()),
            ("last-modified", LM.to_string()),
        ]
    };
    if p.starts_with("/nostore/") {
        return (200, base("no-store"), format!("nostore {p}").into_bytes());
    }
    if p == "/aged" {
        let mut h = base("max-age=3600");
        h.push(("age", "100".into()));
        return (200, h, b"aged".to_vec());
    }
    if p.starts_with("/cookie/") {
        let n = st.cookies.fetch_add(1, Ordering::SeqCst) + 1;
        let mut h = base("max-age=3600");
        h.push(("set-cookie", format!("sid=secret{n}; Path=/")));
        return (200, h, format!("cookie page {p}").into_bytes());
    }
    if p.starts_with("/targeted/") {
        let mut h = Vec::new();
        let (cc, cdn, udn) = match p.as_str() {
            "/targeted/a" => ("no-store", Some("max-age=3600"), None),
            "/targeted/b" => ("max-age=3600", Some("no-store"), None),
            _ => ("no-store", Some("no-store"), Some("max-age=3600")),
        };
        h.push(("cache-control", cc.to_string()));
        if let Some(v) = cdn {
            h.push(("cdn-cache-control", v.to_string()));
        }
        if let Some(v) = udn {
            h.push(("udn-cache-control", v.to_string()));
        }
        return (200, h, format!("targeted {p}").into_bytes());
    }
    let v = st.version(&p);
    (
        200,
        base("max-age=3600"),
        format!("object {p} version {v}").into_bytes(),
    )
}

fn serve_conn(st: Arc<OriginState>, s: TcpStream) -> std::io::Result<()> {
    let mut out = s.try_clone()?;
    let mut rd = BufReader::new(s);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        // Naive: a GET or HEAD never has a body here.
        if method != "GET" && method != "HEAD" {
            if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
                body.resize(n, 0);
                rd.read_exact(&mut body)?;
            } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let mut sz = String::new();
                    rd.read_line(&mut sz)?;
                    let n = usize::from_str_radix(sz.trim().split(';').next().unwrap_or("0"), 16)
                        .unwrap_or(0);
                    let mut chunk = vec![0; n + 2];
                    if n == 0 {
                        let mut end = String::new();
                        rd.read_line(&mut end)?;
                        break;
                    }
                    rd.read_exact(&mut chunk)?;
                    body.extend_from_slice(&chunk[..n]);
                }
            }
        }
        let seen = Seen {
            method: method.clone(),
            path,
            headers,
            body,
        };
        st.seen.lock().unwrap().push(seen.clone());
        let (status, hs, b) = respond(&st, &seen);
        let mut resp = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", b.len());
        for (k, v) in hs {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        out.write_all(resp.as_bytes())?;
        if method != "HEAD" {
            out.write_all(&b)?;
        }
    }
}

fn start_origin() -> (SocketAddr, Arc<OriginState>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let st = Arc::new(OriginState::default());
    let st2 = st.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let st = st2.clone();
            std::thread::spawn(move || {
                let _ = serve_conn(st, s);
            });
        }
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

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("udn-edge-http-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// A network config: `cdn.test.example` (origin `www.test.example`) and
/// `cookie.test.example` (origin `www2.test.example`, `cache_set_cookie = true`), both
/// fetched from `upstream`.
fn config(dir: &Path, upstream: SocketAddr) -> PathBuf {
    let p = dir.join("network.toml");
    std::fs::write(
        &p,
        format!(
            r#"
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
origins = ["www.test.example"]
origin_urls = ["http://{upstream}"]
[[cdn]]
hostname = "cookie.test.example"
customer = "test"
origins = ["www2.test.example"]
origin_urls = ["http://{upstream}"]
cache_set_cookie = true
"#
        ),
    )
    .unwrap();
    p
}

struct EdgeProc {
    child: Child,
    addr: SocketAddr,
}

impl EdgeProc {
    /// `udn edge --config <cfg> --pop fra` on `port`.
    fn start(cfg: &Path, port: u16, logs: Option<&Path>) -> EdgeProc {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_udn"));
        cmd.args(["edge", "--listen", &addr.to_string(), "--pop", "fra"])
            .arg("--config")
            .arg(cfg)
            .args(["--origin-timeout-ms", "3000"]);
        if let Some(l) = logs {
            cmd.arg("--log-dir").arg(l);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start udn edge");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "udn edge did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        EdgeProc { child, addr }
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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

/// curl with extra headers and arguments: (status, headers, body).
fn curl(url: &str, headers: &[&str], extra: &[&str]) -> Got {
    let mut c = Command::new("curl");
    c.args(["-s", "-D", "-", "--max-time", "20"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.args(extra).arg(url).output().expect("curl");
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer from {url}: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
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

const HOST: &str = "Host: cdn.test.example";

/// Sends raw bytes on a fresh connection and returns what came back until the edge
/// closed it (or 5 s passed).
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn smuggled_body_loop_and_bad_methods_never_reach_the_origin() {
    let (origin, st) = start_origin();
    let dir = tempdir("smuggle");
    let logs = dir.0.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = config(&dir.0, origin);
    let mut edge = EdgeProc::start(&cfg, free_port(), Some(&logs));
    let hidden = "GET /hidden HTTP/1.1\r\nHost: www.test.example\r\n\r\n";
    for method in ["GET", "HEAD"] {
        for path in ["/nostore/s", "/obj/s"] {
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: cdn.test.example\r\nContent-Length: {}\r\n\r\n{hidden}",
                hidden.len()
            );
            let resp = raw(edge.addr, req.as_bytes());
            assert_eq!(status_of(&resp), 400, "{method} {path}: {resp}");
        }
        let chunked = format!(
            "{method} /nostore/c HTTP/1.1\r\nHost: cdn.test.example\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        );
        assert_eq!(status_of(&raw(edge.addr, chunked.as_bytes())), 400);
    }
    // CONNECT and TRACE are answered by the edge itself.
    let r = raw(
        edge.addr,
        b"TRACE /obj/t HTTP/1.1\r\nHost: cdn.test.example\r\n\r\n",
    );
    assert_eq!(status_of(&r), 405, "{r}");
    let r = raw(
        edge.addr,
        b"CONNECT www.test.example:80 HTTP/1.1\r\nHost: www.test.example:80\r\n\r\n",
    );
    assert_eq!(status_of(&r), 501, "{r}");
    // A request that already went through this CDN.
    let r = curl(
        &edge.url("/obj/l"),
        &[HOST, "CDN-Loop: other-cdn, udn"],
        &[],
    );
    assert_eq!(r.status, 508);
    std::thread::sleep(Duration::from_millis(300));
    {
        let seen = st.seen.lock().unwrap();
        assert!(seen.is_empty(), "the origin saw {seen:?}");
    }

    // A POST's body is a body: framed by the edge, read by the origin as one.
    let r = curl(
        &edge.url("/obj/p"),
        &[HOST, "Content-Type: text/plain"],
        &["--data-binary", hidden],
    );
    assert_eq!(r.status, 201);
    let posts = st.requests("/obj/p");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, hidden.as_bytes());

    // What a fill carries: never the client's framing or Expect; Forwarded and
    // X-Forwarded-For from the connection, not from the client; Via and CDN-Loop
    // appended to.
    let r = curl(
        &edge.url("/obj/h"),
        &[
            HOST,
            "Content-Length: 0",
            "Expect: 100-continue",
            "X-Forwarded-For: 6.6.6.6",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
            "Via: 1.1 client-proxy",
            "CDN-Loop: other-cdn",
        ],
        &[],
    );
    assert_eq!(r.status, 200);
    let fill = &st.requests("/obj/h")[0];
    assert!(fill.header("content-length").is_empty(), "{fill:?}");
    assert!(fill.header("transfer-encoding").is_empty(), "{fill:?}");
    assert!(fill.header("expect").is_empty(), "{fill:?}");
    assert_eq!(fill.header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(fill.header("forwarded"), ["for=127.0.0.1"]);
    assert!(fill.header("x-real-ip").is_empty());
    assert_eq!(
        fill.header("via").join(", "),
        "1.1 client-proxy, 1.1 udn-fra"
    );
    assert_eq!(fill.header("cdn-loop").join(", "), "other-cdn, udn");
    assert!(st.requests("/hidden").is_empty());

    // Every refusal is in the access log with its 4xx/5xx.
    edge.interrupt();
    let mut refused = Vec::new();
    for e in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for l in text.lines().skip(1) {
            if let Ok(udn_core::log::LogRecord::Http(h)) = udn_core::log::LogRecord::from_line(l)
                && h.outcome == "refused"
            {
                refused.push(h.status);
            }
        }
    }
    refused.sort();
    assert_eq!(
        refused,
        [400, 400, 400, 400, 400, 400, 405, 501, 508],
        "{refused:?}"
    );
}

#[test]
fn cdn_loop_through_udn_edges_is_refused() {
    // An edge whose origin is itself.
    let dir = tempdir("loop");
    let port = free_port();
    let cfg = config(&dir.0, format!("127.0.0.1:{port}").parse().unwrap());
    let edge = EdgeProc::start(&cfg, port, None);
    let t = Instant::now();
    let r = curl(&edge.url("/obj/x"), &[HOST], &[]);
    assert_eq!(r.status, 508, "{}", String::from_utf8_lossy(&r.body));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Two edges pointed at each other.
    let (pa, pb) = (free_port(), free_port());
    let da = tempdir("loop-a");
    let db = tempdir("loop-b");
    let a = EdgeProc::start(
        &config(&da.0, format!("127.0.0.1:{pb}").parse().unwrap()),
        pa,
        None,
    );
    let _b = EdgeProc::start(
        &config(&db.0, format!("127.0.0.1:{pa}").parse().unwrap()),
        pb,
        None,
    );
    let t = Instant::now();
    let r = curl(&a.url("/obj/y"), &[HOST], &[]);
    assert_eq!(r.status, 508);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn unsafe_methods_invalidate_target_and_same_origin_locations() {
    let (origin, st) = start_origin();
    let dir = tempdir("unsafe");
    let edge = EdgeProc::start(&config(&dir.0, origin), free_port(), None);
    let get = |p: &str| curl(&edge.url(p), &[HOST], &[]);
    for p in ["/obj/a", "/obj/b", "/obj/c", "/obj/d"] {
        assert_eq!(get(p).cache(), "MISS");
        assert_eq!(get(p).cache(), "HIT");
    }
    // A POST answered 201 with a Location, a Content-Location on the origin and a
    // Location on another host.
    let r = curl(
        &edge.url("/obj/a"),
        &[
            HOST,
            "X-Location: /obj/b",
            "X-Content-Location: http://www.test.example/obj/c",
        ],
        &["-X", "POST", "--data", "x=1"],
    );
    assert_eq!(r.status, 201);
    let a = get("/obj/a");
    assert_eq!(a.cache(), "MISS");
    assert_eq!(a.body, b"object /obj/a version 2");
    assert_eq!(get("/obj/b").cache(), "MISS");
    assert_eq!(get("/obj/c").cache(), "MISS");
    assert_eq!(get("/obj/d").cache(), "HIT");
    // Another host's URL in Location invalidates nothing here.
    curl(
        &edge.url("/obj/x"),
        &[HOST, "X-Location: http://evil.example/obj/d"],
        &["-X", "POST", "--data", "x"],
    );
    assert_eq!(get("/obj/d").cache(), "HIT");
    for m in ["PUT", "DELETE", "PATCH"] {
        assert_eq!(get("/obj/a").cache(), "HIT", "{m}");
        let r = curl(&edge.url("/obj/a"), &[HOST], &["-X", m, "--data", "y"]);
        assert_eq!(r.status, 201, "{m}");
        assert_eq!(get("/obj/a").cache(), "MISS", "{m}");
    }
    // A failed unsafe request invalidates nothing.
    assert_eq!(get("/obj/a").cache(), "HIT");
    let r = curl(
        &edge.url("/obj/a"),
        &[HOST, "X-Fail: 1"],
        &["-X", "POST", "--data", "z"],
    );
    assert_eq!(r.status, 500);
    assert_eq!(get("/obj/a").cache(), "HIT");
    assert_eq!(st.count("/obj/a"), 1 + 4 + 4 + 1);
}

#[test]
fn preconditions_on_hits_and_on_pass() {
    let (origin, st) = start_origin();
    let dir = tempdir("cond");
    let edge = EdgeProc::start(&config(&dir.0, origin), free_port(), None);
    let full = b"object /obj/r version 1".to_vec();
    let get = |h: &[&str]| {
        let mut hs = vec![HOST];
        hs.extend_from_slice(h);
        curl(&edge.url("/obj/r"), &hs, &[])
    };
    // A conditional request on a cold object is evaluated too.
    let r = get(&["If-Match: \"v0\""]);
    assert_eq!(r.status, 412);
    assert_eq!(get(&[]).cache(), "HIT");
    // If-Range: strong comparison only.
    let r = get(&["Range: bytes=0-5", "If-Range: \"v1\""]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"object"[..]));
    assert_eq!(r.cache(), "HIT");
    for ir in ["W/\"v1\"", "\"v0\"", "Tue, 02 Jan 2024 00:00:00 GMT"] {
        let r = get(&["Range: bytes=0-5", &format!("If-Range: {ir}")]);
        assert_eq!((r.status, &r.body), (200, &full), "If-Range {ir}");
    }
    let r = get(&["Range: bytes=0-5", &format!("If-Range: {LM}")]);
    assert_eq!(r.status, 206);
    // If-Match before If-None-Match; If-None-Match weak.
    assert_eq!(get(&["If-Match: \"v0\""]).status, 412);
    assert_eq!(get(&["If-Match: \"v1\""]).status, 200);
    assert_eq!(get(&["If-Match: W/\"v1\""]).status, 412);
    assert_eq!(get(&["If-None-Match: W/\"v1\""]).status, 304);
    assert_eq!(
        get(&["If-Match: \"v0\"", "If-None-Match: \"v1\""]).status,
        412
    );
    assert_eq!(
        get(&["If-Unmodified-Since: Sun, 31 Dec 2023 00:00:00 GMT"]).status,
        412
    );
    assert_eq!(get(&[&format!("If-Modified-Since: {LM}")]).status, 304);
    assert_eq!(st.count("/obj/r"), 1, "all answered from the cache");

    // On pass-through every precondition and the Range reach the origin.
    let r = curl(
        &edge.url("/nostore/r"),
        &[
            HOST,
            "Range: bytes=0-3",
            "If-Range: \"v1\"",
            "If-Match: \"v1\"",
            "If-Unmodified-Since: Tue, 02 Jan 2024 00:00:00 GMT",
            "If-None-Match: \"v9\"",
            "If-Modified-Since: Sun, 31 Dec 2023 00:00:00 GMT",
        ],
        &[],
    );
    assert_eq!(r.status, 200);
    let passes = st.requests("/nostore/r");
    let last = passes.last().unwrap();
    for (h, v) in [
        ("range", "bytes=0-3"),
        ("if-range", "\"v1\""),
        ("if-match", "\"v1\""),
        ("if-unmodified-since", "Tue, 02 Jan 2024 00:00:00 GMT"),
        ("if-none-match", "\"v9\""),
        ("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT"),
    ] {
        assert_eq!(last.header(h), [v], "{h} on pass: {last:?}");
    }
    // A conditional PUT stays conditional: the origin refuses it, nothing changes.
    let r = curl(
        &edge.url("/obj/r"),
        &[HOST, "If-Match: \"v0\""],
        &["-X", "PUT", "--data", "n"],
    );
    assert_eq!(r.status, 412);
    assert_eq!(
        st.requests("/obj/r").last().unwrap().header("if-match"),
        ["\"v0\""]
    );
    assert_eq!(st.version("/obj/r"), 1);
    assert_eq!(get(&[]).cache(), "HIT");
}

#[test]
fn targeted_cache_control_age_and_set_cookie() {
    udn_bins::install_crypto();
    let (origin, st) = start_origin();
    let dir = tempdir("targeted");
    let edge = EdgeProc::start(&config(&dir.0, origin), free_port(), None);
    let get = |p: &str| curl(&edge.url(p), &[HOST], &[]);
    // RFC 9213: CDN-Cache-Control over Cache-Control, UDN-Cache-Control over both;
    // neither reaches the client.
    for (p, second) in [
        ("/targeted/a", "HIT"),
        ("/targeted/b", "BYPASS"),
        ("/targeted/c", "HIT"),
    ] {
        let first = get(p);
        assert_eq!(first.status, 200);
        let again = get(p);
        assert_eq!(again.cache(), second, "{p}");
        for r in [&first, &again] {
            assert!(!r.headers.contains_key("cdn-cache-control"), "{p}");
            assert!(!r.headers.contains_key("udn-cache-control"), "{p}");
        }
    }
    assert_eq!(st.count("/targeted/a"), 1);
    assert_eq!(st.count("/targeted/b"), 2);
    assert_eq!(st.count("/targeted/c"), 1);

    // The origin's Age is kept on the miss and added to on hits.
    let a = get("/aged");
    assert_eq!(a.cache(), "MISS");
    let age: u64 = a.headers["age"].parse().unwrap();
    assert!(age >= 100, "{age}");
    std::thread::sleep(Duration::from_millis(1100));
    let b = get("/aged");
    assert_eq!(b.cache(), "HIT");
    assert!(b.headers["age"].parse::<u64>().unwrap() >= 101);

    // Set-Cookie: two real clients with their own cookie jars.
    let alice = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let bob = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let fetch = |c: &reqwest::blocking::Client, host: &str| {
        let r = c
            .get(edge.url("/cookie/page"))
            .header("host", host)
            .send()
            .unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
        (cookie, cache)
    };
    // Default: never stored, each client gets its own cookie from the origin.
    let (ca, xa) = fetch(&alice, "cdn.test.example");
    let (cb, xb) = fetch(&bob, "cdn.test.example");
    assert_eq!((xa.as_str(), xb.as_str()), ("BYPASS", "BYPASS"));
    assert!(ca.as_deref().unwrap().starts_with("sid=secret1"));
    assert!(cb.as_deref().unwrap().starts_with("sid=secret2"));
    // With cache_set_cookie: stored without the cookie; Bob's hit carries none.
    let (ca, xa) = fetch(&alice, "cookie.test.example");
    assert_eq!(xa, "MISS");
    assert!(ca.is_some_and(|c| c.starts_with("sid=secret3")));
    // (The fill stores the object just after the lead's body ends.)
    std::thread::sleep(Duration::from_millis(200));
    let (cb, xb) = fetch(&bob, "cookie.test.example");
    assert_eq!(xb, "HIT");
    assert_eq!(cb, None, "Bob must not receive Alice's cookie");
    assert_eq!(st.count("/cookie/page"), 3);
}
