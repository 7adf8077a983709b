//! Helpers of the probe integration tests: small real HTTP servers on loopback (a test
//! site with known delays, a metrics receiver standing in for a DNS server's HTTP API),
//! a tiny HTTP client, and a guard that runs the real `udn` binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use udn_core::Metric;

/// One canned response of the test site.
#[derive(Clone, Debug)]
pub struct Resource {
    pub status: u16,
    pub body: Vec<u8>,
    /// Delay before the response head.
    pub head_delay: Duration,
    /// Bytes sent right after the head; the rest after `split_delay`.
    pub split_at: usize,
    pub split_delay: Duration,
}

pub type Site = Arc<Mutex<HashMap<String, Resource>>>;

/// Reads one request: (method, path, body).
fn read_request(stream: &TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, body))
}

fn respond(mut s: &TcpStream, status: u16, ctype: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

/// Serves `site` on `addr` (port 0: any) from a thread per connection.
pub fn serve_site(addr: &str, site: Site) -> SocketAddr {
    let l = TcpListener::bind(addr).expect("bind test site");
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let site = site.clone();
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let Some((_, path, _)) = read_request(&s) else {
                    return;
                };
                let res = site.lock().unwrap().get(&path).cloned();
                let Some(res) = res else {
                    respond(&s, 404, "text/plain", b"not found");
                    return;
                };
                std::thread::sleep(res.head_delay);
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    res.status,
                    res.body.len()
                );
                let mut w = &s;
                let split = res.split_at.min(res.body.len());
                let _ = w.write_all(head.as_bytes());
                let _ = w.write_all(&res.body[..split]);
                let _ = w.flush();
                std::thread::sleep(res.split_delay);
                let _ = w.write_all(&res.body[split..]);
            });
        }
    });
    a
}

/// A stand-in for a DNS server's HTTP API: records `POST /v1/metrics`, answers
/// `GET /v1/refresh?pop=NAME` from a list (handed-out items are removed).
#[derive(Clone, Default)]
pub struct Receiver {
    pub metrics: Arc<Mutex<Vec<Metric>>>,
    pub refresh: Arc<Mutex<HashMap<String, Vec<serde_json::Value>>>>,
    pub posts: Arc<Mutex<usize>>,
}

impl Receiver {
    pub fn serve(&self, addr: &str) -> SocketAddr {
        let l = TcpListener::bind(addr).expect("bind receiver");
        let a = l.local_addr().unwrap();
        let me = self.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let me = me.clone();
                std::thread::spawn(move || {
                    let Some((method, path, body)) = read_request(&s) else {
                        return;
                    };
                    if method == "POST" && path == "/v1/metrics" {
                        match serde_json::from_slice::<Vec<Metric>>(&body) {
                            Ok(ms) => {
                                let n = ms.len();
                                me.metrics.lock().unwrap().extend(ms);
                                *me.posts.lock().unwrap() += 1;
                                let ans = format!("{{\"applied\":{n},\"rejected\":[]}}");
                                respond(&s, 200, "application/json", ans.as_bytes());
                            }
                            Err(e) => respond(&s, 400, "text/plain", e.to_string().as_bytes()),
                        }
                    } else if method == "GET" && path.starts_with("/v1/refresh?pop=") {
                        let pop = &path["/v1/refresh?pop=".len()..];
                        let items = me.refresh.lock().unwrap().remove(pop).unwrap_or_default();
                        let body = serde_json::to_vec(&items).unwrap();
                        respond(&s, 200, "application/json", &body);
                    } else {
                        respond(&s, 404, "text/plain", b"no");
                    }
                });
            }
        });
        a
    }

    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics.lock().unwrap().clone()
    }
}

/// A tiny HTTP/1.1 client: (status, body).
pub fn http(method: &str, addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The real `udn` binary, killed on drop.
pub struct Udn {
    pub child: Child,
    pub http: SocketAddr,
}

impl Udn {
    /// Starts `udn probe ARGS` and reads the API address it prints.
    pub fn probe(args: &[&str]) -> Udn {
        let mut child = Command::new(env!("CARGO_BIN_EXE_udn"))
            .arg("probe")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start udn probe");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the first line");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("udn probe printed {line:?}: {e}"));
        let http = v["http"].as_str().unwrap().parse().unwrap();
        Udn { child, http }
    }

    /// Sends a signal (`HUP`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Stops it with SIGTERM (so it completes its log) and waits.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Udn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on `ip` (bound then released).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "udn-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

use crate::proc_support;
#[allow(unused_imports)] // used by some of the probe test files only
pub use proc_support::Killed;

/// A real FTP server (Python's pyftpdlib, installed by scripts/install-deps.sh) serving
/// `dir` read-only to anonymous users at `ip:port`; killed on drop.
pub struct FtpServer {
    child: Child,
}

impl FtpServer {
    pub fn start(ip: &str, port: u16, dir: &std::path::Path) -> FtpServer {
        let child = Command::new("python3")
            .args(["-m", "pyftpdlib", "-i", ip, "-p", &port.to_string()])
            .arg("-d")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with pyftpdlib: run scripts/install-deps.sh");
        wait_for(Duration::from_secs(20), || {
            TcpStream::connect((ip, port)).ok().map(|_| ())
        })
        .unwrap_or_else(|| panic!("pyftpdlib did not start on {ip}:{port}"));
        FtpServer { child }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
