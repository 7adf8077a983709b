//! A live HLS stream made by a real ffmpeg at a loopback origin and watched through the
//! real `udn edge` by several real ffmpeg viewers at once: every viewer plays its
//! seconds without being held up by the others, and every segment is fetched from the
//! origin once, whatever the number of viewers (coalescing, and the edge's prefetch of
//! the segments a live playlist names next). The edge's access log, loaded into a real
//! SQLite log store, gives the stream's statistics: its viewers, segments served and
//! origin fetches.
//!
//! ffmpeg comes from Debian's package (scripts/install-deps.sh).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Viewers watching at once.
const VIEWERS: usize = 4;
/// Seconds each viewer plays.
const WATCH_SECS: u32 = 6;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Successful (200) origin responses per path.
type Served = Arc<Mutex<HashMap<String, u32>>>;

async fn serve_file(
    dir: Arc<PathBuf>,
    served: Served,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let file = (!path.contains("..") && !path.contains('/'))
        .then(|| std::fs::read(dir.join(&path)).ok())
        .flatten();
    let Some(body) = file else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return r;
    };
    *served.lock().unwrap().entry(path.clone()).or_default() += 1;
    let (ct, cc) = if path.ends_with(".m3u8") {
        ("application/vnd.apple.mpegurl", "max-age=1")
    } else {
        ("video/mp2t", "max-age=3600")
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    r.headers_mut().insert("cache-control", cc.parse().unwrap());
    r
}

/// A plain HTTP file server for `dir` on loopback, in its own runtime thread.
fn start_origin(dir: &Path) -> (SocketAddr, Served) {
    let served: Served = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let (dir, s2) = (Arc::new(dir.to_path_buf()), served.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (dir, served) = (dir.clone(), s2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (dir, served) = (dir.clone(), served.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(serve_file(dir, served, req).await)
                        }
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
    (addr, served)
}

/// The stream's CDN hostname and its customer.
const SITE: &str = "live.tv.example";
const CUSTOMER: &str = "tv";

/// A network config with one CDN hostname, [`SITE`], whose origin is `origin`.
fn network_toml(dir: &Path, origin: SocketAddr) -> PathBuf {
    let p = dir.join("network.toml");
    let text = format!(
        r#"
[security]
allow_target_ranges = ["127.0.0.0/8"]
[[services]]
name = "http"
[[customers]]
name = "{CUSTOMER}"
[[pops]]
name = "fra"
location = {{ lat = 50.0, lon = 8.0 }}
servers = [{{ name = "fra-edge-1", addresses = ["127.0.0.1"] }}]
[[cdn]]
hostname = "{SITE}"
customer = "{CUSTOMER}"
origins = ["origin.tv.example"]
origin_urls = ["http://{origin}"]
"#
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// A TCP relay on 127.0.0.1 to `to` whose connections come from `from`: each viewer
/// watches through one, so the edge sees (and logs) each viewer at its own address,
/// as it would see viewers on the internet. ffmpeg cannot choose its source address.
fn relay(from: std::net::Ipv4Addr, to: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            while let Ok((mut inbound, _)) = l.accept().await {
                tokio::spawn(async move {
                    let sock = tokio::net::TcpSocket::new_v4().ok()?;
                    sock.bind(SocketAddr::new(from.into(), 0)).ok()?;
                    let mut out = sock.connect(to).await.ok()?;
                    tokio::io::copy_bidirectional(&mut inbound, &mut out)
                        .await
                        .ok()
                });
            }
        });
    });
    addr
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn viewers_of_a_live_ffmpeg_stream_share_one_origin_fetch_per_segment() {
    assert!(
        ffmpeg_available(),
        "ffmpeg is needed (Debian package ffmpeg: scripts/install-deps.sh)"
    );
    let dir = std::env::temp_dir().join(format!("udn-hls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The live encoder: 1-second segments, a sliding window of 4, written whole
    // (temp_file) so the origin never serves half a segment.
    let _encoder = Kill(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"])
            .args(["-t", "60", "-c:v", "libx264", "-preset", "ultrafast"])
            .args(["-tune", "zerolatency", "-g", "10", "-f", "hls"])
            .args(["-hls_time", "1", "-hls_list_size", "4"])
            .args(["-hls_flags", "delete_segments+temp_file"])
            .arg(dir.join("live.m3u8"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start ffmpeg"),
    );
    let (origin, served) = start_origin(&dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("live.m3u8").exists() {
        assert!(Instant::now() < deadline, "ffmpeg wrote no playlist");
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let edge_addr = format!("127.0.0.1:{port}");
    let cfg = network_toml(&dir, origin);
    let logs = dir.join("logs");
    let mut edge = Kill(
        Command::new(env!("CARGO_BIN_EXE_udn"))
            .args(["edge", "--pop", "fra", "--listen", &edge_addr])
            .arg("--config")
            .arg(&cfg)
            .arg("--log-dir")
            .arg(&logs)
            .stdout(Stdio::null())
            .spawn()
            .expect("start udn edge"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&edge_addr).is_err() {
        assert!(Instant::now() < deadline, "udn edge did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The viewers, all at once, each playing WATCH_SECS of the live stream, each from
    // its own address (127.0.0.101...), asking for the site by its Host header.
    let edge_sock: SocketAddr = edge_addr.parse().unwrap();
    let start = Instant::now();
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|i| {
            let via = relay(std::net::Ipv4Addr::new(127, 0, 0, 101 + i as u8), edge_sock);
            let url = format!("http://{via}/live.m3u8");
            std::thread::spawn(move || {
                let t = Instant::now();
                let out = Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error"])
                    // (The HLS demuxer sends these headers with every segment too.)
                    .args(["-headers", &format!("Host: {SITE}\r\n"), "-i", &url])
                    .args([
                        "-t",
                        &WATCH_SECS.to_string(),
                        "-c",
                        "copy",
                        "-f",
                        "null",
                        "-",
                    ])
                    .stdin(Stdio::null())
                    .output()
                    .expect("run the ffmpeg viewer");
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).to_string(),
                    t.elapsed(),
                )
            })
        })
        .collect();
    let mut took = Vec::new();
    for v in viewers {
        let (ok, err, t) = v.join().unwrap();
        assert!(ok, "a viewer failed: {err}");
        took.push(t);
    }
    eprintln!("{VIEWERS} viewers played {WATCH_SECS} s each in {took:?}");
    // A live stream plays in real time: no viewer took much longer than the stream it
    // watched (none was held up by another).
    for t in &took {
        assert!(
            *t < Duration::from_secs(u64::from(WATCH_SECS) + 15),
            "a viewer was held up: {took:?}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(60));

    let served = served.lock().unwrap().clone();
    let segments: Vec<_> = served.iter().filter(|(p, _)| p.ends_with(".ts")).collect();
    assert!(
        segments.len() >= WATCH_SECS as usize,
        "the viewers played segments through the edge: {served:?}"
    );
    for (path, n) in &segments {
        assert_eq!(
            **n, 1,
            "{path} was fetched {n} times from the origin: {served:?}"
        );
    }

    // The statistics: SIGINT completes the edge's log file; it is loaded, as the
    // collector loads it, into a real SQLite log store, whose streaming report counts
    // this stream's viewers, the segments they were served and the origin's fetches.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(edge.0.id().to_string())
        .status();
    let _ = edge.0.wait();
    let store_dir = dir.join("store");
    let mut store = udn_bins::store::open(&udn_bins::store::Location::Sqlite {
        dir: store_dir,
        max_pages: None,
    })
    .expect("open the log store");
    let now = udn_bins::logging::now();
    let mut files = 0;
    for e in std::fs::read_dir(&logs).unwrap() {
        let path = e.unwrap().path();
        if !path.to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let sum = udn_core::logfile::sha256_hex(&body);
        let f = udn_core::logfile::parse_file(&body, &sum).expect("a valid log file");
        let f = udn_bins::store::PreparedFile::new(f.header, f.checksum, f.records);
        store.ingest(&f, now).expect("ingest the edge's log");
        files += 1;
    }
    assert!(files > 0, "the edge completed no log file in {logs:?}");
    let all = udn_bins::store::Range {
        from: udn_core::Timestamp::from_millis(now.as_millis() - 3_600_000),
        to: udn_core::Timestamp::from_millis(now.as_millis() + 60_000),
    };
    let report = store.streaming(all, Some(CUSTOMER)).unwrap();
    assert_eq!(report.streams.len(), 1, "{report:?}");
    let s = &report.streams[0];
    assert_eq!((s.host.as_str(), s.stream.as_str()), (SITE, "/"), "{s:?}");
    assert_eq!(s.viewers, VIEWERS as i64, "one viewer per address: {s:?}");
    let fetched: u32 = segments.iter().map(|(_, n)| **n).sum();
    assert_eq!(
        s.agg.segment_fills,
        i64::from(fetched),
        "origin fetches of segments in the log = the origin's count: {s:?}"
    );
    assert!(
        s.agg.segments >= (VIEWERS as i64) * (i64::from(WATCH_SECS) - 2),
        "each viewer was served about a segment a second: {s:?}"
    );
    assert!(s.agg.playlists >= VIEWERS as i64, "{s:?}");
    assert!(s.agg.bytes > 0 && s.agg.fill_bytes > 0, "{s:?}");
    let clients: Vec<&str> = report.clients.iter().map(|c| c.client.as_str()).collect();
    for i in 0..VIEWERS {
        let a = format!("127.0.0.{}", 101 + i);
        assert!(clients.contains(&a.as_str()), "{a} in {clients:?}");
    }
    eprintln!(
        "stream statistics: {} viewers, {} segments served, {} origin segment fetches, {} bytes",
        s.viewers, s.agg.segments, s.agg.segment_fills, s.agg.bytes
    );
    let _ = std::fs::remove_dir_all(&dir);
}
