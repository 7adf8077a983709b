//! FTP delivery from `udn edge --ftp-listen`: the real binary on loopback, a real HTTP
//! origin (a hyper server in the test), real FTP clients (curl and Python's ftplib),
//! and the attacker's side against the real process.
//!
//! curl, openssl and python3 come from scripts/install-deps.sh.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
const SITE: &str = "www.ftp.example";

/// Successful origin responses per path.
type Hits = Arc<Mutex<HashMap<String, u32>>>;

fn big() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn body_of(path: &str) -> Option<Vec<u8>> {
    match path {
        "/pub/hello.txt" => Some(b"hello over ftp\n".to_vec()),
        "/pub/big.bin" => Some(big()),
        "/pub/sub/deep.txt" => Some(b"deep\n".to_vec()),
        _ => None,
    }
}

type OBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: Vec<u8>) -> OBody {
    Full::new(Bytes::from(b)).map_err(|e| match e {}).boxed()
}

async fn origin(hits: Hits, req: Request<Incoming>) -> Response<OBody> {
    let path = req.uri().path().to_string();
    if path == "/pub/stall.bin" {
        // 1000 bytes of 100,000, then nothing (for an hour).
        *hits.lock().unwrap().entry(path).or_default() += 1;
        let s = futures_util::stream::unfold(0u8, |n| async move {
            if n == 0 {
                Some((Ok(Frame::data(Bytes::from(vec![b's'; 1000]))), 1))
            } else {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                None
            }
        });
        let mut r = Response::new(StreamBody::new(s).boxed());
        r.headers_mut()
            .insert("content-length", "100000".parse().unwrap());
        r.headers_mut()
            .insert("cache-control", "max-age=3600".parse().unwrap());
        return r;
    }
    let Some(body) = body_of(&path) else {
        let mut r = Response::new(full(b"not found".to_vec()));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return r;
    };
    *hits.lock().unwrap().entry(path).or_default() += 1;
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert("cache-control", "max-age=3600".parse().unwrap());
    r.headers_mut().insert("last-modified", LM.parse().unwrap());
    r
}

fn start_origin() -> (SocketAddr, Hits) {
    let hits: Hits = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let h2 = hits.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let hits = h2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let hits = hits.clone();
                        async move { Ok::<_, std::convert::Infallible>(origin(hits, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
    });
    (addr, hits)
}

fn count(hits: &Hits, path: &str) -> u32 {
    *hits.lock().unwrap().get(path).unwrap_or(&0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("udn-ftp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// A network config with one CDN hostname, [`SITE`], whose origin is `origin`.
fn network_toml(dir: &Path, origin: SocketAddr) -> PathBuf {
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
name = "ftpco"
[[pops]]
name = "fra"
location = {{ lat = 50.0, lon = 8.0 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.1"] }}]
[[cdn]]
hostname = "{SITE}"
customer = "ftpco"
origins = ["origin.ftp.example"]
origin_urls = ["http://{origin}"]
"#
        ),
    )
    .unwrap();
    p
}

/// A self-signed certificate for [`SITE`] made by the real openssl.
fn cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .args(["-subj", &format!("/CN={SITE}")])
        .args(["-addext", &format!("subjectAltName=DNS:{SITE}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl req");
    (c, k)
}

struct Edge {
    child: Child,
    ftp: SocketAddr,
    admin: Option<SocketAddr>,
    pki: Option<PathBuf>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    /// `udn edge --config` with FTP (passive ports of its own), FTPS with `cert`, and
    /// `extra` flags.
    fn start(cfg: &Path, cert: &(PathBuf, PathBuf), extra: &[&str]) -> Edge {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let ftp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let p0 = 52000 + (std::process::id() % 200) as u16 * 20 + (free_port() % 10);
        let child = Command::new(env!("CARGO_BIN_EXE_udn"))
            .arg("edge")
            .args(["--pop", "fra", "--listen", &http.to_string()])
            .arg("--config")
            .arg(cfg)
            .args(["--ftp-listen", &ftp.to_string()])
            .args(["--ftp-passive-ports", &format!("{p0}-{}", p0 + 9)])
            .arg("--tls-cert")
            .arg(format!("{SITE}={}:{}", cert.0.display(), cert.1.display()))
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start udn edge");
        let mut e = Edge {
            child,
            ftp,
            admin: None,
            pki: None,
        };
        e.wait_for(ftp);
        e
    }

    fn wait_for(&mut self, a: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(a).is_err() {
            assert!(self.child.try_wait().unwrap().is_none(), "udn edge exited");
            assert!(Instant::now() < deadline, "udn edge did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ftp://{}{path}", self.ftp)
    }

    fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    fn purge_url(&self, url: &str) {
        let (a, pki) = (self.admin.unwrap(), self.pki.as_ref().unwrap());
        let body = format!(r#"{{"scope":"url","target":"{url}","seq":1}}"#);
        let c = pki.join("control-control");
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "30",
            ])
            .arg("--cacert")
            .arg(pki.join("edge-fra").join("ca.pem"))
            .arg("--cert")
            .arg(c.join("cert.pem"))
            .arg("--key")
            .arg(c.join("key.pem"))
            .args(["-H", "Content-Type: application/json", "--data", &body])
            .arg(format!("https://{a}/v1/purge"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "purge");
    }
}

/// Credentials for the admin listener by the real `udn control enroll`.
fn enroll(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    for (role, name) in [("edge", "fra"), ("control", "control")] {
        let st = Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["control", "enroll", role, name, "--san", "127.0.0.1"])
            .arg("--out")
            .arg(pki.join(format!("{role}-{name}")))
            .arg("--data-dir")
            .arg(pki.join("data"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "udn control enroll {role} {name}");
    }
    pki
}

/// curl as an FTP client: (exit success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a Python script (ftplib) with `FTP_PORT`, `SITE` and `CA` set; its stdout.
fn python(script: &str, ftp: SocketAddr, ca: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("FTP_PORT", ftp.port().to_string())
        .env("SITE", SITE)
        .env("CA", ca)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn curl_downloads_passive_resumed_and_over_tls() {
    let (origin, hits) = start_origin();
    let dir = tempdir("curl");
    let cfg = network_toml(&dir.0, origin);
    let crt = cert(&dir.0);
    let edge = Edge::start(&cfg, &crt, &[]);
    let user = format!("anonymous@{SITE}:x");
    // EPSV (curl's default), then PASV.
    let (ok, body, err) = curl(&["--user", &user, &edge.url("/pub/hello.txt")]);
    assert!(ok, "{err}");
    assert_eq!(body, b"hello over ftp\n");
    let (ok, body, err) = curl(&["--disable-epsv", "--user", &user, &edge.url("/pub/big.bin")]);
    assert!(ok, "{err}");
    assert_eq!(body, big());
    // The site as the whole user name.
    let (ok, body, err) = curl(&["--user", &format!("{SITE}:x"), &edge.url("/pub/hello.txt")]);
    assert!(ok, "{err}");
    assert_eq!(body, b"hello over ftp\n");
    // Each of curl's ways to walk to the file.
    for m in ["multicwd", "nocwd", "singlecwd"] {
        let (ok, body, err) = curl(&[
            "--ftp-method",
            m,
            "--user",
            &user,
            &edge.url("/pub/sub/deep.txt"),
        ]);
        assert!(ok, "--ftp-method {m}: {err}");
        assert_eq!(body, b"deep\n", "--ftp-method {m}");
    }
    // Resume: half the file is there, `-C -` fetches the rest (REST).
    let part = dir.0.join("part.bin");
    std::fs::write(&part, &big()[..100_000]).unwrap();
    let (ok, _, err) = curl(&[
        "-C",
        "-",
        "-o",
        part.to_str().unwrap(),
        "--user",
        &user,
        &edge.url("/pub/big.bin"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&part).unwrap(), big());
    // FTPS: explicit AUTH TLS, the certificate verified against the site's name.
    let (ok, body, err) = curl(&[
        "--ssl-reqd",
        "--cacert",
        crt.0.to_str().unwrap(),
        "--connect-to",
        &format!("{SITE}:{}:127.0.0.1:{}", edge.ftp.port(), edge.ftp.port()),
        "--user",
        "anonymous:x",
        &format!("ftp://{SITE}:{}/pub/big.bin", edge.ftp.port()),
    ]);
    assert!(ok, "{err}");
    assert_eq!(body, big());
    // Every download after the first of a file was a cache hit.
    assert_eq!(count(&hits, "/pub/big.bin"), 1);
    assert_eq!(count(&hits, "/pub/hello.txt"), 1);
    // A name the edge does not serve is refused at login.
    let (ok, _, _) = curl(&[
        "--user",
        "anonymous@unknown.example:x",
        &edge.url("/pub/hello.txt"),
    ]);
    assert!(!ok, "an unknown site logged in");
}

const FTPLIB: &str = r#"
import ftplib, os, ssl, json
port, site = int(os.environ["FTP_PORT"]), os.environ["SITE"]
out = {}
f = ftplib.FTP()
f.connect("127.0.0.1", port, timeout=20)
try:
    f.sendcmd("HOST unknown.example")
except ftplib.error_perm as e:
    out["unknown_host"] = str(e)
out["host"] = f.sendcmd("HOST " + site)
out["login"] = f.login("anonymous", "guest@")
out["feat"] = f.sendcmd("FEAT")
out["size"] = f.sendcmd("SIZE /pub/big.bin")
out["mdtm"] = f.sendcmd("MDTM /pub/big.bin")
got = bytearray()
f.retrbinary("RETR /pub/big.bin", got.extend)
out["retr_len"] = len(got)
tail = bytearray()
f.retrbinary("RETR /pub/big.bin", tail.extend, rest=299990)
out["rest_len"] = len(tail)
f.retrbinary("RETR /pub/hello.txt", lambda b: None)
f.retrbinary("RETR /pub/sub/deep.txt", lambda b: None)
out["mlsd"] = sorted([n, fact["type"]] for n, fact in f.mlsd("/pub"))
lines = []
f.retrlines("LIST /pub", lines.append)
out["list"] = lines
f.quit()
ctx = ssl.create_default_context(cafile=os.environ["CA"])
ctx.check_hostname = False
t = ftplib.FTP_TLS(context=ctx)
t.connect("127.0.0.1", port, timeout=20)
t.sendcmd("HOST " + site)
t.auth()
out["tls_subject"] = dict(x[0] for x in t.sock.getpeercert()["subject"])["commonName"]
t.login("anonymous", "guest@")
t.prot_p()
data = bytearray()
t.retrbinary("RETR /pub/hello.txt", data.extend)
out["tls_body"] = data.decode()
t.quit()
print(json.dumps(out))
"#;

#[test]
fn ftplib_host_rest_size_mdtm_mlsd_tls_purge_and_access_log() {
    let (origin, hits) = start_origin();
    let dir = tempdir("ftplib");
    let cfg = network_toml(&dir.0, origin);
    let crt = cert(&dir.0);
    let logs = dir.0.join("logs");
    let pki = enroll(&dir.0);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut edge = Edge::start(
        &cfg,
        &crt,
        &[
            "--log-dir",
            logs.to_str().unwrap(),
            "--admin-listen",
            &admin.to_string(),
            "--pki",
            pki.join("edge-fra").to_str().unwrap(),
        ],
    );
    edge.wait_for(admin);
    edge.admin = Some(admin);
    edge.pki = Some(pki);
    let out = python(FTPLIB, edge.ftp, &crt.0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["unknown_host"].as_str().unwrap().starts_with("504"),
        "{v}"
    );
    assert!(v["host"].as_str().unwrap().starts_with("220"), "{v}");
    assert!(v["login"].as_str().unwrap().starts_with("230"), "{v}");
    assert!(v["feat"].as_str().unwrap().contains("HOST"), "{v}");
    assert_eq!(v["size"], "213 300000", "{v}");
    assert_eq!(v["mdtm"], "213 20240101000000", "{v}");
    assert_eq!(v["retr_len"], 300_000);
    assert_eq!(v["rest_len"], 10);
    assert_eq!(
        v["mlsd"],
        serde_json::json!([["big.bin", "file"], ["hello.txt", "file"], ["sub", "dir"]]),
        "{v}"
    );
    let list = v["list"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|l| l.as_str().unwrap().contains("300000")
                && l.as_str().unwrap().ends_with("big.bin")),
        "{v}"
    );
    assert_eq!(v["tls_subject"], SITE);
    assert_eq!(v["tls_body"], "hello over ftp\n");
    assert_eq!(
        count(&hits, "/pub/big.bin"),
        1,
        "REST and re-reads are hits"
    );

    // A purge removes it: the next RETR fills from the origin again.
    edge.purge_url(&format!("http://{SITE}/pub/big.bin"));
    let (ok, body, err) = curl(&[
        "--user",
        &format!("anonymous@{SITE}:x"),
        &edge.url("/pub/big.bin"),
    ]);
    assert!(ok, "{err}");
    assert_eq!(body.len(), 300_000);
    assert_eq!(
        count(&hits, "/pub/big.bin"),
        2,
        "the purge did not remove it"
    );

    // The access log records the FTP downloads with their bytes, customer and client.
    edge.interrupt();
    let mut recs = Vec::new();
    for e in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for l in text.lines().skip(1) {
            if let Ok(udn_core::log::LogRecord::Http(h)) = udn_core::log::LogRecord::from_line(l) {
                recs.push(h);
            }
        }
    }
    let retr: Vec<_> = recs
        .iter()
        .filter(|h| h.method == "RETR" && h.path == "/pub/big.bin")
        .collect();
    assert!(
        retr.iter().any(|h| h.bytes == 300_000
            && h.status == 200
            && h.host == SITE
            && h.customer.as_deref() == Some("ftpco")
            && h.client.is_loopback()),
        "{recs:?}"
    );
    assert!(
        retr.iter().any(|h| h.bytes == 10 && h.status == 206),
        "the REST download: {recs:?}"
    );
}

/// Reads what the server sends until it closes (at most 64 KiB, 15 s).
fn read_to_close(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    while out.len() < 65536 && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close: {e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_reply(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 4096 && !out.ends_with(b"\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const ATTACKS: &str = r#"
import ftplib, os, json
port, site = int(os.environ["FTP_PORT"]), os.environ["SITE"]
out = {}
f = ftplib.FTP()
f.connect("127.0.0.1", port, timeout=20)
f.login("anonymous@" + site, "x")
for c in ["STOR x.txt", "DELE /pub/hello.txt", "MKD /pub/new", "RNFR /pub/hello.txt"]:
    try:
        out[c] = f.sendcmd(c)
    except ftplib.error_perm as e:
        out[c] = str(e)
try:
    f.storbinary("STOR /pub/up.txt", __import__("io").BytesIO(b"data"))
    out["storbinary"] = "stored"
except ftplib.error_perm as e:
    out["storbinary"] = str(e)
bounce = int(os.environ["BOUNCE_PORT"])
for c in ["PORT 127,0,0,2,%d,%d" % (bounce >> 8, bounce & 255), "EPRT |1|127.0.0.2|%d|" % bounce, "PORT 127,0,0,1,0,25"]:
    try:
        out[c] = f.sendcmd(c)
    except ftplib.error_perm as e:
        out[c] = str(e)
for p in ["../../etc/passwd", "/../../../etc/passwd", "/pub/../../hello.txt"]:
    got = bytearray()
    try:
        f.retrbinary("RETR " + p, got.extend)
        out[p] = got.decode(errors="replace")
    except ftplib.error_perm as e:
        out[p] = str(e)
f.quit()
print(json.dumps(out))
"#;

#[test]
fn attacks_writes_long_lines_login_timeout_caps_bounce_and_traversal() {
    let (origin, _hits) = start_origin();
    let dir = tempdir("attacks");
    let cfg = network_toml(&dir.0, origin);
    let crt = cert(&dir.0);
    let edge = Edge::start(
        &cfg,
        &crt,
        &[
            "--ftp-login-timeout-secs",
            "2",
            "--ftp-max-per-client",
            "3",
            "--ftp-idle-timeout-secs",
            "3",
            "--ftp-data-timeout-secs",
            "2",
            "--origin-body-timeout-ms",
            "600000",
            "--waiter-timeout-ms",
            "600000",
        ],
    );
    // A bounce target: nothing may connect to it.
    let bounce = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    bounce.set_nonblocking(true).unwrap();
    let bounce_port = bounce.local_addr().unwrap().port();
    let out = Command::new("python3")
        .arg("-c")
        .arg(ATTACKS)
        .env("FTP_PORT", edge.ftp.port().to_string())
        .env("SITE", SITE)
        .env("BOUNCE_PORT", bounce_port.to_string())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    for c in [
        "STOR x.txt",
        "DELE /pub/hello.txt",
        "MKD /pub/new",
        "RNFR /pub/hello.txt",
        "storbinary",
    ] {
        assert!(v[c].as_str().unwrap().starts_with("550"), "{c}: {v}");
    }
    for (k, val) in v.as_object().unwrap() {
        if k.starts_with("PORT") || k.starts_with("EPRT") {
            assert!(val.as_str().unwrap().starts_with("504"), "{k}: {v}");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bounce.accept().is_err(),
        "the edge connected to a third party"
    );
    // Traversal stays inside the site: `..` never climbs above its root.
    assert!(
        v["../../etc/passwd"].as_str().unwrap().starts_with("550"),
        "{v}"
    );
    assert!(
        v["/../../../etc/passwd"]
            .as_str()
            .unwrap()
            .starts_with("550"),
        "{v}"
    );
    assert_eq!(
        v["/pub/../../hello.txt"].as_str().unwrap(),
        "550 File not found",
        "{v}"
    );
    let all = v.to_string();
    assert!(!all.contains("root:"), "a local file was served: {v}");

    // A download whose bytes stop (the origin stalls after 1000 bytes): aborted after
    // the 2-second data timeout, not held for the origin's hour or the 600-second fill
    // limits.
    let (ok, body, err) = curl(&[
        "--user",
        &format!("anonymous@{SITE}:x"),
        &edge.url("/pub/stall.bin"),
    ]);
    assert!(!ok, "a stalled download completed");
    assert!(body.len() <= 1000, "{}", body.len());
    // The edge ended it, not curl's own 30-second limit.
    assert!(!err.contains("timed out"), "{err}");
    eprintln!("stalled download: {err}");

    // A logged-in session that sends nothing: closed at the idle timeout (3 s).
    let mut s = TcpStream::connect(edge.ftp).unwrap();
    assert!(read_reply(&mut s).starts_with("220"));
    s.write_all(format!("USER anonymous@{SITE}\r\n").as_bytes())
        .unwrap();
    assert!(read_reply(&mut s).starts_with("331"));
    s.write_all(b"PASS x\r\n").unwrap();
    assert!(read_reply(&mut s).starts_with("230"));
    let rest = read_to_close(&mut s);
    assert!(
        rest.starts_with("221") || rest.starts_with("421"),
        "{rest:?}"
    );
    drop(s);

    // An over-long command line: refused and closed.
    let mut s = TcpStream::connect(edge.ftp).unwrap();
    assert!(read_reply(&mut s).starts_with("220"));
    s.write_all(&vec![b'A'; 5000]).unwrap();
    let rest = read_to_close(&mut s);
    assert!(rest.starts_with("500"), "{rest:?}");
    drop(s);

    // A connection that never logs in: closed after the login timeout (2 s).
    let mut s = TcpStream::connect(edge.ftp).unwrap();
    assert!(read_reply(&mut s).starts_with("220"));
    s.write_all(b"NOOP\r\n").unwrap();
    let rest = read_to_close(&mut s);
    assert!(rest.contains("421 Login timeout"), "{rest:?}");
    drop(s);

    // Per-client cap: the fourth connection from one address is refused.
    // (The connections above may take a moment to be released: each slot is retried.)
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 3 {
        let mut s = TcpStream::connect(edge.ftp).unwrap();
        let r = read_reply(&mut s);
        if r.starts_with("220") {
            held.push(s);
            continue;
        }
        assert!(r.starts_with("421"), "{r:?}");
        assert!(Instant::now() < deadline, "slots were not released");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut s = TcpStream::connect(edge.ftp).unwrap();
    let r = read_to_close(&mut s);
    assert!(r.starts_with("421"), "{r:?}");
    drop(held);
    // Slots come back when connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(edge.ftp).unwrap();
        if read_reply(&mut s).starts_with("220") {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not released");
        std::thread::sleep(Duration::from_millis(100));
    }
}
